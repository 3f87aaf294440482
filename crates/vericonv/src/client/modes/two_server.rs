//! Mode `two-server` (docs/scheme.md §11): cloud A receives a 32-byte seed and expands its
//! share `G(seed)` itself, cloud B receives `β·X[π] - G(seed)`; both convolve with `K'`, and
//! the client unmasks the sum of their answers.

use std::sync::atomic::{AtomicBool, Ordering};

use super::{Layer, MaskingMode, concurrently, two_clouds};
use crate::Cheater;
use crate::Result;
use crate::cloud::Clouds;
use crate::decrypt::{ImageTables, Unmask};
use crate::encrypt::{split_share_image, split_share_small_into};
use crate::field::{M31, PrimeField, SmallInt};
use crate::geometry::Conv2d;
use crate::keys::{KeyRng, SessionKey};
use crate::share::ShareSeed;
use crate::verify::FastRounds;

/// Nothing beyond the session key.
pub(in crate::client) struct TwoServer;

/// The secrets of a batch: the seed of cloud A's share.
pub(in crate::client) struct ShareSecrets {
    seed: ShareSeed,
    /// A word of the key stream was rejected while an image was split: the whole share is
    /// made again, exactly, before it is sent.
    rejected_word: AtomicBool,
}

impl MaskingMode for TwoServer {
    type Secrets = ShareSecrets;

    fn session(_geom: &Conv2d, _key: &SessionKey, _kernel: &[u32], _rng: &mut KeyRng) -> Result<Self> {
        Ok(Self)
    }

    fn draw(&mut self, _layer: &str, _key: &SessionKey, _batch: usize, rng: &mut KeyRng) -> Result<Self::Secrets> {
        Ok(ShareSecrets { seed: ShareSeed::generate(rng), rejected_word: AtomicBool::new(false) })
    }

    fn encrypt_image<T: SmallInt>(
        &self,
        key: &SessionKey,
        s: &Self::Secrets,
        b: usize,
        x: &[T],
        sent: &mut [u32],
    ) -> Result<()> {
        if split_share_image(key, &s.seed, b, x, sent)? {
            s.rejected_word.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    fn outgoing<'s, T: SmallInt>(
        key: &SessionKey,
        s: &Self::Secrets,
        x: &[T],
        sent: &'s [u32],
        remade: &'s mut Vec<u32>,
    ) -> Result<&'s [u32]> {
        if !s.rejected_word.load(Ordering::Relaxed) {
            return Ok(sent);
        }
        remade.resize(sent.len(), 0);
        split_share_small_into(key, &s.seed, x, remade)?;
        Ok(remade)
    }

    fn call(
        &self,
        layer: &Layer<'_>,
        s: &Self::Secrets,
        clouds: Clouds<'_>,
        batch: usize,
        sent: &[u32],
        y: &mut Vec<u32>,
        yb: Option<&mut Vec<u32>>,
    ) -> Result<()> {
        let (a, b, yb) = two_clouds(clouds, yb, layer.name)?;
        let kernel = layer.kernel_enc;
        concurrently(
            || a.conv_share_session_into(kernel, batch, &s.seed, y),
            || b.conv_session_into(kernel, batch, sent, yb),
        )
    }

    fn fast_rounds<T: SmallInt>(
        layer: &Layer<'_>,
        _s: &Self::Secrets,
        _batch: usize,
        _sent: &[u32],
        x: &[T],
        _y: &[u32],
        rng: &mut KeyRng,
    ) -> Result<FastRounds> {
        FastRounds::draw_plain(layer.key, layer.term, x, layer.bound, &[], layer.rounds, rng)
    }

    fn strict(
        layer: &Layer<'_>,
        s: &Self::Secrets,
        batch: usize,
        sent: &[u32],
        answers: (&[u32], Option<&[u32]>),
        rng: &mut KeyRng,
    ) -> Result<Option<usize>> {
        // X' = X'_A + X'_B, for the claim.
        let xa = s.seed.expand(sent.len());
        let xp: Vec<u32> = xa.iter().zip(sent).map(|(&a, &b)| M31::add(a, b)).collect();
        layer.strict_sum(batch, &xp, answers, rng)
    }

    fn blame(
        &self,
        layer: &Layer<'_>,
        s: &Self::Secrets,
        batch: usize,
        sent: &[u32],
        (y, yb): (&[u32], Option<&[u32]>),
        rng: &mut KeyRng,
    ) -> Result<Cheater> {
        let kp = layer.kernel_enc.data();
        let xa = s.seed.expand(sent.len());
        layer.blame_two(batch, (kp, &xa, y), (kp, sent, yb.unwrap_or_default()), rng)
    }

    fn unmask<'a>(
        &'a self,
        _s: &'a Self::Secrets,
        _tables: &'a [ImageTables],
        yb: Option<&'a [u32]>,
    ) -> Option<Unmask<'a>> {
        yb.map(Unmask::Sum)
    }
}
