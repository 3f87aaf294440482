//! `vericonv convert`: any loadable model to the native format.

use anyhow::Context;
use std::path::PathBuf;

use vericonv_model::Model;

use super::options::*;

#[derive(clap::Args)]
pub(crate) struct ConvertArgs {
    #[command(flatten)]
    pub(crate) input: ModelArgs,
    /// The native model to write (`.json`; the `.safetensors` goes beside it).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// The model's name in the file [default: the output's file name].
    #[arg(long)]
    pub(crate) name: Option<String>,
}

/// `vericonv convert`: any model to the native format, checked by loading it back.
pub(crate) fn convert(args: &ConvertArgs) -> Result<(), anyhow::Error> {
    let model = load_model(&args.input.model, &args.input.norm)?;
    let name = args.name.clone().unwrap_or_else(|| {
        args.out.file_stem().map_or_else(|| model.name().to_string(), |s| s.to_string_lossy().into_owned())
    });
    let model = model.renamed(&name).with_plain_layer_names();
    let provenance = serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "source": args.input.model.display().to_string(),
    });
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    model.save(&args.out, Some(provenance))?;
    let back = Model::load(&args.out)?;
    let x = vec![0.5; model.image_len()];
    let same = back.forward_float(&x)? == model.forward_float(&x)?;
    if !same {
        anyhow::bail!("the written model computes other logits");
    }
    println!(
        "wrote {} and {} ({} layers); it loads back with identical logits",
        args.out.display(),
        args.out.with_extension("safetensors").display(),
        back.nodes().len()
    );
    Ok(())
}
