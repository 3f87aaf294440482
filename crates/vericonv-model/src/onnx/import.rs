//! ONNX models in and out. Import covers Conv, Gemm, MatMul (+ Add of a constant bias), Relu,
//! MaxPool, AveragePool, GlobalAveragePool, Flatten, Reshape (to a flat vector),
//! BatchNormalization (folded into the preceding Conv), Add, Identity and Dropout. Anything
//! else is an error that names the operator or attribute.
//!
//! vericonv's input normalisation travels in the metadata keys `vericonv.mean` and
//! `vericonv.std`; a model without them takes its input unnormalised (mean 0, std 1).

use std::collections::HashMap;
use std::path::Path;

use prost::Message;

use super::proto::{
    AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto,
};
use super::{Tensor, TensorData, attribute, conv_geometry, read_model};
use crate::graph::output_len;
use crate::ops::Pool;
use crate::{BatchNorm, ConvAttrs, GraphBuilder, InputSpec, Model, Op, Source};
use crate::{ModelError, Result};
use vericonv::Padding;

fn unsupported(node: &NodeProto, what: impl std::fmt::Display) -> ModelError {
    ModelError::Unsupported(format!("ONNX node `{}` ({}): {what}", node_name(node), node.op_type))
}

fn node_name(node: &NodeProto) -> &str {
    if node.name.is_empty() { node.output.first().map_or("?", String::as_str) } else { &node.name }
}

fn floats(t: &Tensor) -> Vec<f32> {
    match &t.data {
        TensorData::Float(v) => v.clone(),
        TensorData::Int(v) => v.iter().map(|&x| x as f32).collect(),
    }
}

fn ints_attr(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attribute(node, name).map(|a| a.ints.clone())
}

fn check_attrs(node: &NodeProto, allowed: &[&str]) -> Result<()> {
    match node.attribute.iter().find(|a| !allowed.contains(&a.name.as_str())) {
        Some(a) => Err(unsupported(node, format!("attribute `{}`", a.name))),
        None => Ok(()),
    }
}

fn pool_of(node: &NodeProto) -> Result<Pool> {
    check_attrs(
        node,
        &[
            "kernel_shape",
            "strides",
            "pads",
            "ceil_mode",
            "count_include_pad",
            "auto_pad",
            "dilations",
            "storage_order",
        ],
    )?;
    let pair = |name: &str, default: usize| -> Result<(usize, usize)> {
        match ints_attr(node, name).as_deref() {
            None => Ok((default, default)),
            Some(&[a, b]) if a >= 0 && b >= 0 => Ok((a as usize, b as usize)),
            Some(other) => Err(unsupported(node, format!("{name} = {other:?} (2-D only)"))),
        }
    };
    let kernel = match ints_attr(node, "kernel_shape").as_deref() {
        Some(&[a, b]) if a > 0 && b > 0 => (a as usize, b as usize),
        other => return Err(unsupported(node, format!("kernel_shape = {other:?}"))),
    };
    if pair("dilations", 1)? != (1, 1) {
        return Err(unsupported(node, "dilated pooling"));
    }
    if attribute(node, "storage_order").is_some_and(|a| a.i != 0) {
        return Err(unsupported(node, "storage_order = 1"));
    }
    match attribute(node, "auto_pad").map(|a| String::from_utf8_lossy(&a.s).to_string()).as_deref() {
        None | Some("NOTSET" | "VALID") => {}
        Some(other) => return Err(unsupported(node, format!("auto_pad = {other}"))),
    }
    let padding = match ints_attr(node, "pads").as_deref() {
        None => Padding::default(),
        Some(&[t, l, b, r]) if [t, l, b, r].iter().all(|&p| p >= 0) => {
            Padding::new(t as usize, l as usize, b as usize, r as usize)
        }
        Some(other) => return Err(unsupported(node, format!("pads = {other:?}"))),
    };
    let flag = |name: &str| attribute(node, name).is_some_and(|a| a.i != 0);
    Ok(Pool {
        kernel,
        stride: pair("strides", 1)?,
        padding,
        ceil_mode: flag("ceil_mode"),
        count_include_pad: flag("count_include_pad"),
    })
}

/// Imports an ONNX classifier with one image input `N × C × H × W`.
///
/// # Errors
/// [`crate::ModelError::Io`], [`crate::ModelError::Parse`] for a corrupt file, [`crate::ModelError::Unsupported`] naming the first
/// unsupported operator or attribute.
pub fn import_model(path: impl AsRef<Path>) -> Result<Model> {
    import_model_recorded(path.as_ref()).map(|(model, _)| model)
}

/// [`import_model`], and whether the file records its input normalisation (the metadata keys
/// `vericonv.mean` / `vericonv.std`; PyTorch's exports never do).
///
/// # Errors
/// As [`import_model`].
pub fn import_model_recorded(path: &Path) -> Result<(Model, bool)> {
    let proto = read_model(path)?;
    let recorded = proto.metadata_props.iter().any(|m| m.key == "vericonv.mean" || m.key == "vericonv.std");
    let name = path.file_stem().map_or_else(|| "onnx".to_string(), |s| s.to_string_lossy().to_string());
    Ok((import_proto(&proto, &name)?, recorded))
}

/// The most elements a folded constant may have: shape arithmetic, not data.
const MAX_FOLDED: usize = 1 << 16;

/// Folds a node whose inputs are all constants (the shape arithmetic exporters emit, such as
/// `Shape → Gather → Unsqueeze → Concat` before a `Reshape`), or `None` when it is not one of
/// the folded operators.
fn fold(node: &NodeProto, inputs: &[&Tensor]) -> Option<Result<Tensor>> {
    let out = node.output.first().cloned().unwrap_or_default();
    let ints = |t: &Tensor| match &t.data {
        TensorData::Int(v) => Some(v.clone()),
        TensorData::Float(_) => None,
    };
    let int_tensor = |dims: Vec<usize>, v: Vec<i64>| Tensor { name: out.clone(), dims, data: TensorData::Int(v) };
    let axes = |i: usize| -> Option<Vec<i64>> {
        // Opset 13 moved `axes` from an attribute to an input.
        inputs.get(i).and_then(|t| ints(t)).or_else(|| ints_attr(node, "axes"))
    };
    let r: Result<Tensor> = match (node.op_type.as_str(), inputs) {
        ("Identity" | "Dropout", [t, ..]) => Ok(Tensor { name: out.clone(), ..(*t).clone() }),
        ("Cast", [t]) => Ok(Tensor { name: out.clone(), ..(*t).clone() }),
        ("Gather", [data, idx]) => {
            let (Some(v), Some(ix)) = (ints(data), ints(idx)) else { return None };
            if data.dims.len() != 1 || attribute(node, "axis").is_some_and(|a| a.i != 0) {
                return Some(Err(unsupported(node, "only gathers from a 1-D shape are folded")));
            }
            let picked: Option<Vec<i64>> = ix
                .iter()
                .map(|&i| {
                    let j = if i < 0 { i + v.len() as i64 } else { i };
                    usize::try_from(j).ok().and_then(|j| v.get(j).copied())
                })
                .collect();
            match picked {
                Some(p) => Ok(int_tensor(idx.dims.clone(), p)),
                None => Err(unsupported(node, format!("indices {ix:?} out of range for {} values", v.len()))),
            }
        }
        ("Unsqueeze", [t, ..]) => {
            let Some(axes) = axes(1) else { return Some(Err(unsupported(node, "no axes"))) };
            let rank = t.dims.len() + axes.len();
            let mut dims = t.dims.clone();
            let mut sorted: Vec<usize> = axes
                .iter()
                .map(|&a| if a < 0 { a + rank as i64 } else { a })
                .filter_map(|a| usize::try_from(a).ok())
                .collect();
            sorted.sort_unstable();
            if sorted.len() != axes.len() || sorted.iter().any(|&a| a >= rank) {
                return Some(Err(unsupported(node, format!("axes {axes:?} for rank {rank}"))));
            }
            sorted.iter().for_each(|&a| dims.insert(a, 1));
            Ok(Tensor { name: out.clone(), dims, data: t.data.clone() })
        }
        ("Squeeze", [t, ..]) => {
            let dims = t.dims.iter().copied().filter(|&d| d != 1).collect();
            Ok(Tensor { name: out.clone(), dims, data: t.data.clone() })
        }
        ("Concat", ts) if !ts.is_empty() => {
            let mut v = Vec::new();
            for t in ts {
                match ints(t) {
                    Some(x) if t.dims.len() <= 1 => v.extend(x),
                    _ => return Some(Err(unsupported(node, "only 1-D integer constants are concatenated"))),
                }
            }
            Ok(int_tensor(vec![v.len()], v))
        }
        _ => return None,
    };
    Some(r.and_then(|t| {
        let len = match &t.data {
            TensorData::Int(v) => v.len(),
            TensorData::Float(v) => v.len(),
        };
        if len > MAX_FOLDED && !matches!(node.op_type.as_str(), "Identity" | "Dropout" | "Cast") {
            Err(unsupported(node, format!("a folded constant of {len} values")))
        } else {
            Ok(t)
        }
    }))
}

/// A scalar float from an optional constant input or an attribute (opsets before 11).
fn scalar(node: &NodeProto, input: Option<&Tensor>, attr: &str, default: f32) -> Result<f32> {
    if let Some(t) = input {
        return match floats(t).as_slice() {
            [v] => Ok(*v),
            other => Err(unsupported(node, format!("a bound of {} values", other.len()))),
        };
    }
    Ok(attribute(node, attr).map_or(default, |a| a.f))
}

/// Imports a decoded `ModelProto` (see [`import_model`]).
///
/// # Errors
/// As [`import_model`].
pub fn import_proto(model: &ModelProto, name: &str) -> Result<Model> {
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| ModelError::Parse { what: "ONNX model".into(), message: "no graph".into() })?;
    let mut consts: HashMap<String, Tensor> = HashMap::new();
    for t in &graph.initializer {
        consts.insert(t.name.clone(), Tensor::from_proto(t)?);
    }
    let inputs: Vec<&ValueInfoProto> = graph.input.iter().filter(|i| !consts.contains_key(&i.name)).collect();
    let [input] = inputs.as_slice() else {
        return Err(ModelError::Unsupported(format!(
            "ONNX graphs with {} data inputs (one image input is supported)",
            inputs.len()
        )));
    };
    let dims: Vec<Option<i64>> = input
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .and_then(|t| t.shape.as_ref())
        .map(|s| s.dim.iter().map(|d| d.dim_value).collect())
        .unwrap_or_default();
    let (c, h, w) = match dims.as_slice() {
        [_, Some(c), Some(h), Some(w)] if *c > 0 && *h > 0 && *w > 0 => (*c as usize, *h as usize, *w as usize),
        other => {
            return Err(ModelError::Unsupported(format!(
                "ONNX input `{}` has shape {other:?}; N×C×H×W with fixed C, H, W is supported",
                input.name
            )));
        }
    };
    let meta = |key: &str| -> Option<Vec<f32>> {
        model.metadata_props.iter().find(|m| m.key == key).and_then(|m| serde_json::from_str(&m.value).ok())
    };
    let spec = InputSpec {
        channels: c,
        height: h,
        width: w,
        mean: meta("vericonv.mean").unwrap_or_else(|| vec![0.0]),
        std: meta("vericonv.std").unwrap_or_else(|| vec![1.0]),
    };
    let mut b = GraphBuilder::new(spec)?;
    if input.name != "input" {
        b.alias(&input.name, Source::Input)?;
    }
    // The rank of each data tensor, for `Shape`: 4 for images, 2 after a flatten.
    let mut ranks: HashMap<String, usize> = HashMap::from([(input.name.clone(), 4)]);
    for node in &graph.node {
        if !(node.domain.is_empty() || node.domain == "ai.onnx") {
            return Err(unsupported(node, format!("domain `{}`", node.domain)));
        }
        let out = node.output.first().ok_or_else(|| unsupported(node, "no output"))?.clone();
        if node.op_type == "Constant" {
            let t = attribute(node, "value")
                .and_then(|a| a.t.as_ref())
                .ok_or_else(|| unsupported(node, "only `value` constants"))?;
            consts.insert(out, Tensor::from_proto(t)?);
            continue;
        }
        let arg = |i: usize| node.input.get(i).filter(|s| !s.is_empty());
        let present: Vec<&String> = node.input.iter().filter(|s| !s.is_empty()).collect();
        if !present.is_empty() && present.iter().all(|n| consts.contains_key(*n)) {
            let inputs: Vec<&Tensor> = present.iter().filter_map(|n| consts.get(*n)).collect();
            if let Some(folded) = fold(node, &inputs) {
                consts.insert(out, folded?);
                continue;
            }
        }
        if node.op_type == "Shape" {
            check_attrs(node, &[])?;
            let name = arg(0).ok_or_else(|| unsupported(node, "missing input 0"))?;
            let s = b.shape_of(b.source(node_name(node), name)?);
            // The batch dimension is dynamic; 1 stands for it (a reshape keeps its first dimension).
            let dims: Vec<i64> = match ranks.get(name) {
                Some(4) => vec![1, s.c as i64, s.h as i64, s.w as i64],
                Some(2) => vec![1, s.len() as i64],
                _ => return Err(unsupported(node, "the shape of a tensor of unknown rank")),
            };
            consts.insert(out.clone(), Tensor { name: out, dims: vec![dims.len()], data: TensorData::Int(dims) });
            continue;
        }
        let rank_in = arg(0).and_then(|n| ranks.get(n)).copied().unwrap_or(4);
        let rank_out =
            if matches!(node.op_type.as_str(), "Flatten" | "Reshape" | "Gemm" | "MatMul") { 2 } else { rank_in };
        ranks.insert(out.clone(), rank_out);
        let konst = |i: usize| arg(i).and_then(|n| consts.get(n));
        let src = |i: usize| -> Result<Source> {
            b.source(node_name(node), arg(i).ok_or_else(|| unsupported(node, format!("missing input {i}")))?)
        };
        match node.op_type.as_str() {
            "Conv" => {
                let x = src(0)?;
                let weight = konst(1).ok_or_else(|| unsupported(node, "the weight must be an initializer"))?;
                let s = b.shape_of(x);
                let (g, _) = conv_geometry(node, &[1, s.c, s.h, s.w], &weight.dims)?;
                let bias = konst(2).map(floats).unwrap_or_default();
                let attrs = ConvAttrs {
                    out_channels: g.cout(),
                    kernel: (g.kh(), g.kw()),
                    stride: g.stride(),
                    padding: g.padding(),
                    dilation: g.dilation(),
                    groups: g.groups(),
                };
                b.conv(&out, x, attrs, floats(weight), bias)?;
            }
            "BatchNormalization" => {
                check_attrs(node, &["epsilon", "momentum", "training_mode"])?;
                if attribute(node, "training_mode").is_some_and(|a| a.i != 0) || node.output.len() > 1 {
                    return Err(unsupported(node, "training mode"));
                }
                let eps = attribute(node, "epsilon").map_or(1e-5, |a| a.f);
                let p =
                    |i: usize| konst(i).map(floats).ok_or_else(|| unsupported(node, "parameters must be initializers"));
                b.batchnorm(&out, src(0)?, &BatchNorm { gamma: p(1)?, beta: p(2)?, mean: p(3)?, var: p(4)?, eps })?;
            }
            "Gemm" | "MatMul" => {
                let x = src(0)?;
                let wt = konst(1).ok_or_else(|| unsupported(node, "the weight must be an initializer"))?;
                let gemm = node.op_type == "Gemm";
                if gemm {
                    check_attrs(node, &["alpha", "beta", "transA", "transB"])?;
                    if attribute(node, "transA").is_some_and(|a| a.i != 0) {
                        return Err(unsupported(node, "transA = 1"));
                    }
                }
                let trans_b = gemm && attribute(node, "transB").is_some_and(|a| a.i != 0);
                let &[r, cols] = wt.dims.as_slice() else {
                    return Err(unsupported(node, format!("weight shape {:?}", wt.dims)));
                };
                let (out_f, in_f) = if trans_b { (r, cols) } else { (cols, r) };
                let alpha = if gemm { attribute(node, "alpha").map_or(1.0, |a| a.f) } else { 1.0 };
                let beta = if gemm { attribute(node, "beta").map_or(1.0, |a| a.f) } else { 1.0 };
                let wv = floats(wt);
                let weight: Vec<f32> = (0..out_f)
                    .flat_map(|o| (0..in_f).map(move |i| (o, i)))
                    .map(|(o, i)| alpha * if trans_b { wv[o * in_f + i] } else { wv[i * out_f + o] })
                    .collect();
                let bias: Vec<f32> = match konst(2) {
                    Some(t) if t.dims.iter().product::<usize>() == out_f => {
                        floats(t).iter().map(|v| beta * v).collect()
                    }
                    Some(t) => return Err(unsupported(node, format!("bias shape {:?}", t.dims))),
                    None => Vec::new(),
                };
                b.linear(&out, x, out_f, weight, bias)?;
            }
            "Add" => match (konst(0), konst(1)) {
                (None, None) => b.simple(&out, Op::Add, vec![src(0)?, src(1)?])?,
                (Some(t), None) => b.add_bias(&out, src(1)?, &floats(t))?,
                (None, Some(t)) => b.add_bias(&out, src(0)?, &floats(t))?,
                (Some(_), Some(_)) => return Err(unsupported(node, "adding two constants")),
            },
            "Relu" => b.simple(&out, Op::Relu, vec![src(0)?])?,
            "Concat" => {
                check_attrs(node, &["axis"])?;
                let rank = rank_in as i64;
                let axis = attribute(node, "axis").map_or(1, |a| if a.i < 0 { a.i + rank } else { a.i });
                if axis != 1 {
                    return Err(unsupported(node, format!("concatenation along axis {axis} (only channels, axis 1)")));
                }
                let inputs = (0..node.input.len()).map(src).collect::<Result<Vec<_>>>()?;
                b.simple(&out, Op::Concat, inputs)?
            }
            "Resize" | "Upsample" => {
                check_attrs(node, &["mode", "coordinate_transformation_mode", "nearest_mode"])?;
                let text = |name: &str, default: &str| {
                    attribute(node, name).map_or(default.to_string(), |a| String::from_utf8_lossy(&a.s).to_string())
                };
                let (mode, coords, rounding) = (
                    text("mode", "nearest"),
                    text("coordinate_transformation_mode", "half_pixel"),
                    text("nearest_mode", "round_prefer_floor"),
                );
                // With whole factors, these coordinate and rounding modes all read input y / s.
                let floor_like = matches!(coords.as_str(), "half_pixel" | "pytorch_half_pixel" | "asymmetric")
                    && matches!(rounding.as_str(), "round_prefer_floor" | "floor")
                    || coords == "asymmetric" && rounding == "round_prefer_ceil";
                if mode != "nearest" || !floor_like {
                    return Err(unsupported(
                        node,
                        format!("resize mode {mode}, {coords}, {rounding} (nearest with whole factors is supported)"),
                    ));
                }
                let s = b.shape_of(src(0)?);
                // Scales are input 2 (Resize) or 1 (Upsample); sizes, input 3, give them too.
                let scales =
                    konst(if node.op_type == "Upsample" { 1 } else { 2 }).map(floats).filter(|v| !v.is_empty());
                let sizes = konst(3).and_then(|t| t.to_integers().ok());
                let factors = match (scales.as_deref(), sizes.as_deref()) {
                    (Some(&[n, c, fh, fw]), _) if n == 1.0 && c == 1.0 => Some((fh, fw)),
                    (_, Some(&[_, _, h, w])) if s.h > 0 && s.w > 0 => {
                        Some((h as f32 / s.h as f32, w as f32 / s.w as f32))
                    }
                    _ => None,
                };
                match factors {
                    Some((fh, fw)) if fh >= 1.0 && fw >= 1.0 && fh.fract() == 0.0 && fw.fract() == 0.0 => {
                        b.simple(&out, Op::Resize { scale_h: fh as usize, scale_w: fw as usize }, vec![src(0)?])?
                    }
                    other => {
                        return Err(unsupported(
                            node,
                            format!("resize factors {other:?} (whole factors ≥ 1 on H and W only)"),
                        ));
                    }
                }
            }
            "Clip" => {
                check_attrs(node, &["min", "max"])?;
                let min = scalar(node, konst(1), "min", f32::NEG_INFINITY)?;
                let max = scalar(node, konst(2), "max", f32::INFINITY)?;
                if arg(1).is_some_and(|_| konst(1).is_none()) || arg(2).is_some_and(|_| konst(2).is_none()) {
                    return Err(unsupported(node, "bounds that are not constants"));
                }
                b.simple(&out, Op::Clip { min, max }, vec![src(0)?])?
            }
            "Sigmoid" => b.simple(&out, Op::Sigmoid, vec![src(0)?])?,
            "HardSigmoid" => {
                check_attrs(node, &["alpha", "beta"])?;
                let alpha = attribute(node, "alpha").map_or(0.2, |a| a.f);
                let beta = attribute(node, "beta").map_or(0.5, |a| a.f);
                b.simple(&out, Op::HardSigmoid { alpha, beta }, vec![src(0)?])?
            }
            "HardSwish" => b.simple(&out, Op::HardSwish, vec![src(0)?])?,
            "MaxPool" => {
                if node.output.len() > 1 {
                    return Err(unsupported(node, "the Indices output"));
                }
                b.simple(&out, Op::MaxPool(pool_of(node)?), vec![src(0)?])?
            }
            "AveragePool" => b.simple(&out, Op::AvgPool(pool_of(node)?), vec![src(0)?])?,
            "GlobalAveragePool" => b.simple(&out, Op::GlobalAvgPool, vec![src(0)?])?,
            "Flatten" => {
                if attribute(node, "axis").is_some_and(|a| a.i != 1) {
                    return Err(unsupported(node, "axis other than 1"));
                }
                b.simple(&out, Op::Flatten, vec![src(0)?])?
            }
            "Reshape" => {
                let x = src(0)?;
                let target: Vec<i64> = match konst(1).map(|t| &t.data) {
                    Some(TensorData::Int(v)) => v.clone(),
                    _ => return Err(unsupported(node, "the shape must be a constant")),
                };
                let len = b.shape_of(x).len() as i64;
                if !matches!(target.as_slice(), [_, last] if *last == len || *last == -1) {
                    return Err(unsupported(
                        node,
                        format!("reshape to {target:?} (only flattening to N × {len} is supported)"),
                    ));
                }
                b.simple(&out, Op::Flatten, vec![x])?
            }
            "Identity" | "Dropout" => {
                if node.output.len() > 1 {
                    return Err(unsupported(node, "the mask output"));
                }
                b.alias(&out, src(0)?)?
            }
            other => return Err(unsupported(node, format!("operator `{other}` is not supported"))),
        }
    }
    let output = graph.output.first().map(|o| o.name.as_str()).unwrap_or_default();
    let last = b.last();
    match b.source("output", output)? {
        Source::Node(_) if b.source("output", &last)? == b.source("output", output)? => b.finish(name),
        _ => Err(ModelError::Unsupported(format!("the ONNX output `{output}` is not the last operator's result"))),
    }
}

fn attr_ints(name: &str, v: &[usize]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: v.iter().map(|&x| x as i64).collect(),
        r#type: 7,
        ..AttributeProto::default()
    }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), i: v, r#type: 2, ..AttributeProto::default() }
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    AttributeProto { name: name.into(), f: v, r#type: 1, ..AttributeProto::default() }
}

fn tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: 1,
        float_data: values.to_vec(),
        name: name.into(),
        ..TensorProto::default()
    }
}

fn value_info(name: &str, dims: Vec<Dimension>) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto { elem_type: 1, shape: Some(TensorShapeProto { dim: dims }) }),
        }),
    }
}

/// Exports a model as ONNX (opset 14): BatchNorm stays folded, linear layers become `Gemm`.
pub fn export_model(model: &Model) -> ModelProto {
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let name_of = |s: &Source| match s {
        Source::Input => "input".to_string(),
        Source::Node(i) => model.nodes[*i].name.clone(),
    };
    for n in &model.nodes {
        let inputs: Vec<String> = n.inputs.iter().map(name_of).collect();
        let mk = |op: &str, inputs: Vec<String>, attribute: Vec<AttributeProto>| NodeProto {
            input: inputs,
            output: vec![n.name.clone()],
            name: n.name.clone(),
            op_type: op.into(),
            attribute,
            domain: String::new(),
        };
        let pool_attrs = |p: &Pool, avg: bool| {
            let mut a = vec![
                attr_ints("kernel_shape", &[p.kernel.0, p.kernel.1]),
                attr_ints("strides", &[p.stride.0, p.stride.1]),
                attr_ints("pads", &[p.padding.top, p.padding.left, p.padding.bottom, p.padding.right]),
                attr_int("ceil_mode", i64::from(p.ceil_mode)),
            ];
            if avg {
                a.push(attr_int("count_include_pad", i64::from(p.count_include_pad)));
            }
            a
        };
        nodes.push(match &n.op {
            Op::Conv { geom: g, weight, bias } => {
                inits.push(tensor(
                    &format!("{}.weight", n.name),
                    &[g.cout(), g.cin_per_group(), g.kh(), g.kw()],
                    weight,
                ));
                inits.push(tensor(&format!("{}.bias", n.name), &[g.cout()], bias));
                let p = g.padding();
                let attrs = vec![
                    attr_ints("kernel_shape", &[g.kh(), g.kw()]),
                    attr_ints("strides", &[g.stride().0, g.stride().1]),
                    attr_ints("pads", &[p.top, p.left, p.bottom, p.right]),
                    attr_ints("dilations", &[g.dilation().0, g.dilation().1]),
                    attr_int("group", g.groups() as i64),
                ];
                mk("Conv", vec![inputs[0].clone(), format!("{}.weight", n.name), format!("{}.bias", n.name)], attrs)
            }
            Op::Linear { in_features, out_features, weight, bias } => {
                inits.push(tensor(&format!("{}.weight", n.name), &[*out_features, *in_features], weight));
                inits.push(tensor(&format!("{}.bias", n.name), &[*out_features], bias));
                mk(
                    "Gemm",
                    vec![inputs[0].clone(), format!("{}.weight", n.name), format!("{}.bias", n.name)],
                    vec![attr_int("transB", 1)],
                )
            }
            Op::Relu => mk("Relu", inputs, vec![]),
            Op::Clip { min, max } => {
                let mut args = inputs;
                for (bound, v) in [("min", *min), ("max", *max)] {
                    if v.is_finite() {
                        let name = format!("{}.{bound}", n.name);
                        inits.push(tensor(&name, &[], &[v]));
                        args.push(name);
                    } else {
                        args.push(String::new());
                    }
                }
                mk("Clip", args, vec![])
            }
            Op::Sigmoid => mk("Sigmoid", inputs, vec![]),
            Op::HardSigmoid { alpha, beta } => {
                mk("HardSigmoid", inputs, vec![attr_float("alpha", *alpha), attr_float("beta", *beta)])
            }
            Op::HardSwish => mk("HardSwish", inputs, vec![]),
            Op::MaxPool(p) => mk("MaxPool", inputs, pool_attrs(p, false)),
            Op::AvgPool(p) => mk("AveragePool", inputs, pool_attrs(p, true)),
            Op::GlobalAvgPool => mk("GlobalAveragePool", inputs, vec![]),
            Op::Flatten => mk("Flatten", inputs, vec![attr_int("axis", 1)]),
            Op::Add => mk("Add", inputs, vec![]),
            Op::Concat => mk("Concat", inputs, vec![attr_int("axis", 1)]),
            Op::Resize { scale_h, scale_w } => {
                let scales = format!("{}.scales", n.name);
                inits.push(tensor(&scales, &[4], &[1.0, 1.0, *scale_h as f32, *scale_w as f32]));
                let mut args = inputs;
                args.extend([String::new(), scales]);
                let s = |name: &str, v: &str| AttributeProto {
                    name: name.into(),
                    s: v.as_bytes().to_vec(),
                    r#type: 3,
                    ..AttributeProto::default()
                };
                mk(
                    "Resize",
                    args,
                    vec![
                        s("mode", "nearest"),
                        s("coordinate_transformation_mode", "asymmetric"),
                        s("nearest_mode", "floor"),
                    ],
                )
            }
        });
    }
    let fixed = |v: usize| Dimension { dim_value: Some(v as i64), dim_param: None };
    let i = &model.input;
    let input = value_info(
        "input",
        vec![
            Dimension { dim_value: None, dim_param: Some("N".into()) },
            fixed(i.channels),
            fixed(i.height),
            fixed(i.width),
        ],
    );
    let output = value_info(
        &model.nodes.last().map_or_else(String::new, |n| n.name.clone()),
        vec![Dimension { dim_value: None, dim_param: Some("N".into()) }, fixed(output_len(&model.nodes))],
    );
    let json = |v: &[f32]| serde_json::to_string(v).unwrap_or_default();
    ModelProto {
        ir_version: 8,
        producer_name: "vericonv".into(),
        graph: Some(GraphProto {
            node: nodes,
            name: model.name.clone(),
            initializer: inits,
            input: vec![input],
            output: vec![output],
        }),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 14 }],
        metadata_props: vec![
            StringStringEntryProto { key: "vericonv.mean".into(), value: json(&i.mean) },
            StringStringEntryProto { key: "vericonv.std".into(), value: json(&i.std) },
        ],
    }
}

/// Writes [`export_model`]'s result to `path`.
///
/// # Errors
/// [`crate::ModelError::Io`].
pub fn write_model(model: &Model, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    std::fs::write(path, export_model(model).encode_to_vec()).map_err(|e| ModelError::io(path, e))
}
