//! The private executor: every `Conv` (and, on request, `Linear`) node of a quantized model runs
//! through [`vericonv::PrivateConv`] on untrusted clouds, with keys per layer and session.

use crate::quant::{Epilogue, IntegerExecutor, QuantInput, QuantLayer, QuantModel, qmax};
use crate::{ModelError, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use vericonv::Error;
use vericonv::KeyRng;
use vericonv::Mode;
use vericonv::Privacy;
use vericonv::{Answer, AnswerBuffers, LayerConfig, Pending, PrivateConv, Timings};
use vericonv::{CloudBackend, Clouds, CpuBackend};

/// Settings of a private forward pass.
#[derive(Clone, Debug)]
pub struct PrivateConfig {
    /// Verification mode (default Fast).
    pub mode: Mode,
    /// Verification rounds (default 1).
    pub rounds: usize,
    /// How inputs (and in mode `split-model` the weights) are masked (default `pad`).
    pub privacy: Privacy,
    /// Outsource `Linear` layers too (default false: docs/scheme.md §9, their masks are weaker).
    pub outsource_linear: bool,
    /// Rotate each layer's session key after this many images (default: never).
    pub rotate_after_images: Option<u64>,
}

impl Default for PrivateConfig {
    fn default() -> Self {
        let d = LayerConfig::default();
        Self { mode: d.mode, rounds: d.rounds, privacy: d.privacy, outsource_linear: false, rotate_after_images: None }
    }
}

/// What one layer cost and how its verification went.
#[derive(Clone, Debug, Default)]
pub struct LayerStats {
    /// Layer name.
    pub name: String,
    /// Whether it ran on the cloud (false: computed by the client).
    pub outsourced: bool,
    /// Batches sent to the cloud.
    pub calls: u64,
    /// Batches whose verification passed.
    pub verified: u64,
    /// Batches rejected by verification (or malformed).
    pub rejected: u64,
    /// Phase times summed over calls.
    pub timings: Timings,
    /// Mode `pad`: time spent precomputing pads offline (not part of any call).
    pub offline: Duration,
    /// Client time for layers it computes itself.
    pub client_compute: Duration,
}

/// Runs every `Conv` (and optionally `Linear`) layer through the private protocol on untrusted
/// clouds; the client computes the remaining `Linear` layers itself.
pub struct PrivateExecutor<'a> {
    clouds: Clouds<'a>,
    rng: KeyRng,
    layers: Vec<Option<PrivateConv>>,
    stats: Vec<LayerStats>,
    /// Per layer, the batch in flight: being encrypted, then its verified answer.
    pending: Vec<Option<Pending>>,
    answers: Vec<Option<Answer>>,
    /// The answers' buffers, reused from layer to layer and pass to pass.
    answer_buffers: AnswerBuffers,
    /// Per layer the client computes itself, the batch's exact integers.
    local: Vec<Option<Vec<i32>>>,
    /// Per layer, the time of the per-image calls (encryption, then decryption), in
    /// nanoseconds summed over images.
    image_ns: Vec<[AtomicU64; 2]>,
}

impl<'a> PrivateExecutor<'a> {
    /// Sets up one session per outsourced layer: keys, `K'` and the mode's secrets. `clouds` is
    /// one cloud, or [`Clouds::Two`] for modes `two-server` and `split-model`. In modes `pad`
    /// and `split-model`, call [`PrivateExecutor::prepare_pads`] before each forward pass;
    /// without it, each layer draws its pads on the client's CPU when it needs them.
    ///
    /// # Errors
    /// [`Error::CloudCount`] and [`Error::SameCloudTwice`] for the wrong clouds,
    /// [`Error::ExactnessBound`] and the settings errors of [`PrivateConv::new`].
    pub fn new(qm: &QuantModel, clouds: impl Into<Clouds<'a>>, cfg: &PrivateConfig, mut rng: KeyRng) -> Result<Self> {
        let clouds = clouds.into();
        if clouds.count() != cfg.privacy.clouds() {
            return Err(Error::CloudCount {
                mode: cfg.privacy.name(),
                needed: cfg.privacy.clouds(),
                got: clouds.count(),
            }
            .into());
        }
        if let Clouds::Two(a, b) = clouds
            && std::ptr::addr_eq(a, b)
        {
            return Err(Error::SameCloudTwice(a.name()).into());
        }
        let mut layers: Vec<Option<PrivateConv>> = (0..qm.layers.len()).map(|_| None).collect();
        let mut stats: Vec<LayerStats> = qm
            .layers
            .iter()
            .map(|l| LayerStats {
                name: l.as_ref().map_or_else(String::new, |l| l.name.clone()),
                ..LayerStats::default()
            })
            .collect();
        for layer in qm.layers() {
            if layer.is_linear && !cfg.outsource_linear {
                continue;
            }
            let lc = LayerConfig {
                name: layer.name.clone(),
                privacy: cfg.privacy,
                mode: cfg.mode,
                rounds: cfg.rounds,
                input_bound: qmax(qm.cfg.act_bits) as u32,
                rotate_after_images: cfg.rotate_after_images,
            };
            layers[layer.node] = Some(PrivateConv::new(layer.geom, &layer.weight, None, lc, &mut rng)?);
            stats[layer.node].outsourced = true;
        }
        let n = layers.len();
        Ok(Self {
            clouds,
            rng,
            layers,
            stats,
            pending: (0..n).map(|_| None).collect(),
            answers: (0..n).map(|_| None).collect(),
            answer_buffers: AnswerBuffers::default(),
            local: vec![None; n],
            image_ns: (0..n).map(|_| [AtomicU64::new(0), AtomicU64::new(0)]).collect(),
        })
    }

    /// Modes `pad` and `split-model`, offline: precomputes `images` pads for every outsourced layer, with the mask
    /// convolutions on `backend`, the client's own (docs/scheme.md §12). Returns the time it took,
    /// which is also added to each layer's [`LayerStats::offline`]. Does nothing in the other
    /// modes.
    ///
    /// # Errors
    /// The errors of [`PrivateConv::generate_pads`].
    pub fn prepare_pads(&mut self, images: usize, backend: &dyn CloudBackend) -> Result<Duration> {
        let mut total = Duration::ZERO;
        for (layer, stats) in self.layers.iter_mut().zip(self.stats.iter_mut()) {
            let Some(layer) = layer.as_mut().filter(|l| l.config().privacy.uses_pads()) else { continue };
            let start = Instant::now();
            layer.refill_pads(images, backend, &mut self.rng)?;
            let t = start.elapsed();
            stats.offline += t;
            total += t;
        }
        Ok(total)
    }

    /// Per-layer statistics so far (quantized layers only).
    pub fn stats(&self) -> impl Iterator<Item = &LayerStats> {
        self.stats.iter().filter(|s| !s.name.is_empty())
    }

    /// The clouds in use.
    pub fn clouds(&self) -> Clouds<'a> {
        self.clouds
    }
}

/// `Duration` as nanoseconds, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl PrivateExecutor<'_> {
    /// The missing state of a batch: a stage was skipped (a bug of the caller).
    fn out_of_order(layer: &QuantLayer) -> ModelError {
        ModelError::Internal(format!("layer `{}`: the batch's stages ran out of order", layer.name))
    }
}

impl IntegerExecutor for PrivateExecutor<'_> {
    fn start(&mut self, layer: &QuantLayer, batch: usize) -> Result<()> {
        let Some(private) = self.layers[layer.node].as_mut() else { return Ok(()) };
        // Pads the pass lacks (none prepared) are drawn on the client's own CPU, as offline work.
        self.pending[layer.node] = Some(private.start_or_draw_pads(batch, &CpuBackend::new(), &mut self.rng)?);
        Ok(())
    }

    fn slot_len(&self, layer: &QuantLayer) -> usize {
        self.layers[layer.node].as_ref().map_or(0, |l| l.geometry().image_len())
    }

    fn encrypt(&self, layer: &QuantLayer, b: usize, x: QuantInput<'_>, slot: &mut [u32]) -> Result<()> {
        let Some(private) = self.layers[layer.node].as_ref() else { return Ok(()) };
        let pending = self.pending[layer.node].as_ref().ok_or_else(|| Self::out_of_order(layer))?;
        let start = Instant::now();
        match x {
            QuantInput::Bits8(x) => private.encrypt_image(pending, b, x, slot)?,
            QuantInput::Bits16(x) => private.encrypt_image(pending, b, x, slot)?,
        }
        self.image_ns[layer.node][0].fetch_add(nanos(start.elapsed()), Ordering::Relaxed);
        Ok(())
    }

    fn run(&mut self, layer: &QuantLayer, x: QuantInput<'_>, sent: &[u32]) -> Result<()> {
        let stats = &mut self.stats[layer.node];
        let Some(private) = self.layers[layer.node].as_mut() else {
            // A layer the client computes itself: the whole batch at once (one GEMM).
            let start = Instant::now();
            let batch = x.len() / layer.geom.image_len().max(1);
            self.local[layer.node] = Some(match x {
                QuantInput::Bits8(x) => layer.compute(x, batch),
                QuantInput::Bits16(x) => layer.compute(x, batch),
            });
            stats.client_compute += start.elapsed();
            return Ok(());
        };
        let pending = self.pending[layer.node].take().ok_or_else(|| Self::out_of_order(layer))?;
        stats.calls += 1;
        stats.timings.encrypt += Duration::from_nanos(self.image_ns[layer.node][0].swap(0, Ordering::Relaxed));
        let answer = match x {
            QuantInput::Bits8(x) => {
                private.send(pending, self.clouds, sent, x, &mut self.rng, &mut self.answer_buffers)
            }
            QuantInput::Bits16(x) => {
                private.send(pending, self.clouds, sent, x, &mut self.rng, &mut self.answer_buffers)
            }
        };
        match answer {
            Ok(answer) => {
                stats.verified += 1;
                stats.timings += answer.timings();
                stats.offline += answer.timings().offline;
                self.answers[layer.node] = Some(answer);
                Ok(())
            }
            Err(e @ (Error::VerificationFailed { .. } | Error::MalformedAnswer { .. })) => {
                stats.rejected += 1;
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn output(
        &self,
        layer: &QuantLayer,
        b: usize,
        _x: QuantInput<'_>,
        epilogue: &Epilogue<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        let Some(private) = self.layers[layer.node].as_ref() else {
            let acc = self.local[layer.node].as_ref().ok_or_else(|| Self::out_of_order(layer))?;
            let img = layer.geom.output_image_len();
            epilogue.apply_image(b, &acc[b * img..][..img], out);
            return Ok(());
        };
        let answer = self.answers[layer.node].as_ref().ok_or_else(|| Self::out_of_order(layer))?;
        let start = Instant::now();
        let epi = |plane: usize, range: std::ops::Range<usize>, ints: &[i32], out: &mut [f32]| {
            epilogue.apply(plane, range, ints, out);
        };
        private.decrypt_image(answer, b, out, &epi)?;
        self.image_ns[layer.node][1].fetch_add(nanos(start.elapsed()), Ordering::Relaxed);
        Ok(())
    }

    fn finish(&mut self, layer: &QuantLayer) {
        if let (Some(answer), Some(private)) = (self.answers[layer.node].take(), self.layers[layer.node].as_mut()) {
            private.recycle(answer, &mut self.answer_buffers);
        }
        self.local[layer.node] = None;
        let decrypt = Duration::from_nanos(self.image_ns[layer.node][1].swap(0, Ordering::Relaxed));
        self.stats[layer.node].timings.decrypt += decrypt;
    }
}
