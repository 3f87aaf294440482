//! Encryption on the client (docs/scheme.md §5).
//!
//! - Kernel: `K'[o', cl', i, j] = α[o'] · β[c']^-1 · K[σ(o'), cl, i, j]`, once per session.
//! - Input: `X'[b, c', y, x] = β[c'] · ( X[b, π(c'), y, x] + R_b[π(c'), y, x] )`, per image,
//!   with `R_b` the rank-ρ mask (mode `lowrank`) or a one-time pad (mode `pad`, §12); mode
//!   `two-server` (§11) splits `β·X[π]` into two additive shares instead.

use rayon::prelude::*;

use crate::field::{M31, P, PrimeField, SmallInt, check_canonical, slices};
use crate::geometry::Conv2d;
use crate::keys::{ImageMask, SessionKey};
use crate::pad::Pad;
use crate::share::{self, ShareSeed};
use crate::{Error, Result};

/// Encrypts the plain kernel `k` (`Cout × Cin/G × kh × kw`, field elements) into `K'`.
///
/// # Errors
/// [`Error::LengthMismatch`] or [`Error::NotAFieldElement`].
pub fn encrypt_kernel(key: &SessionKey, k: &[u32]) -> Result<Vec<u32>> {
    let g = key.geometry();
    Conv2d::check_len("kernel", g.kernel_len(), k.len())?;
    check_canonical::<M31>("kernel", k)?;
    let (cpg, cpo, taps) = (g.cin_per_group(), g.cout_per_group(), g.kh() * g.kw());
    // β[c']^-1 spread over a kernel row: binv[c'·kh·kw + ij] (Cin × kh × kw, cloud order).
    let binv: Vec<u32> = key.beta().iter().flat_map(|&b| std::iter::repeat_n(M31::inv(b), taps)).collect();
    let mut out = vec![0u32; k.len()];
    out.par_chunks_exact_mut(g.m()).enumerate().for_each(|(op, row)| {
        let o = key.sigma()[op];
        let cloud_group = op / cpo;
        // Gather K[σ(o'), cl(c'), ·] in cloud channel order, then scale by α[o']·β[c']^-1.
        for (clp, dst) in row.chunks_exact_mut(taps).enumerate() {
            let cl = key.pi()[cloud_group * cpg + clp] % cpg;
            dst.copy_from_slice(&k[(o * cpg + cl) * taps..][..taps]);
        }
        slices::scale_mul_assign(row, key.alpha()[op], &binv[cloud_group * g.m()..][..g.m()]);
    });
    Ok(out)
}

/// Checks that `masks` holds one mask per image, drawn for `key`'s geometry and rank.
pub(crate) fn check_masks(key: &SessionKey, masks: &[ImageMask], batch: usize) -> Result<()> {
    Conv2d::check_len("image masks", batch, masks.len())?;
    let g = key.geometry();
    for m in masks {
        if m.rank() != key.rank() || m.row_factor(0).len() != g.h() || m.col_factor(0).len() != g.w() {
            return Err(Error::LengthMismatch {
                what: "image mask (drawn for another layer)",
                expected: key.rank() * (g.h() + g.w()),
                got: m.rank() * (m.row_factor(0).len() + m.col_factor(0).len()),
            });
        }
    }
    Ok(())
}

/// Encrypts a batch of plain inputs `x` (`B × Cin × H × W`, field elements) into `X'`, with one
/// fresh [`ImageMask`] per image.
///
/// # Errors
/// [`Error::LengthMismatch`] or [`Error::NotAFieldElement`].
pub fn encrypt_input(key: &SessionKey, masks: &[ImageMask], x: &[u32]) -> Result<Vec<u32>> {
    let mut out = vec![0u32; x.len()];
    encrypt_input_into(key, masks, x, &mut out)?;
    Ok(out)
}

/// [`encrypt_input`] into a caller-owned buffer of `x.len()` elements, so that a stream of
/// batches reuses one allocation.
///
/// # Errors
/// [`Error::LengthMismatch`] (also for `out`) or [`Error::NotAFieldElement`].
pub fn encrypt_input_into(key: &SessionKey, masks: &[ImageMask], x: &[u32], out: &mut [u32]) -> Result<()> {
    let g = key.geometry();
    let batch = g.batch_of_input(x.len())?;
    check_masks(key, masks, batch)?;
    Conv2d::check_len("encrypted input buffer", x.len(), out.len())?;
    check_canonical::<M31>("input", x)?;
    let (cin, hw, rho) = (g.cin(), g.h() * g.w(), key.rank());
    // The spatial factors S_{b,t} = a_{b,t} ⊗ c_{b,t} (B × ρ × H × W), once per image, so that
    // every channel plane is one fused pass: X' = β·X + Σ_t (β·g_t[c])·S_{b,t}.
    let mut spatial = vec![0u32; batch * rho * hw];
    spatial.par_chunks_exact_mut(hw).enumerate().for_each(|(bt, plane)| {
        let (mask, t) = (&masks[bt / rho], bt % rho);
        for (row, &a) in plane.chunks_exact_mut(g.w()).zip(mask.row_factor(t)) {
            slices::combine_into(row, &[(a, mask.col_factor(t))]);
        }
    });
    out.par_chunks_exact_mut(hw).enumerate().for_each(|(idx, dst)| {
        let (b, cp) = (idx / cin, idx % cin);
        let (c, beta) = (key.pi()[cp], key.beta()[cp]);
        let mut terms: Vec<(u32, &[u32])> = Vec::with_capacity(rho + 1);
        terms.push((beta, &x[(b * cin + c) * hw..][..hw]));
        terms
            .extend((0..rho).map(|t| (M31::mul(beta, key.channel_factor(t)[c]), &spatial[(b * rho + t) * hw..][..hw])));
        slices::combine_into(dst, &terms);
    });
    Ok(())
}

/// The plain mask `R_b[c, y, x] = Σ_t g_t[c]·a_{b,t}[y]·c_{b,t}[x]` of one image (`Cin × H × W`),
/// materialised. The client never needs it; tests use it to check the scheme's algebra.
pub fn mask_tensor(key: &SessionKey, mask: &ImageMask) -> Vec<u32> {
    let g = key.geometry();
    let mut r = Vec::with_capacity(g.image_len());
    for c in 0..g.cin() {
        for y in 0..g.h() {
            for x in 0..g.w() {
                let mut acc = 0u32;
                for t in 0..key.rank() {
                    let v = M31::mul(M31::mul(key.channel_factor(t)[c], mask.row_factor(t)[y]), mask.col_factor(t)[x]);
                    acc = M31::add(acc, v);
                }
                r.push(acc);
            }
        }
    }
    r
}

/// Elements of cloud A's share generated at a time by [`encrypt_shares_into`] (16 KiB, in L1).
const SHARE_BLOCK: usize = 4096;

/// Elements of cloud B's share a task of [`split_share_small_into`] makes (a multiple of the
/// key stream's 16-word blocks).
const SHARE_CHUNK: usize = 16 * SHARE_BLOCK;

/// Mode `two-server` (docs/scheme.md §11): writes `X' = β·X[π]` into `scaled` and cloud B's share
/// `X'_B = X' - G(seed)` into `share_b`, in one pass per channel plane.
///
/// Cloud A's share is never written out: each plane's part of `G(seed)` is generated a block at
/// a time from the key stream at the plane's position and consumed at once. That is exact as
/// long as no word was rejected (probability 2^-31 per element); if one was, the share is
/// expanded in full, exactly, and the planes are split again.
///
/// # Errors
/// [`Error::LengthMismatch`] (also for the buffers) or [`Error::NotAFieldElement`].
pub fn encrypt_shares_into(
    key: &SessionKey,
    seed: &ShareSeed,
    x: &[u32],
    scaled: &mut [u32],
    share_b: &mut [u32],
) -> Result<()> {
    split_shares(key, seed, x, scaled, share_b, P)
}

/// [`encrypt_shares_into`] for a share generator that cuts words to `mask` and rejects `mask`
/// (`G` is `mask = p`; tests use small masks to exercise the rejection path).
fn split_shares(
    key: &SessionKey,
    seed: &ShareSeed,
    x: &[u32],
    scaled: &mut [u32],
    share_b: &mut [u32],
    mask: u32,
) -> Result<()> {
    let g = key.geometry();
    g.batch_of_input(x.len())?;
    Conv2d::check_len("encrypted input buffer", x.len(), scaled.len())?;
    Conv2d::check_len("share buffer", x.len(), share_b.len())?;
    check_canonical::<M31>("input", x)?;
    let (cin, hw) = (g.cin(), g.h() * g.w());
    let plane = |idx: usize| &x[(idx / cin * cin + key.pi()[idx % cin]) * hw..][..hw];
    let rejected = scaled
        .par_chunks_exact_mut(hw)
        .zip(share_b.par_chunks_exact_mut(hw))
        .enumerate()
        .map_init(
            || vec![0u32; SHARE_BLOCK.min(hw)],
            |block, (idx, (xp, xb))| {
                let mut stream = share::stream_at(seed.as_bytes(), idx * hw);
                let beta = key.beta()[idx % cin];
                for ((xp, xb), src) in
                    xp.chunks_mut(SHARE_BLOCK).zip(xb.chunks_mut(SHARE_BLOCK)).zip(plane(idx).chunks(SHARE_BLOCK))
                {
                    let a = &mut block[..src.len()];
                    if share::fill_masked(&mut stream, a, mask) {
                        return true;
                    }
                    slices::scale_and_split(xp, xb, beta, src, a);
                }
                false
            },
        )
        .reduce(|| false, |a, b| a | b);
    if rejected {
        let a = share::reference_masked(seed.as_bytes(), x.len(), mask);
        scaled.par_chunks_exact_mut(hw).zip(share_b.par_chunks_exact_mut(hw)).enumerate().for_each(
            |(idx, (xp, xb))| {
                slices::scale_and_split(xp, xb, key.beta()[idx % cin], plane(idx), &a[idx * hw..][..hw]);
            },
        );
    }
    Ok(())
}

/// Mode `pad` (docs/scheme.md §12): `X'[b,c'] = β[c']·(X[b,π(c')] + R_b[π(c')])` with one pad per
/// image.
///
/// # Errors
/// [`Error::LengthMismatch`] (also for `out` and the pads) or [`Error::NotAFieldElement`].
pub fn encrypt_padded_into(key: &SessionKey, pads: &[Pad], x: &[u32], out: &mut [u32]) -> Result<()> {
    let g = key.geometry();
    let batch = g.batch_of_input(x.len())?;
    Conv2d::check_len("pads", batch, pads.len())?;
    for p in pads {
        Conv2d::check_len("pad mask", g.image_len(), p.mask().len())?;
    }
    Conv2d::check_len("encrypted input buffer", x.len(), out.len())?;
    check_canonical::<M31>("input", x)?;
    let (cin, hw) = (g.cin(), g.h() * g.w());
    out.par_chunks_exact_mut(hw).enumerate().for_each(|(idx, dst)| {
        let (b, cp) = (idx / cin, idx % cin);
        let (c, beta) = (key.pi()[cp], key.beta()[cp]);
        slices::combine_into(dst, &[(beta, &x[(b * cin + c) * hw..][..hw]), (beta, &pads[b].mask()[c * hw..][..hw])]);
    });
    Ok(())
}

/// Mode `lowrank`, one image from small integers (`|x| <= (p-1)/2`, quantized activations):
/// `X'_b[c'] = β[c']·(x[π(c')] + R_b[π(c')])`, the mask made row by row from its factors as
/// `R_b[c, y, ·] = Σ_t (g_t[c]·a_t[y])·c_t`, channel planes in parallel. `x` and `out` are
/// `Cin × H × W`.
///
/// # Errors
/// [`Error::LengthMismatch`] when `x`, `out` or the mask do not fit the key.
pub(crate) fn encrypt_image_lowrank<T: SmallInt>(
    key: &SessionKey,
    mask: &ImageMask,
    x: &[T],
    out: &mut [u32],
) -> Result<()> {
    let g = key.geometry();
    check_masks(key, std::slice::from_ref(mask), 1)?;
    Conv2d::check_len("image", g.image_len(), x.len())?;
    Conv2d::check_len("encrypted image buffer", g.image_len(), out.len())?;
    let (hw, rho, h, w) = (g.h() * g.w(), key.rank(), g.h(), g.w());
    out.par_chunks_exact_mut(hw).enumerate().with_min_len((1 << 14) / hw + 1).for_each_init(
        || vec![0u32; h * rho],
        |coefs, (cp, dst)| {
            let (c, beta) = (key.pi()[cp], key.beta()[cp]);
            // coefs[y, t] = β·g_t[c]·a_t[y]: row y of the plane adds Σ_t coefs[y, t]·c_t.
            for t in 0..rho {
                let bg = M31::mul(beta, key.channel_factor(t)[c]);
                for (y, &a) in mask.row_factor(t).iter().enumerate() {
                    coefs[y * rho + t] = M31::mul(bg, a);
                }
            }
            slices::encrypt_rows(dst, beta, &x[c * hw..][..hw], coefs, mask.col_factors(), w);
        },
    );
    Ok(())
}

/// Mode `pad`, one image from small integers: `X'_b[c'] = β[c']·(x[π(c')] + R_b[π(c')])`.
///
/// # Errors
/// [`Error::LengthMismatch`] when `x`, `out` or the pad do not fit the key.
pub(crate) fn encrypt_image_padded<T: SmallInt>(key: &SessionKey, pad: &Pad, x: &[T], out: &mut [u32]) -> Result<()> {
    let g = key.geometry();
    Conv2d::check_len("image", g.image_len(), x.len())?;
    Conv2d::check_len("encrypted image buffer", g.image_len(), out.len())?;
    Conv2d::check_len("pad mask", g.image_len(), pad.mask().len())?;
    let hw = g.h() * g.w();
    out.par_chunks_exact_mut(hw).enumerate().with_min_len((1 << 14) / hw + 1).for_each(|(cp, dst)| {
        let (c, beta) = (key.pi()[cp], key.beta()[cp]);
        slices::encrypt_small_into(dst, beta, &x[c * hw..][..hw], &[(beta, &pad.mask()[c * hw..][..hw])]);
    });
    Ok(())
}

/// Mode `two-server` from small integers (`|x| <= (p-1)/2`): writes cloud B's share
/// `X'_B = β·x[π] - G(seed)` into `share_b`, with cloud A's share generated block by block and
/// consumed at once, and `X' = β·x[π]` never written (verification reads `x` itself, see
/// [`crate::verify::FastRounds`]). A rejected word of the key stream (probability 2^-31 per
/// element) sends the whole share down the exact sequential path, as [`encrypt_shares_into`].
///
/// # Errors
/// [`Error::LengthMismatch`] (also for `share_b`).
pub(crate) fn split_share_small_into<T: SmallInt>(
    key: &SessionKey,
    seed: &ShareSeed,
    x: &[T],
    share_b: &mut [u32],
) -> Result<()> {
    Conv2d::check_len("share buffer", x.len(), share_b.len())?;
    if split_share_small_masked(key, seed, x, 0, share_b, P)? {
        let a = share::reference_masked(seed.as_bytes(), x.len(), P);
        split_share_from(key, x, share_b, &a);
    }
    Ok(())
}

/// Mode `two-server`, image `b` of a batch: [`split_share_small_into`] for the image's part
/// of cloud B's share (`x` and `share_b` are the image's), from the key stream at the image's
/// position. Returns true when a word of the key stream was rejected: the share is then not
/// the image's part of `G(seed)`, and the caller must make the whole batch's share with
/// [`split_share_small_into`].
///
/// # Errors
/// [`Error::LengthMismatch`] when `x` or `share_b` is not one image.
pub(crate) fn split_share_image<T: SmallInt>(
    key: &SessionKey,
    seed: &ShareSeed,
    b: usize,
    x: &[T],
    share_b: &mut [u32],
) -> Result<bool> {
    let img = key.geometry().image_len();
    Conv2d::check_len("image", img, x.len())?;
    Conv2d::check_len("share buffer", img, share_b.len())?;
    split_share_small_masked(key, seed, x, b * img, share_b, P)
}

/// `share_b = β·x[π] - a` for cloud A's share `a` already expanded (the whole batch's).
fn split_share_from<T: SmallInt>(key: &SessionKey, x: &[T], share_b: &mut [u32], a: &[u32]) {
    let g = key.geometry();
    let (cin, hw) = (g.cin(), g.h() * g.w());
    share_b.par_chunks_exact_mut(hw).enumerate().for_each(|(idx, xb)| {
        let src = &x[(idx / cin * cin + key.pi()[idx % cin]) * hw..][..hw];
        slices::scale_sub_small(xb, key.beta()[idx % cin], src, &a[idx * hw..][..hw]);
    });
}

/// [`split_share_small_into`] for a share generator that cuts words to `mask` (tests).
/// The fast path of the split for whole images (`x` and `share_b`, from word `start` of the
/// batch's share, `start` a multiple of the image size): returns true when a word was rejected,
/// in which case `share_b` is not finished.
fn split_share_small_masked<T: SmallInt>(
    key: &SessionKey,
    seed: &ShareSeed,
    x: &[T],
    start: usize,
    share_b: &mut [u32],
    mask: u32,
) -> Result<bool> {
    let g = key.geometry();
    g.batch_of_input(x.len())?;
    Conv2d::check_len("share buffer", x.len(), share_b.len())?;
    let (cin, hw, img) = (g.cin(), g.h() * g.w(), g.image_len());
    // Plane `idx` of the batch's share reads this plane of `x` (which starts at image start/img).
    let first = start / img;
    let plane = |idx: usize| &x[((idx / cin - first) * cin + key.pi()[idx % cin]) * hw..][..hw];
    // The key stream is consumed in the order of the share, a chunk per task and a block at a
    // time, whatever the planes' size: each block is split among the planes it covers.
    let rejected = share_b
        .par_chunks_mut(SHARE_CHUNK)
        .enumerate()
        .map_init(
            || vec![0u32; SHARE_BLOCK],
            |block, (chunk, xb)| {
                let chunk_start = start + chunk * SHARE_CHUNK;
                let mut stream = share::stream_at(seed.as_bytes(), chunk_start);
                for (i, xb) in xb.chunks_mut(SHARE_BLOCK).enumerate() {
                    let a = &mut block[..xb.len()];
                    if share::fill_masked(&mut stream, a, mask) {
                        return true;
                    }
                    let mut at = chunk_start + i * SHARE_BLOCK;
                    let (mut xb, mut a) = (xb, &a[..]);
                    while !xb.is_empty() {
                        let (idx, off) = (at / hw, at % hw);
                        let len = (hw - off).min(xb.len());
                        let (head, rest) = xb.split_at_mut(len);
                        slices::scale_sub_small(head, key.beta()[idx % cin], &plane(idx)[off..off + len], &a[..len]);
                        (xb, a, at) = (rest, &a[len..], at + len);
                    }
                }
                false
            },
        )
        .reduce(|| false, |a, b| a | b);
    Ok(rejected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Padding;
    use crate::keys::seeded_rng;
    use crate::privacy::Privacy;

    #[test]
    fn shares_split_exactly_with_and_without_rejected_words() {
        let g = Conv2d::builder(3, 2, (40, 50), (3, 3)).padding(Padding::uniform(1)).build().expect("valid");
        let key = SessionKey::generate_for(&g, Privacy::TwoServer, &mut seeded_rng(1)).expect("key");
        let mut rng = seeded_rng(2);
        let x: Vec<u32> = (0..2 * g.image_len()).map(|_| M31::random(&mut rng)).collect();
        let seed = ShareSeed::generate(&mut rng);
        // 4-bit words with 15 rejected: the blocks meet rejections and the exact path runs.
        for mask in [P, 0xF] {
            let (mut xp, mut xb) = (vec![0u32; x.len()], vec![0u32; x.len()]);
            split_shares(&key, &seed, &x, &mut xp, &mut xb, mask).expect("splits");
            let a = share::reference_masked(seed.as_bytes(), x.len(), mask);
            let hw = g.h() * g.w();
            for (i, ((&s, &b), &av)) in xp.iter().zip(&xb).zip(&a).enumerate() {
                let (img, cp) = (i / g.image_len(), i % g.image_len() / hw);
                let plain = x[img * g.image_len() + key.pi()[cp] * hw + i % hw];
                assert_eq!(s, M31::mul(key.beta()[cp], plain), "mask {mask:#x}, X' at {i}");
                assert_eq!(b, M31::sub(s, av), "mask {mask:#x}, X'_B at {i}");
            }
        }
    }

    #[test]
    fn the_share_from_small_integers_splits_exactly_across_planes_and_chunks() {
        // Planes of 49 and of 70,000 elements: blocks and chunks straddle planes both ways.
        for (c, hw) in [(37, (7, 7)), (2, (250, 280))] {
            let g = Conv2d::builder(c, 2, hw, (3, 3)).padding(Padding::uniform(1)).build().expect("valid");
            let key = SessionKey::generate_for(&g, Privacy::TwoServer, &mut seeded_rng(3)).expect("key");
            let mut rng = seeded_rng(4);
            let x: Vec<i8> =
                (0..3 * g.image_len()).map(|_| (M31::random(&mut rng) % 255) as i8).map(|v| v.max(-127)).collect();
            let seed = ShareSeed::generate(&mut rng);
            for mask in [P, 0xF] {
                let mut xb = vec![0u32; x.len()];
                let a = share::reference_masked(seed.as_bytes(), x.len(), mask);
                if split_share_small_masked(&key, &seed, &x, 0, &mut xb, mask).expect("splits") {
                    split_share_from(&key, &x, &mut xb, &a);
                }
                // Image by image from their positions in the key stream, where no word is rejected.
                if mask == P {
                    let img = g.image_len();
                    let mut by_image = vec![0u32; x.len()];
                    for (b, (xi, si)) in x.chunks(img).zip(by_image.chunks_mut(img)).enumerate() {
                        assert!(!split_share_image(&key, &seed, b, xi, si).expect("splits"));
                    }
                    assert_eq!(by_image, xb, "{c} channels, image by image");
                }
                let plane = g.h() * g.w();
                for (i, (&b, &av)) in xb.iter().zip(&a).enumerate() {
                    let (img, cp) = (i / g.image_len(), i % g.image_len() / plane);
                    let plain = x[img * g.image_len() + key.pi()[cp] * plane + i % plane];
                    let scaled = M31::mul(key.beta()[cp], M31::embed(i64::from(plain)).expect("small"));
                    assert_eq!(b, M31::sub(scaled, av), "mask {mask:#x}, {c} channels, X'_B at {i}");
                }
            }
        }
    }
}
