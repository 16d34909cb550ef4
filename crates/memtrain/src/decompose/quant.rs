//! Quantization-aware CP: every factor on a low-bit grid, fitted by AO-ADMM.

use burn::tensor::{Shape, Tensor};

use super::cp::{
    Cp, CpParams, QuantGrid, check_cp_input, cp_als_shaped, gram, hadamard_grams, mttkrp, unfold,
};
use crate::error::{Error, Result};
use memtrain_tt::linalg::host::{self, ridge_cholesky};

/// The smallest clipping ratio the step search tries.
const CLIP_MIN: f64 = 0.3;
/// Clipping ratios tried below 1.
const CLIP_STEPS: usize = 35;

fn check_bits(bits: u32) -> Result<()> {
    if !(2..=8).contains(&bits) {
        return Err(Error::config("bits", bits, "2..=8"));
    }
    Ok(())
}

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

/// Rounds `v` in place to the symmetric `bits`-bit grid of its own maximum and returns the
/// step (see [`quantize_to_grid`]).
pub(crate) fn project(v: &mut [f64], bits: u32) -> f64 {
    let max = v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let q = f64::from((1u32 << (bits - 1)) - 1); // the largest code, 2^(b-1) - 1
    if max == 0.0 {
        v.iter_mut().for_each(|x| *x = 0.0);
        return 0.0;
    }
    let sq_err = |scale: f64| -> f64 {
        v.iter()
            .map(|x| (x - scale * (x / scale).round().clamp(-q, q)).powi(2))
            .sum()
    };
    let mut scale = max / q;
    let mut best = sq_err(scale);
    for i in 0..CLIP_STEPS {
        let s = (CLIP_MIN + (1.0 - CLIP_MIN) * i as f64 / CLIP_STEPS as f64) * max / q;
        let e = sq_err(s);
        if e < best {
            (scale, best) = (s, e);
        }
    }
    for x in v.iter_mut() {
        *x = scale * (*x / scale).round().clamp(-q, q);
    }
    scale
}

/// Rounds `t` to a symmetric per-tensor `bits`-bit grid: values `s · q` for integers `q` in
/// `[-(2^(b-1) - 1), 2^(b-1) - 1]` (round to nearest, ties away from zero, clamp), with the
/// step `s = c · max|t| / (2^(b-1) - 1)` whose clipping ratio `c`, among 36 evenly spaced
/// in `[0.3, 1]`, gives the smallest squared error (`c = 1`: no clipping). Returns the
/// rounded tensor (same shape, device and dtype) and `s`.
///
/// The grid has `2^b - 1` levels including 0 (codes fit `b` bits, one unused); unclipped
/// entries move by at most `s / 2`, and rounding a rounded tensor changes no value. Why not
/// `s = 2 max / (2^b - 1)`: on an integer grid it clamps the maximum half a step inwards,
/// so every re-rounding shrinks the tensor, and the repeated projections of
/// [`cp_admm_quantized`] collapsed the factors towards zero for large `rho` (measured). The
/// step search is the projection onto the set of all per-tensor grids, up to the search's
/// resolution; it lowers the error of a plain rounding at low bit widths (outliers no
/// longer set the step) and leaves 8 bits nearly unchanged. An all-zero tensor gets step 0.
///
/// ```
/// use burn::tensor::{Device, Tensor};
/// let t = Tensor::<1>::from_floats([1.5, -0.2, 0.9], &Device::flex());
/// // 2 bits: codes -1, 0, 1. s = 1.5 leaves 0.6 on 0.9; clipping at s = 1.2 (c = 0.8)
/// // errs 0.3 on both 1.5 and 0.9, the least squared error.
/// let (q, s) = memtrain::decompose::quantize_to_grid(t, 2).unwrap();
/// assert!((s - 1.2).abs() < 1e-6);
/// let q = q.into_data().to_vec::<f32>().unwrap();
/// assert!((q[0] - 1.2).abs() < 1e-6 && q[1] == 0.0 && (q[2] - 1.2).abs() < 1e-6);
/// ```
///
/// # Errors
///
/// [`Error::Config`] for `bits` outside `2..=8`.
pub fn quantize_to_grid<const D: usize>(t: Tensor<D>, bits: u32) -> Result<(Tensor<D>, f64)> {
    check_bits(bits)?;
    let (device, dtype, dims) = (t.device(), t.dtype(), t.dims());
    let mut v = host::values(t.detach());
    let scale = project(&mut v, bits);
    let data = burn::tensor::TensorData::new(v, Shape::from(dims.to_vec()));
    Ok((Tensor::from_data(data, (&device, dtype)), scale))
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
/// symmetric `bits`-bit grid ([`quantize_to_grid`]), fitted by alternating optimisation
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
