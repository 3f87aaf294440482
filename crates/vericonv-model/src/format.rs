//! The native format: a JSON architecture (`vericonv-model/1`) beside a `.safetensors` file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::floats::{self, FloatType};
use crate::graph::{BatchNorm, ConvAttrs, GraphBuilder, InputSpec, Model, Op, Source, layer_err, output_len};
use crate::ops::Pool;
use crate::{ModelError, Result};
use vericonv::Padding;

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
    /// `min(max(x, min), max)` (ReLU6: `min` 0, `max` 6).
    Clip {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
    },
    /// The logistic function.
    Sigmoid,
    /// `max(0, min(1, alpha·x + beta))`.
    HardSigmoid {
        /// Slope, default 0.2 (as ONNX).
        #[serde(default = "hard_sigmoid_alpha")]
        alpha: f32,
        /// Offset, default 0.5.
        #[serde(default = "one_half")]
        beta: f32,
    },
    /// `x · hard_sigmoid(x)` with alpha 1/6, beta 1/2.
    HardSwish,
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
    /// The inputs stacked along the channels.
    Concat,
    /// Nearest-neighbour upsampling by whole factors.
    Resize {
        /// `[height, width]` factors.
        scale: [usize; 2],
    },
}

fn one() -> usize {
    1
}

fn hard_sigmoid_alpha() -> f32 {
    0.2
}

fn one_half() -> f32 {
    0.5
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

impl From<&Pool> for PoolSpec {
    fn from(p: &Pool) -> Self {
        let q = p.padding;
        PoolSpec {
            kernel: [p.kernel.0, p.kernel.1],
            stride: Some([p.stride.0, p.stride.1]),
            padding: [q.top, q.left, q.bottom, q.right],
            ceil_mode: p.ceil_mode,
            count_include_pad: p.count_include_pad,
        }
    }
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
    let kind = match t.dtype() {
        safetensors::Dtype::F32 => FloatType::F32,
        safetensors::Dtype::F16 => FloatType::F16,
        safetensors::Dtype::BF16 => FloatType::BF16,
        other => {
            return Err(layer_err(layer, format!("weight `{name}` has dtype {other:?}; f32, f16 or bf16 expected")));
        }
    };
    let values = floats::from_le_bytes(data, kind, &format!("layer `{layer}`: weight `{name}`"))?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(ModelError::NonFinite { what: format!("weight `{name}`"), index: i, value: values[i].to_string() });
    }
    Ok(values)
}

/// See [`Model::open`].
pub(crate) fn open(path: impl AsRef<Path>) -> Result<(Model, bool)> {
    let path = path.as_ref();
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx")) {
        crate::onnx::import::import_model_recorded(path)
    } else {
        Ok((load(path)?, true))
    }
}

/// See [`Model::load`].
pub(crate) fn load(path: impl AsRef<Path>) -> Result<Model> {
    let path = path.as_ref();
    let read = |p: &Path| std::fs::read(p).map_err(|e| ModelError::io(p, e));
    let json = read(path)?;
    let weights = read(&path.with_extension("safetensors"))?;
    from_bytes(&json, &weights)
}

/// See [`Model::from_bytes`].
pub(crate) fn from_bytes(json: &[u8], weights: &[u8]) -> Result<Model> {
    let file: ModelFile = serde_json::from_slice(json)
        .map_err(|e| ModelError::Parse { what: "model JSON".into(), message: e.to_string() })?;
    if file.format != FORMAT {
        return Err(ModelError::Parse {
            what: "model JSON".into(),
            message: format!("format `{}`, expected `{FORMAT}`", file.format),
        });
    }
    let st = safetensors::SafeTensors::deserialize(weights)
        .map_err(|e| ModelError::Parse { what: "model weights (safetensors)".into(), message: e.to_string() })?;
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
            OpSpec::Clip { min, max } => b.simple(n, Op::Clip { min: *min, max: *max }, inputs)?,
            OpSpec::Sigmoid => b.simple(n, Op::Sigmoid, inputs)?,
            OpSpec::HardSigmoid { alpha, beta } => {
                b.simple(n, Op::HardSigmoid { alpha: *alpha, beta: *beta }, inputs)?
            }
            OpSpec::HardSwish => b.simple(n, Op::HardSwish, inputs)?,
            OpSpec::Maxpool2d(p) => b.simple(n, Op::MaxPool(p.into()), inputs)?,
            OpSpec::Avgpool2d(p) => b.simple(n, Op::AvgPool(p.into()), inputs)?,
            OpSpec::GlobalAvgpool => b.simple(n, Op::GlobalAvgPool, inputs)?,
            OpSpec::Flatten => b.simple(n, Op::Flatten, inputs)?,
            OpSpec::Add => b.simple(n, Op::Add, inputs)?,
            OpSpec::Concat => b.simple(n, Op::Concat, inputs)?,
            OpSpec::Resize { scale } => b.simple(n, Op::Resize { scale_h: scale[0], scale_w: scale[1] }, inputs)?,
        }
    }
    let model = b.finish(&file.name)?;
    if let Some(n) = file.num_classes.filter(|&n| n != output_len(&model.nodes)) {
        return Err(ModelError::Parse {
            what: "model JSON".into(),
            message: format!("num_classes is {n}, but the last layer outputs {}", output_len(&model.nodes)),
        });
    }
    Ok(model)
}

/// See [`Model::save`].
pub(crate) fn save(model: &Model, path: impl AsRef<Path>, training: Option<serde_json::Value>) -> Result<()> {
    let path = path.as_ref();
    let name_of = |s: &Source| match s {
        Source::Input => "input".to_string(),
        Source::Node(i) => model.nodes[*i].name.clone(),
    };
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut layers = Vec::new();
    for (i, n) in model.nodes.iter().enumerate() {
        // The previous node (or the input, for the first) is the default input.
        let default = if i == 0 { Source::Input } else { Source::Node(i - 1) };
        let inputs = (n.inputs.as_slice() != [default]).then(|| n.inputs.iter().map(name_of).collect());
        let op = match &n.op {
            Op::Conv { geom: g, weight, bias } => {
                tensors.push((
                    format!("{}.weight", n.name),
                    vec![g.cout(), g.cin_per_group(), g.kh(), g.kw()],
                    bytes(weight),
                ));
                if !bias.is_empty() {
                    tensors.push((format!("{}.bias", n.name), vec![g.cout()], bytes(bias)));
                }
                let p = g.padding();
                OpSpec::Conv2d {
                    out_channels: g.cout(),
                    kernel: [g.kh(), g.kw()],
                    stride: [g.stride().0, g.stride().1],
                    padding: [p.top, p.left, p.bottom, p.right],
                    dilation: [g.dilation().0, g.dilation().1],
                    groups: g.groups(),
                    bias: !bias.is_empty(),
                }
            }
            Op::Linear { in_features, out_features, weight, bias } => {
                tensors.push((format!("{}.weight", n.name), vec![*out_features, *in_features], bytes(weight)));
                if !bias.is_empty() {
                    tensors.push((format!("{}.bias", n.name), vec![*out_features], bytes(bias)));
                }
                OpSpec::Linear { out_features: *out_features, bias: !bias.is_empty() }
            }
            Op::Relu => OpSpec::Relu,
            Op::Clip { min, max } => OpSpec::Clip { min: *min, max: *max },
            Op::Sigmoid => OpSpec::Sigmoid,
            Op::HardSigmoid { alpha, beta } => OpSpec::HardSigmoid { alpha: *alpha, beta: *beta },
            Op::HardSwish => OpSpec::HardSwish,
            Op::MaxPool(p) => OpSpec::Maxpool2d(p.into()),
            Op::AvgPool(p) => OpSpec::Avgpool2d(p.into()),
            Op::GlobalAvgPool => OpSpec::GlobalAvgpool,
            Op::Flatten => OpSpec::Flatten,
            Op::Add => OpSpec::Add,
            Op::Concat => OpSpec::Concat,
            Op::Resize { scale_h, scale_w } => OpSpec::Resize { scale: [*scale_h, *scale_w] },
        };
        layers.push(LayerSpec { name: n.name.clone(), inputs, op });
    }
    let file = ModelFile {
        format: FORMAT.into(),
        name: model.name.clone(),
        input: model.input.clone(),
        num_classes: Some(output_len(&model.nodes)),
        layers,
        training,
    };
    let json = serde_json::to_vec_pretty(&file).map_err(|e| ModelError::Internal(format!("model JSON: {e}")))?;
    let views = tensors
        .iter()
        .map(|(n, shape, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| ModelError::Internal(format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let weights = safetensors::serialize(views, None).map_err(|e| ModelError::Internal(format!("safetensors: {e}")))?;
    std::fs::write(path, json).map_err(|e| ModelError::io(path, e))?;
    let wpath = path.with_extension("safetensors");
    std::fs::write(&wpath, weights).map_err(|e| ModelError::io(&wpath, e))
}
