//! Decryption on the client (docs/scheme.md §7).
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
pub(crate) struct ImageTables {
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
    fill_q(g, rho, mk, tab, o, q);
    for (y, coefs) in tab.a.chunks_exact(rho * kh).enumerate() {
        terms.clear();
        terms.extend(coefs.iter().zip(q.chunks_exact(wo)).filter(|(c, _)| **c != 0).map(|(&c, qrow)| (c, qrow)));
        emit(y, &terms);
    }
}

/// `Q_t[o,i,·] = Σ_j KG_t[o,i,j]·C_t[·,j]` for t = 1..ρ and every kernel row i, into `q`
/// (`ρ·kh × Wo`, the order of the coefficients `A_t[y,i]` in [`ImageTables`]).
fn fill_q(g: &Conv2d, rho: usize, mk: &MaskKernel, tab: &ImageTables, o: usize, q: &mut [u32]) {
    let (kh, kw, wo) = (g.kh(), g.kw(), g.wo());
    let mut terms: Vec<(u32, &[u32])> = Vec::with_capacity(kw);
    for (t, qt) in q.chunks_exact_mut(kh * wo).enumerate().take(rho) {
        let kg = &mk.kg[(t * g.cout() + o) * kh * kw..][..kh * kw];
        for (qrow, kgi) in qt.chunks_exact_mut(wo).zip(kg.chunks_exact(kw)) {
            terms.clear();
            terms.extend(kgi.iter().enumerate().map(|(j, &k)| (k, &tab.c[(t * kw + j) * wo..][..wo])));
            slices::combine_into(qrow, &terms);
        }
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
    let sigma_inv = key.sigma_inv();
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

/// Checks a cloud answer and the output buffer against the key's geometry; returns the batch.
fn check_answer_len(key: &SessionKey, y_cloud: &[u32], out: &[i32]) -> Result<usize> {
    let g = key.geometry();
    let batch = y_cloud.len() / g.output_image_len();
    Conv2d::check_len("cloud output", batch * g.output_image_len(), y_cloud.len())?;
    Conv2d::check_len("decrypted output buffer", y_cloud.len(), out.len())?;
    check_canonical::<M31>("cloud output", y_cloud)?;
    Ok(batch)
}

/// Mode `two-server` (docs/scheme.md §11): decrypts the verified answers of the two clouds,
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
    let (g, sigma_inv) = (key.geometry(), key.sigma_inv());
    let n = g.n();
    out.par_chunks_exact_mut(n).enumerate().for_each(|(idx, dst)| {
        let (b, o) = (idx / g.cout(), idx % g.cout());
        let op = sigma_inv[o];
        let at = (b * g.cout() + op) * n;
        slices::unmask_sum_into(dst, &y_a[at..][..n], &y_b[at..][..n], key.alpha_inv()[op]);
    });
    Ok(())
}

/// Mode `pad` (docs/scheme.md §12): `Y[b,σ(o'),y,x] = lift(α[o']^-1·Y'[b,o',y,x] - U_b[σ(o'),y,x])`
/// for the verified answer, with the pads the input was encrypted with, into a caller-owned
/// buffer.
///
/// # Errors
/// [`crate::Error::LengthMismatch`] (also for the pads) or [`crate::Error::NotAFieldElement`].
pub fn decrypt_padded_into(key: &SessionKey, pads: &[Pad], answer: &Verified<'_>, out: &mut [i32]) -> Result<()> {
    let y_cloud = answer.output();
    let batch = check_answer_len(key, y_cloud, out)?;
    let (g, sigma_inv) = (key.geometry(), key.sigma_inv());
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
    let (g, sigma_inv) = (key.geometry(), key.sigma_inv());
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

/// What the client kept of one batch to unmask its verified answer, per privacy mode.
pub(crate) enum Unmask<'a> {
    /// Mode `lowrank`: `Y = lift(α^-1·Y' - Mk_b)`, with each image's tables.
    LowRank { mk: &'a MaskKernel, tables: &'a [ImageTables] },
    /// Mode `pad`: `Y = lift(α^-1·Y' - U_b)` with the pads of the batch.
    Pad(&'a [Pad]),
    /// Mode `two-server`: `Y = lift(α^-1·(Y'_A + Y'_B))`; this is cloud B's answer.
    Sum(&'a [u32]),
    /// Mode `split-model`: `Y = lift(Y_A + Y_B - U_b)` (its key has α = 1 and σ the
    /// identity), with the pads of the batch and cloud B's answer.
    PadSum(&'a [Pad], &'a [u32]),
}

/// The per-image tables of mode `lowrank` for the masks of a batch.
pub(crate) fn image_tables(key: &SessionKey, masks: &[ImageMask]) -> Vec<ImageTables> {
    masks.iter().map(|m| ImageTables::new(key.geometry(), m)).collect()
}

/// Decrypts image `b` of a verified batch answer into `out` (`Cout × Ho × Wo`, plain channel
/// order): each piece of an output plane is unmasked into exact integers (plus `bias[o]`, when
/// given) and handed to `epilogue(plane, range, ints, out_piece)`, which writes the piece from
/// them (`plane = b·Cout + o` indexes the batch's planes, `range` the elements of the plane).
/// The image's planes are read in cloud order (the order the answer sits in memory), in
/// parallel.
///
/// The answer must have passed verification: the caller ([`crate::client::PrivateConv`])
/// holds the proof.
///
/// # Errors
/// [`crate::Error::LengthMismatch`] when the answers, `out` or `bias` do not match the key's
/// geometry, or the batch has no image `b`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn decrypt_image_into<O, E>(
    key: &SessionKey,
    unmask: &Unmask<'_>,
    y: &[u32],
    b: usize,
    bias: Option<&[i32]>,
    out: &mut [O],
    epilogue: &E,
) -> Result<()>
where
    O: Send,
    E: Fn(usize, std::ops::Range<usize>, &[i32], &mut [O]) + Sync,
{
    let g = key.geometry();
    let (n, wo, cout, rho) = (g.n(), g.wo(), g.cout(), key.rank());
    let img = g.output_image_len();
    let batch = y.len() / img.max(1);
    Conv2d::check_len("cloud output", batch * img, y.len())?;
    Conv2d::check_len("decrypted image buffer", img, out.len())?;
    if b >= batch {
        return Err(crate::Error::LengthMismatch { what: "image of the batch", expected: batch, got: b + 1 });
    }
    if let Some(bias) = bias {
        Conv2d::check_len("bias", cout, bias.len())?;
    }
    match unmask {
        Unmask::LowRank { tables, .. } => Conv2d::check_len("image tables", batch, tables.len())?,
        Unmask::Pad(pads) => {
            Conv2d::check_len("pads", batch, pads.len())?;
            Conv2d::check_len("pad mask convolution", img, pads[b].mask_conv().len())?;
        }
        Unmask::Sum(yb) => Conv2d::check_len("cloud B output", y.len(), yb.len())?,
        Unmask::PadSum(pads, yb) => {
            Conv2d::check_len("pads", batch, pads.len())?;
            Conv2d::check_len("pad mask convolution", img, pads[b].mask_conv().len())?;
            Conv2d::check_len("cloud B output", y.len(), yb.len())?;
        }
    }
    let (kh, kw) = (g.kh(), g.kw());
    let tab = match unmask {
        Unmask::LowRank { tables, .. } => Some(&tables[b]),
        _ => None,
    };
    // Mode lowrank on outputs at least MIN_ROW_WIDTH wide goes by rows (its mask is per row,
    // its rows Q per plane); everything else in pieces of up to PIECE elements of a plane.
    let by_rows = tab.is_some_and(|t| t.basis.is_empty());
    let q_len = if by_rows { rho * kh * wo } else { 0 };
    let rows_per_piece = (PIECE / wo.max(1)).max(1);
    let ints_len = if by_rows { rows_per_piece * wo } else { PIECE }.min(n);
    let sigma_inv = key.sigma_inv();
    let mut planes: Vec<Option<&mut [O]>> = out.chunks_exact_mut(n).map(Some).collect();
    let cloud_order: Vec<(usize, &mut [O])> =
        key.sigma().iter().filter_map(|&o| planes[o].take().map(|dst| (o, dst))).collect();
    let max = cloud_order
        .into_par_iter()
        .with_min_len((PIECE / n.max(1)).max(1))
        .map_init(
            || (vec![0i32; ints_len], vec![0u32; q_len]),
            |(ints, q), (o, dst)| {
                let op = sigma_inv[o];
                let plane = b * cout + o;
                let src = &y[(b * cout + op) * n..][..n];
                let ainv = key.alpha_inv()[op];
                let add = bias.map_or(0, |bias| bias[o]);
                let mut finish = |range: std::ops::Range<usize>, ints: &mut [i32]| {
                    if add != 0 {
                        ints.iter_mut().for_each(|v| *v += add);
                    }
                    epilogue(plane, range.clone(), ints, &mut dst[range]);
                };
                let mut max = 0;
                match (unmask, tab) {
                    (Unmask::LowRank { mk, .. }, Some(tab)) if by_rows => {
                        // Rows in groups that fill the working row: one kernel call per group.
                        fill_q(g, rho, mk, tab, o, q);
                        let kk = rho * kh;
                        for y0 in (0..g.ho()).step_by(rows_per_piece) {
                            let y1 = (y0 + rows_per_piece).min(g.ho());
                            let range = y0 * wo..y1 * wo;
                            let ints = &mut ints[..range.len()];
                            let coefs = &tab.a[y0 * kk..y1 * kk];
                            max = max.max(slices::unmask_rows(ints, &src[range.clone()], ainv, coefs, q, wo));
                            finish(range, ints);
                        }
                    }
                    (Unmask::LowRank { mk, .. }, Some(tab)) => {
                        let kg = (0..rho).flat_map(|t| &mk.kg[(t * cout + o) * kh * kw..][..kh * kw]);
                        let bases: Vec<(u32, &[u32])> = kg.copied().zip(tab.basis.chunks_exact(n)).collect();
                        let mut terms: Vec<(u32, &[u32])> = Vec::with_capacity(bases.len());
                        for start in (0..n).step_by(PIECE) {
                            let range = start..(start + PIECE).min(n);
                            let ints = &mut ints[..range.len()];
                            terms.clear();
                            terms.extend(bases.iter().map(|&(k, basis)| (k, &basis[range.clone()])));
                            max = max.max(slices::unmask_into(ints, &src[range.clone()], ainv, &terms));
                            finish(range, ints);
                        }
                    }
                    (Unmask::Pad(pads), _) => {
                        let u = &pads[b].mask_conv()[o * n..][..n];
                        for start in (0..n).step_by(PIECE) {
                            let range = start..(start + PIECE).min(n);
                            let ints = &mut ints[..range.len()];
                            let (ys, us) = (&src[range.clone()], &u[range.clone()]);
                            max = max.max(slices::unmask_into(ints, ys, ainv, &[(1, us)]));
                            finish(range, ints);
                        }
                    }
                    (Unmask::PadSum(pads, yb), _) => {
                        let u = &pads[b].mask_conv()[o * n..][..n];
                        let bsrc = &yb[(b * cout + op) * n..][..n];
                        for start in (0..n).step_by(PIECE) {
                            let range = start..(start + PIECE).min(n);
                            let ints = &mut ints[..range.len()];
                            let (ys, bs, us) = (&src[range.clone()], &bsrc[range.clone()], &u[range.clone()]);
                            // ainv = 1: -(p - 1)·Y_B = +Y_B.
                            max = max.max(slices::unmask_into(ints, ys, ainv, &[(M31::P - 1, bs), (1, us)]));
                            finish(range, ints);
                        }
                    }
                    (Unmask::Sum(yb), _) => {
                        let bsrc = &yb[(b * cout + op) * n..][..n];
                        for start in (0..n).step_by(PIECE) {
                            let range = start..(start + PIECE).min(n);
                            let ints = &mut ints[..range.len()];
                            let (ys, bs) = (&src[range.clone()], &bsrc[range.clone()]);
                            max = max.max(slices::unmask_sum_into(ints, ys, bs, ainv));
                            finish(range, ints);
                        }
                    }
                    (Unmask::LowRank { .. }, None) => {}
                }
                max
            },
        )
        .max()
        .unwrap_or(0);
    // Verification checked every entry; this is a second line of defence, never reached.
    if max >= M31::P {
        return Err(crate::Error::Internal("decrypting an answer with entries not below p".into()));
    }
    Ok(())
}
