//! Choosing ranks: by kept spectral energy, or by a target parameter reduction.

use crate::error::{Error, Result};

/// The smallest rank `r >= 1` whose leading singular values keep at least `energy` of the
/// squared Frobenius norm: `Σ_{i<r} σ_i² >= energy · Σ_i σ_i²` (`singular_values`
/// descending). An all-zero spectrum gives rank 1.
///
/// ```
/// // Energies 16, 9, 1 of 26: 16/26 = 0.62, 25/26 = 0.96.
/// let s = [4.0, 3.0, 1.0];
/// assert_eq!(memtrain::decompose::rank_for_energy(&s, 0.6).unwrap(), 1);
/// assert_eq!(memtrain::decompose::rank_for_energy(&s, 0.9).unwrap(), 2);
/// assert_eq!(memtrain::decompose::rank_for_energy(&s, 1.0).unwrap(), 3);
/// ```
///
/// # Errors
///
/// [`Error::Config`] for `energy` outside `(0, 1]`, no singular values, or a negative or
/// non-finite one.
pub fn rank_for_energy(singular_values: &[f64], energy: f64) -> Result<usize> {
    if !(energy > 0.0 && energy <= 1.0) {
        return Err(Error::config("energy", energy, "a fraction in (0, 1]"));
    }
    if singular_values.is_empty()
        || singular_values
            .iter()
            .any(|s| !(*s >= 0.0 && s.is_finite()))
    {
        return Err(Error::config(
            "singular values",
            format!("{singular_values:?}"),
            "at least one, each finite and >= 0",
        ));
    }
    let total: f64 = singular_values.iter().map(|s| s * s).sum();
    let mut kept = 0.0;
    for (i, s) in singular_values.iter().enumerate() {
        kept += s * s;
        // A relative slack so that energy = 1 is met despite round-off in the sum.
        if kept >= energy * total * (1.0 - 1e-12) {
            return Ok(i + 1);
        }
    }
    Ok(singular_values.len())
}

/// Which factorization [`rank_for_ratio`] sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RankMethod {
    /// [`super::svd_lowrank`] of `[m, n]`: `r (m + n)` parameters, `r <= min(m, n)`.
    Svd,
    /// [`super::cp_als`] of `[n_1, .., n_N]`: `r Σ n_k` parameters.
    Cp,
    /// [`super::tucker2`] of `[c_out, c_in, kh, kw]` with equal ranks `r₁ = r₂ = r`:
    /// `r (c_out + c_in) + r² kh kw` parameters, `r <= min(c_out, c_in)`.
    Tucker2,
}

impl RankMethod {
    fn params(self, shape: &[usize], r: usize) -> usize {
        match self {
            RankMethod::Svd | RankMethod::Cp => r * shape.iter().sum::<usize>(),
            RankMethod::Tucker2 => r * (shape[0] + shape[1]) + r * r * shape[2] * shape[3],
        }
    }

    fn max_rank(self, shape: &[usize]) -> usize {
        match self {
            RankMethod::Svd | RankMethod::Tucker2 => shape[0].min(shape[1]),
            RankMethod::Cp => usize::MAX,
        }
    }
}

/// The largest rank whose factors hold at most `1 / ratio` of the dense parameters of
/// `shape`: `floor(m n / (ratio (m + n)))` for SVD, `floor(Π n_k / (ratio Σ n_k))` for CP,
/// the largest `r` with `r (c_out + c_in) + r² kh kw <= c_out c_in kh kw / ratio` for
/// Tucker-2 (capped at `min(c_out, c_in)` for SVD and Tucker-2).
///
/// ```
/// use memtrain::decompose::{RankMethod, rank_for_ratio};
/// // 768 x 3072 at 4x: 768·3072 / (4 · 3840) = 153.6.
/// assert_eq!(rank_for_ratio(&[768, 3072], 4.0, RankMethod::Svd).unwrap(), 153);
/// assert_eq!(rank_for_ratio(&[16, 48, 32, 48], 2.0, RankMethod::Cp).unwrap(), 4096); // 16·48·32·48 / (2 · 144)
/// ```
///
/// # Errors
///
/// [`Error::Config`] for a shape of the wrong order (2 for SVD, at least 2 for CP, 4 for
/// Tucker-2) or with a zero, a ratio below 1 or not finite, and a ratio that no rank `>= 1`
/// achieves (naming it and the largest achievable ratio, that of rank 1).
pub fn rank_for_ratio(shape: &[usize], ratio: f64, method: RankMethod) -> Result<usize> {
    let order_ok = match method {
        RankMethod::Svd => shape.len() == 2,
        RankMethod::Cp => shape.len() >= 2,
        RankMethod::Tucker2 => shape.len() == 4,
    };
    if !order_ok || shape.contains(&0) {
        return Err(Error::config(
            "shape",
            format!("{shape:?} for {method:?}"),
            "modes >= 1: [m, n] for Svd, at least two for Cp, [c_out, c_in, kh, kw] for Tucker2",
        ));
    }
    if !(ratio >= 1.0 && ratio.is_finite()) {
        return Err(Error::config(
            "ratio",
            ratio,
            "a finite parameter reduction ratio >= 1",
        ));
    }
    let dense = shape.iter().map(|&n| n as f64).product::<f64>();
    let fits = |r: usize| method.params(shape, r) as f64 * ratio <= dense;
    if !fits(1) {
        let best = dense / method.params(shape, 1) as f64;
        return Err(Error::config(
            "ratio",
            ratio,
            format!("a ratio of at most {best:.4} (rank 1 of {method:?} on {shape:?})"),
        ));
    }
    // The parameter count grows with r: bisect for the largest rank that fits.
    let (mut lo, mut hi) = (1usize, method.max_rank(shape).min(dense as usize));
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Ok(lo)
}
