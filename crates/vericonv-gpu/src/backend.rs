//! The GPU cloud backend: the public face of the device, its convolutions, the Strict-mode
//! products and the kernel timer.

use bytemuck::Pod;
use vericonv::Conv2d;
use vericonv::Result;
use vericonv::{CallKernel, CloudBackend, ConvCall, check_conv_args, replace_zeroized};
use vericonv::{Claim, StrictProducts};

use crate::device::{Device, GpuInfo, GpuOptions};
use crate::shaders::{Arithmetic, ConvKernel, ShaderVariant};
use crate::timing::KernelTiming;
use crate::{conv, strict, timing};

/// The GPU cloud backend. Build it once and reuse it.
pub struct GpuBackend {
    device: Device,
}

impl std::fmt::Debug for GpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuBackend").field("info", &self.device.info).field("variant", &self.device.variant).finish()
    }
}

impl GpuBackend {
    /// Selects an adapter, creates the device with the adapter's own limits, and compiles every
    /// pipeline.
    ///
    /// The adapter is the one named by `WGPU_ADAPTER_NAME` (a case-insensitive substring), or
    /// else the best by type: discrete, integrated, virtual, other, then CPU. `WGPU_BACKEND`
    /// (e.g. `vulkan`) restricts the graphics APIs probed.
    ///
    /// # Errors
    /// [`crate::GpuError::NoAdapter`] when nothing matches, [`crate::GpuError::UnsupportedFeature`]
    /// when `U64` is forced on an adapter without `SHADER_INT64`, [`crate::GpuError::Wgpu`] when
    /// device creation or shader compilation fails (the message carries the WGSL diagnostics).
    pub fn new(opts: &GpuOptions) -> Result<Self> {
        Ok(Self { device: Device::open(opts)? })
    }

    /// How many times a kernel was uploaded to the device. A session kernel
    /// ([`vericonv::CloudBackend::conv_session`]) is uploaded once per chunk of output
    /// channels, then kept.
    pub fn kernel_uploads(&self) -> u64 {
        self.device.kernel_uploads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The adapter in use.
    pub fn info(&self) -> &GpuInfo {
        &self.device.info
    }

    /// The F_p shader variant in use.
    pub fn variant(&self) -> ShaderVariant {
        self.device.variant
    }

    /// The plaintext f32 convolution on the GPU with the given kernel: the cloud-side baseline.
    ///
    /// # Errors
    /// As [`vericonv::CloudBackend::conv`].
    pub fn conv_f32(
        &self,
        kernel: ConvKernel,
        geom: &Conv2d,
        batch: usize,
        weights: &[f32],
        input: &[f32],
    ) -> Result<Vec<f32>> {
        conv::conv_f32(&self.device, kernel, geom, batch, weights, input)
    }

    /// The F_p convolution with an explicit kernel choice (the tests compare the tiled kernel
    /// with the simple one, its oracle).
    ///
    /// # Errors
    /// As [`vericonv::CloudBackend::conv`].
    pub fn conv_field(
        &self,
        kernel: ConvKernel,
        geom: &Conv2d,
        batch: usize,
        weights: &[u32],
        input: &[u32],
    ) -> Result<Vec<u32>> {
        conv::conv_field(&self.device, kernel, geom, batch, weights, input)
    }

    /// The batched Strict-mode products on this GPU (`Y'_b·r`, `im2col(X'_b)·r`, `K'·T_b`),
    /// bit-identical to [`vericonv::strict_products`]. Verifying on a GPU proves something
    /// only when the GPU is the client's own, never the cloud's.
    ///
    /// # Errors
    /// [`vericonv::Error::LengthMismatch`] for a bad `r`, [`crate::GpuError::DeviceLimit`] when
    /// one image does not fit a binding, [`crate::GpuError::Wgpu`].
    pub fn strict_products(&self, claim: &Claim<'_>, r: &[u32]) -> Result<StrictProducts> {
        strict::strict_products(&self.device, claim, r)
    }

    /// Times one convolution kernel on this adapter: one warm-up run, then the median of `reps`
    /// runs, on the GPU clock (timestamp queries) when the adapter offers it, else wall clock
    /// around submit-and-wait. The output is not read back; check it with
    /// [`GpuBackend::conv_field`] or [`GpuBackend::conv_f32`] first.
    ///
    /// # Errors
    /// [`vericonv::Error::LengthMismatch`], [`crate::GpuError::OtherVariant`] for a field
    /// variant other than the backend's, [`crate::GpuError::DeviceLimit`] when the layer needs
    /// several dispatches, [`crate::GpuError::Wgpu`].
    #[allow(clippy::too_many_arguments)]
    pub fn time_conv<T: Pod + Default>(
        &self,
        arith: Arithmetic,
        kernel: ConvKernel,
        g: &Conv2d,
        batch: usize,
        weights: &[T],
        input: &[T],
        reps: usize,
    ) -> Result<KernelTiming> {
        timing::time_conv(&self.device, arith, kernel, g, batch, weights, input, reps)
    }
}

impl CloudBackend for GpuBackend {
    fn name(&self) -> String {
        format!("gpu: {} [{:?} shaders]", self.device.info, self.device.variant)
    }

    fn call(&self, call: ConvCall<'_>, out: &mut Vec<u32>) -> Result<()> {
        let dev = &self.device;
        let input = call.input_tensor()?;
        let y = match call.kernel {
            CallKernel::Raw(geom, kernel) => conv::conv_field(dev, dev.kernel, geom, call.batch, kernel, &input)?,
            // A kernel of the session stays on the device from one call to the next.
            CallKernel::Session(kernel) => {
                let g = kernel.geometry();
                check_conv_args(g, call.batch, kernel.data(), &input)?;
                let arith = Arithmetic::Field(dev.variant);
                conv::run_conv(dev, arith, dev.kernel, g, call.batch, kernel.data(), &input, Some(kernel))?
            }
        };
        replace_zeroized(out, y);
        Ok(())
    }
}
