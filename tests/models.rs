//! Whole CNNs: private inference equals the quantized plaintext model bit for bit on every
//! committed model, on the CPU backend (hundreds of images, and fifty in modes `two-server`
//! and `pad`) and the GPU backend (a handful, in every mode);
//! the models survive an ONNX round trip; a hand-built ONNX graph imports with the right
//! semantics; bad models and inputs get typed errors.

use common::{committed_models, data_dir_or_skip};
use prost::Message;
use vericonv::Error;
use vericonv::Privacy;
use vericonv::seeded_rng;
use vericonv::{Clouds, CpuBackend};
use vericonv_cli::eval::{EvalOptions, evaluate};
use vericonv_model::Dataset;
use vericonv_model::Model;
use vericonv_model::ModelError;
use vericonv_model::PrivateConfig;
use vericonv_model::onnx::import::{export_model, import_proto};
use vericonv_model::{PlainExecutor, QuantConfig, QuantModel};

fn check_private_run(
    path: &std::path::Path,
    dataset: &str,
    images: usize,
    clouds: Clouds<'_>,
    privacy: Privacy,
    seed: u64,
) {
    let Some(data_dir) = data_dir_or_skip() else { return };
    let model = Model::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let i = &model.input();
    let mut data = Dataset::open(dataset, &data_dir, false, i.channels, i.height, i.width).expect("data set");
    data.truncate(images);
    let qm = QuantModel::new(&model, QuantConfig::default()).expect("quantizes");
    println!("{} on {dataset}, {images} images, {privacy:?}, cloud {}: seed {seed:#x}", model.name(), clouds.name());
    let private = PrivateConfig { privacy, ..PrivateConfig::default() };
    let report =
        evaluate(&qm, &data, clouds, &EvalOptions { batch: 25, private }, seeded_rng(seed), |_| {}).expect("evaluates");
    println!(
        "  float {:.4}, quantized {:.4}, private {:.4}",
        report.float_accuracy, report.quantized_accuracy, report.private_accuracy
    );
    assert_eq!(report.private_answered, data.len(), "every batch verified");
    assert_eq!(report.private_rejected, 0);
    assert_eq!(
        report.logits_bit_identical,
        data.len(),
        "{}: private logits are bit-identical to the quantized model",
        model.name()
    );
    assert_eq!(report.prediction_agreement, data.len());
    assert_eq!(report.private_accuracy, report.quantized_accuracy);
    assert!(report.layers.iter().any(|l| l.outsourced && l.verified > 0), "convolutions really went to the cloud");
}

#[test]
fn private_inference_equals_quantized_plaintext_on_every_committed_model_on_cpu() {
    let models = committed_models();
    assert!(models.len() >= 4, "models/ holds the trained and converted models");
    for (idx, (path, dataset)) in models.iter().enumerate() {
        check_private_run(
            path,
            dataset,
            300,
            Clouds::One(&CpuBackend::new()),
            Privacy::LowRank { rank: 2 },
            0x30de1 + idx as u64,
        );
    }
}

#[test]
fn private_inference_in_modes_two_server_and_pad_equals_quantized_plaintext_on_every_committed_model() {
    let (a, b) = (CpuBackend::new(), CpuBackend::with_threads(1).expect("pool"));
    for (idx, (path, dataset)) in committed_models().iter().enumerate() {
        check_private_run(path, dataset, 50, Clouds::Two(&a, &b), Privacy::TwoServer, 0x2de1 + idx as u64);
        check_private_run(path, dataset, 50, Clouds::One(&a), Privacy::Pad, 0x9de1 + idx as u64);
        check_private_run(path, dataset, 50, Clouds::Two(&a, &b), Privacy::SplitModel, 0x5de1 + idx as u64);
    }
}

#[cfg(feature = "gpu")]
#[test]
fn private_inference_equals_quantized_plaintext_on_every_committed_model_on_gpu() {
    let Some(gpu) = common::gpu_or_skip(&vericonv_gpu::GpuOptions::default()) else { return };
    for (idx, (path, dataset)) in committed_models().iter().enumerate() {
        check_private_run(path, dataset, 6, Clouds::One(&gpu), Privacy::LowRank { rank: 2 }, 0x69de1 + idx as u64);
        let cpu = CpuBackend::new();
        check_private_run(path, dataset, 3, Clouds::Two(&gpu, &cpu), Privacy::TwoServer, 0x69de2 + idx as u64);
        check_private_run(path, dataset, 3, Clouds::One(&gpu), Privacy::Pad, 0x69de3 + idx as u64);
        check_private_run(path, dataset, 3, Clouds::Two(&gpu, &cpu), Privacy::SplitModel, 0x69de4 + idx as u64);
    }
}

#[test]
fn every_committed_model_round_trips_through_onnx_with_identical_logits() {
    let Some(data_dir) = data_dir_or_skip() else { return };
    for (path, dataset) in committed_models() {
        let model = Model::load(&path).expect("loads");
        let bytes = export_model(&model).encode_to_vec();
        let proto = vericonv_model::onnx::proto::ModelProto::decode(bytes.as_slice()).expect("decodes");
        let back = import_proto(&proto, model.name()).unwrap_or_else(|e| panic!("{}: {e}", model.name()));
        let i = &model.input();
        let mut data = Dataset::open(&dataset, &data_dir, false, i.channels, i.height, i.width).expect("data");
        data.truncate(20);
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        assert_eq!(
            bits(back.forward_float(data.images()).expect("float")),
            bits(model.forward_float(data.images()).expect("float")),
            "{}",
            model.name()
        );
        let (q1, q2) = (
            QuantModel::new(&model, QuantConfig::default()).expect("q"),
            QuantModel::new(&back, QuantConfig::default()).expect("q"),
        );
        assert_eq!(
            bits(q2.forward(data.images(), &mut PlainExecutor).expect("q").0),
            bits(q1.forward(data.images(), &mut PlainExecutor).expect("q").0)
        );
        println!("{}: {} bytes of ONNX, identical logits", model.name(), bytes.len());
    }
}

/// A hand-built ONNX graph exercising Conv + BatchNormalization, AveragePool with padding and
/// ceil mode, Constant + Reshape, MatMul + Add, Identity and Gemm (alpha, beta, untransposed B),
/// checked against a direct computation.
#[test]
fn hand_built_onnx_graph_imports_with_onnx_semantics() {
    use vericonv_model::onnx::proto::*;
    let t = |name: &str, dims: &[i64], v: Vec<f32>| TensorProto {
        dims: dims.to_vec(),
        data_type: 1,
        float_data: v,
        name: name.into(),
        ..Default::default()
    };
    let ints =
        |name: &str, v: &[i64]| AttributeProto { name: name.into(), ints: v.to_vec(), r#type: 7, ..Default::default() };
    let int = |name: &str, v: i64| AttributeProto { name: name.into(), i: v, r#type: 2, ..Default::default() };
    let float = |name: &str, v: f32| AttributeProto { name: name.into(), f: v, r#type: 1, ..Default::default() };
    let node = |op: &str, inputs: &[&str], out: &str, attribute: Vec<AttributeProto>| NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![out.into()],
        name: out.into(),
        op_type: op.into(),
        attribute,
        domain: String::new(),
    };
    let seq = |n: usize, k: f32| (0..n).map(|i| ((i * 7 % 11) as f32 - 5.0) * k).collect::<Vec<f32>>();
    let (cw, cb) = (seq(18, 0.1), vec![0.5, -0.25]);
    let (g, be, mu, var) = (vec![1.5, 0.5], vec![0.1, -0.2], vec![0.3, -0.1], vec![2.0, 0.5]);
    let (mw, mb) = (seq(18 * 4, 0.05), vec![0.1, 0.2, 0.3, 0.4]);
    let (gw, gc) = (seq(4 * 3, 0.2), vec![1.0, -1.0, 0.5]);
    let shape = TensorProto {
        dims: vec![2],
        data_type: 7,
        int64_data: vec![1, -1],
        name: "shape".into(),
        ..Default::default()
    };
    let graph = GraphProto {
        node: vec![
            node("Conv", &["x", "cw", "cb"], "conv", vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1])]),
            node("BatchNormalization", &["conv", "g", "be", "mu", "var"], "bn", vec![float("epsilon", 1e-3)]),
            node("Relu", &["bn"], "relu", vec![]),
            node(
                "AveragePool",
                &["relu"],
                "pool",
                vec![
                    ints("kernel_shape", &[2, 2]),
                    ints("strides", &[2, 2]),
                    ints("pads", &[1, 1, 0, 0]),
                    int("ceil_mode", 1),
                ],
            ),
            NodeProto {
                attribute: vec![AttributeProto {
                    name: "value".into(),
                    t: Some(shape),
                    r#type: 4,
                    ..Default::default()
                }],
                ..node("Constant", &[], "target", vec![])
            },
            node("Reshape", &["pool", "target"], "flat", vec![]),
            node("MatMul", &["flat", "mw"], "mm", vec![]),
            node("Add", &["mm", "mb"], "fc1", vec![]),
            node("Identity", &["fc1"], "same", vec![]),
            node("Gemm", &["same", "gw", "gc"], "out", vec![float("alpha", 0.5), float("beta", 2.0)]),
        ],
        name: "hand".into(),
        initializer: vec![
            t("cw", &[2, 1, 3, 3], cw.clone()),
            t("cb", &[2], cb.clone()),
            t("g", &[2], g.clone()),
            t("be", &[2], be.clone()),
            t("mu", &[2], mu.clone()),
            t("var", &[2], var.clone()),
            t("mw", &[18, 4], mw.clone()),
            t("mb", &[4], mb.clone()),
            t("gw", &[4, 3], gw.clone()),
            t("gc", &[3], gc.clone()),
        ],
        input: vec![ValueInfoProto {
            name: "x".into(),
            r#type: Some(TypeProto {
                tensor_type: Some(TensorTypeProto {
                    elem_type: 1,
                    shape: Some(TensorShapeProto {
                        dim: [None, Some(1), Some(5), Some(5)]
                            .iter()
                            .map(|&v| Dimension { dim_value: v, dim_param: v.is_none().then(|| "N".into()) })
                            .collect(),
                    }),
                }),
            }),
        }],
        output: vec![ValueInfoProto { name: "out".into(), r#type: None }],
    };
    let model = import_proto(&ModelProto { graph: Some(graph), ..Default::default() }, "hand").expect("imports");
    assert_eq!(model.num_classes(), 3);
    let x: Vec<f32> = (0..25).map(|i| (i as f32 * 0.37).sin()).collect();
    let got = model.forward_float(&x).expect("runs");

    // The same network computed directly.
    let mut act = [0f32; 2 * 25];
    for o in 0..2 {
        for y in 0..5i32 {
            for xx in 0..5i32 {
                let mut acc = cb[o];
                for i in 0..3i32 {
                    for j in 0..3i32 {
                        let (r, c) = (y + i - 1, xx + j - 1);
                        if (0..5).contains(&r) && (0..5).contains(&c) {
                            acc += cw[o * 9 + (i * 3 + j) as usize] * x[(r * 5 + c) as usize];
                        }
                    }
                }
                let bn = (acc - mu[o]) / (var[o] + 1e-3).sqrt() * g[o] + be[o];
                act[o * 25 + (y * 5 + xx) as usize] = bn.max(0.0);
            }
        }
    }
    // AveragePool 2×2/2 with pads (1,1,0,0) and ceil mode on 5×5: 3×3 outputs; padding excluded.
    let mut pooled = Vec::new();
    for o in 0..2 {
        for py in 0..3i32 {
            for px in 0..3i32 {
                let (mut s, mut n) = (0.0, 0.0);
                for r in (py * 2 - 1)..(py * 2 + 1) {
                    for c in (px * 2 - 1)..(px * 2 + 1) {
                        if (0..5).contains(&r) && (0..5).contains(&c) {
                            s += act[o * 25 + (r * 5 + c) as usize];
                            n += 1.0;
                        }
                    }
                }
                pooled.push(s / n);
            }
        }
    }
    let fc1: Vec<f32> = (0..4).map(|k| mb[k] + (0..18).map(|i| pooled[i] * mw[i * 4 + k]).sum::<f32>()).collect();
    let want: Vec<f32> =
        (0..3).map(|k| 0.5 * (0..4).map(|i| fc1[i] * gw[i * 3 + k]).sum::<f32>() + 2.0 * gc[k]).collect();
    for (a, b) in got.iter().zip(&want) {
        assert!((a - b).abs() < 1e-4, "got {got:?}, want {want:?}");
    }
}

#[test]
fn corrupt_model_files_and_bad_inputs_get_typed_errors() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let dir = tmp.path();
    let src = common::repo_root().join("models/lenet5-mnist");
    let json = std::fs::read(src.with_extension("json")).expect("json");
    let weights = std::fs::read(src.with_extension("safetensors")).expect("weights");
    assert!(Model::from_bytes(&json, &weights).is_ok());
    // Truncated weights, truncated JSON, garbage.
    assert!(matches!(Model::from_bytes(&json, &weights[..weights.len() / 2]), Err(ModelError::Parse { .. })));
    assert!(matches!(Model::from_bytes(&json[..json.len() / 2], &weights), Err(ModelError::Parse { .. })));
    assert!(matches!(Model::from_bytes(b"{}", &weights), Err(ModelError::Parse { .. })));
    // An unknown operator, a missing weight, a layer that does not fit.
    let text = String::from_utf8(json.clone()).expect("utf8");
    let err = Model::from_bytes(text.replacen("\"relu\"", "\"gelu\"", 1).as_bytes(), &weights).expect_err("unknown op");
    assert!(err.to_string().contains("gelu"), "{err}");
    let err =
        Model::from_bytes(text.replacen("\"conv1\"", "\"convX\"", 1).as_bytes(), &weights).expect_err("missing weight");
    assert!(err.to_string().contains("convX"), "{err}");
    let err = Model::from_bytes(text.replacen("\"out_channels\": 16", "\"out_channels\": 17", 1).as_bytes(), &weights)
        .expect_err("weight size");
    assert!(err.to_string().contains("conv2"), "{err}");
    // Missing files.
    assert!(matches!(Model::load(dir.join("nope.json")), Err(ModelError::Io { .. })));
    // NaN and infinite inputs, wrong input sizes.
    let model = Model::from_bytes(&json, &weights).expect("model");
    let mut x = vec![0.5f32; 784];
    x[100] = f32::NAN;
    assert!(matches!(model.forward_float(&x), Err(ModelError::NonFinite { index: 100, .. })));
    x[100] = f32::INFINITY;
    let qm = QuantModel::new(&model, QuantConfig::default()).expect("q");
    assert!(matches!(qm.forward(&x, &mut PlainExecutor), Err(ModelError::NonFinite { .. })));
    assert!(matches!(model.forward_float(&[0.5; 700]), Err(ModelError::Scheme(Error::LengthMismatch { .. }))));
    // A data set whose images do not fit the model.
    let digits = Dataset::new("wrong", (1, 8, 8), vec![0.0; 64], vec![0]).expect("a consistent data set");
    let err = evaluate(&qm, &digits, (&CpuBackend::new()).into(), &EvalOptions::default(), seeded_rng(1), |_| {})
        .expect_err("shape mismatch");
    assert!(matches!(err.downcast_ref::<Error>(), Some(Error::LengthMismatch { .. })), "{err}");
    // 16-bit weights and activations break the exactness bound; the error names the layer.
    let err = QuantModel::new(&model, QuantConfig { weight_bits: 16, act_bits: 16 }).expect_err("bound");
    assert!(matches!(&err, ModelError::Scheme(Error::ExactnessBound { layer, .. }) if layer == "conv1"), "{err}");
    assert!(matches!(
        QuantModel::new(&model, QuantConfig { weight_bits: 1, act_bits: 8 }),
        Err(ModelError::Unsupported(_))
    ));
}

#[test]
fn f16_weights_load_and_give_nearly_the_same_logits() {
    let src = common::repo_root().join("models/lenet5-mnist");
    let json = std::fs::read(src.with_extension("json")).expect("json");
    let weights = std::fs::read(src.with_extension("safetensors")).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&weights).expect("safetensors");
    let halves: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let bytes = view
                .data()
                .chunks_exact(4)
                .flat_map(|c| half::f16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes())
                .collect();
            (name, view.shape().to_vec(), bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = halves
        .iter()
        .map(|(n, s, b)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F16, s.clone(), b).expect("view"))
        })
        .collect();
    let f16_bytes = safetensors::serialize(views, None).expect("serialize");
    let (m32, m16) =
        (Model::from_bytes(&json, &weights).expect("f32"), Model::from_bytes(&json, &f16_bytes).expect("f16"));
    let x: Vec<f32> = (0..2 * 784).map(|i| ((i * 31 % 97) as f32) / 97.0).collect();
    let (a, b) = (m32.forward_float(&x).expect("f32"), m16.forward_float(&x).expect("f16"));
    assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 0.05 * p.abs().max(1.0)), "{a:?} vs {b:?}");
    assert_eq!(vericonv_model::argmax(&a, 10), vericonv_model::argmax(&b, 10));
}

#[test]
fn resize_and_concat_follow_their_definitions_and_survive_onnx_and_privacy() {
    let empty =
        safetensors::serialize(Vec::<(String, safetensors::tensor::TensorView<'_>)>::new(), None).expect("empty");
    // 1×2×2 → nearest ×2 → stacked with itself → flattened.
    let json = r#"{"format": "vericonv-model/1", "name": "upcat", "input": {"channels": 1, "height": 2, "width": 2, "mean": [0.0], "std": [1.0]},
        "layers": [{"name": "up", "op": "resize", "scale": [2, 2]}, {"name": "cat", "op": "concat", "inputs": ["up", "up"]}, {"name": "flat", "op": "flatten"}]}"#;
    let model = Model::from_bytes(json.as_bytes(), &empty).expect("loads");
    let y = model.forward_float(&[1.0, 2.0, 3.0, 4.0]).expect("runs");
    let plane = [1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.];
    assert_eq!(y, [plane, plane].concat(), "output (y, x) reads input (y/2, x/2); channels stacked in order");
    // Through ONNX and back.
    let back = import_proto(&export_model(&model), "upcat").expect("re-imports");
    assert_eq!(back.forward_float(&[1.0, 2.0, 3.0, 4.0]).expect("runs"), y);
    // Convolutions around them, privately: equal to the quantized model bit for bit.
    let conv = |name: &str, input: &str, cin: usize| {
        (
            format!(
                r#"{{"name": "{name}", "inputs": ["{input}"], "op": "conv2d", "out_channels": 2, "kernel": [3, 3], "padding": [1, 1, 1, 1], "bias": false}}"#
            ),
            cin,
        )
    };
    let (c1, _) = conv("c1", "input", 1);
    let (c2, _) = conv("c2", "cat", 3);
    let json = format!(
        r#"{{"format": "vericonv-model/1", "name": "upcat2", "input": {{"channels": 1, "height": 4, "width": 4, "mean": [0.5], "std": [0.25]}},
        "layers": [{c1}, {{"name": "up", "op": "resize", "scale": [2, 2]}}, {{"name": "inup", "inputs": ["input"], "op": "resize", "scale": [2, 2]}},
        {{"name": "cat", "op": "concat", "inputs": ["up", "inup"]}}, {c2}, {{"name": "flat", "op": "flatten"}}]}}"#
    );
    let mut r = common::rng(41);
    println!("seed 41");
    let mut w = |n: usize| (0..n).map(|_| rand::RngExt::random_range(&mut r, -1.0f32..1.0)).collect::<Vec<f32>>();
    let (w1, w2) = (w(2 * 9), w(2 * 3 * 9));
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (b1, b2) = (bytes(&w1), bytes(&w2));
    let views = vec![
        (
            "c1.weight".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 1, 3, 3], &b1).expect("view"),
        ),
        (
            "c2.weight".to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 3, 3, 3], &b2).expect("view"),
        ),
    ];
    let weights = safetensors::serialize(views, None).expect("serialize");
    let model = Model::from_bytes(json.as_bytes(), &weights).expect("loads");
    let images: Vec<f32> = (0..3 * 16).map(|i| (i % 7) as f32 / 7.0).collect();
    let qm = QuantModel::new(&model, QuantConfig::default()).expect("quantized");
    let (plain, _) = qm.forward(&images, &mut PlainExecutor).expect("plaintext");
    let cpu = CpuBackend::new();
    let mut exec =
        vericonv_model::PrivateExecutor::new(&qm, &cpu, &PrivateConfig::default(), seeded_rng(2)).expect("executor");
    let (private, _) = qm.forward(&images, &mut exec).expect("private");
    assert!(private.iter().zip(&plain).all(|(a, b)| a.to_bits() == b.to_bits()));
    let back = import_proto(&export_model(&model), "upcat2").expect("re-imports");
    assert_eq!(back.forward_float(&images).expect("runs"), model.forward_float(&images).expect("runs"));
}

#[test]
fn every_committed_model_saves_to_the_native_format_and_loads_back_identical() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    for (path, _) in committed_models() {
        let model = Model::load(&path).expect("loads");
        let out = tmp.path().join("copy.json");
        model.clone().with_plain_layer_names().save(&out, None).expect("saves");
        let back = Model::load(&out).expect("loads back");
        let x: Vec<f32> = (0..2 * model.image_len()).map(|i| (i % 13) as f32 / 13.0).collect();
        assert_eq!(back.forward_float(&x).expect("runs"), model.forward_float(&x).expect("runs"), "{}", path.display());
        assert_eq!(back.input(), model.input());
    }
    // An ONNX import (BatchNorm folded, a residual add) saved natively.
    let resnet = Model::load(common::repo_root().join("models/resnet-mnist.json")).expect("resnet");
    let imported = import_proto(&export_model(&resnet), "resnet").expect("imports");
    let out = tmp.path().join("resnet.json");
    imported.save(&out, None).expect("saves");
    let x = vec![0.25; 2 * resnet.image_len()];
    assert_eq!(
        Model::load(&out).expect("loads").forward_float(&x).expect("runs"),
        resnet.forward_float(&x).expect("runs")
    );
}
