//! Decryption on the client (SCHEME.md §7).
//!
//! `Y'[b,o',y,x] = α[o']·(Y[b,σ(o'),y,x] + Mk_b[σ(o'),y,x])` with `Mk_b = Conv(K, R_b)`. Because
//! `R_b` is a sum of channel ⊗ row ⊗ column terms, `Mk_b` separates:
//! - per session: `KG_t[o,i,j] = Σ_cl K[o,cl,i,j]·g_t[grp(o)·Cin/G + cl]` ([`MaskKernel`]);
//! - per image: `Q_t[o,i,x] = Σ_j KG_t[o,i,j]·C_t[x,j]`, then `Mk[o,y,x] = Σ_t Σ_i A_t[y,i]·Q_t[o,i,x]`.
//!
//! Mode `two-server` (§11) needs no mask correction: `Y = lift(α^-1·(Y'_A + Y'_B))`
//! ([`decrypt_sum_into`]); mode `pad` (§12) subtracts the precomputed `U = Conv(K, R)`
//! ([`decrypt_padded_into`]).

use rayon::prelude::*;

use crate::Result;
use crate::encrypt::check_masks;
use crate::field::{M31, PrimeField, check_canonical, slices};
use crate::geometry::Conv2d;
use crate::keys::{ImageMask, SessionKey};
use crate::pad::Pad;
use crate::verify::{FastRounds, Verdict, Verified};

/// The per-session part of the mask correction, `KG_t` for t = 1..ρ (`ρ × Cout × kh × kw`,
/// indexed by plain output channel). Secret: never printed, zeroized on drop.
#[derive(Clone)]
pub struct MaskKernel {
    kg: Vec<u32>,
}

impl std::fmt::Debug for MaskKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MaskKernel(<secret>)")
    }
}

impl Drop for MaskKernel {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.kg);
    }
}

impl MaskKernel {
    /// Computes `KG_t[o,i,j] = Σ_cl K[o,cl,i,j]·g_t[grp(o)·Cin/G + cl]` from the plain kernel.
    ///
    /// # Errors
    /// [`crate::Error::LengthMismatch`] or [`crate::Error::NotAFieldElement`].
    pub fn new(key: &SessionKey, k: &[u32]) -> Result<Self> {
        let g = key.geometry();
        Conv2d::check_len("kernel", g.kernel_len(), k.len())?;
        check_canonical::<M31>("kernel", k)?;
        let (cpg, taps) = (g.cin_per_group(), g.kh() * g.kw());
        // Row by row over K: KG_t[o, ·] = Σ_cl g_t[grp(o)·Cin/G + cl]·K[o, cl, ·], one fused
        // linear combination of Cin/G taps-long rows per (t, o).
        let mut kg = vec![0u32; key.rank() * g.cout() * taps];
        kg.par_chunks_exact_mut(taps).enumerate().for_each_init(
            || Vec::with_capacity(cpg),
            |terms: &mut Vec<(u32, &[u32])>, (to, dst)| {
                let (gt, o) = (key.channel_factor(to / g.cout()), to % g.cout());
                let c0 = g.group_of_output(o) * cpg;
                terms.clear();
                terms.extend(
                    k[o * cpg * taps..][..cpg * taps].chunks_exact(taps).zip(&gt[c0..]).map(|(row, &gv)| (gv, row)),
                );
                slices::combine_into(dst, terms);
            },
        );
        Ok(Self { kg })
    }
}

/// The per-image tables `A_t[y,i]` (stored `Ho × ρ × kh`, so that the coefficients of one
/// output row are contiguous) and `C_t[x,j]` (stored transposed, `ρ × kw × Wo`, so that `Q` is
/// computed along output rows); zero where the index falls in the padding.
struct ImageTables {
    a: Vec<u32>,
    c: Vec<u32>,
    /// For outputs narrower than [`MIN_ROW_WIDTH`]: the planes `B_{t,i,j} = A_t[·,i] ⊗ C_t[·,j]`
    /// (`ρ·kh·kw × Ho × Wo`), so that `Mk[o] = Σ_{t,i,j} KG_t[o,i,j]·B_{t,i,j}` is one fused pass
    /// per plane. Empty for wider outputs, which are computed row by row.
    basis: Vec<u32>,
}

/// Output rows at least this wide are unmasked row by row (`ρ·kh` products per element);
/// narrower ones as whole planes (`ρ·kh·kw` products per element, but no per-row overhead).
const MIN_ROW_WIDTH: usize = 16;

/// Elements of a plane decrypted at a time by the fused pass (outside rows): 16 KiB of
/// integers, in L1.
const PIECE: usize = 4096;

impl ImageTables {
    fn new(g: &Conv2d, mask: &ImageMask) -> Self {
        let rho = mask.rank();
        let mut a = vec![0u32; rho * g.ho() * g.kh()];
        let mut c = vec![0u32; rho * g.wo() * g.kw()];
        for t in 0..rho {
            for y in 0..g.ho() {
                for i in 0..g.kh() {
                    if let Some(r) = g.in_row(y, i) {
                        a[(y * rho + t) * g.kh() + i] = mask.row_factor(t)[r];
                    }
                }
            }
            for j in 0..g.kw() {
                for x in 0..g.wo() {
                    if let Some(col) = g.in_col(x, j) {
                        c[(t * g.kw() + j) * g.wo() + x] = mask.col_factor(t)[col];
                    }
                }
            }
        }
        let mut basis = Vec::new();
        if g.wo() < MIN_ROW_WIDTH {
            let (kh, kw, wo) = (g.kh(), g.kw(), g.wo());
            basis = vec![0u32; rho * kh * kw * g.n()];
            for (tij, plane) in basis.chunks_exact_mut(g.n()).enumerate() {
                let (t, i, j) = (tij / (kh * kw), tij / kw % kh, tij % kw);
                let crow = &c[(t * kw + j) * wo..][..wo];
                for (y, row) in plane.chunks_exact_mut(wo).enumerate() {
                    slices::combine_into(row, &[(a[(y * rho + t) * kh + i], crow)]);
                }
            }
        }
        Self { a, c, basis }
    }
}

/// Calls `emit(y, terms)` for every output row `y` of the plane `Mk[o,·,·]` (plain output
/// channel `o`), that row being the linear combination `Σ_k c_k·q_k` of `terms = [(c_k, q_k)]`
/// (rows of `Wo` elements): `Σ KG_t[o,i,j]·B_{t,i,j}[y,·]` for narrow outputs, else
/// `c = A_t[y,i]` and `q = Q_t[i,·]`. `q` is working memory of `ρ·kh·Wo` elements.
fn mask_channel(
    g: &Conv2d,
    rho: usize,
    mk: &MaskKernel,
    tab: &ImageTables,
    o: usize,
    q: &mut [u32],
    mut emit: impl FnMut(usize, &[(u32, &[u32])]),
) {
    let (kh, kw, wo) = (g.kh(), g.kw(), g.wo());
    let mut terms: Vec<(u32, &[u32])> = Vec::with_capacity(rho * kh * kw);
    if !tab.basis.is_empty() {
        let kg: Vec<u32> = (0..rho).flat_map(|t| &mk.kg[(t * g.cout() + o) * kh * kw..][..kh * kw]).copied().collect();
        for y in 0..g.ho() {
            terms.clear();
            terms.extend(kg.iter().zip(tab.basis.chunks_exact(g.n())).map(|(&k, plane)| (k, &plane[y * wo..][..wo])));
            emit(y, &terms);
        }
        return;
    }
    for (t, qt) in q.chunks_exact_mut(kh * wo).enumerate() {
        let kg = &mk.kg[(t * g.cout() + o) * kh * kw..][..kh * kw];
        for (qrow, kgi) in qt.chunks_exact_mut(wo).zip(kg.chunks_exact(kw)) {
            terms.clear();
            terms.extend(kgi.iter().enumerate().map(|(j, &k)| (k, &tab.c[(t * kw + j) * wo..][..wo])));
            slices::combine_into(qrow, &terms);
        }
    }
    for (y, coefs) in tab.a.chunks_exact(rho * kh).enumerate() {
        terms.clear();
        terms.extend(coefs.iter().zip(q.chunks_exact(wo)).filter(|(c, _)| **c != 0).map(|(&c, qrow)| (c, qrow)));
        emit(y, &terms);
    }
}

/// The mask convolution `Mk_b = Conv(K, R_b)` of one image (`Cout × Ho × Wo`, plain channel
/// order), computed the separable way. Exposed for tests of the algebra.
pub fn mask_conv(key: &SessionKey, mk: &MaskKernel, mask: &ImageMask) -> Vec<u32> {
    let g = key.geometry();
    let tab = ImageTables::new(g, mask);
    let mut out = vec![0u32; g.output_image_len()];
    let mut q = vec![0u32; key.rank() * g.kh() * g.wo()];
    let wo = g.wo();
    for (o, dst) in out.chunks_exact_mut(g.n()).enumerate() {
        mask_channel(g, key.rank(), mk, &tab, o, &mut q, |y, terms| {
            slices::combine_into(&mut dst[y * wo..][..wo], terms);
        });
    }
    out
}

/// Decrypts the verified cloud answer `Y'` (`B × Cout × Ho × Wo`, cloud channel order) into
/// the plain integer result `Y[b, σ(o'), y, x] = lift(α[o']^-1·Y'[b,o',y,x] - Mk_b[σ(o'),y,x])`.
///
/// # Errors
/// [`crate::Error::LengthMismatch`] or [`crate::Error::NotAFieldElement`].
pub fn decrypt(key: &SessionKey, mk: &MaskKernel, masks: &[ImageMask], answer: &Verified<'_>) -> Result<Vec<i32>> {
    let mut out = vec![0i32; answer.output().len()];
    decrypt_into(key, mk, masks, answer, &mut out)?;
    Ok(out)
}

/// [`decrypt`] into a caller-owned buffer of the answer's length in elements, so that a stream of
/// batches reuses one allocation.
///
/// # Errors
/// [`crate::Error::LengthMismatch`] (also for `out`) or [`crate::Error::NotAFieldElement`].
pub fn decrypt_into(
    key: &SessionKey,
    mk: &MaskKernel,
    masks: &[ImageMask],
    answer: &Verified<'_>,
    out: &mut [i32],
) -> Result<()> {
    let y_cloud = answer.output();
    let g = key.geometry();
    let batch = masks.len();
    check_masks(key, masks, batch)?;
    Conv2d::check_len("cloud output", batch * g.output_image_len(), y_cloud.len())?;
    Conv2d::check_len("decrypted output buffer", y_cloud.len(), out.len())?;
    check_canonical::<M31>("cloud output", y_cloud)?;
    let sigma_inv = sigma_inverse(key);
    let tables: Vec<ImageTables> = masks.iter().map(|m| ImageTables::new(g, m)).collect();
    let n = g.n();
    out.par_chunks_exact_mut(n).enumerate().for_each_init(
        || vec![0u32; key.rank() * g.kh() * g.wo()],
        |q, (idx, dst)| {
            let (b, o) = (idx / g.cout(), idx % g.cout());
            let op = sigma_inv[o];
            let ainv = key.alpha_inv()[op];
            let src = &y_cloud[(b * g.cout() + op) * n..][..n];
            let wo = g.wo();
            mask_channel(g, key.rank(), mk, &tables[b], o, q, |y, terms| {
                slices::unmask_into(&mut dst[y * wo..][..wo], &src[y * wo..][..wo], ainv, terms);
            });
        },
    );
    Ok(())
}

/// `σ^-1`: plain output channel → cloud output channel.
fn sigma_inverse(key: &SessionKey) -> Vec<usize> {
    let mut sigma_inv = vec![0usize; key.sigma().len()];
    for (op, &o) in key.sigma().iter().enumerate() {
        sigma_inv[o] = op;
    }
    sigma_inv
}

/// Checks a cloud answer and the output buffer against the key's geometry; returns the batch.
fn check_answer_len(key: &SessionKey, y_cloud: &[u32], out: &[i32]) -> Result<usize> {
    let g = key.geometry();
    let batch = y_cloud.len() / g.output_image_len();
    Conv2d::check_len("cloud output", batch * g.output_image_len(), y_cloud.len())?;
    Conv2d::check_len("decrypted output buffer", y_cloud.len(), out.len())?;
    check_canonical::<M31>("cloud output", y_cloud)?;
    Ok(batch)
}

/// Mode `two-server` (SCHEME.md §11): decrypts the verified answers of the two clouds,
/// `Y[b,σ(o'),y,x] = lift(α[o']^-1·(Y'_A + Y'_B)[b,o',y,x])`, in one pass into a caller-owned
/// buffer. The proof must come from a claim in two parts ([`crate::verify::Claim::with_parts`]).
///
/// # Errors
/// [`crate::Error::LengthMismatch`] (also for a proof of a one-part claim) or
/// [`crate::Error::NotAFieldElement`].
pub fn decrypt_sum_into(key: &SessionKey, answer: &Verified<'_>, out: &mut [i32]) -> Result<()> {
    let y_a = answer.output();
    let y_b = answer.output_b().ok_or(crate::Error::LengthMismatch {
        what: "cloud B's answer (the verified claim had one part)",
        expected: y_a.len(),
        got: 0,
    })?;
    check_answer_len(key, y_a, out)?;
    check_answer_len(key, y_b, out)?;
    let (g, sigma_inv) = (key.geometry(), sigma_inverse(key));
    let n = g.n();
    out.par_chunks_exact_mut(n).enumerate().for_each(|(idx, dst)| {
        let (b, o) = (idx / g.cout(), idx % g.cout());
        let op = sigma_inv[o];
        let at = (b * g.cout() + op) * n;
        slices::unmask_sum_into(dst, &y_a[at..][..n], &y_b[at..][..n], key.alpha_inv()[op]);
    });
    Ok(())
}

/// Mode `pad` (SCHEME.md §12): `Y[b,σ(o'),y,x] = lift(α[o']^-1·Y'[b,o',y,x] - U_b[σ(o'),y,x])`
/// for the verified answer, with the pads the input was encrypted with, into a caller-owned
/// buffer.
///
/// # Errors
/// [`crate::Error::LengthMismatch`] (also for the pads) or [`crate::Error::NotAFieldElement`].
pub fn decrypt_padded_into(key: &SessionKey, pads: &[Pad], answer: &Verified<'_>, out: &mut [i32]) -> Result<()> {
    let y_cloud = answer.output();
    let batch = check_answer_len(key, y_cloud, out)?;
    let (g, sigma_inv) = (key.geometry(), sigma_inverse(key));
    Conv2d::check_len("pads", batch, pads.len())?;
    for p in pads {
        Conv2d::check_len("pad mask convolution", g.output_image_len(), p.mask_conv().len())?;
    }
    let n = g.n();
    out.par_chunks_exact_mut(n).enumerate().for_each(|(idx, dst)| {
        let (b, o) = (idx / g.cout(), idx % g.cout());
        let op = sigma_inv[o];
        let u = &pads[b].mask_conv()[o * n..][..n];
        slices::unmask_into(dst, &y_cloud[(b * g.cout() + op) * n..][..n], key.alpha_inv()[op], &[(1, u)]);
    });
    Ok(())
}

/// Mode `two-server` in Fast mode: verifies and decrypts in one pass over the two answers. Each
/// output plane is unmasked into `out` and contracted for every round of `checks`; if any round
/// rejects, `out` is zeroed and the verdict says which, so a rejected answer never leaves this
/// function decrypted.
///
/// # Errors
/// [`crate::Error::LengthMismatch`] or [`crate::Error::NotAFieldElement`].
pub fn decrypt_sum_verified_into<'a>(
    key: &SessionKey,
    checks: &FastRounds,
    y_a: &'a [u32],
    y_b: &'a [u32],
    out: &mut [i32],
) -> Result<Verdict<'a>> {
    check_answer_len(key, y_a, out)?;
    check_answer_len(key, y_b, out)?;
    let (g, sigma_inv) = (key.geometry(), sigma_inverse(key));
    let n = g.n();
    let terms: Vec<Vec<u32>> = out
        .par_chunks_exact_mut(n)
        .enumerate()
        .map(|(idx, dst)| {
            let (b, o) = (idx / g.cout(), idx % g.cout());
            let op = sigma_inv[o];
            let plane = b * g.cout() + op;
            let (pa, pb) = (&y_a[plane * n..][..n], &y_b[plane * n..][..n]);
            slices::unmask_sum_into(dst, pa, pb, key.alpha_inv()[op]);
            checks.plane_terms::<M31>(plane, pa, pb)
        })
        .collect();
    let rounds = terms.first().map_or(0, Vec::len);
    let l: Vec<u32> = (0..rounds).map(|r| M31::reduce(terms.iter().map(|t| u64::from(t[r])).sum::<u64>())).collect();
    match checks.rejected_round(&l) {
        None => Ok(Verdict::Accepted(Verified::new(y_a, Some(y_b)))),
        Some(round) => {
            out.fill(0);
            Ok(Verdict::Rejected { round })
        }
    }
}

/// What the client kept of one call to unmask its answer, per privacy mode.
pub(crate) enum Unmask<'a> {
    /// Mode `lowrank`: `Y = lift(α^-1·Y' - Mk_b)` with the image masks of the call.
    LowRank { mk: &'a MaskKernel, masks: &'a [ImageMask] },
    /// Mode `pad`: `Y = lift(α^-1·Y' - U_b)` with the pads of the call.
    Pad(&'a [Pad]),
    /// Mode `two-server`: `Y = lift(α^-1·(Y'_A + Y'_B))`; this is cloud B's answer.
    Sum(&'a [u32]),
}

/// The outcome of [`decrypt_verified_into`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Every round accepted: the output holds the decrypted result.
    Accepted,
    /// Round `round` (from 1) rejected; the output was zeroed.
    Rejected { round: usize },
    /// An entry of an answer is not below p (its value); the output was zeroed.
    Malformed { value: u32 },
}

/// Per-task state of the fused pass: each round's partial `L`, the largest answer entry, and
/// working memory (one output row of integers, the `Q` rows of mode `lowrank`).
struct PassState {
    l: Vec<u64>,
    max: u32,
    ints: Vec<i32>,
    q: Vec<u32>,
}

/// Verifies and decrypts in one pass over the answer (Fast mode), for every privacy mode: each
/// output row is unmasked into exact integers (plus `bias[o]`, when given), contracted for every
/// round of `checks` on the way, and handed to `epilogue(plane, range, ints, out_row)`, which
/// writes `out[plane·Ho·Wo + range]` from them (`plane = b·Cout + o`, plain channel order). If
/// an answer entry is not below p, or a round rejects, `out` is zeroed and the outcome says so:
/// a rejected answer never leaves this function decrypted.
///
/// `y` is the answer of the cloud (cloud A's in mode `two-server`, cloud B's in `unmask`).
///
/// # Errors
/// [`crate::Error::LengthMismatch`] when the answers, `out`, `bias` or the masks or pads do not
/// match the key's geometry.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decrypt_verified_into<O, E>(
    key: &SessionKey,
    unmask: &Unmask<'_>,
    y: &[u32],
    bias: Option<&[i32]>,
    checks: &FastRounds,
    out: &mut [O],
    epilogue: &E,
) -> Result<Outcome>
where
    O: Copy + Default + Send,
    E: Fn(usize, std::ops::Range<usize>, &[i32], &mut [O]) + Sync,
{
    let g = key.geometry();
    let (n, wo, cout, rho) = (g.n(), g.wo(), g.cout(), key.rank());
    let batch = y.len() / g.output_image_len().max(1);
    Conv2d::check_len("cloud output", batch * g.output_image_len(), y.len())?;
    Conv2d::check_len("decrypted output buffer", y.len(), out.len())?;
    if let Some(b) = bias {
        Conv2d::check_len("bias", cout, b.len())?;
    }
    let tables: Vec<ImageTables> = match unmask {
        Unmask::LowRank { masks, .. } => {
            check_masks(key, masks, batch)?;
            masks.iter().map(|m| ImageTables::new(g, m)).collect()
        }
        Unmask::Pad(pads) => {
            Conv2d::check_len("pads", batch, pads.len())?;
            for p in pads.iter() {
                Conv2d::check_len("pad mask convolution", g.output_image_len(), p.mask_conv().len())?;
            }
            Vec::new()
        }
        Unmask::Sum(b) => {
            Conv2d::check_len("cloud B output", y.len(), b.len())?;
            Vec::new()
        }
    };
    let sigma_inv = sigma_inverse(key);
    let rounds = checks.len();
    // Mode lowrank on outputs at least MIN_ROW_WIDTH wide goes row by row (its mask is per row);
    // everything else goes in pieces of up to PIECE elements of a plane, weighted in the
    // contraction by u ⊗ v directly.
    let by_rows = tables.first().is_some_and(|t| t.basis.is_empty());
    let uv: Vec<Vec<u32>> = if by_rows {
        Vec::new()
    } else {
        (0..rounds)
            .map(|r| {
                let (u, v) = checks.row_col(r);
                u.iter().flat_map(|&uy| v.iter().map(move |&vx| M31::mul(uy, vx))).collect()
            })
            .collect()
    };
    let q_len = if by_rows { rho * g.kh() * wo } else { 0 };
    let ints_len = if by_rows { wo } else { PIECE.min(n) };
    let fresh = || PassState { l: vec![0u64; rounds], max: 0, ints: vec![0i32; ints_len], q: vec![0u32; q_len] };
    let (kh, kw) = (g.kh(), g.kw());
    // The answer is read in its own (cloud) order, which is the order it sits in memory: reading
    // planes in plain order would jump about it and defeat the hardware prefetcher.
    let mut planes: Vec<Option<&mut [O]>> = out.chunks_exact_mut(n).map(Some).collect();
    let cloud_order: Vec<(usize, &mut [O])> = (0..planes.len())
        .filter_map(|cloud_plane| {
            let (b, op) = (cloud_plane / cout, cloud_plane % cout);
            let plane = b * cout + key.sigma()[op];
            planes[plane].take().map(|dst| (plane, dst))
        })
        .collect();
    let state = cloud_order
        .into_par_iter()
        .fold(fresh, |mut st, (plane, dst)| {
            let (b, o) = (plane / cout, plane % cout);
            let op = sigma_inv[o];
            let cloud_plane = b * cout + op;
            let src = &y[cloud_plane * n..][..n];
            let ainv = key.alpha_inv()[op];
            let add = bias.map_or(0, |bias| bias[o]);
            // Σ_{y,x} u_y·v_x·Y'[y, x] of this plane, per round (lazy sums of folded products).
            let mut c = vec![0u64; rounds];
            let PassState { max, ints, q, .. } = &mut st;
            let mut finish = |range: std::ops::Range<usize>, ints: &mut [i32], row_max: u32| {
                *max = (*max).max(row_max);
                if add != 0 {
                    ints.iter_mut().for_each(|v| *v += add);
                }
                epilogue(plane, range.clone(), ints, &mut dst[range]);
            };
            if let (true, Unmask::LowRank { mk, .. }) = (by_rows, unmask) {
                mask_channel(g, rho, mk, &tables[b], o, q, |yy, terms| {
                    let range = yy * wo..(yy + 1) * wo;
                    let yrow = &src[range.clone()];
                    let (dot, m) = slices::unmask_row(ints, yrow, ainv, terms, checks.row_col(0).1);
                    for (r, cr) in c.iter_mut().enumerate() {
                        let (u, v) = checks.row_col(r);
                        let d = if r == 0 { M31::reduce(dot) } else { slices::dot(yrow, v) };
                        *cr += M31::fold_product(u64::from(u[yy]) * u64::from(d));
                    }
                    finish(range, ints, m);
                });
            } else {
                let kg: Vec<u32> = match unmask {
                    Unmask::LowRank { mk, .. } => {
                        (0..rho).flat_map(|t| &mk.kg[(t * cout + o) * kh * kw..][..kh * kw]).copied().collect()
                    }
                    _ => Vec::new(),
                };
                for start in (0..n).step_by(PIECE) {
                    let range = start..(start + PIECE).min(n);
                    let ints = &mut ints[..range.len()];
                    let (ys, w0) = (&src[range.clone()], &uv[0][range.clone()]);
                    let (dot, m) = match unmask {
                        Unmask::Sum(yb) => {
                            let bs = &yb[cloud_plane * n..][range.clone()];
                            for (r, cr) in c.iter_mut().enumerate().skip(1) {
                                let w = &uv[r][range.clone()];
                                *cr += u64::from(M31::add(slices::dot(ys, w), slices::dot(bs, w)));
                            }
                            slices::unmask_sum_row(ints, ys, bs, ainv, w0)
                        }
                        Unmask::Pad(pads) => {
                            let u = &pads[b].mask_conv()[o * n..][range.clone()];
                            slices::unmask_row(ints, ys, ainv, &[(1, u)], w0)
                        }
                        Unmask::LowRank { .. } => {
                            let terms: Vec<(u32, &[u32])> = kg
                                .iter()
                                .zip(tables[b].basis.chunks_exact(n))
                                .map(|(&k, basis)| (k, &basis[range.clone()]))
                                .collect();
                            slices::unmask_row(ints, ys, ainv, &terms, w0)
                        }
                    };
                    if !matches!(unmask, Unmask::Sum(_)) {
                        for (r, cr) in c.iter_mut().enumerate().skip(1) {
                            *cr += u64::from(slices::dot(ys, &uv[r][range.clone()]));
                        }
                    }
                    c[0] += dot;
                    finish(range, ints, m);
                }
            }
            for (r, (l, cr)) in st.l.iter_mut().zip(c).enumerate() {
                let weight = checks.plane_weight::<M31>(r, cloud_plane);
                *l += M31::fold_product(u64::from(weight) * u64::from(M31::reduce(cr)));
            }
            st
        })
        .map(|st| (st.l, st.max))
        .reduce(
            || (vec![0u64; rounds], 0),
            |(mut la, ma), (lb, mb)| {
                // Each part is a sum of at most 2^31 folded products: no overflow in practice;
                // reduce anyway so that any number of tasks is safe.
                la.iter_mut().zip(lb).for_each(|(a, b)| *a = u64::from(M31::reduce(*a)) + u64::from(M31::reduce(b)));
                (la, ma.max(mb))
            },
        );
    let (l, max) = state;
    let outcome = if max >= M31::P {
        Outcome::Malformed { value: max }
    } else {
        let l: Vec<u32> = l.into_iter().map(M31::reduce).collect();
        match checks.rejected_round(&l) {
            None => Outcome::Accepted,
            Some(round) => Outcome::Rejected { round },
        }
    };
    if outcome != Outcome::Accepted {
        out.fill(O::default());
    }
    Ok(outcome)
}
