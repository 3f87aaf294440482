//! CNN models on the client: the graph, its native file format (a JSON architecture plus
//! `safetensors` weights), BatchNorm folding, and one interpreter shared by the float,
//! quantized-plaintext and private forward passes.
//!
//! Only `Conv` and `Linear` nodes differ between those passes (see [`quant`]); every other
//! operator runs the same client code, which is why private logits are bit-identical to the
//! quantized plaintext model's whenever the integer convolutions are exact.

pub mod data;
mod exec;
mod floats;
mod format;
mod graph;
pub mod onnx;
pub mod ops;
mod pipeline;
mod private;
pub mod quant;

pub use exec::{Tail, Workspace, argmax};
pub use format::{FORMAT, LayerSpec, ModelFile, OpSpec, PoolSpec};
pub use graph::{
    Activation, BatchNorm, ConvAttrs, GraphBuilder, InputSpec, MAX_ELEMENTS, Model, Node, Op, Shape, Source,
};
pub use private::{LayerStats, PrivateConfig, PrivateExecutor};
