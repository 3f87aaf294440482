//! `vericonv bench`: layers, whole models (`--model`), GPU kernels (`--backend gpu`) and a remote cloud under load (`--cloud`).

use anyhow::Context;
use std::path::{Path, PathBuf};
use vericonv_model::ModelError;

use clap::ValueEnum;
use clap::builder::TypedValueParser;

use indicatif::{ProgressBar, ProgressStyle};
use vericonv::CloudBackend;
use vericonv::{LOWRANK_WARNING, Privacy};
#[cfg(feature = "gpu")]
use vericonv_gpu::{GpuBackend, GpuOptions};

use super::options::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum SuiteChoice {
    /// LeNet-5, VGG-16 at 32×32 and 224×224, ResNet-18, MobileNet-v1.
    Full,
    /// A few small layers.
    Quick,
}

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// `cpu`: the client against plaintext CPU convolutions. `gpu`: the GPU kernels (F_p tiled
    /// and simple, f32 tiled and simple) timed on the selected adapter; with --model, the
    /// cloud of the whole-model pipeline on the GPU.
    #[arg(long, value_enum, default_value_t = BenchBackend::Cpu)]
    pub(crate) backend: BenchBackend,
    /// With --model, in modes pad and split-model: where the client makes its pads
    /// (`Conv(K, R)`): its own CPU (the threads of the row) or its own GPU.
    #[arg(long, value_enum, default_value_t = BenchBackend::Cpu)]
    pub(crate) pads_backend: BenchBackend,
    /// Which layers [default: full; quick for --backend gpu on a CPU rasteriser].
    #[arg(long, value_enum)]
    pub(crate) suite: Option<SuiteChoice>,
    /// Only layers whose "network layer" name contains this text.
    #[arg(long)]
    pub(crate) only: Option<String>,
    /// Batch sizes [default: 1,16; 1 for --backend gpu on a CPU rasteriser].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..=4096).map(usize::from))]
    pub(crate) batches: Option<Vec<usize>>,
    /// Thread counts (0 means all cores); both the client and the baselines use them.
    #[arg(long, value_delimiter = ',', default_value = "1,0", value_parser = clap::value_parser!(u16).range(0..=1024).map(usize::from))]
    pub(crate) threads: Vec<usize>,
    /// Session length over which kernel encryption and KG are amortized.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|v| v as usize))]
    pub(crate) session: usize,
    /// Where to write bench.csv, bench.json and speedup-*.svg.
    #[arg(long, default_value = "reports/bench")]
    pub(crate) out: PathBuf,
    /// Seed for the random layer data.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Timed runs per GPU kernel (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000).map(usize::from))]
    pub(crate) reps: usize,
    /// Privacy modes to measure the client in (--backend cpu), side by side when several.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "pad")]
    pub(crate) privacy: Vec<PrivacyChoice>,
    /// Mask rank ρ of mode lowrank.
    #[arg(long, default_value_t = vericonv::DEFAULT_RANK, value_parser = clap::value_parser!(u16).range(1..=64).map(usize::from))]
    pub(crate) rank: usize,
    /// The F_p shader variant for --backend gpu [default: u64 when the adapter has SHADER_INT64].
    #[arg(long, value_enum)]
    pub(crate) variant: Option<VariantChoice>,
    /// With --cloud: load-test that remote cloud instead; concurrent clients run the whole
    /// private layer against it; throughput and p50/p99 latency [default suite: quick].
    #[command(flatten)]
    pub(crate) remote: RemoteArgs,
    /// Benchmark this whole model (`.onnx` or native `.json`) instead of the layer suite: the
    /// client's whole private pipeline against tract, onnxruntime and vericonv's float model.
    #[arg(long)]
    pub(crate) model: Option<PathBuf>,
    /// With --model: run it on the tract path (tract's graph, the convolutions private) even when
    /// the native pipeline covers it. A model the native importer refuses runs there anyway.
    #[arg(long)]
    pub(crate) tract: bool,
    /// With --model on the tract path: one input's shape, e.g. 3,224,224, for a model that
    /// leaves dimensions dynamic.
    #[arg(long, value_delimiter = ',')]
    pub(crate) input_shape: Option<Vec<usize>>,
    /// With --cloud: concurrent clients.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024).map(usize::from))]
    pub(crate) clients: usize,
    /// With --cloud: private calls per client.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=10_000).map(usize::from))]
    pub(crate) requests: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum VariantChoice {
    /// Native 64-bit integers (needs SHADER_INT64).
    U64,
    /// 32-bit integers only (any adapter).
    U32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum BenchBackend {
    /// The client's work against plaintext convolutions on the CPU.
    Cpu,
    /// The convolution kernels on the wgpu adapter.
    Gpu,
}

impl BenchArgs {
    /// The selected layers of the suite (`default` when --suite is not given).
    pub(crate) fn layers(&self, default: SuiteChoice) -> Result<Vec<vericonv_cli::bench::BenchLayer>, anyhow::Error> {
        let suite = match self.suite.unwrap_or(default) {
            SuiteChoice::Full => vericonv_cli::bench::full_suite()?,
            SuiteChoice::Quick => vericonv_cli::bench::quick_suite()?,
        };
        Ok(suite
            .into_iter()
            .filter(|l| self.only.as_ref().is_none_or(|o| format!("{} {}", l.network, l.layer).contains(o.as_str())))
            .collect())
    }

    /// A progress bar over `total` configurations.
    pub(crate) fn progress(total: usize) -> ProgressBar {
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} configurations [{elapsed_precise}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    }

    /// Creates the output directory.
    pub(crate) fn out_dir(&self) -> Result<&Path, anyhow::Error> {
        std::fs::create_dir_all(&self.out).with_context(|| format!("creating {}", self.out.display()))?;
        Ok(&self.out)
    }
}

pub(crate) fn bench(args: &BenchArgs) -> Result<(), anyhow::Error> {
    use vericonv_cli::bench::{BenchOptions, plot_speedups, run_layer, write_csv};
    if let Some(model) = &args.model {
        return bench_model(args, model);
    }
    if args.backend == BenchBackend::Gpu {
        return bench_gpu(args);
    }
    if !args.remote.cloud.is_empty() {
        return bench_cloud(args);
    }
    let suite = args.layers(SuiteChoice::Full)?;
    let batches = args.batches.clone().unwrap_or_else(|| vec![1, 16]);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads: Vec<usize> = args.threads.iter().map(|&t| if t == 0 { cores } else { t }).collect();
    threads.dedup();
    let out = args.out_dir()?;
    let mut privacy: Vec<Privacy> =
        args.privacy.iter().map(|&p| PrivacyArgs { privacy: p, rank: args.rank }.privacy()).collect();
    privacy.dedup();
    if privacy.iter().any(|p| matches!(p, Privacy::LowRank { .. })) {
        eprintln!("{LOWRANK_WARNING}");
    }
    let bar = BenchArgs::progress(suite.len() * batches.len() * threads.len());
    let mut rows = Vec::new();
    for l in &suite {
        for &batch in &batches {
            for &t in &threads {
                bar.set_message(format!("{} {} batch {batch}, {t} thread(s)", l.network, l.layer));
                let opts = BenchOptions {
                    batch,
                    threads: t,
                    session: args.session,
                    privacy: privacy.clone(),
                    ..BenchOptions::default()
                };
                rows.extend(run_layer(l, &opts, args.seed)?);
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    let s = |v: f64| if v >= 1.0 { format!("{v:8.2} s") } else { format!("{:8.2} ms", v * 1e3) };
    println!(
        "{:<13} {:<16} {:<16} {:>5} {:>3} | {:>11} {:>11} {:>11} | {:>11} {:>11} {:>7} {:>9} | {:>8} {:>8} {:>9} | {:>11} {:>8}",
        "network",
        "layer",
        "privacy",
        "batch",
        "thr",
        "(a) naive",
        "(b) gemm",
        "(c) tract",
        "client",
        "session",
        "/floor",
        "img/floor",
        "speedup",
        "1-batch",
        "vs naive",
        "cloud cpu",
        "/(b)"
    );
    for r in &rows {
        let opt = |v: Option<f64>| v.map_or_else(|| format!("{:>11}", "-"), s);
        println!(
            "{:<13} {:<16} {:<16} {:>5} {:>3} | {:>11} {:>11} {:>11} | {:>11} {:>11} {:>6.1}x {:>8.1}x | {:>7.1}x {:>7.1}x {:>9} | {:>11} {:>7.1}x",
            r.network,
            r.layer,
            r.privacy,
            r.batch,
            r.threads,
            opt(r.naive_s),
            s(r.im2col_gemm_s),
            opt(r.tract_s),
            s(r.client_amortized_s),
            s(r.session_s),
            r.client_over_floor,
            r.image_over_floor,
            r.speedup,
            r.speedup_unamortized,
            r.speedup_vs_naive.map_or_else(|| "-".to_string(), |v| format!("{v:.1}x (naive)")),
            s(r.cloud_cpu_s),
            r.cloud_cpu_over_gemm
        );
    }
    println!(
        "client = quantize + encrypt + verify (fast, 1 round) + decrypt + de-quantize per batch, plus the session's kernel work amortized over {} images;",
        args.session
    );
    println!(
        "speedup = best of (b) and (c) / client; 1-batch = the same with an unamortized session; /floor = client per-batch work / memcpy of X, X', Y', Y;\nimg/floor = the same without fast verification's sᵀK' term, which reads all of K' once per batch;\ncloud cpu = the exact F_p convolution of the CPU cloud backend (same threads), /(b) = its time over baseline (b)."
    );
    if privacy.len() > 1 {
        print_modes_side_by_side(&rows, &privacy);
    }
    write_csv(&rows, &out.join("bench.csv"))?;
    write_json(&rows, &out.join("bench.json"))?;
    for &t in &threads {
        for p in &privacy {
            let suffix = if privacy.len() > 1 { format!("-{}", p.name()) } else { String::new() };
            plot_speedups(&rows, t, &p.label(), &out.join(format!("speedup-{t}t{suffix}.svg")))?;
        }
    }
    println!("wrote {}/bench.csv, bench.json and speedup-*.svg", out.display());
    Ok(())
}

/// The modes' online client times side by side, per layer, batch and thread count, with each
/// mode's ratio to the first (`pad` also shows its offline work per batch).
pub(crate) fn print_modes_side_by_side(rows: &[vericonv_cli::bench::BenchRow], privacy: &[Privacy]) {
    let s = |v: f64| if v >= 1.0 { format!("{v:8.2} s") } else { format!("{:8.2} ms", v * 1e3) };
    let first = privacy[0].label();
    println!(
        "\nonline client time per batch (quantize, mask, verify, unmask; session amortized), each mode over {first}:"
    );
    let mut header = format!("{:<13} {:<16} {:>5} {:>3} |", "network", "layer", "batch", "thr");
    for p in privacy {
        header += &format!(" {:>18} {:>7} |", p.label(), "ratio");
    }
    println!("{header} {:>14}", "pad offline");
    for base in rows.iter().filter(|r| r.privacy == first) {
        let same = |r: &&vericonv_cli::bench::BenchRow| {
            r.network == base.network && r.layer == base.layer && r.batch == base.batch && r.threads == base.threads
        };
        let mut line = format!("{:<13} {:<16} {:>5} {:>3} |", base.network, base.layer, base.batch, base.threads);
        let mut offline = None;
        for p in privacy {
            match rows.iter().filter(same).find(|r| r.privacy == p.label()) {
                Some(r) => {
                    line += &format!(
                        " {:>18} {:>6.2}x |",
                        s(r.client_amortized_s),
                        r.client_amortized_s / base.client_amortized_s
                    );
                    offline = offline.or(r.offline_s);
                }
                None => line += &format!(" {:>18} {:>7} |", "-", "-"),
            }
        }
        println!("{line} {:>14}", offline.map_or_else(|| "-".to_string(), s));
    }
}

/// `vericonv bench --backend gpu`: every kernel checked, then timed, on the selected adapter.
#[cfg(feature = "gpu")]
pub(crate) fn bench_gpu(args: &BenchArgs) -> Result<(), anyhow::Error> {
    use vericonv_gpu::ShaderVariant;
    let variant = args.variant.map(|v| match v {
        VariantChoice::U64 => ShaderVariant::U64,
        VariantChoice::U32 => ShaderVariant::U32,
    });
    let gpu = GpuBackend::new(&GpuOptions { variant, ..GpuOptions::default() })?;
    let slow = gpu.info().is_cpu();
    let suite = args.layers(if slow { SuiteChoice::Quick } else { SuiteChoice::Full })?;
    let batches = args.batches.clone().unwrap_or_else(|| if slow { vec![1] } else { vec![1, 16] });
    println!("adapter : {} [{:?} shaders]", gpu.info(), gpu.variant());
    if slow && (args.suite.is_none() || args.batches.is_none()) {
        println!(
            "          a CPU rasteriser: defaulting to the quick suite at batch 1 (pass --suite/--batches to override)"
        );
    }
    let clock = if gpu.info().timestamps { "GPU timestamp queries" } else { "wall clock (no TIMESTAMP_QUERY)" };
    println!("timing  : median of {} runs after a warm-up, on the {clock}", args.reps.max(1));
    let out = args.out_dir()?;
    let bar = BenchArgs::progress(suite.len() * batches.len());
    let mut rows = Vec::new();
    for l in &suite {
        for &batch in &batches {
            bar.set_message(format!("{} {} batch {batch}", l.network, l.layer));
            rows.push(vericonv_cli::bench::run_gpu_layer(l, &gpu, batch, args.reps, args.seed)?);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let s = |v: f64| if v >= 1.0 { format!("{v:8.2} s") } else { format!("{:8.2} ms", v * 1e3) };
    println!(
        "{:<13} {:<16} {:>5} | {:>11} {:>8} {:>11} | {:>11} {:>8} {:>11} | {:>8}",
        "network", "layer", "batch", "F_p tiled", "GOP/s", "F_p simple", "f32 tiled", "GOP/s", "f32 simple", "F_p/f32"
    );
    for r in &rows {
        println!(
            "{:<13} {:<16} {:>5} | {:>11} {:>8.3} {:>11} | {:>11} {:>8.3} {:>11} | {:>7.2}x{}",
            r.network,
            r.layer,
            r.batch,
            s(r.field_tiled_s),
            r.field_tiled_gops,
            s(r.field_simple_s),
            s(r.f32_tiled_s),
            r.f32_tiled_gops,
            s(r.f32_simple_s),
            r.field_over_f32,
            if r.tiled { "" } else { " (grouped: simple kernel)" }
        );
    }
    println!("every kernel was first checked: F_p bit-identical to the CPU backend, f32 exact on small integers.");
    write_json(&rows, &out.join("bench-gpu.json"))?;
    println!("wrote {}/bench-gpu.json", out.display());
    Ok(())
}

/// Without the `gpu` feature there is nothing to time on a GPU.
#[cfg(not(feature = "gpu"))]
pub(crate) fn bench_gpu(_args: &BenchArgs) -> Result<(), anyhow::Error> {
    Err(anyhow::anyhow!("unsupported: built without the `gpu` feature"))
}

/// onnxruntime's median time on `onnx` through `scripts/ort-baseline.py`, or why it did not run.
pub(crate) fn onnxruntime_time(onnx: &Path, batch: usize, threads: usize, reps: usize) -> Result<f64, String> {
    let script = Path::new("scripts/ort-baseline.py");
    if !script.is_file() {
        return Err("scripts/ort-baseline.py not found (run from the repository root)".into());
    }
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(onnx)
        .args(["--batch", &batch.to_string(), "--threads", &threads.to_string(), "--reps", &reps.to_string()])
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v["seconds"].as_f64())
        .filter(|_| out.status.success())
        .ok_or_else(|| format!("ort-baseline.py failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
}

/// `vericonv bench --model`: a whole network end to end.
pub(crate) fn bench_model(args: &BenchArgs, path: &Path) -> Result<(), anyhow::Error> {
    use vericonv_cli::whole::{WholeOptions, run_whole};
    let is_onnx = path.extension().is_some_and(|e| e == "onnx");
    let native = if args.tract && is_onnx {
        None
    } else {
        match load_model(path, &NormArgs { mean: None, std: None }) {
            Ok(model) => Some(model),
            // A graph whose operators the native importer does not know runs on tract.
            Err(e @ ModelError::Unsupported(_)) if is_onnx && cfg!(feature = "tract") => {
                eprintln!("the native importer refuses {} ({e}); running it on tract", path.display());
                None
            }
            Err(e) => return Err(e.into()),
        }
    };
    let out = args.out_dir()?;
    // tract and onnxruntime read the model as ONNX: the file itself, or the native model exported.
    let onnx_path = match &native {
        Some(model) if !is_onnx => {
            let p = out.join(format!("{}.onnx", file_safe(model.name())));
            vericonv_model::onnx::import::write_model(model, &p)?;
            p
        }
        _ => path.to_path_buf(),
    };
    let onnx = std::fs::read(&onnx_path).with_context(|| format!("reading {}", onnx_path.display()))?;
    let on_tract = open_tract(args, path, native.is_none())?;
    let (name, shape) = match (&native, &on_tract) {
        (Some(m), _) => (m.name().to_string(), vec![m.input().channels, m.input().height, m.input().width]),
        (None, Some(t)) => name_and_shape(t),
        (None, None) => {
            anyhow::bail!("unsupported: a model the native importer refuses, without the tract feature");
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads: Vec<usize> = args.threads.iter().map(|&t| if t == 0 { cores } else { t }).collect();
    threads.dedup();
    let batches = args.batches.clone().unwrap_or_else(|| vec![1, 16]);
    let mut privacy: Vec<Privacy> =
        args.privacy.iter().map(|&p| PrivacyArgs { privacy: p, rank: args.rank }.privacy()).collect();
    privacy.dedup();
    if privacy.iter().any(|p| matches!(p, Privacy::LowRank { .. })) {
        eprintln!("{LOWRANK_WARNING}");
    }
    println!(
        "vericonv bench --model {}: {name} ({} input) on the {} path; times per batch, speed-up against the fastest plaintext engine",
        path.display(),
        shape.iter().map(ToString::to_string).collect::<Vec<_>>().join("×"),
        if native.is_some() { "native" } else { "tract" },
    );
    println!(
        "{:<18} {:>5} {:>3} | {:>11} {:>11} {:>11} | {:>11} {:>11} {:>11} | {:>11} {:>8} | {:>11}",
        "privacy",
        "batch",
        "thr",
        "client",
        "quantize",
        "session",
        "tract",
        "ort",
        "vc float",
        "best",
        "speedup",
        "cloud"
    );
    let s = |v: f64| if v >= 1.0 { format!("{v:9.3} s") } else { format!("{:8.2} ms", v * 1e3) };
    let opt = |v: Option<f64>| v.map_or_else(|| format!("{:>11}", "-"), s);
    // --backend gpu: the cloud on the GPU (two backends on the device in mode two-server);
    // the CPU cloud otherwise.
    let gpu = match args.backend {
        BenchBackend::Gpu => {
            let gpu = || select_backend(BackendChoice::Gpu).map(|b| std::sync::Arc::<dyn CloudBackend>::from(b.0));
            Some((gpu()?, gpu()?))
        }
        BenchBackend::Cpu => None,
    };
    if let Some((a, _)) = &gpu {
        println!("  cloud: {}", a.name());
    }
    // --pads-backend gpu: the client's own GPU makes the pads.
    let pads_gpu = match args.pads_backend {
        BenchBackend::Gpu => Some(select_backend(BackendChoice::Gpu)?.0),
        BenchBackend::Cpu => None,
    };
    if let Some(g) = &pads_gpu {
        println!("  pads made on the client's own {}", g.name());
    }
    let mut rows = Vec::new();
    for &batch in &batches {
        for &t in &threads {
            let ort =
                onnxruntime_time(&onnx_path, batch, t, args.reps).map_err(|why| eprintln!("onnxruntime: {why}")).ok();
            let clouds = gpu.as_ref().map(|(a, b)| (a.as_ref(), b.as_ref()));
            for &p in &privacy {
                let opts = WholeOptions { batch, threads: t, privacy: p, reps: args.reps, seed: args.seed };
                let r = match (&native, &on_tract) {
                    (Some(model), _) => run_whole(model, &onnx, &opts, clouds, pads_gpu.as_deref(), ort)?,
                    (None, Some(model)) => {
                        let clouds = gpu.as_ref().map(|(a, b)| (a.clone(), (p.clouds() == 2).then(|| b.clone())));
                        whole_on_tract(model, &onnx, &opts, clouds, pads_gpu.as_deref(), ort)?
                    }
                    (None, None) => unreachable!("checked above"),
                };
                println!(
                    "{:<18} {:>5} {:>3} | {:>11} {:>11} {:>11} | {} {} {:>11} | {:>11} {:>7.2}x | {:>11}",
                    r.privacy,
                    r.batch,
                    r.threads,
                    s(r.client_s),
                    opt(r.client_quantize_s),
                    s(r.session_s),
                    opt(r.tract_s),
                    opt(r.onnxruntime_s),
                    opt(r.float_s),
                    r.best_plaintext,
                    r.speedup,
                    s(r.cloud_s)
                );
                let ph = r.client_phases_s;
                println!(
                    "{:>28} client work, summed over images: encrypt {}, verify {}, decrypt {}, quantize {}, non-linear {}, client linear {}",
                    "",
                    s(ph.encrypt).trim(),
                    s(ph.verify).trim(),
                    s(ph.decrypt).trim(),
                    opt(r.client_quantize_s).trim(),
                    opt(r.client_nonlinear_s).trim(),
                    s(ph.local).trim()
                );
                if let Some(offline) = r.pad_offline_s {
                    println!(
                        "{:>28} pad offline (the batch's pads, before the pass, not in client): {}",
                        "",
                        s(offline).trim()
                    );
                }
                rows.push(r);
            }
        }
    }
    write_json(&rows, &out.join("bench-model.json"))?;
    println!(
        "private logits bit-identical to the quantized model in every row; wrote {}/bench-model.json",
        out.display()
    );
    Ok(())
}

/// The model on the tract path, when `bench --model` runs it there (`refused`: the native
/// importer refused it; else only with `--tract`).
#[cfg(feature = "tract")]
fn open_tract(
    args: &BenchArgs,
    path: &Path,
    refused: bool,
) -> Result<Option<vericonv_model::TractModel>, anyhow::Error> {
    if !(refused || args.tract) {
        return Ok(None);
    }
    let cfg = vericonv_model::QuantConfig::default();
    vericonv_model::TractModel::open(path, args.input_shape.as_deref(), &cfg).map(Some).map_err(anyhow::Error::from)
}

#[cfg(not(feature = "tract"))]
fn open_tract(args: &BenchArgs, _: &Path, _: bool) -> Result<Option<std::convert::Infallible>, anyhow::Error> {
    if args.tract {
        anyhow::bail!("unsupported: --tract without the tract feature");
    }
    Ok(None)
}

/// The clouds of a model on the tract path: one, or two.
type OwnedClouds = (std::sync::Arc<dyn CloudBackend>, Option<std::sync::Arc<dyn CloudBackend>>);

/// A model's name and one input's shape, on the tract path.
#[cfg(feature = "tract")]
fn name_and_shape(model: &vericonv_model::TractModel) -> (String, Vec<usize>) {
    (model.name().to_string(), model.image_shape().to_vec())
}

#[cfg(not(feature = "tract"))]
fn name_and_shape(model: &std::convert::Infallible) -> (String, Vec<usize>) {
    match *model {}
}

/// One configuration of a model on the tract path (`clouds`: `None` for CPU clouds).
#[cfg(feature = "tract")]
fn whole_on_tract(
    model: &vericonv_model::TractModel,
    onnx: &[u8],
    opts: &vericonv_cli::whole::WholeOptions,
    clouds: Option<OwnedClouds>,
    pads_on: Option<&dyn CloudBackend>,
    ort: Option<f64>,
) -> Result<vericonv_cli::whole::WholeRow, anyhow::Error> {
    vericonv_cli::whole::run_whole_tract(model, onnx, opts, clouds, pads_on, ort)
}

#[cfg(not(feature = "tract"))]
fn whole_on_tract(
    model: &std::convert::Infallible,
    _: &[u8],
    _: &vericonv_cli::whole::WholeOptions,
    _: Option<OwnedClouds>,
    _: Option<&dyn CloudBackend>,
    _: Option<f64>,
) -> Result<vericonv_cli::whole::WholeRow, anyhow::Error> {
    match *model {}
}

/// `vericonv bench --cloud`: the remote cloud under load.
pub(crate) fn bench_cloud(args: &BenchArgs) -> Result<(), anyhow::Error> {
    use vericonv_cli::load::{LoadOptions, run_load};
    let privacy = match args.privacy.first() {
        Some(&p) => PrivacyArgs { privacy: p, rank: args.rank }.privacy(),
        None => Privacy::default(),
    };
    let two = privacy.clouds() == 2;
    let remote = &args.remote;
    if two == remote.cloud_b.is_empty() {
        return Err((vericonv::Error::CloudCount {
            mode: privacy.name(),
            needed: privacy.clouds(),
            got: 1 + usize::from(!remote.cloud_b.is_empty()),
        })
        .into());
    }
    remote.check_distinct()?;
    warn_if_lowrank(privacy);
    // Cloud A's client (there is one: --cloud was given) and cloud B's, in two-server.
    let cloud_a = || -> anyhow::Result<_> {
        Ok(remote.connect(&remote.cloud)?.ok_or(vericonv::Error::CloudCount {
            mode: privacy.name(),
            needed: 1,
            got: 0,
        })?)
    };
    let connect = || -> Result<vericonv_cli::load::ClientClouds, anyhow::Error> {
        let b = remote.connect(&remote.cloud_b)?.map(|c| Box::new(c) as Box<dyn CloudBackend>);
        Ok((Box::new(cloud_a()?), b))
    };
    let info = cloud_a()?.info()?;
    println!(
        "vericonv bench --cloud: {} ({}; at most {} convolutions at once); {} clients × {} calls, privacy {}",
        remote.cloud.join(", "),
        info.backend,
        info.max_concurrent,
        args.clients,
        args.requests,
        privacy.label()
    );
    let batch = args.batches.as_ref().and_then(|b| b.first().copied()).unwrap_or(1);
    let layers = args.layers(SuiteChoice::Quick)?;
    println!(
        "{:<13} {:<16} {:>5} | {:>8} {:>6} {:>6} | {:>9} {:>9} | {:>10} {:>10} | {:>9}",
        "network", "layer", "batch", "verified", "busy", "failed", "calls/s", "images/s", "p50", "p99", "MB/call"
    );
    let mut rows = Vec::new();
    for l in &layers {
        let opts = LoadOptions { clients: args.clients, requests: args.requests, batch, privacy, seed: args.seed };
        let r = run_load(l, &connect, &opts)?;
        println!(
            "{:<13} {:<16} {:>5} | {:>8} {:>6} {:>6} | {:>9.1} {:>9.1} | {:>7.2} ms {:>7.2} ms | {:>9.3}",
            r.network,
            r.layer,
            r.batch,
            r.verified,
            r.busy,
            r.failed,
            r.calls_per_s,
            r.images_per_s,
            r.p50_ms,
            r.p99_ms,
            r.mb_sent_per_call
        );
        rows.push(r);
    }
    let out = args.out_dir()?;
    write_json(&rows, &out.join("bench-cloud.json"))?;
    println!("every verified answer equals the plaintext convolution; wrote {}/bench-cloud.json", out.display());
    if rows.iter().any(|r| r.failed > 0) {
        anyhow::bail!("some calls failed (neither verified nor refused as busy)");
    }
    Ok(())
}
