//! Keys (docs/scheme.md §4): the per-layer [`SessionKey`] and the per-image [`ImageMask`].
//!
//! All randomness comes from [`KeyRng`], ChaCha20 seeded from the OS by [`os_rng`]. An explicit
//! seed ([`seeded_rng`]) is for tests and benchmarks only.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use zeroize::Zeroize;

use crate::field::{M31, PrimeField};
use crate::geometry::Conv2d;
use crate::privacy::Privacy;
use crate::{Error, Result};

/// The CSPRNG every secret is drawn from.
pub type KeyRng = ChaCha20Rng;

/// A [`KeyRng`] seeded from the operating system's random source (`getrandom`): the default
/// for real use.
///
/// # Panics
/// When the operating system cannot provide randomness at all; no secret can be drawn then.
pub fn os_rng() -> KeyRng {
    ChaCha20Rng::try_from_rng(&mut rand::rngs::SysRng)
        .unwrap_or_else(|e| panic!("the operating system's random source failed: {e}"))
}

/// A [`KeyRng`] with an explicit seed, for reproducible tests and benchmarks only.
pub fn seeded_rng(seed: u64) -> KeyRng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// The default mask rank ρ.
pub const DEFAULT_RANK: usize = 2;

/// The secret key of one convolution layer for one session.
///
/// Channel indices: `sigma[o']` is the plain output channel behind cloud output channel `o'`,
/// and `pi[c']` the plain input channel behind cloud input channel `c'`.
///
/// Secret: its `Debug` prints only the geometry and rank, and it is zeroized on drop.
#[derive(Clone)]
pub struct SessionKey {
    /// A random identifier: what pads (docs/scheme.md §12) are bound to.
    id: u64,
    geom: Conv2d,
    rho: usize,
    sigma: Vec<usize>,
    sigma_inv: Vec<usize>,
    pi: Vec<usize>,
    pi_inv: Vec<usize>,
    alpha: Vec<u32>,
    alpha_inv: Vec<u32>,
    beta: Vec<u32>,
    /// `g[t·Cin + c]`: channel factor t of plain input channel c.
    g: Vec<u32>,
}

impl SessionKey {
    /// Draws a fresh key for `geom` with mask rank `rho` (mode `lowrank`).
    ///
    /// # Errors
    /// [`Error::InvalidRank`] when `rho == 0`.
    pub fn generate(geom: &Conv2d, rho: usize, rng: &mut KeyRng) -> Result<Self> {
        if rho == 0 {
            return Err(Error::InvalidRank);
        }
        Ok(Self::draw(geom, rho, rng))
    }

    /// Draws a fresh key for `geom` in the given privacy mode: with channel factors of rank ρ
    /// for `lowrank`, with none for `two-server` and `pad` (their masks do not use them).
    ///
    /// # Errors
    /// [`Error::InvalidRank`] for `lowrank` with rank 0.
    pub fn generate_for(geom: &Conv2d, privacy: Privacy, rng: &mut KeyRng) -> Result<Self> {
        match privacy {
            Privacy::LowRank { rank } => Self::generate(geom, rank, rng),
            Privacy::TwoServer | Privacy::Pad => Ok(Self::draw(geom, 0, rng)),
            Privacy::SplitModel => Ok(Self::plain(geom, rng)),
        }
    }

    /// The key of mode `split-model` (docs/scheme.md §14): a fresh identifier, and no σ, π, α
    /// or β (identity permutations, unit scales), so that `K' = K` and `X' = X + R`.
    fn plain(geom: &Conv2d, rng: &mut KeyRng) -> Self {
        let (cout, cin) = (geom.cout(), geom.cin());
        Self {
            id: rng.next_u64(),
            geom: *geom,
            rho: 0,
            sigma: (0..cout).collect(),
            sigma_inv: (0..cout).collect(),
            pi: (0..cin).collect(),
            pi_inv: (0..cin).collect(),
            alpha: vec![1; cout],
            alpha_inv: vec![1; cout],
            beta: vec![1; cin],
            g: Vec::new(),
        }
    }

    fn draw(geom: &Conv2d, rho: usize, rng: &mut KeyRng) -> Self {
        let groups = geom.groups();
        let mut gamma: Vec<usize> = (0..groups).collect();
        gamma.shuffle(rng);
        let sigma = grouped_permutation(&gamma, geom.cout_per_group(), rng);
        let pi = grouped_permutation(&gamma, geom.cin_per_group(), rng);
        let alpha: Vec<u32> = (0..geom.cout()).map(|_| M31::random_nonzero(rng)).collect();
        let beta: Vec<u32> = (0..geom.cin()).map(|_| M31::random_nonzero(rng)).collect();
        let g = (0..rho * geom.cin()).map(|_| M31::random(rng)).collect();
        Self {
            id: rng.next_u64(),
            geom: *geom,
            rho,
            sigma_inv: inverse(&sigma),
            sigma,
            pi_inv: inverse(&pi),
            pi,
            alpha_inv: alpha.iter().map(|&a| M31::inv(a)).collect(),
            alpha,
            beta,
            g,
        }
    }

    /// The key's random identifier (pads are bound to it).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The geometry this key was drawn for.
    pub fn geometry(&self) -> &Conv2d {
        &self.geom
    }
    /// The mask rank ρ (0 for a key without channel factors, modes `two-server` and `pad`).
    pub fn rank(&self) -> usize {
        self.rho
    }
    /// σ: cloud output channel → plain output channel.
    pub fn sigma(&self) -> &[usize] {
        &self.sigma
    }
    /// σ^-1: plain output channel → cloud output channel.
    pub fn sigma_inv(&self) -> &[usize] {
        &self.sigma_inv
    }
    /// π: cloud input channel → plain input channel.
    pub fn pi(&self) -> &[usize] {
        &self.pi
    }
    /// π^-1: plain input channel → cloud input channel.
    pub fn pi_inv(&self) -> &[usize] {
        &self.pi_inv
    }
    /// α, indexed by cloud output channel.
    pub fn alpha(&self) -> &[u32] {
        &self.alpha
    }
    /// α^-1, indexed by cloud output channel.
    pub fn alpha_inv(&self) -> &[u32] {
        &self.alpha_inv
    }
    /// β, indexed by cloud input channel.
    pub fn beta(&self) -> &[u32] {
        &self.beta
    }
    /// Channel factors `g_t`, row `t` of length `Cin`, indexed by plain input channel.
    pub fn channel_factor(&self, t: usize) -> &[u32] {
        &self.g[t * self.geom.cin()..(t + 1) * self.geom.cin()]
    }
}

/// The inverse of the permutation `perm`.
fn inverse(perm: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    inv
}

/// A permutation of `groups·per` channels that maps cloud group g' onto plain group γ(g') and
/// permutes independently inside each group.
fn grouped_permutation(gamma: &[usize], per: usize, rng: &mut KeyRng) -> Vec<usize> {
    let mut perm = Vec::with_capacity(gamma.len() * per);
    for &plain_group in gamma {
        let mut inner: Vec<usize> = (0..per).collect();
        inner.shuffle(rng);
        perm.extend(inner.into_iter().map(|l| plain_group * per + l));
    }
    perm
}

/// The fresh mask of one image for one layer call: `R[c,y,x] = Σ_t g_t[c]·a_t[y]·c_t[x]`.
///
/// Secret: its `Debug` prints only the rank, and it is zeroized on drop.
#[derive(Clone)]
pub struct ImageMask {
    rho: usize,
    /// Row factors, `a[t·H + y]`.
    rows: Vec<u32>,
    /// Column factors, `c[t·W + x]`.
    cols: Vec<u32>,
}

impl ImageMask {
    /// Draws the masks of a batch of `batch` images for the layer of `key`.
    pub fn generate_batch(key: &SessionKey, batch: usize, rng: &mut KeyRng) -> Vec<Self> {
        let (h, w, rho) = (key.geom.h(), key.geom.w(), key.rho);
        (0..batch)
            .map(|_| Self {
                rho,
                rows: (0..rho * h).map(|_| M31::random(rng)).collect(),
                cols: (0..rho * w).map(|_| M31::random(rng)).collect(),
            })
            .collect()
    }

    /// The mask rank ρ.
    pub fn rank(&self) -> usize {
        self.rho
    }

    /// Row factor `a_t` (length H).
    pub fn row_factor(&self, t: usize) -> &[u32] {
        let h = self.rows.len() / self.rho;
        &self.rows[t * h..(t + 1) * h]
    }

    /// All column factors, `c_t` after `c_t-1` (`ρ × W`).
    pub(crate) fn col_factors(&self) -> &[u32] {
        &self.cols
    }

    /// Column factor `c_t` (length W).
    pub fn col_factor(&self, t: usize) -> &[u32] {
        let w = self.cols.len() / self.rho;
        &self.cols[t * w..(t + 1) * w]
    }
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKey").field("geom", &self.geom).field("rank", &self.rho).finish_non_exhaustive()
    }
}

impl Drop for SessionKey {
    fn drop(&mut self) {
        self.id.zeroize();
        self.sigma.zeroize();
        self.sigma_inv.zeroize();
        self.pi.zeroize();
        self.pi_inv.zeroize();
        self.alpha.zeroize();
        self.alpha_inv.zeroize();
        self.beta.zeroize();
        self.g.zeroize();
    }
}

impl std::fmt::Debug for ImageMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageMask").field("rank", &self.rho).finish_non_exhaustive()
    }
}

impl Drop for ImageMask {
    fn drop(&mut self) {
        self.rows.zeroize();
        self.cols.zeroize();
    }
}
