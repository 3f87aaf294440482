//! `vericonv bench --cloud`: a remote cloud under load. Concurrent clients, each with its own
//! connection and session keys, run the whole private layer (mask, gRPC call, verify, unmask)
//! against one server; every answer is checked against the plaintext convolution. Reported:
//! verified calls, calls refused as busy (`RESOURCE_EXHAUSTED`), throughput and the p50/p99
//! latency of verified calls.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::RngExt;
use serde::Serialize;
use vericonv::Error;
use vericonv::Privacy;
use vericonv::conv_i64;
use vericonv::seeded_rng;
use vericonv::{CloudBackend, Clouds};
use vericonv::{LayerConfig, PrivateConv};

use crate::bench::BenchLayer;

/// The load a [`run_load`] applies.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Concurrent clients.
    pub clients: usize,
    /// Calls per client.
    pub requests: usize,
    /// Images per call.
    pub batch: usize,
    /// `lowrank` (one cloud) or `two-server` (two).
    pub privacy: Privacy,
    /// Seed of the layer data and of the clients' keys (a benchmark, not a deployment).
    pub seed: u64,
}

/// One measured layer.
#[derive(Clone, Debug, Serialize)]
pub struct LoadRow {
    /// Network.
    pub network: String,
    /// Layer.
    pub layer: String,
    /// The privacy mode.
    pub privacy: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Calls per client.
    pub requests: usize,
    /// Images per call.
    pub batch: usize,
    /// Calls verified and equal to the plaintext convolution.
    pub verified: usize,
    /// Calls refused with `RESOURCE_EXHAUSTED`.
    pub busy: usize,
    /// Calls that failed otherwise (none is expected).
    pub failed: usize,
    /// Seconds from the first call to the last answer.
    pub wall_s: f64,
    /// Verified calls per second.
    pub calls_per_s: f64,
    /// Verified images per second.
    pub images_per_s: f64,
    /// Median latency of a verified call (client work included), ms.
    pub p50_ms: f64,
    /// 99th percentile of the same, ms.
    pub p99_ms: f64,
    /// Bytes of X' sent per call (each cloud in mode two-server gets its share), MB.
    pub mb_sent_per_call: f64,
}

/// The clouds of one client: one, or two in mode two-server.
pub type ClientClouds = (Box<dyn CloudBackend>, Option<Box<dyn CloudBackend>>);

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Runs `opts.clients × opts.requests` private calls of layer `l`, each client with the clouds
/// `connect` gives it.
///
/// # Errors
/// The first error of `connect` or of a layer's setup; an error when a verified
/// answer differs from the plaintext convolution.
pub fn run_load(
    l: &BenchLayer,
    connect: &(dyn Fn() -> Result<ClientClouds> + Sync),
    opts: &LoadOptions,
) -> Result<LoadRow> {
    let g = l.geom;
    let mut rng = seeded_rng(opts.seed);
    let k: Vec<i32> = (0..g.kernel_len()).map(|_| rng.random_range(-127..=127)).collect();
    let x: Vec<i32> = (0..opts.batch * g.image_len()).map(|_| rng.random_range(-127..=127)).collect();
    let widen = |v: &[i32]| v.iter().map(|&a| i64::from(a)).collect::<Vec<_>>();
    let exact = conv_i64(&g, opts.batch, &widen(&k), &widen(&x))?;
    let latencies = Mutex::new(Vec::new());
    let (busy, failed) = (Mutex::new(0usize), Mutex::new(Vec::<String>::new()));
    let started = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let mut workers = Vec::new();
        for client in 0..opts.clients {
            let (k, x, exact, latencies, busy, failed) = (&k, &x, &exact, &latencies, &busy, &failed);
            workers.push(s.spawn(move || -> Result<()> {
                let (a, b) = connect()?;
                let clouds = match &b {
                    Some(b) => Clouds::Two(a.as_ref(), b.as_ref()),
                    None => Clouds::One(a.as_ref()),
                };
                let mut rng = seeded_rng(opts.seed ^ (client as u64 + 1).rotate_left(32));
                let cfg = LayerConfig { name: l.layer.to_string(), privacy: opts.privacy, ..LayerConfig::default() };
                let mut layer = PrivateConv::new(g, k, None, cfg, &mut rng)?;
                for _ in 0..opts.requests {
                    let t = Instant::now();
                    match layer.run(clouds, x, &mut rng) {
                        Ok((y, timings)) => {
                            if y.iter().zip(exact).any(|(&a, &b)| i64::from(a) != b) {
                                anyhow::bail!("a verified answer differs from the plaintext");
                            }
                            // Online latency: the pads drawn just before the call are offline work.
                            let online = t.elapsed().saturating_sub(timings.offline);
                            latencies.lock().unwrap_or_else(|e| e.into_inner()).push(online.as_secs_f64());
                        }
                        Err(Error::Backend { exhausted: true, .. }) => {
                            *busy.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                        }
                        Err(e) => failed.lock().unwrap_or_else(|e| e.into_inner()).push(e.to_string()),
                    }
                }
                Ok(())
            }));
        }
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("a load client panicked"))??;
        }
        Ok(())
    })?;
    let wall = started.elapsed().max(Duration::from_nanos(1)).as_secs_f64();
    let mut lat = latencies.into_inner().unwrap_or_else(|e| e.into_inner());
    lat.sort_by(f64::total_cmp);
    let failed = failed.into_inner().unwrap_or_else(|e| e.into_inner());
    if let Some(first) = failed.first() {
        eprintln!("{} {}: {} call(s) failed; the first: {first}", l.network, l.layer, failed.len());
    }
    Ok(LoadRow {
        network: l.network.into(),
        layer: l.layer.into(),
        privacy: opts.privacy.label(),
        clients: opts.clients,
        requests: opts.requests,
        batch: opts.batch,
        verified: lat.len(),
        busy: busy.into_inner().unwrap_or_else(|e| e.into_inner()),
        failed: failed.len(),
        wall_s: wall,
        calls_per_s: lat.len() as f64 / wall,
        images_per_s: (lat.len() * opts.batch) as f64 / wall,
        p50_ms: percentile(&lat, 0.5) * 1e3,
        p99_ms: percentile(&lat, 0.99) * 1e3,
        mb_sent_per_call: (opts.batch * g.image_len() * 4) as f64 / 1e6,
    })
}
