//! The untrusted cloud (SCHEME.md §6): `Y' = Conv(K', X')` over F_p, behind one trait.
//!
//! The client never trusts what a backend returns: every answer is verified before it is
//! decrypted. [`CpuBackend`] runs on the CPU with rayon; [`GpuBackend`] runs WGSL compute
//! shaders through wgpu.

mod cpu;
#[cfg(feature = "gpu")]
mod gpu;
mod tamper;

pub use cpu::CpuBackend;
#[cfg(feature = "gpu")]
pub use gpu::{
    Arithmetic, ConvKernel, GpuBackend, GpuInfo, GpuOptions, KernelTiming, ShaderProgram, ShaderVariant, list_adapters,
};
pub use tamper::{Tamper, TamperingBackend};

use crate::Result;
use crate::geometry::Conv2d;

/// A cloud that convolves masked tensors over F_p, p = 2^31 - 1.
pub trait CloudBackend: Send + Sync {
    /// A human-readable description (backend and adapter).
    fn name(&self) -> String;

    /// Computes `Y' = Conv(K', X')` over F_p for a batch: `kernel` is `Cout × Cin/G × kh × kw`,
    /// `input` is `batch × Cin × H × W`, the result `batch × Cout × Ho × Wo`.
    ///
    /// # Errors
    /// [`crate::Error::LengthMismatch`] for tensors that do not match `geom`, and
    /// backend-specific errors (device limits, wgpu errors).
    fn conv(&self, geom: &Conv2d, batch: usize, kernel: &[u32], input: &[u32]) -> Result<Vec<u32>>;
}

/// Checks the tensor lengths every backend receives.
pub(crate) fn check_conv_args(geom: &Conv2d, batch: usize, kernel: &[u32], input: &[u32]) -> Result<()> {
    Conv2d::check_len("encrypted kernel", geom.kernel_len(), kernel.len())?;
    Conv2d::check_len("encrypted input", batch * geom.image_len(), input.len())?;
    // The backends' lazy reductions rely on canonical elements.
    crate::field::check_canonical::<crate::field::M31>("encrypted kernel", kernel)?;
    crate::field::check_canonical::<crate::field::M31>("encrypted input", input)
}

impl<B: CloudBackend + ?Sized> CloudBackend for Box<B> {
    fn name(&self) -> String {
        (**self).name()
    }

    fn conv(&self, geom: &Conv2d, batch: usize, kernel: &[u32], input: &[u32]) -> Result<Vec<u32>> {
        (**self).conv(geom, batch, kernel, input)
    }
}
