//! The `vericonv` binary on hostile files and values, as a user would run it: every run must
//! end with an `error:` line and an exit status from 1 to 127 (a panic exits 101 with a
//! "panicked" message, an abort or a signal 128 or more), within bounded memory and time.
//!
//! Each run is limited to 1 GiB of address space (`ulimit -v`) and 120 s (`timeout`): an
//! allocation that the input controls then aborts, and fails the test, instead of passing
//! unnoticed on a machine with memory to spare. The files are built from the committed
//! LeNet-5 model, edited the way an attacker would.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use prost::Message;
use vericonv_model::Model;
use vericonv_model::onnx::import::export_model;
use vericonv_model::onnx::proto::{NodeProto, TensorProto};

/// The address space one run may use, in KiB.
const MEMORY_KIB: u64 = 1 << 20;

/// Runs `vericonv args…` in `dir` under the memory and time limits.
fn vericonv(dir: &Path, args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {MEMORY_KIB}; exec timeout 120 \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_vericonv"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("sh runs")
}

/// Asserts that the run was refused cleanly, and that the message mentions `what`.
fn refused(out: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code();
    assert!(
        matches!(code, Some(1..=123 | 125..=127)),
        "exit status {:?} (124: timed out; none or >= 128: killed or aborted)\n{stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "a panic:\n{stderr}");
    let line =
        stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no `error:` line:\n{stderr}"));
    assert!(stderr.contains(what), "the error should mention {what:?}: {line}");
}

/// A copy of the committed LeNet-5 (JSON and weights) in `dir`, its JSON edited by `edit`.
fn lenet(dir: &Path, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    let src = common::repo().join("models/lenet5-mnist");
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.with_extension("json")).expect("model")).expect("json");
    edit(&mut doc);
    let json = dir.join("hostile.json");
    std::fs::write(&json, serde_json::to_vec(&doc).expect("json")).expect("write");
    std::fs::copy(src.with_extension("safetensors"), dir.join("hostile.safetensors")).expect("weights");
    json
}

/// The layer named `name` of a native model document.
fn layer<'a>(doc: &'a mut serde_json::Value, name: &str) -> &'a mut serde_json::Value {
    let layers = doc["layers"].as_array_mut().expect("layers");
    layers.iter_mut().find(|l| l["name"] == name).expect("layer")
}

fn eval(dir: &Path, model: &Path, dataset: &str) -> Output {
    vericonv(dir, &["eval", "--model", &model.display().to_string(), "--dataset", dataset, "--backend", "cpu"])
}

#[test]
fn a_channel_count_whose_shape_product_wraps_is_refused() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let model = lenet(tmp.path(), |d| d["input"]["channels"] = serde_json::json!(4_611_686_018_427_387_905u64));
    refused(&eval(tmp.path(), &model, &common::small_idx(tmp.path())), "error");
}

#[test]
fn a_linear_layer_whose_weight_count_overflows_is_refused() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let model =
        lenet(tmp.path(), |d| layer(d, "fc1")["out_features"] = serde_json::json!(9_223_372_036_854_775_809u64));
    refused(&eval(tmp.path(), &model, &common::small_idx(tmp.path())), "fc1");
}

#[test]
fn pooling_pads_of_100000_are_refused() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let model =
        lenet(tmp.path(), |d| layer(d, "pool1")["padding"] = serde_json::json!([100_000, 100_000, 100_000, 100_000]));
    refused(&eval(tmp.path(), &model, &common::small_idx(tmp.path())), "pool1");
}

#[test]
fn a_60000_by_60000_input_with_folder_data_is_refused_before_allocating() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let model = lenet(tmp.path(), |d| {
        d["input"]["height"] = serde_json::json!(60_000);
        d["input"]["width"] = serde_json::json!(60_000);
    });
    let class = tmp.path().join("folder/0");
    std::fs::create_dir_all(&class).expect("mkdir");
    image::GrayImage::from_pixel(4, 4, image::Luma([128])).save(class.join("x.png")).expect("png");
    let dataset = format!("folder:{}", tmp.path().join("folder").display());
    refused(&eval(tmp.path(), &model, &dataset), "error");
}

#[test]
fn a_gzip_bomb_stops_at_what_the_idx_header_announces() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    // 2 images of 28×28 announced, 2 GiB of zeros inside: twice the run's address space.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&[0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28]).expect("gzip");
    let zeros = vec![0u8; 1 << 24];
    for _ in 0..128 {
        enc.write_all(&zeros).expect("gzip");
    }
    std::fs::write(tmp.path().join("bomb.gz"), enc.finish().expect("gzip")).expect("write");
    std::fs::write(tmp.path().join("labels.idx"), [0, 0, 8, 1, 0, 0, 0, 2, 7, 2]).expect("write");
    let dataset = format!("idx:{},{}", tmp.path().join("bomb.gz").display(), tmp.path().join("labels.idx").display());
    // The header is read first: the error is about the 1568 bytes it announces, not memory.
    refused(&eval(tmp.path(), &common::repo().join("models/lenet5-mnist.json"), &dataset), "need 1568 bytes");
}

/// The committed LeNet-5 as ONNX, with `edit` applied to its graph, written to `dir`.
fn lenet_onnx(dir: &Path, edit: impl Fn(&mut vericonv_model::onnx::proto::GraphProto)) -> PathBuf {
    let model = Model::load(common::repo().join("models/lenet5-mnist.json")).expect("model");
    let mut proto = export_model(&model);
    edit(proto.graph.as_mut().expect("graph"));
    let path = dir.join("hostile.onnx");
    std::fs::write(&path, proto.encode_to_vec()).expect("write");
    path
}

#[test]
fn an_onnx_model_with_a_nan_weight_is_refused() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let model = lenet_onnx(tmp.path(), |g| {
        let w = g.initializer.iter_mut().find(|t| t.dims.len() == 4).expect("a conv weight");
        if w.raw_data.is_empty() {
            w.float_data[0] = f32::NAN;
        } else {
            w.raw_data[..4].copy_from_slice(&f32::NAN.to_le_bytes());
        }
    });
    refused(&eval(tmp.path(), &model, &common::small_idx(tmp.path())), "finite");
}

#[test]
fn an_onnx_batchnorm_with_a_negative_variance_is_refused() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let model = lenet_onnx(tmp.path(), |g| {
        // conv1 → BatchNormalization(var = -1) → the rest.
        let conv = g.node.iter().position(|n| n.op_type == "Conv").expect("a conv");
        let out = g.node[conv].output[0].clone();
        let channels = 6;
        let t = |name: &str, v: f32| TensorProto {
            name: name.into(),
            dims: vec![channels],
            data_type: 1,
            float_data: vec![v; channels as usize],
            ..TensorProto::default()
        };
        g.initializer.extend([t("bn.s", 1.0), t("bn.b", 0.0), t("bn.m", 0.0), t("bn.v", -1.0)]);
        for n in &mut g.node[conv + 1..] {
            n.input.iter_mut().filter(|i| **i == out).for_each(|i| *i = "bn.out".into());
        }
        g.node.insert(
            conv + 1,
            NodeProto {
                input: vec![out, "bn.s".into(), "bn.b".into(), "bn.m".into(), "bn.v".into()],
                output: vec!["bn.out".into()],
                name: "bn".into(),
                op_type: "BatchNormalization".into(),
                ..NodeProto::default()
            },
        );
    });
    refused(&eval(tmp.path(), &model, &common::small_idx(tmp.path())), "var");
}

#[test]
fn a_digits_csv_with_a_nan_label_is_refused() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let rows: Vec<String> = (0..400)
        .map(|r| {
            let label = if r == 390 { "nan".to_string() } else { (r % 10).to_string() };
            (0..64).map(|c| ((r + c) % 17).to_string()).chain([label]).collect::<Vec<_>>().join(",")
        })
        .collect();
    std::fs::create_dir_all(tmp.path().join("data/digits")).expect("mkdir");
    std::fs::write(tmp.path().join("data/digits/digits.csv.gz"), rows.join("\n")).expect("write");
    let out = vericonv(
        tmp.path(),
        &[
            "eval",
            "--model",
            &common::repo().join("models/lenet5-digits.json").display().to_string(),
            "--dataset",
            "digits",
        ],
    );
    refused(&out, "row 390");
}

#[test]
fn out_of_range_values_get_a_usage_error() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let model = common::repo().join("models/lenet5-mnist.json").display().to_string();
    let cases: &[&[&str]] = &[
        &["demo", "--tamper-rate", "nan"],
        &["demo", "--tamper-rate", "1.5"],
        &["demo", "--rank", "4611686018427387904"],
        &["demo", "--rounds", "0"],
        &["eval", "--model", &model, "--dataset", "mnist", "--batch", "0"],
        &["eval", "--model", &model, "--dataset", "mnist", "--limit", "0"],
        &["eval", "--model", &model, "--dataset", "mnist", "--weight-bits", "99"],
        &["bench", "--reps", "0"],
        &["bench", "--threads", "100000"],
        &["bench", "--batches", "0"],
        &["attack", "--model", &model, "--dataset", "mnist", "--limit", "0"],
    ];
    for args in cases {
        let out = vericonv(tmp.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?} is a usage error");
        refused(&out, "invalid value");
    }
}

#[test]
fn a_model_named_to_escape_the_reports_folder_writes_inside_it() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let run = tmp.path().join("a/b");
    std::fs::create_dir_all(&run).expect("mkdir");
    let model = lenet(&run, |d| d["name"] = serde_json::json!("../../x"));
    let out = eval(&run, &model, &common::small_idx(&run));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reports: Vec<_> = std::fs::read_dir(run.join("reports")).expect("reports/").collect();
    assert_eq!(reports.len(), 1, "one report, inside reports/");
    let escaped = |dir: &Path| std::fs::read_dir(dir).expect("dir").flatten().any(|e| e.file_name() != "a");
    assert!(!escaped(tmp.path()), "nothing written above the working directory");
}
