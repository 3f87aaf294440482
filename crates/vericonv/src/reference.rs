//! The direct convolution of docs/scheme.md §3, written as literally as possible. It is the oracle
//! every faster path is tested against, over any [`PrimeField`], over `i64` and over `f32`.

use crate::Result;
use crate::field::PrimeField;
use crate::geometry::Conv2d;

/// `Y[b,o,y,x] = Σ_cl Σ_i Σ_j K[o,cl,i,j] · X[b, grp(o)·Cin/G + cl, y·sh + i·dh - pt, x·sw + j·dw - pl]`
/// with a caller-supplied multiply-accumulate `mac(acc, k, x)`.
///
/// # Errors
/// [`crate::Error::LengthMismatch`] when `k` or `x` do not match the geometry and batch.
pub fn conv_with<T: Copy>(
    g: &Conv2d,
    batch: usize,
    k: &[T],
    x: &[T],
    zero: T,
    mac: impl Fn(T, T, T) -> T,
) -> Result<Vec<T>> {
    Conv2d::check_len("kernel", g.kernel_len(), k.len())?;
    Conv2d::check_len("input", batch * g.image_len(), x.len())?;
    let (cpg, hw) = (g.cin_per_group(), g.h() * g.w());
    let mut y = Vec::with_capacity(batch * g.output_image_len());
    for b in 0..batch {
        for o in 0..g.cout() {
            let c0 = g.group_of_output(o) * cpg;
            for oy in 0..g.ho() {
                for ox in 0..g.wo() {
                    let mut acc = zero;
                    for cl in 0..cpg {
                        for i in 0..g.kh() {
                            let Some(r) = g.in_row(oy, i) else { continue };
                            for j in 0..g.kw() {
                                let Some(c) = g.in_col(ox, j) else { continue };
                                let kv = k[((o * cpg + cl) * g.kh() + i) * g.kw() + j];
                                let xv = x[(b * g.cin() + c0 + cl) * hw + r * g.w() + c];
                                acc = mac(acc, kv, xv);
                            }
                        }
                    }
                    y.push(acc);
                }
            }
        }
    }
    Ok(y)
}

/// The direct convolution over F_P.
///
/// # Errors
/// As [`conv_with`].
pub fn conv_field<F: PrimeField>(g: &Conv2d, batch: usize, k: &[u32], x: &[u32]) -> Result<Vec<u32>> {
    conv_with(g, batch, k, x, 0u32, |acc, a, b| F::add(acc, F::mul(a, b)))
}

/// The direct convolution over the integers: the plaintext result the client must recover.
///
/// # Errors
/// As [`conv_with`].
pub fn conv_i64(g: &Conv2d, batch: usize, k: &[i64], x: &[i64]) -> Result<Vec<i64>> {
    conv_with(g, batch, k, x, 0i64, |acc, a, b| acc + a * b)
}

/// The direct convolution in `f32`: the naive plaintext baseline.
///
/// # Errors
/// As [`conv_with`].
pub fn conv_f32(g: &Conv2d, batch: usize, k: &[f32], x: &[f32]) -> Result<Vec<f32>> {
    conv_with(g, batch, k, x, 0f32, |acc, a, b| acc + a * b)
}
