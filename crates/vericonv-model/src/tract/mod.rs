//! Any ONNX model on tract, its convolutions private.
//!
//! tract loads the graph (shape inference, constant folding, hundreds of operators) and runs
//! every node on the client, except the convolutions with constant weights: each becomes a
//! private operator, put in with a tract model patch, which quantizes its input (8-bit
//! symmetric per image, as the native pipeline does), has the exact integer convolution computed by a
//! [`ConvExecutor`] and re-scales it to float with the same client code as the native
//! pipeline. Two executors exist: [`Reference`], the client's own integer convolution (the
//! quantized plaintext model), and [`PrivateConvs`], the private protocol on untrusted clouds.
//! Only the source of the integers differs between them, so private logits are bit-identical
//! to the quantized model's.
//!
//! 1-D convolutions run as 2-D ones with a height of 1. Every other node, `Gemm` and `MatMul`
//! included, runs on the client in float.

mod exec;
mod op;

use std::path::Path;
use std::sync::Arc;

use crate::{ModelError, Result};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::{Conv, Deconv, KernelFormat, PoolSpec};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::nn::DataFormat;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;
use vericonv::Error;
use vericonv::{Conv2d, Padding};

pub use exec::{ConvExecutor, OwnedClouds, PrivateConvs, Reference};

use crate::quant::{QuantConfig, QuantLayer};

/// A convolution of the graph that runs privately: its quantized weights and geometry.
#[derive(Debug)]
pub struct PrivateLayer {
    /// The index among the model's private layers.
    pub index: usize,
    /// The quantized layer (geometry, 8-bit weights, scales, float bias).
    pub quant: QuantLayer,
    /// What the node was, which sets the output's layout.
    pub kind: LayerKind,
    /// For a transposed convolution (`ConvTranspose`), its strides `(sh, sw)`: the client spreads
    /// the input with `sh − 1` and `sw − 1` zeros between pixels, and `quant` is the equivalent
    /// convolution of that spread input (flipped kernel, stride 1).
    pub spread: Option<(usize, usize)>,
    /// The bits its input is quantized to.
    pub act_bits: u32,
}

/// What a private layer was in the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// A 2-D (or transposed 2-D) convolution.
    Conv2d,
    /// A 1-D (or transposed 1-D) convolution, run with a height of 1.
    Conv1d,
    /// A matrix product of a `batch × K` activation and constant `K × M` weights (`Gemm`,
    /// `MatMul`), run as the 1×1 convolution of a `K × 1 × 1` input; private only when the
    /// model outsources its linear layers ([`TractModel::outsource_linear`]).
    Linear {
        /// Which input of the node is the activation (the other is the weights).
        input: usize,
    },
}

impl LayerKind {
    /// Whether the layer is a linear one.
    pub fn is_linear(self) -> bool {
        matches!(self, LayerKind::Linear { .. })
    }
}

/// An ONNX model loaded by tract, with the convolutions it can run privately. Its batch
/// dimension stays free.
pub struct TractModel {
    name: String,
    /// The typed graph, its input `N × image_shape` with a symbolic batch `N`.
    typed: TypedModel,
    /// Per-image input shape (without the batch).
    image_shape: Vec<usize>,
    /// The private layers, by tract node id (the linear ones only count when outsourced).
    layers: Vec<(usize, Arc<PrivateLayer>)>,
    /// Convolutions that stay on the client, with the reason.
    skipped: Vec<(String, String)>,
    /// Matrix products with constant weights that cannot be outsourced, with the reason.
    linear_skipped: Vec<(String, String)>,
    /// Whether the linear layers run privately too.
    outsource_linear: bool,
}

impl std::fmt::Debug for TractModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractModel")
            .field("name", &self.name)
            .field("image_shape", &self.image_shape)
            .field("private_layers", &self.layers.len())
            .finish_non_exhaustive()
    }
}

/// A tract error as this crate's error, naming what was being done.
fn tract_error(what: &str, e: &TractError) -> ModelError {
    ModelError::Parse { what: what.to_string(), message: format!("{e:#}") }
}

/// `f()`, with a panic inside tract (a large parser and optimizer of untrusted graphs) turned
/// into an [`crate::ModelError::Parse`] about `what`: the caller always gets a typed error.
fn guarded<T>(what: String, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "tract panicked".into());
        Err(ModelError::Parse { what, message: format!("tract failed on this model: {why}") })
    })
}

/// The most elements one input image may have (1 GiB of `f32`).
pub const MAX_IMAGE_ELEMENTS: usize = 1 << 28;

impl TractModel {
    /// Loads the ONNX model at `path`. `image_shape` is one image's input shape without the
    /// batch (`[C, H, W]`, `[C, L]`…): it fixes the dimensions a model leaves dynamic; `None`
    /// takes the model's own, which must then be fixed apart from the batch.
    ///
    /// # Errors
    /// [`crate::ModelError::Io`] for a file that cannot be read; [`crate::ModelError::Parse`] with tract's reason (and
    /// the node it names) for a model tract cannot load or type; [`Error::ExactnessBound`] for
    /// a convolution that could overflow F_p.
    pub fn open(path: &Path, image_shape: Option<&[usize]>, cfg: &QuantConfig) -> Result<Self> {
        let what = format!("ONNX model {}", path.display());
        let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        guarded(what, || Self::load(path, &bytes, image_shape, cfg))
    }

    fn load(path: &Path, bytes: &[u8], image_shape: Option<&[usize]>, cfg: &QuantConfig) -> Result<Self> {
        let what = format!("ONNX model {}", path.display());
        let model = tract_onnx::onnx().model_for_read(&mut &bytes[..]).map_err(|e| tract_error(&what, &e))?;
        let image_shape = match image_shape {
            Some(s) => s.to_vec(),
            None => declared_image_shape(&model).map_err(|m| ModelError::Parse { what: what.clone(), message: m })?,
        };
        // One image must be a tensor that can exist: every dimension at least 1, at most
        // MAX_IMAGE_ELEMENTS in all (checked before tract plans anything for it).
        let elements = image_shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d).filter(|_| d > 0));
        if elements.is_none_or(|n| n > MAX_IMAGE_ELEMENTS) {
            return Err(ModelError::Parse {
                what,
                message: format!(
                    "an input of shape {image_shape:?} per image; each dimension must be at least 1 and an image at most {MAX_IMAGE_ELEMENTS} elements"
                ),
            });
        }
        let batch = model.symbols.sym("N");
        let shape: Vec<TDim> =
            std::iter::once(TDim::from(batch)).chain(image_shape.iter().map(|&d| d.into())).collect();
        // Typed, constants propagated (weights behind casts or reshapes become constants),
        // but not decluttered: decluttering turns 1×1 convolutions into matrix products, which
        // would hide them from the replacement; it runs after it, in `plan`.
        let mut typed = model
            .with_input_fact(0, f32::fact(shape).into())
            .and_then(|m| m.into_typed())
            .map_err(|e| tract_error(&what, &e))?;
        typed.prop_consts().map_err(|e| tract_error(&what, &e))?;
        let name = path.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
        let (mut layers, mut skipped, mut linear_skipped) = (Vec::new(), Vec::new(), Vec::new());
        for node in typed.nodes() {
            let (found, skips) = if let Some(conv) = node.op_as::<Conv>() {
                (private_layer(&typed, node, conv, layers.len(), cfg)?, &mut skipped)
            } else if let Some(deconv) = node.op_as::<Deconv>() {
                (private_transposed(&typed, node, deconv, layers.len(), cfg)?, &mut skipped)
            } else if let Some(einsum) = node.op_as::<EinSum>() {
                match private_linear(&typed, node, einsum, layers.len(), cfg)? {
                    Some(found) => (found, &mut linear_skipped),
                    None => continue,
                }
            } else {
                continue;
            };
            match found {
                Ok(layer) => layers.push((node.id, Arc::new(layer))),
                Err(reason) => skips.push((node.name.clone(), reason)),
            }
        }
        Ok(Self { name, typed, image_shape, layers, skipped, linear_skipped, outsource_linear: false })
    }

    /// The model's name (its file stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// One image's input shape, without the batch.
    pub fn image_shape(&self) -> &[usize] {
        &self.image_shape
    }

    /// Sends the linear layers (`Gemm` and `MatMul` of a `batch × K` activation by constant
    /// weights) to the clouds too, as 1×1 convolutions, in every plan made afterwards (the
    /// quantized reference included, so that it stays the private run's twin). Their masks are
    /// weaker than a convolution's (docs/scheme.md §9): by default they stay on the client, in
    /// float.
    pub fn outsource_linear(&mut self, on: bool) {
        self.outsource_linear = on;
    }

    fn private(&self) -> impl Iterator<Item = &(usize, Arc<PrivateLayer>)> {
        self.layers.iter().filter(|(_, l)| self.outsource_linear || !l.kind.is_linear())
    }

    /// The layers that run privately: the convolutions, and the linear layers when outsourced.
    pub fn private_layers(&self) -> impl Iterator<Item = &PrivateLayer> {
        self.private().map(|(_, l)| &**l)
    }

    /// The convolutions (and, when outsourced, the linear layers) that stay on the client, with
    /// the reason.
    pub fn skipped(&self) -> Vec<(String, String)> {
        let linear = self.linear_skipped.iter().filter(|_| self.outsource_linear);
        self.skipped.iter().chain(linear).cloned().collect()
    }

    /// Nodes in the graph.
    pub fn node_count(&self) -> usize {
        self.typed.nodes().len()
    }

    /// A runnable plan of the model: the float model as tract runs it (`exec` `None`), or the
    /// model with every private layer's integers from `exec`: the quantized plaintext model
    /// with [`Reference`], the private one with [`PrivateConvs`].
    ///
    /// # Errors
    /// [`crate::ModelError::Parse`] with tract's reason when it cannot optimize the graph.
    pub fn plan(&self, exec: Option<Arc<dyn ConvExecutor>>) -> Result<Plan> {
        self.plan_with(exec, true)
    }

    /// [`TractModel::plan`] without fusing any node into the private operators: each `Add` and
    /// ReLU after a convolution stays a tract node. The same values bit for bit, only slower;
    /// it is there to check the fusion.
    ///
    /// # Errors
    /// As [`TractModel::plan`].
    pub fn plan_unfused(&self, exec: Option<Arc<dyn ConvExecutor>>) -> Result<Plan> {
        self.plan_with(exec, false)
    }

    fn plan_with(&self, exec: Option<Arc<dyn ConvExecutor>>, fuse: bool) -> Result<Plan> {
        let what = format!("planning {}", self.name);
        let err = |e: TractError| tract_error(&what, &e);
        let mut model = self.typed.clone();
        let mut counts = (0, 0);
        if let Some(exec) = &exec {
            for (id, layer) in self.private() {
                let node = model.node(*id).clone();
                // A convolution's output facts come from its weights' facts (inputs 1 and 2).
                let facts = || -> Result<[TypedFact; 2]> {
                    let fact = |i: usize| model.outlet_fact(node.inputs[i]).map(|f| f.without_value()).map_err(err);
                    Ok([fact(1)?, fact(2)?])
                };
                let (replaced, input) = match (layer.kind, node.op_as::<Conv>(), node.op_as::<Deconv>()) {
                    (LayerKind::Linear { input }, ..) => {
                        (op::Replaced::Linear { outputs: layer.quant.geom.cout() }, input)
                    }
                    (_, Some(c), _) => (op::Replaced::Conv(c.clone(), facts()?), 0),
                    (_, _, Some(d)) => (op::Replaced::Deconv(d.clone(), facts()?), 0),
                    _ => return Err(ModelError::Internal("a private node moved".into())),
                };
                let (fused, residual, last) =
                    if fuse { fusable(&model, node.id) } else { (op::Fused::default(), None, node.id) };
                counts.0 += usize::from(fused.residual);
                counts.1 += usize::from(fused.relu);
                let op = op::PrivateConvOp::new(layer.clone(), exec.clone(), replaced, fused);
                let mut patch = TypedModelPatch::default();
                let mut taps = vec![patch.tap_model(&model, node.inputs[input]).map_err(err)?];
                if let Some(r) = residual {
                    taps.push(patch.tap_model(&model, r).map_err(err)?);
                }
                let out = patch.wire_node(&node.name, op, &taps).map_err(err)?;
                patch.shunt_outside(&model, OutletId::new(last, 0), out[0]).map_err(err)?;
                patch.apply(&mut model).map_err(err)?;
            }
        }
        let plan = guarded(what.clone(), || model.into_optimized().and_then(|m| m.into_runnable()).map_err(err))?;
        Ok(Plan { name: self.name.clone(), image_shape: self.image_shape.clone(), plan, fused: counts, _exec: exec })
    }
}

/// The node that alone reads output 0 of node `id` (a graph output has no such node).
fn only_consumer(model: &TypedModel, id: usize) -> Option<&TypedNode> {
    let outlet = OutletId::new(id, 0);
    match model.outlet_successors(outlet) {
        [inlet] if !model.output_outlets().is_ok_and(|o| o.contains(&outlet)) => Some(model.node(inlet.node)),
        _ => None,
    }
}

/// A binary element-wise node named `name` (`Add`, `Max`) of `from`'s output and another
/// operand: that operand.
fn binary_with(node: &TypedNode, name: &str, from: usize) -> Option<OutletId> {
    let op = node.op_as::<TypedBinOp>().filter(|op| op.0.name() == name)?;
    let from = OutletId::new(from, 0);
    match node.inputs.as_slice() {
        [a, b] if *a == from && *b != from => Some(*b),
        [a, b] if *b == from && *a != from => Some(*a),
        _ => None,
    }
    .filter(|_| op.1.is_none_or(|dt| dt == f32::datum_type()))
}

/// What after the convolution node `conv` fuses into its private operator, as the native
/// pipeline fuses it: an `Add` whose other operand has exactly the convolution's output shape
/// (the residual), then a ReLU (`Max` with a constant 0), each the only reader of what comes
/// before it. Returns the fusion, the residual operand and the last node fused.
fn fusable(model: &TypedModel, conv: usize) -> (op::Fused, Option<OutletId>, usize) {
    let same_shape = |a: OutletId, b: OutletId| match (model.outlet_fact(a), model.outlet_fact(b)) {
        (Ok(a), Ok(b)) => a.datum_type == f32::datum_type() && a.datum_type == b.datum_type && a.shape == b.shape,
        _ => false,
    };
    let (mut fused, mut residual, mut last) = (op::Fused::default(), None, conv);
    if let Some(add) = only_consumer(model, conv)
        && let Some(other) = binary_with(add, "Add", conv)
        && same_shape(other, OutletId::new(conv, 0))
        && same_shape(OutletId::new(add.id, 0), OutletId::new(conv, 0))
    {
        fused.residual = true;
        residual = Some(other);
        last = add.id;
    }
    if let Some(max) = only_consumer(model, last)
        && let Some(zero) = binary_with(max, "Max", last)
        && let Ok(fact) = model.outlet_fact(zero)
        && let Some(k) = &fact.konst
        && k.len() == 1
        && k.cast_to_scalar::<f32>().is_ok_and(|z| z == 0.0)
        && same_shape(OutletId::new(max.id, 0), OutletId::new(last, 0))
    {
        fused.relu = true;
        last = max.id;
    }
    (fused, residual, last)
}

/// A runnable model (see [`TractModel::plan`]), for any batch.
pub struct Plan {
    name: String,
    image_shape: Vec<usize>,
    plan: Arc<TypedSimplePlan>,
    /// Residual `Add`s and ReLUs fused into the private operators.
    fused: (usize, usize),
    _exec: Option<Arc<dyn ConvExecutor>>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Plan {
    /// The residual `Add`s and the ReLUs that run inside the private operators' re-scaling pass
    /// (as the native pipeline fuses them) rather than as nodes of their own.
    pub fn fused(&self) -> (usize, usize) {
        self.fused
    }

    /// Runs `images` (`batch × image_shape`, any batch); returns the first output, flat, and
    /// its shape.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] for an input that is not whole images; the executor's errors
    /// (for the private one: the clouds' errors and verification failures, which decrypt
    /// nothing); [`crate::ModelError::Parse`] with tract's reason when tract fails.
    pub fn run(&self, images: &[f32]) -> Result<(Vec<f32>, Vec<usize>)> {
        let per: usize = self.image_shape.iter().product();
        if per == 0 || images.is_empty() || !images.len().is_multiple_of(per) {
            return Err(Error::LengthMismatch { what: "model input", expected: per, got: images.len() }.into());
        }
        let mut shape = vec![images.len() / per];
        shape.extend(&self.image_shape);
        let input = Tensor::from_shape(&shape, images).map_err(|e| tract_error(&self.name, &e))?;
        // An executor's own error (a cheating cloud) comes back through tract: recover it.
        let out = self.plan.run(tvec!(input.into())).map_err(|e| {
            e.downcast_ref::<ModelError>()
                .cloned()
                .unwrap_or_else(|| tract_error(&format!("running {}", self.name), &e))
        })?;
        let first = out.first().ok_or_else(|| ModelError::Internal("the model has no output".into()))?;
        let view = first.to_plain_array_view::<f32>().map_err(|e| tract_error(&self.name, &e))?;
        Ok((view.iter().copied().collect(), first.shape().to_vec()))
    }
}

/// What a node's inspection found, or why the node stays on the client.
type Found<T> = std::result::Result<T, String>;

/// The model's own input shape without the batch, when it is fixed.
fn declared_image_shape(model: &InferenceModel) -> std::result::Result<Vec<usize>, String> {
    let fact = model.input_fact(0).map_err(|e| format!("{e:#}"))?;
    let shape = fact.shape.concretize().ok_or("the input's rank is not known: give the input shape")?;
    shape
        .iter()
        .skip(1)
        .map(|d| d.to_usize().map_err(|_| format!("the input dimension {d} is dynamic: give the input shape")))
        .collect()
}

/// The private layer of a `Conv` node, `Ok(Err(reason))` when it stays on the client.
fn private_layer(
    model: &TypedModel,
    node: &TypedNode,
    conv: &Conv,
    index: usize,
    cfg: &QuantConfig,
) -> Result<Found<PrivateLayer>> {
    if conv.q_params.is_some() {
        return Ok(Err("an already quantized convolution".into()));
    }
    let rank = conv.pool_spec.rank();
    let spatial = match spatial_input(model, node, &conv.pool_spec, conv.kernel_fmt) {
        Ok(s) => s,
        Err(reason) => return Ok(Err(reason)),
    };
    let as_2d = |v: &[usize], one: usize| if rank == 1 { vec![one, v[0]] } else { v.to_vec() };
    let hw = as_2d(&spatial, 1);
    let padding = conv.pool_spec.computed_padding(&spatial);
    let (before, after): (Vec<usize>, Vec<usize>) = padding.iter().map(|p| (p.pad_before, p.pad_after)).unzip();
    let (before, after) = (as_2d(&before, 0), as_2d(&after, 0));
    let kernel_shape = as_2d(&conv.pool_spec.kernel_shape, 1);
    let strides = as_2d(&conv.pool_spec.strides(), 1);
    let dilations = as_2d(&conv.pool_spec.dilations(), 1);
    let geom = Conv2d::builder(
        conv.input_channels(),
        conv.output_channels(),
        (hw[0], hw[1]),
        (kernel_shape[0], kernel_shape[1]),
    )
    .stride(strides[0], strides[1])
    .padding(Padding::new(before[0], before[1], after[0], after[1]))
    .dilation(dilations[0], dilations[1])
    .groups(conv.group)
    .build();
    let kind = if rank == 1 { LayerKind::Conv1d } else { LayerKind::Conv2d };
    let shape = LayerShape { index, kind, spread: None };
    finish_layer(model, node, geom, shape, cfg, |weight| weight)
}

/// The spatial dimensions of a (transposed) convolution's input, checked: NCHW data, an OIHW
/// kernel, 1 or 2 spatial axes, all fixed (the batch may be symbolic).
fn spatial_input(model: &TypedModel, node: &TypedNode, spec: &PoolSpec, kernel: KernelFormat) -> Found<Vec<usize>> {
    if spec.data_format != DataFormat::NCHW || kernel != KernelFormat::OIHW {
        return Err("a layout other than NCHW/OIHW".into());
    }
    let input = model.outlet_fact(node.inputs[0]).map_err(|e| format!("{e:#}"))?;
    let rank = spec.rank();
    if !(1..=2).contains(&rank) || input.shape.len() != rank + 2 {
        return Err(format!("a {rank}-D convolution (1-D and 2-D are private)"));
    }
    input
        .shape
        .iter()
        .skip(2)
        .map(|d| d.to_usize().ok())
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| "spatial dimensions that are not fixed (give the input shape)".into())
}

/// Where a private layer sits and what its input goes through before the convolution.
struct LayerShape {
    index: usize,
    kind: LayerKind,
    spread: Option<(usize, usize)>,
}

/// The private layer of `node` with the geometry `geom` (its error: the node stays on the
/// client): its constant weights through `weights`, its bias broadcast to the
/// output channels, quantized.
fn finish_layer(
    model: &TypedModel,
    node: &TypedNode,
    geom: vericonv::Result<Conv2d>,
    shape: LayerShape,
    cfg: &QuantConfig,
    weights: impl FnOnce(Vec<f32>) -> Vec<f32>,
) -> Result<Found<PrivateLayer>> {
    let geom = match geom {
        Ok(g) => g,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let (weight, bias) = match weights_of(model, node)? {
        Ok(wb) => wb,
        Err(reason) => return Ok(Err(reason)),
    };
    if weight.len() != geom.kernel_len() {
        return Ok(Err(format!("{} weights for a kernel of {}", weight.len(), geom.kernel_len())));
    }
    let weight = weights(weight);
    // A bias is a scalar (often 0) or one value per output channel.
    let bias = match bias.len() {
        0 => vec![0.0; geom.cout()],
        1 => vec![bias[0]; geom.cout()],
        n if n == geom.cout() => bias,
        n => return Ok(Err(format!("a bias of {n} values for {} channels", geom.cout()))),
    };
    let LayerShape { index, kind, spread } = shape;
    let quant = QuantLayer::quantize(index, &node.name, geom, &weight, &bias, false, cfg)?;
    Ok(Ok(PrivateLayer { index, quant, kind, act_bits: cfg.act_bits, spread }))
}

/// The values of a constant tensor as floats.
fn floats(t: &Tensor) -> std::result::Result<Vec<f32>, String> {
    let t = t.cast_to::<f32>().map_err(|e| format!("{e:#}"))?;
    let view = t.to_plain_array_view::<f32>().map_err(|e| format!("{e:#}"))?;
    Ok(view.iter().copied().collect())
}

/// The constant value of input `i` of `node`, if it has one.
fn konst(model: &TypedModel, node: &TypedNode, i: usize) -> Option<Arc<Tensor>> {
    node.inputs.get(i).and_then(|o| model.outlet_fact(*o).ok()).and_then(|f| f.konst.clone())
}

/// The constant weights and bias of a node's inputs 1 and 2, as floats, checked finite.
fn weights_of(model: &TypedModel, node: &TypedNode) -> Result<Found<(Vec<f32>, Vec<f32>)>> {
    let (Some(kernel), Some(bias)) = (konst(model, node, 1), konst(model, node, 2)) else {
        return Ok(Err("weights that are not constant".into()));
    };
    let (weight, bias) = match (floats(&kernel), floats(&bias)) {
        (Ok(w), Ok(b)) => (w, b),
        (Err(e), _) | (_, Err(e)) => return Ok(Err(e)),
    };
    check_finite(node, &weight, &bias)?;
    Ok(Ok((weight, bias)))
}

/// A non-finite weight or bias is an error naming the node.
fn check_finite(node: &TypedNode, weight: &[f32], bias: &[f32]) -> Result<()> {
    if let Some(i) = weight.iter().chain(bias).position(|v| !v.is_finite()) {
        return Err(ModelError::Parse {
            what: format!("ONNX node `{}`", node.name),
            message: format!("weight or bias {i} is not finite"),
        });
    }
    Ok(())
}

/// The linear layer of an `EinSum` node (what tract makes of `Gemm` and `MatMul`), `None` when
/// the node is not a matrix product with constant weights, `Some(Err(reason))` when it is one
/// that cannot be outsourced: it must multiply a `batch × K` activation by constant weights
/// (`K × M` or `M × K`, either order of operands) into `batch × M`.
fn private_linear(
    model: &TypedModel,
    node: &TypedNode,
    einsum: &EinSum,
    index: usize,
    cfg: &QuantConfig,
) -> Result<Option<Found<PrivateLayer>>> {
    if node.inputs.len() != 2 || einsum.q_params.is_some() {
        return Ok(None);
    }
    let (w, a) = match (konst(model, node, 0), konst(model, node, 1)) {
        (None, Some(k)) => (k, 0),
        (Some(k), None) => (k, 1),
        _ => return Ok(None),
    };
    let (inputs, outputs) = einsum.axes.to_strs();
    let (act, wax, out) = (inputs[a].as_str(), inputs[1 - a].as_str(), outputs[0].as_str());
    let chars = |s: &str| s.chars().collect::<Vec<char>>();
    let (act, wax, out) = (chars(act), chars(wax), chars(out));
    let not_linear = || Ok(Some(Err("a matrix product that is not batch × K by K × M".into())));
    let [n, k] = act[..] else {
        return Ok(Some(Err(format!("a matrix product of a rank-{} activation (rank 2 is outsourced)", act.len()))));
    };
    let (&[n2, m], &[x, y]) = (&out[..], &wax[..]) else {
        return not_linear();
    };
    let k_first = match (x, y) {
        _ if n2 != n || x == n || y == n => return not_linear(),
        (x, y) if x == k && y == m => true,
        (x, y) if x == m && y == k => false,
        _ => return not_linear(),
    };
    let shape = w.shape();
    let (kk, mm) = if k_first { (shape[0], shape[1]) } else { (shape[1], shape[0]) };
    let weight = match floats(&w) {
        Ok(v) => v,
        Err(e) => return Ok(Some(Err(e))),
    };
    check_finite(node, &weight, &[])?;
    // The 1×1 kernel is Cout × Cin = M × K.
    let weight = if k_first { (0..mm * kk).map(|i| weight[(i % kk) * mm + i / kk]).collect() } else { weight };
    let geom = match Conv2d::builder(kk, mm, (1, 1), (1, 1)).build() {
        Ok(g) => g,
        Err(e) => return Ok(Some(Err(e.to_string()))),
    };
    let quant = QuantLayer::quantize(index, &node.name, geom, &weight, &vec![0.0; mm], true, cfg)?;
    let layer =
        PrivateLayer { index, quant, kind: LayerKind::Linear { input: a }, act_bits: cfg.act_bits, spread: None };
    Ok(Some(Ok(layer)))
}

/// A `ConvTranspose` node as the convolution of its input spread with zeros: stride 1, the
/// kernel flipped and its in/out axes swapped, padding `dilation·(k−1) − pad` on each side
/// (plus the output adjustment after). `Ok(Err(reason))` when it stays on the client.
fn private_transposed(
    model: &TypedModel,
    node: &TypedNode,
    deconv: &Deconv,
    index: usize,
    cfg: &QuantConfig,
) -> Result<Found<PrivateLayer>> {
    let spec = &deconv.pool_spec;
    let rank = spec.rank();
    let spatial = match spatial_input(model, node, spec, deconv.kernel_format) {
        Ok(s) => s,
        Err(reason) => return Ok(Err(reason)),
    };
    let (strides, dilations, kernel) = (spec.strides(), spec.dilations(), &spec.kernel_shape);
    let Ok(out) = spec.padding.compute_for_deconv(&spatial, kernel, &dilations, &strides, &deconv.adjustments) else {
        return Ok(Err("padding tract cannot compute".into()));
    };
    // Per axis: the spread length, and the equivalent convolution's padding.
    let mut axes = Vec::with_capacity(rank);
    for a in 0..rank {
        let spread = (spatial[a] - 1) * strides[a] + 1;
        let field = dilations[a] * (kernel[a] - 1);
        let Some(before) = field.checked_sub(out[a].pad_before) else {
            return Ok(Err("padding larger than the kernel's field".into()));
        };
        let Some(after) = (out[a].deconvoluted + field).checked_sub(spread + before) else {
            return Ok(Err("an output shorter than its spread input".into()));
        };
        axes.push((spread, before, after, strides[a], dilations[a], kernel[a]));
    }
    if rank == 1 {
        axes.insert(0, (1, 0, 0, 1, 1, 1));
    }
    let (cin, cout, groups) = (spec.input_channels, spec.output_channels, deconv.group);
    let Some(cin_g) = cin.checked_div(groups) else {
        return Ok(Err("zero groups".into()));
    };
    let ((h, pt, pb, sh, dh, kh), (w, pl, pr, sw, dw, kw)) = (axes[0], axes[1]);
    let geom = Conv2d::builder(cin, cout, (h, w), (kh, kw))
        .padding(Padding::new(pt, pl, pb, pr))
        .dilation(dh, dw)
        .groups(groups)
        .build();
    // tract-onnx has already reordered ONNX's `Cin × (Cout/G) × kh × kw` kernel into
    // `Cout × (Cin/G) × kh × kw` (its `kernel_merge_group` node): only the flip is left.
    let flip = |weight: Vec<f32>| {
        let mut flipped = vec![0f32; weight.len()];
        for oc in 0..cout * cin_g {
            for i in 0..kh {
                for j in 0..kw {
                    flipped[(oc * kh + i) * kw + j] = weight[(oc * kh + (kh - 1 - i)) * kw + (kw - 1 - j)];
                }
            }
        }
        flipped
    };
    let kind = if rank == 1 { LayerKind::Conv1d } else { LayerKind::Conv2d };
    let shape = LayerShape { index, kind, spread: Some((sh, sw)) };
    finish_layer(model, node, geom, shape, cfg, flip)
}
