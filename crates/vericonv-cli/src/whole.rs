//! `vericonv bench --model M`: a whole network, end to end, on the same inputs in one run: the
//! client's whole private pipeline (quantize, mask, verify, unmask, non-linear and local
//! linear layers; the cloud timed apart, the session setup apart), the plaintext model through
//! tract and through vericonv's own float interpreter, and onnxruntime when
//! `scripts/ort-baseline.py` can run. The speed-up is against the fastest plaintext engine.

use std::time::{Duration, Instant};

use rand::RngExt;
use serde::Serialize;
use vericonv::cloud::{CloudBackend, Clouds, CpuBackend};
use vericonv::keys::seeded_rng;
use vericonv::privacy::Privacy;
use vericonv::{Error, Result};
use vericonv_model::quant::{PlainExecutor, QuantConfig, QuantModel};
use vericonv_model::{Model, PrivateConfig, PrivateExecutor, Workspace};

/// One configuration of [`run_whole`].
#[derive(Clone, Debug)]
pub struct WholeOptions {
    /// Images per forward pass.
    pub batch: usize,
    /// Threads for the client, the plaintext engines and the CPU cloud alike.
    pub threads: usize,
    /// The privacy mode.
    pub privacy: Privacy,
    /// Timed forward passes (the median is reported) after one warm-up.
    pub reps: usize,
    /// Seed of the inputs and of the client's keys (a benchmark, not a deployment).
    pub seed: u64,
}

/// One measured configuration; times are seconds per batch.
#[derive(Clone, Debug, Serialize)]
pub struct WholeRow {
    /// Model name.
    pub model: String,
    /// The privacy mode.
    pub privacy: String,
    /// Images per batch.
    pub batch: usize,
    /// Threads.
    pub threads: usize,
    /// The client's online work: the private forward pass minus the cloud's time.
    pub client_s: f64,
    /// Of which quantization and re-scaling.
    pub client_quantize_s: f64,
    /// Of which non-linear layers.
    pub client_nonlinear_s: f64,
    /// The client's work per phase, summed over layers and over images (so over threads, when
    /// images run in parallel): encryption, verification (the session kernels' fold included),
    /// decryption with the re-scaling and the layers fused into it, and the linear layers the
    /// client computes itself.
    pub client_phases_s: ClientPhases,
    /// Session setup (keys, `K'`, the mask kernels of every layer), once per session.
    pub session_s: f64,
    /// Modes `pad` and `split-model`: the offline work of one batch (drawing its pads and their
    /// mask convolutions `Conv(K, R)` on the client's own backend, by default its CPU with the
    /// same threads), done before each pass and not part of `client_s`; `None` in the other
    /// modes.
    pub pad_offline_s: Option<f64>,
    /// The cloud's time in the same passes (both clouds, concurrently, in two-server).
    pub cloud_s: f64,
    /// tract on the same ONNX graph, inputs and threads.
    pub tract_s: Option<f64>,
    /// vericonv's own float interpreter.
    pub float_s: f64,
    /// onnxruntime (`scripts/ort-baseline.py`), when it ran.
    pub onnxruntime_s: Option<f64>,
    /// The fastest plaintext engine.
    pub best_plaintext: String,
    /// Its time.
    pub best_plaintext_s: f64,
    /// `best_plaintext_s / client_s`.
    pub speedup: f64,
    /// Whether the private logits equal the quantized plaintext model's, bit for bit.
    pub exact: bool,
}

/// Seconds per phase of the client's work (see [`WholeRow::client_phases_s`]).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ClientPhases {
    /// Masking (or splitting into shares) the inputs.
    pub encrypt: f64,
    /// Verifying the answers.
    pub verify: f64,
    /// Unmasking the answers into the next activations.
    pub decrypt: f64,
    /// The linear layers the client computes itself.
    pub local: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Measures `model` (whose ONNX form is `onnx`, for tract) at one batch, thread count and
/// privacy mode, with the cloud(s) `clouds` (`None`: CPU backends with the same threads) and,
/// in modes `pad` and `split-model`, the pads made on `pads_on`, the client's own backend
/// (`None`: its CPU with the same threads); `onnxruntime` is the time onnxruntime took, if it
/// ran.
///
/// # Errors
/// The model's and the protocol's errors; [`Error::Internal`] when tract fails or the private
/// logits differ from the quantized model's.
pub fn run_whole(
    model: &Model,
    onnx: &[u8],
    opts: &WholeOptions,
    clouds: Option<(&dyn CloudBackend, &dyn CloudBackend)>,
    pads_on: Option<&dyn CloudBackend>,
    onnxruntime: Option<f64>,
) -> Result<WholeRow> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()
        .map_err(|e| Error::Internal(format!("thread pool: {e}")))?;
    let mut rng = seeded_rng(opts.seed);
    let x: Vec<f32> = (0..opts.batch * model.image_len()).map(|_| rng.random_range(0.0..1.0)).collect();
    let qm = QuantModel::new(model, QuantConfig::default())?;
    let local = (CpuBackend::with_threads(opts.threads)?, CpuBackend::with_threads(opts.threads)?);
    let (cloud_a, cloud_b): (&dyn CloudBackend, &dyn CloudBackend) = clouds.unwrap_or((&local.0, &local.1));
    let clouds = if opts.privacy.clouds() == 2 { Clouds::Two(cloud_a, cloud_b) } else { Clouds::One(cloud_a) };
    let cfg = PrivateConfig { privacy: opts.privacy, ..PrivateConfig::default() };
    // The session: keys, K' and the mask kernels of every layer.
    let t = Instant::now();
    let mut exec = pool.install(|| PrivateExecutor::new(&qm, clouds, &cfg, seeded_rng(opts.seed ^ 0x5e55)))?;
    let session = t.elapsed();
    let cloud_total = |exec: &PrivateExecutor<'_>| exec.stats().map(|l| l.timings.cloud).sum::<Duration>();
    let (reference, _) = pool.install(|| qm.forward(&x, &mut PlainExecutor))?;
    // Modes pad and split-model: each pass first draws its batch's pads offline, on the
    // client's own backend.
    let pad = opts.privacy.uses_pads();
    let own: &dyn CloudBackend = pads_on.unwrap_or(&local.0);
    let mut offline = Vec::new();
    let mut prepare = |exec: &mut PrivateExecutor<'_>| -> Result<()> {
        if pad {
            offline.push(pool.install(|| exec.prepare_pads(opts.batch, own))?.as_secs_f64());
        }
        Ok(())
    };
    // Buffers reused across passes, as a stream of batches would; the warm-up pass (page faults,
    // caches) is checked against the quantized model.
    let mut ws = Workspace::new();
    prepare(&mut exec)?;
    let (first, _) = pool.install(|| qm.forward_with(&x, &mut exec, &mut ws))?;
    let exact = first.iter().zip(&reference).all(|(a, b)| a.to_bits() == b.to_bits());
    let (mut client, mut cloud, mut quantize, mut nonlinear) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut phases = Vec::new();
    let phase_total = |exec: &PrivateExecutor<'_>| {
        exec.stats().fold(ClientPhases::default(), |p, l| ClientPhases {
            encrypt: p.encrypt + l.timings.encrypt.as_secs_f64(),
            verify: p.verify + l.timings.verify.as_secs_f64(),
            decrypt: p.decrypt + l.timings.decrypt.as_secs_f64(),
            local: p.local + l.client_compute.as_secs_f64(),
        })
    };
    for _ in 0..opts.reps.max(1) {
        prepare(&mut exec)?;
        let before = cloud_total(&exec);
        let phases_before = phase_total(&exec);
        let t = Instant::now();
        let (_, times) = pool.install(|| qm.forward_with(&x, &mut exec, &mut ws))?;
        let wall = t.elapsed();
        let c = cloud_total(&exec) - before;
        client.push(wall.saturating_sub(c).as_secs_f64());
        cloud.push(c.as_secs_f64());
        quantize.push(times.quantize.as_secs_f64());
        nonlinear.push(times.nonlinear.as_secs_f64());
        let after = phase_total(&exec);
        phases.push(ClientPhases {
            encrypt: after.encrypt - phases_before.encrypt,
            verify: after.verify - phases_before.verify,
            decrypt: after.decrypt - phases_before.decrypt,
            local: after.local - phases_before.local,
        });
    }
    let mut ws = Workspace::new();
    pool.install(|| model.forward_float_with(&x, &mut ws))?;
    let float_s = median(
        (0..opts.reps.max(1))
            .map(|_| {
                let t = Instant::now();
                pool.install(|| model.forward_float_with(&x, &mut ws)).map(|_| t.elapsed().as_secs_f64())
            })
            .collect::<Result<Vec<_>>>()?,
    );
    let tract_s = tract_time(onnx, opts, model, &x)?;
    let mut engines: Vec<(&str, f64)> = vec![("vericonv float", float_s)];
    engines.extend(tract_s.map(|t| ("tract", t)));
    engines.extend(onnxruntime.map(|t| ("onnxruntime", t)));
    let (best, best_s) = engines.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap_or(("none", f64::NAN));
    // The phases of the pass whose client time was the median.
    let median_phases = {
        let mut order: Vec<usize> = (0..client.len()).collect();
        order.sort_by(|&a, &b| client[a].total_cmp(&client[b]));
        order.get(order.len() / 2).map_or_else(ClientPhases::default, |&i| phases[i])
    };
    let client_s = median(client);
    if !exact {
        return Err(Error::Internal(format!("{}: private logits differ from the quantized model's", model.name())));
    }
    Ok(WholeRow {
        model: model.name().to_string(),
        privacy: opts.privacy.label(),
        batch: opts.batch,
        threads: opts.threads,
        client_s,
        client_quantize_s: median(quantize),
        client_nonlinear_s: median(nonlinear),
        client_phases_s: median_phases,
        session_s: session.as_secs_f64(),
        pad_offline_s: pad.then(|| median(offline)),
        cloud_s: median(cloud),
        tract_s,
        float_s,
        onnxruntime_s: onnxruntime,
        best_plaintext: best.to_string(),
        best_plaintext_s: best_s,
        speedup: best_s / client_s,
        exact,
    })
}

#[cfg(feature = "tract")]
fn tract_time(onnx: &[u8], opts: &WholeOptions, model: &Model, x: &[f32]) -> Result<Option<f64>> {
    let i = model.input();
    let shape = [opts.batch, i.channels, i.height, i.width];
    let plan = crate::bench::TractPlan::from_onnx(onnx, &shape)?;
    plan.run(&shape, x, opts.threads)?;
    let times = (0..opts.reps.max(1))
        .map(|_| {
            let t = Instant::now();
            plan.run(&shape, x, opts.threads).map(|_| t.elapsed().as_secs_f64())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(median(times)))
}

#[cfg(not(feature = "tract"))]
fn tract_time(_: &[u8], _: &WholeOptions, _: &Model, _: &[f32]) -> Result<Option<f64>> {
    Ok(None)
}
