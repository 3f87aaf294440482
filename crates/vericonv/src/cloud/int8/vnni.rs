//! The byte GEMMs on AVX-512 VNNI: `vpdpbusd` adds, in each of sixteen `i32` lanes, four
//! products of unsigned input bytes by signed kernel bytes. The micro-kernel keeps `MR` output
//! channels × the four limbs of sixteen pixels in 24 accumulators.

use core::arch::x86_64::*;

use super::{LANES, LIMBS, TILE_N, recombine};

/// Output channels computed together by the micro-kernel.
const MR: usize = 6;

/// Whether the CPU has AVX-512F, BW and VNNI (the standard library caches the answer).
pub(super) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vnni")
}

/// A group's kernel (`cpo × m` bytes) packed per block of `MR` output channels, per quad of
/// `m`, the `MR` rows' four bytes in a row (zero past `m` and past the last channel).
pub(super) fn pack(group: &[i8], cpo: usize, m: usize, quads: usize) -> Vec<i8> {
    let mut out = Vec::with_capacity(cpo.div_ceil(MR) * quads * MR * 4);
    for block in 0..cpo.div_ceil(MR) {
        for q in 0..quads {
            for r in 0..MR {
                let o = block * MR + r;
                out.extend((0..4).map(|j| if o < cpo && 4 * q + j < m { group[o * m + 4 * q + j] } else { 0 }));
            }
        }
    }
    out
}

/// `block[o][t] = Σ_l 2^(8l)·Σ_q Σ_j kernel(o, 4q + j)·limb_l(q, t).byte(j) mod p` for every
/// output channel `o < cpo` and the `TILE_N` pixels of the tile.
///
/// # Safety
/// The CPU must support AVX-512F, BW and VNNI; `kernel` is [`pack`]'s output for `cpo` and
/// `quads`, `limbs` holds `COLS·quads·LIMBS·LANES` words and `block` at least `cpo·TILE_N`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn gemm(kernel: &[i8], cpo: usize, quads: usize, limbs: &[u32], block: &mut [u32]) {
    let per_col = quads * LIMBS * LANES;
    for (b, kb) in kernel.chunks_exact(quads * MR * 4).enumerate() {
        let rows = MR.min(cpo - b * MR);
        let out = &mut block[b * MR * TILE_N..][..rows * TILE_N];
        for (c, x) in limbs.chunks_exact(per_col).enumerate() {
            // SAFETY: the features are present; `kb` holds `quads·MR·4` bytes, `x`
            // `quads·LIMBS·LANES` words, `out` `rows ≤ MR` rows of `TILE_N ≥ (c + 1)·LANES`.
            unsafe { gemm_block(kb, x, out, rows, c * LANES) };
        }
    }
}

/// For the first `rows` of the `MR` rows of `kb` and sixteen pixels: the four limb products
/// `a_l = Σ_q Σ_j kb[q·MR + r].byte(j) · x[q][l].byte(j)` (signed kernel bytes by unsigned input
/// bytes, exact in `i32` under [`Int8Kernel::new`]'s bound), recombined as
/// `Σ_l 2^(8l)·a_l mod p` and stored at `out[r·TILE_N + at..][..LANES]`.
///
/// # Safety
/// The CPU must support AVX-512F, BW and VNNI; `kb` holds `quads·MR·4` bytes, `x`
/// `quads·LIMBS·LANES`, and `out` `rows ≤ MR` rows of `TILE_N ≥ at + LANES` words.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn gemm_block(kb: &[i8], x: &[u32], out: &mut [u32], rows: usize, at: usize) {
    let mut acc = [[_mm512_setzero_si512(); LIMBS]; MR];
    for (k, xq) in kb.chunks_exact(4 * MR).zip(x.chunks_exact(LIMBS * LANES)) {
        // SAFETY: `xq` holds exactly `LIMBS·LANES` words.
        let xs: [__m512i; LIMBS] =
            std::array::from_fn(|l| unsafe { _mm512_loadu_si512(xq[l * LANES..].as_ptr().cast()) });
        for (ar, kr) in acc.iter_mut().zip(k.chunks_exact(4)) {
            let kv = _mm512_set1_epi32(i32::from_le_bytes([kr[0] as u8, kr[1] as u8, kr[2] as u8, kr[3] as u8]));
            for (a, &xl) in ar.iter_mut().zip(&xs) {
                *a = _mm512_dpbusd_epi32(*a, xl, kv);
            }
        }
    }
    for (r, ar) in acc.iter().enumerate().take(rows) {
        let dst = &mut out[r * TILE_N + at..][..LANES];
        // SAFETY: `dst` holds `LANES` words.
        unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), recombine(ar)) };
    }
}
