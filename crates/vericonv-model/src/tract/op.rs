//! The tract operator that replaces a convolution: quantize, exact integers from the executor,
//! re-scale.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, Deconv};

use super::{ConvExecutor, PrivateLayer};
use crate::exec::{Act, Tail};
use crate::quant::{Epilogue, QuantInput, qmax, quantize_image};

/// The tract operator a private one replaces: its output facts are the private one's.
#[derive(Clone, Debug)]
pub(crate) enum Replaced {
    Conv(Conv),
    Deconv(Deconv),
}

/// A convolution whose integers come from a [`ConvExecutor`]. Its one input is the float
/// activation; the weights are the layer's quantized ones.
#[derive(Clone)]
pub(crate) struct PrivateConvOp {
    layer: Arc<PrivateLayer>,
    exec: Arc<dyn ConvExecutor>,
    /// The operator it replaces, and the facts of its constant weights and bias.
    replaced: Replaced,
    kernel: TypedFact,
    bias: TypedFact,
}

impl PrivateConvOp {
    pub(crate) fn new(
        layer: Arc<PrivateLayer>,
        exec: Arc<dyn ConvExecutor>,
        replaced: Replaced,
        kernel: TypedFact,
        bias: TypedFact,
    ) -> Self {
        Self { layer, exec, replaced, kernel, bias }
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
        write!(f, "PrivateConv({})", self.layer.quant.name)
    }
}

impl PartialEq for PrivateConvOp {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.layer, &other.layer) && Arc::ptr_eq(&self.exec, &other.exec)
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

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let q = &self.layer.quant;
        let g = &q.geom;
        let x: Vec<f32> = input.to_plain_array_view::<f32>()?.iter().copied().collect();
        let x = match self.layer.spread {
            Some((sh, sw)) => {
                let shape = input.shape();
                let (h, w) = if self.layer.one_d { (1, shape[2]) } else { (shape[2], shape[3]) };
                ensure!(h > 0 && w > 0, "{}: an empty input", q.name);
                spread(&x, shape[0] * shape[1], (h, w), (sh, sw))
            }
            None => x,
        };
        let per = g.image_len();
        ensure!(per > 0 && x.len().is_multiple_of(per), "{}: input of {} values", q.name, x.len());
        let batch = x.len() / per;
        // Each image quantized with its own scale, exactly as the native pipeline does.
        let bits = self.layer.act_bits;
        let mut xq = vec![0i16; x.len()];
        let mut scales = Vec::with_capacity(batch);
        for (img, out) in x.chunks_exact(per).zip(xq.chunks_exact_mut(per)) {
            scales.push(quantize_image(img, None, qmax(bits), out));
        }
        let acc = self.exec.conv(&self.layer, QuantInput::Bits16(&xq), batch).map_err(TractError::from)?;
        let n_out = g.output_image_len();
        ensure!(acc.len() == batch * n_out, "{}: {} integers for {batch} images", q.name, acc.len());
        let mut y = vec![0f32; acc.len()];
        let tail = Tail { residual: None, act: Act::Identity };
        for (b, (acc, out)) in acc.chunks_exact(n_out).zip(y.chunks_exact_mut(n_out)).enumerate() {
            Epilogue::new(scales[b], q, tail).apply_image(0, acc, out);
        }
        let mut shape = vec![batch, g.cout()];
        if self.layer.one_d {
            shape.push(g.wo());
        } else {
            shape.extend([g.ho(), g.wo()]);
        }
        Ok(tvec!(Tensor::from_shape(&shape, &y)?.into()))
    }
}

impl TypedOp for PrivateConvOp {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let facts = [inputs[0], &self.kernel, &self.bias];
        match &self.replaced {
            Replaced::Conv(c) => c.output_facts(&facts),
            Replaced::Deconv(d) => d.output_facts(&facts),
        }
    }
}
