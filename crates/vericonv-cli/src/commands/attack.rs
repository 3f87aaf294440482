//! `vericonv attack`: what a curious cloud recovers of a model's inputs and kernels.

use anyhow::Context;
use std::path::PathBuf;

use clap::builder::TypedValueParser;

use indicatif::{ProgressBar, ProgressStyle};
use vericonv::CloudBackend;
use vericonv_model::Dataset;
use vericonv_model::{QuantConfig, QuantModel};

use super::options::*;

#[derive(clap::Args)]
pub(crate) struct AttackArgs {
    #[command(flatten)]
    pub(crate) input: ModelArgs,
    /// mnist, fashion-mnist, digits (test splits under --data-dir), or any --dataset of eval.
    #[arg(long)]
    pub(crate) dataset: String,
    /// Attack only layers whose name contains this text.
    #[arg(long)]
    pub(crate) layer: Option<String>,
    #[command(flatten)]
    pub(crate) privacy: PrivacyArgs,
    /// Images attacked (the first N of the test split).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000).map(|v| v as usize))]
    pub(crate) limit: usize,
    /// Images per private call.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1024).map(usize::from))]
    pub(crate) batch: usize,
    /// Seed of the simulated client's keys and of the attacker's choices.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Where the built-in data sets live.
    #[arg(long, default_value = "data")]
    pub(crate) data_dir: PathBuf,
    /// Where to write the JSON report and the PNG pictures.
    #[arg(long, default_value = "reports/attack")]
    pub(crate) out: PathBuf,
    /// With --cloud: run the private layers on that remote cloud and attack what it was sent.
    #[command(flatten)]
    pub(crate) remote: RemoteArgs,
}

pub(crate) fn attack(args: &AttackArgs) -> Result<(), anyhow::Error> {
    use vericonv_cli::attack::{AttackOptions, attack_model, format_table, write_examples_png};
    let model = load_model(&args.input.model, &args.input.norm)?;
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
        anyhow::bail!("unsupported: model {} has no convolution matching the --layer filter", model.name());
    }
    let rows: Vec<_> = results.iter().map(|(r, _)| r.clone()).collect();
    print!("{}", format_table(&rows));
    println!(
        "images%/pixels%: recovered exactly by the best-placed cloud (every pixel of every channel, channel order up to π); \
         kernel%: slices of K' recovered exactly up to sign; certain%: the only candidate; \
         χ² p: uniformity of the received elements (pooled high bits, and per position); full rank: channel planes of full rank"
    );
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
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
