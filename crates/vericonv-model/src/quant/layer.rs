//! The quantized layers, the inputs and epilogue of their integer accumulations, the executors
//! that compute those, and the quantizer of activations (docs/scheme.md §10).

use std::ops::Range;
use std::time::Duration;

use rayon::prelude::*;

use crate::exec::{MIN_TASK, Tail};
use crate::ops::ExactWeights;
use crate::{Model, ops};
use crate::{ModelError, Result};
use vericonv::Conv2d;
use vericonv::SmallInt;
use vericonv::check_exactness;

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
    /// The weights as the client's exact GEMM reads them (layers it computes itself).
    pub(crate) exact: ExactWeights,
}

/// A quantized model: the float model plus integer weights and activation scales.
#[derive(Clone, Debug)]
pub struct QuantModel {
    pub(crate) model: Model,
    pub(crate) cfg: QuantConfig,
    pub(crate) layers: Vec<Option<QuantLayer>>,
    pub(crate) act_scale: Vec<Option<f32>>,
}

/// Where the time of one quantized forward pass went (client side).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ForwardTimes {
    /// Quantizing the activations that enter each `Conv` and `Linear` node (re-scaling the
    /// integers that come out is part of [`ForwardTimes::integer`]: it is fused into the
    /// executor's pass).
    pub quantize: Duration,
    /// Pooling, flatten, concatenation and the activations not fused into a linear node.
    pub nonlinear: Duration,
    /// The integer executor (client or private protocol), re-scaling and the nodes fused after
    /// each linear node included.
    pub integer: Duration,
}

impl std::ops::AddAssign for ForwardTimes {
    fn add_assign(&mut self, o: Self) {
        self.quantize += o.quantize;
        self.nonlinear += o.nonlinear;
        self.integer += o.integer;
    }
}

/// The quantized input of a layer: `batch × C × H × W` integers within `±(2^(b_x-1) - 1)`, in
/// 8 bits for `b_x <= 8`, else 16.
#[derive(Clone, Copy, Debug)]
pub enum QuantInput<'a> {
    /// `b_x <= 8`.
    Bits8(&'a [i8]),
    /// `8 < b_x <= 16`.
    Bits16(&'a [i16]),
}

impl QuantInput<'_> {
    /// The number of values.
    pub fn len(&self) -> usize {
        match self {
            QuantInput::Bits8(x) => x.len(),
            QuantInput::Bits16(x) => x.len(),
        }
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values, widened.
    pub fn to_i32(&self) -> Vec<i32> {
        match self {
            QuantInput::Bits8(x) => x.iter().map(|&v| i32::from(v)).collect(),
            QuantInput::Bits16(x) => x.iter().map(|&v| i32::from(v)).collect(),
        }
    }
}

/// What becomes of one image's exact integers: the client code shared by the plaintext and
/// the private executors, so that both give the same bits. For output channel `o`,
/// `out = tail(acc·(s_x·s_w[o]) + bias[o])`: the re-scaling to float (a multiply, then an add)
/// with the image's activation scale `s_x`, then the residual `Add` and the activation fused
/// after the layer.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    x_scale: f32,
    layer: &'a QuantLayer,
    tail: Tail<'a>,
}

impl<'a> Epilogue<'a> {
    pub(crate) fn new(x_scale: f32, layer: &'a QuantLayer, tail: Tail<'a>) -> Self {
        Self { x_scale, layer, tail }
    }

    /// Writes `out` from `acc`, the exact integers of elements `range` of output plane `plane`
    /// (`b·Cout + o`: the plane's index in the batch, plain channel order; a linear layer's
    /// planes are single elements) of this epilogue's image.
    pub fn apply(&self, plane: usize, range: Range<usize>, acc: &[i32], out: &mut [f32]) {
        let (cout, n) = (self.layer.geom.cout(), self.layer.geom.n());
        let o = plane % cout;
        let scale = self.x_scale * self.layer.weight_scale[o];
        self.tail.rescale(o * n + range.start, acc, scale, self.layer.bias[o], out);
    }

    /// [`Epilogue::apply`] over a whole image `b` of exact integers `acc` (`Cout × Ho × Wo`).
    pub fn apply_image(&self, b: usize, acc: &[i32], out: &mut [f32]) {
        let (cout, n) = (self.layer.geom.cout(), self.layer.geom.n());
        out.par_chunks_mut(n)
            .zip(acc.par_chunks(n))
            .with_min_len(MIN_TASK.div_ceil(n))
            .enumerate()
            .for_each(|(o, (out, acc))| self.apply(b * cout + o, 0..n, acc, out));
    }
}

/// Computes the exact integer accumulations `Σ w_q·x_q` of the quantized layers, in the stages
/// of the forward pass ([`QuantModel::forward_with`]): for each `Conv` or `Linear` layer and batch,
/// [`IntegerExecutor::start`], then [`IntegerExecutor::encrypt`] for every image (in parallel),
/// [`IntegerExecutor::run`] once, [`IntegerExecutor::output`] for every image (in parallel) and
/// [`IntegerExecutor::finish`]. An executor that computes on the client needs only `output`.
pub trait IntegerExecutor: Sync {
    /// Starts `layer` for a batch of `batch` images, before any of them is encrypted.
    ///
    /// # Errors
    /// Whatever the executor can fail with.
    fn start(&mut self, layer: &QuantLayer, batch: usize) -> Result<()> {
        let _ = (layer, batch);
        Ok(())
    }

    /// Elements of one image's slot in the tensor sent for `layer` (0: nothing is sent).
    fn slot_len(&self, layer: &QuantLayer) -> usize {
        let _ = layer;
        0
    }

    /// Encrypts image `b`'s quantized input `x` into `slot` (its part of the tensor sent).
    ///
    /// # Errors
    /// Whatever the executor can fail with.
    fn encrypt(&self, layer: &QuantLayer, b: usize, x: QuantInput<'_>, slot: &mut [u32]) -> Result<()> {
        let _ = (layer, b, x, slot);
        Ok(())
    }

    /// Every image encrypted: runs `layer` on the batch, whose quantized input is `x` and whose
    /// encrypted tensor is `sent`.
    ///
    /// # Errors
    /// Whatever the executor can fail with (for the private one: the cloud's errors and
    /// verification failures; nothing of a rejected answer is ever decrypted).
    fn run(&mut self, layer: &QuantLayer, x: QuantInput<'_>, sent: &[u32]) -> Result<()> {
        let _ = (layer, x, sent);
        Ok(())
    }

    /// Writes image `b`'s output (`Cout × Ho × Wo`) from its exact integers through
    /// `epilogue`; `x` is the image's quantized input.
    ///
    /// # Errors
    /// Whatever the executor can fail with.
    fn output(
        &self,
        layer: &QuantLayer,
        b: usize,
        x: QuantInput<'_>,
        epilogue: &Epilogue<'_>,
        out: &mut [f32],
    ) -> Result<()>;

    /// Every image's output written: what the batch kept can go.
    fn finish(&mut self, layer: &QuantLayer) {
        let _ = layer;
    }
}

/// The client computes every layer itself, exactly: the quantized plaintext model.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainExecutor;

impl IntegerExecutor for PlainExecutor {
    fn output(
        &self,
        layer: &QuantLayer,
        b: usize,
        x: QuantInput<'_>,
        epilogue: &Epilogue<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        let acc = match x {
            QuantInput::Bits8(x) => layer.compute(x, 1),
            QuantInput::Bits16(x) => layer.compute(x, 1),
        };
        epilogue.apply_image(b, &acc, out);
        Ok(())
    }
}

impl QuantLayer {
    /// Quantizes the float weights of node `node` (symmetric, per output channel, `b_w` bits)
    /// and checks the layer's exactness bound with `Bx = 2^(b_x-1) - 1`.
    ///
    /// # Errors
    /// [`Error::ExactnessBound`] when the layer could overflow F_p.
    pub(crate) fn quantize(
        node: usize,
        name: &str,
        geom: Conv2d,
        weight: &[f32],
        bias: &[f32],
        is_linear: bool,
        cfg: &QuantConfig,
    ) -> Result<Self> {
        let (wq, xq) = (qmax(cfg.weight_bits), qmax(cfg.act_bits));
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
        check_exactness(name, per as u64, xq as u64, bw, 0)?;
        Ok(QuantLayer {
            node,
            name: name.to_string(),
            geom,
            is_linear,
            exact: ExactWeights::new(&geom, &q, wq as u32, xq as u32),
            weight: q,
            weight_scale: scales,
            bias: bias.to_vec(),
        })
    }

    /// The exact integers `Σ w_q·x_q` of this layer for `batch` images of `x`, computed by the
    /// client.
    pub fn compute<T: SmallInt>(&self, x: &[T], batch: usize) -> Vec<i32> {
        let mut acc = vec![0i32; batch * self.geom.output_image_len()];
        ops::conv_int_into(&self.geom, batch, &self.exact, x, &mut acc);
        acc
    }
}

pub(super) fn bits_ok(bits: u32) -> Result<()> {
    if (2..=16).contains(&bits) {
        Ok(())
    } else {
        Err(ModelError::Unsupported(format!("{bits}-bit quantization (2 to 16 bits are supported)")))
    }
}

/// The quantized integers the client stores: `i8` or `i16`.
pub(crate) trait Quantized: Copy + Send + Sync {
    fn from_i32(v: i32) -> Self;
}

impl Quantized for i8 {
    fn from_i32(v: i32) -> Self {
        v as i8
    }
}

impl Quantized for i16 {
    fn from_i32(v: i32) -> Self {
        v as i16
    }
}

/// Quantizes one image `a` into `out` with the scale `fixed`, or a dynamic one
/// (`max |a| / qmax`), which it returns; pieces in parallel (the result is the same in any
/// order).
pub(crate) fn quantize_image<Q: Quantized>(a: &[f32], fixed: Option<f32>, qmax: i32, out: &mut [Q]) -> f32 {
    let scale = fixed.unwrap_or_else(|| {
        let m = a.par_chunks(MIN_TASK).map(max_abs).reduce(|| 0.0, f32::max);
        if m > 0.0 { m / qmax as f32 } else { 1.0 }
    });
    out.par_chunks_mut(MIN_TASK).zip(a.par_chunks(MIN_TASK)).for_each(|(o, x)| quantize_into(x, scale, qmax, o));
    scale
}

/// `max |v|` over `x` ignoring NaN (0 for an empty slice or all NaN), as the sequential fold
/// of `f32::max` from 0 gives it. On the bits: `|v|` orders as its bit pattern does, and a NaN
/// (a pattern above the infinity's) counts as 0; 64 independent lanes, so that it runs at the
/// vector units' throughput rather than a maximum's latency.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2", "aarch64+neon"))]
fn max_abs(x: &[f32]) -> f32 {
    const INF: u32 = 0x7f80_0000;
    let key = |v: f32| {
        let b = v.to_bits() & 0x7fff_ffff;
        if b > INF { 0 } else { b }
    };
    let mut lanes = [0u32; 64];
    let mut chunks = x.chunks_exact(64);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = (*l).max(key(v));
        }
    }
    let tail = chunks.remainder().iter().fold(0, |m, &v| m.max(key(v)));
    f32::from_bits(lanes.iter().fold(tail, |m, &l| m.max(l)))
}

/// `out = clamp(round(x / scale), ±qmax)`, rounding half away from zero (`f32::round`).
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2", "aarch64+neon"))]
fn quantize_into<Q: Quantized>(x: &[f32], scale: f32, qmax: i32, out: &mut [Q]) {
    // `(r as i32).clamp(-qmax, qmax)` for r = round(x / scale), in float operations that
    // vectorise (the saturating float-to-int cast does not): NaN gives 0 and everything else
    // clamps, exactly as the cast then the clamp; the clamped integer r converts through its
    // bits, r + 1.5·2^23 being exact for |r| < 2^22.
    const MAGIC: f32 = 12_582_912.0;
    let q = qmax as f32;
    for (o, &v) in out.iter_mut().zip(x) {
        let r = round_half_away(v / scale);
        let r = if r.is_nan() { 0.0 } else { r.max(-q).min(q) };
        *o = Q::from_i32((r + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32);
    }
}

/// `f32::round` (half away from zero) in operations that vectorise: `x - trunc(x)` is exact,
/// and a fraction of at least one half moves the result one away from zero. NaN and the
/// infinities come out as `f32::round` gives them.
#[inline(always)]
fn round_half_away(x: f32) -> f32 {
    let t = x.trunc();
    if (x - t).abs() >= 0.5 { t + 1f32.copysign(x) } else { t }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectorised_quantization_equals_the_scalar_definition() {
        // Halves, values next to them, the largest values below 2^23 and random bit patterns.
        let edges = [2.5, -2.5, 0.5, -0.5, 0.49999997, -0.49999997, 8388607.5, -8388607.5, 1.5e9, f32::INFINITY];
        let mut bits = 0x9e37_79b9u32;
        let random = (0..5000).map(|_| {
            bits = bits.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            f32::from_bits(bits)
        });
        let mut all = Vec::new();
        for v in edges.into_iter().chain(random) {
            if !v.is_nan() {
                assert_eq!(round_half_away(v).to_bits(), v.round().to_bits(), "{v}");
            }
            all.push(v);
        }
        for scale in [1.0, 0.37, 1e-30] {
            let mut q = vec![0i16; all.len()];
            quantize_into(&all, scale, 32767, &mut q);
            for (&v, &got) in all.iter().zip(&q) {
                assert_eq!(i32::from(got), ((v / scale).round() as i32).clamp(-32767, 32767), "{v} / {scale}");
            }
        }
        let x: Vec<f32> =
            (0..1003).map(|i| ((i * 7919) % 2001) as f32 / 13.7 - 73.0).chain([2.5, -2.5, 0.5, -0.5]).collect();
        let m = x.iter().fold(0f32, |m, &v| m.max(v.abs()));
        assert_eq!(max_abs(&x).to_bits(), m.to_bits());
        // NaN is ignored, infinities and negative zero count as f32::max counts them.
        for extra in [[f32::NAN, -0.0], [f32::NEG_INFINITY, 1.0], [-0.0, -0.0], [f32::NAN, f32::NAN]] {
            let v: Vec<f32> = x.iter().copied().take(70).chain(extra).collect();
            let w: Vec<f32> = extra.to_vec();
            for v in [&v, &w] {
                let m = v.iter().fold(0f32, |m, &x| m.max(x.abs()));
                assert_eq!(max_abs(v).to_bits(), m.to_bits(), "{extra:?}");
            }
        }
        assert_eq!(max_abs(&[]), 0.0);
        let scale = m / 127.0;
        let mut q = vec![0i8; x.len()];
        quantize_into(&x, scale, 127, &mut q);
        for (&v, &got) in x.iter().zip(&q) {
            assert_eq!(i32::from(got), ((v / scale).round() as i32).clamp(-127, 127), "{v}");
        }
    }
}
