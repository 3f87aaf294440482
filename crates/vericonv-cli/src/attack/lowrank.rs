//! Input recovery against mode `lowrank` (docs/scheme.md §9), from `X'` alone.
//!
//! Each cloud channel plane of one image is `P_c = β_c·X_c + A·D_c·Cᵀ`, where the row factors
//! `A = [a_1..a_ρ]` and column factors `C = [c_1..c_ρ]` are shared by every channel of the image.
//! Wherever `X_c` equals a constant `q_c` (background, post-ReLU zeros) the plane equals the
//! low-rank part `L_c = β_c·q_c·J + A·D_c·Cᵀ`, whose rows lie in `V̄ = span(1, c_t)` and whose
//! columns lie in `Ū = span(1, a_t)`. The attack:
//!
//! 1. **Locates constant lines.** In a square block of lines (a channel plane, or lines drawn
//!    from several channels), more than `dim V̄` constant lines make the block singular, and the
//!    left null space is supported on them: foreground lines are independent of each other and of
//!    `V̄`, but for rare coincidences (two foreground lines equal up to the mask). These are the
//!    vanishing minors, found all at once by one elimination.
//! 2. **Recovers the factor spaces** `V̄` (from constant rows) and `Ū` (from constant columns),
//!    pooled over the channels, which share them: the span of a few candidate lines that holds
//!    the most lines of the image, at the smallest dimension where a span holds more than the
//!    lines that make it (which also rules out the coincidences). Every constant line of every
//!    channel then passes a membership test.
//! 3. **Subtracts them.** Each row of `L_c` is a combination of `V̄`'s basis whose coefficients
//!    follow from the constant columns (exactly), or, lacking those, from the combination that
//!    zeroes the most entries of the row (a randomised search, exact in F_p). The same holds for
//!    columns with `Ū`. Then `P_c - L_c = β_c·(X_c - q_c)`.
//! 4. **Removes the offset and fixes β.** `L_c - β_c·q_c·J` has rank ρ, one less than `L_c`: the
//!    matrix determinant lemma gives `β_c·q_c` from one invertible block. `β_c` is the scalar
//!    that maps the plane onto the smallest integers within the activation bound; the sign, which
//!    `X'` cannot fix (`-β`, `-X` and `-R` give the same `X'`), is the one that makes a plane
//!    non-negative when one does (post-ReLU activations), else the one that makes the foreground
//!    brighter than the most common value (images on a dark background).
//!
//! The attacker needs neither ρ nor any secret: the dimensions come out of the data.

use rand::Rng;
use rand::seq::index::sample_weighted;

use super::linalg::{Matrix, Subspace, inverse, solve_left};
use vericonv::{M31, PrimeField};

/// Random square blocks of lines drawn across channels, per orientation.
const MIXED_TRIALS: usize = 48;
/// Candidates sampled to pre-screen a span before counting its members among all of them.
const PRESCREEN: usize = 48;
/// Candidate spans tried per dimension.
const SPACE_TRIALS: usize = 300;
/// The span search of one dimension stops this many trials after its last improvement.
const SPACE_PATIENCE: usize = 16;
/// The largest mask rank the attack looks for (the client's ρ is secret, but a larger one costs
/// it more than it buys: see docs/privacy.md).
const MAX_DIM: usize = 16;
/// The most candidate combinations tried for one line of the randomised search.
const MAX_LINE_TRIALS: usize = 400;
/// The search stops this many trials after its last improvement.
const PATIENCE: usize = 40;
/// A plane none of whose first lines fits is given up.
const GIVE_UP: usize = 6;

/// What the attack recovered from one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputRecovery {
    /// Per pixel of `Cin × H × W`, in cloud channel order: the recovered integer, or `None`
    /// where the attack found nothing.
    pub pixels: Vec<Option<i32>>,
    /// Dimension of the recovered row-factor space `V̄` (0 when not found).
    pub row_space_dim: usize,
    /// Dimension of the recovered column-factor space `Ū` (0 when not found).
    pub col_space_dim: usize,
}

/// The lines of every channel plane of one image in one orientation.
struct Lines {
    /// `channels × per_channel` vectors of length `len`.
    data: Vec<Vec<u32>>,
    per_channel: usize,
    len: usize,
}

impl Lines {
    fn rows(xp: &[u32], cin: usize, h: usize, w: usize) -> Self {
        let data = (0..cin * h).map(|cy| xp[cy * w..(cy + 1) * w].to_vec()).collect();
        Self { data, per_channel: h, len: w }
    }

    fn cols(xp: &[u32], cin: usize, h: usize, w: usize) -> Self {
        let data = (0..cin * w).map(|cx| (0..h).map(|y| xp[(cx / w * h + y) * w + cx % w]).collect()).collect();
        Self { data, per_channel: w, len: h }
    }
}

/// The lines among `idx` that take part in a dependency of their block: the support of its left
/// null space. Constant lines, and the rare foreground lines that happen to be dependent.
fn dependent_lines(lines: &Lines, idx: &[usize]) -> Vec<usize> {
    let m = Matrix::from_rows(lines.len, idx.iter().map(|&i| lines.data[i].as_slice()));
    let null = m.left_null_space();
    (0..idx.len()).filter(|&k| null.iter().any(|z| z[k] != 0)).map(|k| idx[k]).collect()
}

/// The attacker's prior: lines near the edges of a plane (line `k` of `count`) are more often
/// background.
fn edge_weight(k: usize, count: usize) -> f64 {
    let edge = k.min(count - 1 - k) as f64;
    1.0 / (1.0 + edge).powi(2)
}

/// Step 1–2: the space spanned by the constant lines of one orientation, pooled over channels.
///
/// Candidates are the dependent lines of square blocks (each channel plane, and blocks drawn
/// across channels). A few foreground lines may be among them, so the space is the span of `d`
/// candidates that contains the most lines of the whole image, for the smallest `d` at which some
/// span contains at least two lines beyond its own `d`: below the true dimension a span of
/// generic constant lines holds no other line, at it the span holds every constant line.
fn factor_space(lines: &Lines, channels: usize, rng: &mut impl Rng) -> Option<Subspace> {
    let n = lines.len;
    let mut cand: Vec<usize> = Vec::new();
    for c in 0..channels {
        let idx: Vec<usize> = (c * lines.per_channel..(c + 1) * lines.per_channel).collect();
        if idx.len() <= n {
            cand.extend(dependent_lines(lines, &idx));
        }
    }
    let total = lines.data.len();
    if channels > 1 {
        // Half the blocks favour lines near the edges, where constant lines are likelier.
        for trial in 0..MIXED_TRIALS {
            let idx = if trial % 2 == 0 {
                rand::seq::index::sample(rng, total, n.min(total)).into_vec()
            } else {
                match sample_weighted(
                    rng,
                    total,
                    |i| edge_weight(i % lines.per_channel, lines.per_channel),
                    n.min(total),
                ) {
                    Ok(idx) => idx.into_vec(),
                    Err(_) => continue,
                }
            };
            cand.extend(dependent_lines(lines, &idx));
        }
    }
    cand.sort_unstable();
    cand.dedup();
    let max_dim =
        Subspace::span(n, cand.iter().map(|&i| lines.data[i].as_slice())).dim().min(n.saturating_sub(2)).min(MAX_DIM);
    let weight: Vec<f64> = cand.iter().map(|&i| edge_weight(i % lines.per_channel, lines.per_channel)).collect();
    for d in 1..=max_dim {
        let mut best: Option<(Subspace, usize)> = None;
        let mut since = 0;
        for _ in 0..SPACE_TRIALS {
            since += 1;
            let Ok(pick) = sample_weighted(rng, cand.len(), |k| weight[k], d) else { break };
            let space = Subspace::span(n, pick.iter().map(|k| lines.data[cand[k]].as_slice()));
            if space.dim() < d {
                continue;
            }
            // The candidates hold most constant lines: counting among them ranks the spans. A
            // span with no member among a sample of them beyond its own lines is passed over.
            let sample = rand::seq::index::sample(rng, cand.len(), PRESCREEN.min(cand.len()));
            let own = pick.iter().collect::<std::collections::HashSet<_>>();
            if !sample.iter().any(|k| !own.contains(&k) && space.contains(&lines.data[cand[k]])) {
                continue;
            }
            let members = cand.iter().filter(|&&i| space.contains(&lines.data[i])).count();
            if members >= d + 2 && best.as_ref().is_none_or(|(_, m)| members > *m) {
                best = Some((space, members));
                since = 0;
            }
            if best.is_some() && since >= SPACE_PATIENCE {
                break;
            }
        }
        if let Some((space, _)) = best {
            return Some(space);
        }
    }
    None
}

/// The basis a line is fitted in: the mask space, plus the all-ones direction when the space
/// does not hold it.
struct LineBasis {
    vectors: Vec<Vec<u32>>,
    /// True when the space found was the pure mask space `span(c_t)`: the last vector is then
    /// the all-ones direction, which belongs to the data (each line's own constant), not to the
    /// mask. False when the space already held the ones direction (`span(1, c_t)`, a single
    /// constant everywhere), whose share of each line is then fixed by [`offset`].
    pure: bool,
}

impl LineBasis {
    /// The basis for lines in `space`, found from `lines`.
    ///
    /// The member lines of a channel are its data content (a constant, or any content that
    /// repeats along the channel, such as a background band between padding rings) plus mask, so
    /// their differences are pure mask: the differences within each channel span the mask space
    /// `span(c_t)`. When they span all of `space`, `space` is pure; when they span one dimension
    /// less, `space` held one data direction and the differences are the pure space. With too
    /// few members to tell, both readings are returned, the smaller first; a space with the ones
    /// direction and no smaller reading is taken as holding a single constant, which [`offset`]
    /// removes.
    fn candidates(lines: &Lines, space: &Subspace) -> Vec<Self> {
        let n = space.len();
        let ones = vec![1u32; n];
        let basis_of = |s: &Subspace| -> Vec<Vec<u32>> { (0..s.dim()).map(|k| s.basis_vector(k).to_vec()).collect() };
        let pure = |s: &Subspace| {
            let mut vectors = basis_of(s);
            vectors.push(ones.clone());
            Self { vectors, pure: true }
        };
        let mut diffs: Vec<Vec<u32>> = Vec::new();
        for channel in lines.data.chunks(lines.per_channel) {
            let members: Vec<&Vec<u32>> = channel.iter().filter(|v| space.contains(v)).collect();
            if let Some((first, rest)) = members.split_first() {
                diffs.extend(rest.iter().map(|v| v.iter().zip(first.iter()).map(|(&a, &b)| M31::sub(a, b)).collect()));
            }
        }
        let d = space.dim();
        let mask = Subspace::span(n, diffs.iter().map(Vec::as_slice));
        let smaller = mask.dim() + 1 == d && !mask.is_empty() && !mask.contains(&ones);
        if smaller && diffs.len() >= d {
            return vec![pure(&mask)];
        }
        let whole = if mask.dim() == d || !space.contains(&ones) {
            pure(space)
        } else {
            Self { vectors: basis_of(space), pure: false }
        };
        if smaller { vec![pure(&mask), whole] } else { vec![whole] }
    }

    /// The mask's share of a line with coefficients `coef`, at position `j`.
    fn mask_at(&self, coef: &[u32], j: usize) -> u32 {
        let k = if self.pure { self.vectors.len() - 1 } else { self.vectors.len() };
        (0..k).fold(0, |acc, i| M31::add(acc, M31::mul(coef[i], self.vectors[i][j])))
    }
}

/// Fits line `v` in `basis`: the coefficients that reproduce `v` at the most positions (at least
/// `dim + 1`, one more than were fitted, so that a coincidence is negligible), from `dim`-subsets
/// of positions drawn with `weights`. Those positions are where the data is constant along the
/// line. Returns the coefficients and the positions reproduced.
fn fit_line(v: &[u32], basis: &LineBasis, weights: &[f64], rng: &mut impl Rng) -> Option<(Vec<u32>, Vec<bool>)> {
    let (d, n) = (basis.vectors.len(), v.len());
    if d + 1 > n {
        return None;
    }
    let value = |coef: &[u32], j: usize| {
        coef.iter().enumerate().fold(0, |acc, (i, &c)| M31::add(acc, M31::mul(c, basis.vectors[i][j])))
    };
    let mut best: Option<(Vec<u32>, usize)> = None;
    let mut since = 0;
    for _ in 0..MAX_LINE_TRIALS {
        let Ok(pos) = sample_weighted(rng, n, |i| weights[i], d) else { return None };
        let a: Vec<Vec<u32>> = basis.vectors.iter().map(|b| pos.iter().map(|p| b[p]).collect()).collect();
        let rhs: Vec<u32> = pos.iter().map(|p| v[p]).collect();
        since += 1;
        if let Some(coef) = solve_left(&a, &rhs) {
            let hits = (0..n).filter(|&j| value(&coef, j) == v[j]).count();
            if best.as_ref().is_none_or(|(_, z)| hits > *z) {
                best = Some((coef, hits));
                since = 0;
            }
        }
        let good = best.as_ref().map_or(0, |(_, z)| *z);
        if good == n || (since >= PATIENCE && good > d) {
            break;
        }
    }
    let (coef, hits) = best?;
    if hits <= d {
        return None;
    }
    let hit = (0..n).map(|j| value(&coef, j) == v[j]).collect();
    Some((coef, hit))
}

/// One orientation's recovery of a plane: `data[i] = β·X[i]` (or `β·(X[i] - q)` when the basis
/// was not pure) where `known[i]`.
struct Recovered {
    data: Vec<u32>,
    known: Vec<bool>,
    /// The coefficients of each fitted line, in its basis.
    coefs: Vec<Option<Vec<u32>>>,
}

/// Step 3 for one channel plane `p` (`h × w`), line by line along rows (`rows`) or columns,
/// favouring positions that were constant in the lines fitted before.
fn recover_plane(p: &[u32], h: usize, w: usize, basis: &LineBasis, rows: bool, rng: &mut impl Rng) -> Recovered {
    let (count, len) = if rows { (h, w) } else { (w, h) };
    let at = |i: usize, j: usize| if rows { i * w + j } else { j * w + i };
    let mut out = Recovered { data: vec![0; h * w], known: vec![false; h * w], coefs: vec![None; count] };
    let mut weights = vec![1.0f64; len];
    for i in 0..count {
        // A basis that fits none of the first lines fits none: give the plane up.
        if i >= GIVE_UP && out.coefs.iter().all(Option::is_none) {
            break;
        }
        let v: Vec<u32> = (0..len).map(|j| p[at(i, j)]).collect();
        let Some((coef, hit)) = fit_line(&v, basis, &weights, rng) else { continue };
        for (j, &z) in hit.iter().enumerate() {
            if z {
                weights[j] += 4.0;
            }
            out.data[at(i, j)] = M31::sub(v[j], basis.mask_at(&coef, j));
            out.known[at(i, j)] = true;
        }
        out.coefs[i] = Some(coef);
    }
    out
}

/// Step 4a: `κ = β·q`, the constant whose removal from the low-rank matrix `m` (whose lines are
/// mask plus `β·q`) lowers its rank by one (the matrix determinant lemma on one invertible
/// block), or 0 when there is none.
fn offset(m: &Matrix) -> u32 {
    let pcols = m.clone().rref();
    let prows = m.transpose().rref();
    let r = pcols.len();
    if r == 0 {
        return 0;
    }
    let mut a = Matrix::zeros(r, r);
    for (i, &pr) in prows.iter().enumerate() {
        for (j, &pc) in pcols.iter().enumerate() {
            a.set(i, j, m.get(pr, pc));
        }
    }
    let Some(inv) = inverse(&a) else { return 0 };
    // det(A - κ·J) = det(A)·(1 - κ·1ᵀA⁻¹1): zero at κ = 1 / (1ᵀA⁻¹1).
    let s = (0..r).fold(0, |acc, i| (0..r).fold(acc, |acc, j| M31::add(acc, inv.get(i, j))));
    if s == 0 {
        return 0;
    }
    let kappa = M31::inv(s);
    let mut shifted = m.clone();
    for i in 0..m.rows() {
        for j in 0..m.cols() {
            shifted.set(i, j, M31::sub(m.get(i, j), kappa));
        }
    }
    if shifted.rank() + 1 == r { kappa } else { 0 }
}

/// The low-rank part `P - data` of the lines of one plane that were fully recovered.
fn low_rank_lines(p: &[u32], rec: &Recovered, h: usize, w: usize, rows: bool) -> Matrix {
    let (count, len) = if rows { (h, w) } else { (w, h) };
    let at = |i: usize, j: usize| if rows { i * w + j } else { j * w + i };
    let lines: Vec<Vec<u32>> = (0..count)
        .filter(|&i| (0..len).all(|j| rec.known[at(i, j)]))
        .map(|i| (0..len).map(|j| M31::sub(p[at(i, j)], rec.data[at(i, j)])).collect())
        .collect();
    Matrix::from_rows(len, lines.iter().map(Vec::as_slice))
}

/// The mask coefficients of a line fitted in a pure basis (its last coefficient is the line's
/// constant, which belongs to the data).
fn mask_coefs(coef: &[u32]) -> &[u32] {
    &coef[..coef.len() - 1]
}

/// `T` with `μ_a[i] = T·μ_b[i]` for every line `i` fitted in both channels, where `μ` are the
/// lines' mask coefficients: both are `N_c·v_i` for the image's shared factor `v_i` and a
/// per-channel `N_c`, so `T = N_a·N_b⁻¹`, solved on `ρ` common lines and checked on the rest.
fn transfer_matrix(a: &Recovered, b: &Recovered, rho: usize) -> Option<Matrix> {
    let common: Vec<usize> = (0..a.coefs.len()).filter(|&i| a.coefs[i].is_some() && b.coefs[i].is_some()).collect();
    let mu = |r: &Recovered, i: usize| r.coefs[i].as_deref().map(mask_coefs).unwrap_or_default().to_vec();
    let mut chosen: Vec<usize> = Vec::new();
    for &i in &common {
        if chosen.len() == rho {
            break;
        }
        let mut trial: Vec<Vec<u32>> = chosen.iter().map(|&k| mu(b, k)).collect();
        trial.push(mu(b, i));
        if Matrix::from_rows(rho, trial.iter().map(Vec::as_slice)).rank() == trial.len() {
            chosen.push(i);
        }
    }
    if chosen.len() < rho {
        return None;
    }
    // With the chosen μ_b as the rows of B and their μ_a as the rows of A: A = B·Tᵀ.
    let rows_b: Vec<Vec<u32>> = chosen.iter().map(|&k| mu(b, k)).collect();
    let inv_b = inverse(&Matrix::from_rows(rho, rows_b.iter().map(Vec::as_slice)))?;
    let rows_a: Vec<Vec<u32>> = chosen.iter().map(|&k| mu(a, k)).collect();
    let ma = Matrix::from_rows(rho, rows_a.iter().map(Vec::as_slice));
    // T[i][j] = Tᵀ[j][i] = Σ_k B⁻¹[j][k]·A[k][i].
    let mut t = Matrix::zeros(rho, rho);
    for i in 0..rho {
        for j in 0..rho {
            t.set(i, j, (0..rho).fold(0, |acc, k| M31::add(acc, M31::mul(inv_b.get(j, k), ma.get(k, i)))));
        }
    }
    common.iter().all(|&i| apply(&t, &mu(b, i)) == mu(a, i)).then_some(t)
}

/// `T·m`.
fn apply(t: &Matrix, m: &[u32]) -> Vec<u32> {
    (0..t.rows()).map(|i| (0..t.cols()).fold(0, |acc, j| M31::add(acc, M31::mul(t.get(i, j), m[j])))).collect()
}

/// Fills the lines a channel's fit missed from another channel that fitted them: the mask of
/// line `i` in channel `a` is `T·μ_b[i]` ([`transfer_matrix`]).
fn transfer(planes: &[&[u32]], recs: &mut [Recovered], basis: &LineBasis, h: usize, w: usize, rows: bool) {
    let rho = basis.vectors.len() - 1;
    let (count, len) = if rows { (h, w) } else { (w, h) };
    let at = |i: usize, j: usize| if rows { i * w + j } else { j * w + i };
    for a in 0..recs.len() {
        for b in 0..recs.len() {
            let missing: Vec<usize> =
                (0..count).filter(|&i| recs[a].coefs[i].is_none() && recs[b].coefs[i].is_some()).collect();
            if a == b || missing.is_empty() {
                continue;
            }
            let Some(t) = transfer_matrix(&recs[a], &recs[b], rho) else { continue };
            for i in missing {
                let mb = recs[b].coefs[i].as_deref().map(mask_coefs).unwrap_or_default().to_vec();
                let mut coef = apply(&t, &mb);
                coef.push(0);
                for j in 0..len {
                    recs[a].data[at(i, j)] = M31::sub(planes[a][at(i, j)], basis.mask_at(&coef, j));
                    recs[a].known[at(i, j)] = true;
                }
                recs[a].coefs[i] = Some(coef);
            }
        }
    }
}

/// Step 4b: the integers `x` with `z = β·x` for one unknown `β`, `|x| <= bound`, the smallest
/// such, with the sign that makes them non-negative when one does (post-ReLU activations), else
/// the one that makes the foreground brighter than the most common value (images). `None` when
/// no scalar fits (or the plane is a non-zero constant, whose scale cannot be known).
pub fn decode_scaled(z: &[u32], bound: u32) -> Option<Vec<i32>> {
    let Some(&z0) = z.iter().find(|&&v| v != 0) else { return Some(vec![0; z.len()]) };
    let mut best: Option<(Vec<i32>, u32)> = None;
    for x0 in 1..=bound {
        // β = z0 / x0, so x = z·x0 / z0.
        let f = M31::mul(x0, M31::inv(z0));
        let mut xs = Vec::with_capacity(z.len());
        let mut max = 0;
        let mut ok = true;
        for &v in z {
            let x = M31::lift(M31::mul(v, f));
            if x.unsigned_abs() > u64::from(bound) {
                ok = false;
                break;
            }
            max = max.max(x.unsigned_abs() as u32);
            xs.push(x as i32);
        }
        if ok && best.as_ref().is_none_or(|(_, m)| max < *m) {
            best = Some((xs, max));
        }
    }
    let (mut xs, _) = best?;
    let distinct = {
        let mut s = xs.clone();
        s.sort_unstable();
        s.dedup();
        s.len()
    };
    if distinct == 1 && xs[0] != 0 {
        return None;
    }
    // Post-ReLU activations are non-negative: when one sign makes every value so, take it.
    // Otherwise (normalised pixels of a first layer) the foreground is the brighter side.
    let (min, max) = (xs.iter().min().copied().unwrap_or(0), xs.iter().max().copied().unwrap_or(0));
    let flip = if min >= 0 || max <= 0 {
        max <= 0 && min < 0
    } else {
        let mode = most_common(&xs);
        xs.iter().map(|&x| i64::from(x) - i64::from(mode)).sum::<i64>() < 0
    };
    if flip {
        xs.iter_mut().for_each(|x| *x = -*x);
    }
    Some(xs)
}

fn most_common(xs: &[i32]) -> i32 {
    let mut s = xs.to_vec();
    s.sort_unstable();
    let (mut best, mut best_n, mut i) = (s[0], 0, 0);
    while i < s.len() {
        let j = s[i..].iter().position(|&v| v != s[i]).map_or(s.len(), |k| i + k);
        if j - i > best_n {
            (best, best_n) = (s[i], j - i);
        }
        i = j;
    }
    best
}

/// Runs the attack on one image's `X'` (`cin × h × w`, cloud channel order), for integer inputs
/// bounded by `bound`. `rng` drives the attacker's own random choices.
pub fn recover_image(xp: &[u32], cin: usize, h: usize, w: usize, bound: u32, rng: &mut impl Rng) -> InputRecovery {
    let (rows, cols) = (Lines::rows(xp, cin, h, w), Lines::cols(xp, cin, h, w));
    let row_space = factor_space(&rows, cin, rng);
    let col_space = factor_space(&cols, cin, rng);
    // One orientation does the work: a pure basis before one that holds the ones direction,
    // and the smaller before the larger (foreground coincidences can only inflate a space). A
    // basis is kept when its fits, completed across channels, cover at least half the lines;
    // the last one tried is kept in any case.
    let mut order: Vec<(LineBasis, bool)> = Vec::new();
    for (lines, space, along_rows) in [(&rows, &row_space, true), (&cols, &col_space, false)] {
        if let Some(space) = space {
            order.extend(LineBasis::candidates(lines, space).into_iter().map(|b| (b, along_rows)));
        }
    }
    order.sort_by_key(|(b, _)| (!b.pure, b.vectors.len()));
    let planes: Vec<&[u32]> = xp.chunks_exact(h * w).collect();
    let mut recs: Vec<Recovered> = Vec::new();
    for (k, (basis, along_rows)) in order.iter().enumerate() {
        recs = planes.iter().map(|p| recover_plane(p, h, w, basis, *along_rows, rng)).collect();
        if basis.pure {
            transfer(&planes, &mut recs, basis, h, w, *along_rows);
        } else {
            // Each line's data lost the common constant β·q to the fit: add it back.
            for (p, rec) in planes.iter().zip(recs.iter_mut()) {
                let kappa = offset(&low_rank_lines(p, rec, h, w, *along_rows));
                rec.data.iter_mut().for_each(|v| *v = M31::add(*v, kappa));
            }
        }
        let fitted: usize = recs.iter().map(|r| r.coefs.iter().filter(|c| c.is_some()).count()).sum();
        let total: usize = recs.iter().map(|r| r.coefs.len()).sum();
        if 2 * fitted >= total || k + 1 == order.len() {
            break;
        }
    }
    let mut pixels = vec![None; cin * h * w];
    for (c, rec) in recs.iter().enumerate() {
        let idx: Vec<usize> = (0..h * w).filter(|&i| rec.known[i]).collect();
        let z: Vec<u32> = idx.iter().map(|&i| rec.data[i]).collect();
        if let Some(xs) = decode_scaled(&z, bound) {
            for (&i, x) in idx.iter().zip(xs) {
                pixels[c * h * w + i] = Some(x);
            }
        }
    }
    InputRecovery {
        pixels,
        row_space_dim: row_space.as_ref().map_or(0, Subspace::dim),
        col_space_dim: col_space.as_ref().map_or(0, Subspace::dim),
    }
}
