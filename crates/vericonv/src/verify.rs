//! Verification on the client (docs/scheme.md §8): exact Freivalds-style equality tests in F_p of the
//! claim `Y' = Conv(K', X')` for every image of a batch.
//!
//! The random vectors are drawn inside these functions, that is after the cloud has answered,
//! from the caller's CSPRNG. They are never sent anywhere and never reused.
//!
//! Everything here is generic over [`PrimeField`], so the same code runs with a small prime to
//! measure the soundness bounds.

use rand::Rng;
use rayon::prelude::*;

use crate::field::{M31, PrimeField, SmallInt, slices};
use crate::geometry::Conv2d;
use crate::keys::{ImageMask, SessionKey};
use crate::{Error, Result};

/// Which verification test to run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// One random linear combination of everything: a few operations per element; a cheat
    /// passes with probability at most 4/p per round.
    #[default]
    Fast,
    /// One random vector over output pixels, checked for every image and channel: a cheat
    /// passes with probability at most 1/p per round (the paper's bound).
    Strict,
}

impl Mode {
    /// The name used in messages: `"fast"` or `"strict"`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Fast => "fast",
            Mode::Strict => "strict",
        }
    }
}

/// The outcome of verification. Only an accepted one carries the [`Verified`] proof that
/// decryption requires, so a rejected answer cannot be decrypted.
#[must_use = "a verdict that is not looked at lets a wrong answer through"]
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Every round accepted.
    Accepted(Verified<'a>),
    /// Round `round` (from 1) rejected; later rounds were not run.
    Rejected {
        /// The failing round.
        round: usize,
    },
}

impl Verdict<'_> {
    /// True when every round accepted.
    pub fn is_accepted(&self) -> bool {
        matches!(self, Verdict::Accepted(_))
    }
}

/// Proof that a cloud answer passed verification: only [`verify`] (and, in mode `two-server`,
/// [`crate::decrypt::decrypt_sum_verified_into`]) can make one. It holds the answer it vouches
/// for, and the decryption functions unmask that answer and no other.
///
/// Neither a proof nor decryption without one compiles outside this crate:
///
/// ```compile_fail
/// let forged = vericonv::Verified::new(&[0u32; 4], None); // private constructor
/// ```
///
/// ```compile_fail
/// # use vericonv::{ImageMask, MaskKernel, SessionKey};
/// # fn f(key: &SessionKey, mk: &MaskKernel, masks: &[ImageMask], y: &[u32]) {
/// let _ = vericonv::decrypt(key, mk, masks, y); // an unverified answer
/// # }
/// ```
#[derive(PartialEq, Eq)]
pub struct Verified<'a> {
    output: &'a [u32],
    output_b: Option<&'a [u32]>,
}

impl<'a> Verified<'a> {
    /// Issued by verification, and only there.
    pub(crate) fn new(output: &'a [u32], output_b: Option<&'a [u32]>) -> Self {
        Self { output, output_b }
    }
    /// The verified answer `Y'` (cloud A's part in mode `two-server`).
    pub fn output(&self) -> &'a [u32] {
        self.output
    }
    /// Cloud B's part of the verified answer in mode `two-server`.
    pub fn output_b(&self) -> Option<&'a [u32]> {
        self.output_b
    }
}

impl std::fmt::Debug for Verified<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified")
            .field("output_len", &self.output.len())
            .field("two_parts", &self.output_b.is_some())
            .finish()
    }
}

/// The claim the client checks: `output = Conv(kernel, input)` over F_p for a batch, where the
/// output may come in two additive parts (mode `two-server`: `Y' = Y'_A + Y'_B`, never summed
/// into a buffer; both tests are linear in `Y'`).
#[derive(Clone, Copy, Debug)]
pub struct Claim<'a> {
    geom: &'a Conv2d,
    batch: usize,
    kernel: &'a [u32],
    input: &'a [u32],
    output: &'a [u32],
    output_b: Option<&'a [u32]>,
}

impl<'a> Claim<'a> {
    /// Binds `K'` (`Cout × Cin/G × kh × kw`), `X'` (`batch × Cin × H × W`) and the cloud's
    /// `Y'` (`batch × Cout × Ho × Wo`) to a geometry.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] when a tensor does not match the geometry and batch.
    pub fn new(geom: &'a Conv2d, batch: usize, kernel: &'a [u32], input: &'a [u32], output: &'a [u32]) -> Result<Self> {
        Conv2d::check_len("encrypted kernel", geom.kernel_len(), kernel.len())?;
        Conv2d::check_len("encrypted input", batch * geom.image_len(), input.len())?;
        Conv2d::check_len("cloud output", batch * geom.output_image_len(), output.len())?;
        Ok(Self { geom, batch, kernel, input, output, output_b: None })
    }

    /// The claim `output_a + output_b = Conv(kernel, input)`: the answers of clouds A and B in
    /// mode `two-server`.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] when a tensor does not match the geometry and batch.
    pub fn with_parts(
        geom: &'a Conv2d,
        batch: usize,
        kernel: &'a [u32],
        input: &'a [u32],
        output_a: &'a [u32],
        output_b: &'a [u32],
    ) -> Result<Self> {
        Conv2d::check_len("cloud B output", batch * geom.output_image_len(), output_b.len())?;
        Ok(Self { output_b: Some(output_b), ..Self::new(geom, batch, kernel, input, output_a)? })
    }

    /// The geometry.
    pub fn geometry(&self) -> &'a Conv2d {
        self.geom
    }
    /// The batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }
    /// `K'`.
    pub fn kernel(&self) -> &'a [u32] {
        self.kernel
    }
    /// `X'`.
    pub fn input(&self) -> &'a [u32] {
        self.input
    }
    /// `Y'`, or its first part for a claim [`Claim::with_parts`].
    pub fn output(&self) -> &'a [u32] {
        self.output
    }
    /// The second part of `Y'` for a claim [`Claim::with_parts`].
    pub fn output_b(&self) -> Option<&'a [u32]> {
        self.output_b
    }

    /// `Σ_{y,x} r[y,x]·Y'[plane, y, x]` over both parts, for the flat plane index `plane`.
    fn plane_dot<F: PrimeField>(&self, plane: usize, r: impl Fn(&[u32]) -> u32) -> u32 {
        let n = self.geom.n();
        let a = r(&self.output[plane * n..][..n]);
        self.output_b.map_or(a, |b| F::add(a, r(&b[plane * n..][..n])))
    }
}

/// Runs `rounds` independent rounds of `mode` on `claim`, each with fresh random vectors; an
/// accepted verdict carries the [`Verified`] proof that decryption needs.
///
/// # Errors
/// [`Error::InvalidRounds`] for zero rounds.
pub fn verify<'a, F: PrimeField, R: Rng>(
    claim: &Claim<'a>,
    mode: Mode,
    rounds: usize,
    rng: &mut R,
) -> Result<Verdict<'a>> {
    if rounds == 0 {
        return Err(Error::InvalidRounds);
    }
    for round in 1..=rounds {
        let ok = match mode {
            Mode::Fast => fast_round::<F, R>(claim, rng),
            Mode::Strict => {
                let r: Vec<u32> = (0..claim.geom.n()).map(|_| F::random(rng)).collect();
                strict_products::<F>(claim, &r)?.accepts()
            }
        };
        if !ok {
            return Ok(Verdict::Rejected { round });
        }
    }
    Ok(Verdict::Accepted(Verified::new(claim.output, claim.output_b)))
}

/// The random vectors of one Fast round: `s ∈ F^Cout`, `w ∈ F^B`, `u ∈ F^Ho`, `v ∈ F^Wo`.
struct FastVectors {
    s: Vec<u32>,
    w: Vec<u32>,
    u: Vec<u32>,
    v: Vec<u32>,
}

impl FastVectors {
    fn draw<F: PrimeField, R: Rng>(g: &Conv2d, batch: usize, rng: &mut R) -> Self {
        let mut draw = |n: usize| (0..n).map(|_| F::random(rng)).collect::<Vec<u32>>();
        let (s, w, u, v) = (draw(g.cout()), draw(batch), draw(g.ho()), draw(g.wo()));
        Self { s, w, u, v }
    }

    /// `Σ_y u_y Σ_x v_x plane[y, x]` for one output plane.
    fn contract<F: PrimeField>(&self, plane: &[u32]) -> u32 {
        let wo = self.v.len();
        let acc = plane
            .chunks_exact(wo)
            .zip(&self.u)
            .fold(0u64, |acc, (row, &uy)| acc + F::fold_product(u64::from(uy) * u64::from(F::dot(row, &self.v))));
        F::reduce(acc)
    }

    /// `w_b·s_o'` for the flat plane index `plane = b·Cout + o'`.
    fn weight<F: PrimeField>(&self, plane: usize) -> u32 {
        let cout = self.s.len();
        F::mul(self.w[plane / cout], self.s[plane % cout])
    }
}

/// One round of Fast mode with fresh vectors ([`FastVectors`]):
/// `L = Σ_b w_b Σ_o' s_o' Σ_y u_y Σ_x v_x Y'[b,o',y,x]` against
/// `V = Σ_{c',i,j} k_s[c',i,j]·T[c',i,j]`, where `T` is the folded, u/v-contracted im2col of
/// `X~ = Σ_b w_b X'_b` and `k_s = Σ_o' s_o' K'[o',·]` per cloud group.
fn fast_round<F: PrimeField, R: Rng>(claim: &Claim<'_>, rng: &mut R) -> bool {
    let vecs = FastVectors::draw::<F, R>(claim.geom, claim.batch, rng);
    let n = claim.geom.n();
    // L: contract each output plane with u ⊗ v, then with w ⊗ s.
    let planes: Vec<u32> = (0..claim.output.len() / n)
        .into_par_iter()
        .with_min_len(16)
        .map(|p| claim.plane_dot::<F>(p, |plane| vecs.contract::<F>(plane)))
        .collect();
    let l = F::reduce(
        planes
            .iter()
            .enumerate()
            .fold(0u64, |acc, (p, &c)| acc + F::fold_product(u64::from(vecs.weight::<F>(p)) * u64::from(c))),
    );
    l == fast_input_side::<F>(claim, &vecs)
}

/// `v` spread onto input columns, one row per tap column j: `vj[j, col] = v[x]` where
/// `col = x·sw + j·dw - pl` (zero where no x lands), so that `Z` is a dot product per row.
fn column_weights(g: &Conv2d, v: &[u32]) -> Vec<u32> {
    let mut vj = vec![0u32; g.kw() * g.w()];
    for (j, row) in vj.chunks_exact_mut(g.w()).enumerate() {
        for (x, &vx) in v.iter().enumerate() {
            if let Some(col) = g.in_col(x, j) {
                row[col] = vx;
            }
        }
    }
    vj
}

/// `Σ_{i,j} k[i,j]·T[i,j]` for one (batch-folded) input plane: `Z[h,j] = Σ_x v_x plane[h, x·sw +
/// j·dw - pl]` on the H real rows (through `vj`, [`column_weights`]), then `T[i,j] = Σ_y u_y
/// Z[y·sh + i·dh - pt, j]`. `z` is working memory of `H·kw` elements.
fn plane_term<F: PrimeField>(g: &Conv2d, plane: &[u32], vj: &[u32], u: &[u32], k: &[u32], z: &mut [u32]) -> u32 {
    let kw = g.kw();
    for (zrow, xrow) in z.chunks_exact_mut(kw).zip(plane.chunks_exact(g.w())) {
        for (zv, vrow) in zrow.iter_mut().zip(vj.chunks_exact(g.w())) {
            *zv = F::dot(xrow, vrow);
        }
    }
    let mut acc = 0u64;
    for i in 0..g.kh() {
        for j in 0..kw {
            let t = F::reduce((0..g.ho()).fold(0u64, |acc, y| match g.in_row(y, i) {
                Some(r) => acc + F::fold_product(u64::from(u[y]) * u64::from(z[r * kw + j])),
                None => acc,
            }));
            acc += F::fold_product(u64::from(k[i * kw + j]) * u64::from(t));
        }
    }
    F::reduce(acc)
}

/// `V` of a Fast round: everything but `Y'`.
fn fast_input_side<F: PrimeField>(claim: &Claim<'_>, vecs: &FastVectors) -> u32 {
    let (g, batch, kp, xp) = (claim.geom, claim.batch, claim.kernel, claim.input);
    let (w, taps, hw, img) = (&vecs.w, g.kh() * g.kw(), g.h() * g.w(), g.image_len());
    let ks = kernel_fold::<F>(g, kp, &vecs.s);
    let vj = column_weights(g, &vecs.v);
    // Per cloud input channel: X~[c'] = Σ_b w_b X'_b[c'] (a batch of one is used as it is, and
    // w_0 applied to the total instead: the map is linear), then its term of V.
    let per_channel: Vec<u32> = (0..g.cin())
        .into_par_iter()
        .map_init(
            || {
                let fold_len = if batch > 1 { hw } else { 0 };
                (vec![0u32; g.h() * g.kw()], vec![0u32; fold_len], vec![0u64; fold_len])
            },
            |(z, folded, wide), cp| {
                let plane = if batch > 1 {
                    wide.fill(0);
                    for (b, &wb) in w.iter().enumerate() {
                        F::mul_acc(wide, wb, &xp[b * img + cp * hw..][..hw]);
                    }
                    F::reduce_into(folded, wide);
                    folded.as_slice()
                } else {
                    &xp[cp * hw..][..hw]
                };
                plane_term::<F>(g, plane, &vj, &vecs.u, &ks[cp * taps..][..taps], z)
            },
        )
        .collect();
    let vv = F::reduce(per_channel.iter().map(|&x| u64::from(x)).sum());
    if batch > 1 { vv } else { F::mul(vv, w[0]) }
}

/// `V` of a Fast round computed from the plain input rather than from `X'`, which the client
/// built as `X'[b,c'] = β[c']·(x[b,π(c')] + R_b[π(c')])` with `R_b` the rank-ρ mask of `masks[b]`
/// (mode `lowrank`) or zero (`masks` empty: mode `two-server`, where `X' = β·x[π]` is the sum
/// of the two shares). The map is linear, so this is the same field element as
/// [`fast_input_side`] on `X'`; it reads the small integers `x` instead of `X'`, and the mask
/// contributes through its factors alone:
/// `T(R)[c,i,j] = Σ_t g_t[c]·Σ_b w_b·(Σ_y u_y a_{b,t}[y·sh+i·dh-pt])·(Σ_x v_x c_{b,t}[x·sw+j·dw-pl])`.
fn fast_input_side_plain<T: SmallInt>(
    key: &SessionKey,
    kernel: KernelTerm<'_>,
    x: &[T],
    bound: u32,
    masks: &[ImageMask],
    vecs: &FastVectors,
) -> u32 {
    type F = M31;
    let g = key.geometry();
    let (w, u, v) = (&vecs.w, &vecs.u, &vecs.v);
    let (kh, kw, taps, hw, img) = (g.kh(), g.kw(), g.kh() * g.kw(), g.h() * g.w(), g.image_len());
    let batch = w.len();
    // k_s·β per cloud input channel: X' carries a factor β[c'] that the plain input does not.
    let kb = kernel.fold_scaled(key, &vecs.s);
    let vj = column_weights(g, v);
    // The mask's part: M_t[i,j] = Σ_b w_b·Au_{b,t}[i]·Cv_{b,t}[j], for t = 1..ρ.
    let rho = if masks.is_empty() { 0 } else { key.rank() };
    let mut m = vec![0u32; rho * taps];
    for (mask, &wb) in masks.iter().zip(w) {
        for (t, mt) in m.chunks_exact_mut(taps).enumerate() {
            let (a, c) = (mask.row_factor(t), mask.col_factor(t));
            let au: Vec<u32> = (0..kh)
                .map(|i| {
                    F::reduce(
                        (0..g.ho())
                            .filter_map(|y| Some(u64::from(u[y]) * u64::from(a[g.in_row(y, i)?])))
                            .map(F::fold_product)
                            .sum(),
                    )
                })
                .collect();
            let cv: Vec<u32> = (0..kw)
                .map(|j| {
                    F::reduce(
                        (0..g.wo())
                            .filter_map(|x| Some(u64::from(v[x]) * u64::from(c[g.in_col(x, j)?])))
                            .map(F::fold_product)
                            .sum(),
                    )
                })
                .collect();
            for (ij, mv) in mt.iter_mut().enumerate() {
                *mv = F::add(*mv, F::mul(wb, F::mul(au[ij / kw], cv[ij % kw])));
            }
        }
    }
    // Images whose products w_b·x can be summed exactly in an i64 before reducing.
    let per_sum = ((1u64 << 62) / (1u64 << 31) / u64::from(bound.max(1))).max(1) as usize;
    // Plain channels in order, so that each image's planes are read one after the other.
    let per_channel: Vec<u32> = (0..g.cin())
        .into_par_iter()
        .map_init(
            || (vec![0u32; g.h() * kw], vec![0u32; hw], vec![0u32; hw], Vec::with_capacity(batch)),
            |(z, folded, part, planes), c| {
                let cp = key.pi_inv()[c];
                for (first, ws) in w.chunks(per_sum).enumerate() {
                    planes.clear();
                    planes.extend((0..ws.len()).map(|k| &x[((first * per_sum + k) * img + c * hw)..][..hw]));
                    let dst = if first == 0 { &mut *folded } else { &mut *part };
                    slices::fold_batch(dst, ws, planes);
                    if first > 0 {
                        folded.iter_mut().zip(part.iter()).for_each(|(f, &p)| *f = F::add(*f, p));
                    }
                }
                let kbc = &kb[cp * taps..][..taps];
                let mut t = plane_term::<F>(g, folded, &vj, u, kbc, z);
                for (tt, mt) in m.chunks_exact(taps).enumerate() {
                    t = F::add(t, F::mul(key.channel_factor(tt)[c], F::dot(kbc, mt)));
                }
                t
            },
        )
        .collect();
    debug_assert_eq!(batch, x.len() / img.max(1));
    F::reduce(per_channel.iter().map(|&x| u64::from(x)).sum())
}

/// Fast-mode rounds whose output side is evaluated by the caller, one output plane at a time,
/// inside a pass it makes over `Y'` anyway: mode `two-server`'s decryption reads both answers
/// once and contracts them on the way ([`crate::decrypt::decrypt_sum_verified_into`]). The
/// vectors are drawn here, after the answers arrived, and never leave the client.
pub struct FastRounds {
    rounds: Vec<(FastVectors, u32)>,
}

impl FastRounds {
    /// Draws `rounds` rounds of fresh vectors for `claim` (whose outputs are not read) and
    /// evaluates their input side `V`.
    ///
    /// # Errors
    /// [`Error::InvalidRounds`] for zero rounds.
    pub fn draw<F: PrimeField, R: Rng>(claim: &Claim<'_>, rounds: usize, rng: &mut R) -> Result<Self> {
        if rounds == 0 {
            return Err(Error::InvalidRounds);
        }
        let rounds = (0..rounds)
            .map(|_| {
                let vecs = FastVectors::draw::<F, R>(claim.geom, claim.batch, rng);
                let v = fast_input_side::<F>(claim, &vecs);
                (vecs, v)
            })
            .collect();
        Ok(Self { rounds })
    }

    /// [`FastRounds::draw`] for a batch whose `X'` the client built from the plain input `x`
    /// (`batch × Cin × H × W` small integers with `|x| <= bound`): `β·(x + R)[π]` with the
    /// rank-ρ masks `masks` (mode `lowrank`, one per image), or `β·x[π]` (`masks` empty: mode
    /// `two-server`, where `X'` is the sum of the shares). `V` is the same field element as
    /// from `X'`, computed from `x` and the masks' factors, so `X'` need not be read again (nor,
    /// in mode `two-server`, ever written); the kernel's part comes from `K'` or from the plain
    /// kernel ([`KernelTerm`]).
    ///
    /// # Errors
    /// [`Error::InvalidRounds`] for zero rounds; [`Error::LengthMismatch`] when `x`, `kernel`
    /// or `masks` do not fit the key's geometry.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn draw_plain<T: SmallInt, R: Rng>(
        key: &SessionKey,
        kernel: KernelTerm<'_>,
        x: &[T],
        bound: u32,
        masks: &[ImageMask],
        rounds: usize,
        rng: &mut R,
    ) -> Result<Self> {
        if rounds == 0 {
            return Err(Error::InvalidRounds);
        }
        let g = key.geometry();
        let batch = g.batch_of_input(x.len())?;
        Conv2d::check_len("kernel", g.kernel_len(), kernel.len())?;
        if !masks.is_empty() {
            crate::encrypt::check_masks(key, masks, batch)?;
        }
        let rounds = (0..rounds)
            .map(|_| {
                let vecs = FastVectors::draw::<M31, R>(g, batch, rng);
                let v = fast_input_side_plain(key, kernel, x, bound, masks, &vecs);
                (vecs, v)
            })
            .collect();
        Ok(Self { rounds })
    }

    /// Checks the answer against the rounds: evaluates every round's output side `L` in one
    /// pass over the answer `y` (plus `yb`, the second part of mode `two-server`'s answer),
    /// planes in parallel. Returns the first rejecting round (from 1), if any, and the largest
    /// entry of the answer, which the caller checks first: an entry not below p makes the
    /// answer malformed whatever `L` says.
    pub(crate) fn check_output(&self, g: &Conv2d, y: &[u32], yb: Option<&[u32]>) -> (Option<usize>, u32) {
        let n = g.n();
        // Per round, u ⊗ v over a plane: the weight of each output element.
        let uv: Vec<Vec<u32>> = self
            .rounds
            .iter()
            .map(|(vecs, _)| vecs.u.iter().flat_map(|&uy| vecs.v.iter().map(move |&vx| M31::mul(uy, vx))).collect())
            .collect();
        let rounds = self.rounds.len();
        let (l, max) = (0..y.len() / n.max(1))
            .into_par_iter()
            .with_min_len((1 << 14) / n.max(1) + 1)
            .fold(
                || (vec![0u64; rounds], 0u32),
                |(mut l, mut max), p| {
                    for ((vecs, _), (lr, w)) in self.rounds.iter().zip(l.iter_mut().zip(&uv)) {
                        let (da, ma) = slices::dot_max(&y[p * n..][..n], w);
                        let (db, mb) = yb.map_or((0, 0), |yb| slices::dot_max(&yb[p * n..][..n], w));
                        max = max.max(ma).max(mb);
                        let c = M31::add(M31::reduce(da), M31::reduce(db));
                        *lr += M31::fold_product(u64::from(vecs.weight::<M31>(p)) * u64::from(c));
                    }
                    (l, max)
                },
            )
            .reduce(
                || (vec![0u64; rounds], 0),
                |(mut la, ma), (lb, mb)| {
                    la.iter_mut()
                        .zip(lb)
                        .for_each(|(a, b)| *a = u64::from(M31::reduce(*a)) + u64::from(M31::reduce(b)));
                    (la, ma.max(mb))
                },
            );
        let l: Vec<u32> = l.into_iter().map(M31::reduce).collect();
        (self.rejected_round(&l), max)
    }

    /// Each round's share of `L` from output plane `plane` (`b·Cout + o'`), whose two parts are
    /// `a` and `b`: `w_b·s_o'·Σ_y u_y Σ_x v_x (a + b)[y, x]`.
    pub fn plane_terms<F: PrimeField>(&self, plane: usize, a: &[u32], b: &[u32]) -> Vec<u32> {
        self.rounds
            .iter()
            .map(|(vecs, _)| F::mul(vecs.weight::<F>(plane), F::add(vecs.contract::<F>(a), vecs.contract::<F>(b))))
            .collect()
    }

    /// The first rejecting round (from 1), given each round's `L` (the sums of
    /// [`FastRounds::plane_terms`] over all planes); `None` when all accept.
    pub fn rejected_round(&self, l: &[u32]) -> Option<usize> {
        self.rounds.iter().zip(l).position(|((_, v), l)| v != l).map(|r| r + 1)
    }
}

/// Where Fast verification's kernel term comes from: `K'` itself, or the plain kernel `K` in
/// small integers (a quarter of `K'`'s bytes for 8-bit weights; the scalars of `K'` are folded
/// into `s`). Both give the same field elements.
#[derive(Clone, Copy, Debug)]
pub(crate) enum KernelTerm<'a> {
    /// `K'` (`Cout × Cin/G × kh × kw`, cloud order).
    Encrypted(&'a [u32]),
    /// `K` in 8 bits (`Cout × Cin/G × kh × kw`, plain order).
    Plain8(&'a [i8]),
    /// `K` in 16 bits.
    Plain16(&'a [i16]),
}

impl KernelTerm<'_> {
    fn len(&self) -> usize {
        match self {
            KernelTerm::Encrypted(k) => k.len(),
            KernelTerm::Plain8(k) => k.len(),
            KernelTerm::Plain16(k) => k.len(),
        }
    }

    /// `k_s[c', ·]·β[c']` (`Cin × kh × kw`, cloud order) with `k_s` as in [`kernel_fold`].
    fn fold_scaled(&self, key: &SessionKey, s: &[u32]) -> Vec<u32> {
        let g = key.geometry();
        let taps = g.kh() * g.kw();
        match self {
            KernelTerm::Encrypted(kp) => {
                let mut ks = kernel_fold::<M31>(g, kp, s);
                for (row, &beta) in ks.chunks_exact_mut(taps).zip(key.beta()) {
                    row.iter_mut().for_each(|v| *v = M31::mul(*v, beta));
                }
                ks
            }
            KernelTerm::Plain8(k) => kernel_fold_plain(key, k, s),
            KernelTerm::Plain16(k) => kernel_fold_plain(key, k, s),
        }
    }
}

/// Output channels whose weighted kernel rows a task of [`kernel_fold_plain`] sums exactly.
const FOLD_ROWS: usize = 64;

/// `k_s[c', ·]·β[c']` from the plain kernel: since `K'[o', cl', ·] = α[o']·β[c']^-1·K[σ(o'), cl,
/// ·]`, it is `Σ_{o'} (s_o'·α_o')·K[σ(o'), cl, ·]` with `cl` the plain local index of `π(c')`:
/// small-integer rows summed exactly in `i64`, no inverse needed.
fn kernel_fold_plain<T: SmallInt>(key: &SessionKey, k: &[T], s: &[u32]) -> Vec<u32> {
    let g = key.geometry();
    let (cpg, cpo, m, taps) = (g.cin_per_group(), g.cout_per_group(), g.m(), g.kh() * g.kw());
    let mut out = vec![0u32; g.cin() * taps];
    for (grp, dst) in out.chunks_exact_mut(cpg * taps).enumerate() {
        // Σ over the group's output channels, in tasks of FOLD_ROWS rows (|Σ| < 2^6·2^31·2^15),
        // taken in plain order (σ maps the cloud group onto one plain group) so that `K` is read
        // from start to end.
        let plain = key.sigma()[grp * cpo] / cpo.max(1) * cpo;
        let acc = (plain..plain + cpo)
            .into_par_iter()
            .with_min_len(FOLD_ROWS)
            .fold(
                || vec![0i64; m],
                |mut acc, o| {
                    let op = key.sigma_inv()[o];
                    let t = M31::mul(s[op], key.alpha()[op]);
                    slices::fold_small(&mut acc, t, &k[o * m..][..m]);
                    acc
                },
            )
            .map(|acc| {
                let mut f = vec![0u32; m];
                slices::reduce_signed_into(&mut f, &acc);
                f
            })
            .reduce(
                || vec![0u32; m],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(x, y)| *x = M31::add(*x, y));
                    a
                },
            );
        for (clp, row) in dst.chunks_exact_mut(taps).enumerate() {
            let cl = key.pi()[grp * cpg + clp] % cpg;
            row.copy_from_slice(&acc[cl * taps..][..taps]);
        }
    }
    out
}

/// Fast mode's kernel term `k_s[c', ·] = Σ_{o' in the cloud group of c'} s_o'·K'[o', cl', ·]`
/// (`Cin × kh × kw`), with `K'` streamed row by row.
///
/// This is the one part of a Fast round that does not scale with the batch: it reads all of
/// `K'` for every fresh `s`, so it is reported apart from the per-image work in benchmarks.
pub fn kernel_fold<F: PrimeField>(g: &Conv2d, kp: &[u32], s: &[u32]) -> Vec<u32> {
    let (cpg, cpo, taps) = (g.cin_per_group(), g.cout_per_group(), g.kh() * g.kw());
    (0..g.groups())
        .into_par_iter()
        .flat_map_iter(|grp| {
            let mut acc = vec![0u64; cpg * taps];
            for (op, row) in kp.chunks_exact(cpg * taps).enumerate().skip(grp * cpo).take(cpo) {
                F::mul_acc(&mut acc, s[op], row);
            }
            acc.into_iter().map(F::reduce)
        })
        .collect()
}

/// The three products of Strict mode for a whole batch, for one vector `r ∈ F^(Ho×Wo)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StrictProducts {
    /// `L[b,o'] = Σ_{y,x} r[y,x]·Y'[b,o',y,x]` (`B × Cout`).
    pub l: Vec<u32>,
    /// `T_b[c',i,j] = Σ_{y,x} r[y,x]·X'pad[b,c',y·sh+i·dh,x·sw+j·dw]` (`B × Cin × kh × kw`).
    pub t: Vec<u32>,
    /// `V[b,o'] = Σ_{cl',i,j} K'[o',cl',i,j]·T_b[g'(o')·Cin/G + cl', i, j]` (`B × Cout`).
    pub v: Vec<u32>,
}

impl StrictProducts {
    /// Strict mode accepts if and only if `L = V` in every entry.
    pub fn accepts(&self) -> bool {
        self.l == self.v
    }
}

/// The batched verification matrix-vector product of Strict mode on the CPU: `Y'_b·r`,
/// `im2col(X'_b)·r` and `K'·T_b` for every image. The GPU kernel computes the same, bit for bit.
///
/// # Errors
/// [`Error::LengthMismatch`] when `r` does not have `Ho·Wo` entries.
pub fn strict_products<F: PrimeField>(claim: &Claim<'_>, r: &[u32]) -> Result<StrictProducts> {
    let (g, batch, kp, xp, yp) = (claim.geom, claim.batch, claim.kernel, claim.input, claim.output);
    Conv2d::check_len("verification vector r", g.n(), r.len())?;
    let (n, hw, taps, wo) = (g.n(), g.h() * g.w(), g.kh() * g.kw(), g.wo());
    let l: Vec<u32> = (0..yp.len() / n)
        .into_par_iter()
        .with_min_len(16)
        .map(|p| claim.plane_dot::<F>(p, |pl| F::dot(pl, r)))
        .collect();
    let t: Vec<u32> = (0..batch * g.cin() * taps)
        .into_par_iter()
        .with_min_len(16)
        .map(|idx| {
            let (bc, ij) = (idx / taps, idx % taps);
            let (i, j) = (ij / g.kw(), ij % g.kw());
            let plane = &xp[bc * hw..][..hw];
            let mut acc = 0u64;
            for y in 0..g.ho() {
                let Some(row) = g.in_row(y, i) else { continue };
                for x in 0..wo {
                    if let Some(col) = g.in_col(x, j) {
                        acc += F::fold_product(u64::from(r[y * wo + x]) * u64::from(plane[row * g.w() + col]));
                    }
                }
            }
            F::reduce(acc)
        })
        .collect();
    let m = g.m();
    let v: Vec<u32> = (0..batch * g.cout())
        .into_par_iter()
        .with_min_len(16)
        .map(|bo| {
            let (b, op) = (bo / g.cout(), bo % g.cout());
            let tg = &t[(b * g.cin() + g.group_of_output(op) * g.cin_per_group()) * taps..][..m];
            F::dot(&kp[op * m..][..m], tg)
        })
        .collect();
    Ok(StrictProducts { l, t, v })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encrypt::{encrypt_input_into, encrypt_kernel, encrypt_shares_into};
    use crate::geometry::Padding;
    use crate::keys::seeded_rng;
    use crate::privacy::Privacy;
    use crate::share::ShareSeed;

    /// Fast mode's input side `V`, computed from the plain small integers and the masks' factors
    /// ([`FastRounds::draw_plain`]), is the very field element computed from `X'`, for both modes
    /// it serves, on strided, padded, dilated and grouped layers and several batch sizes.
    #[test]
    fn input_side_from_the_plain_input_equals_the_one_from_x_prime() {
        let seed = 0x1d5;
        println!("seed = {seed:#x}");
        let shapes = [
            Conv2d::builder(3, 4, (9, 11), (3, 3)).padding(Padding::uniform(1)).build(),
            Conv2d::builder(4, 6, (7, 6), (3, 2)).stride(2, 1).padding(Padding::new(1, 0, 2, 1)).groups(2).build(),
            Conv2d::builder(2, 2, (8, 8), (2, 3)).dilation(2, 1).padding(Padding::new(0, 2, 1, 0)).build(),
            Conv2d::builder(6, 6, (5, 5), (1, 1)).groups(6).build(),
        ];
        let mut rng = seeded_rng(seed);
        for g in shapes.into_iter().map(|g| g.expect("valid")) {
            for (privacy, batch) in
                [(Privacy::LowRank { rank: 2 }, 1), (Privacy::LowRank { rank: 3 }, 3), (Privacy::TwoServer, 2)]
            {
                let key = SessionKey::generate_for(&g, privacy, &mut rng).expect("key");
                let k: Vec<u32> = (0..g.kernel_len()).map(|_| M31::random(&mut rng)).collect();
                let kp = encrypt_kernel(&key, &k).expect("kernel");
                let x: Vec<i8> =
                    (0..batch * g.image_len()).map(|i| [127, -127, 0, (i % 255) as i8][i % 4].max(-127)).collect();
                let xf: Vec<u32> = x.iter().map(|&v| M31::embed(i64::from(v)).expect("small")).collect();
                let mut xp = vec![0u32; xf.len()];
                let masks = if privacy == Privacy::TwoServer {
                    let mut share_b = vec![0u32; xf.len()];
                    encrypt_shares_into(&key, &ShareSeed::generate(&mut rng), &xf, &mut xp, &mut share_b)
                        .expect("split");
                    Vec::new()
                } else {
                    let masks = ImageMask::generate_batch(&key, batch, &mut rng);
                    encrypt_input_into(&key, &masks, &xf, &mut xp).expect("encrypt");
                    masks
                };
                let y = vec![0u32; batch * g.output_image_len()];
                let claim = Claim::new(&g, batch, &kp, &xp, &y).expect("claim");
                let from_xp = FastRounds::draw::<M31, _>(&claim, 2, &mut seeded_rng(7)).expect("rounds");
                let v = |f: &FastRounds| f.rounds.iter().map(|r| r.1).collect::<Vec<_>>();
                let k8: Vec<i8> = k.iter().map(|&w| (w % 255) as i8).collect();
                // K' of the 8-bit kernel, for the plain kernel term to be compared against.
                let k8_field: Vec<u32> = k8.iter().map(|&w| M31::embed(i64::from(w)).expect("small")).collect();
                let kp8 = encrypt_kernel(&key, &k8_field).expect("kernel");
                let claim8 = Claim::new(&g, batch, &kp8, &xp, &y).expect("claim");
                let from_xp8 = FastRounds::draw::<M31, _>(&claim8, 2, &mut seeded_rng(7)).expect("rounds");
                for (term, want) in [(KernelTerm::Encrypted(&kp), &from_xp), (KernelTerm::Plain8(&k8), &from_xp8)] {
                    let plain =
                        FastRounds::draw_plain(&key, term, &x, 127, &masks, 2, &mut seeded_rng(7)).expect("rounds");
                    assert_eq!(v(&plain), v(want), "{g:?}, {privacy:?}, batch {batch}, {term:?}");
                }
            }
        }
    }
}
