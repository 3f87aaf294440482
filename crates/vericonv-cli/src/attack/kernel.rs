//! Kernel recovery from `K'` alone, in every mode (docs/scheme.md §9).
//!
//! Each slice `K'[o', cl', ·, ·]` is the plain slice `K[σ(o'), cl, ·, ·]` times the unknown scalar
//! `α[o']·β[c']^-1`. With integer weights bounded by `Bw`, the attacker takes the scalar that
//! maps the slice onto the smallest integers within `±Bw` ([`super::lowrank::decode_scaled`]
//! without the sign rule): the slice is then known up to sign. It is *unique* when exactly one
//! scalar (and its negative) maps the slice into the bound at all.

use vericonv::Conv2d;
use vericonv::{M31, PrimeField};

/// The attack's guess for one slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceRecovery {
    /// The slice mapped onto the smallest integers within the bound (up to sign), or `None` when
    /// no scalar maps it into the bound.
    pub slice: Option<Vec<i32>>,
    /// How many scalars up to sign map the slice into the bound (1: the guess is the only one).
    pub candidates: usize,
}

/// Recovers one slice `s` (field elements) of a kernel with weights bounded by `bound`.
pub fn recover_slice(s: &[u32], bound: u32) -> SliceRecovery {
    let Some(&z0) = s.iter().find(|&&v| v != 0) else {
        return SliceRecovery { slice: Some(vec![0; s.len()]), candidates: 1 };
    };
    let inv = M31::inv(z0);
    let mut best: Option<(Vec<i32>, u64)> = None;
    let mut candidates = 0;
    for x0 in 1..=bound {
        let f = M31::mul(x0, inv);
        let xs: Option<Vec<i32>> = s
            .iter()
            .map(|&v| {
                let x = M31::lift(M31::mul(v, f));
                (x.unsigned_abs() <= u64::from(bound)).then_some(x as i32)
            })
            .collect();
        let Some(xs) = xs else { continue };
        candidates += 1;
        let max = xs.iter().map(|x| u64::from(x.unsigned_abs())).max().unwrap_or(0);
        if best.as_ref().is_none_or(|(_, m)| max < *m) {
            best = Some((xs, max));
        }
    }
    SliceRecovery { slice: best.map(|(xs, _)| xs), candidates }
}

/// Recovers every slice of `K'` (`Cout × Cin/G × kh × kw`), in cloud order.
pub fn recover_kernel(geom: &Conv2d, kp: &[u32], bound: u32) -> Vec<SliceRecovery> {
    kp.chunks_exact(geom.kh() * geom.kw()).map(|s| recover_slice(s, bound)).collect()
}

/// True when `guess` equals `truth` or `-truth`.
pub fn equal_up_to_sign(guess: &[i32], truth: &[i32]) -> bool {
    guess == truth || guess.iter().zip(truth).all(|(&g, &t)| g == -t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaled(truth: &[i32], scale: u32) -> Vec<u32> {
        truth.iter().map(|&v| M31::mul(M31::embed(i64::from(v)).expect("small"), scale)).collect()
    }

    #[test]
    fn a_scaled_slice_is_recovered_up_to_sign_with_its_multiples_as_other_candidates() {
        let truth = [3, -7, 0, 12, 5, -1, 9, 2, -4];
        let r = recover_slice(&scaled(&truth, 123_456_789), 127);
        assert!(equal_up_to_sign(r.slice.as_deref().expect("recovered"), &truth));
        // k·truth fits in ±127 for k = 1..=10 (12·10 = 120): ten candidates.
        assert_eq!(r.candidates, 10);
        // With an entry above 63 only k = 1 fits: the slice is known for certain.
        let big = [3, -7, 0, 100, 5, -1, 9, 2, -4];
        let r = recover_slice(&scaled(&big, 987_654), 127);
        assert_eq!((r.slice.as_deref(), r.candidates), (Some(&big[..]), 1));
        assert_eq!(recover_slice(&[0, 0], 127).slice, Some(vec![0, 0]));
    }
}
