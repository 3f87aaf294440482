//! Decryption on the client (SCHEME.md §7).
//!
//! `Y'[b,o',y,x] = α[o']·(Y[b,σ(o'),y,x] + Mk_b[σ(o'),y,x])` with `Mk_b = Conv(K, R_b)`. Because
//! `R_b` is a sum of channel ⊗ row ⊗ column terms, `Mk_b` separates:
//! - per session: `KG_t[o,i,j] = Σ_cl K[o,cl,i,j]·g_t[grp(o)·Cin/G + cl]` ([`MaskKernel`]);
//! - per image: `Q_t[o,i,x] = Σ_j KG_t[o,i,j]·C_t[x,j]`, then `Mk[o,y,x] = Σ_t Σ_i A_t[y,i]·Q_t[o,i,x]`.

use rayon::prelude::*;

use crate::Result;
use crate::encrypt::check_masks;
use crate::field::{M31, PrimeField, check_canonical, slices};
use crate::geometry::Conv2d;
use crate::keys::{ImageMask, SessionKey};

/// The per-session part of the mask correction, `KG_t` for t = 1..ρ (`ρ × Cout × kh × kw`,
/// indexed by plain output channel).
#[derive(Clone, Debug)]
pub struct MaskKernel {
    kg: Vec<u32>,
}

impl MaskKernel {
    /// Computes `KG_t[o,i,j] = Σ_cl K[o,cl,i,j]·g_t[grp(o)·Cin/G + cl]` from the plain kernel.
    ///
    /// # Errors
    /// [`crate::Error::LengthMismatch`] or [`crate::Error::NotAFieldElement`].
    pub fn new(key: &SessionKey, k: &[u32]) -> Result<Self> {
        let g = key.geometry();
        Conv2d::check_len("kernel", g.kernel_len(), k.len())?;
        check_canonical::<M31>("kernel", k)?;
        let (cpg, taps) = (g.cin_per_group(), g.kh() * g.kw());
        // Row by row over K: KG_t[o, ·] = Σ_cl g_t[grp(o)·Cin/G + cl]·K[o, cl, ·].
        let mut kg = vec![0u32; key.rank() * g.cout() * taps];
        let mut acc = vec![0u64; taps];
        for t in 0..key.rank() {
            let gt = key.channel_factor(t);
            for o in 0..g.cout() {
                let c0 = g.group_of_output(o) * cpg;
                acc.fill(0);
                for (cl, row) in k[o * cpg * taps..][..cpg * taps].chunks_exact(taps).enumerate() {
                    let gv = u64::from(gt[c0 + cl]);
                    for (a, &kv) in acc.iter_mut().zip(row) {
                        *a += M31::fold_product(gv * u64::from(kv));
                    }
                }
                for (d, &a) in kg[(t * g.cout() + o) * taps..][..taps].iter_mut().zip(&acc) {
                    *d = M31::reduce(a);
                }
            }
        }
        Ok(Self { kg })
    }
}

/// The per-image tables `A_t[y,i]` (`ρ × Ho × kh`) and `C_t[x,j]`, stored transposed
/// (`ρ × kw × Wo`) so that `Q` is computed along output rows; zero where the index falls in the
/// padding.
struct ImageTables {
    a: Vec<u32>,
    c: Vec<u32>,
}

impl ImageTables {
    fn new(g: &Conv2d, mask: &ImageMask) -> Self {
        let rho = mask.rank();
        let mut a = vec![0u32; rho * g.ho() * g.kh()];
        let mut c = vec![0u32; rho * g.wo() * g.kw()];
        for t in 0..rho {
            for y in 0..g.ho() {
                for i in 0..g.kh() {
                    if let Some(r) = g.in_row(y, i) {
                        a[(t * g.ho() + y) * g.kh() + i] = mask.row_factor(t)[r];
                    }
                }
            }
            for j in 0..g.kw() {
                for x in 0..g.wo() {
                    if let Some(col) = g.in_col(x, j) {
                        c[(t * g.kw() + j) * g.wo() + x] = mask.col_factor(t)[col];
                    }
                }
            }
        }
        Self { a, c }
    }
}

/// Working memory of [`mask_channel`]: `Q_t[i,x]` (`ρ·kh·Wo`) and one unreduced row (`Wo`).
struct Scratch {
    q: Vec<u32>,
    row: Vec<u64>,
}

impl Scratch {
    fn new(g: &Conv2d, rho: usize) -> Self {
        Self { q: vec![0; rho * g.kh() * g.wo()], row: vec![0; g.wo()] }
    }
}

/// Calls `emit(y, mk_row)` for every output row y of `Mk[o,·,·]`, plain output channel `o`;
/// `mk_row` holds partially reduced values.
fn mask_channel(
    g: &Conv2d,
    rho: usize,
    mk: &MaskKernel,
    tab: &ImageTables,
    o: usize,
    scratch: &mut Scratch,
    mut emit: impl FnMut(usize, &[u64]),
) {
    let (kh, kw, ho, wo) = (g.kh(), g.kw(), g.ho(), g.wo());
    let Scratch { q, row } = scratch;
    for t in 0..rho {
        let kg = &mk.kg[(t * g.cout() + o) * kh * kw..][..kh * kw];
        for i in 0..kh {
            row.fill(0);
            for j in 0..kw {
                M31::mul_acc(row, kg[i * kw + j], &tab.c[(t * kw + j) * wo..][..wo]);
            }
            M31::reduce_into(&mut q[(t * kh + i) * wo..][..wo], row);
        }
    }
    for y in 0..ho {
        row.fill(0);
        for t in 0..rho {
            for i in 0..kh {
                let ayi = tab.a[(t * ho + y) * kh + i];
                if ayi != 0 {
                    M31::mul_acc(row, ayi, &q[(t * kh + i) * wo..][..wo]);
                }
            }
        }
        emit(y, row.as_slice());
    }
}

/// The mask convolution `Mk_b = Conv(K, R_b)` of one image (`Cout × Ho × Wo`, plain channel
/// order), computed the separable way. Exposed for tests of the algebra.
pub fn mask_conv(key: &SessionKey, mk: &MaskKernel, mask: &ImageMask) -> Vec<u32> {
    let g = key.geometry();
    let tab = ImageTables::new(g, mask);
    let mut out = vec![0u32; g.output_image_len()];
    let mut scratch = Scratch::new(g, key.rank());
    for (o, dst) in out.chunks_exact_mut(g.n()).enumerate() {
        mask_channel(g, key.rank(), mk, &tab, o, &mut scratch, |y, r| {
            M31::reduce_into(&mut dst[y * g.wo()..][..g.wo()], r);
        });
    }
    out
}

/// Decrypts a verified cloud answer `y_cloud` (`B × Cout × Ho × Wo`, cloud channel order) into
/// the plain integer result `Y[b, σ(o'), y, x] = lift(α[o']^-1·Y'[b,o',y,x] - Mk_b[σ(o'),y,x])`.
///
/// # Errors
/// [`crate::Error::LengthMismatch`] or [`crate::Error::NotAFieldElement`].
pub fn decrypt(key: &SessionKey, mk: &MaskKernel, masks: &[ImageMask], y_cloud: &[u32]) -> Result<Vec<i32>> {
    let g = key.geometry();
    let batch = masks.len();
    check_masks(key, masks, batch)?;
    Conv2d::check_len("cloud output", batch * g.output_image_len(), y_cloud.len())?;
    check_canonical::<M31>("cloud output", y_cloud)?;
    let mut sigma_inv = vec![0usize; g.cout()];
    for (op, &o) in key.sigma().iter().enumerate() {
        sigma_inv[o] = op;
    }
    let tables: Vec<ImageTables> = masks.iter().map(|m| ImageTables::new(g, m)).collect();
    let (n, wo) = (g.n(), g.wo());
    let mut out = vec![0i32; y_cloud.len()];
    out.par_chunks_exact_mut(n).enumerate().for_each_init(
        || Scratch::new(g, key.rank()),
        |scratch, (idx, dst)| {
            let (b, o) = (idx / g.cout(), idx % g.cout());
            let op = sigma_inv[o];
            let ainv = key.alpha_inv()[op];
            let src = &y_cloud[(b * g.cout() + op) * n..][..n];
            mask_channel(g, key.rank(), mk, &tables[b], o, scratch, |y, mkrow| {
                slices::unmask(&mut dst[y * wo..][..wo], &src[y * wo..][..wo], ainv, mkrow);
            });
        },
    );
    Ok(out)
}
