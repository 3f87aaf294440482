//! The flags and helpers the commands share: privacy, protocol and remote options, the clouds of a run, backend selection, model loading and output helpers.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ValueEnum;
use clap::builder::TypedValueParser;
use rand::RngExt;

use vericonv::Mode;
use vericonv::{CloudBackend, Clouds, CpuBackend, Tamper, TamperingBackend};
use vericonv::{KeyRng, os_rng, seeded_rng};
use vericonv::{LOWRANK_WARNING, Privacy};
#[cfg(feature = "gpu")]
use vericonv_gpu::{GpuBackend, GpuOptions};
use vericonv_model::Model;
use vericonv_model::PrivateConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum BackendChoice {
    /// The CPU cloud backend.
    Cpu,
    /// The wgpu backend, on whatever adapter is selected (llvmpipe included).
    Gpu,
    /// A real GPU if there is one; the CPU backend when the only adapter is a CPU rasteriser.
    Auto,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ModeChoice {
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
pub(crate) enum PrivacyChoice {
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
pub(crate) struct PrivacyArgs {
    /// How inputs are masked: pad (one cloud, one-time pads precomputed offline), two-server
    /// (two non-colluding clouds), split-model (pads, and the weights shared between two
    /// non-colluding clouds) or lowrank (the paper's scheme, broken on structured inputs).
    #[arg(long, value_enum, default_value_t = PrivacyChoice::Pad)]
    pub(crate) privacy: PrivacyChoice,
    /// Mask rank ρ of mode lowrank.
    #[arg(long, default_value_t = vericonv::DEFAULT_RANK, value_parser = clap::value_parser!(u16).range(1..=64).map(usize::from))]
    pub(crate) rank: usize,
}

impl PrivacyArgs {
    pub(crate) fn privacy(&self) -> Privacy {
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
pub(crate) struct ProtocolArgs {
    /// Where the untrusted cloud runs (cloud A in mode two-server).
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub(crate) backend: BackendChoice,
    /// Where cloud B runs in mode two-server.
    #[arg(long, value_enum, default_value_t = BackendChoice::Cpu)]
    pub(crate) backend_b: BackendChoice,
    #[command(flatten)]
    pub(crate) privacy: PrivacyArgs,
    /// Verification mode.
    #[arg(long, value_enum, default_value_t = ModeChoice::Fast)]
    pub(crate) mode: ModeChoice,
    /// Independent verification rounds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64).map(usize::from))]
    pub(crate) rounds: usize,
    /// Seed the client's CSPRNG, for reproducible runs only: keys, masks, pads and
    /// verification vectors all become predictable to anyone who knows the seed. The default
    /// seeds from the OS.
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    #[command(flatten)]
    pub(crate) remote: RemoteArgs,
}

/// Remote clouds (`vericonv serve`), shared by every command that can use them.
#[derive(clap::Args)]
pub(crate) struct RemoteArgs {
    /// A remote cloud (`grpc://HOST:PORT` or `grpcs://HOST:PORT`, started with `vericonv serve`)
    /// instead of a local backend; repeat it for replicas of the same cloud. Cloud A in mode
    /// two-server.
    #[arg(long = "cloud", value_name = "URL")]
    pub(crate) cloud: Vec<String>,
    /// Mode two-server: cloud B's server(s). Must differ from --cloud.
    #[arg(long = "cloud-b", value_name = "URL")]
    pub(crate) cloud_b: Vec<String>,
    /// A file holding the bearer token of the remote clouds.
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,
    /// A PEM CA certificate to trust for grpcs:// clouds.
    #[arg(long)]
    pub(crate) tls_ca: Option<PathBuf>,
    /// Allow plaintext grpc:// to hosts that are not loopback. Masked tensors, shares, seeds and
    /// the token then cross the network unencrypted; every run warns. Without it, such hosts
    /// need grpcs://.
    #[arg(long)]
    pub(crate) insecure_plaintext: bool,
}

impl RemoteArgs {
    /// Refuses one cloud for both shares: URLs that resolve to a common socket address.
    pub(crate) fn check_distinct(&self) -> Result<(), anyhow::Error> {
        match vericonv_remote::same_cloud(&self.cloud, &self.cloud_b)? {
            Some(url) => Err(vericonv::Error::SameCloudTwice(url).into()),
            None => Ok(()),
        }
    }

    /// A client of the replicas `urls` with these options, or `None` when there are none.
    pub(crate) fn connect(&self, urls: &[String]) -> Result<Option<vericonv_remote::RemoteBackend>, anyhow::Error> {
        if urls.is_empty() {
            return Ok(None);
        }
        let opts = vericonv_remote::RemoteOptions::from_files(
            self.token_file.as_deref(),
            self.tls_ca.as_deref(),
            self.insecure_plaintext,
        )?;
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
    pub(crate) fn rng(&self) -> (KeyRng, String) {
        match self.seed {
            Some(s) => (seeded_rng(s), format!("seeded with {s} (reproducible; not for real use)")),
            None => (os_rng(), "seeded from the OS".into()),
        }
    }

    pub(crate) fn privacy(&self) -> Privacy {
        self.privacy.privacy()
    }

    /// The remote cloud at `urls`, or else the local backend `choice`.
    pub(crate) fn backend_or_remote(
        &self,
        choice: BackendChoice,
        urls: &[String],
    ) -> Result<(Box<dyn CloudBackend>, String), anyhow::Error> {
        let Some(remote) = self.remote.connect(urls)? else { return select_backend(choice) };
        let info = remote.info()?;
        Ok((Box::new(remote), format!("remote, serving with {} (vericonv {})", info.backend, info.version)))
    }

    /// The private-inference settings these options select.
    pub(crate) fn private_config(&self, outsource_linear: bool) -> PrivateConfig {
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
    pub(crate) fn clouds(&self, tamper_rate: f64, tamper: TamperChoice) -> Result<CloudSetup, anyhow::Error> {
        let two = self.privacy().clouds() == 2;
        if !self.remote.cloud_b.is_empty() && !two {
            return Err(vericonv::Error::CloudCount { mode: self.privacy().name(), needed: 1, got: 2 }.into());
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
pub(crate) enum TamperChoice {
    /// Cloud A only.
    A,
    /// Cloud B only.
    B,
    /// Both clouds, independently.
    Both,
}

/// The clouds of one run (each possibly cheating on purpose).
pub(crate) struct CloudSetup {
    pub(crate) a: TamperingBackend<Box<dyn CloudBackend>>,
    pub(crate) b: Option<TamperingBackend<Box<dyn CloudBackend>>>,
    pub(crate) why: String,
}

impl CloudSetup {
    pub(crate) fn clouds(&self) -> Clouds<'_> {
        match &self.b {
            Some(b) => Clouds::Two(&self.a, b),
            None => Clouds::One(&self.a),
        }
    }

    /// Answers corrupted so far, over all clouds.
    pub(crate) fn corrupted(&self) -> u64 {
        self.a.corrupted() + self.b.as_ref().map_or(0, TamperingBackend::corrupted)
    }
}

/// Prints the one-line warning of mode lowrank (docs/scheme.md §9) to stderr.
pub(crate) fn warn_if_lowrank(privacy: Privacy) {
    if matches!(privacy, Privacy::LowRank { .. }) {
        eprintln!("{LOWRANK_WARNING}");
    }
}

/// A fraction in [0, 1].
pub(crate) fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} is not in [0, 1]")),
        Err(e) => Err(e.to_string()),
    }
}

/// The input normalisation, for models whose file does not carry it (PyTorch's ONNX exports).
/// The model file and its input normalisation, as every command that loads a model takes them.
#[derive(clap::Args)]
pub(crate) struct ModelArgs {
    /// The model: a native `.json` (with its `.safetensors` beside it) or an `.onnx` file.
    #[arg(long)]
    pub(crate) model: PathBuf,
    #[command(flatten)]
    pub(crate) norm: NormArgs,
}

#[derive(clap::Args)]
pub(crate) struct NormArgs {
    /// Per-channel mean of `(x - mean) / std` on pixels in [0, 1], e.g. 0.485,0.456,0.406
    /// (replaces the model's; ONNX files carry it only as metadata `vericonv.mean`).
    #[arg(long, value_delimiter = ',', requires = "std", allow_negative_numbers = true)]
    pub(crate) mean: Option<Vec<f32>>,
    /// Per-channel standard deviation, e.g. 0.229,0.224,0.225 (metadata `vericonv.std`).
    #[arg(long, value_delimiter = ',', requires = "mean")]
    pub(crate) std: Option<Vec<f32>>,
}

/// Picks the cloud backend and explains the choice.
#[cfg(feature = "gpu")]
pub(crate) fn select_backend(choice: BackendChoice) -> Result<(Box<dyn CloudBackend>, String), anyhow::Error> {
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
pub(crate) fn select_backend(choice: BackendChoice) -> Result<(Box<dyn CloudBackend>, String), anyhow::Error> {
    match choice {
        BackendChoice::Gpu => {
            Err(anyhow::anyhow!("unsupported: this build has no GPU backend (rebuild with the `gpu` feature)"))
        }
        _ => Ok((Box::new(CpuBackend::new()), "this build has no GPU backend".into())),
    }
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:>9.3} ms", d.as_secs_f64() * 1e3)
}

/// Writes `rows` as pretty JSON.
pub(crate) fn write_json<T: serde::Serialize>(rows: &[T], path: &Path) -> Result<(), anyhow::Error> {
    let json = serde_json::to_string_pretty(rows).map_err(|e| anyhow::anyhow!("serializing the bench report: {e}"))?;
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}

/// Loads a native or ONNX model, applies `--mean/--std`, and says which normalisation is in
/// use (and warns when an ONNX model has none: PyTorch exports never do).
pub(crate) fn load_model(path: &Path, norm: &NormArgs) -> vericonv_model::Result<Model> {
    let (model, recorded) = Model::open(path)?;
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

/// A file-name-safe version of `s`: letters, digits, `-`, `_` and `.` kept, the rest `_`.
pub(crate) fn file_safe(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect()
}
