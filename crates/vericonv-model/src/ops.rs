//! Plaintext tensor operations of the client: im2col convolutions (f32, and exact integer
//! convolutions through chunked f32 or f64 GEMMs), linear layers, pooling. Everything is NCHW.

use rayon::prelude::*;
use vericonv::SmallInt;
use vericonv::{Conv2d, Padding};

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
/// layer in one GEMM, into `y`.
pub fn linear_into<T: GemmElem>(batch: usize, in_f: usize, out_f: usize, w: &[T], x: &[T], y: &mut [T]) {
    let fits = |len: usize, r: usize, c: usize| r.checked_mul(c).is_some_and(|p| len >= p);
    assert!(fits(w.len(), out_f, in_f) && fits(x.len(), batch, in_f) && fits(y.len(), batch, out_f), "linear sizes");
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
}

/// The f32 convolution as im2col + GEMM (no bias), for a batch, into `y`.
pub fn conv_f32_into(g: &Conv2d, batch: usize, weight: &[f32], x: &[f32], y: &mut [f32]) {
    let (cpo, m, n) = (g.cout_per_group(), g.m(), g.n());
    for b in 0..batch {
        let img = &x[b * g.image_len()..][..g.image_len()];
        for grp in 0..g.groups() {
            let col = im2col(g, img, grp);
            let out = &mut y[(b * g.cout() + grp * cpo) * n..][..cpo * n];
            gemm(cpo, m, n, &weight[grp * cpo * m..][..cpo * m], &col, out);
        }
    }
}

/// The weights of a quantized layer (integers) in the type its exact client-side product runs
/// in: a linear layer with 8-bit weights and inputs in 8 bits, summed in integers (with
/// AVX-512 VNNI where the CPU has it); any other layer in f32 in chunks of `chunk` terms, each
/// of whose sums stays below 2^24 and is therefore exact, when the bit widths allow chunks of at
/// least 16 terms (8-bit data: 1,040); else in f64, exact for every sum the exactness bound
/// `M·Bx·Bw <= 2^30` allows.
#[derive(Clone, Debug)]
pub enum ExactWeights {
    /// A linear layer's 8-bit weights (`out × in`) and each row's sum.
    Int8 {
        /// The weights.
        w: Vec<i8>,
        /// `Σ_k w[o, k]` per output `o`.
        rowsum: Vec<i32>,
    },
    /// f32 operands, sums chunked along the reduction.
    F32 {
        /// The weights.
        w: Vec<f32>,
        /// Terms per exact chunk.
        chunk: usize,
    },
    /// f64 operands.
    F64(Vec<f64>),
}

impl ExactWeights {
    /// Chooses the type for the weights `w` (`|w| <= bw`) of layer `g` and inputs `|x| <= bx`.
    pub fn new(g: &Conv2d, w: &[i32], bw: u32, bx: u32) -> Self {
        if is_linear(g) && bw <= 127 && bx <= 127 {
            let rowsum = w.chunks_exact(g.cin().max(1)).map(|r| r.iter().sum()).collect();
            return Self::Int8 { w: w.iter().map(|&v| v as i8).collect(), rowsum };
        }
        let chunk = ((1u64 << 24) / (u64::from(bw.max(1)) * u64::from(bx.max(1)))) as usize;
        if chunk >= 16 {
            Self::F32 { w: w.iter().map(|&v| v as f32).collect(), chunk }
        } else {
            Self::F64(w.iter().map(|&v| f64::from(v)).collect())
        }
    }
}

/// `out[r×c] = a·b` exactly over the integers, for integer-valued operands (see
/// [`ExactWeights`]): `a` is `r × k` with row stride `lda`; `b` is `k × c` row-major or, when
/// `b_transposed`, `c × k` row-major; `chunk` splits the sum along `k`.
#[allow(clippy::too_many_arguments)]
fn gemm_exact<T: GemmElem + Into<f64>>(
    r: usize,
    k: usize,
    c: usize,
    a: &[T],
    lda: usize,
    b: &[T],
    b_transposed: bool,
    chunk: usize,
    out: &mut [i32],
) {
    let fits = |len: usize, x: usize, y: usize| x.checked_mul(y).is_some_and(|p| len >= p);
    let a_len = r.checked_sub(1).map_or(Some(0), |rows| rows.checked_mul(lda).and_then(|v| v.checked_add(k)));
    assert!(
        lda >= k && a_len.is_some_and(|l| a.len() >= l) && fits(b.len(), k, c) && fits(out.len(), r, c),
        "exact gemm operand sizes"
    );
    let mut part = vec![T::default(); r * c];
    out[..r * c].fill(0);
    let chunk = chunk.max(1);
    for k0 in (0..k).step_by(chunk) {
        let kc = chunk.min(k - k0);
        let (bp, sb) = if b_transposed { (&b[k0..], (1, k as isize)) } else { (&b[k0 * c..], (c as isize, 1)) };
        // SAFETY: `a` is read at `row·lda + k0 + [0, kc)`, below the asserted `(r-1)·lda + k`;
        // `b` at `k0 + [0, kc) + col·k` (transposed) or `(k0 + [0, kc))·c + col`, below `k·c`;
        // `part` holds r × c.
        unsafe {
            T::gemm_raw(
                r,
                kc,
                c,
                a[k0..].as_ptr(),
                (lda as isize, 1),
                bp.as_ptr(),
                sb,
                part.as_mut_ptr(),
                (c as isize, 1),
            );
        }
        out.iter_mut().zip(&part).for_each(|(o, &v)| *o += v.into() as i32);
    }
}

/// The exact integer convolution (no bias) of a batch of small integers, into `y`: im2col and
/// the GEMM of [`ExactWeights`] per image and group. A 1×1 geometry on a 1×1 input (a linear
/// layer) runs as one batched GEMM.
pub fn conv_int_into<T: SmallInt>(g: &Conv2d, batch: usize, weights: &ExactWeights, x: &[T], y: &mut [i32]) {
    match weights {
        ExactWeights::Int8 { w, rowsum } => linear_int8(g.cout(), g.cin(), batch, w, rowsum, x, y),
        ExactWeights::F32 { w, chunk } => conv_int_typed(g, batch, w, *chunk, x, |v| v as f32, y),
        ExactWeights::F64(w) => conv_int_typed(g, batch, w, usize::MAX, x, f64::from, y),
    }
}

fn conv_int_typed<T: SmallInt, F: GemmElem + Into<f64>>(
    g: &Conv2d,
    batch: usize,
    w: &[F],
    chunk: usize,
    x: &[T],
    to: impl Fn(i32) -> F,
    y: &mut [i32],
) {
    let (cpo, m, n) = (g.cout_per_group(), g.m(), g.n());
    let xf: Vec<F> = x.iter().map(|&v| to(v.get())).collect();
    if is_linear(g) {
        // yᵀ = W·xᵀ: the weights are the left operand, read row by row as they are stored
        // (as the right one they would be packed column by column, a cache miss per element).
        let mut yt = vec![0i32; g.cout() * batch];
        gemm_exact(g.cout(), g.cin(), batch, w, g.cin(), &xf, true, chunk, &mut yt);
        for (o, row) in yt.chunks_exact(batch).enumerate() {
            for (b, &v) in row.iter().enumerate() {
                y[b * g.cout() + o] = v;
            }
        }
        return;
    }
    let mut out = vec![0i32; cpo * n];
    for b in 0..batch {
        let img = &xf[b * g.image_len()..][..g.image_len()];
        for grp in 0..g.groups() {
            let col = im2col(g, img, grp);
            gemm_exact(cpo, m, n, &w[grp * cpo * m..][..cpo * m], m, &col, false, chunk, &mut out);
            y[(b * g.cout() + grp * cpo) * n..][..cpo * n].copy_from_slice(&out);
        }
    }
}

/// A linear layer as [`Conv2d`] sees it: a 1×1 convolution of a 1×1 input, one group.
fn is_linear(g: &Conv2d) -> bool {
    g.n() == 1 && g.groups() == 1 && g.kh() == 1 && g.kw() == 1 && g.h() == 1 && g.w() == 1
}

/// Output rows of a linear layer per parallel task.
const LINEAR_ROWS: usize = 32;

/// The exact linear layer `y[b, o] = Σ_k x[b, k]·w[o, k]` for 8-bit weights and inputs within
/// ±127 (a sum of at most 2^30, by the exactness bound): with AVX-512 VNNI, sixty-four products
/// per instruction (the inputs offset by 128 to be unsigned, `128·Σ_k w[o, k]` taken off
/// after), output rows in parallel; else in `i64` sums.
fn linear_int8<T: SmallInt>(out_f: usize, in_f: usize, batch: usize, w: &[i8], rowsum: &[i32], x: &[T], y: &mut [i32]) {
    let mut yt = vec![0i32; out_f * batch];
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vnni")
        && in_f.checked_mul(255 * 127).is_some_and(|m| m <= i32::MAX as usize)
    {
        let xu: Vec<u8> = x.iter().map(|&v| (v.get() + 128) as u8).collect();
        yt.par_chunks_mut(LINEAR_ROWS * batch).enumerate().for_each(|(t, rows)| {
            let o0 = t * LINEAR_ROWS;
            let rows_w = &w[o0 * in_f..][..rows.len() / batch * in_f];
            // SAFETY: the CPU has the features; `rows_w` holds the task's rows of `w`, `xu`
            // the batch's inputs and `rows` the task's outputs (lengths checked inside).
            unsafe { linear_vnni(in_f, batch, rows_w, &rowsum[o0..], &xu, rows) };
        });
    } else {
        linear_int8_portable(in_f, batch, w, x, &mut yt);
    }
    #[cfg(not(target_arch = "x86_64"))]
    linear_int8_portable(in_f, batch, w, x, &mut yt);
    for (o, row) in yt.chunks_exact(batch).enumerate() {
        for (b, &v) in row.iter().enumerate() {
            y[b * out_f + o] = v;
        }
    }
}

/// [`linear_int8`] in portable code: `yt[o, b]`.
fn linear_int8_portable<T: SmallInt>(in_f: usize, batch: usize, w: &[i8], x: &[T], yt: &mut [i32]) {
    yt.par_chunks_mut(batch).zip(w.par_chunks(in_f)).for_each(|(row, wo)| {
        for (b, out) in row.iter_mut().enumerate() {
            let xb = &x[b * in_f..][..in_f];
            *out = wo.iter().zip(xb).map(|(&a, &v)| i64::from(a) * i64::from(v.get())).sum::<i64>() as i32;
        }
    });
}

/// Rows of `w` and images of the batch in one block of [`linear_vnni`]: `LINEAR_BLOCK²`
/// accumulators, `2·LINEAR_BLOCK` loads per `LINEAR_BLOCK²` VNNI instructions.
#[cfg(target_arch = "x86_64")]
const LINEAR_BLOCK: usize = 4;

/// The rows `w` (`rows × in_f`) of a linear layer against the whole batch `xu` (inputs + 128,
/// `batch × in_f`): `yt[r, b] = Σ_k xu[b, k]·w[r, k] - 128·rowsum[r]`, in blocks of four rows
/// by four images, each sum in the sixteen 32-bit lanes of one register, so that every 64-byte
/// load of a weight row or of an image feeds four VNNI instructions.
///
/// # Safety
/// The CPU has AVX-512F, BW and VNNI; `in_f·255·127` fits an `i32`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn linear_vnni(in_f: usize, batch: usize, w: &[i8], rowsum: &[i32], xu: &[u8], yt: &mut [i32]) {
    use core::arch::x86_64::*;
    const N: usize = LINEAR_BLOCK;
    let rows = yt.len() / batch.max(1);
    assert!(w.len() == rows * in_f && xu.len() >= batch * in_f && rowsum.len() >= rows);
    for r0 in (0..rows).step_by(N) {
        let nr = (rows - r0).min(N);
        // Past the last row (or image), the first one of the block again: computed, not stored.
        let wr: [&[i8]; N] = std::array::from_fn(|i| &w[(r0 + if i < nr { i } else { 0 }) * in_f..][..in_f]);
        for b0 in (0..batch).step_by(N) {
            let nb = (batch - b0).min(N);
            let xr: [&[u8]; N] = std::array::from_fn(|j| &xu[(b0 + if j < nb { j } else { 0 }) * in_f..][..in_f]);
            let mut acc = [[_mm512_setzero_si512(); N]; N];
            for k in (0..in_f).step_by(64) {
                let km: __mmask64 = if in_f - k >= 64 { !0 } else { (1u64 << (in_f - k)) - 1 };
                // SAFETY: the lanes of `km` lie inside every row of `wr` and `xr`.
                let (wv, xv): ([__m512i; N], [__m512i; N]) = unsafe {
                    (
                        std::array::from_fn(|i| _mm512_maskz_loadu_epi8(km, wr[i].as_ptr().add(k).cast())),
                        std::array::from_fn(|j| _mm512_maskz_loadu_epi8(km, xr[j].as_ptr().add(k).cast())),
                    )
                };
                for (row, &wv) in acc.iter_mut().zip(&wv) {
                    for (a, &xv) in row.iter_mut().zip(&xv) {
                        *a = _mm512_dpbusd_epi32(*a, xv, wv);
                    }
                }
            }
            for (i, row) in acc.iter().enumerate().take(nr) {
                for (j, a) in row.iter().enumerate().take(nb) {
                    yt[(r0 + i) * batch + b0 + j] = _mm512_reduce_add_epi32(*a) - 128 * rowsum[r0 + i];
                }
            }
        }
    }
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
        self.apply_into(x, planes, h, w, max, &mut y);
        y
    }

    /// [`Pool::apply`] into `y` (`planes` output planes).
    pub fn apply_into(&self, x: &[f32], planes: usize, h: usize, w: usize, max: bool, y: &mut [f32]) {
        let Some((ho, wo)) = self.output(h, w) else { return };
        // Planes in parallel: each output is computed the same way in any order.
        let min_planes = (1usize << 14).div_ceil(h * w).max(1);
        x.par_chunks_exact(h * w)
            .take(planes)
            .zip(y.par_chunks_exact_mut(ho * wo))
            .with_min_len(min_planes)
            .for_each(|(plane, out)| self.apply_plane(plane, h, w, ho, wo, max, out));
    }

    /// One plane of [`Pool::apply`].
    #[allow(clippy::too_many_arguments)]
    fn apply_plane(&self, plane: &[f32], h: usize, w: usize, ho: usize, wo: usize, max: bool, out: &mut [f32]) {
        if max {
            return self.max_plane(plane, h, w, wo, out);
        }
        let (pt, pl) = (self.padding.top as isize, self.padding.left as isize);
        let (hpad, wpad) = ((h + self.padding.bottom) as isize, (w + self.padding.right) as isize);
        for oy in 0..ho {
            let y0 = (oy * self.stride.0) as isize - pt;
            let y1 = (y0 + self.kernel.0 as isize).min(hpad);
            for ox in 0..wo {
                let x0 = (ox * self.stride.1) as isize - pl;
                let x1 = (x0 + self.kernel.1 as isize).min(wpad);
                let padded_count = ((y1 - y0) * (x1 - x0)) as f32;
                let (mut acc, mut count) = (0.0, 0usize);
                for r in y0.max(0)..y1.min(h as isize) {
                    for c in x0.max(0)..x1.min(w as isize) {
                        acc += plane[r as usize * w + c as usize];
                        count += 1;
                    }
                }
                out[oy * wo + ox] = if self.count_include_pad { acc / padded_count } else { acc / count.max(1) as f32 };
            }
        }
    }

    /// Max pooling of one plane, separably: for each output row, the maximum over the window's
    /// real rows, column by column, into a row that -∞ pads to the window's reach; then the
    /// maximum over each window's columns of that row. The maximum of a set does not depend on
    /// the order it is taken in (`f32::max` ignores NaN, and -∞ stands for the padding, which
    /// takes no part), so this is the window maximum over the real positions.
    fn max_plane(&self, plane: &[f32], h: usize, w: usize, wo: usize, out: &mut [f32]) {
        max_plane(self.kernel, self.stride, (self.padding.top, self.padding.left), plane, h, w, wo, out);
    }
}

/// [`Pool::max_plane`], compiled for the widest vectors the CPU has.
#[allow(clippy::too_many_arguments)]
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2", "aarch64+neon"))]
fn max_plane(
    (kh, kw): (usize, usize),
    (sh, sw): (usize, usize),
    (pt, pl): (usize, usize),
    plane: &[f32],
    h: usize,
    w: usize,
    wo: usize,
    out: &mut [f32],
) {
    // Padded row: column c of the input at pl + c; every window reads [ox·sw, ox·sw + kw).
    let reach = (wo - 1) * sw + kw;
    let mut vrow = vec![f32::NEG_INFINITY; reach.max(pl + w)];
    let mut acc = vec![f32::NEG_INFINITY; (wo - 1) * sw + 1];
    for (oy, orow) in out.chunks_exact_mut(wo).enumerate() {
        let y0 = (oy * sh).saturating_sub(pt);
        let y1 = (oy * sh + kh).saturating_sub(pt).min(h);
        let real = &mut vrow[pl..pl + w];
        real.fill(f32::NEG_INFINITY);
        for r in y0..y1 {
            real.iter_mut().zip(&plane[r * w..][..w]).for_each(|(m, &v)| *m = m.max(v));
        }
        let span = acc.len();
        acc.copy_from_slice(&vrow[..span]);
        for j in 1..kw {
            acc.iter_mut().zip(&vrow[j..]).for_each(|(m, &v)| *m = m.max(v));
        }
        orow.iter_mut().zip(acc.iter().step_by(sw)).for_each(|(o, &m)| *o = m);
    }
}

/// The mean of each plane of `hw` elements of `x`, into `y`.
pub fn global_avg_pool_into(x: &[f32], hw: usize, y: &mut [f32]) {
    y.iter_mut().zip(x.chunks_exact(hw)).for_each(|(o, p)| *o = p.iter().sum::<f32>() / hw as f32);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 8-bit linear layer (with VNNI where the CPU has it) equals the exact sum, for batch
    /// sizes and widths that leave tails in every loop.
    #[test]
    fn int8_linear_layers_are_exact() {
        let mut state = 0x2545_f491u32;
        let mut next = |m: i32| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as i32 % (2 * m + 1) - m
        };
        for (out_f, in_f, batch) in [(3, 1, 1), (37, 100, 5), (70, 129, 17), (5, 4096, 33)] {
            let g = Conv2d::builder(in_f, out_f, (1, 1), (1, 1)).build().expect("valid");
            let w: Vec<i32> = (0..out_f * in_f).map(|_| next(127)).collect();
            let x: Vec<i8> = (0..batch * in_f).map(|i| if i % 7 == 0 { -127 } else { next(127) as i8 }).collect();
            let ExactWeights::Int8 { w: w8, rowsum } = ExactWeights::new(&g, &w, 127, 127) else {
                panic!("8-bit linear weights are kept in 8 bits")
            };
            let mut fast = vec![0i32; batch * out_f];
            linear_int8(out_f, in_f, batch, &w8, &rowsum, &x, &mut fast);
            let mut slow = vec![0i32; out_f * batch];
            linear_int8_portable(in_f, batch, &w8, &x, &mut slow);
            for b in 0..batch {
                for o in 0..out_f {
                    let want: i32 = (0..in_f).map(|k| w[o * in_f + k] * i32::from(x[b * in_f + k])).sum();
                    assert_eq!(fast[b * out_f + o], want, "{out_f}×{in_f}, batch {batch}, ({b}, {o})");
                    assert_eq!(slow[o * batch + b], want, "portable, {out_f}×{in_f}, batch {batch}");
                }
            }
        }
    }
}
