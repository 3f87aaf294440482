//! Mode `split-model` (docs/scheme.md §14): mode `pad`'s masking, with the plain kernel split
//! into two additive shares `K_A = G(seed)`, `K_B = K - K_A`, one per cloud; both clouds
//! receive the same padded input `X + R`, and the client unmasks `Y_A + Y_B - U`.

use super::pad::PadMasking;
use super::{Layer, MaskingMode, concurrently, two_clouds};
use crate::Cheater;
use crate::Result;
use crate::cloud::{Clouds, SessionKernel};
use crate::decrypt::{ImageTables, Unmask};
use crate::field::{M31, PrimeField, SmallInt};
use crate::geometry::Conv2d;
use crate::keys::{KeyRng, SessionKey};
use crate::pad::{PadPool, SpentPads};
use crate::share::ShareSeed;
use crate::verify::FastRounds;

/// Mode `pad`'s pads, and the clouds' shares of the kernel (zeroized when dropped, with their
/// sessions).
pub(in crate::client) struct SplitModel {
    pads: PadMasking,
    shares: Box<KernelShares>,
}

/// `K_A` for cloud A and `K_B` for cloud B, each uniform alone.
struct KernelShares {
    a: SessionKernel,
    b: SessionKernel,
}

impl MaskingMode for SplitModel {
    type Secrets = <PadMasking as MaskingMode>::Secrets;

    /// Splits the plain kernel into two fresh shares.
    fn session(geom: &Conv2d, key: &SessionKey, kernel: &[u32], rng: &mut KeyRng) -> Result<Self> {
        let seed = ShareSeed::generate(rng);
        let a = seed.expand(kernel.len());
        let b = kernel.iter().zip(&a).map(|(&k, &ka)| M31::sub(k, ka)).collect();
        Ok(Self {
            pads: PadMasking::session(geom, key, kernel, rng)?,
            shares: Box::new(KernelShares {
                a: SessionKernel::new(rand::RngExt::random(rng), *geom, a)?,
                b: SessionKernel::new(rand::RngExt::random(rng), *geom, b)?,
            }),
        })
    }

    fn pads(&mut self) -> Option<&mut Option<PadPool>> {
        self.pads.pads()
    }

    fn pads_left(&self) -> usize {
        self.pads.pads_left()
    }

    fn draw(&mut self, layer: &str, key: &SessionKey, batch: usize, rng: &mut KeyRng) -> Result<Self::Secrets> {
        self.pads.draw(layer, key, batch, rng)
    }

    fn encrypt_image<T: SmallInt>(
        &self,
        key: &SessionKey,
        pads: &Self::Secrets,
        b: usize,
        x: &[T],
        sent: &mut [u32],
    ) -> Result<()> {
        self.pads.encrypt_image(key, pads, b, x, sent)
    }

    /// Both clouds, concurrently, on the same padded input: A with its share, B with its own.
    fn call(
        &self,
        layer: &Layer<'_>,
        _pads: &Self::Secrets,
        clouds: Clouds<'_>,
        batch: usize,
        sent: &[u32],
        y: &mut Vec<u32>,
        yb: Option<&mut Vec<u32>>,
    ) -> Result<()> {
        let (a, b, yb) = two_clouds(clouds, yb, layer.name)?;
        let KernelShares { a: ka, b: kb } = &*self.shares;
        concurrently(|| a.conv_session_into(ka, batch, sent, y), || b.conv_session_into(kb, batch, sent, yb))
    }

    fn fast_rounds<T: SmallInt>(
        layer: &Layer<'_>,
        pads: &Self::Secrets,
        batch: usize,
        sent: &[u32],
        x: &[T],
        y: &[u32],
        rng: &mut KeyRng,
    ) -> Result<FastRounds> {
        PadMasking::fast_rounds(layer, pads, batch, sent, x, y, rng)
    }

    fn strict(
        layer: &Layer<'_>,
        _pads: &Self::Secrets,
        batch: usize,
        sent: &[u32],
        answers: (&[u32], Option<&[u32]>),
        rng: &mut KeyRng,
    ) -> Result<Option<usize>> {
        layer.strict_sum(batch, sent, answers, rng)
    }

    /// Each kernel share with the padded input.
    fn blame(
        &self,
        layer: &Layer<'_>,
        _pads: &Self::Secrets,
        batch: usize,
        sent: &[u32],
        (y, yb): (&[u32], Option<&[u32]>),
        rng: &mut KeyRng,
    ) -> Result<Cheater> {
        let KernelShares { a, b } = &*self.shares;
        layer.blame_two(batch, (a.data(), sent, y), (b.data(), sent, yb.unwrap_or_default()), rng)
    }

    fn unmask<'a>(
        &'a self,
        pads: &'a Self::Secrets,
        _tables: &'a [ImageTables],
        yb: Option<&'a [u32]>,
    ) -> Option<Unmask<'a>> {
        yb.map(|yb| Unmask::PadSum(pads, yb))
    }

    fn recycle(pads: Self::Secrets, spent: &mut SpentPads) {
        PadMasking::recycle(pads, spent);
    }
}
