//! The CPU cloud: exact F_p convolution as an implicit-im2col GEMM, parallel with rayon. A
//! kernel whose entries are signed bytes (mode `pad`'s offline mask convolution) takes the
//! int8 path of [`super::int8`] where the CPU has it.

use multiversion::multiversion;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::int8::{Int8Kernel, TILE_N};
use super::{CloudBackend, ConvCall};
use crate::Result;
use crate::field::{M31, PrimeField};
use crate::geometry::Conv2d;

/// Exact F_p convolution on the CPU, multi-threaded with rayon (the global pool unless
/// [`CpuBackend::with_threads`] sets one).
#[derive(Debug, Default)]
pub struct CpuBackend {
    pool: Option<rayon::ThreadPool>,
}

impl CpuBackend {
    /// A backend on rayon's global thread pool.
    pub fn new() -> Self {
        Self { pool: None }
    }

    /// A backend on its own pool of `threads` threads.
    ///
    /// # Errors
    /// [`crate::Error::Internal`] when the pool cannot be built.
    pub fn with_threads(threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| crate::Error::Internal(format!("thread pool: {e}")))?;
        Ok(Self { pool: Some(pool) })
    }
}

impl CloudBackend for CpuBackend {
    fn name(&self) -> String {
        let threads = self.pool.as_ref().map_or_else(rayon::current_num_threads, |p| p.current_num_threads());
        format!("cpu ({threads} threads)")
    }

    fn call(&self, call: ConvCall<'_>, out: &mut Vec<u32>) -> Result<()> {
        call.check()?;
        let (geom, batch, kernel) = (call.geometry(), call.batch, call.kernel_data());
        let input = call.input_tensor()?;
        // Every entry is written below: only growth is zero-filled.
        out.resize(batch * geom.output_image_len(), 0);
        let mut run = || {
            #[cfg(target_arch = "x86_64")]
            if let Some(k8) = Int8Kernel::new(geom, kernel) {
                return conv_tiles(
                    geom,
                    batch,
                    &input,
                    out,
                    || vec![0u32; k8.scratch_len()],
                    |grp, col, scratch, block, _| k8.tile(grp, col, scratch, block),
                );
            }
            let (m, cpo) = (geom.m(), geom.cout_per_group());
            let packed: Vec<Vec<u64>> =
                (0..geom.groups()).map(|grp| pack_rows(&kernel[grp * cpo * m..][..cpo * m], m)).collect();
            conv_tiles(
                geom,
                batch,
                &input,
                out,
                || (),
                |grp, col, (), block, width| gemm_tile(&packed[grp], m, col, block, width),
            )
        };
        match &self.pool {
            Some(pool) => pool.install(run),
            None => run(),
        }
        Ok(())
    }
}

impl CpuBackend {
    /// Whether [`CloudBackend::conv`] with `kernel` takes the int8 path on this CPU: every
    /// entry of `kernel` is a signed byte (a quantized kernel, as in mode `pad`'s offline
    /// `Conv(K, R)`), `Cin/G·kh·kw·255·128 < 2^31`, and the CPU has AMX-INT8 or AVX-512 VNNI.
    /// The answer is the same either way; only the speed differs.
    pub fn takes_int8_path(geom: &Conv2d, kernel: &[u32]) -> bool {
        #[cfg(target_arch = "x86_64")]
        return kernel.len() == geom.kernel_len() && Int8Kernel::new(geom, kernel).is_some();
        #[cfg(not(target_arch = "x86_64"))]
        return false;
    }
}

/// `Y'[b, o, n] = Σ_m K'[o, m]·col_b[m, n]` per group, with the im2col tile of `TILE_N` output
/// pixels gathered on the fly and multiplied by `tile(group, col, scratch, block, width)`, which
/// writes the group's `cpo × TILE_N` block for the tile's first `width` pixels (`scratch` and
/// `block` are one per worker).
pub(super) fn conv_tiles<S>(
    g: &Conv2d,
    batch: usize,
    xp: &[u32],
    out: &mut [u32],
    scratch: impl Fn() -> S + Sync + Send,
    tile: impl Fn(usize, &[u32], &mut S, &mut [u32], usize) + Sync + Send,
) {
    let (m, n, cpo, groups) = (g.m(), g.n(), g.cout_per_group(), g.groups());
    if n == 0 {
        return;
    }
    let tiles = n.div_ceil(TILE_N);
    // Task (image, group, pixel tile) writes the tile's segment of each of the group's rows.
    let mut segments: Vec<Vec<&mut [u32]>> = (0..batch * groups * tiles).map(|_| Vec::with_capacity(cpo)).collect();
    for (row, plane) in out.chunks_exact_mut(n).enumerate() {
        let (b, grp) = (row / g.cout(), row % g.cout() / cpo);
        for (t, segment) in plane.chunks_mut(TILE_N).enumerate() {
            segments[(b * groups + grp) * tiles + t].push(segment);
        }
    }
    segments.into_par_iter().enumerate().for_each_init(
        || (vec![0u32; m * TILE_N], scratch(), vec![0u32; cpo * TILE_N]),
        |(col, s, block), (task, rows)| {
            let (bg, t) = (task / tiles, task % tiles);
            let (b, grp) = (bg / groups, bg % groups);
            gather_tile(g, xp, b, grp, t * TILE_N, col);
            tile(grp, col, s, block, (n - t * TILE_N).min(TILE_N));
            for (dst, src) in rows.into_iter().zip(block.chunks_exact(TILE_N)) {
                dst.copy_from_slice(&src[..dst.len()]);
            }
        },
    );
}

/// Rows of the micro-kernel: output channels computed together, so that each loaded im2col
/// value feeds `MR` products.
const MR: usize = 6;
/// Columns of the micro-kernel: output pixels per accumulator row (`MR × NR` accumulators live
/// in vector registers).
const NR: usize = 8;

/// Packs the `rows × m` matrix `k` by blocks of `MR` rows, interleaved along `m`
/// (`[block][m][MR]`); the last block holds the `rows % MR` leftover rows unpadded. Entries are
/// widened to `u64` so that the micro-kernel broadcasts them straight from memory.
fn pack_rows(k: &[u32], m: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(k.len());
    for block in k.chunks(MR * m) {
        let r = block.len() / m;
        for mm in 0..m {
            out.extend((0..r).map(|row| u64::from(block[row * m + mm])));
        }
    }
    out
}

/// Gathers `col[m·TILE_N + t] = X'pad[b, grp·Cin/G + cl, y·sh + i·dh, x·sw + j·dw]` for the
/// output pixels `n0 + t` (zero past the end and in the padding), one output-row segment at a
/// time; with stride 1 a segment is a contiguous copy.
fn gather_tile(g: &Conv2d, xp: &[u32], b: usize, grp: usize, n0: usize, col: &mut [u32]) {
    let (cpg, kh, kw, wo, w, hw) = (g.cin_per_group(), g.kh(), g.kw(), g.wo(), g.w(), g.h() * g.w());
    let width = TILE_N.min(g.n() - n0);
    for cl in 0..cpg {
        let plane = &xp[(b * g.cin() + grp * cpg + cl) * hw..][..hw];
        for i in 0..kh {
            for j in 0..kw {
                let dst = &mut col[((cl * kh + i) * kw + j) * TILE_N..][..TILE_N];
                dst[width..].fill(0);
                let mut t = 0;
                while t < width {
                    let (y, x0) = ((n0 + t) / wo, (n0 + t) % wo);
                    let seg = (wo - x0).min(width - t);
                    let d = &mut dst[t..t + seg];
                    t += seg;
                    let Some(r) = g.in_row(y, i) else {
                        d.fill(0);
                        continue;
                    };
                    let row = &plane[r * w..][..w];
                    // Input column x·sw + off for x in [x0, x0 + seg), valid where in [0, w):
                    // for x in [x0 + lo, x0 + hi).
                    let sw = g.stride().1 as isize;
                    let off = (j * g.dilation().1) as isize - g.padding().left as isize;
                    let (first, end) = (x0 as isize, (x0 + seg) as isize);
                    let lo = ((-off) + sw - 1).div_euclid(sw).clamp(first, end) as usize - x0;
                    let hi = (w as isize - off + sw - 1).div_euclid(sw).clamp((x0 + lo) as isize, end) as usize - x0;
                    d[..lo].fill(0);
                    if hi > lo {
                        let start = ((x0 + lo) as isize * sw + off) as usize;
                        if sw == 1 {
                            d[lo..hi].copy_from_slice(&row[start..][..hi - lo]);
                        } else {
                            for (v, &c) in d[lo..hi].iter_mut().zip(row[start..].iter().step_by(sw as usize)) {
                                *v = c;
                            }
                        }
                    }
                    d[hi..].fill(0);
                }
            }
        }
    }
}

/// `block[o, t] = Σ_m K'[o, m]·col[m·TILE_N + t]` for a group's rows packed by [`pack_rows`],
/// for the first `width` pixels of the tile (rounded up to `NR`; the rest stays zero).
#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
fn gemm_tile(packed: &[u64], m: usize, col: &[u32], block: &mut [u32], width: usize) {
    for (kb, out) in packed.chunks(MR * m).zip(block.chunks_mut(MR * TILE_N)) {
        match kb.len() / m {
            MR => micro::<MR>(kb, col, out, width),
            1 => micro::<1>(kb, col, out, width),
            2 => micro::<2>(kb, col, out, width),
            3 => micro::<3>(kb, col, out, width),
            4 => micro::<4>(kb, col, out, width),
            _ => micro::<5>(kb, col, out, width),
        }
    }
}

/// `R` output rows of a tile, `NR` pixels at a time, with `u64` lazy reduction: three products
/// below 2^62 each fit on top of an accumulator folded below 2^33. (Four would fit too, for
/// canonical elements, but the 4-step loop measured twice as slow: it spills registers.)
#[inline(always)]
fn micro<const R: usize>(kb: &[u64], col: &[u32], out: &mut [u32], width: usize) {
    for t0 in (0..width.div_ceil(NR) * NR).step_by(NR) {
        let mut acc = [[0u64; NR]; R];
        let steps = kb.chunks_exact(3 * R).zip(col.chunks_exact(3 * TILE_N));
        let (k_rest, c_rest) = (kb.chunks_exact(3 * R).remainder(), col.chunks_exact(3 * TILE_N).remainder());
        for (k3, c3) in steps {
            mac::<R>(&mut acc, k3, c3, t0);
            for a in acc.iter_mut() {
                for al in a.iter_mut() {
                    *al = M31::fold_product(*al);
                }
            }
        }
        mac::<R>(&mut acc, k_rest, c_rest, t0);
        for (r, a) in acc.iter().enumerate() {
            for (d, &al) in out[r * TILE_N + t0..][..NR].iter_mut().zip(a) {
                *d = M31::reduce(al);
            }
        }
    }
}

/// `acc[r][l] += Σ_s k[s·R + r]·col[s·TILE_N + t0 + l]` over the (up to three) steps given.
#[inline(always)]
fn mac<const R: usize>(acc: &mut [[u64; NR]; R], k: &[u64], col: &[u32], t0: usize) {
    for (kc, cc) in k.chunks_exact(R).zip(col.chunks_exact(TILE_N)) {
        let cv = &cc[t0..t0 + NR];
        for (a, &kv) in acc.iter_mut().zip(kc) {
            for (al, &c) in a.iter_mut().zip(cv) {
                *al += (kv & 0xffff_ffff) * u64::from(c); // provably 32-bit: one vpmuludq
            }
        }
    }
}
