//! `vericonv bench --model M`: a whole network, end to end, on the same inputs in one run: the
//! client's whole private pipeline (quantize, mask, verify, unmask, non-linear and local
//! linear layers; the cloud timed apart, the session setup apart), the plaintext model through
//! tract and through vericonv's own float interpreter, and onnxruntime when
//! `scripts/ort-baseline.py` can run. The speed-up is against the fastest plaintext engine.

use std::time::{Duration, Instant};

use anyhow::Result;
use rand::RngExt;
use serde::Serialize;
use vericonv::Privacy;
use vericonv::seeded_rng;
use vericonv::{CloudBackend, Clouds, CpuBackend};
use vericonv_model::{LayerStats, Model, PrivateConfig, PrivateExecutor, Workspace};
use vericonv_model::{PlainExecutor, QuantConfig, QuantModel};

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
    /// Which client pipeline ran it: `native` (vericonv's own fused pass) or `tract` (tract's
    /// graph, the convolutions private).
    pub path: &'static str,
    /// The privacy mode.
    pub privacy: String,
    /// Images per batch.
    pub batch: usize,
    /// Threads.
    pub threads: usize,
    /// The client's online work: the private forward pass minus the cloud's time.
    pub client_s: f64,
    /// Of which quantization and re-scaling (native path only).
    pub client_quantize_s: Option<f64>,
    /// Of which non-linear layers (native path only: on the tract path they are tract's nodes,
    /// not timed apart).
    pub client_nonlinear_s: Option<f64>,
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
    /// vericonv's own float interpreter (native path only).
    pub float_s: Option<f64>,
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

/// The thread pool of a measurement and its seeded inputs, a batch of images of `image_len`
/// values in [0, 1).
fn pool_and_inputs(opts: &WholeOptions, image_len: usize) -> Result<(rayon::ThreadPool, Vec<f32>)> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()
        .map_err(|e| anyhow::anyhow!("thread pool: {e}"))?;
    let mut rng = seeded_rng(opts.seed);
    Ok((pool, (0..opts.batch * image_len).map(|_| rng.random_range(0.0..1.0)).collect()))
}

impl std::ops::Sub for ClientPhases {
    type Output = Self;

    fn sub(self, before: Self) -> Self {
        ClientPhases {
            encrypt: self.encrypt - before.encrypt,
            verify: self.verify - before.verify,
            decrypt: self.decrypt - before.decrypt,
            local: self.local - before.local,
        }
    }
}

/// The client's work per phase and the clouds' time, summed over the layers' statistics so
/// far (a pass's are the difference of the totals after and before it).
fn totals<'a>(stats: impl IntoIterator<Item = &'a LayerStats>) -> (ClientPhases, Duration) {
    stats.into_iter().fold((ClientPhases::default(), Duration::ZERO), |(p, cloud), l| {
        let phases = ClientPhases {
            encrypt: p.encrypt + l.timings.encrypt.as_secs_f64(),
            verify: p.verify + l.timings.verify.as_secs_f64(),
            decrypt: p.decrypt + l.timings.decrypt.as_secs_f64(),
            local: p.local + l.client_compute.as_secs_f64(),
        };
        (phases, cloud + l.timings.cloud)
    })
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
/// The model's and the protocol's errors; an error when tract fails or the private
/// logits differ from the quantized model's.
pub fn run_whole(
    model: &Model,
    onnx: &[u8],
    opts: &WholeOptions,
    clouds: Option<(&dyn CloudBackend, &dyn CloudBackend)>,
    pads_on: Option<&dyn CloudBackend>,
    onnxruntime: Option<f64>,
) -> Result<WholeRow> {
    let (pool, x) = pool_and_inputs(opts, model.image_len())?;
    let qm = QuantModel::new(model, QuantConfig::default())?;
    let local = (CpuBackend::with_threads(opts.threads)?, CpuBackend::with_threads(opts.threads)?);
    let (cloud_a, cloud_b): (&dyn CloudBackend, &dyn CloudBackend) = clouds.unwrap_or((&local.0, &local.1));
    let clouds = if opts.privacy.clouds() == 2 { Clouds::Two(cloud_a, cloud_b) } else { Clouds::One(cloud_a) };
    let cfg = PrivateConfig { privacy: opts.privacy, ..PrivateConfig::default() };
    // The session: keys, K' and the mask kernels of every layer.
    let t = Instant::now();
    let mut exec = pool.install(|| PrivateExecutor::new(&qm, clouds, &cfg, seeded_rng(opts.seed ^ 0x5e55)))?;
    let session = t.elapsed();
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
    for _ in 0..opts.reps.max(1) {
        prepare(&mut exec)?;
        let (phases_before, cloud_before) = totals(exec.stats());
        let t = Instant::now();
        let (_, times) = pool.install(|| qm.forward_with(&x, &mut exec, &mut ws))?;
        let wall = t.elapsed();
        let (phases_after, cloud_after) = totals(exec.stats());
        let c = cloud_after - cloud_before;
        client.push(wall.saturating_sub(c).as_secs_f64());
        cloud.push(c.as_secs_f64());
        quantize.push(times.quantize.as_secs_f64());
        nonlinear.push(times.nonlinear.as_secs_f64());
        phases.push(phases_after - phases_before);
    }
    let mut ws = Workspace::new();
    pool.install(|| model.forward_float_with(&x, &mut ws))?;
    let float_s = median(
        (0..opts.reps.max(1))
            .map(|_| {
                let t = Instant::now();
                pool.install(|| model.forward_float_with(&x, &mut ws)).map(|_| t.elapsed().as_secs_f64())
            })
            .collect::<vericonv_model::Result<Vec<_>>>()?,
    );
    let i = model.input();
    let tract_s = tract_time(onnx, &[opts.batch, i.channels, i.height, i.width], opts, &x)?;
    let passes = Passes { client, cloud, phases, offline: pad.then_some(offline) };
    let mut row = passes.row(model.name(), opts, session, exact, tract_s, Some(float_s), onnxruntime)?;
    row.client_quantize_s = Some(median(quantize));
    row.client_nonlinear_s = Some(median(nonlinear));
    Ok(row)
}

/// The measured passes of one configuration, per pass.
struct Passes {
    client: Vec<f64>,
    cloud: Vec<f64>,
    phases: Vec<ClientPhases>,
    offline: Option<Vec<f64>>,
}

impl Passes {
    /// The row of these passes against the plaintext engines that ran; an error when the
    /// private logits were not the quantized model's.
    #[allow(clippy::too_many_arguments)]
    fn row(
        self,
        model: &str,
        opts: &WholeOptions,
        session: Duration,
        exact: bool,
        tract_s: Option<f64>,
        float_s: Option<f64>,
        onnxruntime: Option<f64>,
    ) -> Result<WholeRow> {
        if !exact {
            anyhow::bail!("{model}: private logits differ from the quantized model's");
        }
        let mut engines: Vec<(&str, f64)> = Vec::new();
        engines.extend(float_s.map(|t| ("vericonv float", t)));
        engines.extend(tract_s.map(|t| ("tract", t)));
        engines.extend(onnxruntime.map(|t| ("onnxruntime", t)));
        let (best, best_s) = engines.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap_or(("none", f64::NAN));
        // The phases of the pass whose client time was the median.
        let median_phases = {
            let mut order: Vec<usize> = (0..self.client.len()).collect();
            order.sort_by(|&a, &b| self.client[a].total_cmp(&self.client[b]));
            order.get(order.len() / 2).map_or_else(ClientPhases::default, |&i| self.phases[i])
        };
        let client_s = median(self.client);
        Ok(WholeRow {
            model: model.to_string(),
            path: if float_s.is_some() { "native" } else { "tract" },
            privacy: opts.privacy.label(),
            batch: opts.batch,
            threads: opts.threads,
            client_s,
            client_quantize_s: None,
            client_nonlinear_s: None,
            client_phases_s: median_phases,
            session_s: session.as_secs_f64(),
            pad_offline_s: self.offline.map(median),
            cloud_s: median(self.cloud),
            tract_s,
            float_s,
            onnxruntime_s: onnxruntime,
            best_plaintext: best.to_string(),
            best_plaintext_s: best_s,
            speedup: best_s / client_s,
            exact,
        })
    }
}

/// [`run_whole`] for a model on the tract path (`vericonv_model::TractModel`): tract runs the graph
/// on the client, each convolution is private on `clouds` (`None`: CPU backends with the same
/// threads). The client's time is the private pass minus the clouds' time; the plaintext
/// engines are tract on the same graph and onnxruntime (`onnxruntime`, if it ran).
///
/// # Errors
/// As [`run_whole`].
#[cfg(feature = "tract")]
pub fn run_whole_tract(
    model: &vericonv_model::TractModel,
    onnx: &[u8],
    opts: &WholeOptions,
    clouds: Option<vericonv_model::OwnedClouds>,
    pads_on: Option<&dyn CloudBackend>,
    onnxruntime: Option<f64>,
) -> Result<WholeRow> {
    use std::sync::Arc;
    use vericonv_model::{ConvExecutor, PrivateConvs, Reference};
    let (pool, x) = pool_and_inputs(opts, model.image_shape().iter().product())?;
    let cpu = || CpuBackend::with_threads(opts.threads).map(|c| Arc::new(c) as Arc<dyn CloudBackend>);
    let clouds = match clouds {
        Some(c) => c,
        None => (cpu()?, if opts.privacy.clouds() == 2 { Some(cpu()?) } else { None }),
    };
    let own = CpuBackend::with_threads(opts.threads)?;
    let own: &dyn CloudBackend = pads_on.unwrap_or(&own);
    let cfg = PrivateConfig { privacy: opts.privacy, ..PrivateConfig::default() };
    let exec = Arc::new(PrivateConvs::new(clouds, cfg, seeded_rng(opts.seed ^ 0x5e55))?);
    let private = model.plan(Some(exec.clone() as Arc<dyn ConvExecutor>))?;
    let reference = model.plan(Some(Arc::new(Reference)))?;
    // The session: keys and K' of every layer.
    let session = pool.install(|| exec.prepare(model, 0, own))?;
    let (want, _) = pool.install(|| reference.run(&x))?;
    let pad = opts.privacy.uses_pads();
    let mut offline = Vec::new();
    // Each pass first draws its batch's pads offline (modes pad and split-model); the warm-up
    // pass is checked against the quantized model.
    let pass = |offline: &mut Vec<f64>| -> Result<(Vec<f32>, f64, f64, ClientPhases)> {
        let drawn = pool.install(|| exec.prepare(model, opts.batch, own))?;
        if pad {
            offline.push(drawn.as_secs_f64());
        }
        let (phases_before, cloud_before) = totals(&exec.stats());
        let t = Instant::now();
        let (logits, _) = pool.install(|| private.run(&x))?;
        let wall = t.elapsed();
        let (phases_after, cloud_after) = totals(&exec.stats());
        let cloud = cloud_after - cloud_before;
        Ok((logits, wall.saturating_sub(cloud).as_secs_f64(), cloud.as_secs_f64(), phases_after - phases_before))
    };
    let (first, ..) = pass(&mut Vec::new())?;
    let exact = first.len() == want.len() && first.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
    let (mut client, mut cloud, mut phases) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..opts.reps.max(1) {
        let (_, c, cl, ph) = pass(&mut offline)?;
        client.push(c);
        cloud.push(cl);
        phases.push(ph);
    }
    let mut shape = vec![opts.batch];
    shape.extend(model.image_shape());
    let tract_s = tract_time(onnx, &shape, opts, &x)?;
    let passes = Passes { client, cloud, phases, offline: pad.then_some(offline) };
    passes.row(model.name(), opts, session, exact, tract_s, None, onnxruntime)
}

/// tract's time on the ONNX graph `onnx` for input `x` of `shape`, the median of the passes
/// after a warm-up.
#[cfg(feature = "tract")]
fn tract_time(onnx: &[u8], shape: &[usize], opts: &WholeOptions, x: &[f32]) -> Result<Option<f64>> {
    let plan = crate::bench::TractPlan::from_onnx(onnx, shape)?;
    plan.run(shape, x, opts.threads)?;
    let times = (0..opts.reps.max(1))
        .map(|_| {
            let t = Instant::now();
            plan.run(shape, x, opts.threads).map(|_| t.elapsed().as_secs_f64())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(median(times)))
}

#[cfg(not(feature = "tract"))]
fn tract_time(_: &[u8], _: &[usize], _: &WholeOptions, _: &[f32]) -> Result<Option<f64>> {
    Ok(None)
}
