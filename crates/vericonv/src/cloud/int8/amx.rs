//! The byte GEMMs on AMX-INT8 (Sapphire Rapids and later): `tdpbsud` multiplies a 16 × 64 tile
//! of signed kernel bytes (16 output channels × 16 quads of `m`) by a 16 × 64 tile of unsigned
//! input bytes (16 quads × 16 pixels, four bytes each) into 16 × 16 `i32` sums. Eight tiles:
//! two output-channel blocks × two limbs of sums, two kernel tiles, two limb tiles.
//!
//! Linux hands out the tile registers only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`),
//! once per process; [`available`] makes it and says whether it was granted.

use core::arch::asm;
use core::arch::x86_64::*;
use std::sync::OnceLock;

use super::{COLS, LANES, LIMBS, TILE_N, recombine};

/// Rows of a tile, and quads of `m` per tile of kernel or limb bytes.
const ROWS: usize = 16;
/// Bytes per tile row.
const ROW_BYTES: usize = 64;
/// Output channels per pass: two tiles of sums.
const BLOCK: usize = 2 * ROWS;
/// The fewest output channels per group worth a pass of [`BLOCK`] (fewer go to VNNI).
pub(super) const MIN_COUT: usize = ROWS;

/// Whether AMX-INT8 can run: the CPU has AMX-TILE and AMX-INT8 (CPUID leaf 7, EDX bits 24 and
/// 25) and AVX-512F and BW, and the kernel granted this process the tile data state.
pub(super) fn available() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| {
        let leaf7 = __cpuid_count(7, 0);
        leaf7.edx >> 24 & 3 == 3
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && request_tile_state()
    })
}

/// Asks Linux for the AMX tile data state (`XFEATURE_XTILEDATA`) for this process.
#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: this request takes two integers and touches no memory of the process.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

/// Other systems: not used.
#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// Quads of `m` for AMX: `m / 4` rounded up to whole tiles.
pub(super) fn quads(m: usize) -> usize {
    m.div_ceil(4).div_ceil(ROWS) * ROWS
}

/// A group's kernel (`cpo × m` bytes) as rows of `4·quads` bytes, `cpo` rounded up to [`BLOCK`]
/// rows (zero past `m` and past the last channel).
pub(super) fn pack(group: &[i8], cpo: usize, m: usize, quads: usize) -> Vec<i8> {
    let mut out = vec![0i8; cpo.div_ceil(BLOCK) * BLOCK * 4 * quads];
    for (dst, src) in out.chunks_exact_mut(4 * quads).zip(group.chunks_exact(m)) {
        dst[..m].copy_from_slice(src);
    }
    out
}

/// The tile configuration: palette 1, eight tiles of `ROWS` rows × `ROW_BYTES` bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    const fn new() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut t = 0;
        while t < 8 {
            c[16 + 2 * t] = ROW_BYTES as u8;
            c[48 + t] = ROWS as u8;
            t += 1;
        }
        Self(c)
    }
}

static CONFIG: TileConfig = TileConfig::new();

/// `block[o][t] = Σ_l 2^(8l)·Σ_q Σ_j kernel(o, 4q + j)·limb_l(q, t).byte(j) mod p` for every
/// output channel `o < cpo` and the `TILE_N` pixels of the tile.
///
/// # Safety
/// [`available`] must have returned `true`; `kernel` is [`pack`]'s output for `cpo` and
/// `quads` (a multiple of `ROWS`), `limbs` holds `COLS·quads·LIMBS·LANES` words and `block` at
/// least `cpo·TILE_N`.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn gemm(kernel: &[i8], cpo: usize, quads: usize, limbs: &[u32], block: &mut [u32]) {
    let row = 4 * quads;
    let blocks = cpo.div_ceil(BLOCK);
    assert!(
        quads.is_multiple_of(ROWS)
            && kernel.len() == blocks * BLOCK * row
            && limbs.len() == COLS * quads * LIMBS * LANES
            && block.len() >= cpo * TILE_N,
        "AMX buffers"
    );
    // Sums per limb, per output channel of the block, per pixel of a column.
    let mut sums = [[[0i32; LANES]; BLOCK]; LIMBS];
    // SAFETY: the tile state was granted; the configuration is 64 aligned bytes.
    unsafe { asm!("ldtilecfg [{}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
    for b in 0..blocks {
        for c in 0..COLS {
            for pair in 0..LIMBS / 2 {
                // SAFETY: every tile read lies in `kernel` or `limbs` (checked above): a kernel
                // tile reads 16 rows of 64 bytes, `row` apart, from row `b·BLOCK (+ 16)`,
                // byte `64·s`; a limb tile 16 rows of 16 words, `LIMBS·LANES` words apart, from
                // word `((c·quads + 16·s)·LIMBS + l)·LANES`, which ends by
                // `COLS·quads·LIMBS·LANES`. The stores write four 16 × 16 blocks of `sums`.
                unsafe {
                    asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
                    for s in 0..quads / ROWS {
                        let k0 = kernel.as_ptr().add(b * BLOCK * row + s * ROW_BYTES);
                        let k1 = k0.add(ROWS * row);
                        let x0 = limbs.as_ptr().add(((c * quads + s * ROWS) * LIMBS + 2 * pair) * LANES);
                        let x1 = x0.add(LANES);
                        asm!(
                            "tileloadd tmm4, [{k0} + {kr}*1]",
                            "tileloadd tmm5, [{k1} + {kr}*1]",
                            "tileloadd tmm6, [{x0} + {xr}*1]",
                            "tileloadd tmm7, [{x1} + {xr}*1]",
                            "tdpbsud tmm0, tmm4, tmm6",
                            "tdpbsud tmm1, tmm4, tmm7",
                            "tdpbsud tmm2, tmm5, tmm6",
                            "tdpbsud tmm3, tmm5, tmm7",
                            k0 = in(reg) k0,
                            k1 = in(reg) k1,
                            x0 = in(reg) x0,
                            x1 = in(reg) x1,
                            kr = in(reg) row,
                            xr = in(reg) LIMBS * LANES * 4,
                            options(nostack, readonly),
                        );
                    }
                    let (lo, hi) = sums.split_at_mut(2 * pair + 1);
                    let (s0, s1) = (&mut lo[2 * pair], &mut hi[0]);
                    asm!(
                        "tilestored [{a0} + {sr}*1], tmm0",
                        "tilestored [{a1} + {sr}*1], tmm1",
                        "tilestored [{b0} + {sr}*1], tmm2",
                        "tilestored [{b1} + {sr}*1], tmm3",
                        a0 = in(reg) s0.as_mut_ptr(),
                        a1 = in(reg) s1.as_mut_ptr(),
                        b0 = in(reg) s0[ROWS..].as_mut_ptr(),
                        b1 = in(reg) s1[ROWS..].as_mut_ptr(),
                        sr = in(reg) LANES * 4,
                        options(nostack),
                    );
                }
            }
            for o in 0..BLOCK.min(cpo - b * BLOCK) {
                // SAFETY: each row of `sums` holds `LANES` words; `block` holds `cpo` rows of
                // `TILE_N ≥ (c + 1)·LANES` words.
                unsafe {
                    let limb: [__m512i; LIMBS] =
                        std::array::from_fn(|l| _mm512_loadu_si512(sums[l][o].as_ptr().cast()));
                    let dst = &mut block[(b * BLOCK + o) * TILE_N + c * LANES..][..LANES];
                    _mm512_storeu_si512(dst.as_mut_ptr().cast(), recombine(&limb));
                }
            }
        }
    }
    // SAFETY: gives the tile registers back; nothing reads them after.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}
