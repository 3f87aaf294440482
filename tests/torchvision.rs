//! The models users bring from PyTorch (`scripts/export-torchvision.py`: torchvision ResNet-18,
//! VGG-16 and MobileNetV2 with the default `torch.onnx.export` and a dynamic batch, and a
//! pretrained MNIST CNN whose forward is `x.view(x.size(0), -1)`): each imports, its float
//! logits match torch's own on the same inputs, and the private run equals the quantized
//! model bit for bit.

use std::path::PathBuf;

use vericonv::CpuBackend;
use vericonv::Privacy;
use vericonv::seeded_rng;
use vericonv_model::Dataset;
use vericonv_model::onnx::import::import_model;
use vericonv_model::{Model, PrivateConfig, PrivateExecutor, argmax};
use vericonv_model::{PlainExecutor, QuantConfig, QuantModel};

/// `data/torchvision/NAME.onnx`, or `None` (skipped, or failed under VERICONV_REQUIRE_DATA).
fn export(name: &str) -> Option<PathBuf> {
    let path = common::repo_root().join("data/torchvision").join(format!("{name}.onnx"));
    if path.is_file() {
        return Some(path);
    }
    common::skip_unless_required(
        "VERICONV_REQUIRE_DATA",
        &format!("{} is missing: run /usr/bin/python3 scripts/export-torchvision.py", path.display()),
    );
    None
}

fn f32s(path: PathBuf) -> Vec<f32> {
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Imports `name`, checks its float logits against torch's, and runs `images` of torch's
/// inputs privately in `privacy`, bit-identical to the quantized model.
fn check(name: &str, images: usize, privacy: Privacy) {
    let Some(path) = export(name) else { return };
    // The exports hold torch's own input layout: no normalisation (torch got the raw inputs).
    let model = import_model(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let x = f32s(path.with_extension("input.f32"));
    let torch = f32s(path.with_extension("logits.f32"));
    let ours = model.forward_float(&x).expect("float forward");
    let scale = torch.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
    let worst = ours.iter().zip(&torch).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    println!("{name}: float logits within {worst:.2e} of torch's (largest logit {scale:.2e})");
    assert!(worst <= 1e-3 * scale, "{name}: float logits differ from torch's by {worst} (scale {scale})");
    let classes = model.num_classes();
    assert_eq!(argmax(&ours, classes), argmax(&torch, classes), "{name}: same top-1 as torch");
    let qm = QuantModel::new(&model, QuantConfig::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let x = &x[..images * model.image_len()];
    let (plain, _) = qm.forward(x, &mut PlainExecutor).expect("quantized");
    let (cloud_a, cloud_b) = (CpuBackend::new(), CpuBackend::new());
    let clouds =
        if privacy.clouds() == 2 { vericonv::Clouds::Two(&cloud_a, &cloud_b) } else { vericonv::Clouds::One(&cloud_a) };
    let cfg = PrivateConfig { privacy, ..PrivateConfig::default() };
    let mut exec = PrivateExecutor::new(&qm, clouds, &cfg, seeded_rng(5)).expect("executor");
    let (private, _) = qm.forward(x, &mut exec).expect("private");
    assert!(
        private.iter().zip(&plain).all(|(a, b)| a.to_bits() == b.to_bits()),
        "{name}: private logits differ from the quantized model's"
    );
    let calls: u64 = exec.stats().map(|l| l.verified).sum();
    println!("{name}: {calls} private layer calls verified, logits bit-identical to the quantized model");
}

#[test]
fn torchvision_resnet18_imports_and_runs_privately() {
    check("resnet18", 2, Privacy::TwoServer);
    check("resnet18", 1, Privacy::SplitModel);
}

#[test]
fn torchvision_mobilenet_v2_imports_and_runs_privately() {
    // ReLU6 (Clip), depthwise convolutions, residual adds.
    check("mobilenet_v2", 2, Privacy::TwoServer);
    check("mobilenet_v2", 1, Privacy::SplitModel);
}

#[test]
fn torchvision_vgg16_imports_and_runs_privately() {
    check("vgg16", 1, Privacy::Pad);
    check("vgg16", 1, Privacy::SplitModel);
}

#[test]
fn a_pretrained_mnist_model_with_a_dynamic_view_imports_and_keeps_its_accuracy() {
    let Some(path) = export("ccexam-mnist") else { return };
    let Some(data_dir) = common::data_dir_or_skip() else { return };
    check("ccexam-mnist", 2, Privacy::Pad);
    check("ccexam-mnist", 2, Privacy::SplitModel);
    // PyTorch records no normalisation; ccexam trained with mean 0.1307, std 0.3081.
    let model = import_model(&path).expect("import").with_normalization(vec![0.1307], vec![0.3081]).expect("norm");
    let native = Model::load(common::repo_root().join("models/ccexam-mnist.json")).expect("the committed conversion");
    let mut data = Dataset::open("mnist", &data_dir, false, 1, 28, 28).expect("mnist");
    data.truncate(1000);
    let (ours, theirs) =
        (model.forward_float(data.images()).expect("onnx"), native.forward_float(data.images()).expect("native"));
    let (p, q) = (argmax(&ours, 10), argmax(&theirs, 10));
    let correct = p.iter().zip(data.labels()).filter(|(a, b)| a == b).count();
    println!(
        "ccexam-mnist through ONNX: {correct}/1000 correct; same predictions as the native conversion: {}",
        p == q
    );
    assert_eq!(p, q, "the ONNX export predicts as the committed native conversion does");
    assert!(correct >= 980, "{correct}/1000");
}
