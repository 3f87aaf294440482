//! The `vericonv bench` harness: each configuration checks its own outputs (decryption equals
//! the integer convolution in every privacy mode, baselines agree) before timing, and the
//! reports are written.

use std::time::Duration;

use vericonv::Privacy;
use vericonv_cli::bench::{
    BenchLayer, BenchOptions, BenchRow, full_suite, plot_speedups, quick_suite, run_layer, write_csv,
};

#[test]
fn bench_rows_are_self_checked_and_reported() {
    let suite = full_suite().expect("suite builds");
    assert_eq!(suite.len(), 19, "LeNet-5 ×2, VGG-16/32 ×5, VGG-16/224 ×5, ResNet-18 ×5, MobileNet-v1 ×2");
    let quick = quick_suite().expect("quick suite");
    let opts = BenchOptions {
        batch: 2,
        threads: 1,
        session: 64,
        min_time: Duration::from_millis(5),
        privacy: vec![Privacy::LowRank { rank: 2 }, Privacy::TwoServer, Privacy::Pad],
        ..BenchOptions::default()
    };
    let mut rows = Vec::new();
    for l in quick.iter().filter(|l| l.network == "LeNet-5") {
        let modes = run_layer(l, &opts, 3).unwrap_or_else(|e| panic!("{} {}: {e}", l.network, l.layer));
        let labels: Vec<String> = modes.iter().map(|r| r.privacy.clone()).collect();
        assert_eq!(labels, ["lowrank (rank 2)", "two-server", "pad"], "one row per mode, in order");
        for r in modes {
            // Only pad has offline work, reported apart from the online client time.
            assert_eq!(r.offline_s.is_some(), r.privacy == "pad", "{r:?}");
            assert!(r.offline_s.is_none_or(|o| o.is_finite() && o > 0.0));
            check_row(l, &r);
            rows.push(r);
        }
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let csv_path = dir.path().join("bench.csv");
    write_csv(&rows, &csv_path).expect("csv");
    plot_speedups(&rows, 1, "two-server", &dir.path().join("speedup.svg")).expect("svg");
    // The CSV reads back row for row, with the values that were measured.
    let mut reader = csv::Reader::from_path(&csv_path).expect("csv opens");
    let back: Vec<CsvRow> = reader.deserialize().collect::<Result<_, _>>().expect("every row parses");
    assert_eq!(back.len(), rows.len());
    for (b, r) in back.iter().zip(&rows) {
        assert_eq!((&b.network, &b.layer, &b.privacy, b.batch), (&r.network, &r.layer, &r.privacy, r.batch));
        assert_eq!((b.client_s, b.offline_s, b.tract_s), (r.client_s, r.offline_s, r.tract_s));
    }
    let svg = std::fs::read_to_string(dir.path().join("speedup.svg")).expect("svg");
    for l in quick.iter().filter(|l| l.network == "LeNet-5") {
        assert!(svg.contains(l.layer), "the plot labels layer {}", l.layer);
    }
}

/// The columns of bench.csv this test reads back.
#[derive(serde::Deserialize)]
struct CsvRow {
    network: String,
    layer: String,
    privacy: String,
    batch: usize,
    client_s: f64,
    offline_s: Option<f64>,
    tract_s: Option<f64>,
}

/// What a measured row must show: every baseline ran (tract too: the tests build the CLI with
/// it), and every time is a real measurement.
fn check_row(l: &BenchLayer, r: &BenchRow) {
    assert_eq!((r.network.as_str(), r.layer.as_str()), (l.network, l.layer));
    assert!(r.naive_s.is_some(), "small layers run the naive baseline");
    assert!(r.tract_s.is_some(), "tract ran");
    for v in [r.client_s, r.session_s, r.floor_s, r.cloud_cpu_s, r.im2col_gemm_s, r.client_verify_kernel_s] {
        assert!(v.is_finite() && v > 0.0, "{r:?}");
    }
}

#[cfg(feature = "gpu")]
#[test]
fn gpu_bench_checks_every_kernel_then_times_it() {
    let Some(gpu) = common::gpu_or_skip(&vericonv_gpu::GpuOptions::default()) else { return };
    let suite = quick_suite().expect("quick suite");
    for l in suite.iter().filter(|l| l.network == "LeNet-5") {
        let r = vericonv_cli::bench::run_gpu_layer(l, &gpu, 2, 2, 5).unwrap_or_else(|e| panic!("{}: {e}", l.layer));
        assert_eq!(r.macs, (2 * l.geom.output_image_len() * l.geom.m()) as u64);
        assert_eq!(r.gpu_clock, gpu.info().timestamps);
        for v in
            [r.field_tiled_s, r.field_simple_s, r.f32_tiled_s, r.f32_simple_s, r.field_tiled_gops, r.field_over_f32]
        {
            assert!(v.is_finite() && v > 0.0, "{r:?}");
        }
    }
}

#[test]
fn the_whole_model_bench_checks_the_private_logits_and_times_every_engine() {
    use vericonv_cli::whole::{WholeOptions, run_whole};
    let model = vericonv_model::Model::load(common::repo_root().join("models/lenet5-mnist.json")).expect("model");
    let onnx = prost::Message::encode_to_vec(&vericonv_model::onnx::import::export_model(&model));
    for privacy in [Privacy::LowRank { rank: 2 }, Privacy::TwoServer, Privacy::Pad, Privacy::SplitModel] {
        let opts = WholeOptions { batch: 4, threads: 1, privacy, reps: 2, seed: 3 };
        let r = run_whole(&model, &onnx, &opts, None, None, None).expect("measured");
        // Modes pad and split-model draw each pass's pads offline, timed apart; the other modes
        // have no such work.
        assert_eq!(r.pad_offline_s.is_some_and(|s| s > 0.0), privacy.uses_pads(), "{r:?}");
        assert!(r.exact, "private logits equal the quantized model's");
        assert!(r.tract_s.is_some(), "tract ran the exported graph");
        assert_eq!(r.path, "native");
        for v in [r.client_s, r.session_s, r.cloud_s, r.float_s.unwrap_or(0.0), r.best_plaintext_s] {
            assert!(v.is_finite() && v > 0.0, "{r:?}");
        }
        assert!(r.client_quantize_s.is_some_and(|q| q < r.client_s), "{r:?}");
    }
}

/// `bench --model` on the tract path (a model the native importer refuses): the private logits
/// checked against the quantized graph, the client, cloud and tract timed, in every mode.
#[test]
fn the_whole_model_bench_runs_the_tract_path_too() {
    use std::sync::Arc;
    use vericonv_cli::whole::{WholeOptions, run_whole_tract};
    use vericonv_model::TractModel;
    let path = common::repo_root().join("data/zoo/silu_se.onnx");
    if !path.is_file() {
        common::skip_unless_required("VERICONV_REQUIRE_DATA", "data/zoo is missing: run scripts/export-zoo.py");
        return;
    }
    let model = TractModel::open(&path, None, &vericonv_model::QuantConfig::default()).expect("loads");
    let onnx = std::fs::read(&path).expect("model");
    for privacy in [Privacy::LowRank { rank: 2 }, Privacy::TwoServer, Privacy::Pad, Privacy::SplitModel] {
        let opts = WholeOptions { batch: 3, threads: 1, privacy, reps: 2, seed: 5 };
        let r = run_whole_tract(&model, &onnx, &opts, None, None, None).expect("measured");
        assert!(r.exact && r.path == "tract", "{r:?}");
        assert_eq!(r.pad_offline_s.is_some_and(|s| s > 0.0), privacy.uses_pads(), "{r:?}");
        assert!(r.float_s.is_none() && r.client_quantize_s.is_none(), "{r:?}");
        for v in [r.client_s, r.session_s, r.cloud_s, r.tract_s.unwrap_or(0.0), r.best_plaintext_s] {
            assert!(v.is_finite() && v > 0.0, "{r:?}");
        }
        assert_eq!(r.best_plaintext, "tract");
    }
    // The clouds may be given: the same model on one cloud the caller made.
    let cloud: Arc<dyn vericonv::CloudBackend> = Arc::new(vericonv::CpuBackend::new());
    let opts = WholeOptions { batch: 2, threads: 1, privacy: Privacy::Pad, reps: 1, seed: 6 };
    let r = run_whole_tract(&model, &onnx, &opts, Some((cloud, None)), None, None).expect("measured");
    assert!(r.exact, "{r:?}");
}

#[cfg(feature = "gpu")]
#[test]
fn pads_made_on_the_clients_gpu_keep_the_whole_model_exact() {
    use vericonv_cli::whole::{WholeOptions, run_whole};
    let Some(gpu) = common::gpu_or_skip(&vericonv_gpu::GpuOptions::default()) else { return };
    let model = vericonv_model::Model::load(common::repo_root().join("models/lenet5-mnist.json")).expect("model");
    let onnx = prost::Message::encode_to_vec(&vericonv_model::onnx::import::export_model(&model));
    for privacy in [Privacy::Pad, Privacy::SplitModel] {
        let opts = WholeOptions { batch: 2, threads: 1, privacy, reps: 1, seed: 4 };
        let r = run_whole(&model, &onnx, &opts, None, Some(&gpu), None).expect("measured");
        assert!(r.exact, "{privacy:?}: private logits equal the quantized model's with pads from the GPU");
        assert!(r.pad_offline_s.is_some_and(|s| s > 0.0), "{r:?}");
    }
}
