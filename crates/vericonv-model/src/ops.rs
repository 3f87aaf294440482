//! Plaintext tensor operations of the client: im2col convolutions (f32, and exact integer
//! convolutions through f64), linear layers, pooling, ReLU and friends. Everything is NCHW.

use rayon::prelude::*;
use vericonv::geometry::{Conv2d, Padding};

/// The im2col matrix (`M × N`, row-major) of image `img` (`Cin × H × W`) for group `grp`.
pub fn im2col<T: Copy + Default>(g: &Conv2d, img: &[T], grp: usize) -> Vec<T> {
    let (cpg, kh, kw, wo, n) = (g.cin_per_group(), g.kh(), g.kw(), g.wo(), g.n());
    let mut col = vec![T::default(); g.m() * n];
    for cl in 0..cpg {
        let plane = &img[(grp * cpg + cl) * g.h() * g.w()..][..g.h() * g.w()];
        for i in 0..kh {
            for j in 0..kw {
                let row = &mut col[((cl * kh + i) * kw + j) * n..][..n];
                for y in 0..g.ho() {
                    let Some(r) = g.in_row(y, i) else { continue };
                    for x in 0..wo {
                        if let Some(c) = g.in_col(x, j) {
                            row[y * wo + x] = plane[r * g.w() + c];
                        }
                    }
                }
            }
        }
    }
    col
}

/// The element types of the client's GEMMs (f32 for float models, f64 for exact integers).
pub trait GemmElem: Copy + Default {
    /// `c = a·b` for `m × k` and `k × n` operands with the given (row, column) strides, as
    /// `matrixmultiply` defines them.
    ///
    /// # Safety
    /// Every index the strides reach must lie inside the three buffers.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_raw(
        m: usize,
        k: usize,
        n: usize,
        a: *const Self,
        sa: (isize, isize),
        b: *const Self,
        sb: (isize, isize),
        c: *mut Self,
        sc: (isize, isize),
    );
}

/// `GemmElem` for a float type through the `matrixmultiply` routine of that precision.
macro_rules! gemm_elem {
    ($t:ty, $gemm:path) => {
        impl GemmElem for $t {
            unsafe fn gemm_raw(
                m: usize,
                k: usize,
                n: usize,
                a: *const Self,
                sa: (isize, isize),
                b: *const Self,
                sb: (isize, isize),
                c: *mut Self,
                sc: (isize, isize),
            ) {
                // SAFETY: forwarded from the caller.
                unsafe { $gemm(m, k, n, 1.0, a, sa.0, sa.1, b, sb.0, sb.1, 0.0, c, sc.0, sc.1) }
            }
        }
    };
}

gemm_elem!(f32, matrixmultiply::sgemm);
gemm_elem!(f64, matrixmultiply::dgemm);

/// `c[m×n] = a[m×k]·b[k×n]`, row-major.
pub fn gemm<T: GemmElem>(m: usize, k: usize, n: usize, a: &[T], b: &[T], c: &mut [T]) {
    let fits = |len: usize, x: usize, y: usize| x.checked_mul(y).is_some_and(|p| len >= p);
    assert!(fits(a.len(), m, k) && fits(b.len(), k, n) && fits(c.len(), m, n), "gemm operand sizes");
    // SAFETY: the asserted lengths cover every row-major index the strides reach.
    unsafe {
        T::gemm_raw(m, k, n, a.as_ptr(), (k as isize, 1), b.as_ptr(), (n as isize, 1), c.as_mut_ptr(), (n as isize, 1))
    }
}

/// `y[batch×out] = x[batch×in]·Wᵀ` for `W` of `out × in`: a whole batch through a linear
/// layer in one GEMM.
pub fn linear<T: GemmElem>(batch: usize, in_f: usize, out_f: usize, w: &[T], x: &[T]) -> Vec<T> {
    let fits = |len: usize, r: usize, c: usize| r.checked_mul(c).is_some_and(|p| len >= p);
    assert!(fits(w.len(), out_f, in_f) && fits(x.len(), batch, in_f), "linear operand sizes");
    let mut y = vec![T::default(); batch * out_f];
    // SAFETY: Wᵀ is read with row stride 1 and column stride `in_f` inside the asserted length.
    unsafe {
        T::gemm_raw(
            batch,
            in_f,
            out_f,
            x.as_ptr(),
            (in_f as isize, 1),
            w.as_ptr(),
            (1, in_f as isize),
            y.as_mut_ptr(),
            (out_f as isize, 1),
        )
    }
    y
}

/// The f32 convolution as im2col + GEMM (no bias), for a batch.
pub fn conv_f32(g: &Conv2d, batch: usize, weight: &[f32], x: &[f32]) -> Vec<f32> {
    let (cpo, m, n) = (g.cout_per_group(), g.m(), g.n());
    let mut y = vec![0f32; batch * g.output_image_len()];
    for b in 0..batch {
        let img = &x[b * g.image_len()..][..g.image_len()];
        for grp in 0..g.groups() {
            let col = im2col(g, img, grp);
            let out = &mut y[(b * g.cout() + grp * cpo) * n..][..cpo * n];
            gemm(cpo, m, n, &weight[grp * cpo * m..][..cpo * m], &col, out);
        }
    }
    y
}

/// The exact integer convolution (no bias), for a batch. Products and sums are carried in f64,
/// which is exact while every partial sum stays below 2^53; the exactness bound
/// `M·Bx·Bw <= 2^30` guarantees it. A 1×1 geometry on a 1×1 input (a linear layer) runs as
/// one batched GEMM.
pub fn conv_int(g: &Conv2d, batch: usize, weight: &[f64], x: &[i32]) -> Vec<i32> {
    let (cpo, m, n) = (g.cout_per_group(), g.m(), g.n());
    let xf: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    if n == 1 && g.groups() == 1 && g.kh() == 1 && g.kw() == 1 {
        return linear(batch, g.cin(), g.cout(), weight, &xf).into_iter().map(|v| v as i32).collect();
    }
    let mut y = vec![0i32; batch * g.output_image_len()];
    let mut out = vec![0f64; cpo * n];
    for b in 0..batch {
        let img = &xf[b * g.image_len()..][..g.image_len()];
        for grp in 0..g.groups() {
            let col = im2col(g, img, grp);
            gemm(cpo, m, n, &weight[grp * cpo * m..][..cpo * m], &col, &mut out);
            for (d, &v) in y[(b * g.cout() + grp * cpo) * n..][..cpo * n].iter_mut().zip(&out) {
                *d = v as i32;
            }
        }
    }
    y
}

/// A 2-D pooling window, with ONNX/PyTorch padding and ceil-mode semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    /// Window `(kh, kw)`.
    pub kernel: (usize, usize),
    /// Stride `(sh, sw)`.
    pub stride: (usize, usize),
    /// Padding.
    pub padding: Padding,
    /// Round the output size up.
    pub ceil_mode: bool,
    /// Average pooling: divide by the window including padding (else only real positions).
    pub count_include_pad: bool,
}

impl Pool {
    /// Output extent along one axis: `floor` or `ceil((n + pads - k) / s) + 1`, and in ceil
    /// mode the last window must start inside the input or its leading padding.
    fn out_extent(n: usize, pad_begin: usize, pad_end: usize, k: usize, s: usize, ceil: bool) -> Option<usize> {
        // ONNX: each pad is smaller than the window (else a window would see padding only).
        if pad_begin >= k || pad_end >= k {
            return None;
        }
        let span = n.checked_add(pad_begin)?.checked_add(pad_end)?.checked_sub(k)?;
        let mut out = if ceil { span.div_ceil(s) + 1 } else { span / s + 1 };
        if ceil && (out - 1) * s >= n + pad_begin {
            out -= 1;
        }
        Some(out)
    }

    /// Output `(h, w)` for an `(h, w)` input, or `None` when the window does not fit or a pad is
    /// not smaller than the window.
    pub fn output(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        if self.kernel.0 == 0 || self.kernel.1 == 0 || self.stride.0 == 0 || self.stride.1 == 0 {
            return None;
        }
        let p = self.padding;
        Some((
            Self::out_extent(h, p.top, p.bottom, self.kernel.0, self.stride.0, self.ceil_mode)?,
            Self::out_extent(w, p.left, p.right, self.kernel.1, self.stride.1, self.ceil_mode)?,
        ))
    }

    /// Max (`max = true`) or average pooling of `planes` planes of `h × w`.
    pub fn apply(&self, x: &[f32], planes: usize, h: usize, w: usize, max: bool) -> Vec<f32> {
        let Some((ho, wo)) = self.output(h, w) else { return Vec::new() };
        let mut y = vec![0f32; planes * ho * wo];
        // Planes in parallel: each output is computed the same way in any order.
        let min_planes = (1usize << 14).div_ceil(h * w).max(1);
        x.par_chunks_exact(h * w)
            .take(planes)
            .zip(y.par_chunks_exact_mut(ho * wo))
            .with_min_len(min_planes)
            .for_each(|(plane, out)| self.apply_plane(plane, h, w, ho, wo, max, out));
        y
    }

    /// One plane of [`Pool::apply`].
    #[allow(clippy::too_many_arguments)]
    fn apply_plane(&self, plane: &[f32], h: usize, w: usize, ho: usize, wo: usize, max: bool, out: &mut [f32]) {
        let (pt, pl) = (self.padding.top as isize, self.padding.left as isize);
        let (hpad, wpad) = ((h + self.padding.bottom) as isize, (w + self.padding.right) as isize);
        for oy in 0..ho {
            let y0 = (oy * self.stride.0) as isize - pt;
            let y1 = (y0 + self.kernel.0 as isize).min(hpad);
            for ox in 0..wo {
                let x0 = (ox * self.stride.1) as isize - pl;
                let x1 = (x0 + self.kernel.1 as isize).min(wpad);
                let padded_count = ((y1 - y0) * (x1 - x0)) as f32;
                let (mut acc, mut count) = (if max { f32::NEG_INFINITY } else { 0.0 }, 0usize);
                for r in y0.max(0)..y1.min(h as isize) {
                    for c in x0.max(0)..x1.min(w as isize) {
                        let v = plane[r as usize * w + c as usize];
                        acc = if max { acc.max(v) } else { acc + v };
                        count += 1;
                    }
                }
                out[oy * wo + ox] = if max {
                    acc
                } else if self.count_include_pad {
                    acc / padded_count
                } else {
                    acc / count.max(1) as f32
                };
            }
        }
    }
}

/// The mean of each of `planes` planes of `hw` elements.
pub fn global_avg_pool(x: &[f32], hw: usize) -> Vec<f32> {
    x.chunks_exact(hw).map(|p| p.iter().sum::<f32>() / hw as f32).collect()
}
