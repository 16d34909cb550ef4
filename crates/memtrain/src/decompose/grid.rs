//! Low-bit grids: rounding a tensor to a symmetric per-tensor `b`-bit grid, and the grid a
//! quantized CP decomposition's factors lie on.

use burn::tensor::{Shape, Tensor};

use crate::error::{Error, Result};
use memtrain_tt::linalg::host;

/// The smallest clipping ratio the step search tries.
const CLIP_MIN: f64 = 0.3;
/// Clipping ratios tried below 1.
const CLIP_STEPS: usize = 35;

pub(crate) fn check_bits(bits: u32) -> Result<()> {
    if !(2..=8).contains(&bits) {
        return Err(Error::config("bits", bits, "2..=8"));
    }
    Ok(())
}

/// The grid a quantized [`super::Cp`]'s factors lie on: factor `k`'s entries are `scales[k] · q`
/// with an integer `|q| <= 2^(bits-1) - 1` (see [`quantize_to_grid`]).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantGrid {
    /// Bits per code, `2..=8`.
    pub bits: u32,
    /// One step per factor.
    pub scales: Vec<f64>,
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
/// [`super::cp_admm_quantized`] collapsed the factors towards zero for large `rho` (measured). The
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
