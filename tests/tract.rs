//! Any ONNX model on tract with its convolutions private (`vericonv_model::TractModel`): private
//! logits bit-identical to the quantized plaintext model in every mode, float logits equal to
//! the native model's, and a lying cloud caught through tract's graph.

use std::sync::Arc;
use vericonv_model::ModelError;

use vericonv::Error;
use vericonv::Privacy;
use vericonv::seeded_rng;
use vericonv::{CloudBackend, CpuBackend, Tamper, TamperingBackend};
use vericonv_model::Dataset;
use vericonv_model::QuantConfig;
use vericonv_model::{ConvExecutor, LayerKind, PrivateConvs, Reference, TractModel};
use vericonv_model::{Model, PrivateConfig, argmax};

/// The committed MNIST model `name` as an ONNX file in `dir`, and the 16 demo images normalized
/// as the native model normalizes them.
fn committed_onnx(dir: &std::path::Path, name: &str) -> (Model, std::path::PathBuf, Vec<f32>, Vec<usize>) {
    let root = common::repo_root();
    let model = Model::load(root.join(format!("models/{name}.json"))).expect("model");
    let path = dir.join(format!("{name}.onnx"));
    let proto = vericonv_model::onnx::import::export_model(&model);
    std::fs::write(&path, prost::Message::encode_to_vec(&proto)).expect("write");
    let data = Dataset::from_idx(
        "demo",
        &root.join("models/demo/mnist-t10k-16-images.idx"),
        &root.join("models/demo/mnist-t10k-16-labels.idx"),
    )
    .expect("demo images");
    let spec = model.input();
    let per = spec.height * spec.width;
    let at = |v: &[f32], c: usize| if v.len() == 1 { v[0] } else { v[c] };
    let x = data
        .images()
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = (i / per) % spec.channels;
            (v - at(&spec.mean, c)) / at(&spec.std, c)
        })
        .collect();
    (model, path, x, data.labels().to_vec())
}

#[test]
fn lenet_through_tract_private_equals_quantized_in_every_mode() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (native, path, x, labels) = committed_onnx(dir.path(), "lenet5-mnist");
    let tm = TractModel::open(&path, None, &QuantConfig::default()).expect("tract loads the export");
    let names: Vec<&str> = tm.private_layers().map(|l| l.quant.name.as_str()).collect();
    assert_eq!(names.len(), 2, "both convolutions are private: {names:?}");
    assert!(tm.skipped().is_empty(), "{:?}", tm.skipped());
    // Float: tract against the native float pass (the same model, normalized inputs).
    let (float, shape) = tm.plan(None).expect("float plan").run(&x).expect("float");
    assert_eq!(shape, vec![16, 10]);
    let root = common::repo_root();
    let images = Dataset::from_idx(
        "demo",
        &root.join("models/demo/mnist-t10k-16-images.idx"),
        &root.join("models/demo/mnist-t10k-16-labels.idx"),
    )
    .expect("demo images");
    let own = native.forward_float(images.images()).expect("native float");
    let worst = float.iter().zip(&own).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0f32, f32::max);
    assert!(worst < 1e-4, "tract's float logits differ from the native model's by {worst}");
    // The quantized plaintext model, and the same graph private in every mode.
    let reference: Arc<dyn ConvExecutor> = Arc::new(Reference);
    let (quant, _) = tm.plan(Some(reference)).expect("plan").run(&x).expect("quantized");
    assert!(
        quant.iter().zip(&float).any(|(q, f)| q.to_bits() != f.to_bits()),
        "the quantized plan must differ from the float one (its convolutions are replaced)"
    );
    let worst = quant.iter().zip(&float).map(|(a, b)| (a - b).abs() / b.abs().max(1.0)).fold(0f32, f32::max);
    println!("LeNet-5 through tract: quantized against float logits, worst relative difference {worst:.4}");
    let correct = argmax(&quant, 10).iter().zip(&labels).filter(|(p, l)| p == l).count();
    assert!(correct >= 15, "quantized accuracy {correct}/16");
    for privacy in [Privacy::LowRank { rank: 2 }, Privacy::Pad, Privacy::TwoServer, Privacy::SplitModel] {
        let a: Arc<dyn CloudBackend> = Arc::new(CpuBackend::new());
        let b: Option<Arc<dyn CloudBackend>> =
            (privacy.clouds() == 2).then(|| Arc::new(CpuBackend::new()) as Arc<dyn CloudBackend>);
        let cfg = PrivateConfig { privacy, ..PrivateConfig::default() };
        let exec = Arc::new(PrivateConvs::new((a, b), cfg, seeded_rng(7)).expect("executor"));
        let plan = tm.plan(Some(exec.clone() as Arc<dyn ConvExecutor>)).expect("plan");
        // Two batches of different sizes through one plan: the batch stays free.
        let (first, _) = plan.run(&x[..5 * 784]).expect("private");
        let (rest, _) = plan.run(&x[5 * 784..]).expect("private");
        let private: Vec<f32> = first.into_iter().chain(rest).collect();
        assert!(
            private.iter().zip(&quant).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{}: private logits differ from the quantized model's",
            privacy.label()
        );
        let stats = exec.stats();
        assert_eq!(stats.len(), 2);
        assert!(stats.iter().all(|s| s.calls == 2 && s.verified == 2 && s.rejected == 0), "{stats:?}");
        if privacy.uses_pads() {
            assert!(stats.iter().all(|s| !s.offline.is_zero()), "pads were drawn and their time counted");
        }
    }
}

/// `--outsource-linear` on the tract path: LeNet-5's three `Gemm`s become private 1×1
/// convolutions (in the quantized reference too), private equals quantized in every mode, and
/// the predictions stay the float model's.
#[test]
fn linear_layers_go_to_the_clouds_when_outsourced() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (_, path, x, labels) = committed_onnx(dir.path(), "lenet5-mnist");
    let mut tm = TractModel::open(&path, None, &QuantConfig::default()).expect("tract loads the export");
    assert_eq!(tm.private_layers().count(), 2, "by default the linear layers stay on the client");
    let (convs_only, _) = tm.plan(Some(Arc::new(Reference))).expect("plan").run(&x).expect("quantized");
    tm.outsource_linear(true);
    let kinds: Vec<LayerKind> = tm.private_layers().map(|l| l.kind).collect();
    assert_eq!(kinds.iter().filter(|k| k.is_linear()).count(), 3, "{kinds:?}");
    assert!(tm.skipped().is_empty(), "{:?}", tm.skipped());
    let (float, _) = tm.plan(None).expect("float plan").run(&x).expect("float");
    let (quant, _) = tm.plan(Some(Arc::new(Reference))).expect("plan").run(&x).expect("quantized");
    assert!(quant.iter().zip(&convs_only).any(|(a, b)| a != b), "the linear layers are quantized now");
    let scale = float.iter().fold(0f32, |m, v| m.max(v.abs()));
    let drift = quant.iter().zip(&float).map(|(q, f)| (q - f).abs()).fold(0f32, f32::max) / scale;
    assert!(drift < 0.05, "quantized logits drift {drift} of the largest from the float ones");
    assert_eq!(argmax(&quant, 10), argmax(&float, 10), "quantized top-1 is the float top-1");
    assert!(argmax(&quant, 10).iter().zip(&labels).filter(|(p, l)| p == l).count() >= 15);
    for privacy in [Privacy::LowRank { rank: 2 }, Privacy::Pad, Privacy::TwoServer, Privacy::SplitModel] {
        let a: Arc<dyn CloudBackend> = Arc::new(CpuBackend::new());
        let b = (privacy.clouds() == 2).then(|| Arc::new(CpuBackend::new()) as Arc<dyn CloudBackend>);
        let cfg = PrivateConfig { privacy, outsource_linear: true, ..PrivateConfig::default() };
        let exec = Arc::new(PrivateConvs::new((a, b), cfg, seeded_rng(13)).expect("executor"));
        let (got, _) = tm.plan(Some(exec.clone() as Arc<dyn ConvExecutor>)).expect("plan").run(&x).expect("private");
        assert!(got.iter().zip(&quant).all(|(p, q)| p.to_bits() == q.to_bits()), "{}", privacy.label());
        let stats = exec.stats();
        assert_eq!(stats.len(), 5, "2 convolutions and 3 linear layers on the clouds");
        assert!(stats.iter().all(|s| s.verified == 1 && s.rejected == 0), "{stats:?}");
    }
    println!("LeNet-5 on tract with its linear layers outsourced: quantized drift {drift:.4}");
}

/// A residual network through tract: each block's `Add` and ReLU run inside the private
/// operator's re-scaling pass (as in the native pipeline), and the result is still the float
/// model's up to quantization, private bit-identical to quantized.
#[test]
fn residual_adds_and_relus_fuse_into_the_private_operators() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (_, path, x, labels) = committed_onnx(dir.path(), "resnet-mnist");
    let tm = TractModel::open(&path, None, &QuantConfig::default()).expect("tract loads the export");
    let (float, _) = tm.plan(None).expect("float plan").run(&x).expect("float");
    let plan = tm.plan(Some(Arc::new(Reference))).expect("plan");
    // Three residual blocks: three Adds, and a ReLU after the stem, each block's first
    // convolution and each block's Add.
    assert_eq!(plan.fused(), (3, 7), "residual Adds and ReLUs fused");
    let (quant, _) = plan.run(&x).expect("quantized");
    // The same values as with every node on its own, bit for bit.
    let unfused = tm.plan_unfused(Some(Arc::new(Reference))).expect("plan");
    assert_eq!(unfused.fused(), (0, 0));
    let (separate, _) = unfused.run(&x).expect("quantized, unfused");
    assert!(quant.iter().zip(&separate).all(|(a, b)| a.to_bits() == b.to_bits()), "fusion changed the logits");
    // 8-bit quantization of a net trained for two epochs moves the logits by a few percent
    // of the largest (the native pipeline: 4%), never more.
    let scale = float.iter().fold(0f32, |m, v| m.max(v.abs()));
    let drift = quant.iter().zip(&float).map(|(q, f)| (q - f).abs()).fold(0f32, f32::max) / scale;
    assert!(drift < 0.1, "quantized logits drift {drift} of the largest from the float ones");
    let correct = argmax(&quant, 10).iter().zip(&labels).filter(|(p, l)| p == l).count();
    assert!(correct >= 15, "quantized accuracy {correct}/16");
    for privacy in [Privacy::Pad, Privacy::TwoServer] {
        let a: Arc<dyn CloudBackend> = Arc::new(CpuBackend::new());
        let b = (privacy.clouds() == 2).then(|| Arc::new(CpuBackend::new()) as Arc<dyn CloudBackend>);
        let cfg = PrivateConfig { privacy, ..PrivateConfig::default() };
        let exec = Arc::new(PrivateConvs::new((a, b), cfg, seeded_rng(12)).expect("executor"));
        let private = tm.plan(Some(exec as Arc<dyn ConvExecutor>)).expect("plan");
        assert_eq!(private.fused(), (3, 7));
        let (got, _) = private.run(&x).expect("private");
        assert!(got.iter().zip(&quant).all(|(p, q)| p.to_bits() == q.to_bits()), "{}", privacy.label());
    }
    println!("resnet-mnist through tract: 3 Adds and 7 ReLUs fused; quantized drift {drift:.4}; {correct}/16 correct");
}

#[test]
fn a_lying_cloud_is_caught_through_the_tract_graph() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (_, path, x, _) = committed_onnx(dir.path(), "lenet5-mnist");
    let tm = TractModel::open(&path, None, &QuantConfig::default()).expect("loads");
    for strategy in [Tamper::AddOne, Tamper::OtherInput] {
        let liar: Arc<dyn CloudBackend> = Arc::new(TamperingBackend::new(CpuBackend::new(), &[strategy], 1.0, 3));
        let cfg = PrivateConfig { privacy: Privacy::Pad, ..PrivateConfig::default() };
        let exec = Arc::new(PrivateConvs::new((liar, None), cfg, seeded_rng(8)).expect("executor"));
        let plan = tm.plan(Some(exec.clone() as Arc<dyn ConvExecutor>)).expect("plan");
        let err = plan.run(&x).expect_err("a lie is caught");
        assert!(
            matches!(err, ModelError::Scheme(Error::VerificationFailed { .. } | Error::MalformedAnswer { .. })),
            "{strategy:?}: {err}"
        );
        assert_eq!(exec.stats()[0].rejected, 1);
    }
}

#[test]
fn models_tract_cannot_load_get_a_typed_error() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"\x08\x07not a model at all").expect("write");
    let err = TractModel::open(&junk, None, &QuantConfig::default()).expect_err("junk");
    assert!(matches!(err, ModelError::Parse { .. }), "{err}");
    let missing = TractModel::open(&dir.path().join("missing.onnx"), None, &QuantConfig::default());
    assert!(matches!(missing, Err(ModelError::Io { .. })), "{missing:?}");
    // A NaN among a convolution's weights: refused, naming the node.
    let root = common::repo_root();
    let model = Model::load(root.join("models/lenet5-mnist.json")).expect("model");
    let mut proto = vericonv_model::onnx::import::export_model(&model);
    let graph = proto.graph.as_mut().expect("graph");
    let w = graph.initializer.iter_mut().find(|t| t.dims.len() == 4).expect("a conv weight");
    if w.raw_data.is_empty() {
        w.float_data[0] = f32::NAN;
    } else {
        w.raw_data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    }
    let nan = dir.path().join("nan.onnx");
    std::fs::write(&nan, prost::Message::encode_to_vec(&proto)).expect("write");
    let err = TractModel::open(&nan, None, &QuantConfig::default()).expect_err("a NaN weight");
    assert!(matches!(&err, ModelError::Parse { what, .. } if what.contains("conv1")), "{err}");
}

fn f32s(path: &std::path::Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// The small models of `scripts/export-zoo.py` (ops the native importer refuses: a Pad before
/// AvgPool, SiLU, squeeze-excitation's Mul, depthwise and dilated convolutions with asymmetric
/// padding, hard-swish, 1-D convolutions, an LSTM head, dynamic height and width, transposed
/// convolutions in 1-D and 2-D with strides, padding, output padding, groups and dilation): each loads,
/// its float outputs are torch's, and private equals quantized in every mode on both inputs.
#[test]
fn torch_exports_load_and_run_privately_bit_for_bit() {
    let dir = common::repo_root().join("data/zoo");
    let names = ["lenet_avgpool", "silu_se", "conv1d", "cnn_lstm", "dynamic_hw", "transposed", "transposed1d"];
    if !dir.join("lenet_avgpool.onnx").is_file() {
        common::skip_unless_required(
            "VERICONV_REQUIRE_DATA",
            &format!("{} is missing: run /usr/bin/python3 scripts/export-zoo.py", dir.display()),
        );
        return;
    }
    for name in names {
        let path = dir.join(format!("{name}.onnx"));
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path.with_extension("json")).expect("shape file")).expect("json");
        let shape: Vec<usize> =
            meta["input"].as_array().expect("input").iter().map(|v| v.as_u64().expect("dim") as usize).collect();
        // A model with dynamic spatial dimensions needs them given; the others carry their own.
        let given = meta["dynamic_hw"].as_bool().unwrap_or(false).then_some(shape.as_slice());
        let tm = TractModel::open(&path, given, &QuantConfig::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let private = tm.private_layers().count();
        assert!(
            private > 0 && tm.skipped().is_empty(),
            "{name}: every convolution private ({:?} skipped)",
            tm.skipped()
        );
        let x = f32s(&path.with_extension("input.f32"));
        let torch = f32s(&path.with_extension("logits.f32"));
        let (float, out_shape) = tm.plan(None).expect("float plan").run(&x).expect("float");
        let classes = out_shape[1..].iter().product::<usize>();
        let scale = torch.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
        let worst = float.iter().zip(&torch).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert_eq!(float.len(), torch.len(), "{name}: output size");
        assert!(worst <= 1e-4 * scale, "{name}: float outputs differ from torch's by {worst} (scale {scale})");
        let (quant, _) = tm.plan(Some(Arc::new(Reference))).expect("plan").run(&x).expect("quantized");
        let (separate, _) = tm.plan_unfused(Some(Arc::new(Reference))).expect("plan").run(&x).expect("unfused");
        assert!(quant.iter().zip(&separate).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}: fusion changed outputs");
        // 8-bit quantization moves the outputs a little, never far: a private layer that computed
        // another function (a wrong kernel flip, a wrong padding) would.
        let drift = quant.iter().zip(&float).map(|(q, f)| (q - f).abs()).fold(0f32, f32::max) / scale;
        assert!(drift < 0.01, "{name}: quantized outputs drift {drift} of the largest from the float ones");
        // Top-1 of the quantized model equals the float one unless the float top two are a near tie.
        for (b, (q, f)) in quant.chunks(classes).zip(float.chunks(classes)).enumerate() {
            let mut sorted = f.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let tie = sorted.len() > 1 && sorted[0] - sorted[1] < 0.05 * sorted[0].abs().max(1.0);
            if !tie {
                assert_eq!(argmax(q, classes), argmax(f, classes), "{name}: image {b}: quantized top-1");
            }
        }
        for privacy in [Privacy::LowRank { rank: 2 }, Privacy::Pad, Privacy::TwoServer, Privacy::SplitModel] {
            let a: Arc<dyn CloudBackend> = Arc::new(CpuBackend::new());
            let b = (privacy.clouds() == 2).then(|| Arc::new(CpuBackend::new()) as Arc<dyn CloudBackend>);
            let cfg = PrivateConfig { privacy, ..PrivateConfig::default() };
            let exec = Arc::new(PrivateConvs::new((a, b), cfg, seeded_rng(9)).expect("executor"));
            let (got, _) =
                tm.plan(Some(exec.clone() as Arc<dyn ConvExecutor>)).expect("plan").run(&x).expect("private");
            assert!(
                got.iter().zip(&quant).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{name}, {}: private outputs differ from the quantized model's",
                privacy.label()
            );
            assert!(exec.stats().iter().all(|s| s.verified == 1 && s.rejected == 0));
        }
        println!(
            "{name}: {private} private of {} nodes ({:?}); float within {worst:.1e} of torch (scale {scale:.1e}); quantized drift {drift:.3}; skipped {:?}",
            tm.node_count(),
            tm.private_layers().map(|l| l.quant.name.as_str()).collect::<Vec<_>>(),
            tm.skipped()
        );
    }
}

/// torchvision's classification models (`scripts/export-zoo.py --large`, not exported by CI:
/// too slow for it), when present: each loads, its float logits are torch's, both inputs run
/// privately in every mode (CPU clouds) bit-identical to the quantized model, and the quantized
/// top-1 is the float one unless the float top two are a near tie. Prints the coverage table
/// of docs/models.md.
#[test]
fn torchvision_zoo_coverage() {
    let dir = common::repo_root().join("data/zoo");
    let names = [
        "resnet18",
        "resnet50",
        "vgg16",
        "alexnet",
        "squeezenet1_1",
        "googlenet",
        "densenet121",
        "mobilenet_v2",
        "mobilenet_v3_small",
        "shufflenet_v2_x0_5",
        "efficientnet_b0",
        "mnasnet0_5",
        "regnet_x_400mf",
    ];
    let present: Vec<&str> = names.iter().copied().filter(|n| dir.join(format!("{n}.onnx")).is_file()).collect();
    if present.is_empty() {
        println!("skipped: no torchvision export in {} (run scripts/export-zoo.py --large)", dir.display());
        return;
    }
    println!(
        "model                private/convs  nodes  max|float-torch|/max|torch|  private==quantized (4 modes, 2 inputs)  top-1 q==f"
    );
    for name in present {
        let path = dir.join(format!("{name}.onnx"));
        let tm = TractModel::open(&path, None, &QuantConfig::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (private, convs) = (tm.private_layers().count(), tm.private_layers().count() + tm.skipped().len());
        let x = f32s(&path.with_extension("input.f32"));
        let torch = f32s(&path.with_extension("logits.f32"));
        let (float, shape) = tm.plan(None).expect("float plan").run(&x).expect("float");
        assert_eq!(shape[0], 2, "{name}: two inputs");
        let classes = torch.len() / 2;
        let scale = torch.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
        let worst = float.iter().zip(&torch).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale;
        let (quant, _) = tm.plan(Some(Arc::new(Reference))).expect("plan").run(&x).expect("quantized");
        for privacy in [Privacy::LowRank { rank: 2 }, Privacy::Pad, Privacy::TwoServer, Privacy::SplitModel] {
            let a: Arc<dyn CloudBackend> = Arc::new(CpuBackend::new());
            let b = (privacy.clouds() == 2).then(|| Arc::new(CpuBackend::new()) as Arc<dyn CloudBackend>);
            let cfg = PrivateConfig { privacy, ..PrivateConfig::default() };
            let exec = Arc::new(PrivateConvs::new((a, b), cfg, seeded_rng(10)).expect("executor"));
            let (got, _) = tm.plan(Some(exec as Arc<dyn ConvExecutor>)).expect("plan").run(&x).expect("private");
            let exact = got.iter().zip(&quant).all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(exact, "{name}, {}: private differs from quantized", privacy.label());
        }
        // Top-1 of the quantized model equals the float one on each input whose float top two
        // are not a near tie (random weights make near ties common).
        let mut ties = 0;
        for (q, f) in quant.chunks(classes).zip(float.chunks(classes)) {
            let mut sorted = f.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            if sorted[0] - sorted[1] < 0.05 * sorted[0].abs().max(1e-3) {
                ties += 1;
            } else {
                assert_eq!(argmax(q, classes), argmax(f, classes), "{name}: quantized top-1");
            }
        }
        println!(
            "{name:<20} {private:>7}/{convs:<6} {:>5}  {worst:>27.1e}  {:>38}  {:>10}",
            tm.node_count(),
            "yes",
            if ties == 0 { "yes".to_string() } else { format!("yes ({ties} near tie)") }
        );
        assert!(worst <= 1e-4, "{name}: float logits differ from torch's by {worst} of the largest");
        assert_eq!(private, convs, "{name}: convolutions left on the client: {:?}", tm.skipped());
    }
}

/// The GPU cloud (lavapipe here) runs every kind of private layer of the tract path, 1-D,
/// transposed and outsourced linear layers included: private == quantized bit for bit.
#[cfg(feature = "gpu")]
#[test]
fn the_gpu_cloud_runs_tract_graphs_bit_for_bit() {
    use vericonv_gpu::GpuOptions;
    let dir = common::repo_root().join("data/zoo");
    if !dir.join("conv1d.onnx").is_file() {
        common::skip_unless_required("VERICONV_REQUIRE_DATA", "data/zoo is missing: run scripts/export-zoo.py");
        return;
    }
    let Some(gpu) = common::gpu_or_skip(&GpuOptions::default()) else { return };
    let gpu: Arc<dyn CloudBackend> = Arc::new(gpu);
    let tmp = tempfile::tempdir().expect("temporary directory");
    let (_, lenet, lenet_x, _) = committed_onnx(tmp.path(), "lenet5-mnist");
    for name in ["conv1d", "silu_se", "transposed1d", "lenet5-mnist"] {
        let (path, x) = match name {
            "lenet5-mnist" => (lenet.clone(), lenet_x.clone()),
            _ => (dir.join(format!("{name}.onnx")), f32s(&dir.join(format!("{name}.input.f32")))),
        };
        let mut tm = TractModel::open(&path, None, &QuantConfig::default()).expect("loads");
        // LeNet-5 with its linear layers outsourced: 1×1 convolutions on the GPU too.
        tm.outsource_linear(true);
        let (quant, _) = tm.plan(Some(Arc::new(Reference))).expect("plan").run(&x).expect("quantized");
        let cfg = PrivateConfig { privacy: Privacy::Pad, ..PrivateConfig::default() };
        let exec = Arc::new(PrivateConvs::new((gpu.clone(), None), cfg, seeded_rng(11)).expect("executor"));
        let (got, _) = tm.plan(Some(exec as Arc<dyn ConvExecutor>)).expect("plan").run(&x).expect("private on the GPU");
        assert!(got.iter().zip(&quant).all(|(p, q)| p.to_bits() == q.to_bits()), "{name}: GPU private != quantized");
    }
}

/// Mutated ONNX files of the small exports: tract refuses them or loads them, never a panic
/// (seeded; the seed is printed).
#[test]
fn mutated_models_get_a_typed_error_or_load() {
    use rand::RngExt;
    let dir = common::repo_root().join("data/zoo");
    if !dir.join("conv1d.onnx").is_file() {
        common::skip_unless_required("VERICONV_REQUIRE_DATA", "data/zoo is missing: run scripts/export-zoo.py");
        return;
    }
    let tmp = tempfile::tempdir().expect("temporary directory");
    let mut rng = common::rng(0x7AC7);
    let (mut loaded, mut refused) = (0, 0);
    for name in ["conv1d", "lenet_avgpool", "silu_se"] {
        let original = std::fs::read(dir.join(format!("{name}.onnx"))).expect("model");
        for _ in 0..40 {
            let mut bytes = original.clone();
            match rng.random_range(0..3) {
                0 => bytes.truncate(rng.random_range(0..bytes.len())),
                1 => {
                    for _ in 0..rng.random_range(1..16) {
                        let i = rng.random_range(0..bytes.len());
                        bytes[i] = rng.random();
                    }
                }
                _ => {
                    let i = rng.random_range(0..bytes.len());
                    let n = rng.random_range(1..64).min(bytes.len() - i);
                    bytes.drain(i..i + n);
                }
            }
            let path = tmp.path().join("mutated.onnx");
            std::fs::write(&path, &bytes).expect("write");
            match TractModel::open(&path, None, &QuantConfig::default()) {
                Ok(_) => loaded += 1,
                Err(_) => refused += 1,
            }
        }
    }
    println!("120 mutated models: {loaded} loaded, {refused} refused with a typed error");
}
