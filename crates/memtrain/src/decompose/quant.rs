//! Quantization-aware CP: every factor on a low-bit grid, fitted by AO-ADMM.

use burn::tensor::Tensor;

use super::cp::{
    Cp, CpParams, check_cp_input, cp_als_shaped, gram, hadamard_grams, mttkrp, unfold,
};
use super::grid::{QuantGrid, check_bits, project};
use crate::error::{Error, Result};
use memtrain_tt::linalg::host::{self, ridge_cholesky};

/// The bit width and the ADMM penalty of `params`.
fn check_admm(params: &CpQuantParams) -> Result<()> {
    check_bits(params.bits)?;
    if let Some(rho) = params.rho
        && !(rho > 0.0 && rho.is_finite())
    {
        return Err(Error::config("rho", rho, "a finite ADMM penalty > 0"));
    }
    Ok(())
}

/// Settings of [`cp_admm_quantized`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpQuantParams {
    /// The CP rank `R >= 1`.
    pub rank: usize,
    /// Bits per factor entry, `2..=8`.
    pub bits: u32,
    /// Sweeps over the modes (each runs ADMM on one factor at a time).
    pub outer_iters: usize,
    /// ADMM iterations per factor update.
    pub admm_iters: usize,
    /// The ADMM penalty; `None` uses `trace(G) / R` of each factor's Gram product `G`, the
    /// choice of Huang et al.
    pub rho: Option<f64>,
    /// Seed of the CP-ALS initialisation.
    pub seed: u64,
    /// CP-ALS sweeps of the initialisation.
    pub als_iters: usize,
}

impl CpQuantParams {
    /// Rank `rank` at `bits` bits: 20 outer sweeps of 10 ADMM iterations, automatic `rho`,
    /// seed 0, 200 ALS sweeps to start.
    pub fn new(rank: usize, bits: u32) -> Self {
        Self {
            rank,
            bits,
            outer_iters: 20,
            admm_iters: 10,
            rho: None,
            seed: 0,
            als_iters: 200,
        }
    }

    /// `outer` sweeps of `admm` iterations per factor.
    pub fn with_iters(mut self, outer: usize, admm: usize) -> Self {
        self.outer_iters = outer;
        self.admm_iters = admm;
        self
    }

    /// A fixed ADMM penalty.
    pub fn with_rho(mut self, rho: f64) -> Self {
        self.rho = Some(rho);
        self
    }

    /// The seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// Quantization-aware CP decomposition: a rank-`R` CP whose every factor lies on its own
/// symmetric `bits`-bit grid ([`quantize_to_grid`](super::quantize_to_grid)), fitted by alternating optimisation
/// with ADMM (AO-ADMM), as in [Cherniuk et al. 2023, Quantization aware factorization for
/// deep neural network compression](https://arxiv.org/abs/2308.04595).
///
/// Starts from [`super::cp_als`] (balanced factors, rounded to the grid). Then for
/// `outer_iters` sweeps, for each mode `k` with the other (quantized) factors fixed,
/// `G = ⊛_{j≠k} A_jᵀA_j`, `F = X_(k) KR(A_j, j≠k)`, runs `admm_iters` of
///
/// - primal: `Ã = (F + ρ (A + U)) (G + ρ I)⁻¹` (least squares with the penalty),
/// - split: `A = Q(Ã - U)`, the projection onto the grid of `Ã - U`'s own maximum,
/// - dual: `U ← U + A - Ã`,
///
/// keeping each factor's dual across sweeps ([Huang, Sidiropoulos & Liavas 2016, A flexible
/// and efficient algorithmic framework for constrained matrix and tensor
/// factorization](https://arxiv.org/abs/1506.04209)). The returned factors are the split
/// variables `A`, exactly on the grid recorded in [`Cp::grid`].
///
/// # Errors
///
/// [`Error::Config`] for `bits` outside `2..=8` (naming the value), a non-positive or NaN
/// `rho`, an iteration that diverges (a fixed `rho` too small for the problem), and as
/// [`super::cp_als`].
pub fn cp_admm_quantized<const D: usize>(t: Tensor<D>, params: CpQuantParams) -> Result<Cp> {
    let shape = t.dims().to_vec();
    let n: usize = shape.iter().product();
    cp_admm_quantized_shaped(t.reshape([n]), &shape, params)
}

/// [`cp_admm_quantized`] of a flat tensor read with the row-major `shape`.
///
/// # Errors
///
/// As [`cp_admm_quantized`], and [`Error::Config`] when `shape` does not hold the tensor's
/// elements.
pub fn cp_admm_quantized_shaped(
    t: Tensor<1>,
    shape: &[usize],
    params: CpQuantParams,
) -> Result<Cp> {
    check_admm(&params)?;
    let x = t.detach();
    check_cp_input(&x, shape, params.rank)?;
    let als = CpParams::new(params.rank)
        .with_iters(params.als_iters)
        .with_seed(params.seed);
    let init = cp_als_shaped(x.clone(), shape, als)?;
    cp_admm_quantized_from(x, shape, &init, params)
}

/// The AO-ADMM refinement of [`cp_admm_quantized`] started from a given (unquantized) CP
/// `init` of the flat tensor `t` read with `shape`, instead of a fresh [`super::cp_als`]:
/// compares quantization-aware fitting with [`Cp::quantize`] of the very same start.
/// `params.rank`, `params.seed` and `params.als_iters` are ignored (the rank is `init`'s).
///
/// # Errors
///
/// As [`cp_admm_quantized_shaped`], and [`Error::Config`] when `init`'s shape is not
/// `shape`.
pub fn cp_admm_quantized_from(
    t: Tensor<1>,
    shape: &[usize],
    init: &Cp,
    params: CpQuantParams,
) -> Result<Cp> {
    check_admm(&params)?;
    if init.shape() != shape {
        return Err(Error::config(
            "initial CP shape",
            format!("{:?}", init.shape()),
            format!("the tensor's shape {shape:?}"),
        ));
    }
    let x = t.detach();
    check_cp_input(&x, shape, init.rank())?;
    let (device, dtype) = (x.device(), x.dtype());
    let (d, r, bits) = (shape.len(), init.rank(), params.bits);
    let unfolded: Vec<Tensor<2>> = (0..d).map(|k| unfold(x.clone(), shape, k)).collect();
    let mut split: Vec<Vec<f64>> = Vec::with_capacity(d);
    let mut scales = Vec::with_capacity(d);
    for f in &init.factors {
        let mut v = host::values(f.clone());
        scales.push(project(&mut v, bits));
        split.push(v);
    }
    let mut factors: Vec<Tensor<2>> = split
        .iter()
        .enumerate()
        .map(|(k, v)| host::tensor(v.clone(), [shape[k], r], &device, dtype))
        .collect();
    let mut grams: Vec<Vec<f64>> = factors.iter().map(gram).collect();
    let mut duals: Vec<Vec<f64>> = shape.iter().map(|&n| vec![0.0; n * r]).collect();
    for _ in 0..params.outer_iters {
        for k in 0..d {
            let f = mttkrp(&unfolded[k], &factors, k);
            let mut g = hadamard_grams(&grams, Some(k), r);
            let trace: f64 = (0..r).map(|i| g[i * r + i]).sum();
            let rho = params
                .rho
                .unwrap_or(trace / r as f64)
                .max(f64::MIN_POSITIVE);
            (0..r).for_each(|i| g[i * r + i] += rho);
            let l = ridge_cholesky(&g, r).ok_or_else(|| {
                Error::config(
                    "CP-ADMM normal equations",
                    "a Gram matrix with NaN entries",
                    "finite factors",
                )
            })?;
            let (a, u) = (&mut split[k], &mut duals[k]);
            for _ in 0..params.admm_iters {
                let mut primal: Vec<f64> = f
                    .iter()
                    .zip(a.iter().zip(u.iter()))
                    .map(|(f, (a, u))| f + rho * (a + u))
                    .collect();
                host::cholesky_solve_rows(&l, r, &mut primal);
                if primal.iter().any(|x| !x.is_finite()) {
                    return Err(Error::config(
                        "rho",
                        rho,
                        "a larger ADMM penalty (the iteration diverged)",
                    ));
                }
                let mut next: Vec<f64> = primal.iter().zip(u.iter()).map(|(p, u)| p - u).collect();
                scales[k] = project(&mut next, bits);
                for ((u, n), p) in u.iter_mut().zip(&next).zip(&primal) {
                    *u += n - p;
                }
                *a = next;
            }
            factors[k] = host::tensor(a.clone(), [shape[k], r], &device, dtype);
            grams[k] = gram(&factors[k]);
        }
    }
    Ok(Cp {
        factors,
        grid: Some(QuantGrid { bits, scales }),
    })
}
