//! Where the exact integers of a private layer come from: the client itself ([`Reference`]) or
//! the private protocol on untrusted clouds ([`PrivateConvs`]).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::Result;
use rayon::prelude::*;
use vericonv::Error;
use vericonv::KeyRng;
use vericonv::{CallBuffers, LayerConfig, PrivateConv};
use vericonv::{CloudBackend, Clouds};

use super::{PrivateLayer, TractModel};
use crate::exec::MIN_TASK;
use crate::private::{LayerStats, PrivateConfig};
use crate::quant::{QuantInput, qmax};

/// What becomes of a private layer's exact integers: `epilogue(plane, range, ints, out)` writes
/// the elements `range` of output plane `plane` (`b·Cout + o`) from their integers (bias
/// excluded), as [`PrivateConv::run_into`] takes it.
pub type Epilogue<'a> = dyn Fn(usize, Range<usize>, &[i32], &mut [f32]) + Sync + 'a;

/// The source of a private layer's exact integers `Σ w_q·x_q` (bias excluded).
pub trait ConvExecutor: Send + Sync {
    /// The integers of `layer` for `batch` images of quantized input `x`
    /// (`batch × Cin × H × W`), handed to `epilogue` plane piece by plane piece, which writes
    /// `out` (`batch × Cout × Ho × Wo`).
    ///
    /// # Errors
    /// Whatever the executor can fail with (for the private one: the clouds' errors and
    /// verification failures; nothing of a rejected answer is ever decrypted).
    fn conv(
        &self,
        layer: &PrivateLayer,
        x: QuantInput<'_>,
        batch: usize,
        out: &mut [f32],
        epilogue: &Epilogue<'_>,
    ) -> Result<()>;

    /// One line for graph dumps.
    fn describe(&self) -> String;
}

/// The client computes every layer itself, exactly: the quantized plaintext model.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reference;

impl ConvExecutor for Reference {
    fn conv(
        &self,
        layer: &PrivateLayer,
        x: QuantInput<'_>,
        batch: usize,
        out: &mut [f32],
        epilogue: &Epilogue<'_>,
    ) -> Result<()> {
        let acc = match x {
            QuantInput::Bits8(x) => layer.quant.compute(x, batch),
            QuantInput::Bits16(x) => layer.quant.compute(x, batch),
        };
        vericonv::Conv2d::check_len("output", acc.len(), out.len())?;
        let n = layer.quant.geom.n();
        out.par_chunks_mut(n)
            .zip(acc.par_chunks(n))
            .with_min_len(MIN_TASK.div_ceil(n))
            .enumerate()
            .for_each(|(plane, (out, acc))| epilogue(plane, 0..n, acc, out));
        Ok(())
    }

    fn describe(&self) -> String {
        "on the client (quantized plaintext)".into()
    }
}

/// The clouds of a private run: one, or two for mode `two-server`.
pub type OwnedClouds = (Arc<dyn CloudBackend>, Option<Arc<dyn CloudBackend>>);

/// Every private layer through the private protocol on untrusted clouds: a session per layer,
/// made on its first call. In mode `pad`, each call's pads are drawn just before it on the
/// client's own CPU, and that time is counted as offline work.
pub struct PrivateConvs {
    clouds: OwnedClouds,
    cfg: PrivateConfig,
    state: Mutex<State>,
}

struct State {
    rng: KeyRng,
    layers: HashMap<usize, PrivateConv>,
    stats: HashMap<usize, LayerStats>,
    /// Working memory reused by every call (the tensor sent, the answers' buffers).
    bufs: CallBuffers,
}

impl std::fmt::Debug for PrivateConvs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateConvs").field("privacy", &self.cfg.privacy).finish_non_exhaustive()
    }
}

impl PrivateConvs {
    /// Private layers on `clouds` with the settings `cfg` and the client's CSPRNG `rng`.
    ///
    /// # Errors
    /// [`Error::CloudCount`] when the mode needs another number of clouds,
    /// [`Error::SameCloudTwice`] for one cloud given twice.
    pub fn new(clouds: OwnedClouds, cfg: PrivateConfig, rng: KeyRng) -> Result<Self> {
        let count = 1 + usize::from(clouds.1.is_some());
        if count != cfg.privacy.clouds() {
            return Err(Error::CloudCount { mode: cfg.privacy.name(), needed: cfg.privacy.clouds(), got: count }.into());
        }
        if let (a, Some(b)) = &clouds
            && Arc::ptr_eq(a, b)
        {
            return Err(Error::SameCloudTwice(a.name()).into());
        }
        let state = State { rng, layers: HashMap::new(), stats: HashMap::new(), bufs: CallBuffers::default() };
        Ok(Self { clouds, cfg, state: Mutex::new(state) })
    }

    /// Per-layer statistics so far, in layer order.
    pub fn stats(&self) -> Vec<LayerStats> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut stats: Vec<(usize, LayerStats)> = state.stats.iter().map(|(&i, s)| (i, s.clone())).collect();
        stats.sort_by_key(|(i, _)| *i);
        stats.into_iter().map(|(_, s)| s).collect()
    }
}

impl PrivateConvs {
    /// The session of `layer`, made on first use.
    fn session<'s>(
        &self,
        layers: &'s mut HashMap<usize, PrivateConv>,
        layer: &PrivateLayer,
        rng: &mut KeyRng,
    ) -> Result<&'s mut PrivateConv> {
        Ok(match layers.entry(layer.index) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let q = &layer.quant;
                let lc = LayerConfig {
                    name: q.name.clone(),
                    privacy: self.cfg.privacy,
                    mode: self.cfg.mode,
                    rounds: self.cfg.rounds,
                    input_bound: qmax(layer.act_bits) as u32,
                    rotate_after_images: self.cfg.rotate_after_images,
                };
                e.insert(PrivateConv::new(q.geom, &q.weight, None, lc, rng)?)
            }
        })
    }

    /// Prepares every private layer of `model` for `images` more images ahead of the calls:
    /// makes each layer's session (keys, `K'`) and, in modes `pad` and `split-model`, draws
    /// the pads those images need on `own`, the client's own backend. Returns the time it took
    /// (offline work: the calls then only send, verify and unmask).
    ///
    /// # Errors
    /// The errors of [`PrivateConv::new`] and [`PrivateConv::draw_missing_pads`].
    pub fn prepare(&self, model: &TractModel, images: usize, own: &dyn CloudBackend) -> Result<Duration> {
        let start = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let State { rng, layers, .. } = &mut *state;
        for layer in model.private_layers() {
            self.session(layers, layer, rng)?.draw_missing_pads(images, own, rng)?;
        }
        Ok(start.elapsed())
    }
}

impl ConvExecutor for PrivateConvs {
    fn conv(
        &self,
        layer: &PrivateLayer,
        x: QuantInput<'_>,
        _batch: usize,
        out: &mut [f32],
        epilogue: &Epilogue<'_>,
    ) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let State { rng, layers, stats, bufs } = &mut *state;
        let conv = self.session(layers, layer, rng)?;
        let st = stats.entry(layer.index).or_insert_with(|| LayerStats {
            name: layer.quant.name.clone(),
            outsourced: true,
            ..LayerStats::default()
        });
        let clouds = match &self.clouds {
            (a, Some(b)) => Clouds::Two(&**a, &**b),
            (a, None) => Clouds::One(&**a),
        };
        st.calls += 1;
        let ran = match x {
            QuantInput::Bits8(x) => conv.run_into(clouds, x, rng, bufs, out, &epilogue),
            QuantInput::Bits16(x) => conv.run_into(clouds, x, rng, bufs, out, &epilogue),
        };
        match ran {
            Ok(t) => {
                st.verified += 1;
                st.timings += t;
                st.offline += t.offline;
                Ok(())
            }
            Err(e) => {
                if matches!(e, Error::VerificationFailed { .. } | Error::MalformedAnswer { .. }) {
                    st.rejected += 1;
                }
                Err(e.into())
            }
        }
    }

    fn describe(&self) -> String {
        format!("private ({})", self.cfg.privacy.label())
    }
}
