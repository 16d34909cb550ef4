//! Reduced-order model of a BERT MLP by maxvol (`compress --method rom`).
//!
//! The MLP `y = σ(x W₁ + b₁) W₂ + b₂` keeps `k` of its `d_ff` hidden neurons: those whose
//! activations best interpolate the others on calibration text. With `H [n, d_ff]` the
//! hidden activations, [`rom_neurons`] takes the top-`k` eigenvectors `V_k` of `HᵀH` (the
//! right singular vectors of `H`) and picks the `k` rows of a dominant submatrix of `V_k` by
//! [`maxvol`](crate::decompose::maxvol) (the DEIM-style selection of the reduced-order-model
//! paper). [`rom_refit`] then refits the output projection by least squares on the same data,
//! `W₂' = argmin ‖H_S W₂' − H W₂‖ = (H_Sᵀ H_S)⁻¹ H_Sᵀ H W₂`, which needs only `HᵀH`, the Gram
//! matrix [`super::calibrate`] already collects for `output.dense`. The MLP becomes
//! `σ(x W₁[:, S] + b₁[S]) W₂'`: `k / d_ff` of its weights, dense, and exact when `H` has rank
//! `k`.
//!
//! [Gusak et al. 2021, Reduced-order modeling of deep neural
//! networks](https://arxiv.org/abs/1910.06995).

use burn::tensor::Device;

use super::spectrum::{RIDGE, top_eigenvectors};
use crate::decompose::{MaxvolParams, maxvol};
use crate::error::{Error, Result};
use memtrain_tt::linalg::host;

fn check_gram(gram: &[f64], width: usize) -> Result<()> {
    if gram.len() != width * width || gram.iter().any(|v| !v.is_finite()) {
        return Err(Error::config(
            "hidden Gram matrix",
            format!("{} values", gram.len()),
            format!("{} finite values ([{width}, {width}])", width * width),
        ));
    }
    Ok(())
}

/// The `k` hidden neurons (ascending) a reduced-order MLP keeps, from the Gram matrix
/// `gram = HᵀH` `[width, width]` of its hidden activations: maxvol rows of the top-`k`
/// eigenvectors.
///
/// # Errors
///
/// [`Error::Config`] for `k` outside `1..=width`, a Gram matrix of another size or with
/// non-finite entries, or one whose top-`k` basis is rank deficient.
pub fn rom_neurons(gram: &[f64], width: usize, k: usize, device: &Device) -> Result<Vec<usize>> {
    check_gram(gram, width)?;
    if !(1..=width).contains(&k) {
        return Err(Error::config("neurons", k, format!("1..={width}")));
    }
    let basis = top_eigenvectors(gram, width, k, device)?;
    let basis = host::tensor(basis, [width, k], device, burn::tensor::DType::F64);
    let mut rows = maxvol(basis, MaxvolParams::default())?;
    rows.sort_unstable();
    Ok(rows)
}

/// The output projection `W₂' [k, d_out]` (row-major) that the kept `neurons` need to
/// reproduce `H W₂` in least squares, from `gram = HᵀH` `[width, width]` and
/// `w_out = W₂ [width, d_out]`: `(G_SS + δI)⁻¹ G_S: W₂`, `δ` = [`RIDGE`] × the mean diagonal
/// of `G_SS`.
///
/// # Errors
///
/// [`Error::Config`] for sizes that disagree, a neuron out of range or repeated, or a Gram
/// matrix that is not finite.
pub fn rom_refit(
    gram: &[f64],
    width: usize,
    w_out: &[f64],
    d_out: usize,
    neurons: &[usize],
) -> Result<Vec<f64>> {
    rom_refit_to(gram, gram, width, w_out, d_out, neurons)
}

/// [`rom_refit`] towards another model's output: the `W₂'` that makes `H̃_S W₂'` closest to
/// `H W₂` in least squares, from `gram = H̃ᵀH̃` and `cross = H̃ᵀH` (`[width, width]`; `H̃` the
/// hidden activations of a model whose earlier layers are already compressed, `H` the
/// original's on the same tokens): `(G̃_SS + δI)⁻¹ C_S: W₂`. With `cross = gram` it is
/// [`rom_refit`]. What sequential compression ([`CompressParams::sequential`]) fits.
///
/// [`CompressParams::sequential`]: super::CompressParams::sequential
///
/// # Errors
///
/// As [`rom_refit`]; for a `cross` matrix of another size.
pub fn rom_refit_to(
    gram: &[f64],
    cross: &[f64],
    width: usize,
    w_out: &[f64],
    d_out: usize,
    neurons: &[usize],
) -> Result<Vec<f64>> {
    check_gram(gram, width)?;
    check_gram(cross, width)?;
    if w_out.len() != width * d_out {
        return Err(Error::config(
            "output weight",
            format!("{} values", w_out.len()),
            format!("{} ([{width}, {d_out}])", width * d_out),
        ));
    }
    let mut seen = vec![false; width];
    for &s in neurons {
        if s >= width || std::mem::replace(&mut seen[s], true) {
            return Err(Error::config(
                "neurons",
                format!("{neurons:?}"),
                format!("distinct indices below {width}"),
            ));
        }
    }
    let k = neurons.len();
    let mut gss = vec![0.0; k * k];
    for (a, &i) in neurons.iter().enumerate() {
        for (b, &j) in neurons.iter().enumerate() {
            gss[a * k + b] = gram[i * width + j];
        }
    }
    let mean = (0..k).map(|a| gss[a * k + a]).sum::<f64>() / k.max(1) as f64;
    if mean > 0.0 {
        for a in 0..k {
            gss[a * k + a] += RIDGE * mean;
        }
    }
    let l = host::cholesky(&gss, k)
        .or_else(|| host::ridge_cholesky(&gss, k))
        .ok_or_else(|| {
            Error::config(
                "hidden Gram matrix",
                "not positive semi-definite on the kept neurons",
                "the Gram matrix of calibration activations",
            )
        })?;
    // C_S: [k, width] · W₂ [width, d_out].
    let gs: Vec<f64> = neurons
        .iter()
        .flat_map(|&i| cross[i * width..(i + 1) * width].iter().copied())
        .collect();
    let rhs = host::matmul(&gs, w_out, k, width, d_out);
    // Solve column by column: rows of rhsᵀ [d_out, k] against the symmetric G_SS.
    let mut t = vec![0.0; d_out * k];
    for a in 0..k {
        for c in 0..d_out {
            t[c * k + a] = rhs[a * d_out + c];
        }
    }
    host::cholesky_solve_rows(&l, k, &mut t);
    let mut out = vec![0.0; k * d_out];
    for a in 0..k {
        for c in 0..d_out {
            out[a * d_out + c] = t[c * k + a];
        }
    }
    Ok(out)
}

/// `‖H (W₂ − E_S W₂')‖_F / ‖H W₂‖_F` from `gram = HᵀH`: the relative error of the reduced
/// MLP's output on the calibration data (`E_S` scatters the kept rows back to `width`).
pub fn rom_output_error(
    gram: &[f64],
    width: usize,
    w_out: &[f64],
    d_out: usize,
    neurons: &[usize],
    refit: &[f64],
) -> f64 {
    let mut delta = w_out.to_vec();
    for (a, &i) in neurons.iter().enumerate() {
        for c in 0..d_out {
            delta[i * d_out + c] -= refit[a * d_out + c];
        }
    }
    let quad = |m: &[f64]| {
        let gm = host::matmul(gram, m, width, width, d_out);
        gm.iter().zip(m).map(|(a, b)| a * b).sum::<f64>()
    };
    (quad(&delta).max(0.0) / quad(w_out).max(f64::MIN_POSITIVE)).sqrt()
}
