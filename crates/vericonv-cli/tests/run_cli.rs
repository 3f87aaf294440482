//! `vericonv run`: an ONNX model on tract, one input file (`.npy` or an image), its
//! convolutions private and verified; the logits it writes equal the quantized plaintext
//! model's bit for bit.

#![cfg(feature = "tract")]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use vericonv_model::Model;
use vericonv_model::QuantConfig;
use vericonv_model::{Reference, TractModel};

/// The repository root (the committed models live there).
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new("timeout").arg("300").arg(env!("CARGO_BIN_EXE_vericonv")).args(args).output().expect("runs")
}

#[test]
fn run_classifies_an_array_and_an_image_privately_and_writes_exact_logits() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let model = Model::load(repo().join("models/lenet5-mnist.json")).expect("model");
    let onnx = tmp.path().join("lenet5.onnx");
    let proto = vericonv_model::onnx::import::export_model(&model);
    std::fs::write(&onnx, prost::Message::encode_to_vec(&proto)).expect("write");
    // Two inputs, already normalized as the model expects.
    let images = std::fs::read(repo().join("models/demo/mnist-t10k-16-images.idx")).expect("images");
    let (mean, std) = (model.input().mean[0], model.input().std[0]);
    let x: Vec<f32> = images[16..16 + 2 * 784].iter().map(|&p| (f32::from(p) / 255.0 - mean) / std).collect();
    let npy = tmp.path().join("x.npy");
    vericonv_cli::run::write_npy(&npy, &x, &[2, 1, 28, 28]).expect("npy");
    let out = tmp.path().join("logits.npy");
    for privacy in ["pad", "two-server"] {
        let o = run(&[
            "run",
            "--model",
            &onnx.display().to_string(),
            "--input",
            &npy.display().to_string(),
            "--privacy",
            privacy,
            "--backend",
            "cpu",
            "--out",
            &out.display().to_string(),
        ]);
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
        assert!(stdout.contains("1 verified, 0 rejected"), "{stdout}");
        assert!(stdout.contains("input 1: top 5"), "{stdout}");
        let written = vericonv_cli::run::read_input(&out, &[10], &[], &[]).expect("the logits file");
        let tm = TractModel::open(&onnx, None, &QuantConfig::default()).expect("loads");
        let (quant, _) = tm.plan(Some(Arc::new(Reference))).expect("plan").run(&x).expect("quantized");
        assert!(
            written.iter().zip(&quant).all(|(a, b)| a.to_bits() == b.to_bits()) && written.len() == 20,
            "{privacy}: the written logits are the quantized model's"
        );
    }
    // The first demo image as a PNG, normalized by the command.
    let png = tmp.path().join("seven.png");
    image::GrayImage::from_raw(28, 28, images[16..16 + 784].to_vec()).expect("image").save(&png).expect("png");
    let o = run(&[
        "run",
        "--model",
        &onnx.display().to_string(),
        "--input",
        &png.display().to_string(),
        "--mean",
        &mean.to_string(),
        "--std",
        &std.to_string(),
        "--privacy",
        "pad",
        "--backend",
        "cpu",
        "--top",
        "1",
        "--out",
        &out.display().to_string(),
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}");
    let top = stdout.lines().skip_while(|l| !l.contains("input 0: top 1")).nth(1).expect("the top class");
    assert!(top.trim_start().starts_with('7'), "the demo's first image is a 7: {top}");
    // A file that is neither an array nor an image: a typed error.
    let junk = tmp.path().join("junk.npy");
    std::fs::write(&junk, b"not an array").expect("write");
    let o = run(&[
        "run",
        "--model",
        &onnx.display().to_string(),
        "--input",
        &junk.display().to_string(),
        "--backend",
        "cpu",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a .npy array"));
}

#[test]
fn eval_runs_a_model_the_native_importer_refuses_on_tract() {
    let model = repo().join("data/zoo/lenet_avgpool.onnx");
    if !model.is_file() {
        assert!(
            std::env::var("VERICONV_REQUIRE_DATA").as_deref() != Ok("1"),
            "{} is missing: run /usr/bin/python3 scripts/export-zoo.py",
            model.display()
        );
        println!("skipped: {} is missing", model.display());
        return;
    }
    let tmp = tempfile::tempdir().expect("temporary directory");
    // Three 28×28 images and their labels as IDX files.
    let mut images = vec![0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 28, 0, 0, 0, 28];
    images.extend((0..3 * 28 * 28).map(|i| (i * 7 % 256) as u8));
    std::fs::write(tmp.path().join("i.idx"), images).expect("write");
    std::fs::write(tmp.path().join("l.idx"), [0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3]).expect("write");
    let dataset = format!("idx:{},{}", tmp.path().join("i.idx").display(), tmp.path().join("l.idx").display());
    let report = tmp.path().join("r.json").display().to_string();
    for privacy in ["pad", "two-server"] {
        let args = ["eval", "--model", &model.display().to_string(), "--dataset", &dataset, "--backend", "cpu"];
        let o =
            run(&[&args[..], &["--privacy", privacy, "--mean", "0.5", "--std", "0.25", "--report", &report]].concat());
        let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "{privacy}: {stdout}\n{stderr}");
        assert!(stderr.contains("running it on tract"), "{stderr}");
        assert!(stdout.contains("3/3 logits bit-identical"), "{stdout}");
    }
    // A model with dynamic height and width, given its input shape, on a folder of PNG images.
    let dynamic = repo().join("data/zoo/dynamic_hw.onnx").display().to_string();
    for (i, class) in ["a", "b"].iter().enumerate() {
        let dir = tmp.path().join("folder").join(class);
        std::fs::create_dir_all(&dir).expect("folder");
        let pixels: Vec<u8> = (0..50 * 60 * 3).map(|p| ((p * 13 + i * 101) % 256) as u8).collect();
        image::RgbImage::from_raw(60, 50, pixels).expect("image").save(dir.join("x.png")).expect("png");
    }
    let folder = format!("folder:{}", tmp.path().join("folder").display());
    let args = ["eval", "--model", &dynamic, "--dataset", &folder, "--backend", "cpu", "--privacy", "pad"];
    let o = run(&[&args[..], &["--input-shape", "3,40,48", "--report", &report]].concat());
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("2/2 logits bit-identical"), "{stdout}");
    // An input shape no image can have is refused before tract plans anything.
    for shape in ["3,1099511627776,1099511627776", "3,0,48"] {
        let o = run(&[&args[..], &["--input-shape", shape, "--report", &report]].concat());
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{shape}: {stderr}");
        assert!(stderr.contains("each dimension must be at least 1"), "{shape}: {stderr}");
    }
}
