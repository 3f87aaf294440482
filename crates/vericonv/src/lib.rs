//! # vericonv
//!
//! Verifiable, privacy-preserving CNN convolutions on an untrusted cloud GPU.
//!
//! The client masks every convolution with secret keys, the cloud convolves the masked tensors
//! over F_p (p = 2^31 - 1) with WGSL compute shaders or on a CPU, and the client checks the
//! answer with a Freivalds-style test before unmasking it.
//!
//! Every public name is here, at the crate root. Its sources follow the scheme
//! (`docs/scheme.md`): the field ([`M31`]) → the geometry ([`Conv2d`]) → keys and privacy modes
//! ([`SessionKey`], [`Privacy`], the share generator [`ShareSeed`], the pads [`PadPool`]) →
//! masking, unmasking and verification ([`encrypt_input`], [`decrypt`], [`verify()`]) → the
//! clouds ([`CloudBackend`], [`CpuBackend`]) → [`PrivateConv`], the layer that ties them
//! together.
//!
//! This crate is the scheme alone, with few dependencies. The rest of the workspace builds on it:
//! `vericonv-gpu` (the wgpu backend), `vericonv-model` (whole CNNs, ONNX, quantization) and
//! `vericonv-cli` (the `vericonv` binary, with the benchmark, the evaluator and the attacks).

#![warn(missing_docs)]

mod client;
mod cloud;
mod decrypt;
mod encrypt;
mod error;
// The `internals` feature makes the field's vectorised kernels reachable for the benchmarks.
#[cfg(feature = "internals")]
pub mod field;
#[cfg(not(feature = "internals"))]
mod field;
mod geometry;
mod keys;
mod pad;
mod privacy;
mod reference;
mod share;
mod verify;

pub use client::{
    Answer, AnswerBuffers, CallBuffers, LayerConfig, Pending, PrivateConv, SPENT_BATCHES, Timings, check_exactness,
};
pub use cloud::{
    CallInput, CallKernel, CloudBackend, Clouds, ConvCall, CpuBackend, KernelRef, SessionKernel, Tamper,
    TamperingBackend, check_conv_args, replace_zeroized,
};
pub use decrypt::{
    MaskKernel, decrypt, decrypt_into, decrypt_padded_into, decrypt_sum_into, decrypt_sum_verified_into, mask_conv,
};
pub use encrypt::{
    encrypt_input, encrypt_input_into, encrypt_kernel, encrypt_padded_into, encrypt_shares_into, mask_tensor,
};
pub use error::{Cheater, Error, Result};
pub use field::{M31, P, PrimeField, SmallInt, SmallPrime, check_canonical};
pub use geometry::{Conv2d, Conv2dBuilder, Padding};
pub use keys::{DEFAULT_RANK, ImageMask, KeyRng, SessionKey, os_rng, seeded_rng};
pub use pad::{Pad, PadPool};
pub use privacy::{LOWRANK_WARNING, Privacy};
pub use reference::{conv_f32, conv_field, conv_i64, conv_with};
pub use share::{ShareSeed, expand_into, expand_reference};
pub use verify::{Claim, FastRounds, Mode, StrictProducts, Verdict, Verified, kernel_fold, strict_products, verify};
