//! CNN models on the client: the graph, its native file format (a JSON architecture plus
//! `safetensors` weights), BatchNorm folding, and one interpreter shared by the float,
//! quantized-plaintext and private forward passes.
//!
//! Only `Conv` and `Linear` nodes differ between those passes (see [`quant`]); every other
//! operator runs the same client code, which is why private logits are bit-identical to the
//! quantized plaintext model's whenever the integer convolutions are exact.

pub mod ops;
pub mod quant;

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::geometry::{Conv2d, Padding};
use crate::{Error, Result};
use ops::Pool;

/// A `channels × height × width` activation shape (a vector is `n × 1 × 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shape {
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

/// The most elements one image's tensor may have anywhere in a model (2^30, 4 GiB of f32):
/// every shape a [`GraphBuilder`] accepts stays below it, so shape products cannot wrap.
pub const MAX_ELEMENTS: usize = 1 << 30;

/// `c·h·w` when it is at most [`MAX_ELEMENTS`].
fn bounded_len(c: usize, h: usize, w: usize) -> Option<usize> {
    c.checked_mul(h)?.checked_mul(w).filter(|&n| n <= MAX_ELEMENTS)
}

fn too_large(what: &str, value: usize) -> Error {
    Error::Parse {
        what: what.to_string(),
        message: format!("{value} elements (or a product that overflows) exceed the limit of {MAX_ELEMENTS}"),
    }
}

impl Shape {
    /// Elements per image (at most [`MAX_ELEMENTS`] for every shape of a built graph).
    pub fn len(&self) -> usize {
        self.c * self.h * self.w
    }
    /// True for an empty shape.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the model expects: the image shape and the per-channel normalisation
/// `(x - mean) / std` applied to pixels in `[0, 1]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Channels.
    pub channels: usize,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// Per-channel mean (one value applies to every channel).
    pub mean: Vec<f32>,
    /// Per-channel standard deviation (one value applies to every channel).
    pub std: Vec<f32>,
}

/// One operator with its weights.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A convolution; any BatchNorm that followed it is folded into `weight` and `bias`.
    Conv {
        /// Geometry, input size included.
        geom: Conv2d,
        /// `Cout × Cin/G × kh × kw`.
        weight: Vec<f32>,
        /// `Cout`.
        bias: Vec<f32>,
    },
    /// A fully connected layer, `y = W·x + b` with `W` of `out × in`.
    Linear {
        /// Input features.
        in_features: usize,
        /// Output features.
        out_features: usize,
        /// `out × in`.
        weight: Vec<f32>,
        /// `out`.
        bias: Vec<f32>,
    },
    /// `max(x, 0)`.
    Relu,
    /// Max pooling.
    MaxPool(Pool),
    /// Average pooling.
    AvgPool(Pool),
    /// Mean over each channel.
    GlobalAvgPool,
    /// `C × H × W` to a vector.
    Flatten,
    /// Element-wise sum of two inputs (residual connections).
    Add,
}

impl Op {
    /// Short name, as in the native format.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv { .. } => "conv2d",
            Op::Linear { .. } => "linear",
            Op::Relu => "relu",
            Op::MaxPool(_) => "maxpool2d",
            Op::AvgPool(_) => "avgpool2d",
            Op::GlobalAvgPool => "global_avgpool",
            Op::Flatten => "flatten",
            Op::Add => "add",
        }
    }
}

/// Where a node reads from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The (normalised) model input.
    Input,
    /// The output of an earlier node.
    Node(usize),
}

/// One node of the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Unique name (weights are `<name>.weight`, `<name>.bias`).
    pub name: String,
    /// The operator.
    pub op: Op,
    /// Inputs, all earlier in the graph.
    pub inputs: Vec<Source>,
    /// Output shape per image.
    pub shape: Shape,
}

/// A batch of activations.
#[derive(Clone, Debug, PartialEq)]
pub struct Activation {
    /// Images in the batch.
    pub batch: usize,
    /// Shape per image.
    pub shape: Shape,
    /// `batch × shape.len()` values.
    pub data: Vec<f32>,
}

/// A CNN in topological order; the last node's output is the logits.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// Model name.
    pub name: String,
    /// Input shape and normalisation.
    pub input: InputSpec,
    nodes: Vec<Node>,
}

/// The attributes of a convolution layer; the input size comes from the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvAttrs {
    /// Output channels.
    pub out_channels: usize,
    /// `(kh, kw)`.
    pub kernel: (usize, usize),
    /// `(sh, sw)`.
    pub stride: (usize, usize),
    /// Zero padding.
    pub padding: Padding,
    /// `(dh, dw)`.
    pub dilation: (usize, usize),
    /// Groups.
    pub groups: usize,
}

/// The parameters of a BatchNorm layer.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm {
    /// Scale γ.
    pub gamma: Vec<f32>,
    /// Shift β.
    pub beta: Vec<f32>,
    /// Running mean μ.
    pub mean: Vec<f32>,
    /// Running variance σ².
    pub var: Vec<f32>,
    /// ε.
    pub eps: f32,
}

/// Builds a [`Model`] node by node, inferring shapes, validating every layer and folding
/// BatchNorm into the preceding convolution. Used by the native loader and the ONNX importer.
#[derive(Debug)]
pub struct GraphBuilder {
    input: InputSpec,
    nodes: Vec<Node>,
    names: HashMap<String, Source>,
    consumers: Vec<usize>,
    folded: HashMap<String, String>,
}

fn layer_err(layer: &str, message: impl std::fmt::Display) -> Error {
    Error::Parse { what: format!("layer `{layer}`"), message: message.to_string() }
}

impl GraphBuilder {
    /// Starts a graph whose input is `input`.
    ///
    /// # Errors
    /// [`Error::Parse`] for an empty input or a normalisation that does not fit the channels.
    pub fn new(input: InputSpec) -> Result<Self> {
        let per_channel = |v: &[f32]| v.len() == 1 || v.len() == input.channels;
        if bounded_len(input.channels, input.height, input.width).is_none() {
            return Err(too_large("model input", input.channels));
        }
        if input.channels * input.height * input.width == 0
            || !per_channel(&input.mean)
            || !per_channel(&input.std)
            || input.std.iter().any(|&s| s == 0.0 || !s.is_finite())
            || input.mean.iter().any(|m| !m.is_finite())
        {
            return Err(Error::Parse {
                what: "model input".into(),
                message: format!("invalid input specification {input:?}"),
            });
        }
        Ok(Self {
            input,
            nodes: Vec::new(),
            names: HashMap::from([("input".to_string(), Source::Input)]),
            consumers: Vec::new(),
            folded: HashMap::new(),
        })
    }

    /// The source called `name` (a node or `input`).
    ///
    /// # Errors
    /// [`Error::Parse`] for an unknown name, or the pre-BatchNorm output of a folded convolution.
    pub fn source(&self, layer: &str, name: &str) -> Result<Source> {
        if let Some(bn) = self.folded.get(name) {
            return Err(Error::Unsupported(format!(
                "layer `{layer}` reads `{name}` before BatchNorm `{bn}`, which is folded into it"
            )));
        }
        self.names.get(name).copied().ok_or_else(|| layer_err(layer, format!("unknown input `{name}`")))
    }

    /// The most recently added node's name, or `input`.
    pub fn last(&self) -> String {
        self.nodes.last().map_or_else(|| "input".to_string(), |n| n.name.clone())
    }

    /// The output shape of `src`.
    pub fn shape_of(&self, src: Source) -> Shape {
        match src {
            Source::Input => Shape { c: self.input.channels, h: self.input.height, w: self.input.width },
            Source::Node(i) => self.nodes[i].shape,
        }
    }

    fn push(&mut self, name: &str, op: Op, inputs: Vec<Source>, shape: Shape) -> Result<()> {
        if self.names.contains_key(name) || self.folded.contains_key(name) {
            return Err(layer_err(name, "duplicate layer name"));
        }
        if bounded_len(shape.c, shape.h, shape.w).is_none() {
            return Err(too_large(&format!("layer `{name}` output"), shape.c));
        }
        let weights: &[f32] = match &op {
            Op::Conv { weight, bias, .. } | Op::Linear { weight, bias, .. } => {
                if let Some(i) = weight.iter().chain(bias).position(|v| !v.is_finite()) {
                    return Err(layer_err(name, format!("weight or bias {i} is not finite")));
                }
                weight
            }
            _ => &[],
        };
        if weights.len() > MAX_ELEMENTS {
            return Err(too_large(&format!("layer `{name}` weights"), weights.len()));
        }
        for s in &inputs {
            if let Source::Node(i) = s {
                self.consumers[*i] += 1;
            }
        }
        self.names.insert(name.to_string(), Source::Node(self.nodes.len()));
        self.nodes.push(Node { name: name.to_string(), op, inputs, shape });
        self.consumers.push(0);
        Ok(())
    }

    fn expect_len(layer: &str, what: &str, v: &[f32], len: usize) -> Result<()> {
        if v.len() != len {
            return Err(layer_err(layer, format!("{what} has {} values, expected {len}", v.len())));
        }
        Ok(())
    }

    /// Adds a convolution reading `input` (`bias` empty for none).
    ///
    /// # Errors
    /// Geometry errors, or [`Error::Parse`] for weights of the wrong size.
    pub fn conv(
        &mut self,
        name: &str,
        input: Source,
        attrs: ConvAttrs,
        weight: Vec<f32>,
        bias: Vec<f32>,
    ) -> Result<()> {
        let s = self.shape_of(input);
        let ConvAttrs { out_channels, kernel, stride, padding, dilation, groups } = attrs;
        let geom = Conv2d::builder(s.c, out_channels, (s.h, s.w), kernel)
            .stride(stride.0, stride.1)
            .padding(padding)
            .dilation(dilation.0, dilation.1)
            .groups(groups)
            .build()
            .map_err(|e| layer_err(name, e))?;
        Self::expect_len(name, "weight", &weight, geom.kernel_len())?;
        let bias = if bias.is_empty() { vec![0.0; out_channels] } else { bias };
        Self::expect_len(name, "bias", &bias, out_channels)?;
        let shape = Shape { c: out_channels, h: geom.ho(), w: geom.wo() };
        self.push(name, Op::Conv { geom, weight, bias }, vec![input], shape)
    }

    /// Adds a fully connected layer reading a vector (`bias` empty for none).
    ///
    /// # Errors
    /// [`Error::Parse`] for a non-vector input or weights of the wrong size.
    pub fn linear(
        &mut self,
        name: &str,
        input: Source,
        out_features: usize,
        weight: Vec<f32>,
        bias: Vec<f32>,
    ) -> Result<()> {
        let s = self.shape_of(input);
        if s.h != 1 || s.w != 1 {
            return Err(layer_err(
                name,
                format!("linear layers read vectors; the input is {}×{}×{} (add a flatten)", s.c, s.h, s.w),
            ));
        }
        if out_features == 0 {
            return Err(layer_err(name, "out_features must be at least 1"));
        }
        let weights = out_features.checked_mul(s.c).filter(|&n| n <= MAX_ELEMENTS);
        let weights = weights.ok_or_else(|| too_large(&format!("layer `{name}` weights"), out_features))?;
        Self::expect_len(name, "weight", &weight, weights)?;
        let bias = if bias.is_empty() { vec![0.0; out_features] } else { bias };
        Self::expect_len(name, "bias", &bias, out_features)?;
        self.push(
            name,
            Op::Linear { in_features: s.c, out_features, weight, bias },
            vec![input],
            Shape { c: out_features, h: 1, w: 1 },
        )
    }

    /// Makes `name` another name for `src` (ONNX `Identity`, inference-time `Dropout`).
    ///
    /// # Errors
    /// [`Error::Parse`] for a duplicate name.
    pub fn alias(&mut self, name: &str, src: Source) -> Result<()> {
        if self.names.contains_key(name) {
            return Err(layer_err(name, "duplicate layer name"));
        }
        self.names.insert(name.to_string(), src);
        Ok(())
    }

    /// Adds a constant `bias` (one value per output channel) to the `Conv` or `Linear` node
    /// `src`, as ONNX exporters write `MatMul` + `Add`; `name` becomes another name for it.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when `src` is not a convolution or linear layer used only here,
    /// [`Error::Parse`] for a bias of the wrong size.
    pub fn add_bias(&mut self, name: &str, src: Source, extra: &[f32]) -> Result<()> {
        let idx = match src {
            Source::Node(i) if self.consumers[i] == 0 => i,
            _ => {
                return Err(Error::Unsupported(format!(
                    "`{name}` adds a constant to something other than a freshly computed conv or linear layer"
                )));
            }
        };
        match &mut self.nodes[idx].op {
            Op::Conv { bias, .. } | Op::Linear { bias, .. } if extra.len() == bias.len() => {
                bias.iter_mut().zip(extra).for_each(|(b, e)| *b += e);
            }
            _ => {
                return Err(Error::Unsupported(format!(
                    "`{name}` adds a constant of {} values to `{}`",
                    extra.len(),
                    self.nodes[idx].name
                )));
            }
        }
        self.alias(name, src)
    }

    /// Folds a BatchNorm reading `input` into the convolution that produced it:
    /// `w' = w·γ/√(σ²+ε)`, `b' = (b - μ)·γ/√(σ²+ε) + β`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when `input` is not a convolution used only by this BatchNorm,
    /// [`Error::Parse`] for statistics of the wrong size.
    pub fn batchnorm(&mut self, name: &str, input: Source, bn: &BatchNorm) -> Result<()> {
        let BatchNorm { gamma, beta, mean, var, eps } = bn;
        let Source::Node(i) = input else {
            return Err(Error::Unsupported(format!(
                "BatchNorm `{name}` must follow a convolution, not the model input"
            )));
        };
        if self.consumers[i] != 0 {
            return Err(Error::Unsupported(format!(
                "BatchNorm `{name}`: the output of `{}` is also used elsewhere, so it cannot be folded",
                self.nodes[i].name
            )));
        }
        let conv_name = self.nodes[i].name.clone();
        let Op::Conv { geom, weight, bias } = &mut self.nodes[i].op else {
            return Err(Error::Unsupported(format!(
                "BatchNorm `{name}` follows `{conv_name}`, which is not a convolution; only Conv+BatchNorm is supported"
            )));
        };
        for (what, v) in [("weight", gamma), ("bias", beta), ("running_mean", mean), ("running_var", var)] {
            let v: &[f32] = v;
            Self::expect_len(name, what, v, geom.cout())?;
            if v.iter().any(|x| !x.is_finite()) {
                return Err(layer_err(name, format!("{what} has a value that is not finite")));
            }
        }
        if !eps.is_finite() || var.iter().any(|&v| v + eps <= 0.0) {
            return Err(layer_err(name, format!("running_var + eps must be positive (eps = {eps})")));
        }
        let per = geom.m();
        for o in 0..geom.cout() {
            let k = gamma[o] / (var[o] + eps).sqrt();
            weight[o * per..(o + 1) * per].iter_mut().for_each(|w| *w *= k);
            bias[o] = (bias[o] - mean[o]) * k + beta[o];
        }
        // The folded node now answers to the BatchNorm's name; the raw conv output is gone.
        self.nodes[i].name = name.to_string();
        self.names.remove(&conv_name);
        self.names.insert(name.to_string(), input);
        self.folded.insert(conv_name, name.to_string());
        Ok(())
    }

    /// Adds an operator without weights: relu, pooling, global average pooling, flatten, add.
    ///
    /// # Errors
    /// [`Error::Parse`] for shapes that do not fit the operator.
    pub fn simple(&mut self, name: &str, op: Op, inputs: Vec<Source>) -> Result<()> {
        let s = inputs.first().map(|&i| self.shape_of(i)).ok_or_else(|| layer_err(name, "no input"))?;
        let shape = match &op {
            Op::Relu => s,
            Op::MaxPool(p) | Op::AvgPool(p) => {
                let (h, w) = p.output(s.h, s.w).ok_or_else(|| {
                    layer_err(name, format!("pooling window {:?} does not fit a {}×{} input", p.kernel, s.h, s.w))
                })?;
                Shape { c: s.c, h, w }
            }
            Op::GlobalAvgPool => Shape { c: s.c, h: 1, w: 1 },
            Op::Flatten => Shape { c: s.len(), h: 1, w: 1 },
            Op::Add => {
                if inputs.len() != 2 || self.shape_of(inputs[1]) != s {
                    return Err(layer_err(name, "add needs two inputs of the same shape"));
                }
                s
            }
            Op::Conv { .. } | Op::Linear { .. } => return Err(layer_err(name, "use GraphBuilder::conv or ::linear")),
        };
        let arity = if matches!(op, Op::Add) { 2 } else { 1 };
        if inputs.len() != arity {
            return Err(layer_err(name, format!("{} takes {arity} input(s)", op.kind())));
        }
        self.push(name, op, inputs, shape)
    }

    /// Finishes the graph: its last node is the output.
    ///
    /// # Errors
    /// [`Error::Parse`] for an empty graph.
    pub fn finish(self, name: &str) -> Result<Model> {
        if self.nodes.is_empty() {
            return Err(Error::Parse { what: format!("model `{name}`"), message: "no layers".into() });
        }
        Ok(Model { name: name.to_string(), input: self.input, nodes: self.nodes })
    }
}

/// One layer of the native JSON format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerSpec {
    /// Unique name; weights are `<name>.weight` and so on.
    pub name: String,
    /// Inputs by name; default: the previous layer (or `input` for the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<String>>,
    /// The operator and its attributes.
    #[serde(flatten)]
    pub op: OpSpec,
}

fn one_one() -> [usize; 2] {
    [1, 1]
}
fn yes() -> bool {
    true
}
fn bn_eps() -> f32 {
    1e-5
}

/// Operator attributes of the native format (`"op": "conv2d"` and so on).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum OpSpec {
    /// Convolution; weights `<name>.weight` (`Cout × Cin/G × kh × kw`), `<name>.bias`.
    Conv2d {
        /// Output channels.
        out_channels: usize,
        /// `[kh, kw]`.
        kernel: [usize; 2],
        /// `[sh, sw]`, default `[1, 1]`.
        #[serde(default = "one_one")]
        stride: [usize; 2],
        /// `[top, left, bottom, right]`, default zero.
        #[serde(default)]
        padding: [usize; 4],
        /// `[dh, dw]`, default `[1, 1]`.
        #[serde(default = "one_one")]
        dilation: [usize; 2],
        /// Groups, default 1.
        #[serde(default = "one")]
        groups: usize,
        /// Whether `<name>.bias` exists, default true.
        #[serde(default = "yes")]
        bias: bool,
    },
    /// Fully connected; weights `<name>.weight` (`out × in`), `<name>.bias`.
    Linear {
        /// Output features.
        out_features: usize,
        /// Whether `<name>.bias` exists, default true.
        #[serde(default = "yes")]
        bias: bool,
    },
    /// BatchNorm, folded into the preceding convolution; tensors `<name>.weight`, `.bias`,
    /// `.running_mean`, `.running_var`.
    Batchnorm2d {
        /// ε, default 1e-5.
        #[serde(default = "bn_eps")]
        eps: f32,
    },
    /// ReLU.
    Relu,
    /// Max pooling.
    Maxpool2d(PoolSpec),
    /// Average pooling.
    Avgpool2d(PoolSpec),
    /// Global average pooling.
    GlobalAvgpool,
    /// Flatten to a vector.
    Flatten,
    /// Sum of two inputs.
    Add,
}

fn one() -> usize {
    1
}

/// Pooling attributes of the native format.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// `[kh, kw]`.
    pub kernel: [usize; 2],
    /// `[sh, sw]`, default: the kernel.
    #[serde(default)]
    pub stride: Option<[usize; 2]>,
    /// `[top, left, bottom, right]`, default zero.
    #[serde(default)]
    pub padding: [usize; 4],
    /// Round output sizes up, default false.
    #[serde(default)]
    pub ceil_mode: bool,
    /// Average pooling divides by the padded window, default false (as ONNX).
    #[serde(default)]
    pub count_include_pad: bool,
}

impl From<&PoolSpec> for Pool {
    fn from(p: &PoolSpec) -> Self {
        let [t, l, b, r] = p.padding;
        Pool {
            kernel: (p.kernel[0], p.kernel[1]),
            stride: p.stride.map_or((p.kernel[0], p.kernel[1]), |s| (s[0], s[1])),
            padding: Padding::new(t, l, b, r),
            ceil_mode: p.ceil_mode,
            count_include_pad: p.count_include_pad,
        }
    }
}

/// The native model file: `<model>.json`, next to `<model>.safetensors`. Unknown fields are
/// errors, not silently ignored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Must be `vericonv-model/1`.
    pub format: String,
    /// Model name.
    pub name: String,
    /// Input shape and normalisation.
    pub input: InputSpec,
    /// How many classes the last layer outputs; checked against the layers when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
    /// Layers in topological order.
    pub layers: Vec<LayerSpec>,
    /// Free-form provenance (how the weights were made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<serde_json::Value>,
}

/// The format tag of [`ModelFile`].
pub const FORMAT: &str = "vericonv-model/1";

fn tensor_f32(st: &safetensors::SafeTensors<'_>, name: &str, layer: &str) -> Result<Vec<f32>> {
    let t = st.tensor(name).map_err(|e| layer_err(layer, format!("weight `{name}`: {e}")))?;
    let data = t.data();
    let values: Vec<f32> = match t.dtype() {
        safetensors::Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        safetensors::Dtype::F16 => {
            data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
        }
        safetensors::Dtype::BF16 => {
            data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
        }
        other => {
            return Err(layer_err(layer, format!("weight `{name}` has dtype {other:?}; f32, f16 or bf16 expected")));
        }
    };
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite { what: format!("weight `{name}`"), index: i, value: values[i].to_string() });
    }
    Ok(values)
}

impl Model {
    /// Loads the native format: `path` is the JSON file; the weights are the `.safetensors`
    /// file with the same stem.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::Parse`] for a corrupt or inconsistent file (naming the layer),
    /// [`Error::Unsupported`], [`Error::NonFinite`] for NaN or infinite weights.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| Error::Io { path: p.display().to_string(), message: e.to_string() })
        };
        let json = read(path)?;
        let weights = read(&path.with_extension("safetensors"))?;
        Self::from_bytes(&json, &weights)
    }

    /// Parses the native format from memory.
    ///
    /// # Errors
    /// As [`Model::load`].
    pub fn from_bytes(json: &[u8], weights: &[u8]) -> Result<Self> {
        let file: ModelFile = serde_json::from_slice(json)
            .map_err(|e| Error::Parse { what: "model JSON".into(), message: e.to_string() })?;
        if file.format != FORMAT {
            return Err(Error::Parse {
                what: "model JSON".into(),
                message: format!("format `{}`, expected `{FORMAT}`", file.format),
            });
        }
        let st = safetensors::SafeTensors::deserialize(weights)
            .map_err(|e| Error::Parse { what: "model weights (safetensors)".into(), message: e.to_string() })?;
        let mut b = GraphBuilder::new(file.input)?;
        for layer in &file.layers {
            let n = layer.name.as_str();
            let inputs = match &layer.inputs {
                Some(names) => names.iter().map(|i| b.source(n, i)).collect::<Result<Vec<_>>>()?,
                None => vec![b.source(n, &b.last())?],
            };
            let first = *inputs.first().ok_or_else(|| layer_err(n, "no input"))?;
            let w = |suffix: &str| tensor_f32(&st, &format!("{n}.{suffix}"), n);
            match &layer.op {
                OpSpec::Conv2d { out_channels, kernel, stride, padding, dilation, groups, bias } => {
                    let [t, l, bo, r] = *padding;
                    let bias = if *bias { w("bias")? } else { Vec::new() };
                    let attrs = ConvAttrs {
                        out_channels: *out_channels,
                        kernel: (kernel[0], kernel[1]),
                        stride: (stride[0], stride[1]),
                        padding: Padding::new(t, l, bo, r),
                        dilation: (dilation[0], dilation[1]),
                        groups: *groups,
                    };
                    b.conv(n, first, attrs, w("weight")?, bias)?;
                }
                OpSpec::Linear { out_features, bias } => {
                    let bias = if *bias { w("bias")? } else { Vec::new() };
                    b.linear(n, first, *out_features, w("weight")?, bias)?;
                }
                OpSpec::Batchnorm2d { eps } => {
                    let bn = BatchNorm {
                        gamma: w("weight")?,
                        beta: w("bias")?,
                        mean: w("running_mean")?,
                        var: w("running_var")?,
                        eps: *eps,
                    };
                    b.batchnorm(n, first, &bn)?
                }
                OpSpec::Relu => b.simple(n, Op::Relu, inputs)?,
                OpSpec::Maxpool2d(p) => b.simple(n, Op::MaxPool(p.into()), inputs)?,
                OpSpec::Avgpool2d(p) => b.simple(n, Op::AvgPool(p.into()), inputs)?,
                OpSpec::GlobalAvgpool => b.simple(n, Op::GlobalAvgPool, inputs)?,
                OpSpec::Flatten => b.simple(n, Op::Flatten, inputs)?,
                OpSpec::Add => b.simple(n, Op::Add, inputs)?,
            }
        }
        let model = b.finish(&file.name)?;
        if let Some(n) = file.num_classes.filter(|&n| n != model.num_classes()) {
            return Err(Error::Parse {
                what: "model JSON".into(),
                message: format!("num_classes is {n}, but the last layer outputs {}", model.num_classes()),
            });
        }
        Ok(model)
    }

    /// The nodes in topological order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Number of output classes (the last node's width).
    pub fn num_classes(&self) -> usize {
        self.nodes.last().map_or(0, |n| n.shape.len())
    }

    /// Elements of one input image.
    pub fn image_len(&self) -> usize {
        self.input.channels * self.input.height * self.input.width
    }

    /// Normalises a batch of `[0, 1]` images: `(x - mean[c]) / std[c]`.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] when `images` is not a positive multiple of the image size,
    /// [`Error::NonFinite`] for NaN or infinite pixels.
    pub fn normalize(&self, images: &[f32]) -> Result<Activation> {
        let per = self.image_len();
        if images.is_empty() || !images.len().is_multiple_of(per) {
            return Err(Error::LengthMismatch {
                what: "images (not a positive multiple of the model's C·H·W)",
                expected: per,
                got: images.len(),
            });
        }
        if let Some(i) = images.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite { what: "input images".into(), index: i, value: images[i].to_string() });
        }
        let hw = self.input.height * self.input.width;
        let pick = |v: &[f32], c: usize| if v.len() == 1 { v[0] } else { v[c] };
        let data = images.iter().enumerate().map(|(i, &x)| {
            let c = (i / hw) % self.input.channels;
            (x - pick(&self.input.mean, c)) / pick(&self.input.std, c)
        });
        Ok(Activation {
            batch: images.len() / per,
            shape: Shape { c: self.input.channels, h: self.input.height, w: self.input.width },
            data: data.collect(),
        })
    }

    /// Runs the graph on normalised input `x`. `Conv` and `Linear` nodes are delegated to
    /// `linear_op(node_index, node, input)`; every other operator runs here. Returns the logits
    /// and the time spent in the other operators.
    ///
    /// # Errors
    /// Whatever `linear_op` returns.
    pub fn run<F>(&self, x: Activation, mut linear_op: F) -> Result<(Activation, std::time::Duration)>
    where
        F: FnMut(usize, &Node, &Activation) -> Result<Activation>,
    {
        let mut other = std::time::Duration::ZERO;
        let mut values: Vec<Activation> = Vec::with_capacity(self.nodes.len());
        let batch = x.batch;
        for (idx, node) in self.nodes.iter().enumerate() {
            let get = |s: &Source| match s {
                Source::Input => &x,
                Source::Node(i) => &values[*i],
            };
            let a = get(&node.inputs[0]);
            let out = match &node.op {
                Op::Conv { .. } | Op::Linear { .. } => linear_op(idx, node, a)?,
                op => {
                    let start = std::time::Instant::now();
                    let s = a.shape;
                    let data = match op {
                        Op::Relu => a.data.iter().map(|&v| v.max(0.0)).collect(),
                        Op::MaxPool(p) => p.apply(&a.data, batch * s.c, s.h, s.w, true),
                        Op::AvgPool(p) => p.apply(&a.data, batch * s.c, s.h, s.w, false),
                        Op::GlobalAvgPool => ops::global_avg_pool(&a.data, s.h * s.w),
                        Op::Flatten => a.data.clone(),
                        Op::Add => a.data.iter().zip(&get(&node.inputs[1]).data).map(|(p, q)| p + q).collect(),
                        Op::Conv { .. } | Op::Linear { .. } => unreachable!("handled above"),
                    };
                    other += start.elapsed();
                    Activation { batch, shape: node.shape, data }
                }
            };
            values.push(out);
        }
        let logits = values
            .pop()
            .ok_or_else(|| Error::Parse { what: format!("model `{}`", self.name), message: "no layers".into() })?;
        Ok((logits, other))
    }

    /// The float model's logits (`batch × classes`) for `[0, 1]` images.
    ///
    /// # Errors
    /// As [`Model::normalize`].
    pub fn forward_float(&self, images: &[f32]) -> Result<Vec<f32>> {
        let x = self.normalize(images)?;
        let (logits, _) = self.run(x, |_, node, a| Ok(float_linear_op(node, a)))?;
        Ok(logits.data)
    }
}

/// The float `Conv` or `Linear` node `node` applied to `a`, bias included.
pub(crate) fn float_linear_op(node: &Node, a: &Activation) -> Activation {
    let data = match &node.op {
        Op::Conv { geom, weight, bias } => {
            let mut y = ops::conv_f32(geom, a.batch, weight, &a.data);
            for (plane, &b) in y.chunks_exact_mut(geom.n()).zip(bias.iter().cycle()) {
                plane.iter_mut().for_each(|v| *v += b);
            }
            y
        }
        Op::Linear { in_features, out_features, weight, bias } => {
            let mut y = ops::linear(a.batch, *in_features, *out_features, weight, &a.data);
            for row in y.chunks_exact_mut(*out_features) {
                row.iter_mut().zip(bias).for_each(|(v, &b)| *v += b);
            }
            y
        }
        _ => Vec::new(),
    };
    Activation { batch: a.batch, shape: node.shape, data }
}

/// The index of the largest logit of each row of `classes` logits.
pub fn argmax(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks_exact(classes.max(1))
        .map(|row| row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best }))
        .collect()
}
