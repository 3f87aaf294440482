//! Exact linear algebra over F_p (p = 2^31 - 1) for the attacks: reduced row echelon form, rank,
//! left null spaces, subspaces with membership tests, and small dense solves.

use vericonv::{M31, PrimeField};

/// A dense row-major matrix over F_p.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<u32>,
}

impl Matrix {
    /// A `rows × cols` matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self { rows, cols, data: vec![0; rows * cols] }
    }

    /// The matrix whose rows are `rows` (all of length `cols`).
    pub fn from_rows<'a>(cols: usize, rows: impl IntoIterator<Item = &'a [u32]>) -> Self {
        let mut data = Vec::new();
        let mut n = 0;
        for r in rows {
            debug_assert_eq!(r.len(), cols);
            data.extend_from_slice(r);
            n += 1;
        }
        Self { rows: n, cols, data }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[u32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Entry `(i, j)`.
    pub fn get(&self, i: usize, j: usize) -> u32 {
        self.data[i * self.cols + j]
    }

    /// Sets entry `(i, j)`.
    pub fn set(&mut self, i: usize, j: usize, v: u32) {
        self.data[i * self.cols + j] = v;
    }

    /// The transpose.
    pub fn transpose(&self) -> Self {
        let mut t = Self::zeros(self.cols, self.rows);
        for i in 0..self.rows {
            for j in 0..self.cols {
                t.data[j * self.rows + i] = self.data[i * self.cols + j];
            }
        }
        t
    }

    /// Reduces the matrix in place to reduced row echelon form; returns the pivot columns (one
    /// per non-zero row, in order), so the rank is their number.
    pub fn rref(&mut self) -> Vec<usize> {
        let (rows, cols) = (self.rows, self.cols);
        let mut pivots = Vec::new();
        let mut r = 0;
        for c in 0..cols {
            if r == rows {
                break;
            }
            let Some(p) = (r..rows).find(|&i| self.data[i * cols + c] != 0) else { continue };
            if p != r {
                for j in 0..cols {
                    self.data.swap(p * cols + j, r * cols + j);
                }
            }
            let inv = M31::inv(self.data[r * cols + c]);
            for j in c..cols {
                self.data[r * cols + j] = M31::mul(self.data[r * cols + j], inv);
            }
            for i in 0..rows {
                let f = self.data[i * cols + c];
                if i == r || f == 0 {
                    continue;
                }
                for j in c..cols {
                    let v = M31::mul(f, self.data[r * cols + j]);
                    self.data[i * cols + j] = M31::sub(self.data[i * cols + j], v);
                }
            }
            pivots.push(c);
            r += 1;
        }
        self.rows = r;
        self.data.truncate(r * cols);
        pivots
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.clone().rref().len()
    }

    /// A basis of the left null space `{z : zᵀ·M = 0}`, one vector of length `rows` each.
    pub fn left_null_space(&self) -> Vec<Vec<u32>> {
        // zᵀM = 0 ⇔ Mᵀz = 0: the null space of the transpose, read off its RREF.
        let mut t = self.transpose();
        let pivots = t.rref();
        let n = self.rows;
        let mut basis = Vec::new();
        let mut is_pivot = vec![false; n];
        pivots.iter().for_each(|&p| is_pivot[p] = true);
        for free in (0..n).filter(|&j| !is_pivot[j]) {
            let mut z = vec![0u32; n];
            z[free] = 1;
            for (i, &p) in pivots.iter().enumerate() {
                z[p] = M31::neg(t.get(i, free));
            }
            basis.push(z);
        }
        basis
    }
}

/// A subspace of F_p^n held as a basis in reduced row echelon form, so that the coordinates of
/// a member are its entries at the pivot columns.
#[derive(Clone, Debug)]
pub struct Subspace {
    basis: Matrix,
    pivots: Vec<usize>,
}

impl Subspace {
    /// The span of `vectors` (each of length `n`).
    pub fn span<'a>(n: usize, vectors: impl IntoIterator<Item = &'a [u32]>) -> Self {
        let mut basis = Matrix::from_rows(n, vectors);
        let pivots = basis.rref();
        Self { basis, pivots }
    }

    /// The dimension.
    pub fn dim(&self) -> usize {
        self.pivots.len()
    }

    /// The length of the vectors.
    pub fn len(&self) -> usize {
        self.basis.cols
    }

    /// True for the zero space.
    pub fn is_empty(&self) -> bool {
        self.pivots.is_empty()
    }

    /// Basis vector `i` (in reduced row echelon form).
    pub fn basis_vector(&self, i: usize) -> &[u32] {
        self.basis.row(i)
    }

    /// The coordinates of `v` in the basis when `v` lies in the subspace, else `None`.
    pub fn coordinates(&self, v: &[u32]) -> Option<Vec<u32>> {
        let coef: Vec<u32> = self.pivots.iter().map(|&p| v[p]).collect();
        let fits = (0..v.len()).all(|j| self.combine_at(&coef, j) == v[j]);
        fits.then_some(coef)
    }

    /// True when `v` lies in the subspace.
    pub fn contains(&self, v: &[u32]) -> bool {
        self.coordinates(v).is_some()
    }

    /// Entry `j` of `Σ_i coef[i]·basis_i`.
    pub fn combine_at(&self, coef: &[u32], j: usize) -> u32 {
        coef.iter().enumerate().fold(0, |acc, (i, &c)| M31::add(acc, M31::mul(c, self.basis.get(i, j))))
    }

    /// `Σ_i coef[i]·basis_i`.
    pub fn combine(&self, coef: &[u32]) -> Vec<u32> {
        (0..self.len()).map(|j| self.combine_at(coef, j)).collect()
    }
}

/// Solves `x·A = b` for `x`, where `A` is `d × d` given by rows `a_rows` and `b` has `d` entries:
/// the coefficients that reproduce `b` at `d` chosen positions. `None` when `A` is singular.
pub fn solve_left(a_rows: &[Vec<u32>], b: &[u32]) -> Option<Vec<u32>> {
    let d = b.len();
    // Transpose to Aᵀ·xᵀ = bᵀ and eliminate on the augmented matrix [Aᵀ | b].
    let mut m = Matrix::zeros(d, d + 1);
    for (i, row) in a_rows.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            m.set(j, i, v);
        }
    }
    for (j, &v) in b.iter().enumerate() {
        m.set(j, d, v);
    }
    let pivots = m.rref();
    if pivots.len() != d || pivots.iter().enumerate().any(|(i, &p)| p != i) {
        return None;
    }
    Some((0..d).map(|i| m.get(i, d)).collect())
}

/// The inverse of a square matrix, or `None` when it is singular.
pub fn inverse(a: &Matrix) -> Option<Matrix> {
    let n = a.rows;
    let mut m = Matrix::zeros(n, 2 * n);
    for i in 0..n {
        for j in 0..n {
            m.set(i, j, a.get(i, j));
        }
        m.set(i, n + i, 1);
    }
    let pivots = m.rref();
    if pivots.len() != n || pivots.iter().enumerate().any(|(i, &p)| p != i) {
        return None;
    }
    let mut inv = Matrix::zeros(n, n);
    for i in 0..n {
        for j in 0..n {
            inv.set(i, j, m.get(i, n + j));
        }
    }
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vericonv::seeded_rng;

    #[test]
    fn left_null_space_vectors_annihilate_the_matrix() {
        let mut rng = seeded_rng(1);
        // Rows 0..5 random, row 5 = row 1 + 2·row 3: one dependency.
        let mut rows: Vec<Vec<u32>> = (0..5).map(|_| (0..7).map(|_| M31::random(&mut rng)).collect()).collect();
        let dep: Vec<u32> = (0..7).map(|j| M31::add(rows[1][j], M31::mul(2, rows[3][j]))).collect();
        rows.push(dep);
        let m = Matrix::from_rows(7, rows.iter().map(Vec::as_slice));
        let null = m.left_null_space();
        assert_eq!(null.len(), 1);
        let z = &null[0];
        assert_eq!(z.iter().filter(|&&v| v != 0).count(), 3, "support = rows 1, 3, 5");
        for j in 0..7 {
            let s = (0..6).fold(0, |acc, i| M31::add(acc, M31::mul(z[i], m.get(i, j))));
            assert_eq!(s, 0);
        }
        assert_eq!(m.rank(), 5);
    }

    #[test]
    fn subspace_coordinates_reproduce_members_and_reject_others() {
        let mut rng = seeded_rng(2);
        let gens: Vec<Vec<u32>> = (0..3).map(|_| (0..9).map(|_| M31::random(&mut rng)).collect()).collect();
        let s = Subspace::span(9, gens.iter().map(Vec::as_slice));
        assert_eq!(s.dim(), 3);
        let member: Vec<u32> = (0..9).map(|j| M31::add(M31::mul(5, gens[0][j]), gens[2][j])).collect();
        let coef = s.coordinates(&member).expect("member");
        assert_eq!(s.combine(&coef), member);
        let other: Vec<u32> = (0..9).map(|_| M31::random(&mut rng)).collect();
        assert!(!s.contains(&other));
    }

    #[test]
    fn solve_and_inverse_agree_with_products() {
        let mut rng = seeded_rng(3);
        let a: Vec<Vec<u32>> = (0..4).map(|_| (0..4).map(|_| M31::random(&mut rng)).collect()).collect();
        let x: Vec<u32> = (0..4).map(|_| M31::random(&mut rng)).collect();
        let b: Vec<u32> = (0..4).map(|j| (0..4).fold(0, |acc, i| M31::add(acc, M31::mul(x[i], a[i][j])))).collect();
        assert_eq!(solve_left(&a, &b), Some(x));
        let m = Matrix::from_rows(4, a.iter().map(Vec::as_slice));
        let inv = inverse(&m).expect("invertible");
        for i in 0..4 {
            for j in 0..4 {
                let v = (0..4).fold(0, |acc, k| M31::add(acc, M31::mul(m.get(i, k), inv.get(k, j))));
                assert_eq!(v, u32::from(i == j));
            }
        }
        let singular = Matrix::from_rows(2, [[1u32, 2].as_slice(), [2, 4].as_slice()]);
        assert!(inverse(&singular).is_none());
    }
}
