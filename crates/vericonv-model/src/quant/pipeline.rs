//! The quantized forward pass (plaintext and private alike), image by image between cloud calls.
//!
//! Between two cloud calls, all the client does for one image is independent of the other
//! images: decrypting the layer just computed into activations, running the nodes up to the
//! next `Conv` or `Linear`, quantizing that layer's input and encrypting it. The pipeline does
//! those steps image after image (images in parallel), so that an image's activations are still
//! in cache when the next step reads them; only the tensors the cloud receives and returns go
//! through memory whole. A *stage* is what lies between two linear steps: stage `s` receives
//! the output of linear step `s - 1`, runs the nodes after it and sends the input of linear step
//! `s`; the cloud call (and its verification) of linear step `s` follows stage `s`.

use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::layer::{Epilogue, ForwardTimes, IntegerExecutor, QuantInput, QuantLayer, QuantModel, qmax, quantize_image};
use crate::exec::{QuantBuffers, Step, Tail, Value, Workspace};
use crate::graph::{Op, Source};
use crate::{ModelError, Result};

/// The mutable parts of one image in one stage.
struct ImageParts<'a> {
    /// The image's slices of the values the stage writes, in the stage's order.
    outs: Vec<&'a mut [f32]>,
    /// The image's quantized input of the layer the stage sends, its scale and its slot of the
    /// tensor sent to the cloud.
    q8: &'a mut [i8],
    q16: &'a mut [i16],
    scale: &'a mut f32,
    sent: &'a mut [u32],
}

/// Where each value is read last, in stages: a value is freed after that stage.
fn last_stages(model: &crate::Model, steps: &[Step], linear: &[usize]) -> (Vec<usize>, usize) {
    let n = model.nodes.len();
    let (mut last, mut input_last) = (vec![0usize; n], 0usize);
    let mut read = |src: Source, stage: usize| match src {
        Source::Node(i) => last[i] = last[i].max(stage),
        Source::Input => input_last = input_last.max(stage),
    };
    for (i, step) in steps.iter().enumerate() {
        // Linear steps before this one: the stage that sends step i, or in which it runs.
        let before = linear.iter().take_while(|&&k| k < i).count();
        let node = &model.nodes[step.node];
        if linear.contains(&i) {
            read(node.inputs[0], before);
            // The fused residual is read when the output is received, a stage later.
            if let Some(src) = step.add {
                read(src, before + 1);
            }
        } else {
            for &src in &node.inputs {
                read(src, before);
            }
        }
    }
    (last, input_last)
}

/// The quantized layer of a `Conv` or `Linear` node.
fn layer_of(qm: &QuantModel, node: usize) -> Result<&QuantLayer> {
    qm.layers[node]
        .as_ref()
        .ok_or_else(|| ModelError::Unsupported(format!("layer `{}` is not quantized", qm.model.nodes[node].name)))
}

/// See [`QuantModel::forward_with`].
pub(crate) fn forward_with(
    qm: &QuantModel,
    images: &[f32],
    exec: &mut dyn IntegerExecutor,
    ws: &mut Workspace,
) -> Result<(Vec<f32>, ForwardTimes)> {
    let model = &qm.model;
    let Workspace { values: pool, quant, sent, scratch } = ws;
    let (x, batch) = crate::exec::normalize_into(model, images, pool)?;
    let (steps, _, _) = crate::exec::plan(model);
    let is_linear = |s: &Step| matches!(model.nodes[s.node].op, Op::Conv { .. } | Op::Linear { .. });
    let linear: Vec<usize> = (0..steps.len()).filter(|&i| is_linear(&steps[i])).collect();
    let (last, input_last) = last_stages(model, &steps, &linear);
    let per_image = |src: Source| match src {
        Source::Input => model.image_len(),
        Source::Node(i) => model.nodes[i].shape.len(),
    };
    let bits8 = qm.cfg.act_bits <= 8;
    let qmax = qmax(qm.cfg.act_bits);
    let mut values: Vec<Option<Value>> = (0..model.nodes.len()).map(|_| None).collect();
    let mut x = Some(x);
    let mut times = ForwardTimes::default();
    let result = (|| -> Result<Vec<f32>> {
        for stage in 0..=linear.len() {
            let recv = stage.checked_sub(1).map(|t| linear[t]);
            let send = linear.get(stage).copied();
            let body = recv.map_or(0, |r| r + 1)..send.unwrap_or(steps.len());
            // The values this stage writes: the received layer's, then the body's. Those read
            // in later stages are kept for the batch; the others live in an image's scratch.
            let written: Vec<usize> = recv.into_iter().chain(body.clone()).map(|i| steps[i].end).collect();
            let kept = |node: usize| last[node] > stage || node + 1 == model.nodes.len();
            let mut outs: Vec<Value> = written
                .iter()
                .filter(|&&node| kept(node))
                .map(|&node| pool.take(batch * model.nodes[node].shape.len()))
                .collect();
            let kept_nodes: Vec<usize> = written.iter().copied().filter(|&node| kept(node)).collect();
            let scratch_lens: Vec<usize> =
                written.iter().filter(|&&node| !kept(node)).map(|&node| model.nodes[node].shape.len()).collect();
            let (cur, prev) = {
                let [a, b] = &mut *quant;
                if stage % 2 == 0 { (a, b) } else { (b, a) }
            };
            // The layer sent in this stage, and its per-image lengths.
            let sending = match send {
                Some(k) => {
                    let layer = layer_of(qm, steps[k].node)?;
                    let start = Instant::now();
                    exec.start(layer, batch)?;
                    times.integer += start.elapsed();
                    let per = per_image(model.nodes[steps[k].node].inputs[0]);
                    Some((k, layer, per, exec.slot_len(layer)))
                }
                None => None,
            };
            let (per, slot) = sending.map_or((0, 0), |(_, _, per, slot)| (per, slot));
            cur.q8.resize(if bits8 { batch * per } else { 0 }, 0);
            cur.q16.resize(if bits8 { 0 } else { batch * per }, 0);
            cur.scales.resize(batch, 1.0);
            sent.resize(batch * slot, 0);
            let received = match recv {
                Some(r) => Some((r, layer_of(qm, steps[r].node)?)),
                None => None,
            };
            let parts = image_parts(&kept_nodes, &mut outs, model, cur, sent, per, slot);
            let (values_ref, x_ref, exec_ref, prev_ref, scratch) = (&values, &x, &*exec, &*prev, &*scratch);
            let source = Sources { model, written: &written, values: values_ref, x: x_ref.as_ref() };
            // Everything the stage does for image `b`, whose slices of the stage's values are
            // `outs` (in the order of `written`).
            let run_image = |b: usize, outs: &mut [&mut [f32]], p: ImageParts<'_>| -> Result<[Duration; 3]> {
                let mut t = [Duration::ZERO; 3];
                if let Some((r, layer)) = received {
                    let start = Instant::now();
                    let step = &steps[r];
                    let out = std::mem::take(&mut outs[0]);
                    let residual = match step.add {
                        Some(src) => Some(source.get(src, b, outs)?),
                        None => None,
                    };
                    let epilogue = Epilogue::new(prev_ref.scales[b], layer, Tail { residual, act: step.act });
                    exec_ref.output(layer, b, prev_input(prev_ref, b, bits8), &epilogue, &mut *out)?;
                    outs[0] = out;
                    t[2] += start.elapsed();
                }
                for (w, i) in body.clone().enumerate() {
                    let w = w + usize::from(received.is_some());
                    let start = Instant::now();
                    let node = &model.nodes[steps[i].node];
                    let out = std::mem::take(&mut outs[w]);
                    let ins = node.inputs.iter().map(|&src| source.get(src, b, outs)).collect::<Result<Vec<_>>>()?;
                    crate::exec::other_op(model, &node.op, steps[i].node, 1, &ins, &mut *out);
                    outs[w] = out;
                    t[1] += start.elapsed();
                }
                if let Some((k, layer, _, _)) = sending {
                    let start = Instant::now();
                    let a = source.get(model.nodes[steps[k].node].inputs[0], b, outs)?;
                    let fixed = qm.act_scale[steps[k].node];
                    *p.scale = if bits8 {
                        quantize_image(a, fixed, qmax, p.q8)
                    } else {
                        quantize_image(a, fixed, qmax, p.q16)
                    };
                    t[0] += start.elapsed();
                    let start = Instant::now();
                    let q = if bits8 { QuantInput::Bits8(p.q8) } else { QuantInput::Bits16(p.q16) };
                    exec_ref.encrypt(layer, b, q, p.sent)?;
                    t[2] += start.elapsed();
                }
                Ok(t)
            };
            let per_image_times = parts
                .into_par_iter()
                .enumerate()
                .map(|(b, mut p)| {
                    // A scratch set for this image (one per image in flight, reused).
                    let mut set = scratch.lock().ok().and_then(|mut s| s.pop()).unwrap_or_default();
                    set.resize_with(scratch_lens.len(), Vec::new);
                    for (buf, &len) in set.iter_mut().zip(&scratch_lens) {
                        if buf.len() < len {
                            buf.resize(len, 0.0);
                        }
                    }
                    let (mut kept_parts, mut free_parts) = (std::mem::take(&mut p.outs).into_iter(), set.iter_mut());
                    let mut outs: Vec<&mut [f32]> = written
                        .iter()
                        .map(|&node| {
                            let part = if kept(node) {
                                kept_parts.next()
                            } else {
                                free_parts.next().map(|buf| &mut buf[..model.nodes[node].shape.len()])
                            };
                            part.unwrap_or_default()
                        })
                        .collect();
                    let t = run_image(b, &mut outs, p);
                    drop(outs);
                    if let Ok(mut s) = scratch.lock() {
                        s.push(set);
                    }
                    t
                })
                .collect::<Result<Vec<_>>>();
            // The stage's values are kept (or returned) whatever happened.
            for (&node, v) in kept_nodes.iter().zip(outs) {
                values[node] = Some(v);
            }
            for [q, n, i] in per_image_times? {
                times.quantize += q;
                times.nonlinear += n;
                times.integer += i;
            }
            let start = Instant::now();
            if let Some((_, layer, _, _)) = sending {
                let q = if bits8 { QuantInput::Bits8(&cur.q8) } else { QuantInput::Bits16(&cur.q16) };
                exec.run(layer, q, sent)?;
            }
            if let Some((_, layer)) = received {
                exec.finish(layer);
            }
            times.integer += start.elapsed();
            // Free what no later stage reads.
            for (i, v) in values.iter_mut().enumerate() {
                if last[i] == stage
                    && i + 1 < model.nodes.len()
                    && let Some(v) = v.take()
                {
                    pool.give(v);
                }
            }
            if input_last == stage
                && let Some(v) = x.take()
            {
                pool.give(v);
            }
        }
        values
            .last()
            .and_then(Option::as_ref)
            .map(|v| v.data().to_vec())
            .ok_or_else(|| ModelError::Parse { what: format!("model `{}`", model.name), message: "no layers".into() })
    })();
    for v in values.into_iter().flatten().chain(x) {
        pool.give(v);
    }
    Ok((result?, times))
}

/// Image `b`'s quantized input of the layer received in this stage.
fn prev_input(prev: &QuantBuffers, b: usize, bits8: bool) -> QuantInput<'_> {
    let batch = prev.scales.len().max(1);
    if bits8 {
        let per = prev.q8.len() / batch;
        QuantInput::Bits8(&prev.q8[b * per..][..per])
    } else {
        let per = prev.q16.len() / batch;
        QuantInput::Bits16(&prev.q16[b * per..][..per])
    }
}

/// Where an image's inputs come from in a stage: the values the stage writes (the image's
/// slices, passed in), earlier stages' values, or the model input.
struct Sources<'a> {
    model: &'a crate::Model,
    written: &'a [usize],
    values: &'a [Option<Value>],
    x: Option<&'a Value>,
}

impl Sources<'_> {
    /// Image `b`'s slice of `src`; `outs` are the image's slices of the stage's own values.
    fn get<'b>(&'b self, src: Source, b: usize, outs: &'b [&'b mut [f32]]) -> Result<&'b [f32]> {
        if let Source::Node(i) = src
            && let Some(w) = self.written.iter().position(|&n| n == i)
        {
            return Ok(&outs[w][..]);
        }
        let (value, len) = match src {
            Source::Input => (self.x, self.model.image_len()),
            Source::Node(i) => (self.values[i].as_ref(), self.model.nodes[i].shape.len()),
        };
        value
            .map(|v| &v.data()[b * len..][..len])
            .ok_or_else(|| ModelError::Internal("a node reads a value already freed".into()))
    }
}

/// Splits the stage's buffers into each image's parts.
fn image_parts<'a>(
    written: &[usize],
    outs: &'a mut [Value],
    model: &crate::Model,
    cur: &'a mut QuantBuffers,
    sent: &'a mut [u32],
    per: usize,
    slot: usize,
) -> Vec<ImageParts<'a>> {
    let mut parts: Vec<ImageParts<'a>> = Vec::with_capacity(cur.scales.len());
    let QuantBuffers { q8, q16, scales } = cur;
    let mut q8 = q8.chunks_mut(per.max(1));
    let mut q16 = q16.chunks_mut(per.max(1));
    let mut sent = sent.chunks_mut(slot.max(1));
    for scale in scales.iter_mut() {
        parts.push(ImageParts {
            outs: Vec::with_capacity(written.len()),
            q8: q8.next().unwrap_or_default(),
            q16: q16.next().unwrap_or_default(),
            scale,
            sent: sent.next().unwrap_or_default(),
        });
    }
    for (v, &node) in outs.iter_mut().zip(written) {
        let len = model.nodes[node].shape.len();
        for (p, chunk) in parts.iter_mut().zip(v.data_mut().chunks_exact_mut(len.max(1))) {
            p.outs.push(chunk);
        }
    }
    parts
}
