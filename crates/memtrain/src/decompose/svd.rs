//! Truncated SVD: the optimal rank-`r` factorization of a weight matrix.

use burn::tensor::Tensor;

use super::rank_for_energy;
use crate::error::{Error, Result};
use memtrain_tt::linalg::{compact, svd};

/// How [`svd_lowrank`] chooses the rank: at most `rank`, and the smallest rank keeping at
/// least `energy` of `‖W‖_F²`. Both set: the smaller of the two ranks. Neither: full rank
/// `min(m, n)` (exact).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SvdParams {
    /// A fixed rank in `1..=min(m, n)`.
    pub rank: Option<usize>,
    /// The fraction of the squared singular values to keep, in `(0, 1]`.
    pub energy: Option<f64>,
}

impl SvdParams {
    /// A fixed rank.
    pub fn rank(rank: usize) -> Self {
        Self {
            rank: Some(rank),
            energy: None,
        }
    }

    /// The smallest rank keeping `energy` of the squared Frobenius norm.
    pub fn energy(energy: f64) -> Self {
        Self {
            rank: None,
            energy: Some(energy),
        }
    }
}

/// `W ≈ A B` with `A [m, r]`, `B [r, n]`: the singular values split as `A = U_r √S_r`,
/// `B = √S_r V_rᵀ`, so both factors have the same scale.
///
/// # Memory
///
/// `r (m + n)` elements ([`LowRank::param_count`]) against `m n` dense.
#[derive(Debug, Clone)]
pub struct LowRank {
    /// `[m, r]`.
    pub a: Tensor<2>,
    /// `[r, n]`.
    pub b: Tensor<2>,
    /// Every singular value of `W`, descending (`min(m, n)` of them), for energy reports.
    pub singular_values: Vec<f64>,
}

impl LowRank {
    /// The rank `r`.
    pub fn rank(&self) -> usize {
        self.a.dims()[1]
    }

    /// Elements in `A` and `B`: `r (m + n)`.
    pub fn param_count(&self) -> usize {
        let ([m, r], [_, n]) = (self.a.dims(), self.b.dims());
        r * (m + n)
    }

    /// The dense `A B` `[m, n]`.
    pub fn full(&self) -> Tensor<2> {
        self.a.clone().matmul(self.b.clone())
    }

    /// The discarded energy `sqrt(Σ_{i >= r} σ_i²) / ‖W‖_F`, which by Eckart–Young is
    /// `‖W - A B‖_F / ‖W‖_F`.
    pub fn relative_error(&self) -> f64 {
        let total: f64 = self.singular_values.iter().map(|s| s * s).sum();
        let tail: f64 = self.singular_values[self.rank()..]
            .iter()
            .map(|s| s * s)
            .sum();
        if total > 0.0 {
            (tail / total).sqrt()
        } else {
            0.0
        }
    }
}

/// Truncated SVD of a weight `w` `[d_out, d_in]`: the best rank-`r` approximation in the
/// Frobenius and spectral norms (Eckart–Young), as two factors.
///
/// Used for low-rank compression of linear layers, e.g. [Denton et al. 2014, Exploiting
/// linear structure within convolutional networks](https://arxiv.org/abs/1404.0736).
///
/// # Errors
///
/// [`Error::Config`] for a rank outside `1..=min(d_out, d_in)`, an energy outside `(0, 1]`,
/// or NaN/infinite entries.
pub fn svd_lowrank(w: Tensor<2>, params: SvdParams) -> Result<LowRank> {
    let [m, n] = w.dims();
    let k = m.min(n);
    if let Some(r) = params.rank
        && !(1..=k).contains(&r)
    {
        return Err(Error::config(
            "svd rank",
            r,
            format!("a rank in 1..={k} for a [{m}, {n}] matrix"),
        ));
    }
    let (u, s, vt) = svd(w.detach())?;
    let sv: Vec<f64> = s.to_data().iter::<f64>().collect();
    let mut r = params.rank.unwrap_or(k);
    if let Some(e) = params.energy {
        r = r.min(rank_for_energy(&sv, e)?);
    }
    let root = s.narrow(0, 0, r).sqrt();
    let a = compact(u.slice([0..m, 0..r]) * root.clone().unsqueeze_dim::<2>(0));
    let b = compact(root.unsqueeze_dim::<2>(1) * vt.slice([0..r, 0..n]));
    Ok(LowRank {
        a,
        b,
        singular_values: sv,
    })
}
