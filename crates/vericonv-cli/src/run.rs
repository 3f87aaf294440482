//! `vericonv run`: one input file through a model, privately: reading the input (an image or
//! a `.npy` array), the top classes, and the logits as `.npy`.

use std::path::Path;
use vericonv_model::ModelError;

use anyhow::Result;
use npyz::WriterBuilder;

/// The largest input file read, in bytes (a 4K RGB image is 50 MB as floats).
const MAX_INPUT_BYTES: u64 = 256 << 20;

/// The model input in `path` for one image of `shape` (`[C, H, W]`, `[C, L]`…): a `.npy` array
/// of that shape or of a batch of it (f32 or f64), or a PNG/JPEG image, resized to `H × W`,
/// scaled to [0, 1] and normalized with `mean`/`std` per channel. Returns the batch.
///
/// # Errors
/// [`ModelError::Io`] for a file that cannot be read; [`ModelError::Parse`] for one that is not a valid
/// array or image, or whose shape does not fit the model, and for a `mean`/`std` that does not
/// fit its channels.
pub fn read_input(path: &Path, shape: &[usize], mean: &[f32], std: &[f32]) -> vericonv_model::Result<Vec<f32>> {
    let parse = |message: String| ModelError::Parse { what: path.display().to_string(), message };
    let size = std::fs::metadata(path).map_err(|e| ModelError::io(path, e))?.len();
    if size > MAX_INPUT_BYTES {
        return Err(parse(format!("{size} bytes; inputs of at most {MAX_INPUT_BYTES} bytes are read")));
    }
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let per: usize = shape.iter().product();
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy")) {
        let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| parse(format!("not a .npy array: {e}")))?;
        let dims: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
        let whole = dims.as_slice() == shape || (dims.len() == shape.len() + 1 && dims[1..] == *shape);
        if !whole || per == 0 {
            return Err(parse(format!("an array of shape {dims:?}; the model takes {shape:?} or N × {shape:?}")));
        }
        let values = match npy.dtype() {
            npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float && t.size_field() == 4 => {
                npy.into_vec::<f32>().map_err(|e| parse(e.to_string()))?
            }
            npyz::DType::Plain(t) if t.type_char() == npyz::TypeChar::Float && t.size_field() == 8 => {
                npy.into_vec::<f64>().map_err(|e| parse(e.to_string()))?.into_iter().map(|v| v as f32).collect()
            }
            other => return Err(parse(format!("elements of type {}; float32 or float64 expected", other.descr()))),
        };
        return Ok(values);
    }
    let [c, h, w] = shape else {
        return Err(parse(format!("an image, but the model takes {shape:?}: give a .npy array")));
    };
    let img = image::load_from_memory(&bytes).map_err(|e| parse(format!("not a PNG or JPEG image: {e}")))?;
    let img = img.resize_exact(*w as u32, *h as u32, image::imageops::FilterType::Triangle);
    let pixels: Vec<u8> = match c {
        1 => img.to_luma8().into_raw(),
        3 => img.to_rgb8().into_raw(),
        _ => return Err(parse(format!("an image, but the model takes {c} channels: give a .npy array"))),
    };
    let mut out = vec![0f32; per];
    for (i, &p) in pixels.iter().enumerate() {
        let (pixel, ch) = (i / c, i % c);
        out[ch * h * w + pixel] = f32::from(p) / 255.0;
    }
    vericonv_model::InputSpec::of_shape(shape, mean, std)?.normalize(&mut out);
    Ok(out)
}

/// Writes `values` (`shape`) as a float32 `.npy` array.
///
/// # Errors
/// [`ModelError::Io`] when the file cannot be written.
pub fn write_npy(path: &Path, values: &[f32], shape: &[usize]) -> Result<()> {
    let io = |e: std::io::Error| ModelError::io(path, e);
    let file = std::fs::File::create(path).map_err(io)?;
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut writer = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&shape)
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .map_err(io)?;
    writer.extend(values.iter().copied()).map_err(io)?;
    writer.finish().map_err(io).map_err(anyhow::Error::from)
}

/// The `k` largest of `logits` as `(class, logit, softmax probability)`, largest first.
pub fn top_k(logits: &[f32], k: usize) -> Vec<(usize, f32, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order.into_iter().take(k).map(|i| (i, logits[i], exp[i] / sum)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_and_normalizes() {
        let t = top_k(&[0.0, 2.0, 1.0], 2);
        assert_eq!(t.iter().map(|x| x.0).collect::<Vec<_>>(), [1, 2]);
        let total: f32 = top_k(&[0.0, 2.0, 1.0], 3).iter().map(|x| x.2).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }

    #[test]
    fn npy_round_trips_and_bad_shapes_are_refused() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("x.npy");
        let values: Vec<f32> = (0..24).map(|v| v as f32 / 7.0).collect();
        write_npy(&path, &values, &[2, 3, 4]).expect("write");
        assert_eq!(read_input(&path, &[3, 4], &[], &[]).expect("a batch of 2"), values);
        assert_eq!(read_input(&path, &[2, 3, 4], &[], &[]).expect("one image"), values);
        let err = read_input(&path, &[4, 3], &[], &[]).expect_err("wrong shape");
        assert!(err.to_string().contains("[2, 3, 4]"), "{err}");
        std::fs::write(&path, b"\x93NUMPY garbage").expect("write");
        assert!(matches!(read_input(&path, &[3, 4], &[], &[]), Err(ModelError::Parse { .. })));
    }
}
