//! The `vericonv` command-line tool.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::builder::TypedValueParser;
use clap::{Parser, Subcommand, ValueEnum};
use rand::RngExt;

use indicatif::{ProgressBar, ProgressStyle};
use vericonv::client::{LayerConfig, PrivateConv, Timings};
use vericonv::cloud::{CloudBackend, Clouds, CpuBackend, Tamper, TamperingBackend};
use vericonv::geometry::{Conv2d, Padding};
use vericonv::keys::{KeyRng, os_rng, seeded_rng};
use vericonv::privacy::{LOWRANK_WARNING, Privacy};
use vericonv::reference::conv_i64;
use vericonv::verify::Mode;
use vericonv_cli::eval::{EvalOptions, EvalReport, evaluate};
#[cfg(feature = "gpu")]
use vericonv_gpu::{GpuBackend, GpuOptions, list_adapters};
use vericonv_model::data::Dataset;
use vericonv_model::quant::{PlainExecutor, QuantConfig, QuantModel};
use vericonv_model::{Model, argmax};
use vericonv_model::{PrivateConfig, PrivateExecutor};

/// Verifiable, privacy-preserving CNN inference on an untrusted cloud (GPU via wgpu, or CPU).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Private, verified LeNet-5 inference on 16 MNIST test images (built in: no files needed).
    Demo(DemoArgs),
    /// One private, verified convolution layer with per-phase timings.
    ConvDemo(ConvDemoArgs),
    /// Evaluate a model on a data set: float, quantized and private accuracy, agreement, timings.
    Eval(EvalArgs),
    /// Benchmark the client against plaintext convolutions on a suite of CNN layers.
    Bench(BenchArgs),
    /// Attack the privacy modes as a curious cloud: what it recovers of the inputs of every
    /// convolution of a model, and of its kernels, from what it receives.
    Attack(AttackArgs),
    /// List the wgpu adapters this machine offers.
    Adapters,
    /// Serve the untrusted cloud over gRPC; clients reach it with `--cloud grpc://ADDR`.
    Serve(ServeArgs),
    /// Convert a model (ONNX or native) to the native format (JSON + safetensors), BatchNorm
    /// folded, with the normalisation given and the layers named conv1, relu1, fc1…
    Convert(ConvertArgs),
    /// Classify one input privately: any ONNX model on tract, every convolution on the
    /// untrusted cloud(s), verified; prints the top classes and writes the logits as .npy.
    #[cfg(feature = "tract")]
    Run(RunArgs),
}

#[cfg(feature = "tract")]
#[derive(clap::Args)]
struct RunArgs {
    /// The model, an `.onnx` file (loaded by tract: any operator tract runs).
    #[arg(long)]
    model: PathBuf,
    /// The input: a PNG or JPEG image (resized to the model's input, scaled to [0, 1], then
    /// normalized with --mean/--std) or a `.npy` float array of one input or a batch.
    #[arg(long)]
    input: PathBuf,
    /// One image's input shape without the batch, e.g. 3,224,224: fixes the dimensions the
    /// model leaves dynamic [default: the model's own].
    #[arg(long, value_delimiter = ',')]
    input_shape: Option<Vec<usize>>,
    /// Per-channel mean subtracted from image pixels in [0, 1] (images only).
    #[arg(long, value_delimiter = ',', requires = "std", allow_negative_numbers = true)]
    mean: Option<Vec<f32>>,
    /// Per-channel standard deviation (images only).
    #[arg(long, value_delimiter = ',', requires = "mean")]
    std: Option<Vec<f32>>,
    /// How many classes to print per input.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000).map(usize::from))]
    top: usize,
    /// A text file of class names, one per line.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Where to write the logits (`.npy`, float32, batch × classes).
    #[arg(long, default_value = "logits.npy")]
    out: PathBuf,
    #[command(flatten)]
    protocol: ProtocolArgs,
}

#[derive(clap::Args)]
struct ConvertArgs {
    /// The model to convert: `.onnx` or native `.json`.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    norm: NormArgs,
    /// The native model to write (`.json`; the `.safetensors` goes beside it).
    #[arg(long)]
    out: PathBuf,
    /// The model's name in the file [default: the output's file name].
    #[arg(long)]
    name: Option<String>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The address to listen on (loopback by default; use 0.0.0.0:PORT to accept other hosts).
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: std::net::SocketAddr,
    /// Where the convolutions run.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// TLS certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); needs --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A file holding the bearer token every client must send.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Convolutions that may run at once; past that, calls get RESOURCE_EXHAUSTED at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1024).map(usize::from))]
    max_concurrent: usize,
    /// The largest request or reply, in MiB.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u16).range(1..=4096).map(usize::from))]
    max_message_mb: usize,
    /// The largest tensor a chunked call (`ConvStream`) may send or receive, in MiB.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=1_048_576).map(|v| v as usize))]
    max_tensor_mb: usize,
    /// The kernel cache's capacity, in MiB of masked kernels.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_048_576).map(|v| v as usize))]
    kernel_cache_mb: usize,
    /// The longest any call may run on the server, in seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    timeout_s: u64,
    /// Open connections at most; past it, new ones are closed at once.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=65_536).map(|v| v as usize))]
    max_connections: usize,
    /// Close a connection that has had no call in flight for this many seconds.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    idle_timeout_s: u64,
    /// Close a new connection that has not started HTTP/2 (or TLS) within this many seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    handshake_timeout_s: u64,
    /// Ping clients every this many seconds while their calls run; drop one that leaves a ping
    /// unanswered as long.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    keepalive_s: u64,
    /// After SIGTERM or SIGINT, let the calls in flight finish for at most this many seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3_600))]
    shutdown_grace_s: u64,
    /// Serve Prometheus metrics on http://ADDR/metrics (with --token-file, a scrape needs the
    /// same bearer token).
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Make the server lie: corrupt this fraction of answers (for demos and tests; every lie is
    /// caught by the client's verification).
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    tamper_rate: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SuiteChoice {
    /// LeNet-5, VGG-16 at 32×32 and 224×224, ResNet-18, MobileNet-v1.
    Full,
    /// A few small layers.
    Quick,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// `cpu`: the client against plaintext CPU convolutions. `gpu`: the GPU kernels (F_p tiled
    /// and simple, f32 tiled and simple) timed on the selected adapter; with --model, the
    /// cloud of the whole-model pipeline on the GPU.
    #[arg(long, value_enum, default_value_t = BenchBackend::Cpu)]
    backend: BenchBackend,
    /// With --model, in modes pad and split-model: where the client makes its pads
    /// (`Conv(K, R)`): its own CPU (the threads of the row) or its own GPU.
    #[arg(long, value_enum, default_value_t = BenchBackend::Cpu)]
    pads_backend: BenchBackend,
    /// Which layers [default: full; quick for --backend gpu on a CPU rasteriser].
    #[arg(long, value_enum)]
    suite: Option<SuiteChoice>,
    /// Only layers whose "network layer" name contains this text.
    #[arg(long)]
    only: Option<String>,
    /// Batch sizes [default: 1,16; 1 for --backend gpu on a CPU rasteriser].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..=4096).map(usize::from))]
    batches: Option<Vec<usize>>,
    /// Thread counts (0 means all cores); both the client and the baselines use them.
    #[arg(long, value_delimiter = ',', default_value = "1,0", value_parser = clap::value_parser!(u16).range(0..=1024).map(usize::from))]
    threads: Vec<usize>,
    /// Session length over which kernel encryption and KG are amortized.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|v| v as usize))]
    session: usize,
    /// Where to write bench.csv, bench.json and speedup-*.svg.
    #[arg(long, default_value = "reports/bench")]
    out: PathBuf,
    /// Seed for the random layer data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Timed runs per GPU kernel (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000).map(usize::from))]
    reps: usize,
    /// Privacy modes to measure the client in (--backend cpu), side by side when several.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "pad")]
    privacy: Vec<PrivacyChoice>,
    /// Mask rank ρ of mode lowrank.
    #[arg(long, default_value_t = vericonv::keys::DEFAULT_RANK, value_parser = clap::value_parser!(u16).range(1..=64).map(usize::from))]
    rank: usize,
    /// The F_p shader variant for --backend gpu [default: u64 when the adapter has SHADER_INT64].
    #[arg(long, value_enum)]
    variant: Option<VariantChoice>,
    /// With --cloud: load-test that remote cloud instead; concurrent clients run the whole
    /// private layer against it; throughput and p50/p99 latency [default suite: quick].
    #[command(flatten)]
    remote: RemoteArgs,
    /// Benchmark this whole model (`.onnx` or native `.json`) instead of the layer suite: the
    /// client's whole private pipeline against tract, onnxruntime and vericonv's float model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// With --cloud: concurrent clients.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024).map(usize::from))]
    clients: usize,
    /// With --cloud: private calls per client.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=10_000).map(usize::from))]
    requests: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum VariantChoice {
    /// Native 64-bit integers (needs SHADER_INT64).
    U64,
    /// 32-bit integers only (any adapter).
    U32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BenchBackend {
    /// The client's work against plaintext convolutions on the CPU.
    Cpu,
    /// The convolution kernels on the wgpu adapter.
    Gpu,
}

impl BenchArgs {
    /// The selected layers of the suite (`default` when --suite is not given).
    fn layers(&self, default: SuiteChoice) -> Result<Vec<vericonv_cli::bench::BenchLayer>, vericonv::Error> {
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
    fn progress(total: usize) -> ProgressBar {
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} configurations [{elapsed_precise}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    }

    /// Creates the output directory.
    fn out_dir(&self) -> Result<&Path, vericonv::Error> {
        std::fs::create_dir_all(&self.out).map_err(|e| vericonv::Error::io(&self.out, e))?;
        Ok(&self.out)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendChoice {
    /// The CPU cloud backend.
    Cpu,
    /// The wgpu backend, on whatever adapter is selected (llvmpipe included).
    Gpu,
    /// A real GPU if there is one; the CPU backend when the only adapter is a CPU rasteriser.
    Auto,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ModeChoice {
    Fast,
    Strict,
}

impl From<ModeChoice> for Mode {
    fn from(m: ModeChoice) -> Self {
        match m {
            ModeChoice::Fast => Mode::Fast,
            ModeChoice::Strict => Mode::Strict,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PrivacyChoice {
    /// One-time pads precomputed offline by the client, one cloud (docs/scheme.md §12; the
    /// default).
    Pad,
    /// Additive shares of the input to two non-colluding clouds (docs/scheme.md §11).
    TwoServer,
    /// Mode pad with the kernel split into additive shares between two non-colluding clouds:
    /// the weights stay private too (docs/scheme.md §14).
    SplitModel,
    /// The paper's rank-ρ mask. Its input privacy does not hold on structured data.
    Lowrank,
}

/// The privacy mode and its parameter, shared by every command that masks inputs.
#[derive(clap::Args)]
struct PrivacyArgs {
    /// How inputs are masked: pad (one cloud, one-time pads precomputed offline), two-server
    /// (two non-colluding clouds), split-model (pads, and the weights shared between two
    /// non-colluding clouds) or lowrank (the paper's scheme, broken on structured inputs).
    #[arg(long, value_enum, default_value_t = PrivacyChoice::Pad)]
    privacy: PrivacyChoice,
    /// Mask rank ρ of mode lowrank.
    #[arg(long, default_value_t = vericonv::keys::DEFAULT_RANK, value_parser = clap::value_parser!(u16).range(1..=64).map(usize::from))]
    rank: usize,
}

impl PrivacyArgs {
    fn privacy(&self) -> Privacy {
        match self.privacy {
            PrivacyChoice::Lowrank => Privacy::LowRank { rank: self.rank },
            PrivacyChoice::TwoServer => Privacy::TwoServer,
            PrivacyChoice::Pad => Privacy::Pad,
            PrivacyChoice::SplitModel => Privacy::SplitModel,
        }
    }
}

/// Options shared by every command that runs the protocol.
#[derive(clap::Args)]
struct ProtocolArgs {
    /// Where the untrusted cloud runs (cloud A in mode two-server).
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Where cloud B runs in mode two-server.
    #[arg(long, value_enum, default_value_t = BackendChoice::Cpu)]
    backend_b: BackendChoice,
    #[command(flatten)]
    privacy: PrivacyArgs,
    /// Verification mode.
    #[arg(long, value_enum, default_value_t = ModeChoice::Fast)]
    mode: ModeChoice,
    /// Independent verification rounds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64).map(usize::from))]
    rounds: usize,
    /// Seed the client's CSPRNG, for reproducible runs only: keys, masks, pads and
    /// verification vectors all become predictable to anyone who knows the seed. The default
    /// seeds from the OS.
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Remote clouds (`vericonv serve`), shared by every command that can use them.
#[derive(clap::Args)]
struct RemoteArgs {
    /// A remote cloud (`grpc://HOST:PORT` or `grpcs://HOST:PORT`, started with `vericonv serve`)
    /// instead of a local backend; repeat it for replicas of the same cloud. Cloud A in mode
    /// two-server.
    #[arg(long = "cloud", value_name = "URL")]
    cloud: Vec<String>,
    /// Mode two-server: cloud B's server(s). Must differ from --cloud.
    #[arg(long = "cloud-b", value_name = "URL")]
    cloud_b: Vec<String>,
    /// A file holding the bearer token of the remote clouds.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// A PEM CA certificate to trust for grpcs:// clouds.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Allow plaintext grpc:// to hosts that are not loopback. Masked tensors, shares, seeds and
    /// the token then cross the network unencrypted; every run warns. Without it, such hosts
    /// need grpcs://.
    #[arg(long)]
    insecure_plaintext: bool,
}

impl RemoteArgs {
    /// Refuses one cloud for both shares: URLs that resolve to a common socket address.
    fn check_distinct(&self) -> Result<(), vericonv::Error> {
        match vericonv_remote::same_cloud(&self.cloud, &self.cloud_b)? {
            Some(url) => Err(vericonv::Error::SameCloudTwice(url)),
            None => Ok(()),
        }
    }

    /// A client of the replicas `urls` with these options, or `None` when there are none.
    fn connect(&self, urls: &[String]) -> Result<Option<vericonv_remote::RemoteBackend>, vericonv::Error> {
        if urls.is_empty() {
            return Ok(None);
        }
        let read = |p: &Path| std::fs::read(p).map_err(|e| vericonv::Error::io(p, e));
        let opts = vericonv_remote::RemoteOptions {
            token: self.token_file.as_deref().map(vericonv_remote::read_token).transpose()?,
            tls_ca: self.tls_ca.as_deref().map(read).transpose()?,
            allow_plaintext: self.insecure_plaintext,
            ..vericonv_remote::RemoteOptions::default()
        };
        let remote = vericonv_remote::RemoteBackend::connect(urls, opts)?;
        for url in remote.plaintext_remote_endpoints() {
            eprintln!(
                "warning: --insecure-plaintext: {url} is not loopback; masked tensors, shares and the token cross the network unencrypted"
            );
        }
        Ok(Some(remote))
    }
}

impl ProtocolArgs {
    fn rng(&self) -> (KeyRng, String) {
        match self.seed {
            Some(s) => (seeded_rng(s), format!("seeded with {s} (reproducible; not for real use)")),
            None => (os_rng(), "seeded from the OS".into()),
        }
    }

    fn privacy(&self) -> Privacy {
        self.privacy.privacy()
    }

    /// The remote cloud at `urls`, or else the local backend `choice`.
    fn backend_or_remote(
        &self,
        choice: BackendChoice,
        urls: &[String],
    ) -> Result<(Box<dyn CloudBackend>, String), vericonv::Error> {
        let Some(remote) = self.remote.connect(urls)? else { return select_backend(choice) };
        let info = remote.info()?;
        Ok((Box::new(remote), format!("remote, serving with {} (vericonv {})", info.backend, info.version)))
    }

    /// The private-inference settings these options select.
    fn private_config(&self, outsource_linear: bool) -> PrivateConfig {
        PrivateConfig {
            mode: self.mode.into(),
            rounds: self.rounds,
            privacy: self.privacy(),
            outsource_linear,
            rotate_after_images: None,
        }
    }

    /// The cloud(s) of the selected privacy mode, each wrapped in a [`TamperingBackend`] that
    /// corrupts `tamper_rate` of its answers (cloud A, B or both in mode two-server), and the
    /// reason for the backend choice.
    fn clouds(&self, tamper_rate: f64, tamper: TamperChoice) -> Result<CloudSetup, vericonv::Error> {
        let two = self.privacy().clouds() == 2;
        if !self.remote.cloud_b.is_empty() && !two {
            return Err(vericonv::Error::CloudCount { mode: self.privacy().name(), needed: 1, got: 2 });
        }
        self.remote.check_distinct()?;
        let (a, why) = self.backend_or_remote(self.backend, &self.remote.cloud)?;
        // The cheating clouds draw from their own streams, never the client's.
        let stream = |k: u64| self.seed.map_or_else(|| os_rng().random(), |s| s.rotate_left(17) ^ k);
        let rate_a = if tamper != TamperChoice::B { tamper_rate } else { 0.0 };
        let a = TamperingBackend::new(a, &Tamper::ALL, rate_a, stream(0xA11CE));
        if !two {
            return Ok(CloudSetup { a, b: None, why });
        }
        let (b, why_b) = self.backend_or_remote(self.backend_b, &self.remote.cloud_b)?;
        let rate_b = if tamper != TamperChoice::A { tamper_rate } else { 0.0 };
        let b = TamperingBackend::new(b, &Tamper::ALL, rate_b, stream(0xB0B));
        Ok(CloudSetup { a, b: Some(b), why: format!("A: {why}; B: {why_b}") })
    }
}

/// Which cloud cheats in mode two-server when a tamper rate is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TamperChoice {
    /// Cloud A only.
    A,
    /// Cloud B only.
    B,
    /// Both clouds, independently.
    Both,
}

/// The clouds of one run (each possibly cheating on purpose).
struct CloudSetup {
    a: TamperingBackend<Box<dyn CloudBackend>>,
    b: Option<TamperingBackend<Box<dyn CloudBackend>>>,
    why: String,
}

impl CloudSetup {
    fn clouds(&self) -> Clouds<'_> {
        match &self.b {
            Some(b) => Clouds::Two(&self.a, b),
            None => Clouds::One(&self.a),
        }
    }

    /// Answers corrupted so far, over all clouds.
    fn corrupted(&self) -> u64 {
        self.a.corrupted() + self.b.as_ref().map_or(0, TamperingBackend::corrupted)
    }
}

/// Prints the one-line warning of mode lowrank (docs/scheme.md §9) to stderr.
fn warn_if_lowrank(privacy: Privacy) {
    if matches!(privacy, Privacy::LowRank { .. }) {
        eprintln!("{LOWRANK_WARNING}");
    }
}

/// A fraction in [0, 1].
fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} is not in [0, 1]")),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(clap::Args)]
struct DemoArgs {
    #[command(flatten)]
    protocol: ProtocolArgs,
    /// Let the cloud corrupt this fraction of layer calls, to watch verification catch them.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    tamper_rate: f64,
    /// In mode two-server: which cloud cheats.
    #[arg(long, value_enum, default_value_t = TamperChoice::Both)]
    tamper_cloud: TamperChoice,
}

#[derive(clap::Args)]
struct ConvDemoArgs {
    #[command(flatten)]
    protocol: ProtocolArgs,
    /// Let the cloud cheat (add 1 to one output entry) to watch verification reject it.
    #[arg(long)]
    tamper: bool,
    /// In mode two-server: which cloud cheats.
    #[arg(long, value_enum, default_value_t = TamperChoice::A)]
    tamper_cloud: TamperChoice,
}

/// The input normalisation, for models whose file does not carry it (PyTorch's ONNX exports).
#[derive(clap::Args)]
struct NormArgs {
    /// Per-channel mean of `(x - mean) / std` on pixels in [0, 1], e.g. 0.485,0.456,0.406
    /// (replaces the model's; ONNX files carry it only as metadata `vericonv.mean`).
    #[arg(long, value_delimiter = ',', requires = "std", allow_negative_numbers = true)]
    mean: Option<Vec<f32>>,
    /// Per-channel standard deviation, e.g. 0.229,0.224,0.225 (metadata `vericonv.std`).
    #[arg(long, value_delimiter = ',', requires = "mean")]
    std: Option<Vec<f32>>,
}

#[derive(clap::Args)]
struct EvalArgs {
    /// The model: a native `.json` (with its `.safetensors` beside it) or an `.onnx` file.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    norm: NormArgs,
    /// mnist, fashion-mnist, digits (test splits under --data-dir), idx:IMAGES,LABELS,
    /// cifar10:FILE[,FILE…], cifar100:FILE[,FILE…] or folder:DIR.
    #[arg(long)]
    dataset: String,
    /// Evaluate only the first N images.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..).map(|v| v as usize))]
    limit: Option<usize>,
    /// Images per batch (one private call per layer per batch).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024).map(usize::from))]
    batch: usize,
    #[command(flatten)]
    protocol: ProtocolArgs,
    /// Weight bits.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=16))]
    weight_bits: u32,
    /// Activation bits.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=16))]
    act_bits: u32,
    /// Calibrate activation scales on the first N training images (for the built-in sets; other
    /// sets use their own first N images) instead of computing them per image.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|v| v as usize))]
    calibrate: Option<usize>,
    /// Outsource linear layers too (weaker masks; docs/scheme.md §9).
    #[arg(long)]
    outsource_linear: bool,
    /// One image's input shape, e.g. 3,224,224, for an ONNX model that runs on tract and leaves
    /// its spatial dimensions dynamic.
    #[arg(long, value_delimiter = ',')]
    input_shape: Option<Vec<usize>>,
    /// Let the cloud corrupt this fraction of layer calls; every one must be detected.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    tamper_rate: f64,
    /// In mode two-server: which cloud cheats.
    #[arg(long, value_enum, default_value_t = TamperChoice::Both)]
    tamper_cloud: TamperChoice,
    /// Where the built-in data sets live.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Write the JSON report here (default: reports/<model>-<dataset>-<privacy>.json).
    #[arg(long)]
    report: Option<PathBuf>,
}

#[derive(clap::Args)]
struct AttackArgs {
    /// The model: a native `.json` (with its `.safetensors` beside it) or an `.onnx` file.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    norm: NormArgs,
    /// mnist, fashion-mnist, digits (test splits under --data-dir), or any --dataset of eval.
    #[arg(long)]
    dataset: String,
    /// Attack only layers whose name contains this text.
    #[arg(long)]
    layer: Option<String>,
    #[command(flatten)]
    privacy: PrivacyArgs,
    /// Images attacked (the first N of the test split).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000).map(|v| v as usize))]
    limit: usize,
    /// Images per private call.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1024).map(usize::from))]
    batch: usize,
    /// Seed of the simulated client's keys and of the attacker's choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the built-in data sets live.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Where to write the JSON report and the PNG pictures.
    #[arg(long, default_value = "reports/attack")]
    out: PathBuf,
    /// With --cloud: run the private layers on that remote cloud and attack what it was sent.
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Picks the cloud backend and explains the choice.
#[cfg(feature = "gpu")]
fn select_backend(choice: BackendChoice) -> Result<(Box<dyn CloudBackend>, String), vericonv::Error> {
    match choice {
        BackendChoice::Cpu => Ok((Box::new(CpuBackend::new()), "requested".into())),
        BackendChoice::Gpu => Ok((Box::new(GpuBackend::new(&GpuOptions::default())?), "requested".into())),
        BackendChoice::Auto => match GpuBackend::new(&GpuOptions::default()) {
            Ok(gpu) if !gpu.info().is_cpu() => Ok((Box::new(gpu), "auto: a real GPU was found".into())),
            Ok(gpu) => Ok((
                Box::new(CpuBackend::new()),
                format!(
                    "auto: the only adapter, {}, is a CPU rasteriser, so the CPU backend is faster; use --backend gpu to run the WGSL shaders on it",
                    gpu.info().name
                ),
            )),
            Err(e) => Ok((Box::new(CpuBackend::new()), format!("auto: no usable GPU ({e})"))),
        },
    }
}

/// Without the `gpu` feature only the CPU backend exists.
#[cfg(not(feature = "gpu"))]
fn select_backend(choice: BackendChoice) -> Result<(Box<dyn CloudBackend>, String), vericonv::Error> {
    match choice {
        BackendChoice::Gpu => {
            Err(vericonv::Error::Unsupported("this build has no GPU backend (rebuild with the `gpu` feature)".into()))
        }
        _ => Ok((Box::new(CpuBackend::new()), "this build has no GPU backend".into())),
    }
}

#[cfg(feature = "gpu")]
fn adapters() {
    let adapters = list_adapters();
    if adapters.is_empty() {
        println!(
            "no wgpu adapter found (install a GPU driver, or Mesa's lavapipe: apt-get install mesa-vulkan-drivers)"
        );
    }
    adapters.iter().for_each(|a| println!("{a}"));
}

#[cfg(not(feature = "gpu"))]
fn adapters() {
    println!("this build has no GPU backend (rebuild with the `gpu` feature)");
}

fn ms(d: Duration) -> String {
    format!("{:>9.3} ms", d.as_secs_f64() * 1e3)
}

/// The built-in LeNet-5 for MNIST and 16 MNIST test images.
const DEMO_MODEL: &[u8] = include_bytes!("../../../models/lenet5-mnist.json");
const DEMO_WEIGHTS: &[u8] = include_bytes!("../../../models/lenet5-mnist.safetensors");
const DEMO_IMAGES: &[u8] = include_bytes!("../../../models/demo/mnist-t10k-16-images.idx");
const DEMO_LABELS: &[u8] = include_bytes!("../../../models/demo/mnist-t10k-16-labels.idx");

fn demo(args: &DemoArgs) -> Result<(), vericonv::Error> {
    let p = &args.protocol;
    let model = Model::from_bytes(DEMO_MODEL, DEMO_WEIGHTS)?;
    let data = Dataset::from_idx_bytes("mnist (first 16 test images)", DEMO_IMAGES, DEMO_LABELS)?;
    let qm = QuantModel::new(&model, QuantConfig::default())?;
    let setup = p.clouds(args.tamper_rate, args.tamper_cloud)?;
    let (rng, seed_note) = p.rng();
    warn_if_lowrank(p.privacy());
    println!("vericonv demo: private, verified LeNet-5 inference on {} MNIST test images", data.len());
    println!("  cloud   : {}", setup.clouds().name());
    println!("            ({})", setup.why);
    println!(
        "  client  : CSPRNG ChaCha20 {seed_note}; privacy {}, {} verification, {} round(s); 8-bit weights and activations",
        p.privacy().label(),
        Mode::from(p.mode).name(),
        p.rounds
    );
    let private = p.private_config(false);
    // One batch: predictions of all three models for the same images.
    let (images, labels) = data.slice(0..data.len());
    let classes = model.num_classes();
    let float_pred = argmax(&model.forward_float(images)?, classes);
    let (quant_logits, _) = qm.forward(images, &mut PlainExecutor)?;
    let mut exec = PrivateExecutor::new(&qm, setup.clouds(), &private, rng)?;
    if p.privacy().uses_pads() {
        let offline = exec.prepare_pads(data.len(), &CpuBackend::new())?;
        println!(
            "  offline : {} one-time pads per layer precomputed in {} (Conv(K, R) on the client's own CPU: a full convolution)",
            data.len(),
            ms(offline)
        );
    }
    let start = Instant::now();
    let private = qm.forward(images, &mut exec);
    let total = start.elapsed();
    println!("  layers  :");
    for s in exec.stats() {
        if !s.outsourced {
            println!(
                "    {:<6} computed by the client in {} (linear layers stay local by default)",
                s.name,
                ms(s.client_compute)
            );
            continue;
        }
        let verdict = if s.rejected > 0 {
            "REJECTED by verification".to_string()
        } else if s.verified > 0 {
            format!("verified ({} call)", s.verified)
        } else {
            "not reached".to_string()
        };
        let t = &s.timings;
        println!(
            "    {:<6} keygen {} encrypt {} cloud {} verify {} decrypt {}  {verdict}",
            s.name,
            ms(t.keygen),
            ms(t.encrypt),
            ms(t.cloud),
            ms(t.verify),
            ms(t.decrypt)
        );
    }
    let (logits, times) = match private {
        Ok(v) => v,
        Err(e @ (vericonv::Error::VerificationFailed { .. } | vericonv::Error::MalformedAnswer { .. })) => {
            println!("  verdict : the cloud cheated and was caught ({e}); no prediction is reported");
            return Err(e);
        }
        Err(e) => {
            println!("  verdict : the private run failed ({e}); no prediction is reported");
            return Err(e);
        }
    };
    let pred = argmax(&logits, classes);
    println!("  predictions (private / true):");
    let line: Vec<String> =
        pred.iter().zip(labels).map(|(p, l)| format!("{p}/{l}{}", if p == l { "" } else { "✗" })).collect();
    println!("    {}", line.join("  "));
    let correct = pred.iter().zip(labels).filter(|(p, l)| p == l).count();
    let bit_equal = logits.iter().zip(&quant_logits).all(|(a, b)| a.to_bits() == b.to_bits());
    let client: Duration = exec.stats().map(|s| s.timings.client() + s.client_compute).sum::<Duration>()
        + times.nonlinear
        + times.quantize;
    let cloud: Duration = exec.stats().map(|s| s.timings.cloud).sum();
    let offline: Duration = exec.stats().map(|s| s.offline).sum();
    println!(
        "  accuracy: {correct}/{} private; float model {}/{}",
        labels.len(),
        float_pred.iter().zip(labels).filter(|(p, l)| p == l).count(),
        labels.len()
    );
    println!(
        "  time    : total {}; client {} (keys, masking, verification, non-linear layers); cloud {}{}",
        ms(total),
        ms(client),
        ms(cloud),
        if offline.is_zero() { String::new() } else { format!("; offline pads {} (not in the total)", ms(offline)) }
    );
    println!(
        "  agreement with the quantized plaintext model: logits {}",
        if bit_equal { "bit-identical for every image" } else { "DIFFER (a bug: please report it)" }
    );
    if bit_equal {
        Ok(())
    } else {
        Err(vericonv::Error::Internal("private logits differ from the quantized plaintext model".into()))
    }
}

fn bench(args: &BenchArgs) -> Result<(), vericonv::Error> {
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
fn print_modes_side_by_side(rows: &[vericonv_cli::bench::BenchRow], privacy: &[Privacy]) {
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

/// Writes `rows` as pretty JSON.
fn write_json<T: serde::Serialize>(rows: &[T], path: &Path) -> Result<(), vericonv::Error> {
    let json = serde_json::to_string_pretty(rows)
        .map_err(|e| vericonv::Error::Internal(format!("serializing the bench report: {e}")))?;
    std::fs::write(path, json).map_err(|e| vericonv::Error::io(path, e))
}

/// `vericonv bench --backend gpu`: every kernel checked, then timed, on the selected adapter.
#[cfg(feature = "gpu")]
fn bench_gpu(args: &BenchArgs) -> Result<(), vericonv::Error> {
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
fn bench_gpu(_args: &BenchArgs) -> Result<(), vericonv::Error> {
    Err(vericonv::Error::Unsupported("built without the `gpu` feature".into()))
}

/// Loads a native or ONNX model, applies `--mean/--std`, and says which normalisation is in
/// use (and warns when an ONNX model has none: PyTorch exports never do).
fn load_model(path: &Path, norm: &NormArgs) -> Result<Model, vericonv::Error> {
    let (model, recorded) = match path.extension().and_then(|e| e.to_str()) {
        Some("onnx") => {
            let proto = vericonv_model::onnx::read_model(path)?;
            let recorded = proto.metadata_props.iter().any(|m| m.key == "vericonv.mean" || m.key == "vericonv.std");
            let name = path.file_stem().map_or_else(|| "onnx".to_string(), |s| s.to_string_lossy().to_string());
            (vericonv_model::onnx::import::import_proto(&proto, &name)?, recorded)
        }
        _ => (Model::load(path)?, true),
    };
    let (model, source) = match (&norm.mean, &norm.std) {
        (Some(mean), Some(std)) => (model.with_normalization(mean.clone(), std.clone())?, "from --mean/--std"),
        _ if recorded => (model, "from the model file"),
        _ => {
            eprintln!(
                "warning: {} records no input normalisation (ONNX metadata vericonv.mean / vericonv.std); using mean 0, std 1. Pass --mean and --std (for torchvision models: --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225)",
                path.display()
            );
            (model, "none recorded")
        }
    };
    let i = model.input();
    eprintln!(
        "input: {}×{}×{}, normalised as (x - {:?}) / {:?} ({source})",
        i.channels, i.height, i.width, i.mean, i.std
    );
    Ok(model)
}

fn eval(args: &EvalArgs) -> Result<(), vericonv::Error> {
    let p = &args.protocol;
    let model = match load_model(&args.model, &args.norm) {
        Ok(model) => model,
        // A graph whose operators the native importer does not know runs on tract, its
        // convolutions private. A file it refuses as invalid (non-finite weights, a negative
        // variance…) stays refused.
        #[cfg(feature = "tract")]
        Err(e @ vericonv::Error::Unsupported(_)) if args.model.extension().is_some_and(|x| x == "onnx") => {
            return eval_tract(args, &e);
        }
        Err(e) => return Err(e),
    };
    let i = &model.input();
    let mut data = Dataset::open(&args.dataset, &args.data_dir, false, i.channels, i.height, i.width)?;
    let mut qm = QuantModel::new(&model, QuantConfig { weight_bits: args.weight_bits, act_bits: args.act_bits })?;
    if let Some(n) = args.calibrate {
        let sample = Dataset::open(&args.dataset, &args.data_dir, true, i.channels, i.height, i.width)?;
        qm.calibrate(sample.slice(0..n).0)?;
    }
    if let Some(n) = args.limit {
        data.truncate(n);
    }
    let setup = p.clouds(args.tamper_rate, args.tamper_cloud)?;
    let (rng, seed_note) = p.rng();
    warn_if_lowrank(p.privacy());
    eprintln!(
        "model {} ({} layers), data set {} ({} images); privacy {}; cloud {} ({}); CSPRNG {seed_note}",
        model.name(),
        model.nodes().len(),
        data.name(),
        data.len(),
        p.privacy().label(),
        setup.clouds().name(),
        setup.why
    );
    let opts = EvalOptions { batch: args.batch, private: p.private_config(args.outsource_linear) };
    let bar = ProgressBar::new(data.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images [{elapsed_precise} < {eta_precise}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut report = evaluate(&qm, &data, setup.clouds(), &opts, rng, |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    report.corrupted_calls = setup.corrupted();
    finish_eval(args, report, if qm.is_calibrated() { "calibrated" } else { "dynamic" })
}

/// `vericonv eval` on tract, for an ONNX graph the native importer refused with `refused`.
#[cfg(feature = "tract")]
fn eval_tract(args: &EvalArgs, refused: &vericonv::Error) -> Result<(), vericonv::Error> {
    use std::sync::Arc;
    use vericonv_model::tract::TractModel;
    let p = &args.protocol;
    eprintln!("the native importer refuses {} ({refused}); running it on tract", args.model.display());
    if args.calibrate.is_some() || args.outsource_linear {
        return Err(vericonv::Error::Unsupported(
            "--calibrate and --outsource-linear on a model that runs on tract".into(),
        ));
    }
    let qc = QuantConfig { weight_bits: args.weight_bits, act_bits: args.act_bits };
    let model = TractModel::open(&args.model, args.input_shape.as_deref(), &qc)?;
    let &[c, h, w] = model.image_shape() else {
        return Err(vericonv::Error::Unsupported(format!(
            "eval on images of a model whose input is {:?} (use vericonv run with .npy inputs)",
            model.image_shape()
        )));
    };
    let mut data = Dataset::open(&args.dataset, &args.data_dir, false, c, h, w)?;
    if let Some(n) = args.limit {
        data.truncate(n);
    }
    let (mean, std) = (args.norm.mean.clone().unwrap_or_default(), args.norm.std.clone().unwrap_or_default());
    if args.norm.mean.is_none() {
        eprintln!("warning: no --mean/--std given: the model gets pixels in [0, 1] as they are");
    }
    let setup = p.clouds(args.tamper_rate, args.tamper_cloud)?;
    let (rng, seed_note) = p.rng();
    warn_if_lowrank(p.privacy());
    eprintln!(
        "model {} on tract ({} nodes, {} convolutions private), data set {} ({} images); privacy {}; cloud {} ({}); CSPRNG {seed_note}",
        model.name(),
        model.node_count(),
        model.private_layers().count(),
        data.name(),
        data.len(),
        p.privacy().label(),
        setup.clouds().name(),
        setup.why
    );
    let CloudSetup { a, b, .. } = setup;
    let (a, b) = (Arc::new(a), b.map(Arc::new));
    let clouds = (a.clone() as Arc<dyn CloudBackend>, b.clone().map(|b| b as Arc<dyn CloudBackend>));
    let opts = EvalOptions { batch: args.batch, private: p.private_config(false) };
    let plane = h * w;
    let at = |v: &[f32], ch: usize, default: f32| v.get(ch).or(v.first()).copied().unwrap_or(default);
    let normalize = |images: &[f32]| -> Vec<f32> {
        images
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let ch = (i / plane) % c;
                (v - at(&mean, ch, 0.0)) / at(&std, ch, 1.0)
            })
            .collect()
    };
    let bar = ProgressBar::new(data.len() as u64);
    let mut report = vericonv_cli::eval::evaluate_tract(&model, &data, clouds, &opts, rng, normalize, |done| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    report.corrupted_calls = a.corrupted() + b.as_ref().map_or(0, |b| b.corrupted());
    finish_eval(args, report, "dynamic")
}

/// Prints an evaluation's report, writes its JSON, and says whether it went as it must: private
/// logits equal to the quantized model's and every corrupted answer caught.
fn finish_eval(args: &EvalArgs, report: EvalReport, scales: &str) -> Result<(), vericonv::Error> {
    let p = &args.protocol;
    let pct = |x: f64| format!("{:6.2}%", 100.0 * x);
    println!(
        "{} on {} ({} images, privacy {}, {} weights / {} activations bits, {} activation scales)",
        report.model, report.dataset, report.images, report.privacy, args.weight_bits, args.act_bits, scales
    );
    println!(
        "  accuracy   float {}   quantized {}   private {}   (drop quantized vs float {:+.2} pp)",
        pct(report.float_accuracy),
        pct(report.quantized_accuracy),
        pct(report.private_accuracy),
        100.0 * (report.quantized_accuracy - report.float_accuracy)
    );
    println!(
        "  agreement  {}/{} private predictions equal the quantized plaintext ones; {}/{} logits bit-identical",
        report.prediction_agreement, report.private_answered, report.logits_bit_identical, report.private_answered
    );
    if args.tamper_rate > 0.0 || report.private_rejected > 0 {
        let rejected: u64 = report.layers.iter().map(|l| l.rejected).sum();
        println!(
            "  tampering  {} corrupted cloud answers, {rejected} rejected by verification; {} images reported as errors, none as predictions",
            report.corrupted_calls, report.private_rejected
        );
    }
    println!(
        "  client     masking {:.3} s, verification {:.3} s, non-linear layers {:.3} s, quantization {:.3} s, local linear layers {:.3} s",
        report.client_masking_s,
        report.client_verify_s,
        report.client_nonlinear_s,
        report.client_quantize_s,
        report.client_linear_s
    );
    println!("  cloud      {:.3} s on {}", report.cloud_s, report.backend);
    if p.privacy().uses_pads() {
        println!(
            "  offline    {:.3} s precomputing one-time pads (Conv(K, R) for every image and layer, on the client's CPU; not in the client time above)",
            report.client_offline_s
        );
    }
    println!(
        "  plaintext  float model on this CPU {:.3} s; quantized model on this CPU {:.3} s",
        report.float_plaintext_s, report.quantized_plaintext_s
    );
    let path = args.report.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "reports/{}.json",
            file_safe(&format!("{}-{}-{}", report.model, report.dataset, p.privacy().name()))
        ))
    });
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| vericonv::Error::io(dir, e))?;
    }
    let json = serde_json::to_string_pretty(&report)
        .map_err(|e| vericonv::Error::Internal(format!("serializing the report: {e}")))?;
    std::fs::write(&path, json).map_err(|e| vericonv::Error::io(&path, e))?;
    println!("  report     {}", path.display());
    let rejected: u64 = report.layers.iter().map(|l| l.rejected).sum();
    // In mode two-server with both clouds cheating, one rejected call may hold two corrupted
    // answers.
    let cheats_per_call = if p.privacy().clouds() == 2 && args.tamper_cloud == TamperChoice::Both { 2 } else { 1 };
    if rejected * cheats_per_call < report.corrupted_calls || report.logits_bit_identical != report.private_answered {
        return Err(vericonv::Error::Internal(
            "private inference disagreed with the quantized model or missed a corrupted answer".into(),
        ));
    }
    // Rejections beyond the answers corrupted here on purpose: a cloud (a remote server) lied.
    if rejected > report.corrupted_calls {
        let caught = vericonv::Error::CheatingCloud {
            rejected: rejected - report.corrupted_calls,
            images: report.private_rejected,
        };
        println!("  verdict    {caught}");
        return Err(caught);
    }
    Ok(())
}

/// A file-name-safe version of `s`: letters, digits, `-`, `_` and `.` kept, the rest `_`.
fn file_safe(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}

fn attack(args: &AttackArgs) -> Result<(), vericonv::Error> {
    use vericonv_cli::attack::{AttackOptions, attack_model, format_table, write_examples_png};
    let model = load_model(&args.model, &args.norm)?;
    let i = &model.input();
    let mut data = Dataset::open(&args.dataset, &args.data_dir, false, i.channels, i.height, i.width)?;
    data.truncate(args.limit);
    let qm = QuantModel::new(&model, QuantConfig::default())?;
    let privacy = args.privacy.privacy();
    warn_if_lowrank(privacy);
    eprintln!(
        "attacking {} on {} ({} images), privacy {}: the attacker sees only what each cloud receives",
        model.name(),
        data.name(),
        data.len(),
        privacy.label()
    );
    let opts = AttackOptions {
        privacy,
        layer: args.layer.clone(),
        batch: args.batch,
        seed: args.seed,
        ..AttackOptions::default()
    };
    let convs =
        qm.layers().filter(|l| !l.is_linear && args.layer.as_ref().is_none_or(|f| l.name.contains(f.as_str()))).count();
    let bar = ProgressBar::new((convs * data.len()) as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} layer-images [{elapsed_precise} < {eta_precise}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut layers_done = 0;
    let mut current = String::new();
    args.remote.check_distinct()?;
    let (cloud_a, cloud_b) = (args.remote.connect(&args.remote.cloud)?, args.remote.connect(&args.remote.cloud_b)?);
    let clouds = (cloud_a.as_ref().map(|c| c as &dyn CloudBackend), cloud_b.as_ref().map(|c| c as &dyn CloudBackend));
    let results = attack_model(&qm, &data, &opts, clouds, |layer, done, total| {
        if layer != current {
            current = layer.to_string();
            layers_done += 1;
        }
        bar.set_message(layer.to_string());
        bar.set_position(((layers_done - 1) * total + done.min(total)) as u64);
    })?;
    bar.finish_and_clear();
    if results.is_empty() {
        return Err(vericonv::Error::Unsupported(format!(
            "model {} has no convolution matching the --layer filter",
            model.name()
        )));
    }
    let rows: Vec<_> = results.iter().map(|(r, _)| r.clone()).collect();
    print!("{}", format_table(&rows));
    println!(
        "images%/pixels%: recovered exactly by the best-placed cloud (every pixel of every channel, channel order up to π); \
         kernel%: slices of K' recovered exactly up to sign; certain%: the only candidate; \
         χ² p: uniformity of the received elements (pooled high bits, and per position); full rank: channel planes of full rank"
    );
    std::fs::create_dir_all(&args.out).map_err(|e| vericonv::Error::io(&args.out, e))?;
    let stem = file_safe(&format!("{}-{}-{}", model.name(), data.name(), privacy.label().replace(' ', "")));
    write_json(&rows, &args.out.join(format!("{stem}.json")))?;
    for (_, ex) in &results {
        write_examples_png(ex, 127, &args.out.join(format!("{stem}-{}.png", file_safe(&ex.layer))))?;
    }
    println!(
        "wrote {}/{stem}.json and one PNG per layer (originals beside recoveries; red: not recovered)",
        args.out.display()
    );
    Ok(())
}

fn conv_demo(args: &ConvDemoArgs) -> Result<(), vericonv::Error> {
    // LeNet-5's second convolution on a batch of 4 images of 8-bit activations.
    let geom = Conv2d::builder(6, 16, (14, 14), (5, 5)).padding(Padding::uniform(0)).build()?;
    let batch = 4;
    let p = &args.protocol;
    let (mut rng, seed_note) = p.rng();
    let kernel: Vec<i32> = (0..geom.kernel_len()).map(|_| rng.random_range(-127..=127)).collect();
    let bias: Vec<i32> = (0..geom.cout()).map(|_| rng.random_range(-1000..=1000)).collect();
    let x: Vec<i32> = (0..batch * geom.image_len()).map(|_| rng.random_range(-127..=127)).collect();

    // With --tamper every answer is corrupted; the first strategy is "add 1 to one entry".
    let setup = p.clouds(if args.tamper { 1.0 } else { 0.0 }, args.tamper_cloud)?;
    let mode = Mode::from(p.mode);
    warn_if_lowrank(p.privacy());
    println!("vericonv conv-demo: one private, verified convolution");
    println!("  cloud   : {}", setup.clouds().name());
    println!("            ({})", setup.why);
    println!(
        "  layer   : LeNet-5 conv2, input {batch}×{}×{}×{}, kernel {}×{}×{}×{}, stride 1, no padding -> output {batch}×{}×{}×{} (M = {} terms per output)",
        geom.cin(),
        geom.h(),
        geom.w(),
        geom.cout(),
        geom.cin_per_group(),
        geom.kh(),
        geom.kw(),
        geom.cout(),
        geom.ho(),
        geom.wo(),
        geom.m()
    );
    println!(
        "  client  : CSPRNG ChaCha20 {seed_note}; privacy {}, {} verification, {} round(s)",
        p.privacy().label(),
        mode.name(),
        p.rounds
    );

    let cfg = LayerConfig {
        name: "lenet.conv2".into(),
        privacy: p.privacy(),
        mode,
        rounds: p.rounds,
        ..LayerConfig::default()
    };
    let mut layer = PrivateConv::new(geom, &kernel, Some(&bias), cfg, &mut rng)?;
    if p.privacy().uses_pads() {
        let start = Instant::now();
        let pool = layer.generate_pads(batch, &CpuBackend::new(), &mut rng)?;
        layer.add_pads(pool)?;
        println!(
            "  offline : {batch} one-time pads in {} (R uniform, U = Conv(K, R) on the client's own CPU)",
            ms(start.elapsed())
        );
    }
    let result = layer.run(setup.clouds(), &x, &mut rng);

    let start = Instant::now();
    let k64: Vec<i64> = kernel.iter().map(|&v| i64::from(v)).collect();
    let x64: Vec<i64> = x.iter().map(|&v| i64::from(v)).collect();
    let mut plain = conv_i64(&geom, batch, &k64, &x64)?;
    for (plane, &b) in plain.chunks_exact_mut(geom.n()).zip(bias.iter().cycle()) {
        plane.iter_mut().for_each(|v| *v += i64::from(b));
    }
    let plain_time = start.elapsed();

    let (y, t): (Vec<i32>, Timings) = match result {
        Ok(v) => v,
        Err(e) => {
            println!("  verdict : REJECTED: {e}");
            return Err(e);
        }
    };
    let (encrypt, cloud, decrypt) = match p.privacy() {
        Privacy::LowRank { .. } => ("masks and X'", "Y' = Conv(K', X')", "mask correction, lift, bias"),
        Privacy::TwoServer => (
            "X' = βX, A's share from a seed, B's = X' - A's",
            "A: Conv(K', G(seed)), B: Conv(K', X'_B), concurrently",
            "sum of the shares, lift, bias",
        ),
        Privacy::Pad => ("X' = β(X + R)", "Y' = Conv(K', X')", "subtract U, lift, bias"),
        Privacy::SplitModel => (
            "E = X + R",
            "A: Conv(K_A, E), B: Conv(K_B, E), K = K_A + K_B, concurrently",
            "sum of the answers, subtract U, lift, bias",
        ),
    };
    println!("  phases  :");
    println!("    keygen  {}  (per session: keys and K')", ms(t.keygen));
    println!("    encrypt {}  (per image: {encrypt})", ms(t.encrypt));
    println!("    cloud   {}  (untrusted: {cloud} over F_p)", ms(t.cloud));
    println!("    verify  {}  verdict: ACCEPTED", ms(t.verify));
    println!("    decrypt {}  ({decrypt})", ms(t.decrypt));
    println!(
        "  client total {} (session setup included); plaintext direct convolution on this CPU {}",
        ms(t.client()),
        ms(plain_time)
    );
    let exact = y.iter().zip(&plain).all(|(&a, &b)| i64::from(a) == b) && y.len() == plain.len();
    if exact {
        println!("  result  : all {} outputs equal the plaintext integer convolution, bit for bit", y.len());
        Ok(())
    } else {
        Err(vericonv::Error::Internal("the decrypted result differs from the plaintext convolution".into()))
    }
}

/// onnxruntime's median time on `onnx` through `scripts/ort-baseline.py`, or why it did not run.
fn onnxruntime_time(onnx: &Path, batch: usize, threads: usize, reps: usize) -> Result<f64, String> {
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
fn bench_model(args: &BenchArgs, path: &Path) -> Result<(), vericonv::Error> {
    use vericonv_cli::whole::{WholeOptions, run_whole};
    let model = load_model(path, &NormArgs { mean: None, std: None })?;
    let out = args.out_dir()?;
    // tract and onnxruntime read the model as ONNX: the file itself, or the native model exported.
    let onnx_path = if path.extension().is_some_and(|e| e == "onnx") {
        path.to_path_buf()
    } else {
        let p = out.join(format!("{}.onnx", file_safe(model.name())));
        vericonv_model::onnx::import::write_model(&model, &p)?;
        p
    };
    let onnx = std::fs::read(&onnx_path).map_err(|e| vericonv::Error::io(&onnx_path, e))?;
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
        "vericonv bench --model {}: {} ({}×{}×{} input); times per batch, speed-up against the fastest plaintext engine",
        path.display(),
        model.name(),
        model.input().channels,
        model.input().height,
        model.input().width
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
        BenchBackend::Gpu => Some((select_backend(BackendChoice::Gpu)?.0, select_backend(BackendChoice::Gpu)?.0)),
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
                let r = run_whole(&model, &onnx, &opts, clouds, pads_gpu.as_deref(), ort)?;
                println!(
                    "{:<18} {:>5} {:>3} | {:>11} {:>11} {:>11} | {} {} {:>11} | {:>11} {:>7.2}x | {:>11}",
                    r.privacy,
                    r.batch,
                    r.threads,
                    s(r.client_s),
                    s(r.client_quantize_s),
                    s(r.session_s),
                    opt(r.tract_s),
                    opt(r.onnxruntime_s),
                    s(r.float_s),
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
                    s(r.client_quantize_s).trim(),
                    s(r.client_nonlinear_s).trim(),
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

/// `vericonv bench --cloud`: the remote cloud under load.
fn bench_cloud(args: &BenchArgs) -> Result<(), vericonv::Error> {
    use vericonv_cli::load::{LoadOptions, run_load};
    let privacy = match args.privacy.first() {
        Some(&p) => PrivacyArgs { privacy: p, rank: args.rank }.privacy(),
        None => Privacy::default(),
    };
    let two = privacy.clouds() == 2;
    let remote = &args.remote;
    if two == remote.cloud_b.is_empty() {
        return Err(vericonv::Error::CloudCount {
            mode: privacy.name(),
            needed: privacy.clouds(),
            got: 1 + usize::from(!remote.cloud_b.is_empty()),
        });
    }
    remote.check_distinct()?;
    warn_if_lowrank(privacy);
    // Cloud A's client (there is one: --cloud was given) and cloud B's, in two-server.
    let cloud_a = || {
        remote.connect(&remote.cloud)?.ok_or(vericonv::Error::CloudCount { mode: privacy.name(), needed: 1, got: 0 })
    };
    let connect = || -> Result<vericonv_cli::load::ClientClouds, vericonv::Error> {
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
        return Err(vericonv::Error::Internal("some calls failed (neither verified nor refused as busy)".into()));
    }
    Ok(())
}

/// `vericonv convert`: any model to the native format, checked by loading it back.
fn convert(args: &ConvertArgs) -> Result<(), vericonv::Error> {
    let model = load_model(&args.model, &args.norm)?;
    let name = args.name.clone().unwrap_or_else(|| {
        args.out.file_stem().map_or_else(|| model.name().to_string(), |s| s.to_string_lossy().into_owned())
    });
    let model = model.renamed(&name).with_plain_layer_names();
    let provenance = serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "source": args.model.display().to_string(),
    });
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| vericonv::Error::io(dir, e))?;
    }
    model.save(&args.out, Some(provenance))?;
    let back = Model::load(&args.out)?;
    let x = vec![0.5; model.image_len()];
    let same = back.forward_float(&x)? == model.forward_float(&x)?;
    if !same {
        return Err(vericonv::Error::Internal("the written model computes other logits".into()));
    }
    println!(
        "wrote {} and {} ({} layers); it loads back with identical logits",
        args.out.display(),
        args.out.with_extension("safetensors").display(),
        back.nodes().len()
    );
    Ok(())
}

/// `vericonv run`: one input through an ONNX model on tract, every convolution private.
#[cfg(feature = "tract")]
fn run(args: &RunArgs) -> Result<(), vericonv::Error> {
    use std::sync::Arc;
    use vericonv_cli::run::{read_input, top_k, write_npy};
    use vericonv_model::tract::{ConvExecutor, PrivateConvs, TractModel};
    let p = &args.protocol;
    let started = std::time::Instant::now();
    let model = TractModel::open(&args.model, args.input_shape.as_deref(), &QuantConfig::default())?;
    let (mean, std) = (args.mean.clone().unwrap_or_default(), args.std.clone().unwrap_or_default());
    let x = read_input(&args.input, model.image_shape(), &mean, &std)?;
    let labels = match &args.labels {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| vericonv::Error::io(path, e))?
            .lines()
            .map(str::to_string)
            .collect(),
        None => Vec::new(),
    };
    warn_if_lowrank(p.privacy());
    let setup = p.clouds(0.0, TamperChoice::Both)?;
    let clouds_name = setup.clouds().name();
    let (rng, seed_note) = p.rng();
    let cfg = p.private_config(false);
    let CloudSetup { a, b, .. } = setup;
    let clouds = (Arc::new(a) as Arc<dyn CloudBackend>, b.map(|b| Arc::new(b) as Arc<dyn CloudBackend>));
    let exec = Arc::new(PrivateConvs::new(clouds, cfg, rng)?);
    println!(
        "vericonv run: {} ({} nodes, {} convolutions private{}); input {} {:?}",
        model.name(),
        model.node_count(),
        model.private_layers().count(),
        if model.skipped().is_empty() { String::new() } else { format!(", {} on the client", model.skipped().len()) },
        args.input.display(),
        model.image_shape()
    );
    println!("  privacy {} on {clouds_name}; CSPRNG {seed_note}", p.privacy().label());
    let plan = model.plan(Some(exec.clone() as Arc<dyn ConvExecutor>))?;
    let loaded = started.elapsed();
    let t = std::time::Instant::now();
    let (logits, shape) = plan.run(&x)?;
    let inference = t.elapsed();
    let classes = shape.iter().skip(1).product::<usize>().max(1);
    let stats = exec.stats();
    for s in &stats {
        println!(
            "    {:<24} {} call(s), {} verified, {} rejected; client {} cloud {}",
            s.name,
            s.calls,
            s.verified,
            s.rejected,
            ms(s.timings.client()),
            ms(s.timings.cloud)
        );
    }
    let (cloud, offline): (Duration, Duration) =
        stats.iter().fold(Default::default(), |(c, o), s| (c + s.timings.cloud, o + s.offline));
    println!(
        "  time    : loading and planning {}; inference {} (clouds {}, pads drawn offline {}, the rest on the client)",
        ms(loaded),
        ms(inference),
        ms(cloud),
        ms(offline)
    );
    for (b, row) in logits.chunks(classes).enumerate() {
        println!("  input {b}: top {}", args.top.min(classes));
        for (class, logit, prob) in top_k(row, args.top) {
            let name = labels.get(class).map_or(String::new(), |l| format!(" {l}"));
            println!("    {class:>5}{name:<24} logit {logit:>10.4}  p {prob:.4}");
        }
    }
    write_npy(&args.out, &logits, &shape)?;
    println!("  logits  : {} ({shape:?})", args.out.display());
    Ok(())
}

/// `vericonv serve`: the cloud as a gRPC server, until SIGINT or SIGTERM.
fn serve(args: &ServeArgs) -> Result<(), vericonv::Error> {
    use std::io::Write;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).try_init();
    let read = |p: &Path| std::fs::read(p).map_err(|e| vericonv::Error::io(p, e));
    let (backend, why) = select_backend(args.backend)?;
    let backend: std::sync::Arc<dyn CloudBackend> = if args.tamper_rate > 0.0 {
        eprintln!("warning: --tamper-rate {}: this server lies on purpose", args.tamper_rate);
        std::sync::Arc::new(TamperingBackend::new(backend, &Tamper::ALL, args.tamper_rate, os_rng().random()))
    } else {
        std::sync::Arc::from(backend)
    };
    let cfg = vericonv_remote::ServerConfig {
        max_concurrent: args.max_concurrent,
        max_message_bytes: args.max_message_mb << 20,
        kernel_cache_bytes: args.kernel_cache_mb << 20,
        max_tensor_bytes: args.max_tensor_mb << 20,
        token: args.token_file.as_deref().map(vericonv_remote::read_token).transpose()?,
        request_timeout: Duration::from_secs(args.timeout_s),
        max_connections: args.max_connections,
        idle_timeout: Duration::from_secs(args.idle_timeout_s),
        handshake_timeout: Duration::from_secs(args.handshake_timeout_s),
        keepalive: Duration::from_secs(args.keepalive_s),
        shutdown_grace: Duration::from_secs(args.shutdown_grace_s),
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(vericonv_remote::TlsIdentity { cert: read(c)?, key: read(k)? }),
        _ => None,
    };
    let scheme = if tls.is_some() { "grpcs" } else { "grpc" };
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| vericonv::Error::Internal(format!("tokio runtime: {e}")))?;
    let served = runtime.block_on(async {
        let bind = |addr: std::net::SocketAddr| async move {
            tokio::net::TcpListener::bind(addr).await.map_err(|e| vericonv::Error::Remote {
                endpoint: addr.to_string(),
                code: "Unavailable".into(),
                message: format!("cannot listen: {e}"),
            })
        };
        let listener = bind(args.listen).await?;
        let metrics = match args.metrics_listen {
            Some(m) => Some(bind(m).await?),
            None => None,
        };
        // The bound addresses (port 0 picks a free one), for people and for scripts.
        let local = |l: &tokio::net::TcpListener| l.local_addr().map_or_else(|_| "?".into(), |a| a.to_string());
        let _ = writeln!(
            std::io::stdout(),
            "vericonv serve: {scheme}://{} on {} ({why}); at most {} convolutions at once, {} MiB messages, {} MiB of kernels{}",
            local(&listener),
            backend.name(),
            cfg.max_concurrent,
            args.max_message_mb,
            args.kernel_cache_mb,
            if cfg.token.is_some() { "; bearer token required" } else { "" }
        );
        if let Some(m) = &metrics {
            let _ = writeln!(std::io::stdout(), "  metrics: http://{}/metrics", local(m));
        }
        let _ = std::io::stdout().flush();
        let listen = vericonv_remote::Listen { listener, tls, metrics };
        vericonv_remote::serve(backend, cfg, listen, vericonv_remote::shutdown_signal()).await
    });
    // Past the grace period, what is left (a computation, a connection) is abandoned.
    runtime.shutdown_timeout(Duration::from_millis(500));
    served?;
    // stdout may be gone (a closed pipe): the message is not worth a failure.
    let _ = writeln!(std::io::stdout(), "vericonv serve: stopped");
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Demo(args) => demo(args),
        Command::ConvDemo(args) => conv_demo(args),
        Command::Eval(args) => eval(args),
        Command::Bench(args) => bench(args),
        Command::Attack(args) => attack(args),
        Command::Adapters => {
            adapters();
            Ok(())
        }
        Command::Serve(args) => serve(args),
        Command::Convert(args) => convert(args),
        #[cfg(feature = "tract")]
        Command::Run(args) => run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
