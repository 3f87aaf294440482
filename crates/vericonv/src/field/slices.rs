//! Vectorised slice kernels for [`M31`](super::M31), the client's hot loops.
//!
//! Every kernel is written once as plain scalar Rust and compiled several times by
//! [`multiversion`](mod@multiversion): for AVX2 on x86-64, for NEON on aarch64, and for the
//! baseline target; the best version the CPU supports is picked at run time, so one binary runs
//! everywhere. The 32×32→64-bit products vectorise to `vpmuludq` (four per AVX2 instruction),
//! and the Mersenne reduction is shifts, masks and adds, so the whole kernel stays in vector
//! registers.
//!
//! The hottest kernels (the fused linear combinations, encryption from small integers, the
//! decryption rows) also have hand-written AVX-512 versions, used when the CPU has it: a
//! 32×32→64-bit product per lane on sixteen lanes at once, lazily folded. The portable versions
//! stay the definition they are tested against.
//!
//! The generic scalar implementations in [`super::reference`] are the specification: tests check
//! that every kernel here matches them bit for bit.

use multiversion::multiversion;

#[cfg(target_arch = "x86_64")]
use super::avx512;

use super::{P, SmallInt};

const P64: u64 = P as u64;

/// Whether the AVX-512 kernels can run: F, BW and VL (the standard library caches the answer).
#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

/// Whether every term row holds at least `n` elements (the AVX-512F kernels read that many).
#[cfg(target_arch = "x86_64")]
fn terms_cover(terms: &[(u32, &[u32])], n: usize) -> bool {
    terms.iter().all(|(_, x)| x.len() >= n)
}

/// `x mod 2^31 + x / 2^31`: below 2^32 for a product of two elements (below 2^62).
#[inline(always)]
fn fold(x: u64) -> u64 {
    (x & P64) + (x >> 31)
}

/// The canonical residue of any `u64`, without branches.
#[inline(always)]
fn reduce(x: u64) -> u32 {
    let t = fold(fold(x)) as u32; // below 2^31 + 8
    t.min(t.wrapping_sub(P))
}

/// `Σ a[i]·b[i] mod p` over the common length.
pub fn dot(a: &[u32], b: &[u32]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        let n = a.len().min(b.len());
        // SAFETY: the CPU has AVX-512F; both slices hold `n` elements.
        return reduce(unsafe { avx512::dot_max(&a[..n], &b[..n]) }.0);
    }
    dot_portable(a, b)
}

/// [`dot`] without the AVX-512F kernel.
#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
pub(crate) fn dot_portable(a: &[u32], b: &[u32]) -> u32 {
    // Each folded product is below 2^32, so 2^32 of them fit in the u64 sum.
    reduce(a.iter().zip(b).fold(0u64, |acc, (&x, &y)| acc + fold(u64::from(x) * u64::from(y))))
}

/// `acc[i] += fold(c·x[i])`: lazy accumulation; `acc` must stay below 2^64, which allows 2^32
/// calls on a zeroed accumulator.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2", "aarch64+neon"))]
pub fn mul_acc(acc: &mut [u64], c: u32, x: &[u32]) {
    let c = u64::from(c);
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += fold(c * u64::from(v));
    }
}

/// `out[i] = acc[i] mod p`.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2", "aarch64+neon"))]
pub fn reduce_into(out: &mut [u32], acc: &[u64]) {
    for (o, &a) in out.iter_mut().zip(acc) {
        *o = reduce(a);
    }
}

/// `x[i] = c·x[i]·b[i] mod p`: two products per element.
#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
pub fn scale_mul_assign(x: &mut [u32], c: u32, b: &[u32]) {
    let c = u64::from(c);
    for (v, &bv) in x.iter_mut().zip(b) {
        *v = reduce(c * u64::from(reduce(u64::from(*v) * u64::from(bv))));
    }
}

/// The largest entry (0 for an empty slice): how every input is checked to be canonical.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2", "aarch64+neon"))]
pub fn max(v: &[u32]) -> u32 {
    v.iter().fold(0, |m, &x| m.max(x))
}

/// Cuts every entry to `mask` in place and returns the largest result: the share generator's
/// words, of which the value `mask` is rejected.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2", "aarch64+neon"))]
pub fn mask_max(v: &mut [u32], mask: u32) -> u32 {
    v.iter_mut().fold(0, |m, x| {
        *x &= mask;
        m.max(*x)
    })
}

/// Splits a plane into two shares in one pass: `scaled[i] = c·x[i]` and
/// `share_b[i] = scaled[i] - share_a[i] mod p`.
#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
pub fn scale_and_split(scaled: &mut [u32], share_b: &mut [u32], c: u32, x: &[u32], share_a: &[u32]) {
    let c = u64::from(c);
    for (((s, d), &v), &a) in scaled.iter_mut().zip(share_b.iter_mut()).zip(x).zip(share_a) {
        let y = reduce(c * u64::from(v));
        *s = y;
        let t = y + P - a; // in [1, 2p)
        *d = t.min(t.wrapping_sub(P));
    }
}

/// Mode `two-server`'s decryption, fused: `out[i] = lift(c·(a[i] + b[i]))`, the signed integer
/// in `[-(p-1)/2, (p-1)/2]` behind the sum of the two clouds' answers. Returns the largest entry
/// of `a` and `b` (for canonical entries; nothing else is specified for others).
pub fn unmask_sum_into(out: &mut [i32], a: &[u32], b: &[u32], c: u32) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() && a.len() >= out.len() && b.len() >= out.len() {
        // SAFETY: the CPU has AVX-512; `a` and `b` hold `out.len()` elements.
        return unsafe { avx512::unmask_sum_into(out, a, b, c) };
    }
    unmask_sum_into_portable(out, a, b, c)
}

/// [`unmask_sum_into`] without the AVX-512 kernel.
#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
pub(crate) fn unmask_sum_into_portable(out: &mut [i32], a: &[u32], b: &[u32], c: u32) -> u32 {
    let c = u64::from(c);
    let mut max = 0;
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        max = max.max(x).max(y);
        let d = reduce(c * u64::from(reduce(u64::from(x) + u64::from(y))));
        let neg = if d > (P - 1) / 2 { P } else { 0 };
        *o = d.wrapping_sub(neg) as i32;
    }
    max
}

/// Output elements per block of the fused kernels: a `u64` accumulator of this many lanes
/// stays in L1 while every term is added to it.
const BLOCK: usize = 64;

/// Adds `Σ_k fold(c_k·x_k[start + i])` to `acc[i]`.
#[inline(always)]
fn accumulate(acc: &mut [u64], terms: &[(u32, &[u32])], start: usize) {
    for &(c, x) in terms {
        let c = u64::from(c);
        for (a, &v) in acc.iter_mut().zip(x.get(start..).unwrap_or_default()) {
            *a += fold(c * u64::from(v));
        }
    }
}

/// A fused linear combination: `out[i] = Σ_k c_k·x_k[i] mod p` for `terms = [(c_k, x_k)]`, in
/// one pass over `out` (at most 2^32 terms; a term shorter than `out` contributes over its
/// length only).
pub fn combine_into(out: &mut [u32], terms: &[(u32, &[u32])]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() && terms_cover(terms, out.len()) {
        // SAFETY: the CPU has AVX-512F; every term holds `out.len()` elements.
        return unsafe { avx512::combine_into(out, terms) };
    }
    combine_into_portable(out, terms);
}

/// [`combine_into`] without the AVX-512F kernel.
#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
pub(crate) fn combine_into_portable(out: &mut [u32], terms: &[(u32, &[u32])]) {
    let mut acc = [0u64; BLOCK];
    for (blk, o) in out.chunks_mut(BLOCK).enumerate() {
        let acc = &mut acc[..o.len()];
        acc.fill(0);
        accumulate(acc, terms, blk * BLOCK);
        for (d, &a) in o.iter_mut().zip(acc.iter()) {
            *d = reduce(a);
        }
    }
}

/// Decryption's last step, fused: `out[i] = lift(c·y[i] - Σ_k c_k·x_k[i])`, the signed integer
/// in `[-(p-1)/2, (p-1)/2]`, for `terms = [(c_k, x_k)]` (the mask row). Returns the largest
/// entry of `y`, which tells a non-canonical answer (nothing else is specified for one).
pub fn unmask_into(out: &mut [i32], y: &[u32], c: u32, terms: &[(u32, &[u32])]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() && y.len() >= out.len() && terms_cover(terms, out.len()) {
        // SAFETY: the CPU has AVX-512; `y` and every term hold `out.len()` elements.
        return unsafe { avx512::unmask_into(out, y, c, terms) };
    }
    unmask_into_portable(out, y, c, terms)
}

/// [`unmask_into`] without the AVX-512 kernel.
#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
pub(crate) fn unmask_into_portable(out: &mut [i32], y: &[u32], c: u32, terms: &[(u32, &[u32])]) -> u32 {
    let mut acc = [0u64; BLOCK];
    let c = u64::from(c);
    let mut max = 0;
    for (blk, (o, yb)) in out.chunks_mut(BLOCK).zip(y.chunks(BLOCK)).enumerate() {
        let acc = &mut acc[..o.len()];
        acc.fill(0);
        accumulate(acc, terms, blk * BLOCK);
        for ((o, &yv), &m) in o.iter_mut().zip(yb).zip(acc.iter()) {
            max = max.max(yv);
            let d = reduce(c * u64::from(yv)) + P - reduce(m); // in [1, 2p)
            let d = d.min(d.wrapping_sub(P)); // canonical
            // Elements above (p-1)/2 stand for negative integers: subtract p (wrapping in i32).
            let neg = if d > (P - 1) / 2 { P } else { 0 };
            *o = d.wrapping_sub(neg) as i32;
        }
    }
    max
}

/// `Σ_i fold(a[i]·b[i])` over the common length — a lazy sum congruent to the dot product mod p
/// (each term below 2^33) — and the largest entry of `a`: verification's output side, which
/// must also tell a non-canonical answer.
pub fn dot_max(a: &[u32], b: &[u32]) -> (u64, u32) {
    let n = a.len().min(b.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU has AVX-512; both slices hold `n` elements.
        return unsafe { avx512::dot_max(&a[..n], &b[..n]) };
    }
    dot_max_portable(&a[..n], &b[..n])
}

/// [`dot_max`] without the AVX-512 kernel.
#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
pub(crate) fn dot_max_portable(a: &[u32], b: &[u32]) -> (u64, u32) {
    a.iter().zip(b).fold((0u64, 0u32), |(d, m), (&x, &y)| (d + fold(u64::from(x) * u64::from(y)), m.max(x)))
}

/// Checks the operands of the row kernels: `out` is whole rows of `wo > 0`, `src` covers it,
/// `coefs` has the same number of coefficients for every row, `q` holds that many rows.
fn rows_fit(out: usize, src: usize, coefs: usize, q: usize, wo: usize) -> Option<(usize, usize)> {
    let rows = out.checked_div(wo)?;
    let kk = coefs.checked_div(rows.max(1))?;
    let ok = out == rows * wo && src >= out && coefs == rows * kk && kk.checked_mul(wo).is_some_and(|n| q >= n);
    ok.then_some((rows, kk))
}

/// Decryption of `rows = out.len() / wo` consecutive output rows of one plane (rows of `wo`
/// elements) for mode `lowrank`'s separable mask: row `r` is `out[r] = lift(c·y[r] -
/// Σ_k coefs[r·K + k]·q[k])` with `K` mask rows `q` (`K × wo`) shared by every row and their
/// coefficients `coefs` (`rows × K`). Returns the largest entry of `y`, as [`unmask_into`].
///
/// # Panics
/// If the lengths do not fit together (a caller's bug).
pub fn unmask_rows(out: &mut [i32], y: &[u32], c: u32, coefs: &[u32], q: &[u32], wo: usize) -> u32 {
    let (_, kk) = rows_fit(out.len(), y.len(), coefs.len(), q.len(), wo).expect("unmask_rows operand sizes");
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU has AVX-512; the lengths were checked above.
        return unsafe { avx512::unmask_rows(out, y, c, coefs, q, wo) };
    }
    unmask_rows_portable(out, y, c, coefs, q, wo, kk)
}

/// [`unmask_rows`] without the AVX-512 kernel (`kk` coefficients per row).
pub(crate) fn unmask_rows_portable(
    out: &mut [i32],
    y: &[u32],
    c: u32,
    coefs: &[u32],
    q: &[u32],
    wo: usize,
    kk: usize,
) -> u32 {
    let mut terms: Vec<(u32, &[u32])> = Vec::with_capacity(kk);
    let mut max = 0;
    for (r, (o, yr)) in out.chunks_exact_mut(wo).zip(y.chunks_exact(wo)).enumerate() {
        terms.clear();
        terms.extend(coefs[r * kk..][..kk].iter().zip(q.chunks_exact(wo)).map(|(&ck, qk)| (ck, qk)));
        max = max.max(unmask_into_portable(o, yr, c, &terms));
    }
    max
}

/// Encryption of `rows = out.len() / wo` consecutive input rows of one plane from small
/// integers, for mode `lowrank`'s separable mask: `out[r] = c·x[r] + Σ_k coefs[r·K + k]·q[k]`
/// with `K` rows `q` (`K × wo`, the column factors) shared by every row and their coefficients
/// `coefs` (`rows × K`), `x[i]` embedded as `x[i] mod p`.
///
/// # Panics
/// If the lengths do not fit together (a caller's bug).
pub fn encrypt_rows<T: SmallInt>(out: &mut [u32], c: u32, x: &[T], coefs: &[u32], q: &[u32], wo: usize) {
    let (_, kk) = rows_fit(out.len(), x.len(), coefs.len(), q.len(), wo).expect("encrypt_rows operand sizes");
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU has AVX-512; the lengths were checked above.
        return unsafe { avx512::encrypt_rows(out, c, x, coefs, q, wo) };
    }
    encrypt_rows_portable(out, c, x, coefs, q, wo, kk);
}

/// [`encrypt_rows`] without the AVX-512 kernel.
pub(crate) fn encrypt_rows_portable<T: SmallInt>(
    out: &mut [u32],
    c: u32,
    x: &[T],
    coefs: &[u32],
    q: &[u32],
    wo: usize,
    kk: usize,
) {
    let mut terms: Vec<(u32, &[u32])> = Vec::with_capacity(kk);
    for (r, (o, xr)) in out.chunks_exact_mut(wo).zip(x.chunks_exact(wo)).enumerate() {
        terms.clear();
        terms.extend(coefs[r * kk..][..kk].iter().zip(q.chunks_exact(wo)).map(|(&ck, qk)| (ck, qk)));
        encrypt_small_into_portable(o, c, xr, &terms);
    }
}

/// `v mod p` for a signed `v` with `|v| <= (p-1)/2`, without branches.
#[inline(always)]
fn embed(v: i32) -> u32 {
    (v + ((v >> 31) & P as i32)) as u32
}

/// The largest magnitude `|x[i]|` (0 for an empty slice): how small-integer inputs are checked
/// against their bound.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2", "aarch64+neon"))]
pub fn max_abs_small<T: SmallInt>(x: &[T]) -> u32 {
    x.iter().fold(0u32, |m, &v| m.max(v.get().unsigned_abs()))
}

/// Encryption of one plane from small integers, fused: `out[i] = c·x[i] + Σ_k c_k·x_k[i] mod p`
/// for `|x[i]| <= (p-1)/2` (embedded as `x[i] mod p`) and `terms = [(c_k, x_k)]` (the mask
/// rows, or a pad). `x` and the `x_k` have `out.len()` entries.
pub fn encrypt_small_into<T: SmallInt>(out: &mut [u32], c: u32, x: &[T], terms: &[(u32, &[u32])]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() && x.len() >= out.len() && terms_cover(terms, out.len()) {
        // SAFETY: the CPU has AVX-512F; `x` and every term hold `out.len()` elements.
        return unsafe { avx512::encrypt_small_into(out, c, x, terms) };
    }
    encrypt_small_into_portable(out, c, x, terms);
}

/// [`encrypt_small_into`] without the AVX-512F kernel.
#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
pub(crate) fn encrypt_small_into_portable<T: SmallInt>(out: &mut [u32], c: u32, x: &[T], terms: &[(u32, &[u32])]) {
    let mut acc = [0u64; BLOCK];
    let c = u64::from(c);
    for (blk, (o, xb)) in out.chunks_mut(BLOCK).zip(x.chunks(BLOCK)).enumerate() {
        let acc = &mut acc[..o.len()];
        acc.fill(0);
        for (a, &v) in acc.iter_mut().zip(xb) {
            *a = fold(c * u64::from(embed(v.get())));
        }
        accumulate(acc, terms, blk * BLOCK);
        for (d, &a) in o.iter_mut().zip(acc.iter()) {
            *d = reduce(a);
        }
    }
}

/// Mode `two-server`'s share from small integers: `out[i] = c·x[i] - a[i] mod p`, with `x[i]`
/// embedded as `x[i] mod p` and `a` cloud A's share (canonical).
pub fn scale_sub_small<T: SmallInt>(out: &mut [u32], c: u32, x: &[T], a: &[u32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() && x.len() >= out.len() && a.len() >= out.len() {
        // SAFETY: the CPU has AVX-512F; `x` and `a` hold `out.len()` elements.
        return unsafe { avx512::scale_sub_small(out, c, x, a) };
    }
    scale_sub_small_portable(out, c, x, a);
}

/// [`scale_sub_small`] without the AVX-512F kernel.
#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
pub(crate) fn scale_sub_small_portable<T: SmallInt>(out: &mut [u32], c: u32, x: &[T], a: &[u32]) {
    let c = u64::from(c);
    for ((o, &v), &av) in out.iter_mut().zip(x).zip(a) {
        let t = reduce(c * u64::from(embed(v.get()))) + P - av; // in [1, 2p)
        *o = t.min(t.wrapping_sub(P));
    }
}

/// `acc[i] += w·x[i]` over the integers, exactly while `|acc|` stays below 2^63: each term is
/// below `2^31·|x[i]|`, so an accumulator holds 2^16 terms of 16-bit inputs.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2", "aarch64+neon"))]
pub fn fold_small<T: SmallInt>(acc: &mut [i64], w: u32, x: &[T]) {
    // w < 2^31 is a non-negative i32: both factors sign-extend, which is one vector multiply.
    let w = i64::from(w as i32);
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += w * i64::from(v.get());
    }
}

/// `out[i] = Σ_b w[b]·xs[b][i] mod p` for small-integer planes `xs` (each at least
/// `out.len()` long): verification's batch fold. Exact while `Σ_b |w_b·x_b[i]| < 2^63`, that is
/// for any batch of 8- or 16-bit inputs up to 2^16 images (the caller splits larger sums).
pub fn fold_batch<T: SmallInt>(out: &mut [u32], w: &[u32], xs: &[&[T]]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() && xs.iter().all(|x| x.len() >= out.len()) {
        // SAFETY: the CPU has AVX-512; every plane holds `out.len()` elements.
        return unsafe { avx512::fold_batch(out, w, xs) };
    }
    fold_batch_portable(out, w, xs);
}

/// [`fold_batch`] without the AVX-512 kernel.
pub(crate) fn fold_batch_portable<T: SmallInt>(out: &mut [u32], w: &[u32], xs: &[&[T]]) {
    let mut acc = [0i64; BLOCK];
    for (blk, o) in out.chunks_mut(BLOCK).enumerate() {
        let acc = &mut acc[..o.len()];
        acc.fill(0);
        for (&wb, x) in w.iter().zip(xs) {
            fold_small(acc, wb, &x[blk * BLOCK..]);
        }
        reduce_signed_into(o, acc);
    }
}

/// `out[i] = acc[i] mod p` for signed accumulators.
#[multiversion(targets("x86_64+avx512f+avx512bw+avx512vl+avx512dq", "x86_64+avx2", "aarch64+neon"))]
pub fn reduce_signed_into(out: &mut [u32], acc: &[i64]) {
    for (o, &a) in out.iter_mut().zip(acc) {
        let r = reduce(a.unsigned_abs());
        // -r mod p: p - r, except 0.
        let neg = P - r; // p for r = 0, which the `min` turns into 0
        *o = if a < 0 { neg.min(neg.wrapping_sub(P)) } else { r };
    }
}
