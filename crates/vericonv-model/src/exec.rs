//! One interpreter for every forward pass: the float model, the quantized plaintext model and
//! the private run differ only in the `linear_op` they give [`Model::execute`].
//!
//! Two things keep the client's passes over memory few:
//! - **Fusion.** A `Conv` or `Linear` node takes with it the `Add` (a residual connection) and
//!   the `Relu` or `Clip` that follow it when nothing else reads its output: the linear op
//!   applies them ([`Tail`]) to each piece of output as it produces it, so the decrypted
//!   integers become the next layer's activations in one pass. The fused nodes compute exactly
//!   what they compute alone, in the same order, so every pass gives the same bits either way.
//! - **Buffer reuse.** Activations live in a [`Workspace`] that the caller keeps across
//!   forward passes; a value's buffer returns to it after the value's last reader, so after the
//!   first pass nothing is allocated (first-touch page faults cost more than the arithmetic).

use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::graph::{Model, Node, Op, Source};
use crate::ops;
use crate::{ModelError, Result};
use vericonv::Error;

/// Elements below which a parallel task is not worth its scheduling.
pub(crate) const MIN_TASK: usize = 1 << 14;

/// The element-wise activation fused into the `Conv` or `Linear` node before it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Act {
    Identity,
    Relu,
    Clip { min: f32, max: f32 },
}

/// What a `Conv` or `Linear` node's output goes through before it is stored: the residual `Add`
/// and the activation fused after it, which the linear node's pass applies to each piece of
/// output as it produces it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tail<'a> {
    /// The other operand of a fused `Add` (laid out like the output).
    pub(crate) residual: Option<&'a [f32]>,
    pub(crate) act: Act,
}

impl Tail<'_> {
    /// `out[i] = tail(acc[i]·scale + bias)` for the elements `start..start + out.len()` of the
    /// node's batch-flat output: the re-scaling of a quantized layer's exact integers (a
    /// multiply, then an add) and the fused nodes, in one pass. The same value as re-scaling,
    /// then [`Tail::apply`].
    pub(crate) fn rescale(&self, start: usize, acc: &[i32], scale: f32, bias: f32, out: &mut [f32]) {
        let residual = self.residual.map(|r| &r[start..][..out.len()]);
        rescale_into(acc, scale, bias, residual, self.act, out);
    }

    /// Applies the fused nodes to `row`, the elements `start..start + row.len()` of the node's
    /// batch-flat output, exactly as the nodes would one after the other (float addition is
    /// commutative, so the operands of the `Add` may come in either order).
    pub(crate) fn apply(&self, start: usize, row: &mut [f32]) {
        if let Some(other) = self.residual {
            let other = &other[start..][..row.len()];
            row.iter_mut().zip(other).for_each(|(v, &q)| *v += q);
        }
        match self.act {
            Act::Identity => {}
            Act::Relu => row.iter_mut().for_each(|v| *v = v.max(0.0)),
            Act::Clip { min, max } => row.iter_mut().for_each(|v| *v = v.max(min).min(max)),
        }
    }
}

/// The loop of [`Tail::rescale`], one specialised loop per fused combination, compiled for the
/// widest vectors the CPU has.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2", "aarch64+neon"))]
fn rescale_into(acc: &[i32], scale: f32, bias: f32, residual: Option<&[f32]>, act: Act, out: &mut [f32]) {
    let (lo, hi) = match act {
        Act::Identity => (f32::NEG_INFINITY, f32::INFINITY),
        Act::Relu => (0.0, f32::INFINITY),
        Act::Clip { min, max } => (min, max),
    };
    match (residual, act) {
        (None, Act::Identity) => out.iter_mut().zip(acc).for_each(|(o, &a)| *o = a as f32 * scale + bias),
        (None, Act::Relu) => out.iter_mut().zip(acc).for_each(|(o, &a)| *o = (a as f32 * scale + bias).max(0.0)),
        (None, Act::Clip { .. }) => {
            out.iter_mut().zip(acc).for_each(|(o, &a)| *o = (a as f32 * scale + bias).max(lo).min(hi))
        }
        (Some(r), Act::Identity) => {
            out.iter_mut().zip(acc).zip(r).for_each(|((o, &a), &q)| *o = a as f32 * scale + bias + q)
        }
        (Some(r), Act::Relu) => {
            out.iter_mut().zip(acc).zip(r).for_each(|((o, &a), &q)| *o = (a as f32 * scale + bias + q).max(0.0))
        }
        (Some(r), Act::Clip { .. }) => {
            out.iter_mut().zip(acc).zip(r).for_each(|((o, &a), &q)| *o = (a as f32 * scale + bias + q).max(lo).min(hi))
        }
    }
}

/// One value of a forward pass: a pooled buffer, of which the first `len` elements are the
/// value (`batch × shape.len()`).
#[derive(Debug, Default)]
pub(crate) struct Value {
    buf: Vec<f32>,
    len: usize,
}

impl Value {
    /// The value.
    pub(crate) fn data(&self) -> &[f32] {
        &self.buf[..self.len]
    }

    /// The value, to be written.
    pub(crate) fn data_mut(&mut self) -> &mut [f32] {
        &mut self.buf[..self.len]
    }
}

/// Buffers for forward passes, kept by the caller across passes (and batches of one size), so
/// that a stream of batches allocates nothing after its first pass.
#[derive(Debug, Default)]
pub struct Workspace {
    pub(crate) values: BufferPool,
    /// The quantized inputs (8 or 16 bits) and per-image scales of the layer being sent and of
    /// the one being received, and the tensor sent to the cloud.
    pub(crate) quant: [QuantBuffers; 2],
    pub(crate) sent: Vec<u32>,
    /// One image's buffers for the values read only in the stage that writes them (they stay in
    /// cache from one node to the next): a stack of sets, one taken by each image in flight.
    pub(crate) scratch: std::sync::Mutex<Vec<Vec<Vec<f32>>>>,
}

/// A batch's quantized activations entering one layer, and each image's scale.
#[derive(Debug, Default)]
pub(crate) struct QuantBuffers {
    pub(crate) q8: Vec<i8>,
    pub(crate) q16: Vec<i16>,
    pub(crate) scales: Vec<f32>,
}

impl Workspace {
    /// An empty workspace; it grows to what the passes need.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Free activation buffers. A buffer keeps its full length while pooled, so that handing it out
/// again writes nothing.
#[derive(Debug, Default)]
pub(crate) struct BufferPool {
    free: Vec<Vec<f32>>,
}

impl BufferPool {
    /// A value of `len` elements (contents unspecified): the smallest free buffer that holds it,
    /// else the largest grown to it.
    pub(crate) fn take(&mut self, len: usize) -> Value {
        let fit = (0..self.free.len()).filter(|&i| self.free[i].len() >= len).min_by_key(|&i| self.free[i].len());
        let pick = fit.or_else(|| (0..self.free.len()).max_by_key(|&i| self.free[i].len()));
        let mut buf = pick.map(|i| self.free.swap_remove(i)).unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        Value { buf, len }
    }

    /// Returns a value's buffer.
    pub(crate) fn give(&mut self, v: Value) {
        self.free.push(v.buf);
    }
}

/// A `Conv`/`Linear` node with the nodes fused after it, or any other node alone.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Step {
    pub(crate) node: usize,
    /// The last node of the step, whose value it stores.
    pub(crate) end: usize,
    /// A fused `Add`: its other operand.
    pub(crate) add: Option<Source>,
    pub(crate) act: Act,
}

/// Fuses each `Conv`/`Linear` node with the `Add` and the `Relu`/`Clip` that follow it and
/// read only it, and finds every value's last reader (the end of the step that reads it).
/// Returns the steps, the last readers of the nodes' values and of the input.
pub(crate) fn plan(model: &Model) -> (Vec<Step>, Vec<usize>, usize) {
    let n = model.nodes.len();
    let mut readers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (j, node) in model.nodes.iter().enumerate() {
        for s in &node.inputs {
            if let Source::Node(i) = *s {
                readers[i].push(j);
            }
        }
    }
    let only_reader = |i: usize, j: usize| j < n && readers[i] == [j];
    let mut steps = Vec::new();
    let mut k = 0;
    while k < n {
        let mut step = Step { node: k, end: k, add: None, act: Act::Identity };
        if matches!(model.nodes[k].op, Op::Conv { .. } | Op::Linear { .. }) {
            let next = &model.nodes.get(k + 1);
            if let Some(add) = next.filter(|a| a.op == Op::Add && only_reader(k, k + 1))
                && let [p, q] = add.inputs[..]
                && (p == Source::Node(k)) != (q == Source::Node(k))
            {
                step.add = Some(if p == Source::Node(k) { q } else { p });
                step.end = k + 1;
            }
            let e = step.end;
            if let Some(next) =
                model.nodes.get(e + 1).filter(|a| a.inputs == [Source::Node(e)] && only_reader(e, e + 1))
            {
                step.act = match next.op {
                    Op::Relu => Act::Relu,
                    Op::Clip { min, max } => Act::Clip { min, max },
                    _ => Act::Identity,
                };
                if step.act != Act::Identity {
                    step.end = e + 1;
                }
            }
        }
        k = step.end + 1;
        steps.push(step);
    }
    let mut end_of = vec![0; n];
    for s in &steps {
        end_of[s.node..=s.end].iter_mut().for_each(|e| *e = s.end);
    }
    let mut last = vec![0usize; n];
    let mut input_last = 0;
    for (j, node) in model.nodes.iter().enumerate() {
        for s in &node.inputs {
            match *s {
                Source::Node(i) => last[i] = last[i].max(end_of[j]),
                Source::Input => input_last = input_last.max(end_of[j]),
            }
        }
    }
    (steps, last, input_last)
}

/// Normalises a batch of `[0, 1]` images into a pooled value: `(x - mean[c]) / std[c]`.
///
/// # Errors
/// [`Error::LengthMismatch`] when `images` is not a positive multiple of the image size,
/// [`crate::ModelError::NonFinite`] for NaN or infinite pixels.
pub(crate) fn normalize_into(model: &Model, images: &[f32], pool: &mut BufferPool) -> Result<(Value, usize)> {
    let per = model.input.image_len();
    if images.is_empty() || !images.len().is_multiple_of(per) {
        return Err(Error::LengthMismatch {
            what: "images (not a positive multiple of the model's C·H·W)",
            expected: per,
            got: images.len(),
        }
        .into());
    }
    if let Some(i) = images.iter().position(|v| !v.is_finite()) {
        return Err(ModelError::NonFinite { what: "input images".into(), index: i, value: images[i].to_string() });
    }
    let hw = model.input.height * model.input.width;
    let mut x = pool.take(images.len());
    x.data_mut().par_chunks_mut(hw).zip(images.par_chunks(hw)).enumerate().for_each(|(plane, (out, img))| {
        let (mean, std) = model.input.channel_scale(plane % model.input.channels);
        out.iter_mut().zip(img).for_each(|(o, &v)| *o = (v - mean) / std);
    });
    Ok((x, images.len() / per))
}

/// Runs the graph on the normalised batch `x` of `batch` images. Each `Conv` and `Linear`
/// node, with the nodes fused after it, is delegated to `linear_op(node_index, node, input,
/// tail, out)`, which must write every element of `out` (`batch × Cout × Ho × Wo`) and apply
/// `tail` to it; every other operator runs here. Returns the logits and the time spent in
/// the other operators.
///
/// # Errors
/// Whatever `linear_op` returns.
pub(crate) fn execute<F>(
    model: &Model,
    x: Value,
    batch: usize,
    pool: &mut BufferPool,
    mut linear_op: F,
) -> Result<(Vec<f32>, Duration)>
where
    F: FnMut(usize, &Node, &[f32], &Tail<'_>, &mut [f32]) -> Result<()>,
{
    let (steps, last, input_last) = plan(model);
    let mut other = Duration::ZERO;
    let mut values: Vec<Option<Value>> = (0..model.nodes.len()).map(|_| None).collect();
    let mut x = Some(x);
    let result = (|| -> Result<Vec<f32>> {
        for step in &steps {
            let node = &model.nodes[step.node];
            let get = |s: &Source| -> Result<&[f32]> {
                match s {
                    Source::Input => x.as_ref(),
                    Source::Node(i) => values[*i].as_ref(),
                }
                .map(Value::data)
                .ok_or_else(|| ModelError::Internal(format!("node `{}` reads a value already freed", node.name)))
            };
            let mut out = pool.take(batch * model.nodes[step.end].shape.len());
            let a = get(&node.inputs[0])?;
            match &node.op {
                Op::Conv { .. } | Op::Linear { .. } => {
                    let residual = match step.add {
                        Some(src) => Some(get(&src)?),
                        None => None,
                    };
                    let tail = Tail { residual, act: step.act };
                    linear_op(step.node, node, a, &tail, out.data_mut())?;
                }
                op => {
                    let start = Instant::now();
                    let parts = node.inputs.iter().map(&get).collect::<Result<Vec<_>>>()?;
                    other_op(model, op, step.node, batch, &parts, out.data_mut());
                    other += start.elapsed();
                }
            }
            values[step.end] = Some(out);
            // Free what no later step reads.
            for n in &model.nodes[step.node..=step.end] {
                for s in &n.inputs {
                    match *s {
                        Source::Input if input_last == step.end => {
                            if let Some(v) = x.take() {
                                pool.give(v);
                            }
                        }
                        Source::Node(i) if last[i] == step.end && i + 1 < model.nodes.len() => {
                            if let Some(v) = values[i].take() {
                                pool.give(v);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        let logits = values.last().and_then(Option::as_ref).map(|v| v.data().to_vec()).ok_or_else(|| {
            ModelError::Parse { what: format!("model `{}`", model.name), message: "no layers".into() }
        })?;
        Ok(logits)
    })();
    // Every buffer goes back to the pool, whatever happened.
    for v in values.into_iter().flatten().chain(x) {
        pool.give(v);
    }
    Ok((result?, other))
}

/// Every operator but `Conv` and `Linear`, on a batch: `parts` are the inputs; writes every
/// element of `out`.
pub(crate) fn other_op(model: &Model, op: &Op, idx: usize, batch: usize, parts: &[&[f32]], out: &mut [f32]) {
    let node = &model.nodes[idx];
    let a = parts[0];
    let s = match node.inputs[0] {
        Source::Input => crate::graph::Shape { c: model.input.channels, h: model.input.height, w: model.input.width },
        Source::Node(i) => model.nodes[i].shape,
    };
    match op {
        Op::Relu => map_into(out, a, |v| v.max(0.0)),
        Op::Clip { min, max } => map_into(out, a, |v| v.max(*min).min(*max)),
        Op::Sigmoid => map_into(out, a, |v| 1.0 / (1.0 + (-v).exp())),
        Op::HardSigmoid { alpha, beta } => map_into(out, a, |v| (alpha * v + beta).clamp(0.0, 1.0)),
        Op::HardSwish => map_into(out, a, |v| v * (v / 6.0 + 0.5).clamp(0.0, 1.0)),
        Op::MaxPool(p) => p.apply_into(a, batch * s.c, s.h, s.w, true, out),
        Op::AvgPool(p) => p.apply_into(a, batch * s.c, s.h, s.w, false, out),
        Op::GlobalAvgPool => ops::global_avg_pool_into(a, s.h * s.w, out),
        Op::Flatten => out.copy_from_slice(a),
        Op::Add => {
            let b = parts.get(1).copied().unwrap_or_default();
            out.par_chunks_mut(MIN_TASK)
                .zip(a.par_chunks(MIN_TASK).zip(b.par_chunks(MIN_TASK)))
                .for_each(|(o, (p, q))| o.iter_mut().zip(p.iter().zip(q)).for_each(|(o, (p, q))| *o = p + q));
        }
        Op::Concat => {
            let mut at = 0;
            for img in 0..batch {
                for p in parts {
                    let n = p.len() / batch;
                    out[at..at + n].copy_from_slice(&p[img * n..][..n]);
                    at += n;
                }
            }
        }
        Op::Resize { scale_h, scale_w } => {
            let (h, w) = (s.h * scale_h, s.w * scale_w);
            for (plane, dst) in a.chunks_exact(s.h * s.w).zip(out.chunks_exact_mut(h * w)) {
                for (y, drow) in dst.chunks_exact_mut(w).enumerate() {
                    let row = &plane[(y / scale_h) * s.w..][..s.w];
                    drow.iter_mut().enumerate().for_each(|(x, d)| *d = row[x / scale_w]);
                }
            }
        }
        Op::Conv { .. } | Op::Linear { .. } => {}
    }
}

/// [`Model::forward_float_with`]: the float model's logits, with the caller's buffers.
///
/// # Errors
/// As [`Model::forward_float`].
pub(crate) fn forward_float_with(model: &Model, images: &[f32], ws: &mut Workspace) -> Result<Vec<f32>> {
    let (x, batch) = normalize_into(model, images, &mut ws.values)?;
    let (logits, _) = execute(model, x, batch, &mut ws.values, |_, node, a, tail, out| {
        float_linear_op(node, batch, a, tail, out);
        Ok(())
    })?;
    Ok(logits)
}

/// `out[i] = f(a[i])`, in parallel pieces.
fn map_into(out: &mut [f32], a: &[f32], f: impl Fn(f32) -> f32 + Sync) {
    out.par_chunks_mut(MIN_TASK)
        .zip(a.par_chunks(MIN_TASK))
        .for_each(|(o, a)| o.iter_mut().zip(a).for_each(|(o, &v)| *o = f(v)));
}

/// The float `Conv` or `Linear` node `node` applied to the batch `a`, bias and `tail` included,
/// into `out`.
pub(crate) fn float_linear_op(node: &Node, batch: usize, a: &[f32], tail: &Tail<'_>, out: &mut [f32]) {
    match &node.op {
        Op::Conv { geom, weight, bias } => {
            ops::conv_f32_into(geom, batch, weight, a, out);
            let n = geom.n();
            for (plane, (vals, &b)) in out.chunks_exact_mut(n).zip(bias.iter().cycle()).enumerate() {
                vals.iter_mut().for_each(|v| *v += b);
                tail.apply(plane * n, vals);
            }
        }
        Op::Linear { in_features, out_features, weight, bias } => {
            ops::linear_into(batch, *in_features, *out_features, weight, a, out);
            for (row, vals) in out.chunks_exact_mut(*out_features).enumerate() {
                vals.iter_mut().zip(bias).for_each(|(v, &b)| *v += b);
                tail.apply(row * out_features, vals);
            }
        }
        _ => {}
    }
}

/// The index of the largest logit of each row of `classes` logits.
pub fn argmax(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks_exact(classes.max(1))
        .map(|row| row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused re-scaling equals re-scaling (a multiply, then an add), then the `Add` and the
    /// activation one after the other, bit for bit, for every combination the fusion makes.
    #[test]
    fn fused_rescaling_equals_the_nodes_one_after_the_other() {
        let acc: Vec<i32> = (0..1003).map(|i| (i * 7919) % 40_001 - 20_000).chain([i32::MAX, i32::MIN, 0]).collect();
        let residual: Vec<f32> = (0..acc.len()).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let acts = [Act::Identity, Act::Relu, Act::Clip { min: 0.0, max: 6.0 }, Act::Clip { min: -1.5, max: 0.25 }];
        for act in acts {
            for residual in [None, Some(residual.as_slice())] {
                let tail = Tail { residual, act };
                let (scale, bias) = (0.0123f32, -0.75f32);
                let mut fused = vec![0f32; acc.len() - 5];
                tail.rescale(5, &acc[5..], scale, bias, &mut fused);
                let mut apart: Vec<f32> = acc[5..].iter().map(|&a| a as f32 * scale + bias).collect();
                tail.apply(5, &mut apart);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&fused), bits(&apart), "{act:?}, residual: {}", residual.is_some());
            }
        }
    }
}
