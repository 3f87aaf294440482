//! Mode `lowrank`, the paper's scheme (docs/scheme.md §4–§7): one cloud receives `K'` and
//! `β·(X + R)[π]`, `R` of rank ρ drawn fresh per image; the client unmasks with the separable
//! correction `KG_t` and per-image tables.

use super::{Layer, MaskingMode};
use crate::Result;
use crate::decrypt::{ImageTables, MaskKernel, Unmask, image_tables};
use crate::encrypt::encrypt_image_lowrank;
use crate::field::SmallInt;
use crate::geometry::Conv2d;
use crate::keys::{ImageMask, KeyRng, SessionKey};
use crate::verify::FastRounds;

/// The session's `KG_t`, for the separable mask correction.
pub(in crate::client) struct LowRank {
    mk: MaskKernel,
}

impl MaskingMode for LowRank {
    /// One fresh mask per image.
    type Secrets = Vec<ImageMask>;

    fn session(_geom: &Conv2d, key: &SessionKey, kernel: &[u32], _rng: &mut KeyRng) -> Result<Self> {
        Ok(Self { mk: MaskKernel::new(key, kernel)? })
    }

    fn draw(&mut self, _layer: &str, key: &SessionKey, batch: usize, rng: &mut KeyRng) -> Result<Self::Secrets> {
        Ok(ImageMask::generate_batch(key, batch, rng))
    }

    fn encrypt_image<T: SmallInt>(
        &self,
        key: &SessionKey,
        masks: &Self::Secrets,
        b: usize,
        x: &[T],
        sent: &mut [u32],
    ) -> Result<()> {
        encrypt_image_lowrank(key, &masks[b], x, sent)
    }

    fn fast_rounds<T: SmallInt>(
        layer: &Layer<'_>,
        masks: &Self::Secrets,
        _batch: usize,
        _sent: &[u32],
        x: &[T],
        _y: &[u32],
        rng: &mut KeyRng,
    ) -> Result<FastRounds> {
        FastRounds::draw_plain(layer.key, layer.term, x, layer.bound, masks, layer.rounds, rng)
    }

    fn tables(key: &SessionKey, masks: &Self::Secrets) -> Vec<ImageTables> {
        image_tables(key, masks)
    }

    fn unmask<'a>(
        &'a self,
        _masks: &'a Self::Secrets,
        tables: &'a [ImageTables],
        _yb: Option<&'a [u32]>,
    ) -> Option<Unmask<'a>> {
        Some(Unmask::LowRank { mk: &self.mk, tables })
    }
}
