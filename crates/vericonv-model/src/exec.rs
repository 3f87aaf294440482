//! One interpreter for every forward pass: the float model, the quantized plaintext model and
//! the private run differ only in the `linear_op` they give [`Model::run`].

use crate::graph::{Activation, Model, Node, Op, Shape, Source};
use crate::ops;
use vericonv::{Error, Result};

impl Model {
    /// Normalises a batch of `[0, 1]` images: `(x - mean[c]) / std[c]`.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] when `images` is not a positive multiple of the image size,
    /// [`Error::NonFinite`] for NaN or infinite pixels.
    pub fn normalize(&self, images: &[f32]) -> Result<Activation> {
        let per = self.image_len();
        if images.is_empty() || !images.len().is_multiple_of(per) {
            return Err(Error::LengthMismatch {
                what: "images (not a positive multiple of the model's C·H·W)",
                expected: per,
                got: images.len(),
            });
        }
        if let Some(i) = images.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite { what: "input images".into(), index: i, value: images[i].to_string() });
        }
        let hw = self.input.height * self.input.width;
        let pick = |v: &[f32], c: usize| if v.len() == 1 { v[0] } else { v[c] };
        let data = images.iter().enumerate().map(|(i, &x)| {
            let c = (i / hw) % self.input.channels;
            (x - pick(&self.input.mean, c)) / pick(&self.input.std, c)
        });
        Ok(Activation {
            batch: images.len() / per,
            shape: Shape { c: self.input.channels, h: self.input.height, w: self.input.width },
            data: data.collect(),
        })
    }

    /// Runs the graph on normalised input `x`. `Conv` and `Linear` nodes are delegated to
    /// `linear_op(node_index, node, input)`; every other operator runs here. Returns the logits
    /// and the time spent in the other operators.
    ///
    /// # Errors
    /// Whatever `linear_op` returns.
    pub fn run<F>(&self, x: Activation, mut linear_op: F) -> Result<(Activation, std::time::Duration)>
    where
        F: FnMut(usize, &Node, &Activation) -> Result<Activation>,
    {
        let mut other = std::time::Duration::ZERO;
        let mut values: Vec<Activation> = Vec::with_capacity(self.nodes.len());
        let batch = x.batch;
        for (idx, node) in self.nodes.iter().enumerate() {
            let get = |s: &Source| match s {
                Source::Input => &x,
                Source::Node(i) => &values[*i],
            };
            let a = get(&node.inputs[0]);
            let out = match &node.op {
                Op::Conv { .. } | Op::Linear { .. } => linear_op(idx, node, a)?,
                op => {
                    let start = std::time::Instant::now();
                    let s = a.shape;
                    let data = match op {
                        Op::Relu => a.data.iter().map(|&v| v.max(0.0)).collect(),
                        Op::Clip { min, max } => a.data.iter().map(|&v| v.max(*min).min(*max)).collect(),
                        Op::Sigmoid => a.data.iter().map(|&v| 1.0 / (1.0 + (-v).exp())).collect(),
                        Op::HardSigmoid { alpha, beta } => {
                            a.data.iter().map(|&v| (alpha * v + beta).clamp(0.0, 1.0)).collect()
                        }
                        Op::HardSwish => a.data.iter().map(|&v| v * (v / 6.0 + 0.5).clamp(0.0, 1.0)).collect(),
                        Op::MaxPool(p) => p.apply(&a.data, batch * s.c, s.h, s.w, true),
                        Op::AvgPool(p) => p.apply(&a.data, batch * s.c, s.h, s.w, false),
                        Op::GlobalAvgPool => ops::global_avg_pool(&a.data, s.h * s.w),
                        Op::Flatten => a.data.clone(),
                        Op::Add => a.data.iter().zip(&get(&node.inputs[1]).data).map(|(p, q)| p + q).collect(),
                        Op::Concat => {
                            let parts: Vec<&Activation> = node.inputs.iter().map(get).collect();
                            let mut out = Vec::with_capacity(batch * node.shape.len());
                            for b in 0..batch {
                                for p in &parts {
                                    let n = p.shape.len();
                                    out.extend_from_slice(&p.data[b * n..(b + 1) * n]);
                                }
                            }
                            out
                        }
                        Op::Resize { scale_h, scale_w } => {
                            let (h, w) = (s.h * scale_h, s.w * scale_w);
                            let mut out = Vec::with_capacity(batch * s.c * h * w);
                            for plane in a.data.chunks_exact(s.h * s.w) {
                                for y in 0..h {
                                    let row = &plane[(y / scale_h) * s.w..][..s.w];
                                    out.extend((0..w).map(|x| row[x / scale_w]));
                                }
                            }
                            out
                        }
                        Op::Conv { .. } | Op::Linear { .. } => unreachable!("handled above"),
                    };
                    other += start.elapsed();
                    Activation { batch, shape: node.shape, data }
                }
            };
            values.push(out);
        }
        let logits = values
            .pop()
            .ok_or_else(|| Error::Parse { what: format!("model `{}`", self.name), message: "no layers".into() })?;
        Ok((logits, other))
    }

    /// The float model's logits (`batch × classes`) for `[0, 1]` images.
    ///
    /// # Errors
    /// As [`Model::normalize`].
    pub fn forward_float(&self, images: &[f32]) -> Result<Vec<f32>> {
        let x = self.normalize(images)?;
        let (logits, _) = self.run(x, |_, node, a| Ok(float_linear_op(node, a)))?;
        Ok(logits.data)
    }
}

/// The float `Conv` or `Linear` node `node` applied to `a`, bias included.
pub(crate) fn float_linear_op(node: &Node, a: &Activation) -> Activation {
    let data = match &node.op {
        Op::Conv { geom, weight, bias } => {
            let mut y = ops::conv_f32(geom, a.batch, weight, &a.data);
            for (plane, &b) in y.chunks_exact_mut(geom.n()).zip(bias.iter().cycle()) {
                plane.iter_mut().for_each(|v| *v += b);
            }
            y
        }
        Op::Linear { in_features, out_features, weight, bias } => {
            let mut y = ops::linear(a.batch, *in_features, *out_features, weight, &a.data);
            for row in y.chunks_exact_mut(*out_features) {
                row.iter_mut().zip(bias).for_each(|(v, &b)| *v += b);
            }
            y
        }
        _ => Vec::new(),
    };
    Activation { batch: a.batch, shape: node.shape, data }
}

/// The index of the largest logit of each row of `classes` logits.
pub fn argmax(logits: &[f32], classes: usize) -> Vec<usize> {
    logits
        .chunks_exact(classes.max(1))
        .map(|row| row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best }))
        .collect()
}
