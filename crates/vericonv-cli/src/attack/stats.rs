//! Statistical tests of what a cloud receives: is it indistinguishable from uniform noise?
//!
//! - **Uniformity**: a χ² test on the top 8 bits of every received element (pooled, 255 degrees
//!   of freedom), and one per element position across images on the top 2 bits (3 degrees of
//!   freedom per position, summed).
//! - **Rank**: the rank of every received channel plane over F_p; a uniform plane has full rank
//!   with probability about `1 - 1/p`.
//! - **Correlation**: Pearson's correlation between the received elements and the plaintext
//!   elements they hide.
//!
//! p-values use the Wilson–Hilferty normal approximation of the χ² distribution, accurate to
//! about 10^-3 for the degrees of freedom here.

use serde::Serialize;

use super::linalg::Matrix;
use vericonv::P;

/// The results of the tests on one cloud's view of one layer.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ViewStats {
    /// Elements tested.
    pub elements: usize,
    /// χ² of the top 8 bits, pooled over all elements.
    pub chi2_high_bits: f64,
    /// Its degrees of freedom (255).
    pub chi2_high_bits_dof: usize,
    /// Its p-value (small: not uniform).
    pub chi2_high_bits_p: f64,
    /// χ² of the top 2 bits per element position across images, summed over positions.
    pub chi2_positions: f64,
    /// Its degrees of freedom (3 per position).
    pub chi2_positions_dof: usize,
    /// Its p-value.
    pub chi2_positions_p: f64,
    /// Channel planes tested for rank.
    pub planes: usize,
    /// Planes of full rank `min(H, W)`.
    pub full_rank_planes: usize,
    /// Pearson correlation between received and plaintext elements.
    pub correlation: f64,
    /// `4/√n`: a correlation above it would be a 4σ signal.
    pub correlation_4_sigma: f64,
}

/// Bucket probabilities of the top `bits` bits of a uniform element of [0, p): the last bucket
/// lacks the value p itself.
fn bucket_probs(bits: u32) -> Vec<f64> {
    let buckets = 1usize << bits;
    let width = (1u64 << 31) >> bits;
    let p = f64::from(P);
    (0..buckets).map(|b| if b + 1 == buckets { (width - 1) as f64 / p } else { width as f64 / p }).collect()
}

fn chi2(counts: &[u64], probs: &[f64], n: u64) -> f64 {
    counts
        .iter()
        .zip(probs)
        .map(|(&c, &pr)| {
            let e = pr * n as f64;
            (c as f64 - e).powi(2) / e
        })
        .sum()
}

/// The upper tail `P(χ²_k > x)`, Wilson–Hilferty.
pub fn chi2_p_value(x: f64, k: usize) -> f64 {
    if k == 0 {
        return 1.0;
    }
    let k = k as f64;
    let v = 2.0 / (9.0 * k);
    let z = ((x / k).powf(1.0 / 3.0) - (1.0 - v)) / v.sqrt();
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function (Numerical Recipes' Chebyshev fit, relative error below
/// 1.2·10^-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// Runs every test on `received` (`images × Cin × H × W` field elements) against `plain` (the
/// same shape, the plaintext each element hides).
pub fn view_stats(received: &[u32], plain: &[i32], image_len: usize, h: usize, w: usize) -> ViewStats {
    let n = received.len();
    let mut high = vec![0u64; 256];
    received.iter().for_each(|&v| high[(v >> 23) as usize] += 1);
    let chi2_high_bits = chi2(&high, &bucket_probs(8), n as u64);
    let images = n / image_len.max(1);
    let probs2 = bucket_probs(2);
    let chi2_positions: f64 = (0..image_len)
        .map(|pos| {
            let mut c = [0u64; 4];
            (0..images).for_each(|b| c[(received[b * image_len + pos] >> 29) as usize] += 1);
            chi2(&c, &probs2, images as u64)
        })
        .sum();
    let chi2_positions_dof = 3 * image_len;
    let planes: Vec<&[u32]> = received.chunks_exact(h * w).collect();
    let full = h.min(w);
    let full_rank_planes = planes.iter().filter(|p| Matrix::from_rows(w, p.chunks_exact(w)).rank() == full).count();
    ViewStats {
        elements: n,
        chi2_high_bits,
        chi2_high_bits_dof: 255,
        chi2_high_bits_p: chi2_p_value(chi2_high_bits, 255),
        chi2_positions,
        chi2_positions_dof,
        chi2_positions_p: chi2_p_value(chi2_positions, chi2_positions_dof),
        planes: planes.len(),
        full_rank_planes,
        correlation: pearson(received, plain),
        correlation_4_sigma: 4.0 / (n.max(1) as f64).sqrt(),
    }
}

/// Pearson's correlation of two equally long sequences (0 when either is constant).
fn pearson(a: &[u32], b: &[i32]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    if n < 2.0 {
        return 0.0;
    }
    let ma = a.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let mb = b.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (f64::from(x) - ma, f64::from(y) - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa == 0.0 || sbb == 0.0 { 0.0 } else { sab / (saa * sbb).sqrt() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chi2_tail_matches_known_quantiles() {
        // The 95% and 99.9% quantiles of χ²_255 are 293.25 and 330.52.
        assert!((chi2_p_value(293.25, 255) - 0.05).abs() < 0.002);
        assert!((chi2_p_value(330.52, 255) - 0.001).abs() < 0.0003);
        assert!((chi2_p_value(255.0, 255) - 0.48).abs() < 0.02);
    }
}
