//! The tract operator that replaces a convolution: quantize, exact integers from the executor,
//! re-scale.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::Conv;

use super::{ConvExecutor, PrivateLayer};
use crate::exec::{Act, Tail};
use crate::quant::{Epilogue, QuantInput, qmax, quantize_image};

/// A convolution whose integers come from a [`ConvExecutor`]. Its one input is the float
/// activation; the weights are the layer's quantized ones.
#[derive(Clone)]
pub(crate) struct PrivateConvOp {
    layer: Arc<PrivateLayer>,
    exec: Arc<dyn ConvExecutor>,
    /// The tract convolution it replaces, with its constant weights: the output facts.
    conv: Conv,
    kernel: TypedFact,
    bias: TypedFact,
}

impl PrivateConvOp {
    pub(crate) fn new(layer: Arc<PrivateLayer>, exec: Arc<dyn ConvExecutor>, conv: Conv) -> Self {
        let g = &layer.quant.geom;
        let mut kshape = vec![g.cout(), g.cin() / g.groups().max(1)];
        if layer.one_d {
            kshape.push(g.kw());
        } else {
            kshape.extend([g.kh(), g.kw()]);
        }
        let kernel = f32::fact(&kshape);
        let bias = f32::fact([g.cout()]);
        Self { layer, exec, conv, kernel, bias }
    }
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
        let x = input.to_plain_array_view::<f32>()?;
        let x: Vec<f32> = x.iter().copied().collect();
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
        self.conv.output_facts(&[inputs[0], &self.kernel, &self.bias])
    }
}
