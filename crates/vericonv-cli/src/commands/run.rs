//! `vericonv run`: one input through any ONNX model on tract, its convolutions private.

use anyhow::Context;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser;

use vericonv::CloudBackend;
use vericonv_model::QuantConfig;

use super::options::*;

#[cfg(feature = "tract")]
#[derive(clap::Args)]
pub(crate) struct RunArgs {
    /// The model, an `.onnx` file (loaded by tract: any operator tract runs).
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// The input: a PNG or JPEG image (resized to the model's input, scaled to [0, 1], then
    /// normalized with --mean/--std) or a `.npy` float array of one input or a batch.
    #[arg(long)]
    pub(crate) input: PathBuf,
    /// One image's input shape without the batch, e.g. 3,224,224: fixes the dimensions the
    /// model leaves dynamic [default: the model's own].
    #[arg(long, value_delimiter = ',')]
    pub(crate) input_shape: Option<Vec<usize>>,
    /// Per-channel mean subtracted from image pixels in [0, 1] (images only).
    #[arg(long, value_delimiter = ',', requires = "std", allow_negative_numbers = true)]
    pub(crate) mean: Option<Vec<f32>>,
    /// Per-channel standard deviation (images only).
    #[arg(long, value_delimiter = ',', requires = "mean")]
    pub(crate) std: Option<Vec<f32>>,
    /// How many classes to print per input.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000).map(usize::from))]
    pub(crate) top: usize,
    /// A text file of class names, one per line.
    #[arg(long)]
    pub(crate) labels: Option<PathBuf>,
    /// Where to write the logits (`.npy`, float32, batch × classes).
    #[arg(long, default_value = "logits.npy")]
    pub(crate) out: PathBuf,
    /// Outsource the linear layers (`Gemm`, `MatMul` with constant weights) too, as 1×1
    /// convolutions (weaker masks; docs/scheme.md §9).
    #[arg(long)]
    pub(crate) outsource_linear: bool,
    #[command(flatten)]
    pub(crate) protocol: ProtocolArgs,
}

/// `vericonv run`: one input through an ONNX model on tract, every convolution private.
#[cfg(feature = "tract")]
pub(crate) fn run(args: &RunArgs) -> Result<(), anyhow::Error> {
    use std::sync::Arc;
    use vericonv_cli::run::{read_input, top_k, write_npy};
    use vericonv_model::{ConvExecutor, PrivateConvs, TractModel};
    let p = &args.protocol;
    let started = std::time::Instant::now();
    let mut model = TractModel::open(&args.model, args.input_shape.as_deref(), &QuantConfig::default())?;
    model.outsource_linear(args.outsource_linear);
    let (mean, std) = (args.mean.clone().unwrap_or_default(), args.std.clone().unwrap_or_default());
    let x = read_input(&args.input, model.image_shape(), &mean, &std)?;
    let labels = match &args.labels {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .lines()
            .map(str::to_string)
            .collect(),
        None => Vec::new(),
    };
    warn_if_lowrank(p.privacy());
    let setup = p.clouds(0.0, TamperChoice::Both)?;
    let clouds_name = setup.clouds().name();
    let (rng, seed_note) = p.rng();
    let cfg = p.private_config(args.outsource_linear);
    let CloudSetup { a, b, .. } = setup;
    let clouds = (Arc::new(a) as Arc<dyn CloudBackend>, b.map(|b| Arc::new(b) as Arc<dyn CloudBackend>));
    let exec = Arc::new(PrivateConvs::new(clouds, cfg, rng)?);
    println!(
        "vericonv run: {} ({} nodes, {} layers private{}); input {} {:?}",
        model.name(),
        model.node_count(),
        model.private_layers().count(),
        if model.skipped().is_empty() { String::new() } else { format!(", {} on the client", model.skipped().len()) },
        args.input.display(),
        model.image_shape()
    );
    println!("  privacy {} on {clouds_name}; CSPRNG {seed_note}", p.privacy().label());
    let plan = model.plan(Some(exec.clone() as Arc<dyn ConvExecutor>))?;
    let (adds, relus) = plan.fused();
    println!("  fused into decryption: {adds} residual Add(s), {relus} ReLU(s)");
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
