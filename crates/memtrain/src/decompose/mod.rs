//! Matrix and tensor factorizations for compressing trained weights, and the subset
//! selection used by reduced-order modelling.
//!
//! Every function takes burn tensors (any device, f32 or f64) and returns its factors on the
//! same device in the same dtype; the SVDs run on burn's host SVD off the autodiff graph (as
//! in [`crate::tt::linalg`]) and the small `R x R` solves in f64 on the host.
//!
//! | function | factors of a `[d_out, d_in]` weight (or a tensor) | parameters |
//! |---|---|---|
//! | [`svd_lowrank`] | `W ≈ A B`, `A [d_out, r]`, `B [r, d_in]` (Eckart–Young optimal) | `r (d_out + d_in)` |
//! | [`tucker2`] | `W ≈ core ×₁ U₁ ×₂ U₂` on modes 0 and 1 of `[c_out, c_in, kh, kw]` | `c_out r₁ + c_in r₂ + r₁ r₂ kh kw` |
//! | [`cp_als`] | `T ≈ Σ_r a¹_r ∘ … ∘ aᴺ_r`, factors `[n_k, R]` | `R Σ n_k` |
//! | [`cp_admm_quantized`] | the same, every factor on a `b`-bit grid (AO-ADMM) | `R Σ n_k` codes of `b` bits |
//!
//! Ranks: [`rank_for_energy`] (kept spectral energy) and [`rank_for_ratio`] (a target
//! parameter reduction). Subsets: [`maxvol`] (rows of a dominant submatrix),
//! [`select_neurons`] and [`active_subspace`] for width reduction.
//!
//! Not here: Bayesian rank selection (VBMF); ranks come from energy or a ratio.
//!
//! ```
//! use burn::tensor::{Device, Distribution, Tensor};
//! use memtrain::decompose::{SvdParams, svd_lowrank};
//!
//! let device = Device::flex();
//! let w = Tensor::<2>::random([6, 8], Distribution::Normal(0.0, 1.0), &device);
//! let low = svd_lowrank(w, SvdParams::rank(2)).unwrap();
//! assert_eq!((low.a.dims(), low.b.dims()), ([6, 2], [2, 8]));
//! assert_eq!(low.param_count(), 2 * (6 + 8));
//! ```

mod cp;
mod grid;
mod maxvol;
mod quant;
mod rank;
mod svd;
mod tucker;

pub use cp::{Cp, CpInit, CpParams, cp_als, cp_als_shaped, cp_modes};
pub use grid::{QuantGrid, quantize_to_grid};
pub use maxvol::{MaxvolParams, active_subspace, maxvol, select_neurons};
pub use quant::{
    CpQuantParams, cp_admm_quantized, cp_admm_quantized_from, cp_admm_quantized_shaped,
};
pub use rank::{RankMethod, rank_for_energy, rank_for_ratio};
pub use svd::{LowRank, SvdParams, svd_lowrank};
pub use tucker::{Tucker2, Tucker2Params, tucker2};
