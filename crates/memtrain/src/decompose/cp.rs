//! CP (CANDECOMP/PARAFAC) decomposition by alternating least squares.

use burn::tensor::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::grid::{QuantGrid, quantize_to_grid};
use crate::error::{Error, Result};
use memtrain_tt::factorize;
use memtrain_tt::linalg::host::{self, ridge_cholesky};
use memtrain_tt::linalg::{compact, frobenius, leading_left};

/// How [`cp_als`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpInit {
    /// Leading left singular vectors of each unfolding (columns beyond `n_k` random).
    #[default]
    Svd,
    /// Uniform `[-1, 1)` entries from the seed.
    Random,
}

/// Settings of [`cp_als`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpParams {
    /// The CP rank `R >= 1`.
    pub rank: usize,
    /// At most this many ALS sweeps (one update of every factor each).
    pub iters: usize,
    /// Stop when the relative error changes by less than this between sweeps.
    pub tol: f64,
    /// Seed of the random initialisation (and of the columns an SVD cannot fill).
    pub seed: u64,
    /// The initialisation.
    pub init: CpInit,
}

impl CpParams {
    /// Rank `rank`, 200 sweeps, `tol = 1e-10`, seed 0, SVD initialisation.
    pub fn new(rank: usize) -> Self {
        Self {
            rank,
            iters: 200,
            tol: 1e-10,
            seed: 0,
            init: CpInit::Svd,
        }
    }

    /// At most `iters` sweeps.
    pub fn with_iters(mut self, iters: usize) -> Self {
        self.iters = iters;
        self
    }

    /// Stopping tolerance on the change of the relative error.
    pub fn with_tol(mut self, tol: f64) -> Self {
        self.tol = tol;
        self
    }

    /// The seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The initialisation.
    pub fn with_init(mut self, init: CpInit) -> Self {
        self.init = init;
        self
    }
}

/// A rank-`R` CP decomposition `T ≈ Σ_r a¹_r ∘ a²_r ∘ … ∘ aᴺ_r` of an order-`N` tensor: one
/// factor `[n_k, R]` per mode, no separate weights (the column norms are balanced across
/// the modes, which suits per-tensor quantization).
///
/// # Memory
///
/// `R Σ_k n_k` elements ([`Cp::param_count`]) against `Π_k n_k` dense; with a
/// [`QuantGrid`], codes of `bits` bits each plus one scale per factor.
#[derive(Debug, Clone)]
pub struct Cp {
    /// `[n_k, R]` for each mode `k`.
    pub factors: Vec<Tensor<2>>,
    /// The grid, when the factors are quantized.
    pub grid: Option<QuantGrid>,
}

impl Cp {
    /// The rank `R`.
    pub fn rank(&self) -> usize {
        self.factors[0].dims()[1]
    }

    /// The modes `n_1..n_N`.
    pub fn shape(&self) -> Vec<usize> {
        self.factors.iter().map(|f| f.dims()[0]).collect()
    }

    /// Elements in the factors: `R Σ n_k`.
    pub fn param_count(&self) -> usize {
        self.rank() * self.shape().iter().sum::<usize>()
    }

    /// The dense tensor flattened in row-major order: `A₁ · KR(A₂, .., A_N)ᵀ`.
    pub fn full_flat(&self) -> Tensor<1> {
        let n: usize = self.shape().iter().product();
        if self.factors.len() == 1 {
            return self.factors[0].clone().sum_dim(1).reshape([n]);
        }
        let rest: Vec<&Tensor<2>> = self.factors[1..].iter().collect();
        let kr = khatri_rao(&rest);
        self.factors[0].clone().matmul(kr.transpose()).reshape([n])
    }

    /// The dense tensor.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `D` is not the number of factors.
    pub fn full<const D: usize>(&self) -> Result<Tensor<D>> {
        let shape = self.shape();
        if shape.len() != D {
            return Err(Error::config(
                "full::<D>",
                D,
                format!("D = {} (the number of factors)", shape.len()),
            ));
        }
        Ok(self.full_flat().reshape(burn::tensor::Shape::from(shape)))
    }

    /// `‖T - full‖_F / ‖T‖_F` against a dense tensor `t` of the same shape.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `t`'s shape is not the decomposition's.
    pub fn relative_error<const D: usize>(&self, t: &Tensor<D>) -> Result<f64> {
        if t.dims().to_vec() != self.shape() {
            return Err(Error::config(
                "tensor shape",
                format!("{:?}", t.dims()),
                format!("the decomposition's shape {:?}", self.shape()),
            ));
        }
        let n: usize = self.shape().iter().product();
        let flat = t.clone().detach().reshape([n]);
        let norm = frobenius(flat.clone());
        Ok(frobenius(flat - self.full_flat()) / norm.max(f64::MIN_POSITIVE))
    }

    /// Each factor rounded to its own `bits`-bit grid by [`quantize_to_grid`]: the
    /// post-training "decompose, then quantize" baseline of [`super::cp_admm_quantized`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `bits` outside `2..=8`.
    pub fn quantize(&self, bits: u32) -> Result<Cp> {
        let mut factors = Vec::with_capacity(self.factors.len());
        let mut scales = Vec::with_capacity(self.factors.len());
        for f in &self.factors {
            let (q, s) = quantize_to_grid(f.clone(), bits)?;
            factors.push(q);
            scales.push(s);
        }
        Ok(Cp {
            factors,
            grid: Some(QuantGrid { bits, scales }),
        })
    }
}

/// Modes `[o_1, .., o_d, i_1, .., i_d]` for reading a weight `[d_out, d_in]` (row-major) as
/// an order-`2d` tensor: a plain reshape, each side split by [`factorize`].
///
/// ```
/// let modes = memtrain::decompose::cp_modes(768, 3072, 2).unwrap();
/// assert_eq!(modes, vec![24, 32, 48, 64]);
/// ```
///
/// # Errors
///
/// As [`factorize`], for either side.
pub fn cp_modes(d_out: usize, d_in: usize, per_side: usize) -> Result<Vec<usize>> {
    let mut modes = factorize(d_out, per_side)?;
    modes.extend(factorize(d_in, per_side)?);
    Ok(modes)
}

/// The Khatri–Rao (column-wise Kronecker) product `[Π n_j, R]` of factors `[n_j, R]`, the
/// first factor's index varying slowest (row-major, matching [`unfold`]).
pub(crate) fn khatri_rao(factors: &[&Tensor<2>]) -> Tensor<2> {
    let mut acc = factors[0].clone();
    for f in &factors[1..] {
        let ([p, r], [n, _]) = (acc.dims(), f.dims());
        let wide = acc.reshape([p, 1, r]) * (*f).clone().reshape([1, n, r]);
        acc = wide.reshape([p * n, r]);
    }
    acc
}

/// The mode-`k` unfolding `[n_k, Π_{j≠k} n_j]` of a flat tensor of `shape`, the remaining
/// modes in order (row-major).
pub(crate) fn unfold(x: Tensor<1>, shape: &[usize], k: usize) -> Tensor<2> {
    let pre: usize = shape[..k].iter().product();
    let post: usize = shape[k + 1..].iter().product();
    compact(
        x.reshape([pre, shape[k], post])
            .permute([1, 0, 2])
            .reshape([shape[k], pre * post]),
    )
}

/// `X_(k) · KR(A_j, j ≠ k)` `[n_k, R]` on the host.
pub(crate) fn mttkrp(unfolded: &Tensor<2>, factors: &[Tensor<2>], k: usize) -> Vec<f64> {
    let others: Vec<&Tensor<2>> = factors
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != k)
        .map(|(_, f)| f)
        .collect();
    host::values(unfolded.clone().matmul(khatri_rao(&others)))
}

/// `A_k ᵀ A_k` `[R, R]` on the host, row-major.
pub(crate) fn gram(f: &Tensor<2>) -> Vec<f64> {
    host::values(f.clone().transpose().matmul(f.clone()))
}

/// The Hadamard product of the Grams of every factor but `skip` (`None`: all of them).
pub(crate) fn hadamard_grams(grams: &[Vec<f64>], skip: Option<usize>, r: usize) -> Vec<f64> {
    let mut v = vec![1.0; r * r];
    for (j, g) in grams.iter().enumerate() {
        if Some(j) != skip {
            v.iter_mut().zip(g).for_each(|(a, b)| *a *= b);
        }
    }
    v
}

/// Validates a flat tensor read with `shape` and a rank, returning its norm.
pub(crate) fn check_cp_input(x: &Tensor<1>, shape: &[usize], rank: usize) -> Result<f64> {
    let numel: usize = shape.iter().product();
    if shape.len() < 2 || shape.contains(&0) || numel != x.dims()[0] {
        return Err(Error::config(
            "CP shape",
            format!("{shape:?} for {} elements", x.dims()[0]),
            "at least two modes >= 1 whose product is the number of elements",
        ));
    }
    if rank == 0 {
        return Err(Error::config("CP rank", 0, "a rank of at least 1"));
    }
    let norm = frobenius(x.clone());
    if !norm.is_finite() {
        return Err(Error::config(
            "CP tensor",
            "NaN or infinite entries",
            "finite tensor entries",
        ));
    }
    Ok(norm)
}

/// Solves `A V = M` for `A` with `V` the symmetric `[R, R]` Gram product (ridge-regularised
/// Cholesky, see [`ridge_cholesky`]), `M` `[n, R]` on the host.
pub(crate) fn solve_normal(v: &[f64], mut m: Vec<f64>, r: usize) -> Result<Vec<f64>> {
    let l = ridge_cholesky(v, r).ok_or_else(|| {
        Error::config(
            "CP normal equations",
            "a Gram matrix with NaN entries or no positive diagonal",
            "finite factors",
        )
    })?;
    host::cholesky_solve_rows(&l, r, &mut m);
    Ok(m)
}

fn init_factors(
    unfolded: &[Tensor<2>],
    shape: &[usize],
    params: &CpParams,
    device: &Device,
    dtype: DType,
) -> Result<Vec<Tensor<2>>> {
    let r = params.rank;
    let mut rng = StdRng::seed_from_u64(params.seed);
    let mut factors = Vec::with_capacity(shape.len());
    for (k, &n) in shape.iter().enumerate() {
        let mut v: Vec<f64> = (0..n * r)
            .map(|_| rng.random::<f64>() * 2.0 - 1.0)
            .collect();
        if params.init == CpInit::Svd {
            let take = r.min(n);
            let u = host::values(leading_left(unfolded[k].clone(), take)?);
            for i in 0..n {
                v[i * r..i * r + take].copy_from_slice(&u[i * take..(i + 1) * take]);
            }
        }
        factors.push(host::tensor(v, [n, r], device, dtype));
    }
    Ok(factors)
}

/// CP decomposition of an order-`N` tensor (`N >= 2`) by alternating least squares: each
/// sweep solves, for every mode `k` in turn, `A_k (⊛_{j≠k} A_jᵀA_j) = X_(k) KR(A_j, j≠k)`
/// (the normal equations, an `R x R` ridge-regularised Cholesky solve), normalising the
/// columns into weights; at the end the weights are spread evenly over the modes. Stops
/// after `iters` sweeps or when the relative error moves by less than `tol`.
///
/// A linear weight `[d_out, d_in]` is reshaped by the caller, e.g. with [`cp_modes`].
/// [Lebedev et al. 2015, Speeding-up convolutional neural networks using fine-tuned
/// CP-decomposition](https://arxiv.org/abs/1412.6553); ALS as in [Kolda & Bader 2009,
/// Tensor decompositions and applications](https://doi.org/10.1137/07070111X).
///
/// # Memory
///
/// The `N` unfoldings (`N` copies of the tensor) and one Khatri–Rao product
/// `[Π_{j≠k} n_j, R]` at a time.
///
/// # Errors
///
/// [`Error::Config`] for an order below 2, rank 0, a negative or NaN `tol`, or NaN/infinite
/// entries.
pub fn cp_als<const D: usize>(t: Tensor<D>, params: CpParams) -> Result<Cp> {
    let shape = t.dims().to_vec();
    let n: usize = shape.iter().product();
    cp_als_shaped(t.reshape([n]), &shape, params)
}

/// [`cp_als`] of a flat tensor read with the row-major `shape` (any order `>= 2`).
///
/// # Errors
///
/// As [`cp_als`], and [`Error::Config`] when `shape` does not hold the tensor's elements.
pub fn cp_als_shaped(t: Tensor<1>, shape: &[usize], params: CpParams) -> Result<Cp> {
    let x = t.detach();
    let norm = check_cp_input(&x, shape, params.rank)?;
    if params.tol.is_nan() || params.tol < 0.0 {
        return Err(Error::config("CP tol", params.tol, "a tolerance >= 0"));
    }
    let (device, dtype) = (x.device(), x.dtype());
    let (d, r) = (shape.len(), params.rank);
    let unfolded: Vec<Tensor<2>> = (0..d).map(|k| unfold(x.clone(), shape, k)).collect();
    let mut factors = init_factors(&unfolded, shape, &params, &device, dtype)?;
    let mut grams: Vec<Vec<f64>> = factors.iter().map(gram).collect();
    let mut weights = vec![1.0; r];
    let mut prev = f64::INFINITY;
    for _ in 0..params.iters {
        let mut last_m = Vec::new();
        for k in 0..d {
            let m = mttkrp(&unfolded[k], &factors, k);
            let v = hadamard_grams(&grams, Some(k), r);
            let mut a = solve_normal(&v, m.clone(), r)?;
            for (c, w) in weights.iter_mut().enumerate() {
                let len = (0..shape[k])
                    .map(|i| a[i * r + c].powi(2))
                    .sum::<f64>()
                    .sqrt();
                *w = if len > 0.0 { len } else { 1.0 };
                (0..shape[k]).for_each(|i| a[i * r + c] /= *w);
            }
            let f = host::tensor(a, [shape[k], r], &device, dtype);
            grams[k] = gram(&f);
            factors[k] = f;
            last_m = m;
        }
        // ‖X - X̂‖² = ‖X‖² - 2<X, X̂> + ‖X̂‖² from the last mode's MTTKRP and the Grams.
        let last = host::values(factors[d - 1].clone());
        let inner: f64 = last
            .iter()
            .zip(&last_m)
            .enumerate()
            .map(|(i, (a, m))| weights[i % r] * a * m)
            .sum();
        let all = hadamard_grams(&grams, None, r);
        let rec: f64 = (0..r * r)
            .map(|i| weights[i / r] * weights[i % r] * all[i])
            .sum();
        let err = (norm * norm - 2.0 * inner + rec).max(0.0).sqrt() / norm.max(f64::MIN_POSITIVE);
        if (prev - err).abs() < params.tol {
            break;
        }
        prev = err;
    }
    let spread: Vec<f64> = weights.iter().map(|w| w.powf(1.0 / d as f64)).collect();
    let scale = host::tensor(spread, [1, r], &device, dtype);
    let factors = factors.into_iter().map(|f| f * scale.clone()).collect();
    Ok(Cp {
        factors,
        grid: None,
    })
}
