//! The GPU cloud: WGSL compute shaders through wgpu 30.
//!
//! - The device, pipelines and bind-group layouts are built once, in [`GpuBackend::new`], and
//!   reused by every call.
//! - Adapter selection honours `WGPU_BACKEND` and `WGPU_ADAPTER_NAME`.
//! - Limits are read from the adapter, never assumed. Work larger than
//!   `max_storage_buffer_binding_size` or `max_compute_workgroups_per_dimension` is split into
//!   chunks of output channels, output-row bands and images.
//! - Every wgpu call that can fail runs inside error scopes, so failures come back as
//!   [`GpuError::Wgpu`] (through [`vericonv::Error::Backend`]) instead of the default
//!   handler's panic.

mod backend;
mod conv;
mod device;
mod error;
mod kernel_cache;
mod plan;
mod shaders;
mod strict;
mod timing;

pub use backend::GpuBackend;
pub use device::{GpuInfo, GpuOptions, list_adapters};
pub use error::GpuError;
pub use shaders::{Arithmetic, ConvKernel, ShaderProgram, ShaderVariant};
pub use timing::KernelTiming;
