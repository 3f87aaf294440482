//! The hottest slice kernels of [`super::slices`], written for AVX-512F with explicit
//! intrinsics: sixteen field elements per vector, their 32×32→64-bit products taken on the
//! even and the odd lanes separately (`vpmuludq` reads the low half of each 64-bit lane, so no
//! widening is needed), folded lazily, and packed back to sixteen `u32` at the end.
//!
//! Each function computes exactly what its portable twin in [`super::slices`] does (tests
//! compare them bit for bit); [`super::slices`] calls them when the CPU has AVX-512F, BW and
//! VL (every AVX-512 CPU since Skylake-SP and Zen 4). Every
//! function requires, and its caller checks, that all slices it reads hold at least
//! `out.len()` elements: tails are read with masked loads, which touch nothing beyond that.

use core::arch::x86_64::*;

use super::{P, SmallInt};

/// Elements per vector.
const LANES: usize = 16;

/// How far ahead (in elements) the answer rows are prefetched.
const PREFETCH: usize = 512;

/// The mask of the first `n` (at most 16) lanes.
#[inline(always)]
fn lanes(n: usize) -> __mmask16 {
    if n >= LANES { 0xFFFF } else { (1u16 << n) - 1 }
}

/// `x mod 2^31 + x / 2^31` on each 64-bit lane: congruent mod p, below 2^31 + 2^33.
#[inline]
#[target_feature(enable = "avx512f")]
fn fold(x: __m512i) -> __m512i {
    _mm512_add_epi64(_mm512_and_si512(x, _mm512_set1_epi64(i64::from(P))), _mm512_srli_epi64(x, 31))
}

/// The products `c·v` of the even and the odd 32-bit lanes of `v` with the scalar `c` (held in
/// the low half of every 64-bit lane), as 64-bit lanes.
#[inline]
#[target_feature(enable = "avx512f")]
fn mul_even_odd(v: __m512i, c: __m512i) -> (__m512i, __m512i) {
    (_mm512_mul_epu32(v, c), _mm512_mul_epu32(_mm512_srli_epi64(v, 32), c))
}

/// The lane-by-lane products `a·b` of the even and the odd 32-bit lanes, as 64-bit lanes.
#[inline]
#[target_feature(enable = "avx512f")]
fn mul_lanes(a: __m512i, b: __m512i) -> (__m512i, __m512i) {
    (_mm512_mul_epu32(a, b), _mm512_mul_epu32(_mm512_srli_epi64(a, 32), _mm512_srli_epi64(b, 32)))
}

/// Sixteen canonical residues from the 64-bit sums of the even and the odd lanes (each below
/// 2^63): two folds each, the lanes interleaved back, one conditional subtraction.
#[inline]
#[target_feature(enable = "avx512f")]
fn reduce(even: __m512i, odd: __m512i) -> __m512i {
    let (e, o) = (fold(fold(even)), fold(fold(odd))); // below 2^31 + 8: fits 32 bits
    canonical(_mm512_mask_blend_epi32(0xAAAA, e, _mm512_slli_epi64(o, 32)))
}

/// `min(r, r - p)` on 32-bit lanes: the canonical residue of any `r < 2p`.
#[inline]
#[target_feature(enable = "avx512f")]
fn canonical(r: __m512i) -> __m512i {
    _mm512_min_epu32(r, _mm512_sub_epi32(r, _mm512_set1_epi32(P as i32)))
}

/// The signed integer in `[-(p-1)/2, (p-1)/2]` behind each canonical residue.
#[inline]
#[target_feature(enable = "avx512f")]
fn lift(d: __m512i) -> __m512i {
    let neg = _mm512_cmpgt_epu32_mask(d, _mm512_set1_epi32(((P - 1) / 2) as i32));
    _mm512_mask_sub_epi32(d, neg, d, _mm512_set1_epi32(P as i32))
}

/// `v mod p` of sixteen signed integers with `|v| <= (p-1)/2`.
#[inline]
#[target_feature(enable = "avx512f")]
fn embed(v: __m512i) -> __m512i {
    _mm512_add_epi32(v, _mm512_and_si512(_mm512_srai_epi32(v, 31), _mm512_set1_epi32(P as i32)))
}

/// Loads lanes `k` of `x` (from element `at`).
///
/// # Safety
/// The lanes of `k` lie inside `x`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load(x: &[u32], at: usize, k: __mmask16) -> __m512i {
    // SAFETY: masked lanes are not read; the others are inside `x` (the caller's contract).
    unsafe { _mm512_maskz_loadu_epi32(k, x.as_ptr().add(at).cast()) }
}

/// Prefetches the terms' elements [`PREFETCH`] ahead of `at` when there are at most two: such
/// terms are whole tensors streamed from memory (mode pad's `R` and `U`), whose pages the
/// hardware prefetcher does not cross; more terms are small tables already in cache.
#[inline]
#[target_feature(enable = "avx512f")]
fn prefetch_streams(terms: &[(u32, &[u32])], at: usize) {
    if terms.len() <= 2 {
        for &(_, x) in terms {
            // A prefetch never faults; `wrapping_add` keeps the address arithmetic defined even
            // past the end of `x`.
            _mm_prefetch::<_MM_HINT_T0>(x.as_ptr().wrapping_add(at + PREFETCH).cast());
        }
    }
}

/// Loads the first `n` (at most 16) small integers of `x` from element `at`, widened.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn load_small<T: SmallInt>(x: &[T], at: usize, n: usize) -> __m512i {
    let src = &x[at..at + n];
    // SAFETY: this function has the features; the `n` lanes read lie inside `src`.
    unsafe { T::load16(src.as_ptr(), lanes(n)) }
}

/// The sum of the 64-bit lanes of `a` and `b`, wrapping.
#[inline]
#[target_feature(enable = "avx512f")]
fn sum_lanes(a: __m512i, b: __m512i) -> u64 {
    _mm512_reduce_add_epi64(_mm512_add_epi64(a, b)) as u64
}

/// `Σ_k c_k·x_k[at..]` (lanes `k`; `-Σ` when `negate`, through the coefficients `p - c_k`) plus
/// the raw sums `raw` of `raw.2` products, as folded even and odd 64-bit lanes, lazily: up to
/// four raw products (each below 2^62) are summed before a fold.
///
/// # Safety
/// The lanes of `k` lie inside every `x_k`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn accumulate(
    terms: &[(u32, &[u32])],
    negate: bool,
    at: usize,
    k: __mmask16,
    mut raw: (__m512i, __m512i, usize),
) -> (__m512i, __m512i) {
    unsafe {
        let (mut even, mut odd) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        for &(c, x) in terms {
            let c = if negate { P - c } else { c };
            let (pe, po) = mul_even_odd(load(x, at, k), _mm512_set1_epi64(i64::from(c)));
            raw = (_mm512_add_epi64(raw.0, pe), _mm512_add_epi64(raw.1, po), raw.2 + 1);
            if raw.2 == 4 {
                even = _mm512_add_epi64(even, fold(raw.0));
                odd = _mm512_add_epi64(odd, fold(raw.1));
                raw = (_mm512_setzero_si512(), _mm512_setzero_si512(), 0);
            }
        }
        (_mm512_add_epi64(even, fold(raw.0)), _mm512_add_epi64(odd, fold(raw.1)))
    }
}

/// [`super::slices::combine_into`].
///
/// # Safety
/// The CPU has AVX-512F; every `x_k` holds at least `out.len()` elements.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn combine_into(out: &mut [u32], terms: &[(u32, &[u32])]) {
    let zero = _mm512_setzero_si512();
    for at in (0..out.len()).step_by(LANES) {
        let k = lanes(out.len() - at);
        unsafe {
            let (e, o) = accumulate(terms, false, at, k, (zero, zero, 0));
            _mm512_mask_storeu_epi32(out.as_mut_ptr().add(at).cast(), k, reduce(e, o));
        }
    }
}

/// [`super::slices::encrypt_small_into`].
///
/// # Safety
/// The CPU has AVX-512F; `x` and every `x_k` hold at least `out.len()` elements.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn encrypt_small_into<T: SmallInt>(out: &mut [u32], c: u32, x: &[T], terms: &[(u32, &[u32])]) {
    let c = _mm512_set1_epi64(i64::from(c));
    for_blocks(out, |at, n, k| {
        prefetch_streams(terms, at);
        // SAFETY: lanes of `k` lie inside `x` and every term (the caller's contract).
        unsafe {
            let (pe, po) = mul_even_odd(embed(load_small(x, at, n)), c);
            let (e, o) = accumulate(terms, false, at, k, (pe, po, 1));
            reduce(e, o)
        }
    });
}

/// Calls `block(at, n, k)` for consecutive blocks of `out` (`n` elements from `at`, lanes `k`)
/// and stores what it returns there.
#[inline]
#[target_feature(enable = "avx512f")]
fn for_blocks(out: &mut [u32], mut block: impl FnMut(usize, usize, __mmask16) -> __m512i) {
    for at in (0..out.len()).step_by(LANES) {
        let n = (out.len() - at).min(LANES);
        let k = lanes(n);
        let v = block(at, n, k);
        // SAFETY: lanes of `k` lie inside `out`.
        unsafe { _mm512_mask_storeu_epi32(out.as_mut_ptr().add(at).cast(), k, v) };
    }
}

/// [`super::slices::scale_sub_small`].
///
/// # Safety
/// The CPU has AVX-512F; `x` and `a` hold at least `out.len()` elements.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn scale_sub_small<T: SmallInt>(out: &mut [u32], c: u32, x: &[T], a: &[u32]) {
    let c = _mm512_set1_epi64(i64::from(c));
    for_blocks(out, |at, n, k| {
        // SAFETY: lanes of `k` lie inside `x` and `a` (the caller's contract).
        unsafe {
            let (pe, po) = mul_even_odd(embed(load_small(x, at, n)), c);
            let t = _mm512_add_epi32(reduce(pe, po), _mm512_set1_epi32(P as i32)); // in [p, 2p)
            canonical(_mm512_sub_epi32(t, load(a, at, k))) // a < p: in (0, 2p)
        }
    });
}

/// [`super::slices::dot`], as the lazy sum of folded products (congruent to the dot product,
/// below 2^34 per 16 elements), and the largest entry of `a`.
///
/// # Safety
/// The CPU has AVX-512F; `b` holds at least `a.len()` elements.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn dot_max(a: &[u32], b: &[u32]) -> (u64, u32) {
    unsafe {
        let (mut de, mut do_, mut max) = (_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512());
        for at in (0..a.len()).step_by(LANES) {
            let k = lanes(a.len() - at);
            _mm_prefetch::<_MM_HINT_T0>(a.as_ptr().wrapping_add(at + PREFETCH).cast());
            let av = load(a, at, k);
            max = _mm512_max_epu32(max, av);
            let (pe, po) = mul_lanes(av, load(b, at, k));
            de = _mm512_add_epi64(de, fold(pe));
            do_ = _mm512_add_epi64(do_, fold(po));
        }
        (sum_lanes(de, do_), _mm512_reduce_max_epu32(max))
    }
}

/// [`super::slices::unmask_into`]: returns the largest entry of `y`.
///
/// # Safety
/// The CPU has AVX-512F, BW and VL; `y` and every `x_k` hold at least `out.len()` elements.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn unmask_into(out: &mut [i32], y: &[u32], c: u32, terms: &[(u32, &[u32])]) -> u32 {
    let c = _mm512_set1_epi64(i64::from(c));
    let mut max = _mm512_setzero_si512();
    for at in (0..out.len()).step_by(LANES) {
        let k = lanes(out.len() - at);
        // SAFETY: lanes of `k` lie inside `out`, `y` and every term (the caller's contract).
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(y.as_ptr().wrapping_add(at + PREFETCH).cast());
            prefetch_streams(terms, at);
            let yv = load(y, at, k);
            max = _mm512_max_epu32(max, yv);
            // c·y - Σ c_k·x_k as one lazy sum, the mask's coefficients negated (a non-canonical
            // entry may wrap it: such an answer never passes verification).
            let (ye, yo) = mul_even_odd(yv, c);
            let (e, o) = accumulate(terms, true, at, k, (ye, yo, 1));
            _mm512_mask_storeu_epi32(out.as_mut_ptr().add(at).cast(), k, lift(reduce(e, o)));
        }
    }
    _mm512_reduce_max_epu32(max)
}

/// `out = c·x + Σ_k coefs[k]·q[k·wo + at..]` on lanes `k` from `at`, with `x` either small
/// integers or field elements (already loaded), the coefficients negated when `negate`.
///
/// # Safety
/// The lanes of `k` lie inside every row of `q`.
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn combine_rows(
    x: __m512i,
    c: __m512i,
    coefs: &[u32],
    negate: bool,
    q: &[u32],
    wo: usize,
    at: usize,
    k: __mmask16,
) -> __m512i {
    let zero = _mm512_setzero_si512();
    let (mut raw_e, mut raw_o) = mul_even_odd(x, c);
    let (mut even, mut odd, mut count) = (zero, zero, 1);
    for (j, &cj) in coefs.iter().enumerate() {
        let cj = if negate { P - cj } else { cj };
        // SAFETY: the caller's contract.
        let (pe, po) = mul_even_odd(unsafe { load(q, j * wo + at, k) }, _mm512_set1_epi64(i64::from(cj)));
        raw_e = _mm512_add_epi64(raw_e, pe);
        raw_o = _mm512_add_epi64(raw_o, po);
        count += 1;
        if count == 4 {
            even = _mm512_add_epi64(even, fold(raw_e));
            odd = _mm512_add_epi64(odd, fold(raw_o));
            (raw_e, raw_o, count) = (zero, zero, 0);
        }
    }
    reduce(_mm512_add_epi64(even, fold(raw_e)), _mm512_add_epi64(odd, fold(raw_o)))
}

/// [`combine_rows`] for two rows at once, `x0` with `coefs0` and `x1` with `coefs1`: each
/// element of `q` is loaded (and split into its even and odd lanes) once for both.
///
/// # Safety
/// The lanes of `k` lie inside every row of `q`.
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn combine_two_rows(
    (x0, x1): (__m512i, __m512i),
    c: __m512i,
    (coefs0, coefs1): (&[u32], &[u32]),
    negate: bool,
    q: &[u32],
    wo: usize,
    at: usize,
    k: __mmask16,
) -> (__m512i, __m512i) {
    let zero = _mm512_setzero_si512();
    let ((mut e0, mut o0), (mut e1, mut o1)) = (mul_even_odd(x0, c), mul_even_odd(x1, c));
    let (mut se0, mut so0, mut se1, mut so1, mut count) = (zero, zero, zero, zero, 1);
    for (j, (&a, &b)) in coefs0.iter().zip(coefs1).enumerate() {
        let (a, b) = if negate { (P - a, P - b) } else { (a, b) };
        // SAFETY: the caller's contract.
        let qe = unsafe { load(q, j * wo + at, k) };
        let qo = _mm512_srli_epi64(qe, 32);
        let (av, bv) = (_mm512_set1_epi64(i64::from(a)), _mm512_set1_epi64(i64::from(b)));
        e0 = _mm512_add_epi64(e0, _mm512_mul_epu32(qe, av));
        o0 = _mm512_add_epi64(o0, _mm512_mul_epu32(qo, av));
        e1 = _mm512_add_epi64(e1, _mm512_mul_epu32(qe, bv));
        o1 = _mm512_add_epi64(o1, _mm512_mul_epu32(qo, bv));
        count += 1;
        if count == 4 {
            se0 = _mm512_add_epi64(se0, fold(e0));
            so0 = _mm512_add_epi64(so0, fold(o0));
            se1 = _mm512_add_epi64(se1, fold(e1));
            so1 = _mm512_add_epi64(so1, fold(o1));
            (e0, o0, e1, o1, count) = (zero, zero, zero, zero, 0);
        }
    }
    (
        reduce(_mm512_add_epi64(se0, fold(e0)), _mm512_add_epi64(so0, fold(o0))),
        reduce(_mm512_add_epi64(se1, fold(e1)), _mm512_add_epi64(so1, fold(o1))),
    )
}

/// [`super::slices::unmask_rows`], two rows at a time (they share the rows of `q`).
///
/// # Safety
/// The CPU has AVX-512F, BW and VL; `wo > 0`, `out` holds `rows·wo` elements, `y` at least as
/// many, `coefs` `rows·K` and `q` at least `K·wo`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn unmask_rows(out: &mut [i32], y: &[u32], c: u32, coefs: &[u32], q: &[u32], wo: usize) -> u32 {
    let rows = out.len() / wo;
    let kk = coefs.len() / rows.max(1);
    let c = _mm512_set1_epi64(i64::from(c));
    let mut max = _mm512_setzero_si512();
    for r in (0..rows).step_by(2) {
        let pair = r + 1 < rows;
        for at in (0..wo).step_by(LANES) {
            let (k, yr) = (lanes(wo - at), r * wo + at);
            // SAFETY: lanes of `k` lie inside rows r (and r + 1 when `pair`) of `y` and `out`
            // and inside each of the K rows of `q` (the caller's contract).
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(y.as_ptr().wrapping_add(yr + PREFETCH).cast());
                let yv = load(y, yr, k);
                max = _mm512_max_epu32(max, yv);
                if pair {
                    _mm_prefetch::<_MM_HINT_T0>(y.as_ptr().wrapping_add(yr + wo + PREFETCH).cast());
                    let yv1 = load(y, yr + wo, k);
                    max = _mm512_max_epu32(max, yv1);
                    let rows_coefs = (&coefs[r * kk..][..kk], &coefs[(r + 1) * kk..][..kk]);
                    let (d0, d1) = combine_two_rows((yv, yv1), c, rows_coefs, true, q, wo, at, k);
                    _mm512_mask_storeu_epi32(out.as_mut_ptr().add(yr).cast(), k, lift(d0));
                    _mm512_mask_storeu_epi32(out.as_mut_ptr().add(yr + wo).cast(), k, lift(d1));
                } else {
                    let d = combine_rows(yv, c, &coefs[r * kk..][..kk], true, q, wo, at, k);
                    _mm512_mask_storeu_epi32(out.as_mut_ptr().add(yr).cast(), k, lift(d));
                }
            }
        }
    }
    _mm512_reduce_max_epu32(max)
}

/// [`super::slices::encrypt_rows`].
///
/// # Safety
/// The CPU has AVX-512F, BW and VL; `wo > 0`, `out` holds `rows·wo` elements, `x` at least as
/// many, `coefs` `rows·K` and `q` at least `K·wo`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn encrypt_rows<T: SmallInt>(out: &mut [u32], c: u32, x: &[T], coefs: &[u32], q: &[u32], wo: usize) {
    let rows = out.len() / wo;
    let kk = coefs.len() / rows.max(1);
    let c = _mm512_set1_epi64(i64::from(c));
    for r in 0..rows {
        for at in (0..wo).step_by(LANES) {
            let (n, xr) = ((wo - at).min(LANES), r * wo + at);
            let k = lanes(n);
            let xv = embed(load_small(x, xr, n));
            // SAFETY: lanes of `k` lie inside row r of `out` and inside each row of `q` (the
            // caller's contract).
            unsafe {
                let v = combine_rows(xv, c, &coefs[r * kk..][..kk], false, q, wo, at, k);
                _mm512_mask_storeu_epi32(out.as_mut_ptr().add(xr).cast(), k, v);
            }
        }
    }
}

/// [`super::slices::unmask_sum_into`]: returns the largest entry of `a` and `b`.
///
/// # Safety
/// The CPU has AVX-512F, BW and VL; `a` and `b` hold at least `out.len()` elements.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn unmask_sum_into(out: &mut [i32], a: &[u32], b: &[u32], c: u32) -> u32 {
    let c = _mm512_set1_epi64(i64::from(c));
    let mut max = _mm512_setzero_si512();
    for at in (0..out.len()).step_by(LANES) {
        let k = lanes(out.len() - at);
        // SAFETY: lanes of `k` lie inside `out`, `a` and `b` (the caller's contract).
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(a.as_ptr().wrapping_add(at + PREFETCH).cast());
            _mm_prefetch::<_MM_HINT_T0>(b.as_ptr().wrapping_add(at + PREFETCH).cast());
            let (av, bv) = (load(a, at, k), load(b, at, k));
            max = _mm512_max_epu32(max, _mm512_max_epu32(av, bv));
            // a + b mod p, canonical when both are (anything else never passes verification).
            let s = canonical(_mm512_add_epi32(av, bv));
            let (se, so) = mul_even_odd(s, c);
            _mm512_mask_storeu_epi32(out.as_mut_ptr().add(at).cast(), k, lift(reduce(se, so)));
        }
    }
    _mm512_reduce_max_epu32(max)
}

/// [`super::slices::fold_batch`]: sixteen positions at a time, every image's products summed
/// in registers (`i64` lanes), then reduced once.
///
/// # Safety
/// The CPU has AVX-512F, BW and VL; every plane of `xs` holds at least `out.len()` elements.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn fold_batch<T: SmallInt>(out: &mut [u32], w: &[u32], xs: &[&[T]]) {
    let p64 = _mm512_set1_epi64(i64::from(P));
    for at in (0..out.len()).step_by(LANES) {
        let n = (out.len() - at).min(LANES);
        let (mut lo, mut hi) = (_mm512_setzero_si512(), _mm512_setzero_si512());
        for (&wb, x) in w.iter().zip(xs) {
            let v = load_small(x, at, n);
            let wv = _mm512_set1_epi64(i64::from(wb));
            lo = _mm512_add_epi64(lo, _mm512_mul_epi32(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(v)), wv));
            hi = _mm512_add_epi64(hi, _mm512_mul_epi32(_mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64::<1>(v)), wv));
        }
        // |sum| < 2^63: reduce the magnitude, then negate where negative.
        let residue = |s: __m512i| {
            let neg = _mm512_cmplt_epi64_mask(s, _mm512_setzero_si512());
            let m = fold(fold(_mm512_abs_epi64(s))); // below 2^31 + 8
            let m = _mm512_min_epu64(m, _mm512_sub_epi64(m, p64));
            let minus = _mm512_sub_epi64(p64, m);
            let minus = _mm512_min_epu64(minus, _mm512_sub_epi64(minus, p64));
            _mm512_mask_blend_epi64(neg, m, minus)
        };
        let r = _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm512_cvtepi64_epi32(residue(lo))),
            _mm512_cvtepi64_epi32(residue(hi)),
        );
        // SAFETY: the first `n` lanes lie inside `out`.
        unsafe { _mm512_mask_storeu_epi32(out.as_mut_ptr().add(at).cast(), lanes(n), r) };
    }
}
