//! Quantization (docs/scheme.md §10) and the integer executors.
//!
//! - Weights: symmetric, per output channel, `b_w` bits (default 8).
//! - Activations entering a `Conv` or `Linear`: symmetric, per tensor, `b_x` bits (default 8),
//!   with a scale that is either dynamic (per image) or calibrated on a sample.
//! - The integer accumulations `Σ w_q·x_q` come from an [`IntegerExecutor`]: the client itself
//!   ([`PlainExecutor`]) or the private protocol on an untrusted cloud ([`crate::PrivateExecutor`]).
//!   They are exact either way, then rescaled to float (`scale_x·scale_w[o]`) and biased by the
//!   same client code, so both give bit-identical logits.

mod layer;
mod pipeline;

use crate::Result;
use crate::exec::{Workspace, float_linear_op};
use crate::{Model, Op};
use layer::bits_ok;
pub(crate) use layer::qmax;
pub use layer::{
    Epilogue, ForwardTimes, IntegerExecutor, PlainExecutor, QuantConfig, QuantInput, QuantLayer, QuantModel,
};
#[cfg(feature = "tract")]
pub(crate) use layer::{Quantized, quantize_image};
use vericonv::Conv2d;

impl QuantModel {
    /// Quantizes the weights of every `Conv` and `Linear` node and checks each layer's
    /// exactness bound with `Bx = 2^(b_x-1) - 1`. Activation scales start dynamic.
    ///
    /// # Errors
    /// [`crate::ModelError::Unsupported`] for bit widths outside 2..=16, [`vericonv::Error::ExactnessBound`] naming the
    /// first layer that could overflow F_p.
    pub fn new(model: &Model, cfg: QuantConfig) -> Result<Self> {
        bits_ok(cfg.weight_bits)?;
        bits_ok(cfg.act_bits)?;
        let mut layers = Vec::with_capacity(model.nodes.len());
        for (idx, node) in model.nodes.iter().enumerate() {
            let (geom, weight, bias, is_linear) = match &node.op {
                Op::Conv { geom, weight, bias } => (*geom, weight, bias, false),
                Op::Linear { in_features, out_features, weight, bias } => {
                    (Conv2d::builder(*in_features, *out_features, (1, 1), (1, 1)).build()?, weight, bias, true)
                }
                _ => {
                    layers.push(None);
                    continue;
                }
            };
            layers.push(Some(QuantLayer::quantize(idx, &node.name, geom, weight, bias, is_linear, &cfg)?));
        }
        Ok(Self { act_scale: vec![None; layers.len()], model: model.clone(), cfg, layers })
    }

    /// Fixes every activation scale from a calibration sample: the largest magnitude entering
    /// each layer in the float model, divided by `2^(b_x-1) - 1`. Larger values later clamp.
    ///
    /// # Errors
    /// As [`Model::forward_float`].
    pub fn calibrate(&mut self, images: &[f32]) -> Result<()> {
        let mut ws = Workspace::new();
        let (x, batch) = crate::exec::normalize_into(&self.model, images, &mut ws.values)?;
        let mut max = vec![0f32; self.layers.len()];
        crate::exec::execute(&self.model, x, batch, &mut ws.values, |idx, node, a, tail, out| {
            max[idx] = a.iter().fold(max[idx], |m, &v| m.max(v.abs()));
            float_linear_op(node, batch, a, tail, out);
            Ok(())
        })?;
        let q = qmax(self.cfg.act_bits) as f32;
        for (scale, (m, layer)) in self.act_scale.iter_mut().zip(max.iter().zip(&self.layers)) {
            if layer.is_some() {
                *scale = Some(if *m > 0.0 { m / q } else { 1.0 });
            }
        }
        Ok(())
    }

    /// True when activation scales come from [`QuantModel::calibrate`].
    pub fn is_calibrated(&self) -> bool {
        self.act_scale.iter().any(Option::is_some)
    }

    /// The float model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The quantization settings.
    pub fn config(&self) -> &QuantConfig {
        &self.cfg
    }

    /// The quantized `Conv` and `Linear` layers.
    pub fn layers(&self) -> impl Iterator<Item = &QuantLayer> {
        self.layers.iter().flatten()
    }

    /// The logits (`batch × classes`) of the quantized model for `[0, 1]` images, with the
    /// integer layers computed by `exec`.
    ///
    /// # Errors
    /// As [`Model::forward_float`], and whatever `exec` returns.
    pub fn forward(&self, images: &[f32], exec: &mut dyn IntegerExecutor) -> Result<(Vec<f32>, ForwardTimes)> {
        self.forward_with(images, exec, &mut Workspace::new())
    }

    /// [`QuantModel::forward`] with the caller's buffers, reused across passes: a stream of
    /// batches allocates nothing after its first pass.
    ///
    /// Between two cloud calls, all the client does for an image (decrypting the layer just
    /// computed, the nodes up to the next `Conv` or `Linear`, quantizing and encrypting that
    /// layer's input) runs image by image, images in parallel, so that each image's
    /// activations are still in cache for the next step. The times in [`ForwardTimes`] are
    /// summed over images (so over threads, when images run in parallel).
    ///
    /// # Errors
    /// As [`QuantModel::forward`].
    pub fn forward_with(
        &self,
        images: &[f32],
        exec: &mut dyn IntegerExecutor,
        ws: &mut Workspace,
    ) -> Result<(Vec<f32>, ForwardTimes)> {
        pipeline::forward_with(self, images, exec, ws)
    }
}
