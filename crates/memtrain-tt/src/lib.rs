//! Tensor trains on burn, and the linear-algebra floor memtrain builds on: the small numerical
//! library under TT-matrix layers, decompositions, GaLore, the adapters and the point-cloud
//! index (`memtrain-index`, which depends on this crate only, not on the training library).
//! `memtrain` re-exports it as `memtrain::tt`.
//!
//! A d-way tensor `A[i1..id]` in tensor-train (TT) form is a chain of cores `G_k` of shape
//! `[r_{k-1}, n_k, r_k]` with `r_0 = r_d = 1`:
//! `A[i1..id] = G_1[:, i1, :] G_2[:, i2, :] ... G_d[:, id, :]` ([`TtTensor`]). A matrix of shape
//! `[M, N]`, `M = m_1..m_d`, `N = n_1..n_d`, in TT-matrix form has cores
//! `[r_{k-1}, m_k, n_k, r_k]` ([`TtMatrix`]). Cores are burn tensors, so everything here runs on
//! any device and in the dtype of its inputs (tests use f64).
//!
//! - [`tt_svd`] (Oseledets 2011): sequential truncated SVDs, error at most `eps·‖A‖_F`.
//! - [`TtTensor::round`]: right-to-left orthogonalisation, then left-to-right truncated SVDs,
//!   `O(d n r³)`; never raises a rank.
//! - [`TtTensor::dot`], [`TtTensor::norm`], [`TtTensor::add`], [`TtTensor::full`]; for matrices
//!   also [`TtMatrix::matmul`] (TT × TT), [`TtMatrix::matvec`] and [`TtMatrix::left_mul`]
//!   (dense rows times the TT-matrix, by whichever of the core-by-core sweep and the dense
//!   reconstruction costs fewer flops).
//! - [`factorize`], [`matrix_modes`]: choose the modes.
//!
//! ```
//! use burn::tensor::{Device, Distribution, Tensor};
//! use memtrain_tt::{Truncation, tt_svd};
//!
//! let device = Device::flex();
//! let a = Tensor::<3>::random([4, 5, 6], Distribution::Normal(0.0, 1.0), &device);
//! let tt = tt_svd(a.clone(), Truncation::accuracy(1e-5)).unwrap();
//! assert_eq!(tt.ranks(), vec![1, 4, 6, 1]); // full rank: exact
//! let err = (tt.full::<3>().unwrap() - a.clone()).powi_scalar(2).sum().sqrt().into_scalar::<f32>();
//! assert!(err < 1e-4 * a.powi_scalar(2).sum().sqrt().into_scalar::<f32>());
//! ```

//!
//! | module | what it holds |
//! |---|---|
//! | [`tensor`] | [`TtTensor`], [`tt_svd`], [`Truncation`] |
//! | [`matrix`] | [`TtMatrix`]: TT-matrices, their products and rounding |
//! | [`linalg`] | SVD, compact copies, Frobenius norms, leading singular vectors, rank caps, host f64 solves |
//! | [`ops`] | primitive-level TT-matrix kernels for custom autodiff ops |

mod error;
pub mod linalg;
pub mod machine;
pub mod matrix;
pub mod ops;
mod shape;
pub mod tensor;

pub use error::{Error, Result};
pub use matrix::TtMatrix;
pub use shape::{factorize, matrix_modes};
pub use tensor::{Truncation, TtTensor, tt_svd, tt_svd_shaped};
