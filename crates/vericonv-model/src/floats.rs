//! Little-endian float tensors as stored by ONNX and safetensors, decoded with `bytemuck` (no
//! alignment needed) and `half`.

use crate::{ModelError, Result};
use half::{bf16, f16};

/// The float encodings the model formats store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FloatType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
}

impl FloatType {
    /// Bytes per element.
    pub(crate) fn size(self) -> usize {
        match self {
            FloatType::F32 => 4,
            FloatType::F16 | FloatType::BF16 => 2,
        }
    }
}

/// `bytes` as `f32` values.
///
/// # Errors
/// [`crate::ModelError::Parse`] naming `what` when `bytes` is not a whole number of elements.
pub(crate) fn from_le_bytes(bytes: &[u8], kind: FloatType, what: &str) -> Result<Vec<f32>> {
    if !bytes.len().is_multiple_of(kind.size()) {
        return Err(ModelError::Parse {
            what: what.to_string(),
            message: format!("{} bytes are not a whole number of {kind:?} values", bytes.len()),
        });
    }
    Ok(match kind {
        FloatType::F32 => bytemuck::pod_collect_to_vec::<u8, u32>(bytes)
            .into_iter()
            .map(|b| f32::from_bits(u32::from_le(b)))
            .collect(),
        FloatType::F16 => bytemuck::pod_collect_to_vec::<u8, u16>(bytes)
            .into_iter()
            .map(|b| f16::from_bits(u16::from_le(b)).to_f32())
            .collect(),
        FloatType::BF16 => bytemuck::pod_collect_to_vec::<u8, u16>(bytes)
            .into_iter()
            .map(|b| bf16::from_bits(u16::from_le(b)).to_f32())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_float_type_decodes_little_endian_bytes() {
        let values = [1.5f32, -2.25, 0.0, 65504.0];
        let f32_bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(from_le_bytes(&f32_bytes, FloatType::F32, "t").expect("f32"), values);
        let f16_bytes: Vec<u8> = values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
        assert_eq!(from_le_bytes(&f16_bytes, FloatType::F16, "t").expect("f16"), values);
        let bf16_bytes: Vec<u8> = values[..3].iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect();
        assert_eq!(from_le_bytes(&bf16_bytes, FloatType::BF16, "t").expect("bf16"), values[..3]);
        // Unaligned input decodes the same.
        let mut shifted = vec![0u8];
        shifted.extend(&f32_bytes);
        assert_eq!(from_le_bytes(&shifted[1..], FloatType::F32, "t").expect("unaligned"), values);
        assert!(matches!(from_le_bytes(&f32_bytes[1..], FloatType::F32, "t"), Err(ModelError::Parse { .. })));
    }
}
