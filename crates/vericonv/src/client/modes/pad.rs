//! Mode `pad` (docs/scheme.md §12): one cloud receives `K'` and `β·(X + R)[π]`, `R` a uniform
//! one-time pad drawn offline with `U = Conv(K, R)`; the client unmasks with `U`.

use super::{Layer, MaskingMode};
use crate::decrypt::{ImageTables, Unmask};
use crate::encrypt::encrypt_image_padded;
use crate::field::SmallInt;
use crate::geometry::Conv2d;
use crate::keys::{KeyRng, SessionKey};
use crate::pad::{Pad, PadPool, SpentPads};
use crate::verify::FastRounds;
use crate::{Error, Result};

/// The precomputed pads of the current session key.
#[derive(Default)]
pub(in crate::client) struct PadMasking {
    pool: Option<PadPool>,
}

impl MaskingMode for PadMasking {
    /// One pad per image, taken from the pool.
    type Secrets = Vec<Pad>;

    fn session(_geom: &Conv2d, _key: &SessionKey, _kernel: &[u32], _rng: &mut KeyRng) -> Result<Self> {
        Ok(Self::default())
    }

    fn pads(&mut self) -> Option<&mut Option<PadPool>> {
        Some(&mut self.pool)
    }

    fn pads_left(&self) -> usize {
        self.pool.as_ref().map_or(0, PadPool::len)
    }

    fn draw(&mut self, layer: &str, _key: &SessionKey, batch: usize, _rng: &mut KeyRng) -> Result<Self::Secrets> {
        match &mut self.pool {
            Some(pool) => pool.take(batch),
            None => Err(Error::PadPoolExhausted { layer: layer.to_string(), needed: batch, available: 0 }),
        }
    }

    fn encrypt_image<T: SmallInt>(
        &self,
        key: &SessionKey,
        pads: &Self::Secrets,
        b: usize,
        x: &[T],
        sent: &mut [u32],
    ) -> Result<()> {
        encrypt_image_padded(key, &pads[b], x, sent)
    }

    /// The input side comes from `X'`: the pad hides nothing the client must recompute.
    fn fast_rounds<T: SmallInt>(
        layer: &Layer<'_>,
        _pads: &Self::Secrets,
        batch: usize,
        sent: &[u32],
        _x: &[T],
        y: &[u32],
        rng: &mut KeyRng,
    ) -> Result<FastRounds> {
        layer.fast_rounds_of_claim(batch, sent, y, rng)
    }

    fn unmask<'a>(
        &'a self,
        pads: &'a Self::Secrets,
        _tables: &'a [ImageTables],
        _yb: Option<&'a [u32]>,
    ) -> Option<Unmask<'a>> {
        Some(Unmask::Pad(pads))
    }

    fn recycle(pads: Self::Secrets, spent: &mut SpentPads) {
        spent.put(pads);
    }
}
