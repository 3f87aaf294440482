//! Exact convolutions with an 8-bit kernel at int8 speed: mode `pad`'s offline `U = Conv(K, R)`
//! (docs/scheme.md §12), whose kernel is the plain quantized one and whose input is uniform.
//!
//! Every input element `r < 2^31` is four bytes `r = Σ_l 2^(8l)·r_l`, so
//! `Conv(K, R) = Σ_l 2^(8l)·Conv(K, R_l)` with each `Conv(K, R_l)` an integer convolution of
//! bytes by signed bytes. Its sums are at most `Cin/G·kh·kw·255·128` in absolute value, which
//! [`Int8Kernel::new`] requires to fit an `i32`: then every `Conv(K, R_l)` is exact in `i32`,
//! and the four are recombined in `i64` and reduced mod p once. The byte GEMMs run on AMX
//! (`tdpbsud`, 16 384 byte products per instruction, [`amx`]) where the CPU and the kernel
//! allow it and a group has at least 16 output channels, else on AVX-512 VNNI (`vpdpbusd`, 64
//! per instruction, [`vnni`]). CPUs with neither, and kernels whose entries do not fit a signed
//! byte, keep the F_p path.

mod amx;
mod vnni;

use core::arch::x86_64::*;

use crate::field::P;
use crate::geometry::Conv2d;

/// Bytes per input element, hence integer convolutions per F_p one.
const LIMBS: usize = 4;
/// `i32` lanes per vector.
const LANES: usize = 16;
/// Output pixels per task of the CPU backend: the im2col tile gathered on the fly is
/// `M × TILE_N`, the width these kernels are laid out for.
pub(in crate::cloud) const TILE_N: usize = 64;

/// Vectors across a tile's `TILE_N` pixels.
const COLS: usize = TILE_N / LANES;

/// The instructions that run the byte GEMMs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    Amx,
    Vnni,
}

/// A kernel whose entries are all signed bytes, packed for its engine.
pub(super) struct Int8Kernel {
    engine: Engine,
    /// Per group, the kernel as the engine reads it.
    packed: Vec<Vec<i8>>,
    /// Quads of the reduction index `m`: its length over four, rounded up to the engine's step.
    quads: usize,
    cout_per_group: usize,
}

/// The signed value of a field element, when it fits a byte.
fn signed_byte(k: u32) -> Option<i8> {
    let v = if k <= P / 2 { i64::from(k) } else { i64::from(k) - i64::from(P) };
    i8::try_from(v).ok()
}

impl Int8Kernel {
    /// The packed kernel, or `None` when the int8 path does not apply: the CPU has neither AMX
    /// nor AVX-512 VNNI, an entry of `kernel` is not a signed byte, or `Cin/G·kh·kw·255·128`
    /// does not fit an `i32`. `kernel` must hold `g.kernel_len()` elements (the caller has
    /// checked).
    pub(super) fn new(g: &Conv2d, kernel: &[u32]) -> Option<Self> {
        let engine = if amx::available() && g.cout_per_group() >= amx::MIN_COUT {
            Engine::Amx
        } else if vnni::available() {
            Engine::Vnni
        } else {
            return None;
        };
        Self::with_engine(g, kernel, engine)
    }

    /// [`Int8Kernel::new`] on a given engine (which the caller has checked is available).
    fn with_engine(g: &Conv2d, kernel: &[u32], engine: Engine) -> Option<Self> {
        let (m, cpo) = (g.m(), g.cout_per_group());
        i32::try_from(m.checked_mul(255 * 128)?).ok()?;
        let bytes: Vec<i8> = kernel.iter().map(|&k| signed_byte(k)).collect::<Option<_>>()?;
        let quads = match engine {
            Engine::Amx => amx::quads(m),
            Engine::Vnni => m.div_ceil(4),
        };
        let packed = bytes
            .chunks_exact(cpo * m)
            .map(|group| match engine {
                Engine::Amx => amx::pack(group, cpo, m, quads),
                Engine::Vnni => vnni::pack(group, cpo, m, quads),
            })
            .collect();
        Some(Self { engine, packed, quads, cout_per_group: cpo })
    }

    /// Words of the scratch buffer that [`Int8Kernel::tile`] needs.
    pub(super) fn scratch_len(&self) -> usize {
        COLS * self.quads * LIMBS * LANES
    }

    /// `block[o, t] = Σ_m K[o, m]·col[m·TILE_N + t] mod p` for the group `grp`, as the F_p
    /// tile kernel computes it (the whole tile: `col` is zero past the tile's pixels). `col` is
    /// the tile's im2col (`m × TILE_N` canonical elements), `scratch` holds
    /// [`Int8Kernel::scratch_len`] words and `block` `cpo × TILE_N`.
    pub(super) fn tile(&self, grp: usize, col: &[u32], scratch: &mut [u32], block: &mut [u32]) {
        let m = col.len() / TILE_N;
        let limbs = &mut scratch[..self.scratch_len()];
        assert!(4 * self.quads >= m && block.len() >= self.cout_per_group * TILE_N, "int8 tile buffers");
        // SAFETY: the engine was found present (VNNI and AMX-INT8 CPUs all have AVX-512F and
        // BW, which `vnni::available` and `amx::available` check too); `4·quads ≥ m`.
        unsafe { split_limbs(col, m, limbs) };
        let (kernel, cpo) = (&self.packed[grp][..], self.cout_per_group);
        match self.engine {
            // SAFETY: as above; the buffers' sizes are those the engines' functions require.
            Engine::Amx => unsafe { amx::gemm(kernel, cpo, self.quads, limbs, block) },
            Engine::Vnni => unsafe { vnni::gemm(kernel, cpo, self.quads, limbs, block) },
        }
    }
}

/// `limbs[c][q][l]` = sixteen words, the one of pixel `c·LANES + i` having as byte `j` byte `l`
/// of `col[(4q + j)·TILE_N + c·LANES + i]` (zero for `4q + j ≥ m`): the four bytes `vpdpbusd`
/// multiplies by one packed kernel word. Per quad and sixteen pixels, a 4×4 byte transpose in
/// each `u32` lane (bytes, then 16-bit pairs interleaved) and a 4×4 `u32` transpose in each
/// 128-bit lane put the limbs back in pixel order.
///
/// # Safety
/// The CPU must support AVX-512F and AVX-512BW; `col` holds `m·TILE_N` words and `limbs` a
/// multiple of `COLS·LIMBS·LANES` words with `4·quads ≥ m`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn split_limbs(col: &[u32], m: usize, limbs: &mut [u32]) {
    let quads = limbs.len() / (COLS * LIMBS * LANES);
    for q in 0..quads {
        for c in 0..COLS {
            let r: [__m512i; 4] = std::array::from_fn(|j| match col.get((4 * q + j) * TILE_N + c * LANES..) {
                // SAFETY: a row of the tile holds `TILE_N ≥ (c + 1)·LANES` words.
                Some(src) if 4 * q + j < m => unsafe { _mm512_loadu_si512(src.as_ptr().cast()) },
                _ => _mm512_setzero_si512(),
            });
            let (t0, t1) = (_mm512_unpacklo_epi8(r[0], r[1]), _mm512_unpackhi_epi8(r[0], r[1]));
            let (u0, u1) = (_mm512_unpacklo_epi8(r[2], r[3]), _mm512_unpackhi_epi8(r[2], r[3]));
            // v_d: in 128-bit lane L, the four limbs of pixel 4L + d.
            let v = [
                _mm512_unpacklo_epi16(t0, u0),
                _mm512_unpackhi_epi16(t0, u0),
                _mm512_unpacklo_epi16(t1, u1),
                _mm512_unpackhi_epi16(t1, u1),
            ];
            let (a0, a1) = (_mm512_unpacklo_epi32(v[0], v[1]), _mm512_unpackhi_epi32(v[0], v[1]));
            let (b0, b1) = (_mm512_unpacklo_epi32(v[2], v[3]), _mm512_unpackhi_epi32(v[2], v[3]));
            let w = [
                _mm512_unpacklo_epi64(a0, b0),
                _mm512_unpackhi_epi64(a0, b0),
                _mm512_unpacklo_epi64(a1, b1),
                _mm512_unpackhi_epi64(a1, b1),
            ];
            let dst = &mut limbs[(c * quads + q) * LIMBS * LANES..][..LIMBS * LANES];
            for (d, wl) in dst.chunks_exact_mut(LANES).zip(w) {
                // SAFETY: `d` holds `LANES` words.
                unsafe { _mm512_storeu_si512(d.as_mut_ptr().cast(), wl) };
            }
        }
    }
}

/// `Σ_l 2^(8l)·a[l] mod p` per lane, canonical: in `i64` (below 2^56 in absolute value), folded
/// once by `2^31 ≡ 1` into `(-2^25, 2^31 + 2^25)`, then brought into `[0, p)`.
#[inline]
#[target_feature(enable = "avx512f")]
fn recombine(a: &[__m512i; LIMBS]) -> __m512i {
    let half = |hi: bool| {
        let mut v = _mm512_setzero_si512();
        for (l, &al) in a.iter().enumerate() {
            let part = if hi { _mm512_extracti64x4_epi64::<1>(al) } else { _mm512_castsi512_si256(al) };
            let wide = _mm512_cvtepi32_epi64(part);
            v = _mm512_add_epi64(v, _mm512_sllv_epi64(wide, _mm512_set1_epi64(8 * l as i64)));
        }
        let p = _mm512_set1_epi64(i64::from(P));
        let folded = _mm512_add_epi64(_mm512_srai_epi64::<31>(v), _mm512_and_si512(v, p));
        let negative = _mm512_cmplt_epi64_mask(folded, _mm512_setzero_si512());
        let nonneg = _mm512_mask_add_epi64(folded, negative, folded, p);
        let over = _mm512_cmpge_epi64_mask(nonneg, p);
        _mm512_cvtepi64_epi32(_mm512_mask_sub_epi64(nonneg, over, nonneg, p))
    };
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(half(false)), half(true))
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::field::{M31, PrimeField};
    use crate::geometry::Padding;
    use crate::reference::conv_field;

    /// Each engine this CPU has, on shapes across its block and step edges, at the extremes of
    /// kernel bytes and input limbs, against the F_p reference.
    #[test]
    fn every_engine_here_equals_the_field_reference() {
        let seed = 0x1b8e;
        println!("seed = {seed:#x}");
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        let engines: Vec<Engine> = [(Engine::Amx, amx::available()), (Engine::Vnni, vnni::available())]
            .iter()
            .filter(|e| e.1)
            .map(|e| e.0)
            .collect();
        println!("engines here: {engines:?}");
        // (cin, cout, groups, hw, k, stride): Cout off 6, 16 and 32; m off 4 and 64; pixels
        // off 64; grouped; a long reduction.
        let shapes = [
            (3, 64, 1, (13, 11), (7, 7), 2),
            (16, 17, 1, (9, 9), (3, 3), 1),
            (64, 40, 1, (5, 6), (3, 3), 1),
            (8, 33, 1, (7, 7), (1, 1), 1),
            (12, 36, 3, (8, 9), (3, 3), 1),
            (6, 6, 6, (10, 10), (3, 3), 1),
            (300, 20, 1, (4, 4), (3, 3), 1),
        ];
        for engine in engines {
            for (idx, &(cin, cout, groups, hw, k, stride)) in shapes.iter().enumerate() {
                let g = Conv2d::builder(cin, cout, hw, k)
                    .groups(groups)
                    .stride(stride, stride)
                    .padding(Padding::uniform(1))
                    .build()
                    .expect("geometry");
                for extreme in [false, true] {
                    let kernel: Vec<u32> = (0..g.kernel_len())
                        .map(|_| {
                            let v: i64 = if extreme {
                                [-128, 127][rng.random_range(0..2)]
                            } else {
                                rng.random_range(-128..=127)
                            };
                            M31::embed(v).expect("small")
                        })
                        .collect();
                    let batch = 2;
                    let x: Vec<u32> = (0..batch * g.image_len())
                        .map(|_| if extreme { M31::P - 1 - rng.random_range(0..2) } else { M31::random(&mut rng) })
                        .collect();
                    let k8 = Int8Kernel::with_engine(&g, &kernel, engine).expect("bytes");
                    let mut out = vec![0u32; batch * g.output_image_len()];
                    super::super::cpu::conv_tiles(
                        &g,
                        batch,
                        &x,
                        &mut out,
                        || vec![0u32; k8.scratch_len()],
                        |grp, col, s, block, _| k8.tile(grp, col, s, block),
                    );
                    assert_eq!(
                        out,
                        conv_field::<M31>(&g, batch, &kernel, &x).expect("conv"),
                        "{engine:?} shape {idx}: {g:?}"
                    );
                }
            }
        }
    }
}
