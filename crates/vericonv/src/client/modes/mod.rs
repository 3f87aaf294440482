//! The privacy modes, each a module behind one trait, [`MaskingMode`]: what the client draws
//! per batch, sends to which clouds, how it verifies their answers and how it unmasks them.
//! [`PrivateConv`](super::PrivateConv) runs the steps common to every mode (checks, timing,
//! buffers, the Fast verification pass, decryption) and picks the mode once, through
//! [`with_masking!`].
//!
//! Adding a mode is one module here plus wiring: a variant of [`Masking`] and of
//! [`crate::privacy::Privacy`], its arm in [`Masking::session`] and in [`with_masking!`].

mod lowrank;
mod pad;
mod split_model;
mod two_server;

use std::any::Any;

use crate::Cheater;
use crate::cloud::{CloudBackend, Clouds, SessionKernel};
use crate::decrypt::{ImageTables, Unmask};
use crate::field::{M31, SmallInt};
use crate::geometry::Conv2d;
use crate::keys::{KeyRng, SessionKey};
use crate::pad::{PadPool, SpentPads};
use crate::privacy::Privacy;
use crate::verify::{Claim, FastRounds, KernelTerm, Mode, Verdict, verify};
use crate::{Error, Result};

use lowrank::LowRank;
use pad::PadMasking;
use split_model::SplitModel;
use two_server::TwoServer;

/// What a mode reads of its layer while it sends a batch and verifies the answer.
pub(super) struct Layer<'a> {
    /// The layer's name, for errors.
    pub name: &'a str,
    /// The layer's geometry.
    pub geom: &'a Conv2d,
    /// The session key.
    pub key: &'a SessionKey,
    /// `K'`, the session's encrypted kernel.
    pub kernel_enc: &'a SessionKernel,
    /// The kernel term of Fast verification (the plain kernel in few bits, or `K'`).
    pub term: KernelTerm<'a>,
    /// Fast or Strict verification.
    pub mode: Mode,
    /// Verification rounds.
    pub rounds: usize,
    /// The input bound `min(Bx, (p-1)/2)`.
    pub bound: u32,
}

impl Layer<'_> {
    /// The claim "`y` is `K' * sent`", for Fast verification of the modes whose client cannot
    /// read the input side from the plain input, and for Strict verification.
    fn claim<'c>(&'c self, batch: usize, sent: &'c [u32], y: &'c [u32]) -> Result<Claim<'c>> {
        Claim::new(self.geom, batch, self.kernel_enc.data(), sent, y)
    }

    /// Fast rounds drawn from the claim `y = K' * sent`.
    fn fast_rounds_of_claim(&self, batch: usize, sent: &[u32], y: &[u32], rng: &mut KeyRng) -> Result<FastRounds> {
        FastRounds::draw::<M31, _>(&self.claim(batch, sent, y)?, self.rounds, rng)
    }

    /// Runs Strict verification of `claim` only to learn whether it holds.
    fn strict(&self, claim: &Claim<'_>, rng: &mut KeyRng) -> Result<Option<usize>> {
        check_claim(claim, Mode::Strict, self.rounds, rng)
    }

    /// Strict verification of the two clouds' answers as one: `y + yb = K' * input`.
    fn strict_sum(
        &self,
        batch: usize,
        input: &[u32],
        (y, yb): (&[u32], Option<&[u32]>),
        rng: &mut KeyRng,
    ) -> Result<Option<usize>> {
        let claim = Claim::with_parts(self.geom, batch, self.kernel_enc.data(), input, y, yb.unwrap_or_default())?;
        self.strict(&claim, rng)
    }

    /// After the sum of two clouds' answers was rejected: re-checks each cloud's claim
    /// `(kernel, input, answer)` with fresh vectors in the layer's mode (at least one is wrong)
    /// and names the cheater.
    fn blame_two(
        &self,
        batch: usize,
        (ka, xa, ya): (&[u32], &[u32], &[u32]),
        (kb, xb, yb): (&[u32], &[u32], &[u32]),
        rng: &mut KeyRng,
    ) -> Result<Cheater> {
        let bad_a = check_claim(&Claim::new(self.geom, batch, ka, xa, ya)?, self.mode, self.rounds, rng)?;
        let bad_b = check_claim(&Claim::new(self.geom, batch, kb, xb, yb)?, self.mode, self.rounds, rng)?;
        Ok(match (bad_a.is_some(), bad_b.is_some()) {
            (true, true) => Cheater::BothClouds,
            (true, false) => Cheater::CloudA,
            (false, true) => Cheater::CloudB,
            (false, false) => Cheater::Unidentified,
        })
    }
}

/// One privacy mode, as the client runs it (docs/scheme.md §9, §11, §12, §14). A value of the
/// type is the mode's state for one session key.
pub(super) trait MaskingMode: Send + Sync + Sized {
    /// The secrets of one batch in flight, zeroized when dropped.
    type Secrets: Send + Sync + 'static;

    /// The mode's state for a fresh session key; `kernel` is the plain kernel in F_p.
    fn session(geom: &Conv2d, key: &SessionKey, kernel: &[u32], rng: &mut KeyRng) -> Result<Self>;

    /// The pool of pads, in the modes that use them.
    fn pads(&mut self) -> Option<&mut Option<PadPool>> {
        None
    }

    /// Pads left (0 in the modes without pads).
    fn pads_left(&self) -> usize {
        0
    }

    /// Draws the secrets of a batch of `batch` images (pads are gone even if the batch fails).
    fn draw(&mut self, layer: &str, key: &SessionKey, batch: usize, rng: &mut KeyRng) -> Result<Self::Secrets>;

    /// Encrypts image `b`, `x`, into `sent`, its part of what the cloud (or cloud B) receives.
    fn encrypt_image<T: SmallInt>(
        &self,
        key: &SessionKey,
        secrets: &Self::Secrets,
        b: usize,
        x: &[T],
        sent: &mut [u32],
    ) -> Result<()>;

    /// The tensor that goes out: `sent`, unless the mode must make it again, whole, into
    /// `remade` (mode `two-server`, after a rejected word of its key stream).
    fn outgoing<'s, T: SmallInt>(
        _key: &SessionKey,
        _secrets: &Self::Secrets,
        _x: &[T],
        sent: &'s [u32],
        _remade: &'s mut Vec<u32>,
    ) -> Result<&'s [u32]> {
        Ok(sent)
    }

    /// Calls the mode's clouds on `sent`; the answer lands in `y` (cloud A's in `y`, cloud B's
    /// in `yb`, in the two-cloud modes). By default, the one cloud convolves `sent` with `K'`.
    #[allow(clippy::too_many_arguments)]
    fn call(
        &self,
        layer: &Layer<'_>,
        _secrets: &Self::Secrets,
        clouds: Clouds<'_>,
        batch: usize,
        sent: &[u32],
        y: &mut Vec<u32>,
        _yb: Option<&mut Vec<u32>>,
    ) -> Result<()> {
        one_cloud(clouds, layer.name)?.conv_session_into(layer.kernel_enc, batch, sent, y)
    }

    /// Fast verification's rounds, drawn now that the answer is in: the input side from the
    /// plain input `x` where the mode allows it, else from `sent`.
    #[allow(clippy::too_many_arguments)]
    fn fast_rounds<T: SmallInt>(
        layer: &Layer<'_>,
        secrets: &Self::Secrets,
        batch: usize,
        sent: &[u32],
        x: &[T],
        y: &[u32],
        rng: &mut KeyRng,
    ) -> Result<FastRounds>;

    /// Strict verification of the whole answer: the first rejecting round, if any. By default,
    /// the one cloud's claim `y = K' * sent`.
    fn strict(
        layer: &Layer<'_>,
        _secrets: &Self::Secrets,
        batch: usize,
        sent: &[u32],
        (y, _): (&[u32], Option<&[u32]>),
        rng: &mut KeyRng,
    ) -> Result<Option<usize>> {
        layer.strict(&layer.claim(batch, sent, y)?, rng)
    }

    /// Which cloud a rejected answer blames.
    fn blame(
        &self,
        _layer: &Layer<'_>,
        _secrets: &Self::Secrets,
        _batch: usize,
        _sent: &[u32],
        _answers: (&[u32], Option<&[u32]>),
        _rng: &mut KeyRng,
    ) -> Result<Cheater> {
        Ok(Cheater::TheCloud)
    }

    /// What decryption needs per image beyond the secrets, computed once the answer passed.
    fn tables(_key: &SessionKey, _secrets: &Self::Secrets) -> Vec<ImageTables> {
        Vec::new()
    }

    /// How the answer of a batch is unmasked; `yb` is cloud B's answer in the two-cloud modes.
    fn unmask<'a>(
        &'a self,
        secrets: &'a Self::Secrets,
        tables: &'a [ImageTables],
        yb: Option<&'a [u32]>,
    ) -> Option<Unmask<'a>>;

    /// Takes back a decrypted batch's secrets (the memory of used pads goes to `spent`).
    fn recycle(_secrets: Self::Secrets, _spent: &mut SpentPads) {}
}

/// The mode of a layer with its state for the current session key.
pub(super) enum Masking {
    /// The paper's rank-ρ masks.
    LowRank(LowRank),
    /// Two clouds, one additive share each.
    TwoServer(TwoServer),
    /// One cloud, one-time pads.
    Pad(PadMasking),
    /// Pads and a split kernel, two clouds.
    SplitModel(SplitModel),
}

impl Masking {
    /// The state of mode `privacy` for a fresh session key.
    pub(super) fn session(
        privacy: Privacy,
        geom: &Conv2d,
        key: &SessionKey,
        kernel: &[u32],
        rng: &mut KeyRng,
    ) -> Result<Self> {
        Ok(match privacy {
            Privacy::LowRank { .. } => Masking::LowRank(LowRank::session(geom, key, kernel, rng)?),
            Privacy::TwoServer => Masking::TwoServer(TwoServer::session(geom, key, kernel, rng)?),
            Privacy::Pad => Masking::Pad(PadMasking::session(geom, key, kernel, rng)?),
            Privacy::SplitModel => Masking::SplitModel(SplitModel::session(geom, key, kernel, rng)?),
        })
    }
}

/// Runs `$body` with `$m` bound to the mode's state, whatever the mode: the one place
/// [`super::PrivateConv`] picks its mode.
macro_rules! with_masking {
    ($masking:expr, $m:ident => $body:expr) => {
        match $masking {
            $crate::client::modes::Masking::LowRank($m) => $body,
            $crate::client::modes::Masking::TwoServer($m) => $body,
            $crate::client::modes::Masking::Pad($m) => $body,
            $crate::client::modes::Masking::SplitModel($m) => $body,
        }
    };
}
pub(super) use with_masking;

/// A batch's secrets, of whichever mode drew them.
pub(super) type AnySecrets = Box<dyn Any + Send + Sync>;

/// The secrets of `mode`'s type in `secrets`; a batch of another mode (which the session check
/// rules out) is an error rather than a panic.
pub(super) fn secrets_of<'s, M: MaskingMode>(
    _mode: &M,
    secrets: &'s AnySecrets,
    layer: &str,
) -> Result<&'s M::Secrets> {
    secrets.downcast_ref::<M::Secrets>().ok_or_else(|| mode_mismatch(layer))
}

/// The clouds, the secrets and the masking of a layer always agree ([`super::PrivateConv`]
/// checks the cloud count first); should they not, this error is returned rather than a panic.
pub(super) fn mode_mismatch(layer: &str) -> Error {
    Error::Internal(format!("layer `{layer}`: privacy mode mismatch"))
}

/// The one cloud of a one-cloud mode.
fn one_cloud<'c>(clouds: Clouds<'c>, layer: &str) -> Result<&'c dyn CloudBackend> {
    match clouds {
        Clouds::One(cloud) => Ok(cloud),
        Clouds::Two(..) => Err(mode_mismatch(layer)),
    }
}

/// The two clouds and cloud B's answer buffer of a two-cloud mode.
fn two_clouds<'c, 'y>(
    clouds: Clouds<'c>,
    yb: Option<&'y mut Vec<u32>>,
    layer: &str,
) -> Result<(&'c dyn CloudBackend, &'c dyn CloudBackend, &'y mut Vec<u32>)> {
    match (clouds, yb) {
        (Clouds::Two(a, b), Some(yb)) => Ok((a, b, yb)),
        _ => Err(mode_mismatch(layer)),
    }
}

/// Runs cloud A's call on a scoped thread while cloud B's runs on this one; cloud A's error
/// first, if both fail (a panic in A's call is resumed here).
fn concurrently(a: impl FnOnce() -> Result<()> + Send, b: impl FnOnce() -> Result<()>) -> Result<()> {
    let (from_a, from_b) = std::thread::scope(|s| {
        let from_a = s.spawn(a);
        let from_b = b();
        (from_a.join().unwrap_or_else(|e| std::panic::resume_unwind(e)), from_b)
    });
    from_a.and(from_b)
}

/// Runs `rounds` of `mode` on `claim` only to learn whether it holds: `Ok(None)` when
/// accepted, `Ok(Some(round))` when rejected.
fn check_claim(claim: &Claim<'_>, mode: Mode, rounds: usize, rng: &mut KeyRng) -> Result<Option<usize>> {
    Ok(match verify::<M31, _>(claim, mode, rounds, rng)? {
        Verdict::Accepted(_) => None,
        Verdict::Rejected { round } => Some(round),
    })
}

/// Takes back a decrypted batch's secrets in `mode` (a batch of another mode is dropped, which
/// zeroizes it).
pub(super) fn recycle<M: MaskingMode>(_mode: &M, secrets: AnySecrets, spent: &mut SpentPads) {
    if let Ok(secrets) = secrets.downcast::<M::Secrets>() {
        M::recycle(*secrets, spent);
    }
}
