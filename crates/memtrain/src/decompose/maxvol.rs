//! Dominant submatrices (maxvol) and the width-reduction helpers built on them.

use burn::tensor::Tensor;

use crate::error::{Error, Result};
use memtrain_tt::linalg::host;
use memtrain_tt::linalg::leading_left;

/// Settings of [`maxvol`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaxvolParams {
    /// Stop when no entry of `B = A A_I⁻¹` exceeds this in magnitude (`>= 1`); a swap then
    /// grows the volume by at most this factor.
    pub tol: f64,
    /// At most this many row swaps.
    pub max_iters: usize,
}

impl Default for MaxvolParams {
    /// `tol = 1.05`, at most 1000 swaps.
    fn default() -> Self {
        Self {
            tol: 1.05,
            max_iters: 1000,
        }
    }
}

/// Rows of `a` (host, `[n, r]` row-major) chosen by Gaussian elimination with partial
/// pivoting: a well-conditioned starting submatrix. `None` if a pivot vanishes (rank < r).
fn pivot_rows(a: &[f64], n: usize, r: usize) -> Option<Vec<usize>> {
    let mut m = a.to_vec();
    let mut used = vec![false; n];
    let mut rows = Vec::with_capacity(r);
    let scale = a.iter().fold(0.0f64, |s, x| s.max(x.abs()));
    for col in 0..r {
        let piv = (0..n)
            .filter(|&i| !used[i])
            .max_by(|&x, &y| m[x * r + col].abs().total_cmp(&m[y * r + col].abs()))?;
        let p = m[piv * r + col];
        if p.abs() <= 1e-12 * scale || p.is_nan() {
            return None;
        }
        used[piv] = true;
        rows.push(piv);
        for i in 0..n {
            if used[i] {
                continue;
            }
            let f = m[i * r + col] / p;
            for j in col..r {
                m[i * r + j] -= f * m[piv * r + j];
            }
        }
    }
    Some(rows)
}

fn rank_error(n: usize, r: usize) -> Error {
    Error::config(
        "maxvol",
        format!("a [{n}, {r}] matrix of rank below {r}"),
        "a matrix of full column rank",
    )
}

/// Row indices `I` (`r` distinct rows) of a dominant `r x r` submatrix of a tall matrix `a`
/// `[n, r]`: every entry of `B = A A_I⁻¹` is at most `tol` in magnitude, so no single row
/// swap grows `|det A_I|` by more than `tol`. Starts from the pivot rows of Gaussian
/// elimination with partial pivoting, then swaps row `I_j` for row `i` while some
/// `|B_ij| > tol` (the largest first), updating `B` by a rank-one formula.
///
/// The order of `I` matches the columns: `I[j]` is the row paired with column `j`. Stops
/// after `max_iters` swaps even if not converged.
///
/// [Goreinov, Oseledets, Savostyanov, Tyrtyshnikov, Zamarashkin 2010, How to find a good
/// submatrix](https://doi.org/10.1142/9789812836021_0015).
///
/// # Errors
///
/// [`Error::Config`] for `n < r`, `r = 0`, `tol < 1` or NaN, or a matrix of rank below `r`.
pub fn maxvol(a: Tensor<2>, params: MaxvolParams) -> Result<Vec<usize>> {
    let [n, r] = a.dims();
    if r == 0 || n < r {
        return Err(Error::config(
            "maxvol shape",
            format!("[{n}, {r}]"),
            "a tall matrix [n, r] with n >= r >= 1",
        ));
    }
    if params.tol.is_nan() || params.tol < 1.0 {
        return Err(Error::config("maxvol tol", params.tol, "a tolerance >= 1"));
    }
    let a = host::values(a.detach());
    if a.iter().any(|x| !x.is_finite()) {
        return Err(Error::config(
            "maxvol",
            "NaN or infinite entries",
            "finite entries",
        ));
    }
    let mut rows = pivot_rows(&a, n, r).ok_or_else(|| rank_error(n, r))?;
    let sub: Vec<f64> = rows
        .iter()
        .flat_map(|&i| a[i * r..(i + 1) * r].iter().copied())
        .collect();
    let inv = host::inverse(&sub, r).ok_or_else(|| rank_error(n, r))?;
    let mut b = host::matmul(&a, &inv, n, r, r);
    for _ in 0..params.max_iters {
        let (at, big) = b
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.abs().total_cmp(&y.1.abs()))
            .expect("n r >= 1");
        if big.abs() <= params.tol {
            break;
        }
        let (i, j) = (at / r, at % r);
        // Row I_j becomes row i: A_I' = (I + e_j yᵀ) A_I with y = B[i, :] - e_j, so by
        // Sherman–Morrison B' = B - B[:, j] yᵀ / B[i, j].
        let pivot = b[at];
        let mut y: Vec<f64> = b[i * r..(i + 1) * r].to_vec();
        y[j] -= 1.0;
        let col: Vec<f64> = (0..n).map(|p| b[p * r + j]).collect();
        for p in 0..n {
            let c = col[p] / pivot;
            for q in 0..r {
                b[p * r + q] -= c * y[q];
            }
        }
        rows[j] = i;
    }
    Ok(rows)
}

/// `k` neurons (columns of `activations` `[samples, width]`) that best interpolate the
/// rest: [`maxvol`] rows of the top-`k` right singular basis `V_k` `[width, k]` of the
/// activations (DEIM-style selection), returned in ascending order. The layer then keeps
/// these `k` neurons, and the others are approximated as `V_k V_k[I]⁻¹` times them.
///
/// [Gusak et al. 2021, Reduced-order modeling of deep neural
/// networks](https://arxiv.org/abs/1910.06995).
///
/// # Errors
///
/// [`Error::Config`] for `k` outside `1..=min(samples, width)`, activations whose top-`k`
/// basis is rank deficient, or NaN/infinite entries.
pub fn select_neurons(activations: Tensor<2>, k: usize) -> Result<Vec<usize>> {
    let basis = top_right_basis(activations, k)?;
    let mut rows = maxvol(basis, MaxvolParams::default())?;
    rows.sort_unstable();
    Ok(rows)
}

/// The active subspace of a layer's width: the top-`k` eigenvectors `[width, k]`
/// (orthonormal columns, by decreasing eigenvalue) of the gradient covariance
/// `(1/n) Gᵀ G` of `grads` `[samples, width]`, computed as the leading right singular
/// vectors of `G`. Projecting on it keeps the directions the loss is most sensitive to.
///
/// [Constantine 2015, Active subspaces](https://doi.org/10.1137/1.9781611973860); for
/// networks, [Cui et al. 2020, Active subspace of neural networks: structural analysis and
/// universal attacks](https://arxiv.org/abs/1910.13025).
///
/// # Errors
///
/// [`Error::Config`] for `k` outside `1..=min(samples, width)` or NaN/infinite entries.
pub fn active_subspace(grads: Tensor<2>, k: usize) -> Result<Tensor<2>> {
    top_right_basis(grads, k)
}

fn top_right_basis(m: Tensor<2>, k: usize) -> Result<Tensor<2>> {
    let [s, w] = m.dims();
    if !(1..=s.min(w)).contains(&k) {
        return Err(Error::config(
            "k",
            k,
            format!("1..={} for a [{s}, {w}] matrix", s.min(w)),
        ));
    }
    Ok(leading_left(m.detach().transpose(), k)?)
}
