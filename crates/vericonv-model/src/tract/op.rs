//! The tract operator that replaces a convolution: quantize, exact integers from the executor,
//! re-scale, and the residual `Add` and ReLU that follow it, fused into that last pass.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, Deconv};

use super::{ConvExecutor, LayerKind, PrivateLayer};
use crate::exec::{Act, Tail};
use crate::quant::{Epilogue, QuantInput, Quantized, qmax, quantize_image};

/// The tract operator a private one replaces: its output facts are the private one's (for a
/// convolution, computed from the facts of its constant weights and bias).
#[derive(Clone, Debug)]
pub(crate) enum Replaced {
    Conv(Conv, [TypedFact; 2]),
    Deconv(Deconv, [TypedFact; 2]),
    /// A matrix product into `batch × outputs`.
    Linear {
        outputs: usize,
    },
}

/// The nodes after a convolution that run inside its re-scaling pass, as the native pipeline
/// fuses them: a residual `Add` (its other operand is the operator's second input) and then a
/// ReLU (`max(·, 0)`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Fused {
    pub(crate) residual: bool,
    pub(crate) relu: bool,
}

/// A convolution whose integers come from a [`ConvExecutor`]. Its first input is the float
/// activation, its second the residual operand when an `Add` is fused; the weights are the
/// layer's quantized ones.
#[derive(Clone)]
pub(crate) struct PrivateConvOp {
    layer: Arc<PrivateLayer>,
    exec: Arc<dyn ConvExecutor>,
    /// The operator it replaces.
    replaced: Replaced,
    fused: Fused,
}

impl PrivateConvOp {
    pub(crate) fn new(layer: Arc<PrivateLayer>, exec: Arc<dyn ConvExecutor>, replaced: Replaced, fused: Fused) -> Self {
        Self { layer, exec, replaced, fused }
    }
}

/// `x` (`batch × C × H × W`) with `sh − 1` zero rows and `sw − 1` zero columns between pixels:
/// `batch × C × ((H−1)·sh + 1) × ((W−1)·sw + 1)`.
fn spread(x: &[f32], planes: usize, (h, w): (usize, usize), (sh, sw): (usize, usize)) -> Vec<f32> {
    let (hs, ws) = ((h - 1) * sh + 1, (w - 1) * sw + 1);
    let mut out = vec![0f32; planes * hs * ws];
    for (src, dst) in x.chunks_exact(h * w).zip(out.chunks_exact_mut(hs * ws)) {
        for (y, row) in src.chunks_exact(w).enumerate() {
            for (xx, &v) in row.iter().enumerate() {
                dst[y * sh * ws + xx * sw] = v;
            }
        }
    }
    out
}

impl std::fmt::Debug for PrivateConvOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateConv({}, {:?})", self.layer.quant.name, self.fused)
    }
}

impl PartialEq for PrivateConvOp {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.layer, &other.layer) && Arc::ptr_eq(&self.exec, &other.exec) && self.fused == other.fused
    }
}

impl Eq for PrivateConvOp {}

impl Op for PrivateConvOp {
    fn name(&self) -> StaticName {
        "PrivateConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?}", self.layer.quant.geom), self.exec.describe()])
    }

    op_as_typed_op!();
}

impl EvalOp for PrivateConvOp {
    // The executor may talk to clouds and keep sessions: never evaluated out of a plan.
    not_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 1 + usize::from(self.fused.residual), "PrivateConv: {} inputs", inputs.len());
        let residual = if self.fused.residual { inputs.pop() } else { None };
        let input = args_1!(inputs);
        let q = &self.layer.quant;
        let g = &q.geom;
        let spread_input;
        let x: &[f32] = match self.layer.spread {
            Some((sh, sw)) => {
                let shape = input.shape();
                let (h, w) = if self.layer.kind == LayerKind::Conv1d { (1, shape[2]) } else { (shape[2], shape[3]) };
                ensure!(h > 0 && w > 0, "{}: an empty input", q.name);
                spread_input =
                    spread(input.try_as_plain_ram()?.as_slice::<f32>()?, shape[0] * shape[1], (h, w), (sh, sw));
                &spread_input
            }
            None => input.try_as_plain_ram()?.as_slice::<f32>()?,
        };
        let per = g.image_len();
        ensure!(per > 0 && x.len().is_multiple_of(per), "{}: input of {} values", q.name, x.len());
        let batch = x.len() / per;
        let mut shape = vec![batch, g.cout()];
        match self.layer.kind {
            LayerKind::Linear { .. } => {}
            LayerKind::Conv1d => shape.push(g.wo()),
            LayerKind::Conv2d => shape.extend([g.ho(), g.wo()]),
        }
        let mut y = Tensor::zero::<f32>(&shape)?;
        let residual = residual.as_ref().map(|r| r.try_as_plain_ram()?.as_slice::<f32>()).transpose()?;
        let out_len = g.output_image_len();
        ensure!(residual.is_none_or(|r| r.len() == batch * out_len), "{}: a residual of another shape", q.name);
        // Each image quantized with its own scale, exactly as the native pipeline does, into 8
        // bits when they suffice; the re-scaling, the residual Add and the ReLU fused into
        // decryption.
        let (bits, cout) = (self.layer.act_bits, g.cout());
        let act = if self.fused.relu { Act::Relu } else { Act::Identity };
        let mut view = y.try_as_plain_ram_mut()?;
        let out = view.as_slice_mut::<f32>()?;
        let run = |xq: QuantInput<'_>, scales: Vec<f32>, out: &mut [f32]| {
            let epilogues: Vec<Epilogue<'_>> = scales
                .into_iter()
                .enumerate()
                .map(|(b, s)| {
                    let residual = residual.map(|r| &r[b * out_len..(b + 1) * out_len]);
                    Epilogue::new(s, q, Tail { residual, act })
                })
                .collect();
            let epilogue = |plane: usize, range: std::ops::Range<usize>, ints: &[i32], out: &mut [f32]| {
                epilogues[plane / cout].apply(plane, range, ints, out);
            };
            self.exec.conv(&self.layer, xq, batch, out, &epilogue).map_err(TractError::from)
        };
        if bits <= 8 {
            let (xq, scales) = quantize_batch::<i8>(x, per, bits);
            run(QuantInput::Bits8(&xq), scales, out)?;
        } else {
            let (xq, scales) = quantize_batch::<i16>(x, per, bits);
            run(QuantInput::Bits16(&xq), scales, out)?;
        }
        Ok(tvec!(y.into()))
    }
}

/// `x`, whole images of `per` values, quantized to `bits` each with its own scale: the
/// integers and the scales.
fn quantize_batch<Q: Quantized + Default + Clone>(x: &[f32], per: usize, bits: u32) -> (Vec<Q>, Vec<f32>) {
    let mut xq = vec![Q::default(); x.len()];
    let scales = x
        .chunks_exact(per)
        .zip(xq.chunks_exact_mut(per))
        .map(|(img, out)| quantize_image(img, None, qmax(bits), out))
        .collect();
    (xq, scales)
}

impl TypedOp for PrivateConvOp {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(!inputs.is_empty(), "PrivateConv without an input");
        match &self.replaced {
            Replaced::Conv(c, [kernel, bias]) => c.output_facts(&[inputs[0], kernel, bias]),
            Replaced::Deconv(d, [kernel, bias]) => d.output_facts(&[inputs[0], kernel, bias]),
            Replaced::Linear { outputs } => Ok(tvec!(f32::fact([inputs[0].shape[0].clone(), (*outputs).into()]))),
        }
    }
}
