//! `vericonv demo`: private, verified LeNet-5 inference on 16 built-in MNIST images.

use std::time::{Duration, Instant};

use vericonv::CpuBackend;
use vericonv::Mode;
use vericonv_model::Dataset;
use vericonv_model::PrivateExecutor;
use vericonv_model::{Model, ModelError, argmax};
use vericonv_model::{PlainExecutor, QuantConfig, QuantModel};

use super::options::*;

#[derive(clap::Args)]
pub(crate) struct DemoArgs {
    #[command(flatten)]
    pub(crate) protocol: ProtocolArgs,
    /// Let the cloud corrupt this fraction of layer calls, to watch verification catch them.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    pub(crate) tamper_rate: f64,
    /// In mode two-server: which cloud cheats.
    #[arg(long, value_enum, default_value_t = TamperChoice::Both)]
    pub(crate) tamper_cloud: TamperChoice,
}

/// The built-in LeNet-5 for MNIST and 16 MNIST test images.
pub(crate) const DEMO_MODEL: &[u8] = include_bytes!("../../../../models/lenet5-mnist.json");

pub(crate) const DEMO_WEIGHTS: &[u8] = include_bytes!("../../../../models/lenet5-mnist.safetensors");

pub(crate) const DEMO_IMAGES: &[u8] = include_bytes!("../../../../models/demo/mnist-t10k-16-images.idx");

pub(crate) const DEMO_LABELS: &[u8] = include_bytes!("../../../../models/demo/mnist-t10k-16-labels.idx");

pub(crate) fn demo(args: &DemoArgs) -> Result<(), anyhow::Error> {
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
        Err(ModelError::Scheme(
            e @ (vericonv::Error::VerificationFailed { .. } | vericonv::Error::MalformedAnswer { .. }),
        )) => {
            println!("  verdict : the cloud cheated and was caught ({e}); no prediction is reported");
            return Err(e.into());
        }
        Err(e) => {
            println!("  verdict : the private run failed ({e}); no prediction is reported");
            return Err(e.into());
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
    if bit_equal { Ok(()) } else { Err(anyhow::anyhow!("private logits differ from the quantized plaintext model")) }
}
