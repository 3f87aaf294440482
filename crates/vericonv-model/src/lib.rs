//! CNN models on the client: the graph, its native file format (a JSON architecture plus
//! `safetensors` weights), BatchNorm folding, the float forward pass, and the quantized forward
//! pass shared by the plaintext and the private executors, which runs image by image between
//! cloud calls ([`QuantModel::forward_with`]).
//!
//! Only the source of the exact integer accumulations differs between the quantized plaintext
//! and the private pass (see [`IntegerExecutor`]); every other step runs the same client code, which is
//! why private logits are bit-identical to the quantized plaintext model's whenever the integer
//! convolutions are exact.

mod data;
mod error;
mod exec;
mod floats;
mod format;
mod graph;
mod model;
pub mod onnx;
mod ops;
mod private;
mod quant;
#[cfg(feature = "tract")]
mod tract;

pub use data::Dataset;
pub use error::{ModelError, Result};
pub use exec::{Workspace, argmax};
pub use format::{FORMAT, LayerSpec, ModelFile, OpSpec, PoolSpec};
pub use graph::{BatchNorm, ConvAttrs, GraphBuilder, InputSpec, MAX_ELEMENTS, Model, Node, Op, Shape, Source};
pub use ops::{ExactWeights, Pool, conv_int_into, im2col};
pub use private::{LayerStats, PrivateConfig, PrivateExecutor};
pub use quant::{
    Epilogue, ForwardTimes, IntegerExecutor, PlainExecutor, QuantConfig, QuantInput, QuantLayer, QuantModel,
};
#[cfg(feature = "tract")]
pub use tract::{
    ConvExecutor, LayerKind, MAX_IMAGE_ELEMENTS, OwnedClouds, Plan, PrivateConvs, PrivateLayer, Reference, TractModel,
};
