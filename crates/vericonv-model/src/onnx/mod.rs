//! ONNX files: tensors (`.pb`), models (`.onnx`), the geometry of `Conv` and `ConvInteger`
//! nodes (including `auto_pad`), and model import and export ([`import`]).

pub mod import;
pub mod proto;

use crate::floats::{self, FloatType};
use prost::Message;

use crate::{ModelError, Result};
use proto::{ModelProto, NodeProto, TensorProto};
use vericonv::{Conv2d, Padding};

/// Tensor element values, widened: floating types to `f32`, integer types to `i64`.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// FLOAT, FLOAT16 or DOUBLE.
    Float(Vec<f32>),
    /// Any integer type or BOOL.
    Int(Vec<i64>),
}

/// A decoded tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Name.
    pub name: String,
    /// Shape.
    pub dims: Vec<usize>,
    /// Values, row-major.
    pub data: TensorData,
}

fn parse_err(what: &str, message: impl Into<String>) -> ModelError {
    ModelError::Parse { what: what.into(), message: message.into() }
}

fn read_bytes(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| ModelError::io(path, e))
}

/// Reads a serialized `TensorProto` (`.pb`) file.
///
/// # Errors
/// [`crate::ModelError::Io`], or [`crate::ModelError::Parse`] for a corrupt file, [`crate::ModelError::Unsupported`] for an element
/// type other than numbers.
pub fn read_tensor(path: impl AsRef<std::path::Path>) -> Result<Tensor> {
    let path = path.as_ref();
    let bytes = read_bytes(path)?;
    let proto =
        TensorProto::decode(bytes.as_slice()).map_err(|e| parse_err(&path.display().to_string(), e.to_string()))?;
    Tensor::from_proto(&proto)
}

/// Reads a `ModelProto` (`.onnx`) file.
///
/// # Errors
/// [`crate::ModelError::Io`], or [`crate::ModelError::Parse`] for a corrupt file or a model without a graph.
pub fn read_model(path: impl AsRef<std::path::Path>) -> Result<ModelProto> {
    let path = path.as_ref();
    let bytes = read_bytes(path)?;
    let model =
        ModelProto::decode(bytes.as_slice()).map_err(|e| parse_err(&path.display().to_string(), e.to_string()))?;
    if model.graph.is_none() {
        return Err(parse_err(&path.display().to_string(), "the model has no graph"));
    }
    Ok(model)
}

impl Tensor {
    /// Decodes a `TensorProto`, from its typed fields or its `raw_data`.
    ///
    /// # Errors
    /// [`crate::ModelError::Parse`] when the element count does not match the shape, [`crate::ModelError::Unsupported`]
    /// for non-numeric element types.
    pub fn from_proto(t: &TensorProto) -> Result<Self> {
        let what = format!("tensor `{}`", t.name);
        let dims: Vec<usize> = t
            .dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| parse_err(&what, format!("negative dimension {d}"))))
            .collect::<Result<_>>()?;
        let count = dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| parse_err(&what, "shape overflows"))?;
        let raw = &t.raw_data;
        let raw_of = |size: usize| -> Result<&[u8]> {
            match count.checked_mul(size) {
                Some(bytes) if bytes == raw.len() => Ok(raw),
                _ => Err(parse_err(
                    &what,
                    format!("raw_data has {} bytes, {count} elements of {size} bytes expected", raw.len()),
                )),
            }
        };
        let from_raw = |size: usize| raw_of(size).map(|r| r.chunks_exact(size));
        let use_raw = !raw.is_empty();
        let data = match t.data_type {
            1 if use_raw => TensorData::Float(floats::from_le_bytes(raw_of(4)?, FloatType::F32, &what)?),
            1 => TensorData::Float(t.float_data.clone()),
            10 if use_raw => TensorData::Float(floats::from_le_bytes(raw_of(2)?, FloatType::F16, &what)?),
            10 => TensorData::Float(t.int32_data.iter().map(|&b| half::f16::from_bits(b as u16).to_f32()).collect()),
            11 if use_raw => TensorData::Float(
                from_raw(8)?.map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect(),
            ),
            11 => TensorData::Float(t.double_data.iter().map(|&v| v as f32).collect()),
            2 if use_raw => TensorData::Int(from_raw(1)?.map(|c| i64::from(c[0])).collect()),
            3 if use_raw => TensorData::Int(from_raw(1)?.map(|c| i64::from(c[0] as i8)).collect()),
            4 if use_raw => {
                TensorData::Int(from_raw(2)?.map(|c| i64::from(u16::from_le_bytes([c[0], c[1]]))).collect())
            }
            5 if use_raw => {
                TensorData::Int(from_raw(2)?.map(|c| i64::from(i16::from_le_bytes([c[0], c[1]]))).collect())
            }
            6 if use_raw => {
                TensorData::Int(from_raw(4)?.map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect())
            }
            7 if use_raw => {
                TensorData::Int(from_raw(8)?.map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect())
            }
            9 if use_raw => TensorData::Int(from_raw(1)?.map(|c| i64::from(c[0] != 0)).collect()),
            2..=6 | 9 => TensorData::Int(t.int32_data.iter().map(|&v| i64::from(v)).collect()),
            7 => TensorData::Int(t.int64_data.clone()),
            other => return Err(ModelError::Unsupported(format!("{what}: element type {other}"))),
        };
        let len = match &data {
            TensorData::Float(v) => v.len(),
            TensorData::Int(v) => v.len(),
        };
        if len != count {
            return Err(parse_err(&what, format!("{len} values for shape {dims:?} ({count} elements)")));
        }
        Ok(Self { name: t.name.clone(), dims, data })
    }

    /// The values as exact integers: integer tensors as they are, float tensors only when every
    /// value is an integer.
    ///
    /// # Errors
    /// [`crate::ModelError::Parse`] when a float value is not integral or out of `i64` range.
    pub fn to_integers(&self) -> Result<Vec<i64>> {
        match &self.data {
            TensorData::Int(v) => Ok(v.clone()),
            TensorData::Float(v) => v
                .iter()
                .map(|&f| {
                    if f.fract() == 0.0 && f.abs() < 9.0e18 {
                        Ok(f as i64)
                    } else {
                        Err(parse_err(&format!("tensor `{}`", self.name), format!("value {f} is not an integer")))
                    }
                })
                .collect(),
        }
    }
}

/// An attribute of `node` by name.
pub fn attribute<'a>(node: &'a NodeProto, name: &str) -> Option<&'a proto::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn usize_pair(node: &NodeProto, name: &str, default: usize) -> Result<(usize, usize)> {
    match attribute(node, name) {
        None => Ok((default, default)),
        Some(a) => match a.ints.as_slice() {
            &[x, y] if x >= 0 && y >= 0 => Ok((x as usize, y as usize)),
            other => Err(ModelError::Unsupported(format!(
                "node `{}` ({}): attribute {name} = {other:?} (2-D only)",
                node.name, node.op_type
            ))),
        },
    }
}

/// The geometry of a 2-D `Conv` or `ConvInteger` node, given its input `[N, C, H, W]` and
/// weight `[M, C/group, kH, kW]` shapes. Returns the geometry and the batch size `N`.
///
/// Handles `pads`, `strides`, `dilations`, `group`, `kernel_shape` and every `auto_pad` mode.
///
/// # Errors
/// [`crate::ModelError::Unsupported`] for an unknown attribute or a non-2-D convolution, and the geometry
/// errors of [`Conv2d`].
pub fn conv_geometry(node: &NodeProto, x_dims: &[usize], w_dims: &[usize]) -> Result<(Conv2d, usize)> {
    let unsupported = |msg: String| ModelError::Unsupported(format!("node `{}` ({}): {msg}", node.name, node.op_type));
    for a in &node.attribute {
        if !["auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"].contains(&a.name.as_str()) {
            return Err(unsupported(format!("attribute `{}`", a.name)));
        }
    }
    let (&[n, c, h, w], &[m, cg, kh, kw]) = (x_dims, w_dims) else {
        return Err(unsupported(format!("input {x_dims:?} and weight {w_dims:?} are not 4-D")));
    };
    if let Some(k) = attribute(node, "kernel_shape")
        && k.ints != [kh as i64, kw as i64]
    {
        return Err(unsupported(format!("kernel_shape {:?} differs from the weight's {kh}×{kw}", k.ints)));
    }
    let groups = match attribute(node, "group") {
        None => 1,
        Some(a) => usize::try_from(a.i).map_err(|_| unsupported(format!("group = {}", a.i)))?,
    };
    if groups == 0 || cg * groups != c {
        return Err(unsupported(format!(
            "weight has {cg} input channels per group, input has {c} channels and group = {groups}"
        )));
    }
    let stride = usize_pair(node, "strides", 1)?;
    let dilation = usize_pair(node, "dilations", 1)?;
    let auto_pad = attribute(node, "auto_pad")
        .map(|a| String::from_utf8_lossy(&a.s).to_string())
        .unwrap_or_else(|| "NOTSET".into());
    let pad = match auto_pad.as_str() {
        "NOTSET" => match attribute(node, "pads").map(|a| a.ints.as_slice()) {
            None => Padding::default(),
            Some(&[t, l, b, r]) if [t, l, b, r].iter().all(|&p| p >= 0) => {
                Padding::new(t as usize, l as usize, b as usize, r as usize)
            }
            Some(other) => return Err(unsupported(format!("pads = {other:?}"))),
        },
        "VALID" => Padding::default(),
        "SAME_UPPER" | "SAME_LOWER" => {
            let same = |len: usize, k: usize, s: usize, d: usize| {
                // Saturating: a hostile stride or dilation makes the padding huge, and the
                // geometry check below refuses it, instead of wrapping.
                let total = (len.div_ceil(s.max(1)).saturating_sub(1))
                    .saturating_mul(s)
                    .saturating_add(k.saturating_sub(1).saturating_mul(d))
                    .saturating_add(1)
                    .saturating_sub(len);
                let small = total / 2;
                if auto_pad == "SAME_UPPER" { (small, total - small) } else { (total - small, small) }
            };
            let (t, b) = same(h, kh, stride.0, dilation.0);
            let (l, r) = same(w, kw, stride.1, dilation.1);
            Padding::new(t, l, b, r)
        }
        other => return Err(unsupported(format!("auto_pad = {other}"))),
    };
    let geom = Conv2d::builder(c, m, (h, w), (kh, kw))
        .stride(stride.0, stride.1)
        .dilation(dilation.0, dilation.1)
        .padding(pad)
        .groups(groups)
        .build()?;
    Ok((geom, n))
}
