//! The untrusted cloud (docs/scheme.md §6): `Y' = Conv(K', X')` over F_p, behind one trait.
//!
//! The client never trusts what a backend returns: every answer is verified before it is
//! decrypted. [`CpuBackend`] runs on the CPU with rayon; the `vericonv-gpu` crate's
//! `GpuBackend` runs WGSL compute shaders through wgpu.

mod cpu;
#[cfg(target_arch = "x86_64")]
mod int8;
mod tamper;

pub use cpu::CpuBackend;
pub use tamper::{Tamper, TamperingBackend};

use std::sync::{Arc, Weak};

use zeroize::Zeroize;

use crate::Result;
use crate::geometry::Conv2d;
use crate::share::ShareSeed;

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

    /// [`CloudBackend::conv`] into `out`, whose allocation the backend may reuse (mode `pad`'s
    /// offline `Conv(K, R)` writes each pad's secret `U` in place this way). The default calls
    /// [`CloudBackend::conv`], copies its result into `out` and zeroizes it (or zeroizes
    /// `out`'s old contents when the result does not fit its allocation): no copy of a secret
    /// answer is freed unzeroized here.
    ///
    /// # Errors
    /// As [`CloudBackend::conv`]; `out` is unspecified then.
    fn conv_into(&self, geom: &Conv2d, batch: usize, kernel: &[u32], input: &[u32], out: &mut Vec<u32>) -> Result<()> {
        let mut y = self.conv(geom, batch, kernel, input)?;
        if out.capacity() >= y.len() {
            out.clear();
            out.extend_from_slice(&y);
            y.zeroize();
        } else {
            out.zeroize();
            *out = y;
        }
        Ok(())
    }

    /// Mode `two-server`, cloud A: computes `Conv(K', X'_A)` where `X'_A = G(seed)` is the share
    /// expanded from its 32-byte seed (docs/scheme.md §11), `batch × Cin × H × W` elements.
    ///
    /// The default expands the share and calls [`CloudBackend::conv`]; a remote cloud sends the
    /// 32 bytes instead of the tensor.
    ///
    /// # Errors
    /// As [`CloudBackend::conv`].
    fn conv_share(&self, geom: &Conv2d, batch: usize, kernel: &[u32], seed: &ShareSeed) -> Result<Vec<u32>> {
        self.conv(geom, batch, kernel, &seed.expand(share_len(geom, batch)?))
    }

    /// [`CloudBackend::conv`] with a kernel of the session, which a backend that keeps kernels
    /// (a GPU's memory, a remote server's cache) recognises by its id: it is sent `K'` once per
    /// session, not once per call. The default calls [`CloudBackend::conv`].
    ///
    /// # Errors
    /// As [`CloudBackend::conv`].
    fn conv_session(&self, kernel: &SessionKernel, batch: usize, input: &[u32]) -> Result<Vec<u32>> {
        self.conv(kernel.geometry(), batch, kernel.data(), input)
    }

    /// [`CloudBackend::conv_share`] with a kernel of the session. The default expands the share
    /// and calls [`CloudBackend::conv_session`].
    ///
    /// # Errors
    /// As [`CloudBackend::conv`].
    fn conv_share_session(&self, kernel: &SessionKernel, batch: usize, seed: &ShareSeed) -> Result<Vec<u32>> {
        self.conv_session(kernel, batch, &seed.expand(share_len(kernel.geometry(), batch)?))
    }

    /// [`CloudBackend::conv_session`] into `out`, whose allocation the backend may reuse: a
    /// client that keeps its answer buffers from call to call ([`crate::client::AnswerBuffers`])
    /// then neither allocates nor frees a tensor per call. `out` ends up holding exactly the
    /// answer. The default calls [`CloudBackend::conv_session`] and moves its result into `out`.
    ///
    /// # Errors
    /// As [`CloudBackend::conv`]; `out` is unspecified then.
    fn conv_session_into(&self, kernel: &SessionKernel, batch: usize, input: &[u32], out: &mut Vec<u32>) -> Result<()> {
        *out = self.conv_session(kernel, batch, input)?;
        Ok(())
    }

    /// [`CloudBackend::conv_share_session`] into `out`, as [`CloudBackend::conv_session_into`].
    /// The default calls [`CloudBackend::conv_share_session`].
    ///
    /// # Errors
    /// As [`CloudBackend::conv`]; `out` is unspecified then.
    fn conv_share_session_into(
        &self,
        kernel: &SessionKernel,
        batch: usize,
        seed: &ShareSeed,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        *out = self.conv_share_session(kernel, batch, seed)?;
        Ok(())
    }
}

/// `K'` of one session as the cloud receives it (in mode `split-model`, one cloud's share of
/// the kernel), with a 128-bit id drawn with the session key (or, on a server, taken from the
/// kernel's content hash). Backends that keep kernels key them by this id. The kernel is what
/// the cloud sees anyway: the id reveals nothing more. It is zeroized when the last clone
/// drops.
#[derive(Clone)]
pub struct SessionKernel {
    id: u128,
    geom: Conv2d,
    data: Arc<KernelData>,
}

/// A session kernel's elements, zeroized on drop (two shares of mode `split-model` together
/// are the client's model).
struct KernelData(Vec<u32>);

impl Drop for KernelData {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl SessionKernel {
    /// `K'` for `geom` under the id `id`.
    ///
    /// # Errors
    /// [`crate::Error::LengthMismatch`] when `data` is not `geom.kernel_len()` elements.
    pub fn new(id: u128, geom: Conv2d, data: Vec<u32>) -> Result<Self> {
        Conv2d::check_len("kernel", geom.kernel_len(), data.len())?;
        Ok(Self { id, geom, data: Arc::new(KernelData(data)) })
    }

    /// The id.
    pub fn id(&self) -> u128 {
        self.id
    }

    /// The layer geometry.
    pub fn geometry(&self) -> &Conv2d {
        &self.geom
    }

    /// `K'`, `Cout × Cin/G × kh × kw`.
    pub fn data(&self) -> &[u32] {
        &self.data.0
    }

    /// A reference for a backend's cache that does not keep `K'` alive.
    pub fn downgrade(&self) -> KernelRef {
        KernelRef { id: self.id, data: Arc::downgrade(&self.data) }
    }
}

/// A cache's reference to a [`SessionKernel`]. It recognises exactly that kernel: ids are
/// random, but two sessions seeded alike (tests, `--seed`) may draw the same one, so the
/// reference also holds the kernel's allocation, whose address no other kernel can take while
/// the reference exists.
#[derive(Clone)]
pub struct KernelRef {
    id: u128,
    data: Weak<KernelData>,
}

impl KernelRef {
    /// Whether this refers to `kernel`.
    pub fn refers_to(&self, kernel: &SessionKernel) -> bool {
        self.id == kernel.id && std::ptr::eq(self.data.as_ptr(), Arc::as_ptr(&kernel.data))
    }

    /// Whether the session still holds the kernel (a cache may drop what is no longer used).
    pub fn is_alive(&self) -> bool {
        self.data.strong_count() > 0
    }
}

impl std::fmt::Debug for SessionKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKernel")
            .field("id", &format_args!("{:032x}", self.id))
            .field("geom", &self.geom)
            .finish()
    }
}

/// The cloud or clouds a private layer runs on: one, or two for mode `two-server`.
#[derive(Clone, Copy)]
pub enum Clouds<'a> {
    /// One cloud (modes `lowrank` and `pad`).
    One(&'a dyn CloudBackend),
    /// Cloud A (it receives the seed of its share) and cloud B (it receives the other share).
    Two(&'a dyn CloudBackend, &'a dyn CloudBackend),
}

impl<'a, B: CloudBackend> From<&'a B> for Clouds<'a> {
    fn from(cloud: &'a B) -> Self {
        Clouds::One(cloud)
    }
}

impl<'a> From<&'a dyn CloudBackend> for Clouds<'a> {
    fn from(cloud: &'a dyn CloudBackend) -> Self {
        Clouds::One(cloud)
    }
}

impl Clouds<'_> {
    /// How many clouds there are.
    pub fn count(&self) -> usize {
        match self {
            Clouds::One(_) => 1,
            Clouds::Two(..) => 2,
        }
    }

    /// The clouds' names, joined with `" + "`.
    pub fn name(&self) -> String {
        match self {
            Clouds::One(c) => c.name(),
            Clouds::Two(a, b) => format!("A: {}; B: {}", a.name(), b.name()),
        }
    }
}

/// Which cloud returned a wrong answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cheater {
    /// The one cloud of modes `lowrank` and `pad`.
    TheCloud,
    /// Cloud A of mode `two-server` (cloud B's share checked out).
    CloudA,
    /// Cloud B of mode `two-server` (cloud A's share checked out).
    CloudB,
    /// Both clouds of mode `two-server`.
    BothClouds,
    /// The sum of the two shares failed, but each share passed its own re-check (probability at
    /// most 4/p per round in Fast mode).
    Unidentified,
}

impl std::fmt::Display for Cheater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cheater::TheCloud => "the cloud's answer",
            Cheater::CloudA => "cloud A's answer",
            Cheater::CloudB => "cloud B's answer",
            Cheater::BothClouds => "both clouds' answers",
            Cheater::Unidentified => "the sum of the clouds' answers (each share passed a re-check)",
        })
    }
}

/// The length of a batch's share of mode `two-server` (the batch's input), checked.
pub(crate) fn share_len(geom: &Conv2d, batch: usize) -> Result<usize> {
    batch.checked_mul(geom.image_len()).ok_or(crate::Error::TooLarge { what: "share length", value: batch })
}

/// Checks the tensor lengths every backend receives.
pub fn check_conv_args(geom: &Conv2d, batch: usize, kernel: &[u32], input: &[u32]) -> Result<()> {
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

    fn conv_share(&self, geom: &Conv2d, batch: usize, kernel: &[u32], seed: &ShareSeed) -> Result<Vec<u32>> {
        (**self).conv_share(geom, batch, kernel, seed)
    }

    fn conv_session(&self, kernel: &SessionKernel, batch: usize, input: &[u32]) -> Result<Vec<u32>> {
        (**self).conv_session(kernel, batch, input)
    }

    fn conv_share_session(&self, kernel: &SessionKernel, batch: usize, seed: &ShareSeed) -> Result<Vec<u32>> {
        (**self).conv_share_session(kernel, batch, seed)
    }

    fn conv_session_into(&self, kernel: &SessionKernel, batch: usize, input: &[u32], out: &mut Vec<u32>) -> Result<()> {
        (**self).conv_session_into(kernel, batch, input, out)
    }

    fn conv_share_session_into(
        &self,
        kernel: &SessionKernel,
        batch: usize,
        seed: &ShareSeed,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        (**self).conv_share_session_into(kernel, batch, seed, out)
    }
}
