//! `vericonv eval`: float, quantized and private accuracy of a model on a data set.

use anyhow::Context;
use std::path::PathBuf;
#[cfg(feature = "tract")]
use vericonv_model::ModelError;

use clap::builder::TypedValueParser;

use indicatif::{ProgressBar, ProgressStyle};
#[cfg(feature = "tract")]
use vericonv::CloudBackend;
use vericonv_cli::eval::{EvalOptions, EvalReport, evaluate};
use vericonv_model::Dataset;
use vericonv_model::{QuantConfig, QuantModel};

use super::options::*;

#[derive(clap::Args)]
pub(crate) struct EvalArgs {
    #[command(flatten)]
    pub(crate) input: ModelArgs,
    /// mnist, fashion-mnist, digits (test splits under --data-dir), idx:IMAGES,LABELS,
    /// cifar10:FILE[,FILE…], cifar100:FILE[,FILE…] or folder:DIR.
    #[arg(long)]
    pub(crate) dataset: String,
    /// Evaluate only the first N images.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..).map(|v| v as usize))]
    pub(crate) limit: Option<usize>,
    /// Images per batch (one private call per layer per batch).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024).map(usize::from))]
    pub(crate) batch: usize,
    #[command(flatten)]
    pub(crate) protocol: ProtocolArgs,
    /// Weight bits.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=16))]
    pub(crate) weight_bits: u32,
    /// Activation bits.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(2..=16))]
    pub(crate) act_bits: u32,
    /// Calibrate activation scales on the first N training images (for the built-in sets; other
    /// sets use their own first N images) instead of computing them per image.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|v| v as usize))]
    pub(crate) calibrate: Option<usize>,
    /// Outsource linear layers too (weaker masks; docs/scheme.md §9).
    #[arg(long)]
    pub(crate) outsource_linear: bool,
    /// One image's input shape, e.g. 3,224,224, for an ONNX model that runs on tract and leaves
    /// its spatial dimensions dynamic.
    #[arg(long, value_delimiter = ',')]
    pub(crate) input_shape: Option<Vec<usize>>,
    /// Let the cloud corrupt this fraction of layer calls; every one must be detected.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub(crate) tamper_rate: f64,
    /// In mode two-server: which cloud cheats.
    #[arg(long, value_enum, default_value_t = TamperChoice::Both)]
    pub(crate) tamper_cloud: TamperChoice,
    /// Where the built-in data sets live.
    #[arg(long, default_value = "data")]
    pub(crate) data_dir: PathBuf,
    /// Write the JSON report here (default: reports/<model>-<dataset>-<privacy>.json).
    #[arg(long)]
    pub(crate) report: Option<PathBuf>,
}

pub(crate) fn eval(args: &EvalArgs) -> Result<(), anyhow::Error> {
    let p = &args.protocol;
    let model = match load_model(&args.input.model, &args.input.norm) {
        Ok(model) => model,
        // A graph whose operators the native importer does not know runs on tract, its
        // convolutions private. A file it refuses as invalid (non-finite weights, a negative
        // variance…) stays refused.
        #[cfg(feature = "tract")]
        Err(e @ ModelError::Unsupported(_)) if args.input.model.extension().is_some_and(|x| x == "onnx") => {
            return eval_tract(args, &e);
        }
        Err(e) => return Err(e.into()),
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
pub(crate) fn eval_tract(args: &EvalArgs, refused: &ModelError) -> Result<(), anyhow::Error> {
    use std::sync::Arc;
    use vericonv_model::TractModel;
    let p = &args.protocol;
    eprintln!("the native importer refuses {} ({refused}); running it on tract", args.input.model.display());
    if args.calibrate.is_some() {
        anyhow::bail!("unsupported: --calibrate on a model that runs on tract");
    }
    let qc = QuantConfig { weight_bits: args.weight_bits, act_bits: args.act_bits };
    let mut model = TractModel::open(&args.input.model, args.input_shape.as_deref(), &qc)?;
    model.outsource_linear(args.outsource_linear);
    let &[c, h, w] = model.image_shape() else {
        anyhow::bail!(
            "unsupported: eval on images of a model whose input is {:?} (use vericonv run with .npy inputs)",
            model.image_shape()
        );
    };
    let mut data = Dataset::open(&args.dataset, &args.data_dir, false, c, h, w)?;
    if let Some(n) = args.limit {
        data.truncate(n);
    }
    let (mean, std) =
        (args.input.norm.mean.clone().unwrap_or_default(), args.input.norm.std.clone().unwrap_or_default());
    if args.input.norm.mean.is_none() {
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
    let opts = EvalOptions { batch: args.batch, private: p.private_config(args.outsource_linear) };
    let input = vericonv_model::InputSpec::of_shape(&[c, h, w], &mean, &std)?;
    let normalize = |images: &[f32]| -> Vec<f32> {
        let mut x = images.to_vec();
        input.normalize(&mut x);
        x
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
pub(crate) fn finish_eval(args: &EvalArgs, report: EvalReport, scales: &str) -> Result<(), anyhow::Error> {
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
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(&report).map_err(|e| anyhow::anyhow!("serializing the report: {e}"))?;
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    println!("  report     {}", path.display());
    let rejected: u64 = report.layers.iter().map(|l| l.rejected).sum();
    // In mode two-server with both clouds cheating, one rejected call may hold two corrupted
    // answers.
    let cheats_per_call = if p.privacy().clouds() == 2 && args.tamper_cloud == TamperChoice::Both { 2 } else { 1 };
    if rejected * cheats_per_call < report.corrupted_calls || report.logits_bit_identical != report.private_answered {
        anyhow::bail!("private inference disagreed with the quantized model or missed a corrupted answer");
    }
    // Rejections beyond the answers corrupted here on purpose: a cloud (a remote server) lied.
    if rejected > report.corrupted_calls {
        let caught = vericonv::Error::CheatingCloud {
            rejected: rejected - report.corrupted_calls,
            images: report.private_rejected,
        };
        println!("  verdict    {caught}");
        return Err(caught.into());
    }
    Ok(())
}
