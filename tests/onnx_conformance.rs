//! ONNX conformance: the `Conv` and `ConvInteger` node tests of Debian's `libonnx-testdata`
//! go through the private path (encrypt → cloud → verify → decrypt) and reproduce the expected
//! outputs exactly, on the CPU backend and, when an adapter exists, on the GPU backend.

use std::path::{Path, PathBuf};
use vericonv_model::ModelError;

use vericonv::seeded_rng;
use vericonv::{CloudBackend, CpuBackend};
use vericonv::{LayerConfig, PrivateConv};
use vericonv_model::onnx::{TensorData, conv_geometry, read_model, read_tensor};

const ROOT: &str = "/usr/share/libonnx-testdata/data/node";

const CASES: [&str; 9] = [
    "test_basic_conv_with_padding",
    "test_basic_conv_without_padding",
    "test_conv_with_strides_padding",
    "test_conv_with_strides_no_padding",
    "test_conv_with_strides_and_asymmetric_padding",
    "test_conv_with_autopad_same",
    "test_basic_convinteger",
    "test_convinteger_with_padding",
    "test_convinteger_without_padding",
];

fn data_root() -> Option<PathBuf> {
    let root = PathBuf::from(ROOT);
    if root.is_dir() {
        return Some(root);
    }
    common::skip_unless_required(
        "VERICONV_REQUIRE_DATA",
        &format!("{ROOT} is missing: install Debian's libonnx-testdata (.ci/run does)"),
    );
    None
}

/// Runs one node test through the private path; returns the number of outputs compared.
fn run_case(dir: &Path, cloud: &dyn CloudBackend) -> usize {
    let model = read_model(dir.join("model.onnx")).expect("model parses");
    let graph = model.graph.expect("graph");
    let node = graph.node.first().expect("one node");
    let data = dir.join("test_data_set_0");
    // Test inputs are the graph inputs, in order.
    let named = |name: &str| -> Option<vericonv_model::onnx::Tensor> {
        let pos = graph.input.iter().position(|i| i.name == name)?;
        Some(read_tensor(data.join(format!("input_{pos}.pb"))).expect("input parses"))
    };
    let input = |i: usize| node.input.get(i).filter(|n| !n.is_empty()).and_then(|n| named(n));
    let x = input(0).expect("X");
    let w = input(1).expect("W");
    let (geom, batch) = conv_geometry(node, &x.dims, &w.dims).expect("geometry");
    let mut xi = x.to_integers().expect("integer-valued X");
    let mut wi = w.to_integers().expect("integer-valued W");
    let mut bias = None;
    if node.op_type == "ConvInteger" {
        if let Some(zp) = input(2) {
            let zp = zp.to_integers().expect("zero point");
            xi.iter_mut().for_each(|v| *v -= zp[0]);
        }
        if let Some(zp) = input(3) {
            let zp = zp.to_integers().expect("zero point");
            let per = wi.len() / geom.cout();
            for (o, chunk) in wi.chunks_mut(per).enumerate() {
                chunk.iter_mut().for_each(|v| *v -= zp[if zp.len() == 1 { 0 } else { o }]);
            }
        }
    } else if let Some(b) = input(2) {
        bias = Some(b.to_integers().expect("integer bias").into_iter().map(|v| v as i32).collect::<Vec<_>>());
    }
    let bound = xi.iter().map(|v| v.unsigned_abs()).max().unwrap_or(0) as u32;
    let xi: Vec<i32> = xi.into_iter().map(|v| v as i32).collect();
    let wi: Vec<i32> = wi.into_iter().map(|v| v as i32).collect();
    let cfg = LayerConfig { name: node.op_type.clone(), input_bound: bound, ..LayerConfig::default() };
    let mut rng = seeded_rng(0x0_cafe);
    let mut layer = PrivateConv::new(geom, &wi, bias.as_deref(), cfg, &mut rng).expect("layer");
    let (y, _) = layer.run(cloud, &xi, &mut rng).expect("verified");
    let expected = read_tensor(data.join("output_0.pb")).expect("output parses");
    assert_eq!(expected.dims, vec![batch, geom.cout(), geom.ho(), geom.wo()], "{}", dir.display());
    match expected.data {
        TensorData::Float(v) => assert_eq!(y.iter().map(|&a| a as f32).collect::<Vec<_>>(), v, "{}", dir.display()),
        TensorData::Int(v) => assert_eq!(y.iter().map(|&a| i64::from(a)).collect::<Vec<_>>(), v, "{}", dir.display()),
    }
    y.len()
}

#[cfg(feature = "gpu")]
fn gpu() -> Option<Box<dyn CloudBackend>> {
    common::gpu_or_skip(&vericonv_gpu::GpuOptions::default()).map(|g| Box::new(g) as Box<dyn CloudBackend>)
}

#[cfg(not(feature = "gpu"))]
fn gpu() -> Option<Box<dyn CloudBackend>> {
    None
}

#[test]
fn every_conformance_case_is_present() {
    let Some(root) = data_root() else { return };
    for case in CASES {
        assert!(root.join(case).join("model.onnx").is_file(), "{case} missing");
    }
}

#[test]
fn onnx_conv_node_tests_are_reproduced_exactly_through_the_private_path() {
    let Some(root) = data_root() else { return };
    let cpu = CpuBackend::new();
    let clouds: Vec<Box<dyn CloudBackend>> =
        std::iter::once(Box::new(cpu) as Box<dyn CloudBackend>).chain(gpu()).collect();
    for cloud in &clouds {
        for case in CASES {
            let n = run_case(&root.join(case), cloud.as_ref());
            println!("{case}: {n} outputs equal on {}", cloud.name());
        }
    }
}

/// Client-side operators (pooling with padding and ceil mode, global average pooling,
/// Flatten) reproduce ONNX's own expected outputs when imported as one-node graphs.
#[test]
fn onnx_pooling_relu_and_flatten_node_tests_match_through_the_importer() {
    let Some(root) = data_root() else { return };
    let cases = [
        "test_maxpool_2d_default",
        "test_maxpool_2d_ceil",
        "test_maxpool_2d_pads",
        "test_maxpool_2d_precomputed_pads",
        "test_maxpool_2d_precomputed_strides",
        "test_maxpool_2d_strides",
        "test_averagepool_2d_default",
        "test_averagepool_2d_ceil",
        "test_averagepool_2d_pads",
        "test_averagepool_2d_pads_count_include_pad",
        "test_averagepool_2d_precomputed_pads",
        "test_averagepool_2d_precomputed_pads_count_include_pad",
        "test_averagepool_2d_precomputed_strides",
        "test_averagepool_2d_strides",
        "test_globalaveragepool",
        "test_globalaveragepool_precomputed",
        "test_flatten_default_axis",
        "test_flatten_axis1",
    ];
    for case in cases {
        let dir = root.join(case);
        let proto = read_model(dir.join("model.onnx")).expect("model parses");
        let model = vericonv_model::onnx::import::import_proto(&proto, case).unwrap_or_else(|e| panic!("{case}: {e}"));
        let x = read_tensor(dir.join("test_data_set_0/input_0.pb")).expect("input");
        let TensorData::Float(xv) = x.data else { panic!("{case}: float input expected") };
        let want = read_tensor(dir.join("test_data_set_0/output_0.pb")).expect("output");
        let TensorData::Float(wv) = want.data else { panic!("{case}: float output expected") };
        let got = model.forward_float(&xv).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(got.len(), wv.len(), "{case}");
        for (i, (g, w)) in got.iter().zip(&wv).enumerate() {
            assert!((g - w).abs() <= 1e-5 * w.abs().max(1.0), "{case}[{i}]: got {g}, ONNX expects {w}");
        }
        println!("{case}: {} outputs match", got.len());
    }
}

#[test]
fn unsupported_onnx_operators_are_named() {
    let Some(root) = data_root() else { return };
    for (case, op) in
        [("test_lrn", "LRN"), ("test_globalmaxpool", "GlobalMaxPool"), ("test_maxpool_2d_dilations", "dilated")]
    {
        let proto = read_model(root.join(case).join("model.onnx")).expect("model parses");
        let err = vericonv_model::onnx::import::import_proto(&proto, case).expect_err("unsupported");
        assert!(matches!(err, ModelError::Unsupported(ref m) if m.contains(op)), "{case}: {err}");
    }
}
