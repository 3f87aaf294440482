//! Any ONNX model on tract, its convolutions private on in-process CPU clouds: times a batch
//! the way the Python package runs it (`scripts/python-overhead.py` compares the two).
//!
//! `cargo run --release --features tract --example tract_private -- MODEL.onnx BATCH REPS [PRIVACY]`
//! prints the median seconds per batch.

use std::sync::Arc;
use std::time::Instant;

use vericonv::Privacy;
use vericonv::seeded_rng;
use vericonv::{CloudBackend, CpuBackend};
use vericonv_model::PrivateConfig;
use vericonv_model::QuantConfig;
use vericonv_model::{ConvExecutor, PrivateConvs, TractModel};

fn main() -> vericonv_model::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = || {
        vericonv_model::ModelError::Unsupported(
            "usage: tract_private MODEL.onnx BATCH REPS [pad|two-server|split-model]".into(),
        )
    };
    let (path, batch, reps) = match &args[1..] {
        [p, b, r, ..] => (p, b.parse::<usize>().map_err(|_| usage())?, r.parse::<usize>().map_err(|_| usage())?),
        _ => return Err(usage()),
    };
    let privacy = match args.get(4).map(String::as_str) {
        None | Some("pad") => Privacy::Pad,
        Some("two-server") => Privacy::TwoServer,
        Some("split-model") => Privacy::SplitModel,
        Some(_) => return Err(usage()),
    };
    let model = TractModel::open(path.as_ref(), None, &QuantConfig::default())?;
    let a: Arc<dyn CloudBackend> = Arc::new(CpuBackend::new());
    let b = (privacy.clouds() == 2).then(|| Arc::new(CpuBackend::new()) as Arc<dyn CloudBackend>);
    let cfg = PrivateConfig { privacy, ..PrivateConfig::default() };
    let exec = Arc::new(PrivateConvs::new((a, b), cfg, seeded_rng(1))?);
    let plan = model.plan(Some(exec as Arc<dyn ConvExecutor>))?;
    let per: usize = model.image_shape().iter().product();
    let x: Vec<f32> = (0..batch * per).map(|i| (i % 251) as f32 / 251.0).collect();
    plan.run(&x)?; // warm-up: sessions, pads, page faults
    let mut times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            plan.run(&x).map(|_| t.elapsed().as_secs_f64())
        })
        .collect::<Result<_, _>>()?;
    times.sort_by(f64::total_cmp);
    println!("{}", times[times.len() / 2]);
    Ok(())
}
