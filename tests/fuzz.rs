//! Fuzzing every parser that reads what a user hands us: the ONNX importer, the tract path's
//! loader (`TractModel::open` and planning), the native model loader, and the IDX, CIFAR and
//! digits-CSV loaders.
//!
//! Random bytes never get past the first length check, so the inputs here are the committed
//! models and well-formed data files, mutated a few places at a time (an attribute set to
//! 2^62 + 1, a dimension to 0, an operator renamed, a tensor truncated, a label made NaN...).
//! Most of a mutated model is still valid, so the mutations reach the graph builder, the
//! BatchNorm folding and, when the model still loads, a forward pass. Every case must return
//! `Ok` or a typed error; a panic fails the test and proptest reports the case.
//!
//! The budget is fixed: `VERICONV_FUZZ_CASES` cases per target (256 by default) from the seed
//! `VERICONV_FUZZ_SEED` (fixed by default, printed). `scripts/fuzz.sh` runs a longer campaign.

use std::io::Write;
use std::sync::OnceLock;
use vericonv_model::ModelError;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use prost::Message;
use rand::seq::{IndexedMutRandom, IndexedRandom};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;
use vericonv_model::Dataset;
use vericonv_model::Model;
use vericonv_model::onnx::import::{export_model, import_proto};
use vericonv_model::onnx::proto::{AttributeProto, ModelProto};

/// Integers that break shape arithmetic: zero, one, negatives, powers of two around every
/// integer width, and values whose products wrap.
const INTERESTING: &[i64] =
    &[0, 1, 2, 3, -1, -2, 7, 255, 65_535, 100_000, (1 << 31) - 1, 1 << 31, 1 << 32, (1 << 62) | 1, i64::MAX, i64::MIN];

const OPS: &[&str] = &[
    "Conv",
    "Gemm",
    "MatMul",
    "Add",
    "Relu",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Flatten",
    "Reshape",
    "BatchNormalization",
    "Identity",
    "Dropout",
    "Concat",
    "Resize",
    "Clip",
    "HardSwish",
    "Softmax",
    "",
];

const ATTRS: &[&str] = &[
    "kernel_shape",
    "strides",
    "pads",
    "dilations",
    "group",
    "auto_pad",
    "ceil_mode",
    "count_include_pad",
    "epsilon",
    "transA",
    "transB",
    "alpha",
    "beta",
    "axis",
    "storage_order",
];

/// Cases per target.
fn cases() -> u32 {
    std::env::var("VERICONV_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
}

/// The campaign's seed.
fn seed() -> u64 {
    std::env::var("VERICONV_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x7665_7269_636f_6e76)
}

/// Runs `check` on `cases()` values of `strategy`; a panic in `check` fails the target. `check`
/// names each case's outcome (`loaded`, or the error's kind), and the tally is printed, which
/// shows how deep the cases reach.
fn fuzz<S: Strategy>(target: &str, strategy: S, check: impl Fn(S::Value) -> &'static str) {
    let (cases, seed) = (cases(), seed());
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..8 + target.len().min(24)].copy_from_slice(&target.as_bytes()[..target.len().min(24)]);
    let config = Config { cases, failure_persistence: None, max_shrink_iters: 64, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
    let tally = std::sync::Mutex::new(std::collections::BTreeMap::<&str, usize>::new());
    let outcome = runner.run(&strategy, |v| {
        let kind = check(v);
        *tally.lock().unwrap_or_else(|e| e.into_inner()).entry(kind).or_default() += 1;
        Ok(())
    });
    let tally = tally.into_inner().unwrap_or_else(|e| e.into_inner());
    match outcome {
        Ok(()) => println!("fuzz {target}: {cases} cases from seed {seed}, no panic; outcomes {tally:?}"),
        Err(e) => panic!("fuzz {target} (VERICONV_FUZZ_SEED={seed}): {e}"),
    }
}

/// The outcome of one case: `loaded`, or the kind of the typed error.
fn outcome<T>(r: &vericonv_model::Result<T>) -> &'static str {
    use vericonv::Error;
    match r {
        Ok(_) => "loaded",
        Err(ModelError::Parse { what, message }) if what.contains("layer") || message.contains("layer") => {
            "Parse (a layer)"
        }
        Err(ModelError::Parse { .. }) => "Parse",
        Err(ModelError::Unsupported(_)) => "Unsupported",
        Err(ModelError::NonFinite { .. }) => "NonFinite",
        Err(ModelError::Scheme(Error::LengthMismatch { .. })) => "LengthMismatch",
        Err(ModelError::Io { .. }) => "Io",
        Err(ModelError::Internal(_) | ModelError::Scheme(Error::Internal(_))) => "Internal",
        Err(_) => "other",
    }
}

/// Runs the float model on one all-zero image when it is small enough to be cheap; a model
/// that loaded must run or fail with a typed error.
fn exercise(model: &Model) {
    if model.image_len() <= 1 << 14 {
        let _ = model.forward_float(&vec![0.5; model.image_len()]);
    }
}

/// A committed model: its name, JSON and safetensors bytes.
type ModelFiles = (String, Vec<u8>, Vec<u8>);

fn committed() -> &'static [ModelFiles] {
    static MODELS: OnceLock<Vec<ModelFiles>> = OnceLock::new();
    MODELS.get_or_init(|| {
        common::committed_models()
            .into_iter()
            .map(|(json, _)| {
                let weights = json.with_extension("safetensors");
                let name = json.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                (name, std::fs::read(&json).expect("model json"), std::fs::read(weights).expect("weights"))
            })
            .collect()
    })
}

fn onnx_seeds() -> &'static [ModelProto] {
    static PROTOS: OnceLock<Vec<ModelProto>> = OnceLock::new();
    PROTOS.get_or_init(|| {
        committed()
            .iter()
            .map(|(name, json, weights)| {
                export_model(&Model::from_bytes(json, weights).unwrap_or_else(|e| panic!("{name}: {e}")))
            })
            .collect()
    })
}

fn interesting(rng: &mut ChaCha20Rng) -> i64 {
    if rng.random_bool(0.7) { *INTERESTING.choose(rng).unwrap_or(&0) } else { rng.random_range(-4..64) }
}

/// One structural mutation of an ONNX model.
fn mutate_onnx(model: &mut ModelProto, rng: &mut ChaCha20Rng) {
    let Some(graph) = model.graph.as_mut() else { return };
    let nodes = graph.node.len();
    match rng.random_range(0..9) {
        0 if nodes > 0 => {
            let node = &mut graph.node[rng.random_range(0..nodes)];
            if let Some(a) = node.attribute.choose_mut(rng) {
                match rng.random_range(0..4) {
                    0 => a.i = interesting(rng),
                    1 if !a.ints.is_empty() => {
                        let j = rng.random_range(0..a.ints.len());
                        a.ints[j] = interesting(rng);
                    }
                    2 => a.ints.push(interesting(rng)),
                    _ => a.f = [f32::NAN, -1.0, 0.0, f32::INFINITY, 1e30][rng.random_range(0..5)],
                }
            }
        }
        1 if nodes > 0 => {
            let node = &mut graph.node[rng.random_range(0..nodes)];
            let len = rng.random_range(0..5);
            node.attribute.push(AttributeProto {
                name: ATTRS.choose(rng).unwrap_or(&"pads").to_string(),
                i: interesting(rng),
                ints: (0..len).map(|_| interesting(rng)).collect(),
                s: b"SAME_UPPER".to_vec(),
                ..AttributeProto::default()
            });
        }
        2 if nodes > 0 => {
            let i = rng.random_range(0..nodes);
            graph.node[i].op_type = OPS.choose(rng).unwrap_or(&"Relu").to_string();
        }
        3 if nodes > 0 => {
            let i = rng.random_range(0..nodes);
            if rng.random_bool(0.5) {
                graph.node.remove(i);
            } else {
                let copy = graph.node[i].clone();
                graph.node.insert(i, copy);
            }
        }
        4 if nodes > 0 => {
            let names: Vec<String> = graph.node.iter().flat_map(|n| n.output.clone()).collect();
            let node = &mut graph.node[rng.random_range(0..nodes)];
            if let Some(input) = node.input.choose_mut(rng) {
                *input = names.choose(rng).cloned().unwrap_or_else(|| "nowhere".into());
            } else {
                node.input.push("nowhere".into());
            }
        }
        5 | 6 if !graph.initializer.is_empty() => {
            let t = graph.initializer.choose_mut(rng).expect("non-empty");
            match rng.random_range(0..5) {
                0 if !t.dims.is_empty() => {
                    let j = rng.random_range(0..t.dims.len());
                    t.dims[j] = interesting(rng);
                }
                1 => {
                    let keep = rng.random_range(0..=t.raw_data.len());
                    t.raw_data.truncate(keep);
                    let keep = rng.random_range(0..=t.float_data.len());
                    t.float_data.truncate(keep);
                }
                2 => {
                    if t.raw_data.len() >= 4 {
                        let j = 4 * rng.random_range(0..t.raw_data.len() / 4);
                        t.raw_data[j..j + 4].copy_from_slice(&f32::NAN.to_le_bytes());
                    } else if let Some(v) = t.float_data.choose_mut(rng) {
                        *v = f32::NEG_INFINITY;
                    }
                }
                3 => t.data_type = rng.random_range(0..18),
                _ => t.dims.push(interesting(rng)),
            }
        }
        7 => {
            if let Some(dim) = graph
                .input
                .choose_mut(rng)
                .and_then(|v| v.r#type.as_mut())
                .and_then(|t| t.tensor_type.as_mut())
                .and_then(|t| t.shape.as_mut())
                .and_then(|s| s.dim.choose_mut(rng))
            {
                if rng.random_bool(0.8) {
                    dim.dim_value = Some(interesting(rng));
                } else {
                    dim.dim_value = None;
                    dim.dim_param = Some("N".into());
                }
            }
        }
        _ if nodes > 0 => {
            let node = &mut graph.node[rng.random_range(0..nodes)];
            node.input.reverse();
        }
        _ => {}
    }
}

#[test]
fn onnx_importer_survives_mutated_models() {
    let seeds = onnx_seeds();
    fuzz("onnx", (0..seeds.len(), any::<u64>(), 1..6usize, any::<bool>()), |(i, s, n, bytes)| {
        let mut rng = ChaCha20Rng::seed_from_u64(s);
        let mut model = seeds[i].clone();
        for _ in 0..n {
            mutate_onnx(&mut model, &mut rng);
        }
        if bytes {
            // The same through the wire format, with a few bytes changed or cut.
            let mut raw = model.encode_to_vec();
            for _ in 0..n {
                if raw.is_empty() {
                    break;
                }
                let j = rng.random_range(0..raw.len());
                if rng.random_bool(0.8) {
                    raw[j] = rng.random();
                } else {
                    raw.truncate(j);
                }
            }
            match ModelProto::decode(raw.as_slice()) {
                Ok(m) => model = m,
                Err(_) => return "protobuf",
            }
        }
        let r = import_proto(&model, "fuzz");
        if let Ok(m) = &r {
            exercise(m);
        }
        outcome(&r)
    });
}

/// The tract path's loader on the same mutated models as the ONNX importer: `TractModel::open`
/// (tract's parser, typing, constant propagation, the private layers' quantization) and, when
/// it loads, planning the quantized model. Either succeeds or returns a typed error.
#[test]
fn tract_loader_survives_mutated_models() {
    use std::sync::Arc;
    use vericonv_model::QuantConfig;
    use vericonv_model::{Reference, TractModel};
    let seeds = onnx_seeds();
    let dir = tempfile::tempdir().expect("temporary directory");
    fuzz("tract", (0..seeds.len(), any::<u64>(), 1..6usize), |(i, s, n)| {
        let mut rng = ChaCha20Rng::seed_from_u64(s);
        let mut model = seeds[i].clone();
        for _ in 0..n {
            mutate_onnx(&mut model, &mut rng);
        }
        let path = dir.path().join("case.onnx");
        std::fs::write(&path, model.encode_to_vec()).expect("write the case");
        let r = TractModel::open(&path, None, &QuantConfig::default())
            .and_then(|m| m.plan(Some(Arc::new(Reference))).map(|_| m));
        outcome(&r)
    });
}

/// One mutation of a JSON document: a leaf replaced, a key removed, an array element
/// duplicated or removed.
fn mutate_json(v: &mut serde_json::Value, rng: &mut ChaCha20Rng) {
    use serde_json::Value;
    match v {
        Value::Object(map) if !map.is_empty() => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = keys.choose(rng).cloned().unwrap_or_default();
            if rng.random_bool(0.1) {
                map.remove(&key);
            } else if let Some(child) = map.get_mut(&key) {
                mutate_json(child, rng);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let i = rng.random_range(0..items.len());
            match rng.random_range(0..10) {
                0 => {
                    items.remove(i);
                }
                1 => {
                    let copy = items[i].clone();
                    items.insert(i, copy);
                }
                _ => mutate_json(&mut items[i], rng),
            }
        }
        _ => {
            *v = match rng.random_range(0..6) {
                0 | 1 => Value::from(interesting(rng)),
                2 => Value::from(-0.5),
                3 => Value::from(
                    *[
                        "conv2d",
                        "linear",
                        "relu",
                        "maxpool2d",
                        "avgpool2d",
                        "flatten",
                        "add",
                        "batchnorm2d",
                        "F32",
                        "I64",
                        "x",
                    ]
                    .choose(rng)
                    .unwrap_or(&"x"),
                ),
                4 => Value::Null,
                _ => Value::from(u64::MAX),
            };
        }
    }
}

/// A safetensors file with one mutation: in its JSON header (shapes, dtypes, offsets) or in
/// its bytes.
fn mutate_safetensors(bytes: &mut Vec<u8>, rng: &mut ChaCha20Rng) {
    let header_len = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as usize);
    match header_len {
        Some(n) if rng.random_bool(0.7) && bytes.len() >= 8 + n => {
            let Ok(mut header) = serde_json::from_slice::<serde_json::Value>(&bytes[8..8 + n]) else { return };
            mutate_json(&mut header, rng);
            let text = serde_json::to_vec(&header).unwrap_or_default();
            let mut out = (text.len() as u64).to_le_bytes().to_vec();
            out.extend(text);
            out.extend(&bytes[8 + n..]);
            *bytes = out;
        }
        _ if !bytes.is_empty() => {
            let j = rng.random_range(0..bytes.len());
            if rng.random_bool(0.7) {
                bytes[j] = rng.random();
            } else {
                bytes.truncate(j);
            }
        }
        _ => {}
    }
}

#[test]
fn native_loader_survives_mutated_models() {
    let seeds = committed();
    fuzz("native", (0..seeds.len(), any::<u64>(), 1..5usize), |(i, s, n)| {
        let mut rng = ChaCha20Rng::seed_from_u64(s);
        let (_, json, weights) = &seeds[i];
        let mut doc: serde_json::Value = serde_json::from_slice(json).expect("committed JSON parses");
        let mut weights = weights.clone();
        for _ in 0..n {
            let roll = rng.random_range(0..10);
            if roll < 5 {
                // Most mutations go to the layers, where the graph builder reads them.
                mutate_json(&mut doc["layers"], &mut rng);
            } else if roll < 7 {
                mutate_json(&mut doc, &mut rng);
            } else {
                mutate_safetensors(&mut weights, &mut rng);
            }
        }
        let json = serde_json::to_vec(&doc).unwrap_or_default();
        let r = Model::from_bytes(&json, &weights);
        if let Ok(m) = &r {
            exercise(m);
        }
        outcome(&r)
    });
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

/// An IDX file: magic, dimensions, and `len` data bytes.
fn idx(magic: [u8; 3], dims: &[u32], len: usize) -> Vec<u8> {
    let mut v = vec![magic[0], magic[1], magic[2], dims.len() as u8];
    dims.iter().for_each(|d| v.extend_from_slice(&d.to_be_bytes()));
    v.extend((0..len).map(|i| (i * 37) as u8));
    v
}

fn idx_dim() -> impl Strategy<Value = u32> {
    prop_oneof![0..32u32, Just(60_000), Just(u32::MAX), Just(1 << 31), Just(1 << 16)]
}

#[test]
fn idx_loader_survives_mutated_files() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    // Mostly well-formed pairs (N×H×W images, N labels) with one thing broken now and then.
    let dims = (0..6u32, 0..30u32, 0..30u32).prop_map(|(n, h, w)| vec![n, h, w]);
    let strategy = (
        prop_oneof![3 => dims, 1 => prop::collection::vec(idx_dim(), 0..5)],
        prop_oneof![3 => Just(None), 1 => prop::collection::vec(idx_dim(), 0..3).prop_map(Some)],
        prop_oneof![3 => Just(0i64), 1 => -2..3i64],
        any::<bool>(),
        prop_oneof![6 => Just([0u8, 0, 8]), 1 => Just([0u8, 0, 9]), 1 => Just([1u8, 0, 8])],
    );
    fuzz("idx", strategy, |(dims, ldims, slack, gz, magic)| {
        let ldims = ldims.unwrap_or_else(|| dims.first().map(|&n| vec![n]).unwrap_or_default());
        // Data as long as the header announces (when that is small), give or take a byte.
        let announced = |d: &[u32]| d.iter().try_fold(1usize, |a, &x| a.checked_mul(x as usize)).unwrap_or(usize::MAX);
        let len = |d: &[u32]| (announced(d).min(1 << 16) as i64 + slack).max(0) as usize;
        let (images, labels) = (idx(magic, &dims, len(&dims)), idx([0, 0, 8], &ldims, len(&ldims)));
        let in_memory = outcome(&Dataset::from_idx_bytes("fuzz", &images, &labels));
        let (ip, lp) = (tmp.path().join("images"), tmp.path().join("labels"));
        let write = |p: &std::path::Path, b: &[u8]| std::fs::write(p, if gz { gzip(b) } else { b.to_vec() });
        write(&ip, &images).expect("write");
        write(&lp, &labels).expect("write");
        let r = Dataset::from_idx("fuzz", &ip, &lp);
        if let Ok(d) = &r {
            assert_eq!(d.images().len(), d.len() * d.image_len(), "a loaded set keeps its invariant");
        }
        assert_eq!(outcome(&r), in_memory, "a file reads as its bytes do");
        in_memory
    });
}

#[test]
fn cifar_loader_survives_mutated_files() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let strategy =
        (0..3usize, prop_oneof![3 => Just(0i64), 1 => -3..3i64], prop_oneof![3 => 0..10u8, 1 => any::<u8>()]);
    fuzz("cifar", (strategy, any::<bool>()), |((records, slack, label), hundred)| {
        let record = if hundred { 2 } else { 1 } + 3 * 32 * 32;
        let len = ((records * record) as i64 + slack).max(0) as usize;
        let bytes: Vec<u8> = (0..len).map(|i| if i % record < 2 { label } else { i as u8 }).collect();
        let path = tmp.path().join("batch.bin");
        std::fs::write(&path, bytes).expect("write");
        let r = Dataset::from_cifar("fuzz", &[path], hundred);
        if let Ok(d) = &r {
            assert!(d.labels().iter().all(|&l| l < if hundred { 100 } else { 10 }));
        }
        outcome(&r)
    });
}

#[test]
fn digits_loader_survives_mutated_files() {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let tokens = ["nan", "NaN", "inf", "-1", "17", "9.5", "", "1e40", "abc", "0x1", "3,4", " 5 ", "-0"];
    fuzz("digits", (355..370usize, any::<u64>(), 0..4usize, any::<bool>()), |(rows, s, edits, gz)| {
        let mut rng = ChaCha20Rng::seed_from_u64(s);
        let mut cells: Vec<Vec<String>> = (0..rows)
            .map(|r| (0..65).map(|c| if c == 64 { (r % 10).to_string() } else { ((r + c) % 17).to_string() }).collect())
            .collect();
        for _ in 0..edits {
            let (r, c) = (rng.random_range(0..rows), rng.random_range(0..65));
            cells[r][c] = tokens.choose(&mut rng).unwrap_or(&"x").to_string();
        }
        let text: String = cells.iter().map(|row| row.join(",") + "\n").collect();
        let path = tmp.path().join("digits.csv.gz");
        std::fs::write(&path, if gz { gzip(text.as_bytes()) } else { text.into_bytes() }).expect("write");
        let r = Dataset::from_digits_csv(&path, true);
        if let Ok(d) = &r {
            assert!(d.labels().iter().all(|&l| l < 10) && d.images().iter().all(|v| (0.0..=1.0).contains(v)));
        }
        outcome(&r)
    });
}

/// Geometry fields as a hostile client would send them: a valid layer, with now and then a
/// field replaced by zero, a huge value or one that wraps.
fn wire_geometry() -> impl Strategy<Value = Vec<u64>> {
    let valid = (1..5u64, 1..5u64, 6..12u64, 6..12u64, 1..4u64, 1..4u64, 1..3u64, 0..2u64, 1..3u64)
        .prop_map(|(cin, cout, h, w, kh, kw, s, p, d)| vec![cin, cout, h, w, kh, kw, s, s, p, p, p, p, d, d, 1]);
    let hostile = prop_oneof![Just(0u64), Just(u64::MAX), Just(1 << 32), Just((1 << 62) | 1), Just(100_000), 2..9u64];
    (valid, prop::collection::vec((0..15usize, hostile), 0..3)).prop_map(|(mut g, edits)| {
        for (i, v) in edits {
            g[i] = v;
        }
        g
    })
}

fn geometry_message(d: &[u64]) -> vericonv_remote::proto::Geometry {
    vericonv_remote::proto::Geometry {
        in_channels: d[0],
        out_channels: d[1],
        height: d[2],
        width: d[3],
        kernel_h: d[4],
        kernel_w: d[5],
        stride_h: d[6],
        stride_w: d[7],
        pad_top: d[8],
        pad_left: d[9],
        pad_bottom: d[10],
        pad_right: d[11],
        dilation_h: d[12],
        dilation_w: d[13],
        groups: d[14],
    }
}

#[test]
fn network_decoders_survive_hostile_messages() {
    use vericonv_remote::proto::{ConvRequest, RegisterKernelRequest};
    use vericonv_remote::{KernelHandle, decode_elements, geometry_from_proto};
    fuzz("wire", (wire_geometry(), prop::collection::vec(any::<u8>(), 0..256)), |(d, bytes)| {
        // The path of RegisterKernel: geometry, then a kernel of exactly its length.
        let r = geometry_from_proto(&geometry_message(&d));
        let kind = match &r {
            Ok(geom) => match decode_elements(&bytes, geom.kernel_len(), "kernel") {
                Ok(_) => "kernel decoded",
                Err(_) => "kernel refused",
            },
            Err(_) => "geometry refused",
        };
        // Raw bytes into both request messages, then their fields.
        if let Ok(req) = RegisterKernelRequest::decode(bytes.as_slice())
            && let Some(g) = req.geometry
        {
            let _ = geometry_from_proto(&g);
        }
        if let Ok(req) = ConvRequest::decode(bytes.as_slice()) {
            let _ = KernelHandle::from_bytes(&req.handle);
        }
        if let Ok(chunk) = vericonv_remote::proto::ConvChunk::decode(bytes.as_slice()) {
            let _ = KernelHandle::from_bytes(&chunk.handle);
            let _ = decode_elements(&chunk.data, chunk.data.len() / 4, "chunk");
        }
        kind
    });
}

#[test]
fn a_live_server_answers_hostile_requests_with_statuses_and_stays_up() {
    use vericonv_remote::KernelHandle;
    use vericonv_remote::proto::cloud_client::CloudClient;
    use vericonv_remote::proto::conv_request::Input;
    use vericonv_remote::proto::{ConvRequest, RegisterKernelRequest};
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind loopback");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cfg = vericonv_remote::ServerConfig { max_message_bytes: 1 << 20, ..Default::default() };
    let server = rt.spawn(vericonv_remote::serve(
        std::sync::Arc::new(vericonv::CpuBackend::new()),
        cfg,
        vericonv_remote::Listen { listener, tls: None, metrics: None },
        async move {
            let _ = stopped.await;
        },
    ));
    let client = rt.block_on(CloudClient::connect(format!("http://{addr}"))).expect("connect");
    let strategy = (wire_geometry(), any::<u64>(), 0..4u64, any::<bool>());
    fuzz("server", strategy, |(d, s, batch, seed_form)| {
        let mut rng = ChaCha20Rng::seed_from_u64(s);
        let mut c = client.clone();
        let geometry = Some(geometry_message(&d));
        // A kernel of about the right length, sometimes off by one element or holding p.
        let geom = vericonv_remote::geometry_from_proto(geometry.as_ref().expect("some")).ok();
        let len = geom.map_or(rng.random_range(0..64), |g| g.kernel_len()).min(1 << 16);
        let image = geom.map_or(0, |g| g.image_len()).min(1 << 16);
        let mut kernel: Vec<u8> = (0..len).flat_map(|_| rng.random_range(0..vericonv::P).to_le_bytes()).collect();
        match rng.random_range(0..6) {
            0 => kernel.truncate(kernel.len().saturating_sub(4)),
            1 => kernel.extend([0xff; 4]),
            _ => {}
        }
        let handle = match rt.block_on(c.register_kernel(RegisterKernelRequest { geometry, kernel })) {
            Ok(reply) => reply.into_inner().handle,
            Err(_) => KernelHandle::from_bytes(&[3; 32]).expect("32").as_bytes().to_vec(),
        };
        let input = if seed_form {
            Input::ShareSeed((0..rng.random_range(30..34)).map(|_| rng.random()).collect())
        } else {
            // Mostly the right length of canonical elements; sometimes any bytes at all.
            let elements = if rng.random_bool(0.7) { batch as usize * image } else { rng.random_range(0..1024) };
            let mut x: Vec<u8> = (0..elements).flat_map(|_| rng.random_range(0..vericonv::P).to_le_bytes()).collect();
            if rng.random_bool(0.2) && !x.is_empty() {
                let j = rng.random_range(0..x.len());
                x[j] = 0xff;
                x.truncate(j + 1 + rng.random_range(0..3));
            }
            Input::Tensor(x)
        };
        match rt.block_on(c.conv(ConvRequest { handle, batch, input: Some(input) })) {
            Ok(_) => "answered",
            Err(st) => match st.code() {
                tonic::Code::InvalidArgument => "InvalidArgument",
                tonic::Code::NotFound => "NotFound",
                tonic::Code::ResourceExhausted => "ResourceExhausted",
                other => panic!("an unexpected status {other:?}: {}", st.message()),
            },
        }
    });
    // Still up.
    let mut c = client.clone();
    assert!(rt.block_on(c.info(vericonv_remote::proto::InfoRequest {})).is_ok(), "the server survived");
    let _ = stop.send(());
    let _ = rt.block_on(server);
}
