//! The optimal few-bit derivative: the `2^b`-level table a few-bit activation looks its
//! gradient up in.
//!
//! Novikov, Bershatsky, Gusak, Shonenkov, Dimitrov, Oseledets, "Few-Bit Backward: Quantized
//! Gradients of Activation Functions for Memory Footprint Reduction", ICML 2023,
//! <https://arxiv.org/abs/2202.00441>.
//!
//! `f'` is replaced by the piecewise-constant `q` with `2^b` levels that minimises
//! `∫ (f'(x) - q(x))² w(x) dx` over all placements of `2^b - 1` borders on a uniform grid
//! ([`quantize_derivative`], an exact dynamic program). Forward computes `y = f(x)` exactly
//! and keeps the index of `x`'s interval; backward returns `dy · levels[index]`.
//!
//! The weight: the paper minimises the plain L2 distance between `f'` and `q` over a finite
//! range, and the authors' notebook uses `w = 1` on a uniform grid of 4096 points over
//! `[-10, 10]`; that is the default here ([`Weight::Uniform`]). [`Weight::Gaussian`] (the
//! N(0, 1) density, the notebook's commented alternative) weights the error by where
//! pre-activations actually fall, and its objective is exactly the expected squared gradient
//! error on N(0, 1) inputs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde::Serialize;

use super::function::ActFn;
use crate::error::{Error, Result};

/// The weight `w(x)` of the L2 objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Weight {
    /// `w = 1` over the grid's range (the authors' choice).
    Uniform,
    /// The N(0, 1) density.
    Gaussian,
}

/// Parameters of [`quantize_derivative`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct QuantizeParams {
    /// Grid points (at least 2^bits + 1).
    pub grid: usize,
    /// The grid's range `[lo, hi]`.
    pub range: (f64, f64),
    /// The weight of the error.
    pub weight: Weight,
}

impl Default for QuantizeParams {
    /// 4096 points on `[-10, 10]`, `w = 1`: the authors' notebook.
    fn default() -> Self {
        QuantizeParams {
            grid: 4096,
            range: (-10.0, 10.0),
            weight: Weight::Uniform,
        }
    }
}

/// An optimal piecewise-constant derivative: `levels.len() = 2^bits` intervals between
/// `borders` (which include the two outer grid ends, so `borders.len() = levels.len() + 1`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FewBitTable {
    /// The function.
    pub func: ActFn,
    /// Bits per code.
    pub bits: u32,
    /// Interval ends, ascending, from the grid's low end to its high end.
    pub borders: Vec<f64>,
    /// The level (weighted mean of `f'`) on each interval.
    pub levels: Vec<f64>,
    /// The objective `∫ (f' - q)² w dx` at the optimum (rectangle rule on the grid).
    pub error: f64,
    /// `∫ w dx` over the range, so `error / total_weight` is the mean squared error under `w`.
    pub total_weight: f64,
}

impl FewBitTable {
    /// The interval of `x` (inputs beyond the grid belong to the outer intervals).
    #[inline]
    pub fn code(&self, x: f64) -> usize {
        let inner = &self.borders[1..self.borders.len() - 1];
        inner.partition_point(|&b| b <= x)
    }

    /// `q(x)`, the quantized derivative.
    pub fn derivative(&self, x: f64) -> f64 {
        self.levels[self.code(x)]
    }

    /// Inner borders and levels in f32, for the kernel.
    pub(crate) fn f32_parts(&self) -> (Vec<f32>, Vec<f32>) {
        let inner = self.borders[1..self.borders.len() - 1]
            .iter()
            .map(|&b| b as f32)
            .collect();
        (inner, self.levels.iter().map(|&l| l as f32).collect())
    }

    /// Bytes of the table itself (kept once, shared by every call).
    pub fn table_bytes(&self) -> usize {
        4 * (self.levels.len() * 2 - 1)
    }
}

/// Checks a bit count for few-bit activations.
///
/// # Errors
///
/// [`Error::Config`] when `bits` is outside 1..=8.
pub fn validate_bits(bits: u32) -> Result<()> {
    if (1..=8).contains(&bits) {
        Ok(())
    } else {
        Err(Error::config("bits", bits, "1..=8"))
    }
}

/// The optimal `2^bits`-level piecewise-constant approximation of `func`'s derivative on the
/// grid, by dynamic programming (exact on the grid).
///
/// Grid cell `i` is `[x_i, x_{i+1}]` with `x_i = lo + i h`; its weight `w_i = w(mid_i) h` and
/// value `f'(mid_i)`. With prefix sums `W`, `F1 = Σ w f'`, `F2 = Σ w f'²`, a run of cells
/// `[i, j)` has level `(F1_j - F1_i) / (W_j - W_i)` and cost
/// `(F2_j - F2_i) - level² (W_j - W_i)`; `E[k][j]` (least cost of the first `j` cells in `k`
/// runs) is `min_i E[k-1][i] + cost(i, j)`: `O(2^bits · grid²)` work, parallel over `j`.
///
/// # Errors
///
/// [`Error::Config`] for bits outside 1..=8, a grid with fewer than `2^bits` cells, or an
/// empty range.
pub fn quantize_derivative(func: ActFn, bits: u32, params: QuantizeParams) -> Result<FewBitTable> {
    use rayon::prelude::*;
    validate_bits(bits)?;
    let k = 1usize << bits;
    let n = params.grid;
    if n < k {
        return Err(Error::config(
            "grid",
            n,
            format!("at least 2^bits = {k} cells"),
        ));
    }
    let (lo, hi) = params.range;
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        return Err(Error::config(
            "range",
            format!("{lo}..{hi}"),
            "a finite range with lo < hi",
        ));
    }
    let h = (hi - lo) / n as f64;
    let (mut w_sum, mut f1, mut f2) = (vec![0.0; n + 1], vec![0.0; n + 1], vec![0.0; n + 1]);
    for i in 0..n {
        let x = lo + (i as f64 + 0.5) * h;
        let w = h * match params.weight {
            Weight::Uniform => 1.0,
            Weight::Gaussian => (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt(),
        };
        let d = func.df(x);
        w_sum[i + 1] = w_sum[i] + w;
        f1[i + 1] = f1[i] + w * d;
        f2[i + 1] = f2[i] + w * d * d;
    }
    let cost = |i: usize, j: usize| {
        let w = w_sum[j] - w_sum[i];
        if w <= 0.0 {
            return 0.0;
        }
        let m = f1[j] - f1[i];
        ((f2[j] - f2[i]) - m * m / w).max(0.0)
    };
    let level = |i: usize, j: usize| {
        let w = w_sum[j] - w_sum[i];
        if w <= 0.0 { 0.0 } else { (f1[j] - f1[i]) / w }
    };
    // best[r][j]: least cost of cells 0..j in r + 1 runs; arg[r][j]: start of the last run.
    let mut best: Vec<Vec<f64>> = vec![(0..=n).map(|j| cost(0, j)).collect()];
    let mut arg: Vec<Vec<usize>> = vec![vec![0; n + 1]];
    for r in 1..k {
        let prev = &best[r - 1];
        let row: Vec<(f64, usize)> = (0..=n)
            .into_par_iter()
            .map(|j| {
                if j < r + 1 {
                    return (f64::INFINITY, 0);
                }
                let mut acc = (f64::INFINITY, 0);
                for (i, p) in prev.iter().enumerate().take(j).skip(r) {
                    let c = p + cost(i, j);
                    if c < acc.0 {
                        acc = (c, i);
                    }
                }
                acc
            })
            .collect();
        best.push(row.iter().map(|p| p.0).collect());
        arg.push(row.iter().map(|p| p.1).collect());
    }
    let mut cuts = vec![n];
    let mut j = n;
    for r in (1..k).rev() {
        j = arg[r][j];
        cuts.push(j);
    }
    cuts.push(0);
    cuts.reverse();
    let borders: Vec<f64> = cuts.iter().map(|&c| lo + c as f64 * h).collect();
    let levels: Vec<f64> = cuts.windows(2).map(|c| level(c[0], c[1])).collect();
    Ok(FewBitTable {
        func,
        bits,
        borders,
        levels,
        error: best[k - 1][n],
        total_weight: w_sum[n],
    })
}

/// The table for `(func, bits)` with default [`QuantizeParams`], computed once per process.
///
/// # Errors
///
/// As [`quantize_derivative`].
pub fn default_table(func: ActFn, bits: u32) -> Result<Arc<FewBitTable>> {
    validate_bits(bits)?;
    type Cache = Mutex<HashMap<(ActFn, u32), Arc<FewBitTable>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(t) = cache
        .lock()
        .expect("no panic holds the lock")
        .get(&(func, bits))
    {
        return Ok(t.clone());
    }
    let table = Arc::new(quantize_derivative(func, bits, QuantizeParams::default())?);
    cache
        .lock()
        .expect("no panic holds the lock")
        .insert((func, bits), table.clone());
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every placement of `k - 1` cuts among `n - 1` inner grid lines.
    fn brute_force(func: ActFn, bits: u32, params: QuantizeParams) -> f64 {
        let k = 1usize << bits;
        let n = params.grid;
        let table = quantize_derivative(func, bits, QuantizeParams { grid: n, ..params }).unwrap();
        let one = |cuts: &[usize]| {
            // The objective of a placement, through the DP with those cuts forced: recompute.
            let (lo, hi) = params.range;
            let h = (hi - lo) / n as f64;
            let mut total = 0.0;
            let mut bounds = vec![0];
            bounds.extend_from_slice(cuts);
            bounds.push(n);
            for seg in bounds.windows(2) {
                let xs: Vec<(f64, f64)> = (seg[0]..seg[1])
                    .map(|i| {
                        let x = lo + (i as f64 + 0.5) * h;
                        let w = match params.weight {
                            Weight::Uniform => 1.0,
                            Weight::Gaussian => {
                                (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
                            }
                        };
                        (h * w, func.df(x))
                    })
                    .collect();
                let w: f64 = xs.iter().map(|p| p.0).sum();
                let m = xs.iter().map(|p| p.0 * p.1).sum::<f64>() / w.max(f64::MIN_POSITIVE);
                total += xs.iter().map(|p| p.0 * (p.1 - m).powi(2)).sum::<f64>();
            }
            total
        };
        let mut best = f64::INFINITY;
        let mut cuts: Vec<usize> = (1..k).collect();
        loop {
            best = best.min(one(&cuts));
            // Next combination of k - 1 cuts from 1..n.
            let mut i = k - 1;
            loop {
                if i == 0 {
                    assert!(
                        (table.error - best).abs() <= 1e-9 * best.max(1e-12),
                        "dp {} brute {best}",
                        table.error
                    );
                    return best;
                }
                i -= 1;
                if cuts[i] < n - (k - 1 - i) {
                    cuts[i] += 1;
                    for j in i + 1..k - 1 {
                        cuts[j] = cuts[j - 1] + 1;
                    }
                    break;
                }
            }
        }
    }

    #[test]
    fn should_match_brute_force_on_small_grids() {
        for func in [ActFn::Gelu, ActFn::Silu, ActFn::Tanh] {
            for bits in [1, 2] {
                let params = QuantizeParams {
                    grid: 14,
                    range: (-4.0, 4.0),
                    weight: Weight::Uniform,
                };
                brute_force(func, bits, params);
                brute_force(
                    func,
                    bits,
                    QuantizeParams {
                        weight: Weight::Gaussian,
                        ..params
                    },
                );
            }
        }
    }

    #[test]
    fn should_reproduce_the_reference_gelu_two_bit_table() {
        // Reference (w = 1 on [-100, 100]): borders ±0.4536, 0; levels -0.0015, 0.3251,
        // 0.6749, 1.0015. Same objective on the same range, grid step 200/8192 = 0.024.
        let params = QuantizeParams {
            grid: 8192,
            range: (-100.0, 100.0),
            weight: Weight::Uniform,
        };
        let t = quantize_derivative(ActFn::Gelu, 2, params).unwrap();
        let step = 200.0 / 8192.0;
        for (got, want) in t.borders[1..4].iter().zip([-0.4536, 0.0, 0.4536]) {
            assert!((got - want).abs() <= step, "borders {:?}", t.borders);
        }
        for (got, want) in t.levels.iter().zip([-0.0015, 0.3251, 0.6749, 1.0015]) {
            assert!((got - want).abs() <= 5e-3, "levels {:?}", t.levels);
        }
    }

    #[test]
    fn should_lower_the_error_with_every_bit_and_be_exact_for_relu() {
        let params = QuantizeParams {
            grid: 1024,
            ..Default::default()
        };
        for func in [ActFn::Gelu, ActFn::Silu, ActFn::Mish] {
            let errors: Vec<f64> = (1..=8)
                .map(|b| quantize_derivative(func, b, params).unwrap().error)
                .collect();
            assert!(
                errors.windows(2).all(|e| e[1] < e[0]),
                "{func:?}: {errors:?}"
            );
        }
        for func in [ActFn::Relu, ActFn::LeakyRelu] {
            let t = quantize_derivative(func, 1, QuantizeParams::default()).unwrap();
            assert!(t.error < 1e-12, "{func:?} at 1 bit: {}", t.error);
            assert!(
                (t.borders[1]).abs() < 1e-9,
                "{func:?} border {}",
                t.borders[1]
            );
        }
    }

    #[test]
    fn should_reject_bad_bits_and_grids() {
        assert!(
            quantize_derivative(ActFn::Gelu, 0, QuantizeParams::default())
                .unwrap_err()
                .to_string()
                .contains("1..=8")
        );
        assert!(quantize_derivative(ActFn::Gelu, 9, QuantizeParams::default()).is_err());
        let tiny = QuantizeParams {
            grid: 3,
            ..Default::default()
        };
        assert!(
            quantize_derivative(ActFn::Gelu, 2, tiny)
                .unwrap_err()
                .to_string()
                .contains("grid")
        );
        assert!(
            "swish"
                .parse::<ActFn>()
                .unwrap_err()
                .to_string()
                .contains("gelu")
        );
    }
}
