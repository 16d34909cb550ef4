//! The spectrum a truncation reads: the SVD of a weight in a metric (plain, activation-whitened
//! for `asvd`, Fisher-weighted for `fwsvd`), and automatic ranks from it.

use burn::tensor::Device;

use crate::error::{Error, Result};
use memtrain_tt::linalg::host;

/// The ridge added to `XᵀX` before whitening, relative to its mean diagonal: directions the
/// calibration text barely reaches keep a little of the plain SVD's weight-space metric
/// instead of being amplified by a near-singular whitening.
pub const RIDGE: f64 = 1e-4;

/// The SVD of a weight in the metric its truncation minimises, `M W = U S Vᵀ`, with
/// `M = Lᵀ` for activation whitening (`XᵀX + δI = L Lᵀ`, `δ` = [`RIDGE`] × the mean diagonal)
/// or `M = I` for the plain weight-space SVD. Truncating it to any rank gives that rank's
/// factors ([`Spectrum::factors`]); its singular values say what each rank costs
/// ([`Spectrum::tail_energy`]), which is what automatic ranks compare across layers.
#[derive(Debug, Clone)]
pub struct Spectrum {
    d_in: usize,
    d_out: usize,
    metric: Metric,
    u: Vec<f64>,
    /// Singular values, descending.
    pub s: Vec<f64>,
    vt: Vec<f64>,
}

/// The metric `M` of a [`Spectrum`].
#[derive(Debug, Clone)]
enum Metric {
    /// The plain SVD.
    Identity,
    /// `M = Lᵀ`, `L` row-major `[d_in, d_in]` lower triangular.
    Cholesky(Vec<f64>),
    /// `M = diag(w)`.
    Diagonal(Vec<f64>),
}

impl Spectrum {
    /// The SVD of `w [d_in, d_out]` (row-major), whitened by `gram = XᵀX` when given.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the Gram matrix has NaN entries or cannot be made positive
    /// definite, or the SVD does not converge.
    pub fn new(
        w: &[f64],
        gram: Option<&[f64]>,
        d_in: usize,
        d_out: usize,
        device: &Device,
    ) -> Result<Self> {
        let (metric, m) = match gram {
            None => (Metric::Identity, w.to_vec()),
            Some(gram) => {
                let mean = (0..d_in).map(|i| gram[i * d_in + i]).sum::<f64>() / d_in as f64;
                let mut g = gram.to_vec();
                if mean.is_finite() && mean > 0.0 {
                    for i in 0..d_in {
                        g[i * d_in + i] += RIDGE * mean;
                    }
                }
                let l = host::cholesky(&g, d_in)
                    .or_else(|| host::ridge_cholesky(&g, d_in))
                    .ok_or_else(|| {
                        Error::config(
                            "calibration",
                            format!("a [{d_in}, {d_in}] input Gram matrix"),
                            "a finite Gram matrix (calibration text that reaches the layer)",
                        )
                    })?;
                let mut lt = vec![0.0; d_in * d_in];
                for i in 0..d_in {
                    for j in 0..=i {
                        lt[j * d_in + i] = l[i * d_in + j];
                    }
                }
                let m = host::matmul(&lt, w, d_in, d_in, d_out);
                (Metric::Cholesky(l), m)
            }
        };
        Self::of(metric, m, d_in, d_out, device)
    }

    /// The SVD of `w [d_in, d_out]` (row-major) with its rows weighted by the square roots of
    /// `row_weights` (`[d_in]`, for Fisher-weighted SVD the Fisher information of each input
    /// row, [`super::Calibration::fisher`]): `M = diag(√(f + δ))`, `δ` = [`RIDGE`] × the mean
    /// weight, so truncation minimises `Σ_i f_i ‖W_i − Ŵ_i‖²`.
    ///
    /// [Hsu et al. 2022, Language model compression with weighted low-rank
    /// factorization](https://arxiv.org/abs/2207.00112).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a weight vector of another length, or with negative or NaN
    /// entries; when the SVD does not converge.
    pub fn row_weighted(
        w: &[f64],
        row_weights: &[f64],
        d_in: usize,
        d_out: usize,
        device: &Device,
    ) -> Result<Self> {
        if row_weights.len() != d_in || row_weights.iter().any(|f| !(*f >= 0.0 && f.is_finite())) {
            return Err(Error::config(
                "row weights",
                format!("{} values", row_weights.len()),
                format!("{d_in} finite non-negative values (one per input row)"),
            ));
        }
        let mean = row_weights.iter().sum::<f64>() / d_in as f64;
        let ridge = if mean > 0.0 { RIDGE * mean } else { 1.0 };
        let scale: Vec<f64> = row_weights.iter().map(|f| (f + ridge).sqrt()).collect();
        let m: Vec<f64> = w
            .iter()
            .enumerate()
            .map(|(k, v)| v * scale[k / d_out])
            .collect();
        Self::of(Metric::Diagonal(scale), m, d_in, d_out, device)
    }

    fn of(metric: Metric, m: Vec<f64>, d_in: usize, d_out: usize, device: &Device) -> Result<Self> {
        let dtype = burn::tensor::DType::F64;
        let (u, s, vt) = memtrain_tt::linalg::svd(host::tensor(m, [d_in, d_out], device, dtype))?;
        Ok(Spectrum {
            d_in,
            d_out,
            metric,
            u: host::values(u),
            s: host::values(s),
            vt: host::values(vt),
        })
    }

    /// The share of the (whitened) weight's energy that truncation to rank `r` drops:
    /// `Σ_{j ≥ r} s_j² / Σ s_j²`, the squared relative error of the truncation in its metric.
    pub fn tail_energy(&self, r: usize) -> f64 {
        let total: f64 = self.s.iter().map(|v| v * v).sum();
        let tail: f64 = self.s.iter().skip(r).map(|v| v * v).sum();
        if total > 0.0 { tail / total } else { 0.0 }
    }

    /// The rank-`r` factors `A [d_in, r]`, `B [r, d_out]` (row-major): `(M⁻¹ U_r S_r, V_rᵀ)`.
    pub fn factors(&self, r: usize) -> (Vec<f64>, Vec<f64>) {
        let (d_in, d_out) = (self.d_in, self.d_out);
        let k = self.s.len();
        let r = r.min(k);
        let mut a = vec![0.0; d_in * r];
        for i in 0..d_in {
            for j in 0..r {
                a[i * r + j] = self.u[i * k + j] * self.s[j];
            }
        }
        if let Metric::Diagonal(scale) = &self.metric {
            for i in 0..d_in {
                for j in 0..r {
                    a[i * r + j] /= scale[i];
                }
            }
        }
        if let Metric::Cholesky(l) = &self.metric {
            // A = L⁻ᵀ A' by back substitution (Lᵀ is upper triangular).
            for j in 0..r {
                for i in (0..d_in).rev() {
                    let mut v = a[i * r + j];
                    for p in i + 1..d_in {
                        v -= l[p * d_in + i] * a[p * r + j];
                    }
                    a[i * r + j] = v / l[i * d_in + i];
                }
            }
        }
        (a, self.vt[..r * d_out].to_vec())
    }
}

/// Activation-whitened truncation of `w [d_in, d_out]` (row-major f64) to rank `r` in the
/// metric of `gram = XᵀX` ([`Spectrum`] with whitening, then [`Spectrum::factors`]): the
/// rank-`r` factors `A [d_in, r]`, `B [r, d_out]` closest to `W` in `‖X(W − Ŵ)‖_F` (exactly so
/// as the ridge goes to 0).
///
/// # Errors
///
/// As [`Spectrum::new`].
pub fn whitened_factors(
    w: &[f64],
    gram: &[f64],
    d_in: usize,
    d_out: usize,
    r: usize,
    device: &Device,
) -> Result<(Vec<f64>, Vec<f64>)> {
    Ok(Spectrum::new(w, Some(gram), d_in, d_out, device)?.factors(r))
}

/// Ranks for layers of `shapes` (`[d_in, d_out]`) and `spectra` within `budget` weight
/// parameters in all (a rank-`r` layer costs `r (d_in + d_out)`): greedily, each next rank
/// goes to the layer whose tail energy ([`Spectrum::tail_energy`]) it lowers most per
/// parameter, every layer keeping at least rank 1 and less than its dense size; a rank that
/// would keep less than 1e-12 of a layer's energy is not given (the budget may be left unspent).
///
/// # Errors
///
/// [`Error::Config`] naming the budget when rank 1 everywhere does not fit.
pub fn allocate_ranks(
    shapes: &[[usize; 2]],
    spectra: &[Spectrum],
    budget: usize,
) -> Result<Vec<usize>> {
    let cost = |i: usize| shapes[i][0] + shapes[i][1];
    let floor: usize = (0..shapes.len()).map(cost).sum();
    if floor > budget {
        return Err(Error::config(
            "ratio",
            format!("a budget of {budget} weight parameters"),
            format!("at least {floor} (rank 1 in every layer)"),
        ));
    }
    let mut ranks = vec![1; shapes.len()];
    let mut used = floor;
    let gain = |i: usize, r: usize| {
        let s = &spectra[i].s;
        let total: f64 = s.iter().map(|v| v * v).sum();
        let next = s.get(r).map_or(0.0, |v| v * v);
        if total > 0.0 {
            next / total / cost(i) as f64
        } else {
            0.0
        }
    };
    loop {
        let best = (0..shapes.len())
            .filter(|&i| {
                let r = ranks[i];
                r < spectra[i].s.len()
                    && (r + 1) * cost(i) < shapes[i][0] * shapes[i][1]
                    && used + cost(i) <= budget
                    // A rank that keeps (numerically) nothing is not worth its parameters.
                    && gain(i, r) * cost(i) as f64 > 1e-12
            })
            .max_by(|&a, &b| gain(a, ranks[a]).total_cmp(&gain(b, ranks[b])));
        let Some(i) = best else { break };
        ranks[i] += 1;
        used += cost(i);
    }
    Ok(ranks)
}

/// The active-subspace projection of `w [d_in, d_out]` (row-major f64) to rank `r`: the top-`r`
/// eigenvectors `V [d_in, r]` of the input-gradient covariance `grad_cov = Σ ∇ₓℓ ∇ₓℓᵀ`
/// ([`super::Calibration::grad_cov`]) and the factors `A = V`, `B = Vᵀ W`, so the layer
/// computes `x V (Vᵀ W)`: the input is projected on the directions the loss is most
/// sensitive to. Lossless at any `r` at least the rank of `W`'s column space when the loss
/// reaches `x` only through `xW` (then every gradient lies in that space).
///
/// [Cui et al. 2022, Active subspace of neural networks: structural analysis and universal
/// attacks](https://arxiv.org/abs/1910.13025).
///
/// # Errors
///
/// [`Error::Config`] for a covariance of another size or with non-finite entries, `r` outside
/// `1..=d_in`; when the eigen-decomposition does not converge.
pub fn active_factors(
    w: &[f64],
    grad_cov: &[f64],
    d_in: usize,
    d_out: usize,
    r: usize,
    device: &Device,
) -> Result<(Vec<f64>, Vec<f64>)> {
    if grad_cov.len() != d_in * d_in || grad_cov.iter().any(|v| !v.is_finite()) {
        return Err(Error::config(
            "gradient covariance",
            format!("{} values", grad_cov.len()),
            format!("{} finite values ([{d_in}, {d_in}])", d_in * d_in),
        ));
    }
    if !(1..=d_in).contains(&r) {
        return Err(Error::config("rank", r, format!("1..={d_in}")));
    }
    let v = top_eigenvectors(grad_cov, d_in, r, device)?;
    let mut vt = vec![0.0; r * d_in];
    for i in 0..d_in {
        for j in 0..r {
            vt[j * d_in + i] = v[i * r + j];
        }
    }
    let b = host::matmul(&vt, w, r, d_in, d_out);
    Ok((v, b))
}

/// The top-`r` eigenvectors `[n, r]` (row-major, by decreasing eigenvalue) of a symmetric
/// positive semi-definite `[n, n]` matrix.
pub(crate) fn top_eigenvectors(
    sym: &[f64],
    n: usize,
    r: usize,
    device: &Device,
) -> Result<Vec<f64>> {
    // For a symmetric PSD matrix the leading left singular vectors are the eigenvectors.
    let m = host::tensor(sym.to_vec(), [n, n], device, burn::tensor::DType::F64);
    Ok(host::values(memtrain_tt::linalg::leading_left(m, r)?))
}
