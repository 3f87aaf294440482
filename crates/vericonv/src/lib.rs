//! # vericonv
//!
//! Verifiable, privacy-preserving CNN convolutions on an untrusted cloud GPU.
//!
//! The client masks every convolution with secret keys, the cloud convolves the masked tensors
//! over F_p (p = 2^31 - 1) with WGSL compute shaders or on a CPU, and the client checks the
//! answer with a Freivalds-style test before unmasking it. The modules follow the scheme
//! (`docs/scheme.md`): [`field`] → [`geometry`] → [`keys`] / [`privacy`] ([`share`], [`pad`]) →
//! [`encrypt`] / [`decrypt`] / [`verify`] → [`cloud`] (the trait and the CPU backend) →
//! [`client`], the layer that ties them together.
//!
//! This crate is the scheme alone, with few dependencies. The rest of the workspace builds on it:
//! `vericonv-gpu` (the wgpu backend), `vericonv-model` (whole CNNs, ONNX, quantization) and
//! `vericonv-cli` (the `vericonv` binary, with the benchmark, the evaluator and the attacks).

#![warn(missing_docs)]

pub mod client;
pub mod cloud;
pub mod decrypt;
pub mod encrypt;
mod error;
pub mod field;
pub mod geometry;
pub mod keys;
pub mod pad;
pub mod privacy;
pub mod reference;
pub mod share;
pub mod verify;

pub use error::{Cheater, Error, Result};
