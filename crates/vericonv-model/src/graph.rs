//! The graph: shapes, operators, nodes and [`GraphBuilder`], which checks every shape as it
//! adds a node (products cannot wrap; every tensor stays below [`MAX_ELEMENTS`]).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::ops::Pool;
use crate::{ModelError, Result};
use vericonv::{Conv2d, Padding};

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

fn too_large(what: &str, value: usize) -> ModelError {
    ModelError::Parse {
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

impl InputSpec {
    /// The specification of inputs of shape `image_shape` (channels first; the other
    /// dimensions are the plane each channel's normalisation covers) normalised by `mean` and
    /// `std` (one value, or one per channel; none: mean 0, std 1), checked.
    ///
    /// # Errors
    /// As [`InputSpec::check`].
    pub fn of_shape(image_shape: &[usize], mean: &[f32], std: &[f32]) -> Result<Self> {
        let or = |v: &[f32], identity: f32| if v.is_empty() { vec![identity] } else { v.to_vec() };
        let spec = Self {
            channels: image_shape.first().copied().unwrap_or(1),
            height: image_shape.iter().skip(1).product(),
            width: 1,
            mean: or(mean, 0.0),
            std: or(std, 1.0),
        };
        spec.check()?;
        Ok(spec)
    }

    /// Elements of one image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The mean and standard deviation of channel `c` (one value serves every channel).
    pub fn channel_scale(&self, c: usize) -> (f32, f32) {
        let pick = |v: &[f32]| if v.len() == 1 { v[0] } else { v[c] };
        (pick(&self.mean), pick(&self.std))
    }

    /// Normalises images in place, `(x - mean[c]) / std[c]` over each `height × width` plane,
    /// the planes in channel order, image after image.
    pub fn normalize(&self, images: &mut [f32]) {
        let plane = (self.height * self.width).max(1);
        for (i, p) in images.chunks_mut(plane).enumerate() {
            let (mean, std) = self.channel_scale(i % self.channels.max(1));
            p.iter_mut().for_each(|v| *v = (*v - mean) / std);
        }
    }

    /// Checks the specification: a non-empty image, and one finite mean and one finite,
    /// non-zero standard deviation for every channel (or one for all).
    ///
    /// # Errors
    /// [`crate::ModelError::Parse`] naming what is wrong.
    pub fn check(&self) -> Result<()> {
        let per_channel = |v: &[f32]| v.len() == 1 || v.len() == self.channels;
        let bad = |message: String| Err(ModelError::Parse { what: "model input".into(), message });
        if self.channels.saturating_mul(self.height).saturating_mul(self.width) == 0 {
            return bad(format!("an empty image {}×{}×{}", self.channels, self.height, self.width));
        }
        if !per_channel(&self.mean) || !per_channel(&self.std) {
            return bad(format!(
                "{} mean and {} std values for {} channels (give one, or one per channel)",
                self.mean.len(),
                self.std.len(),
                self.channels
            ));
        }
        if self.std.iter().any(|&s| s == 0.0 || !s.is_finite()) || self.mean.iter().any(|m| !m.is_finite()) {
            return bad(format!("mean {:?} and std {:?} must be finite, std non-zero", self.mean, self.std));
        }
        Ok(())
    }
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
    /// `min(max(x, min), max)`: ReLU6 is `Clip { min: 0, max: 6 }`.
    Clip {
        /// Lower bound (may be -∞).
        min: f32,
        /// Upper bound (may be +∞).
        max: f32,
    },
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `max(0, min(1, alpha·x + beta))`.
    HardSigmoid {
        /// Slope.
        alpha: f32,
        /// Offset.
        beta: f32,
    },
    /// `x · max(0, min(1, x/6 + 1/2))`.
    HardSwish,
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
    /// The inputs stacked along the channels, in order (all of one height and width).
    Concat,
    /// Nearest-neighbour upsampling by whole factors: output `(y, x)` reads input
    /// `(y / scale_h, x / scale_w)`.
    Resize {
        /// Height factor, at least 1.
        scale_h: usize,
        /// Width factor, at least 1.
        scale_w: usize,
    },
}

impl Op {
    /// Short name, as in the native format.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Conv { .. } => "conv2d",
            Op::Linear { .. } => "linear",
            Op::Relu => "relu",
            Op::Clip { .. } => "clip",
            Op::Sigmoid => "sigmoid",
            Op::HardSigmoid { .. } => "hard_sigmoid",
            Op::HardSwish => "hard_swish",
            Op::MaxPool(_) => "maxpool2d",
            Op::AvgPool(_) => "avgpool2d",
            Op::GlobalAvgPool => "global_avgpool",
            Op::Flatten => "flatten",
            Op::Add => "add",
            Op::Concat => "concat",
            Op::Resize { .. } => "resize",
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

/// A CNN in topological order; the last node's output is the logits. Its methods are in
/// `model.rs`, above the executor and the file formats that work on it.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub(crate) name: String,
    pub(crate) input: InputSpec,
    pub(crate) nodes: Vec<Node>,
}

/// The width of the graph's output: the number of classes.
pub(crate) fn output_len(nodes: &[Node]) -> usize {
    nodes.last().map_or(0, |n| n.shape.len())
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

pub(crate) fn layer_err(layer: &str, message: impl std::fmt::Display) -> ModelError {
    ModelError::Parse { what: format!("layer `{layer}`"), message: message.to_string() }
}

impl GraphBuilder {
    /// Starts a graph whose input is `input`.
    ///
    /// # Errors
    /// [`crate::ModelError::Parse`] for an empty input or a normalisation that does not fit the channels.
    pub fn new(input: InputSpec) -> Result<Self> {
        if bounded_len(input.channels, input.height, input.width).is_none() {
            return Err(too_large("model input", input.channels));
        }
        input.check()?;
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
    /// [`crate::ModelError::Parse`] for an unknown name, or the pre-BatchNorm output of a folded convolution.
    pub fn source(&self, layer: &str, name: &str) -> Result<Source> {
        if let Some(bn) = self.folded.get(name) {
            return Err(ModelError::Unsupported(format!(
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
    /// Geometry errors, or [`crate::ModelError::Parse`] for weights of the wrong size.
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
    /// [`crate::ModelError::Parse`] for a non-vector input or weights of the wrong size.
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
    /// [`crate::ModelError::Parse`] for a duplicate name.
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
    /// [`crate::ModelError::Unsupported`] when `src` is not a convolution or linear layer used only here,
    /// [`crate::ModelError::Parse`] for a bias of the wrong size.
    pub fn add_bias(&mut self, name: &str, src: Source, extra: &[f32]) -> Result<()> {
        let idx = match src {
            Source::Node(i) if self.consumers[i] == 0 => i,
            _ => {
                return Err(ModelError::Unsupported(format!(
                    "`{name}` adds a constant to something other than a freshly computed conv or linear layer"
                )));
            }
        };
        match &mut self.nodes[idx].op {
            Op::Conv { bias, .. } | Op::Linear { bias, .. } if extra.len() == bias.len() => {
                bias.iter_mut().zip(extra).for_each(|(b, e)| *b += e);
            }
            _ => {
                return Err(ModelError::Unsupported(format!(
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
    /// [`crate::ModelError::Unsupported`] when `input` is not a convolution used only by this BatchNorm,
    /// [`crate::ModelError::Parse`] for statistics of the wrong size.
    pub fn batchnorm(&mut self, name: &str, input: Source, bn: &BatchNorm) -> Result<()> {
        let BatchNorm { gamma, beta, mean, var, eps } = bn;
        let Source::Node(i) = input else {
            return Err(ModelError::Unsupported(format!(
                "BatchNorm `{name}` must follow a convolution, not the model input"
            )));
        };
        if self.consumers[i] != 0 {
            return Err(ModelError::Unsupported(format!(
                "BatchNorm `{name}`: the output of `{}` is also used elsewhere, so it cannot be folded",
                self.nodes[i].name
            )));
        }
        let conv_name = self.nodes[i].name.clone();
        let Op::Conv { geom, weight, bias } = &mut self.nodes[i].op else {
            return Err(ModelError::Unsupported(format!(
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

    /// Adds an operator without weights: an activation, pooling, global average pooling, flatten,
    /// add.
    ///
    /// # Errors
    /// [`crate::ModelError::Parse`] for shapes that do not fit the operator.
    pub fn simple(&mut self, name: &str, op: Op, inputs: Vec<Source>) -> Result<()> {
        let s = inputs.first().map(|&i| self.shape_of(i)).ok_or_else(|| layer_err(name, "no input"))?;
        let shape = match &op {
            Op::Clip { min, max } if min.is_nan() || max.is_nan() || min > max => {
                return Err(layer_err(name, format!("clip bounds [{min}, {max}] are not an interval")));
            }
            Op::HardSigmoid { alpha, beta } if !alpha.is_finite() || !beta.is_finite() => {
                return Err(layer_err(name, format!("hard sigmoid alpha = {alpha}, beta = {beta} must be finite")));
            }
            Op::Relu | Op::Clip { .. } | Op::Sigmoid | Op::HardSigmoid { .. } | Op::HardSwish => s,
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
            Op::Concat => {
                let shapes: Vec<Shape> = inputs.iter().map(|&i| self.shape_of(i)).collect();
                if shapes.iter().any(|t| (t.h, t.w) != (s.h, s.w)) {
                    return Err(layer_err(
                        name,
                        format!("concat needs inputs of one height and width, got {shapes:?}"),
                    ));
                }
                let c = shapes.iter().try_fold(0usize, |a, t| a.checked_add(t.c));
                let c = c.filter(|&c| bounded_len(c, s.h, s.w).is_some()).ok_or_else(|| too_large(name, s.len()))?;
                Shape { c, h: s.h, w: s.w }
            }
            Op::Resize { scale_h, scale_w } => {
                let (h, w) = (s.h.checked_mul(*scale_h), s.w.checked_mul(*scale_w));
                match (h, w) {
                    _ if *scale_h == 0 || *scale_w == 0 => {
                        return Err(layer_err(name, "resize factors must be at least 1"));
                    }
                    (Some(h), Some(w)) if bounded_len(s.c, h, w).is_some() => Shape { c: s.c, h, w },
                    _ => return Err(too_large(name, s.len())),
                }
            }
            Op::Conv { .. } | Op::Linear { .. } => return Err(layer_err(name, "use GraphBuilder::conv or ::linear")),
        };
        let arity_ok = match op {
            Op::Add => inputs.len() == 2,
            Op::Concat => !inputs.is_empty(),
            _ => inputs.len() == 1,
        };
        if !arity_ok {
            return Err(layer_err(name, format!("{} does not take {} input(s)", op.kind(), inputs.len())));
        }
        self.push(name, op, inputs, shape)
    }

    /// Finishes the graph: its last node is the output.
    ///
    /// # Errors
    /// [`crate::ModelError::Parse`] for an empty graph.
    pub fn finish(self, name: &str) -> Result<Model> {
        if self.nodes.is_empty() {
            return Err(ModelError::Parse { what: format!("model `{name}`"), message: "no layers".into() });
        }
        Ok(Model { name: name.to_string(), input: self.input, nodes: self.nodes })
    }
}
