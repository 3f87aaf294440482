//! Where the exact integers of a private layer come from: the client itself ([`Reference`]) or
//! the private protocol on untrusted clouds ([`PrivateConvs`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use vericonv::client::{LayerConfig, PrivateConv};
use vericonv::cloud::{CloudBackend, Clouds};
use vericonv::keys::KeyRng;
use vericonv::{Error, Result};

use super::PrivateLayer;
use crate::private::{LayerStats, PrivateConfig};
use crate::quant::{QuantInput, qmax};

/// The source of a private layer's exact integers `Σ w_q·x_q` (bias excluded).
pub trait ConvExecutor: Send + Sync {
    /// The integers of `layer` for `batch` images of quantized input `x`
    /// (`batch × Cin × H × W`), `batch × Cout × Ho × Wo`.
    ///
    /// # Errors
    /// Whatever the executor can fail with (for the private one: the clouds' errors and
    /// verification failures; nothing of a rejected answer is ever decrypted).
    fn conv(&self, layer: &PrivateLayer, x: QuantInput<'_>, batch: usize) -> Result<Vec<i32>>;

    /// One line for graph dumps.
    fn describe(&self) -> String;
}

/// The client computes every layer itself, exactly: the quantized plaintext model.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reference;

impl ConvExecutor for Reference {
    fn conv(&self, layer: &PrivateLayer, x: QuantInput<'_>, batch: usize) -> Result<Vec<i32>> {
        Ok(match x {
            QuantInput::Bits8(x) => layer.quant.compute(x, batch),
            QuantInput::Bits16(x) => layer.quant.compute(x, batch),
        })
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
            return Err(Error::CloudCount { mode: cfg.privacy.name(), needed: cfg.privacy.clouds(), got: count });
        }
        if let (a, Some(b)) = &clouds
            && Arc::ptr_eq(a, b)
        {
            return Err(Error::SameCloudTwice(a.name()));
        }
        let state = State { rng, layers: HashMap::new(), stats: HashMap::new() };
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

impl ConvExecutor for PrivateConvs {
    fn conv(&self, layer: &PrivateLayer, x: QuantInput<'_>, _batch: usize) -> Result<Vec<i32>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let State { rng, layers, stats } = &mut *state;
        let q = &layer.quant;
        let conv = match layers.entry(layer.index) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
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
        };
        let st = stats.entry(layer.index).or_insert_with(|| LayerStats {
            name: q.name.clone(),
            outsourced: true,
            ..LayerStats::default()
        });
        let clouds = match &self.clouds {
            (a, Some(b)) => Clouds::Two(&**a, &**b),
            (a, None) => Clouds::One(&**a),
        };
        st.calls += 1;
        match conv.run(clouds, &x.to_i32(), rng) {
            Ok((y, t)) => {
                st.verified += 1;
                st.timings += t;
                st.offline += t.offline;
                Ok(y)
            }
            Err(e) => {
                if matches!(e, Error::VerificationFailed { .. } | Error::MalformedAnswer { .. }) {
                    st.rejected += 1;
                }
                Err(e)
            }
        }
    }

    fn describe(&self) -> String {
        format!("private ({})", self.cfg.privacy.label())
    }
}
