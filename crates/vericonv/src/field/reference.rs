//! The scalar specification of the slice operations of [`PrimeField`], generic over the field.
//!
//! They are the default implementations; [`M31`] overrides them with the vectorised
//! [`slices`] kernels, and tests check that both agree bit for bit.

// Some of these are the specification of kernels only the tests (and benchmarks) compare.
#![cfg_attr(not(any(test, feature = "internals")), allow(dead_code))]

use super::PrimeField;

/// `Σ a[i]·b[i] mod P`.
pub fn dot<F: PrimeField>(a: &[u32], b: &[u32]) -> u32 {
    F::reduce(a.iter().zip(b).fold(0u64, |acc, (&x, &y)| acc + F::fold_product(u64::from(x) * u64::from(y))))
}

/// `acc[i] += fold_product(c·x[i])`.
pub fn mul_acc<F: PrimeField>(acc: &mut [u64], c: u32, x: &[u32]) {
    for (a, &v) in acc.iter_mut().zip(x) {
        *a += F::fold_product(u64::from(c) * u64::from(v));
    }
}

/// `out[i] = reduce(acc[i])`.
pub fn reduce_into<F: PrimeField>(out: &mut [u32], acc: &[u64]) {
    for (o, &a) in out.iter_mut().zip(acc) {
        *o = F::reduce(a);
    }
}

/// `out[i] = Σ_k c_k·x_k[i] mod P` for `terms = [(c_k, x_k)]`.
pub fn combine_into<F: PrimeField>(out: &mut [u32], terms: &[(u32, &[u32])]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = terms.iter().fold(0, |acc, &(c, x)| x.get(i).map_or(acc, |&v| F::add(acc, F::mul(c, v))));
    }
}

/// `x[i] = c·x[i]·b[i] mod P`.
pub fn scale_mul_assign<F: PrimeField>(x: &mut [u32], c: u32, b: &[u32]) {
    for (v, &bv) in x.iter_mut().zip(b) {
        *v = F::mul(c, F::mul(*v, bv));
    }
}

/// `scaled[i] = c·x[i]` and `share_b[i] = scaled[i] - share_a[i] mod P`.
pub fn scale_and_split<F: PrimeField>(scaled: &mut [u32], share_b: &mut [u32], c: u32, x: &[u32], share_a: &[u32]) {
    for (((s, d), &v), &a) in scaled.iter_mut().zip(share_b.iter_mut()).zip(x).zip(share_a) {
        *s = F::mul(c, v);
        *d = F::sub(*s, a);
    }
}

/// `out[i] = lift(c·(a[i] + b[i]))`.
pub fn unmask_sum_into<F: PrimeField>(out: &mut [i32], a: &[u32], b: &[u32], c: u32) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = F::lift(F::mul(c, F::add(x, y))) as i32;
    }
}

/// `out[i] = lift(c·y[i] - Σ_k c_k·x_k[i])`: decryption's last step.
pub fn unmask_into<F: PrimeField>(out: &mut [i32], y: &[u32], c: u32, terms: &[(u32, &[u32])]) {
    let mut mk = vec![0u32; out.len()];
    combine_into::<F>(&mut mk, terms);
    for ((o, &yv), &m) in out.iter_mut().zip(y).zip(&mk) {
        *o = F::lift(F::sub(F::mul(c, yv), m)) as i32;
    }
}
