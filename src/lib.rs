//! # vericonv
//!
//! Verifiable, privacy-preserving CNN convolutions on an untrusted cloud GPU.
//!
//! The client masks every convolution with secret keys, the cloud convolves the masked tensors
//! over F_p (p = 2^31 - 1) with WGSL compute shaders or on a CPU, and the client checks the
//! answer with a Freivalds-style test before unmasking it. The modules follow the scheme
//! (`SCHEME.md`): [`field`] → [`geometry`] → [`keys`] / [`privacy`] ([`share`], [`pad`]) →
//! [`encrypt`] / [`decrypt`] / [`verify`] → [`cloud`] backends → [`client`], the layer that ties
//! them together → [`model`] → [`attack`], which measures what a curious cloud recovers.

#![warn(missing_docs)]

pub mod attack;
pub mod bench;
pub mod client;
pub mod cloud;
pub mod data;
pub mod decrypt;
pub mod encrypt;
mod error;
pub mod eval;
pub mod field;
pub mod geometry;
pub mod keys;
pub mod model;
pub mod onnx;
pub mod pad;
pub mod privacy;
pub mod reference;
pub mod share;
pub mod verify;

pub use error::{Error, Result};
