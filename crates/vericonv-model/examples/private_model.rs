//! A whole CNN privately: the committed LeNet-5 on the 16 MNIST test images the demo ships,
//! every convolution on an untrusted cloud (here a CPU backend in this process), checked
//! against the quantized plaintext model logit for logit.
//!
//! `cargo run --release --example private_model`

use std::path::Path;

use vericonv::Privacy;
use vericonv::os_rng;
use vericonv::{Clouds, CpuBackend};
use vericonv_model::Dataset;
use vericonv_model::{Model, PrivateConfig, PrivateExecutor, argmax};
use vericonv_model::{PlainExecutor, QuantConfig, QuantModel};

fn main() -> vericonv_model::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = Model::load(root.join("models/lenet5-mnist.json"))?;
    let data = Dataset::from_idx(
        "mnist (16 test images)",
        &root.join("models/demo/mnist-t10k-16-images.idx"),
        &root.join("models/demo/mnist-t10k-16-labels.idx"),
    )?;
    // 8-bit weights and activations (docs/scheme.md §10); the exactness bound is checked per layer.
    let quantized = QuantModel::new(&model, QuantConfig::default())?;
    let (plain_logits, _) = quantized.forward(data.images(), &mut PlainExecutor)?;

    // Mode two-server: two clouds, each sees one pseudorandom share of every input.
    let (cloud_a, cloud_b) = (CpuBackend::new(), CpuBackend::new());
    let cfg = PrivateConfig { privacy: Privacy::TwoServer, ..PrivateConfig::default() };
    let mut private = PrivateExecutor::new(&quantized, Clouds::Two(&cloud_a, &cloud_b), &cfg, os_rng())?;
    let (logits, times) = quantized.forward(data.images(), &mut private)?;

    let classes = model.num_classes();
    let predicted = argmax(&logits, classes);
    let correct = predicted.iter().zip(data.labels()).filter(|(p, l)| p == l).count();
    println!("{}: {correct}/{} correct, private on two clouds", model.name(), data.len());
    for layer in private.stats() {
        if layer.outsourced {
            println!("  {:<6} {} call(s) to the clouds, {} verified", layer.name, layer.calls, layer.verified);
        } else {
            println!("  {:<6} computed by the client (linear layers stay local by default)", layer.name);
        }
    }
    println!("  non-linear layers on the client: {:.3} ms", times.nonlinear.as_secs_f64() * 1e3);
    if logits.iter().map(|v| v.to_bits()).ne(plain_logits.iter().map(|v| v.to_bits())) {
        return Err(vericonv_model::ModelError::Internal("private logits differ from the quantized model's".into()));
    }
    println!("  logits bit-identical to the quantized plaintext model");
    Ok(())
}
