//! The CPU cloud: exact F_p convolution as an implicit-im2col GEMM, parallel with rayon.

use rayon::prelude::*;

use super::{CloudBackend, check_conv_args};
use crate::Result;
use crate::field::{M31, PrimeField};
use crate::geometry::Conv2d;

/// Output pixels per task: the im2col tile gathered on the fly is `M × TILE_N`.
const TILE_N: usize = 64;

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
    /// [`crate::Error::Gpu`] is never returned; [`crate::Error::Unsupported`] when the pool cannot
    /// be built.
    pub fn with_threads(threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| crate::Error::Unsupported(format!("thread pool: {e}")))?;
        Ok(Self { pool: Some(pool) })
    }
}

impl CloudBackend for CpuBackend {
    fn name(&self) -> String {
        let threads = self.pool.as_ref().map_or_else(rayon::current_num_threads, |p| p.current_num_threads());
        format!("cpu ({threads} threads)")
    }

    fn conv(&self, geom: &Conv2d, batch: usize, kernel: &[u32], input: &[u32]) -> Result<Vec<u32>> {
        check_conv_args(geom, batch, kernel, input)?;
        Ok(match &self.pool {
            Some(pool) => pool.install(|| conv_m31(geom, batch, kernel, input)),
            None => conv_m31(geom, batch, kernel, input),
        })
    }
}

/// `Y'[b, o, n] = Σ_m K'[o, m]·col_b[m, n]` per group, with the im2col tile of `TILE_N` output
/// pixels gathered on the fly and `u64` lazy reduction (fold every 3 products).
fn conv_m31(g: &Conv2d, batch: usize, kp: &[u32], xp: &[u32]) -> Vec<u32> {
    let (m, n, cpo, groups) = (g.m(), g.n(), g.cout_per_group(), g.groups());
    let tiles = n.div_ceil(TILE_N);
    let mut out = vec![0u32; batch * g.output_image_len()];
    // One task per (image, group, pixel tile); each yields a cpo × TILE_N block.
    let blocks: Vec<Vec<u32>> = (0..batch * groups * tiles)
        .into_par_iter()
        .map_init(
            || (vec![0u32; m * TILE_N], [0u64; TILE_N]),
            |(col, acc), task| {
                let (bg, tile) = (task / tiles, task % tiles);
                let (b, grp) = (bg / groups, bg % groups);
                gather_tile(g, xp, b, grp, tile * TILE_N, col);
                let mut block = vec![0u32; cpo * TILE_N];
                for (ol, dst) in block.chunks_exact_mut(TILE_N).enumerate() {
                    gemm_row(&kp[(grp * cpo + ol) * m..][..m], col, acc);
                    for (d, &a) in dst.iter_mut().zip(acc.iter()) {
                        *d = M31::reduce(a);
                    }
                }
                block
            },
        )
        .collect();
    for (task, block) in blocks.iter().enumerate() {
        let (bg, tile) = (task / tiles, task % tiles);
        let (b, grp) = (bg / groups, bg % groups);
        let n0 = tile * TILE_N;
        let width = TILE_N.min(n - n0);
        for (ol, src) in block.chunks_exact(TILE_N).enumerate() {
            let o = grp * cpo + ol;
            out[(b * g.cout() + o) * n + n0..][..width].copy_from_slice(&src[..width]);
        }
    }
    out
}

/// Gathers `col[m·TILE_N + t] = X'pad[b, grp·Cin/G + cl, y·sh + i·dh, x·sw + j·dw]` for the
/// output pixels `n0 + t` (zero past the end and in the padding).
fn gather_tile(g: &Conv2d, xp: &[u32], b: usize, grp: usize, n0: usize, col: &mut [u32]) {
    let (cpg, kh, kw, wo, n, hw) = (g.cin_per_group(), g.kh(), g.kw(), g.wo(), g.n(), g.h() * g.w());
    for cl in 0..cpg {
        let plane = &xp[(b * g.cin() + grp * cpg + cl) * hw..][..hw];
        for i in 0..kh {
            for j in 0..kw {
                let dst = &mut col[((cl * kh + i) * kw + j) * TILE_N..][..TILE_N];
                for (t, d) in dst.iter_mut().enumerate() {
                    let p = n0 + t;
                    *d = if p < n {
                        match (g.in_row(p / wo, i), g.in_col(p % wo, j)) {
                            (Some(r), Some(c)) => plane[r * g.w() + c],
                            _ => 0,
                        }
                    } else {
                        0
                    };
                }
            }
        }
    }
}

/// `acc[t] = Σ_m k[m]·col[m·TILE_N + t]` with lazy reduction: three products below 2^62 each
/// fit on top of a folded accumulator below 2^34.
#[inline]
fn gemm_row(k: &[u32], col: &[u32], acc: &mut [u64; TILE_N]) {
    acc.fill(0);
    for (kc, cc) in k.chunks(3).zip(col.chunks(3 * TILE_N)) {
        for (&kv, crow) in kc.iter().zip(cc.chunks_exact(TILE_N)) {
            let kv = u64::from(kv);
            for (a, &c) in acc.iter_mut().zip(crow) {
                *a += kv * u64::from(c);
            }
        }
        for a in acc.iter_mut() {
            *a = M31::fold_product(*a);
        }
    }
}
