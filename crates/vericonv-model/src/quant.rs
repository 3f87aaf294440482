//! Quantization (SCHEME.md §10) and the integer executors.
//!
//! - Weights: symmetric, per output channel, `b_w` bits (default 8).
//! - Activations entering a `Conv` or `Linear`: symmetric, per tensor, `b_x` bits (default 8),
//!   with a scale that is either dynamic (per image) or calibrated on a sample.
//! - The integer accumulations `Σ w_q·x_q` come from an [`IntegerExecutor`]: the client itself
//!   ([`PlainExecutor`]) or the private protocol on an untrusted cloud ([`crate::PrivateExecutor`]).
//!   They are exact either way, then rescaled to float (`scale_x·scale_w[o]`) and biased by the
//!   same client code, so both give bit-identical logits.

use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::exec::float_linear_op;
use crate::{Activation, Model, Node, Op, ops};
use vericonv::client::check_exactness;
use vericonv::geometry::Conv2d;
use vericonv::{Error, Result};

/// How a model is quantized.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantConfig {
    /// Weight bits `b_w`, 2 to 16 (default 8).
    pub weight_bits: u32,
    /// Activation bits `b_x`, 2 to 16 (default 8).
    pub act_bits: u32,
}

impl Default for QuantConfig {
    fn default() -> Self {
        Self { weight_bits: 8, act_bits: 8 }
    }
}

pub(crate) fn qmax(bits: u32) -> i32 {
    (1 << (bits - 1)) - 1
}

/// A `Conv` or `Linear` node in integers. A linear layer is the 1×1 convolution of an
/// `in × 1 × 1` input.
#[derive(Clone, Debug)]
pub struct QuantLayer {
    /// Index of the node in the model.
    pub node: usize,
    /// Node name.
    pub name: String,
    /// Geometry (1×1 for a linear layer).
    pub geom: Conv2d,
    /// True for a `Linear` node.
    pub is_linear: bool,
    /// Quantized weights, `|w_q| <= 2^(b_w-1) - 1`.
    pub weight: Vec<i32>,
    /// Per-output-channel weight scales.
    pub weight_scale: Vec<f32>,
    /// Float bias, added after rescaling.
    pub bias: Vec<f32>,
    pub(crate) weight_f64: Vec<f64>,
}

/// A quantized model: the float model plus integer weights and activation scales.
#[derive(Clone, Debug)]
pub struct QuantModel {
    model: Model,
    pub(crate) cfg: QuantConfig,
    pub(crate) layers: Vec<Option<QuantLayer>>,
    act_scale: Vec<Option<f32>>,
}

/// Where the time of one quantized forward pass went (client side).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ForwardTimes {
    /// Quantizing activations and rescaling accumulations to float.
    pub quantize: Duration,
    /// ReLU, pooling, flatten, residual adds.
    pub nonlinear: Duration,
    /// The integer executor (client or private protocol).
    pub integer: Duration,
}

impl std::ops::AddAssign for ForwardTimes {
    fn add_assign(&mut self, o: Self) {
        self.quantize += o.quantize;
        self.nonlinear += o.nonlinear;
        self.integer += o.integer;
    }
}

/// Computes the integer accumulations of a quantized layer.
pub trait IntegerExecutor {
    /// `Σ w_q·x_q` (no bias) of `layer` for `batch` images of quantized inputs `x`.
    ///
    /// # Errors
    /// Whatever the executor can fail with (for the private one: verification failures).
    fn run(&mut self, layer: &QuantLayer, x: &[i32], batch: usize) -> Result<Vec<i32>>;
}

/// The client computes every layer itself, exactly: the quantized plaintext model.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainExecutor;

impl IntegerExecutor for PlainExecutor {
    fn run(&mut self, layer: &QuantLayer, x: &[i32], batch: usize) -> Result<Vec<i32>> {
        Ok(ops::conv_int(&layer.geom, batch, &layer.weight_f64, x))
    }
}

fn bits_ok(bits: u32) -> Result<()> {
    if (2..=16).contains(&bits) {
        Ok(())
    } else {
        Err(Error::Unsupported(format!("{bits}-bit quantization (2 to 16 bits are supported)")))
    }
}

impl QuantModel {
    /// Quantizes the weights of every `Conv` and `Linear` node and checks each layer's
    /// exactness bound with `Bx = 2^(b_x-1) - 1`. Activation scales start dynamic.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for bit widths outside 2..=16, [`Error::ExactnessBound`] naming the
    /// first layer that could overflow F_p.
    pub fn new(model: &Model, cfg: QuantConfig) -> Result<Self> {
        bits_ok(cfg.weight_bits)?;
        bits_ok(cfg.act_bits)?;
        let (wq, xq) = (qmax(cfg.weight_bits), qmax(cfg.act_bits));
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
            let per = geom.m();
            let mut q = Vec::with_capacity(weight.len());
            let mut scales = Vec::with_capacity(geom.cout());
            for row in weight.chunks_exact(per) {
                let max = row.iter().fold(0f32, |m, &v| m.max(v.abs()));
                let scale = if max > 0.0 { max / wq as f32 } else { 1.0 };
                q.extend(row.iter().map(|&v| ((v / scale).round() as i32).clamp(-wq, wq)));
                scales.push(scale);
            }
            let bw = q.iter().map(|v| u64::from(v.unsigned_abs())).max().unwrap_or(0);
            check_exactness(&node.name, per as u64, xq as u64, bw, 0)?;
            layers.push(Some(QuantLayer {
                node: idx,
                name: node.name.clone(),
                geom,
                is_linear,
                weight_f64: q.iter().map(|&v| f64::from(v)).collect(),
                weight: q,
                weight_scale: scales,
                bias: bias.clone(),
            }));
        }
        Ok(Self { act_scale: vec![None; layers.len()], model: model.clone(), cfg, layers })
    }

    /// Fixes every activation scale from a calibration sample: the largest magnitude entering
    /// each layer in the float model, divided by `2^(b_x-1) - 1`. Larger values later clamp.
    ///
    /// # Errors
    /// As [`Model::normalize`].
    pub fn calibrate(&mut self, images: &[f32]) -> Result<()> {
        let x = self.model.normalize(images)?;
        let mut max = vec![0f32; self.layers.len()];
        self.model.run(x, |idx, node, a| {
            max[idx] = a.data.iter().fold(max[idx], |m, &v| m.max(v.abs()));
            Ok(float_linear_op(node, a))
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
    /// As [`Model::normalize`], and whatever `exec` returns.
    pub fn forward(&self, images: &[f32], exec: &mut dyn IntegerExecutor) -> Result<(Vec<f32>, ForwardTimes)> {
        let x = self.model.normalize(images)?;
        let mut times = ForwardTimes::default();
        let xq_max = qmax(self.cfg.act_bits);
        let (logits, nonlinear) = self.model.run(x, |idx, node: &Node, a: &Activation| {
            let layer = self.layers[idx]
                .as_ref()
                .ok_or_else(|| Error::Unsupported(format!("layer `{}` is not quantized", node.name)))?;
            let start = Instant::now();
            let per = a.shape.len();
            let mut xq = vec![0i32; a.data.len()];
            // Images in parallel (each has its own scale); the result is the same in any order.
            let scales: Vec<f32> = a
                .data
                .par_chunks_exact(per)
                .zip(xq.par_chunks_exact_mut(per))
                .with_min_len(MIN_TASK.div_ceil(per))
                .map(|(img, out)| {
                    let scale = self.act_scale[idx].unwrap_or_else(|| {
                        let m = max_abs(img);
                        if m > 0.0 { m / xq_max as f32 } else { 1.0 }
                    });
                    quantize_into(img, scale, xq_max, out);
                    scale
                })
                .collect();
            times.quantize += start.elapsed();
            let start = Instant::now();
            let acc = exec.run(layer, &xq, a.batch)?;
            times.integer += start.elapsed();
            let start = Instant::now();
            let n = layer.geom.n();
            let cout = layer.geom.cout();
            let mut data = vec![0f32; acc.len()];
            let planes = acc.par_chunks_exact(n).zip(data.par_chunks_exact_mut(n)).with_min_len(MIN_TASK.div_ceil(n));
            planes.enumerate().for_each(|(plane, (vals, out))| {
                let (b, o) = (plane / cout, plane % cout);
                dequantize_into(vals, scales[b] * layer.weight_scale[o], layer.bias[o], out);
            });
            times.quantize += start.elapsed();
            Ok(Activation { batch: a.batch, shape: node.shape, data })
        })?;
        times.nonlinear = nonlinear;
        Ok((logits.data, times))
    }
}

/// Elements below which a parallel task is not worth its scheduling.
const MIN_TASK: usize = 1 << 14;

/// `max |v|` over `x` (0 for an empty slice), in eight independent lanes so that it
/// vectorises; the same value as a sequential fold, since `max` is exact.
#[multiversion::multiversion(targets("x86_64+avx2", "aarch64+neon"))]
fn max_abs(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = l.max(v.abs());
        }
    }
    let tail = chunks.remainder().iter().fold(0f32, |m, &v| m.max(v.abs()));
    lanes.iter().fold(tail, |m, &l| m.max(l))
}

/// `out = clamp(round(x / scale), ±qmax)`, rounding half away from zero (`f32::round`).
#[multiversion::multiversion(targets("x86_64+avx2", "aarch64+neon"))]
fn quantize_into(x: &[f32], scale: f32, qmax: i32, out: &mut [i32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = ((v / scale).round() as i32).clamp(-qmax, qmax);
    }
}

/// `out = acc · scale + bias` (a multiply, then an add: no fused rounding).
#[multiversion::multiversion(targets("x86_64+avx2", "aarch64+neon"))]
fn dequantize_into(acc: &[i32], scale: f32, bias: f32, out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(acc) {
        *o = v as f32 * scale + bias;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectorised_quantization_equals_the_scalar_definition() {
        let x: Vec<f32> =
            (0..1003).map(|i| ((i * 7919) % 2001) as f32 / 13.7 - 73.0).chain([2.5, -2.5, 0.5, -0.5]).collect();
        let m = x.iter().fold(0f32, |m, &v| m.max(v.abs()));
        assert_eq!(max_abs(&x).to_bits(), m.to_bits());
        assert_eq!(max_abs(&[]), 0.0);
        let scale = m / 127.0;
        let mut q = vec![0; x.len()];
        quantize_into(&x, scale, 127, &mut q);
        for (&v, &got) in x.iter().zip(&q) {
            assert_eq!(got, ((v / scale).round() as i32).clamp(-127, 127), "{v}");
        }
        let mut y = vec![0f32; q.len()];
        dequantize_into(&q, 0.37, -1.25, &mut y);
        for (&v, &got) in q.iter().zip(&y) {
            assert_eq!(got.to_bits(), (v as f32 * 0.37 + -1.25).to_bits());
        }
    }
}
