//! Hostile files, as an attacker would craft them: each one gets a typed error, never a
//! panic, an abort, an unbounded allocation or an out-of-bounds read.

use std::io::Write;
use vericonv_model::ModelError;

use vericonv_model::Dataset;
use vericonv_model::Model;
use vericonv_model::onnx::import::{export_model, import_proto};

/// Safetensors bytes holding the given f32 tensors.
fn safetensors(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.to_string(), s.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).expect("view"))
        })
        .collect();
    safetensors::serialize(views, None).expect("serialize")
}

/// A native model JSON with the given input and layers.
fn model_json(input: (u64, u64, u64), layers: &str) -> Vec<u8> {
    format!(
        r#"{{"format": "vericonv-model/1", "name": "hostile", "input": {{"channels": {}, "height": {}, "width": {}, "mean": [0.0], "std": [1.0]}}, "layers": [{layers}]}}"#,
        input.0, input.1, input.2
    )
    .into_bytes()
}

#[test]
fn shape_products_that_would_wrap_are_refused_at_load() {
    // 2^62 + 1 channels of 4×1: C·H·W wraps to 4 in 64 bits. It used to load and then read out
    // of bounds inside the GEMM.
    let json = model_json(
        (1 << 62 | 1, 4, 1),
        r#"{"name": "flat", "op": "flatten"}, {"name": "fc", "op": "linear", "out_features": 2, "bias": false}"#,
    );
    let weights = safetensors(&[("fc.weight", vec![2, 4], vec![0.5; 8])]);
    assert!(matches!(Model::from_bytes(&json, &weights), Err(ModelError::Parse { .. })));
    // A linear layer of 2^63 + 1 outputs: its weight count overflows.
    let json = model_json(
        (1, 2, 2),
        r#"{"name": "flat", "op": "flatten"}, {"name": "fc", "op": "linear", "out_features": 9223372036854775809, "bias": false}"#,
    );
    let err = Model::from_bytes(&json, &safetensors(&[("fc.weight", vec![1, 4], vec![0.5; 4])])).expect_err("overflow");
    assert!(err.to_string().contains("fc"), "{err}");
    // An input of 60000×60000 pixels: far above the element limit, refused before any
    // allocation.
    let json = model_json((1, 60_000, 60_000), r#"{"name": "r", "op": "relu"}"#);
    assert!(matches!(Model::from_bytes(&json, &safetensors(&[])), Err(ModelError::Parse { .. })));
}

#[test]
fn unknown_fields_and_a_wrong_class_count_are_refused() {
    let layers =
        r#"{"name": "flat", "op": "flatten"}, {"name": "fc", "op": "linear", "out_features": 2, "bias": false}"#;
    let weights = safetensors(&[("fc.weight", vec![2, 4], vec![0.5; 8])]);
    let json = String::from_utf8(model_json((1, 2, 2), layers)).expect("utf8");
    let json = json.replace("\"layers\"", "\"num_classes\": 2, \"layers\"");
    assert!(Model::from_bytes(json.as_bytes(), &weights).is_ok());
    let wrong = json.replace("\"num_classes\": 2", "\"num_classes\": 10");
    let err = Model::from_bytes(wrong.as_bytes(), &weights).expect_err("class count");
    assert!(err.to_string().contains("num_classes"), "{err}");
    let unknown = json.replace("\"num_classes\": 2", "\"num_classes\": 2, \"classes\": 2");
    assert!(matches!(Model::from_bytes(unknown.as_bytes(), &weights), Err(ModelError::Parse { .. })));
    let unknown = json.replace("\"std\": [1.0]", "\"std\": [1.0], \"sdt\": [1.0]");
    assert!(matches!(Model::from_bytes(unknown.as_bytes(), &weights), Err(ModelError::Parse { .. })));
}

#[test]
fn pooling_pads_must_be_smaller_than_the_window() {
    // A 1×1 input with pads of 100000 would allocate 40 GB; ONNX requires pads < kernel.
    let json = model_json(
        (1, 1, 1),
        r#"{"name": "pool", "op": "maxpool2d", "kernel": [2, 2], "stride": [1, 1], "padding": [100000, 100000, 100000, 100000], "ceil_mode": false}"#,
    );
    let err = Model::from_bytes(&json, &safetensors(&[])).expect_err("pads");
    assert!(err.to_string().contains("pool"), "{err}");
}

#[test]
fn weights_that_are_not_finite_and_negative_variances_are_refused() {
    let conv = r#"{"name": "conv", "op": "conv2d", "out_channels": 1, "kernel": [1, 1], "stride": [1, 1], "padding": [0, 0, 0, 0], "dilation": [1, 1], "groups": 1, "bias": false}"#;
    let json = model_json((1, 2, 2), conv);
    assert!(Model::from_bytes(&json, &safetensors(&[("conv.weight", vec![1, 1, 1, 1], vec![0.5])])).is_ok());
    let err = Model::from_bytes(&json, &safetensors(&[("conv.weight", vec![1, 1, 1, 1], vec![f32::NAN])]))
        .expect_err("NaN weight");
    assert!(err.to_string().contains("conv.weight"), "{err}");
    // The same through ONNX, which used to load it (and then report 100% accuracy: NaN logits
    // argmax to class 0).
    let model = Model::from_bytes(&json, &safetensors(&[("conv.weight", vec![1, 1, 1, 1], vec![0.5])])).expect("ok");
    let mut proto = export_model(&model);
    let graph = proto.graph.as_mut().expect("graph");
    let init = graph.initializer.iter_mut().find(|t| t.name.contains("conv")).expect("conv weight");
    if init.raw_data.is_empty() {
        init.float_data[0] = f32::NAN;
    } else {
        init.raw_data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    }
    let err = import_proto(&proto, "nan").expect_err("NaN weight in ONNX");
    assert!(err.to_string().contains("finite"), "{err}");
    let bn = format!(r#"{conv}, {{"name": "bn", "op": "batchnorm2d"}}"#);
    let json = model_json((1, 2, 2), &bn);
    let tensors = |var: f32| {
        safetensors(&[
            ("conv.weight", vec![1, 1, 1, 1], vec![0.5]),
            ("bn.weight", vec![1], vec![1.0]),
            ("bn.bias", vec![1], vec![0.0]),
            ("bn.running_mean", vec![1], vec![0.0]),
            ("bn.running_var", vec![1], vec![var]),
        ])
    };
    assert!(Model::from_bytes(&json, &tensors(1.0)).is_ok());
    let err = Model::from_bytes(&json, &tensors(-1.0)).expect_err("negative variance");
    assert!(err.to_string().contains("running_var"), "{err}");
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

fn idx(dims: &[u32], data_len: usize) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    dims.iter().for_each(|d| v.extend_from_slice(&d.to_be_bytes()));
    v.resize(v.len() + data_len, 0);
    v
}

#[test]
fn gzip_bombs_stop_at_what_the_idx_header_announces() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path();
    let labels = dir.join("labels.gz");
    std::fs::write(&labels, gzip(&idx(&[1], 1))).expect("write");
    // The header announces one 2×2 image; the stream goes on for 64 MB of zeros (64 KB
    // compressed). Only the announced bytes and one more are decompressed.
    let images = dir.join("images.gz");
    std::fs::write(&images, gzip(&idx(&[1, 2, 2], 64 << 20))).expect("write");
    let err = Dataset::from_idx("bomb", &images, &labels).expect_err("trailing data");
    assert!(err.to_string().contains("need 4 bytes"), "{err}");
    // A header that announces more than 4 GiB is refused before decompressing anything.
    std::fs::write(&images, gzip(&idx(&[65_536, 256, 512], 16))).expect("write");
    let err = Dataset::from_idx("bomb", &images, &labels).expect_err("too large");
    assert!(err.to_string().contains("announce"), "{err}");
    // A well-formed gzipped pair loads.
    std::fs::write(&images, gzip(&idx(&[1, 2, 2], 4))).expect("write");
    assert_eq!(Dataset::from_idx("ok", &images, &labels).expect("loads").len(), 1);
}

#[test]
fn digits_rows_with_nan_or_out_of_range_values_are_refused() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path();
    let row = |label: &str| format!("{}{label}\n", "1,".repeat(64));
    let good: String = (0..361).map(|_| row("3")).collect();
    let path = dir.join("digits.csv");
    std::fs::write(&path, &good).expect("write");
    assert!(Dataset::from_digits_csv(&path, true).is_ok());
    for bad in ["nan", "10", "2.5", "-1"] {
        std::fs::write(&path, format!("{good}{}", row(bad))).expect("write");
        assert!(matches!(Dataset::from_digits_csv(&path, true), Err(ModelError::Parse { .. })), "label {bad}");
    }
    std::fs::write(&path, format!("{good}nan,{}", row("1").split_once(',').expect("row").1)).expect("write");
    assert!(matches!(Dataset::from_digits_csv(&path, true), Err(ModelError::Parse { .. })), "NaN pixel");
}
