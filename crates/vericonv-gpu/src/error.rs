//! The GPU backend's own errors. Calls through [`vericonv::CloudBackend`] return them as
//! [`vericonv::Error::Backend`] (the `From` conversion below), from which
//! `err.backend_error::<GpuError>()` recovers them.

use thiserror::Error;

/// What can go wrong on the GPU.
#[derive(Debug, Error, Clone)]
#[non_exhaustive]
pub enum GpuError {
    /// No wgpu adapter matched the request.
    #[error("no GPU adapter available: {0}")]
    NoAdapter(String),
    /// The adapter or device cannot hold the work even after splitting it.
    #[error("device limit exceeded: {0}")]
    DeviceLimit(String),
    /// A requested shader variant needs a feature the adapter does not offer.
    #[error("the adapter does not support {0}")]
    UnsupportedFeature(&'static str),
    /// A timing asked for an F_p shader variant other than the one the backend compiled.
    #[error("this backend runs {running:?} shaders, not {asked:?}")]
    OtherVariant {
        /// The backend's variant.
        running: crate::ShaderVariant,
        /// The variant asked for.
        asked: crate::ShaderVariant,
    },
    /// wgpu reported an error (validation, out of memory or internal); the message is wgpu's.
    #[error("wgpu error during {stage}: {message}")]
    Wgpu {
        /// What was being done.
        stage: &'static str,
        /// wgpu's message (for shader failures, it includes the WGSL diagnostics).
        message: String,
    },
}

impl From<GpuError> for vericonv::Error {
    fn from(e: GpuError) -> Self {
        let exhausted = matches!(e, GpuError::DeviceLimit(_));
        vericonv::Error::backend(e, exhausted)
    }
}
