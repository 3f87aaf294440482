//! Prime-field arithmetic (docs/scheme.md §2).
//!
//! Elements are `u32` in `[0, p)`. Production code uses [`M31`], the Mersenne prime
//! p = 2^31 - 1, whose reduction is shift-and-add. [`SmallPrime`] runs the very same generic
//! code (reference convolution, verification) with a tiny modulus such as 97, so that the
//! soundness bounds `1/p` and `4/p` can be measured in tests.

use rand::{Rng, RngExt};

#[cfg(target_arch = "x86_64")]
mod avx512;
// The vectorised kernels and their scalar specification are internal; the `internals` feature
// makes them public for the criterion benchmarks, which time them against each other.
#[cfg(feature = "internals")]
pub mod reference;
#[cfg(not(feature = "internals"))]
pub(crate) mod reference;
#[cfg(feature = "internals")]
pub mod slices;
#[cfg(not(feature = "internals"))]
pub(crate) mod slices;

/// The production modulus, the Mersenne prime p = 2^31 - 1.
pub const P: u32 = (1 << 31) - 1;

/// A prime field with elements stored as canonical `u32` in `[0, P)`.
///
/// All methods take and return canonical elements. `P` must be below 2^31 so that the sum of
/// two elements fits in a `u32`.
pub trait PrimeField: Copy + Send + Sync + std::fmt::Debug + 'static {
    /// The modulus.
    const P: u32;

    /// The largest magnitude of a signed integer that embeds without ambiguity, `(P-1)/2`.
    const HALF: u32 = (Self::P - 1) / 2;

    /// Reduces any `u64` to its canonical residue.
    fn reduce(x: u64) -> u32;

    /// Partially reduces a product `a·b` (below 2^62) to a value below 2^33, congruent mod P,
    /// so that up to 2^31 of them can be summed in a `u64` before [`PrimeField::reduce`].
    #[inline(always)]
    fn fold_product(x: u64) -> u64 {
        u64::from(Self::reduce(x))
    }

    /// `a + b mod P`.
    #[inline(always)]
    fn add(a: u32, b: u32) -> u32 {
        let s = a + b;
        if s >= Self::P { s - Self::P } else { s }
    }

    /// `a - b mod P`.
    #[inline(always)]
    fn sub(a: u32, b: u32) -> u32 {
        if a >= b { a - b } else { a + Self::P - b }
    }

    /// `-a mod P`.
    #[inline(always)]
    fn neg(a: u32) -> u32 {
        if a == 0 { 0 } else { Self::P - a }
    }

    /// `a · b mod P`.
    #[inline(always)]
    fn mul(a: u32, b: u32) -> u32 {
        Self::reduce(u64::from(a) * u64::from(b))
    }

    /// `a^e mod P` by square-and-multiply.
    fn pow(mut a: u32, mut e: u64) -> u32 {
        let mut r = 1 % Self::P;
        while e > 0 {
            if e & 1 == 1 {
                r = Self::mul(r, a);
            }
            a = Self::mul(a, a);
            e >>= 1;
        }
        r
    }

    /// The inverse of a non-zero `a` (Fermat: `a^(P-2)`). Returns 0 for 0.
    fn inv(a: u32) -> u32 {
        Self::pow(a, u64::from(Self::P) - 2)
    }

    /// A uniform element of F_P.
    fn random<R: Rng + ?Sized>(rng: &mut R) -> u32;

    /// A uniform element of F_P^*.
    fn random_nonzero<R: Rng + ?Sized>(rng: &mut R) -> u32 {
        loop {
            let v = Self::random(rng);
            if v != 0 {
                return v;
            }
        }
    }

    /// Embeds a signed integer with `|v| <= (P-1)/2` as `v mod P`; `None` when out of range.
    #[inline(always)]
    fn embed(v: i64) -> Option<u32> {
        if v.unsigned_abs() > u64::from(Self::HALF) {
            None
        } else if v >= 0 {
            Some(v as u32)
        } else {
            Some((i64::from(Self::P) + v) as u32)
        }
    }

    /// Lifts an element back to the signed integer in `[-(P-1)/2, (P-1)/2]`.
    #[inline(always)]
    fn lift(u: u32) -> i64 {
        if u <= Self::HALF { i64::from(u) } else { i64::from(u) - i64::from(Self::P) }
    }

    /// `Σ a[i]·b[i] mod P` over two slices of equal length.
    #[inline]
    fn dot(a: &[u32], b: &[u32]) -> u32 {
        reference::dot::<Self>(a, b)
    }

    /// Lazy accumulation `acc[i] += fold_product(c·x[i])`; at most 2^31 calls on a zeroed `acc`
    /// before [`PrimeField::reduce_into`].
    #[inline]
    fn mul_acc(acc: &mut [u64], c: u32, x: &[u32]) {
        reference::mul_acc::<Self>(acc, c, x);
    }

    /// `out[i] = reduce(acc[i])`.
    #[inline]
    fn reduce_into(out: &mut [u32], acc: &[u64]) {
        reference::reduce_into::<Self>(out, acc);
    }
}

/// Small signed integers that the client encrypts as they are, without a copy into field
/// elements: quantized activations (`i8`, `i16`) and plain integers (`i32`). A value `v` with
/// `|v| <= (p-1)/2` embeds as `v mod p` ([`PrimeField::embed`]).
pub trait SmallInt: Copy + Send + Sync + sealed::Sealed + 'static {
    /// The value.
    fn get(self) -> i32;
}

mod sealed {
    /// What the AVX-512 kernels need of a [`super::SmallInt`]: sixteen values at once.
    pub trait Sealed: Sized {
        /// The lanes `k` of the sixteen values from `src`, sign-extended to 32 bits (the
        /// other lanes zero).
        ///
        /// # Safety
        /// The CPU has AVX-512F, BW and VL; the lanes of `k` lie inside one allocation from
        /// `src`.
        #[cfg(target_arch = "x86_64")]
        unsafe fn load16(src: *const Self, k: u16) -> core::arch::x86_64::__m512i;
    }

    #[cfg(target_arch = "x86_64")]
    use core::arch::x86_64::*;

    impl Sealed for i8 {
        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn load16(src: *const Self, k: u16) -> __m512i {
            // SAFETY: masked lanes are not read; the others are the caller's.
            unsafe { _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, src)) }
        }
    }
    impl Sealed for i16 {
        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn load16(src: *const Self, k: u16) -> __m512i {
            // SAFETY: masked lanes are not read; the others are the caller's.
            unsafe { _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(k, src)) }
        }
    }
    impl Sealed for i32 {
        #[cfg(target_arch = "x86_64")]
        #[inline]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
        unsafe fn load16(src: *const Self, k: u16) -> __m512i {
            // SAFETY: masked lanes are not read; the others are the caller's.
            unsafe { _mm512_maskz_loadu_epi32(k, src) }
        }
    }
}

impl SmallInt for i8 {
    #[inline(always)]
    fn get(self) -> i32 {
        i32::from(self)
    }
}

impl SmallInt for i16 {
    #[inline(always)]
    fn get(self) -> i32 {
        i32::from(self)
    }
}

impl SmallInt for i32 {
    #[inline(always)]
    fn get(self) -> i32 {
        self
    }
}

/// The Mersenne field F_p, p = 2^31 - 1: the production field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct M31;

impl PrimeField for M31 {
    const P: u32 = P;

    #[inline(always)]
    fn reduce(x: u64) -> u32 {
        // 2^31 ≡ 1 (mod p): fold the high bits onto the low ones twice, then one subtraction.
        let t = (x & u64::from(P)) + (x >> 31); // < 2^31 + 2^33
        let t = (t & u64::from(P)) + (t >> 31); // < 2^31 + 2^3
        let t = t as u32;
        if t >= P { t - P } else { t }
    }

    #[inline(always)]
    fn fold_product(x: u64) -> u64 {
        (x & u64::from(P)) + (x >> 31) // x < 2^62 gives < 2^31 + 2^31
    }

    #[inline]
    fn dot(a: &[u32], b: &[u32]) -> u32 {
        slices::dot(a, b)
    }

    #[inline]
    fn mul_acc(acc: &mut [u64], c: u32, x: &[u32]) {
        slices::mul_acc(acc, c, x);
    }

    #[inline]
    fn reduce_into(out: &mut [u32], acc: &[u64]) {
        slices::reduce_into(out, acc);
    }

    #[inline]
    fn random<R: Rng + ?Sized>(rng: &mut R) -> u32 {
        loop {
            let v = rng.next_u32() >> 1;
            if v != P {
                return v;
            }
        }
    }
}

/// A small prime field for measuring soundness (for example `SmallPrime<97>`).
///
/// Only the generic code paths (reference convolution, verification) run over it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmallPrime<const Q: u32>;

impl<const Q: u32> PrimeField for SmallPrime<Q> {
    const P: u32 = Q;

    #[inline(always)]
    fn reduce(x: u64) -> u32 {
        (x % u64::from(Q)) as u32
    }

    fn random<R: Rng + ?Sized>(rng: &mut R) -> u32 {
        rng.random_range(0..Q)
    }
}

/// Checks that every entry of `v` is a canonical element of F_P.
///
/// # Errors
/// [`crate::Error::NotAFieldElement`] naming the first offending entry.
pub fn check_canonical<F: PrimeField>(what: &'static str, v: &[u32]) -> crate::Result<()> {
    // The (vectorised) maximum first; the position is looked for only when there is an offender.
    if slices::max(v) < F::P {
        return Ok(());
    }
    match v.iter().position(|&x| x >= F::P) {
        None => Ok(()),
        Some(index) => Err(crate::Error::NotAFieldElement { what, index, value: v[index], p: F::P }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn m31_reduce_matches_modulo_on_edge_and_random_values() {
        let seed = 0x5eed_0001;
        println!("seed = {seed:#x}");
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let edges = [
            0,
            1,
            u64::from(P) - 1,
            u64::from(P),
            u64::from(P) + 1,
            (u64::from(P) - 1).pow(2),
            u64::MAX,
            u64::MAX - 1,
            1 << 62,
            (1 << 63) + 12345,
        ];
        for &x in edges.iter().chain((0..100_000).map(|_| rng.next_u64()).collect::<Vec<_>>().iter()) {
            assert_eq!(u64::from(M31::reduce(x)), x % u64::from(P), "x = {x}");
        }
    }

    #[test]
    fn m31_inverse_and_lift_roundtrip() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        for _ in 0..1000 {
            let a = M31::random_nonzero(&mut rng);
            assert_eq!(M31::mul(a, M31::inv(a)), 1);
        }
        for v in [0i64, 1, -1, i64::from(M31::HALF), -i64::from(M31::HALF), 127, -128] {
            assert_eq!(M31::lift(M31::embed(v).expect("in range")), v);
        }
        assert_eq!(M31::embed(i64::from(M31::HALF) + 1), None);
        assert_eq!(M31::embed(-i64::from(M31::HALF) - 1), None);
        assert_eq!(SmallPrime::<97>::lift(SmallPrime::<97>::embed(-48).expect("in range")), -48);
        assert_eq!(SmallPrime::<97>::embed(49), None);
    }

    #[test]
    fn dot_matches_naive_u128_sum() {
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let a: Vec<u32> = (0..5000).map(|_| M31::random(&mut rng)).collect();
        let mut b: Vec<u32> = (0..5000).map(|_| M31::random(&mut rng)).collect();
        b[0] = P - 1;
        let naive: u128 = a.iter().zip(&b).map(|(&x, &y)| u128::from(x) * u128::from(y)).sum();
        assert_eq!(u128::from(M31::dot(&a, &b)), naive % u128::from(P));
    }

    /// Random elements with the edge values 0, 1, p-2 and p-1 mixed in, of an odd length so
    /// that the vector loops' tails run too.
    fn elements(rng: &mut ChaCha20Rng, n: usize) -> Vec<u32> {
        (0..n).map(|i| if i % 7 == 3 { [0, 1, P - 2, P - 1][i % 4] } else { M31::random(rng) }).collect()
    }

    #[test]
    fn vectorised_slices_match_the_scalar_reference_bit_for_bit() {
        let seed = 0x5eed_0002;
        println!("seed = {seed:#x}");
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        for n in [0, 1, 7, 8, 9, 31, 1000, 4099] {
            let (a, b) = (elements(&mut rng, n), elements(&mut rng, n));
            assert_eq!(slices::dot(&a, &b), reference::dot::<M31>(&a, &b), "dot, n = {n}");
            let all_max = vec![P - 1; n];
            assert_eq!(slices::dot(&all_max, &all_max), reference::dot::<M31>(&all_max, &all_max), "dot max");
            for c in [0, 1, P - 1, M31::random(&mut rng)] {
                // Accumulators that already hold large partial sums.
                let start: Vec<u64> = (0..n).map(|_| rng.next_u64() >> 2).collect();
                let (mut fast, mut slow) = (start.clone(), start);
                slices::mul_acc(&mut fast, c, &a);
                reference::mul_acc::<M31>(&mut slow, c, &a);
                assert_eq!(fast, slow, "mul_acc, n = {n}, c = {c}");
                let mut big = fast.clone();
                big.iter_mut().enumerate().for_each(|(i, v)| *v |= if i % 5 == 0 { u64::MAX << 40 } else { 0 });
                let (mut s1, mut s2) = (a.clone(), a.clone());
                slices::scale_mul_assign(&mut s1, c, &b);
                reference::scale_mul_assign::<M31>(&mut s2, c, &b);
                assert_eq!(s1, s2, "scale_mul_assign, n = {n}, c = {c}");
                let (mut u1, mut u2) = (vec![0i32; n], vec![0i32; n]);
                slices::unmask_sum_into(&mut u1, &a, &b, c);
                reference::unmask_sum_into::<M31>(&mut u2, &a, &b, c);
                assert_eq!(u1, u2, "unmask_sum_into, n = {n}, c = {c}");
                let (mut x1, mut x2, mut d1, mut d2) = (vec![0u32; n], vec![0u32; n], vec![0u32; n], vec![0u32; n]);
                slices::scale_and_split(&mut x1, &mut d1, c, &a, &b);
                reference::scale_and_split::<M31>(&mut x2, &mut d2, c, &a, &b);
                assert_eq!((x1, d1), (x2, d2), "scale_and_split, n = {n}, c = {c}");
                let (mut r1, mut r2) = (vec![0u32; n], vec![0u32; n]);
                slices::reduce_into(&mut r1, &big);
                reference::reduce_into::<M31>(&mut r2, &big);
                assert_eq!(r1, r2, "reduce_into, n = {n}");
                // Up to 20 terms, with a short one, as encryption and decryption use them.
                let rows: Vec<Vec<u32>> = (0..20).map(|k| elements(&mut rng, if k == 3 { n / 2 } else { n })).collect();
                for count in [0, 1, 3, 20] {
                    let terms: Vec<(u32, &[u32])> = rows[..count]
                        .iter()
                        .enumerate()
                        .map(|(k, r)| (if k == 0 { c } else { P - 1 - k as u32 }, r.as_slice()))
                        .collect();
                    let (mut c1, mut c2) = (vec![0u32; n], vec![0u32; n]);
                    slices::combine_into(&mut c1, &terms);
                    reference::combine_into::<M31>(&mut c2, &terms);
                    assert_eq!(c1, c2, "combine_into, n = {n}, c = {c}, {count} terms");
                    let (mut u1, mut u2) = (vec![0i32; n], vec![0i32; n]);
                    slices::unmask_into(&mut u1, &b, c, &terms);
                    reference::unmask_into::<M31>(&mut u2, &b, c, &terms);
                    assert_eq!(u1, u2, "unmask_into, n = {n}, c = {c}, {count} terms");
                }
            }
        }
    }

    /// Small signed integers with the edges of their range mixed in.
    fn small<T: SmallInt>(rng: &mut ChaCha20Rng, n: usize, bound: i32, to: impl Fn(i32) -> T) -> Vec<T> {
        (0..n)
            .map(|i| to(if i % 5 == 2 { [bound, -bound, 0][i % 3] } else { rng.random_range(-bound..=bound) }))
            .collect()
    }

    /// [`slices::fold_batch`] and its portable twin on the first `len` elements of `planes`
    /// against the sum of [`M31`] products.
    fn assert_fold_batch<T: SmallInt>(planes: &[&[T]], ws: &[u32], len: usize, what: &str) {
        let want: Vec<u32> = (0..len)
            .map(|i| {
                planes.iter().zip(ws).fold(0, |acc, (p, &wb)| {
                    M31::add(acc, M31::mul(wb, M31::embed(i64::from(p[i].get())).expect("small")))
                })
            })
            .collect();
        for portable in [false, true] {
            let mut got = vec![0u32; len];
            if portable {
                slices::fold_batch_portable(&mut got, ws, planes);
            } else {
                slices::fold_batch(&mut got, ws, planes);
            }
            assert_eq!(got, want, "fold_batch ({portable}), {what}");
        }
    }

    /// The kernels of the client's hot path (each with its AVX-512F version where the CPU has
    /// it, and the portable one) against scalar definitions written with [`M31`]'s operations.
    #[test]
    fn hot_path_kernels_match_their_scalar_definitions_bit_for_bit() {
        let seed = 0x5eed_0003;
        println!("seed = {seed:#x}");
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let lift = |u: u32| M31::lift(u) as i32;
        for n in [0, 1, 7, 15, 16, 17, 33, 100, 1001] {
            let (y, b, v) = (elements(&mut rng, n), elements(&mut rng, n), elements(&mut rng, n));
            let rows: Vec<Vec<u32>> = (0..9).map(|_| elements(&mut rng, n)).collect();
            let x8 = small(&mut rng, n, 127, |v| v as i8);
            let x16 = small(&mut rng, n, 32767, |v| v as i16);
            let x32 = small(&mut rng, n, M31::HALF as i32, |v| v);
            for c in [0, 1, P - 1, M31::random(&mut rng)] {
                for count in [0, 1, 3, 4, 5, 9] {
                    let terms: Vec<(u32, &[u32])> = rows[..count]
                        .iter()
                        .enumerate()
                        .map(|(k, r)| (M31::mul(c, k as u32 + 2), r.as_slice()))
                        .collect();
                    let mask: Vec<u32> = (0..n)
                        .map(|i| terms.iter().fold(0, |acc, &(ck, xk)| M31::add(acc, M31::mul(ck, xk[i]))))
                        .collect();
                    // Encryption from small integers, three widths.
                    let want = |x: &dyn Fn(usize) -> i32| -> Vec<u32> {
                        (0..n)
                            .map(|i| M31::add(M31::mul(c, M31::embed(i64::from(x(i))).expect("small")), mask[i]))
                            .collect()
                    };
                    let (w8, w16, w32) = (want(&|i| i32::from(x8[i])), want(&|i| i32::from(x16[i])), want(&|i| x32[i]));
                    let mut o = vec![0u32; n];
                    slices::encrypt_small_into(&mut o, c, &x8, &terms);
                    assert_eq!(o, w8, "encrypt_small_into i8, n = {n}, {count} terms");
                    slices::encrypt_small_into_portable(&mut o, c, &x8, &terms);
                    assert_eq!(o, w8, "portable encrypt_small_into i8, n = {n}, {count} terms");
                    slices::encrypt_small_into(&mut o, c, &x16, &terms);
                    assert_eq!(o, w16, "encrypt_small_into i16, n = {n}");
                    slices::encrypt_small_into(&mut o, c, &x32, &terms);
                    assert_eq!(o, w32, "encrypt_small_into i32, n = {n}");
                    slices::combine_into_portable(&mut o, &terms);
                    assert_eq!(o, mask, "portable combine_into, n = {n}, {count} terms");
                    // A decryption row, and the largest entry of the answer.
                    let want_out: Vec<i32> = (0..n).map(|i| lift(M31::sub(M31::mul(c, y[i]), mask[i]))).collect();
                    let want_max = y.iter().copied().max().unwrap_or(0);
                    for portable in [false, true] {
                        let mut out = vec![0i32; n];
                        let max = if portable {
                            slices::unmask_into_portable(&mut out, &y, c, &terms)
                        } else {
                            slices::unmask_into(&mut out, &y, c, &terms)
                        };
                        assert_eq!(
                            (out, max),
                            (want_out.clone(), want_max),
                            "unmask_into ({portable}), n = {n}, {count} terms"
                        );
                    }
                }
                // Several rows of a plane sharing their mask rows, with per-row coefficients,
                // decrypted and encrypted.
                for (wo, kk) in [(n, 6), (1, 3), (n.div_ceil(3).max(1), 14)].into_iter().filter(|_| n > 0) {
                    let rows = n / wo;
                    let coefs: Vec<u32> =
                        (0..rows * kk).map(|i| if i % 5 == 1 { 0 } else { M31::random(&mut rng) }).collect();
                    let q = elements(&mut rng, kk * wo);
                    let mix = |r: usize, x: usize| {
                        (0..kk).fold(0, |acc, k| M31::add(acc, M31::mul(coefs[r * kk + k], q[k * wo + x])))
                    };
                    let mut want_out = vec![0i32; rows * wo];
                    let mut want_enc = vec![0u32; rows * wo];
                    for r in 0..rows {
                        for x in 0..wo {
                            let i = r * wo + x;
                            want_out[i] = lift(M31::sub(M31::mul(c, y[i]), mix(r, x)));
                            let e = M31::embed(i64::from(x16[i])).expect("small");
                            want_enc[i] = M31::add(M31::mul(c, e), mix(r, x));
                        }
                    }
                    let want_max = y[..rows * wo].iter().copied().max().unwrap_or(0);
                    for portable in [false, true] {
                        let (mut out, mut enc) = (vec![0i32; rows * wo], vec![0u32; rows * wo]);
                        let max = if portable {
                            slices::encrypt_rows_portable(&mut enc, c, &x16[..rows * wo], &coefs, &q, wo, kk);
                            slices::unmask_rows_portable(&mut out, &y, c, &coefs, &q, wo, kk)
                        } else {
                            slices::encrypt_rows(&mut enc, c, &x16[..rows * wo], &coefs, &q, wo);
                            slices::unmask_rows(&mut out, &y, c, &coefs, &q, wo)
                        };
                        assert_eq!(
                            (out, max),
                            (want_out.clone(), want_max),
                            "unmask_rows ({portable}), {rows}×{wo}, K = {kk}"
                        );
                        assert_eq!(enc, want_enc, "encrypt_rows ({portable}), {rows}×{wo}, K = {kk}");
                    }
                }
                // Mode two-server's decryption.
                let sum: Vec<u32> = y.iter().zip(&b).map(|(&p, &q)| M31::add(p, q)).collect();
                let want_out: Vec<i32> = sum.iter().map(|&s| lift(M31::mul(c, s))).collect();
                let want_max = y.iter().chain(&b).copied().max().unwrap_or(0);
                for portable in [false, true] {
                    let mut out = vec![0i32; n];
                    let max = if portable {
                        slices::unmask_sum_into_portable(&mut out, &y, &b, c)
                    } else {
                        slices::unmask_sum_into(&mut out, &y, &b, c)
                    };
                    assert_eq!((out, max), (want_out.clone(), want_max), "unmask_sum_into ({portable}), n = {n}");
                }
                // Cloud B's share from small integers.
                let want: Vec<u32> =
                    (0..n).map(|i| M31::sub(M31::mul(c, M31::embed(i64::from(x8[i])).expect("small")), b[i])).collect();
                let mut o = vec![0u32; n];
                slices::scale_sub_small(&mut o, c, &x8, &b);
                assert_eq!(o, want, "scale_sub_small, n = {n}");
                slices::scale_sub_small_portable(&mut o, c, &x8, &b);
                assert_eq!(o, want, "portable scale_sub_small, n = {n}");
                // The batch fold of verification's input side, and its reduction.
                let mut acc = vec![0i64; n];
                slices::fold_small(&mut acc, c, &x16);
                slices::fold_small(&mut acc, P - 1 - c, &x32);
                let mut folded = vec![0u32; n];
                slices::reduce_signed_into(&mut folded, &acc);
                let want: Vec<u32> = (0..n)
                    .map(|i| {
                        let e = |v: i32| M31::embed(i64::from(v)).expect("small");
                        M31::add(M31::mul(c, e(i32::from(x16[i]))), M31::mul(P - 1 - c, e(x32[i])))
                    })
                    .collect();
                assert_eq!(folded, want, "fold_small + reduce_signed_into, n = {n}");
                // The batch fold of 16-bit planes, three images.
                let planes = [&x16[..], &x16[n / 2..], &x16[n / 3..]];
                let ws = [c, P - 1 - c, M31::random(&mut rng)];
                assert_fold_batch(&planes, &ws, n - n / 2, &format!("16 bits, n = {n}"));
                // The batch fold of 8-bit planes, with the extremes -128 and 127 under the largest
                // weight.
                let extremes = [vec![-128i8; n], vec![127i8; n]];
                let bytes: Vec<Vec<i8>> = (0..17).map(|_| (0..n).map(|_| rng.random::<i8>()).collect()).collect();
                // 4101 images: large sums in the 64-bit accumulators.
                for images in [1, 2, 3, 4, 5, 8, 9, 17, 4101] {
                    let planes: Vec<&[i8]> =
                        extremes.iter().chain(&bytes).cycle().take(images).map(Vec::as_slice).collect();
                    let ws: Vec<u32> = (0..images).map(|b| if b < 2 { P - 1 } else { M31::random(&mut rng) }).collect();
                    assert_fold_batch(&planes, &ws, n, &format!("8 bits, n = {n}, {images} images"));
                }
            }
            assert_eq!(slices::dot(&y, &v), reference::dot::<M31>(&y, &v), "dot, n = {n}");
            let want = (reference::dot::<M31>(&y, &v), y.iter().copied().max().unwrap_or(0));
            let (d, m) = slices::dot_max(&y, &v);
            assert_eq!((M31::reduce(d), m), want, "dot_max, n = {n}");
            let (d, m) = slices::dot_max_portable(&y, &v);
            assert_eq!((M31::reduce(d), m), want, "portable dot_max, n = {n}");
            assert_eq!(slices::dot_portable(&y, &v), reference::dot::<M31>(&y, &v), "portable dot, n = {n}");
            let want = x16.iter().map(|v| v.unsigned_abs() as u32).max().unwrap_or(0);
            assert_eq!(slices::max_abs_small(&x16), want, "max_abs_small, n = {n}");
        }
    }

    #[test]
    fn sampling_is_canonical_and_hits_both_ends() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let mut seen = [false; 97];
        for _ in 0..20_000 {
            let v = SmallPrime::<97>::random(&mut rng);
            seen[v as usize] = true;
            assert!(M31::random(&mut rng) < P);
        }
        assert!(seen.iter().all(|&s| s), "every residue of F_97 is drawn");
    }
}
