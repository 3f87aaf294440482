//! Vectorised slice kernels for [`M31`](super::M31), the client's hot loops.
//!
//! Every kernel is written once as plain scalar Rust and compiled several times by
//! [`multiversion`](mod@multiversion): for AVX2 on x86-64, for NEON on aarch64, and for the
//! baseline target; the best version the CPU supports is picked at run time, so one binary runs
//! everywhere. The 32×32→64-bit products vectorise to `vpmuludq` (four per AVX2 instruction),
//! and the Mersenne reduction is shifts, masks and adds, so the whole kernel stays in vector
//! registers.
//!
//! The generic scalar implementations in [`super::reference`] are the specification: tests check
//! that every kernel here matches them bit for bit.

use multiversion::multiversion;

use super::P;

const P64: u64 = P as u64;

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
#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
pub fn dot(a: &[u32], b: &[u32]) -> u32 {
    // Each folded product is below 2^32, so 2^32 of them fit in the u64 sum.
    reduce(a.iter().zip(b).fold(0u64, |acc, (&x, &y)| acc + fold(u64::from(x) * u64::from(y))))
}

/// `acc[i] += fold(c·x[i])`: lazy accumulation; `acc` must stay below 2^64, which allows 2^32
/// calls on a zeroed accumulator.
#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
pub fn mul_acc(acc: &mut [u64], c: u32, x: &[u32]) {
    let c = u64::from(c);
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += fold(c * u64::from(v));
    }
}

/// `out[i] = acc[i] mod p`.
#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
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
#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
pub fn max(v: &[u32]) -> u32 {
    v.iter().fold(0, |m, &x| m.max(x))
}

/// Cuts every entry to `mask` in place and returns the largest result: the share generator's
/// words, of which the value `mask` is rejected.
#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
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
/// in `[-(p-1)/2, (p-1)/2]` behind the sum of the two clouds' answers.
#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
pub fn unmask_sum_into(out: &mut [i32], a: &[u32], b: &[u32], c: u32) {
    let c = u64::from(c);
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        let d = reduce(c * u64::from(x + y)); // x + y < 2^32
        let neg = if d > (P - 1) / 2 { P } else { 0 };
        *o = d.wrapping_sub(neg) as i32;
    }
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
#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
pub fn combine_into(out: &mut [u32], terms: &[(u32, &[u32])]) {
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
/// in `[-(p-1)/2, (p-1)/2]`, for `terms = [(c_k, x_k)]` (the mask row).
#[multiversion(targets("x86_64+avx2", "aarch64+neon"))]
pub fn unmask_into(out: &mut [i32], y: &[u32], c: u32, terms: &[(u32, &[u32])]) {
    let mut acc = [0u64; BLOCK];
    let c = u64::from(c);
    for (blk, (o, yb)) in out.chunks_mut(BLOCK).zip(y.chunks(BLOCK)).enumerate() {
        let acc = &mut acc[..o.len()];
        acc.fill(0);
        accumulate(acc, terms, blk * BLOCK);
        for ((o, &yv), &m) in o.iter_mut().zip(yb).zip(acc.iter()) {
            let d = reduce(c * u64::from(yv)) + P - reduce(m); // in [1, 2p)
            let d = d.min(d.wrapping_sub(P)); // canonical
            // Elements above (p-1)/2 stand for negative integers: subtract p (wrapping in i32).
            let neg = if d > (P - 1) / 2 { P } else { 0 };
            *o = d.wrapping_sub(neg) as i32;
        }
    }
}
