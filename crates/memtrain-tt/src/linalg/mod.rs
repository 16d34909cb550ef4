//! The linear-algebra floor under tensor trains, decompositions, GaLore, the adapters and the
//! point-cloud index: one SVD, compact copies, Frobenius norms, leading singular vectors, rank
//! caps, and small dense f64 solves on the host ([`host`]).
//!
//! Every function takes burn tensors (any device, f32 or f64) and returns its results on the
//! same device in the same dtype; the SVD runs on burn's host SVD off the autodiff graph.
//!
//! ```
//! use burn::tensor::{Device, Distribution, Tensor};
//! use memtrain_tt::linalg::{frobenius, svd};
//!
//! let device = Device::flex();
//! let a = Tensor::<2>::random([5, 3], Distribution::Normal(0.0, 1.0), &device);
//! let (u, s, vt) = svd(a.clone()).unwrap();
//! assert_eq!((u.dims(), s.dims(), vt.dims()), ([5, 3], [3], [3, 3]));
//! let back = u.matmul(s.unsqueeze_dim::<2>(1) * vt);
//! assert!(frobenius(back - a) < 1e-4);
//! ```

pub mod host;

use burn::tensor::Tensor;

use crate::error::{Error, Result};

/// Sweeps of the bidiagonal QR iteration in burn's SVD: far above what convergence needs.
const SVD_SWEEPS: usize = 200;

/// The thin SVD `(U [m, k], S [k], V^T [k, n])`, `k = min(m, n)`, of `a`, computed by burn's
/// host SVD off the autodiff graph and returned on `a`'s device and dtype.
///
/// # Errors
///
/// [`Error::Config`] for NaN or infinite entries, or an SVD that does not converge.
pub fn svd(a: Tensor<2>) -> Result<(Tensor<2>, Tensor<1>, Tensor<2>)> {
    let [m, n] = a.dims();
    let (device, dtype) = (a.device(), a.dtype());
    // burn's SVD runs on a plain backend: compute off the autodiff graph, return on `device`.
    let data = a.into_data();
    if data.iter::<f64>().any(|x| !x.is_finite()) {
        return Err(Error::config(
            "svd",
            format!("a [{m}, {n}] matrix with NaN or infinite entries"),
            "finite tensor entries",
        ));
    }
    let plain = device.clone().without_autodiff();
    let a = Tensor::<2>::from_data(data, (&plain, dtype));
    let (u, s, vt) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        burn::linalg::svd::<2, 1>(a, SVD_SWEEPS)
    }))
    .map_err(|_| {
        Error::config(
            "svd",
            format!("a [{m}, {n}] matrix"),
            "a matrix whose SVD converges",
        )
    })?;
    Ok((
        Tensor::from_data(u.into_data(), (&device, dtype)),
        Tensor::from_data(s.into_data(), (&device, dtype)),
        Tensor::from_data(vt.into_data(), (&device, dtype)),
    ))
}

/// A copy of `t` in its own buffer: a slice is a view that keeps its parent's whole buffer
/// alive, which for the leading columns of an SVD factor is most of the memory.
pub fn compact<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    let (device, dtype) = (t.device(), t.dtype());
    Tensor::from_data(t.into_data(), (&device, dtype))
}

/// `‖t‖_F`, accumulated in the tensor's dtype and returned as f64.
pub fn frobenius<const D: usize>(t: Tensor<D>) -> f64 {
    t.powi_scalar(2).sum().into_scalar::<f64>().sqrt()
}

/// The `r` leading left singular vectors `[n, r]` of `m` `[n, p]`. A wide matrix goes
/// through its Gram matrix `m mᵀ` `[n, n]` (same left singular vectors, squared singular
/// values): burn's host SVD costs `O(n p min(n, p))` scalar flops, the Gram matrix one
/// device matmul.
///
/// # Errors
///
/// As [`svd`].
pub fn leading_left(m: Tensor<2>, r: usize) -> Result<Tensor<2>> {
    let [n, p] = m.dims();
    let u = if p > n {
        let gram = m.clone().matmul(m.transpose());
        svd(gram)?.0
    } else {
        svd(m)?.0
    };
    Ok(compact(u.slice([0..n, 0..r])))
}

/// Inner ranks `[1, r.., 1]` for modes (each core's mode sizes multiplied), every bond capped
/// at the smaller side of its unfolding so no rank is wasted.
///
/// # Errors
///
/// [`Error::Config`] for rank 0, no modes, or a zero mode.
pub fn capped_ranks(modes: &[Vec<usize>], rank: usize) -> Result<Vec<usize>> {
    if rank == 0 {
        return Err(Error::config("rank", 0, "a rank of at least 1"));
    }
    if modes.is_empty() || modes.iter().flatten().any(|&m| m == 0) {
        return Err(Error::config(
            "TT modes",
            format!("{modes:?}"),
            "at least one core, every mode >= 1",
        ));
    }
    let sizes: Vec<usize> = modes.iter().map(|m| m.iter().product()).collect();
    let d = sizes.len();
    let mut ranks = vec![1; d + 1];
    for k in 1..d {
        let left: usize = sizes[..k].iter().product();
        let right: usize = sizes[k..].iter().product();
        ranks[k] = rank.min(left).min(right);
    }
    Ok(ranks)
}
