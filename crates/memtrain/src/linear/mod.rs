//! Linear layers that keep less for training: a sketch of their input
//! ([`SketchedLinear`], `sketched.rs`), nothing twice ([`gemm_linear`], `gemm.rs`: burn's dense
//! layer with each product written once) or fewer weights ([`TtLinear`], a TT-matrix, `tt.rs`;
//! [`FactoredLinear`], low-rank, Tucker-2 or CP factors, `factored.rs`).

mod factored;
mod gemm;
mod sketched;
mod tt;

pub use factored::{FactoredKind, FactoredLinear};
pub use gemm::{GemmLinearBackend, GemmLinearKernel, gemm_linear};
pub use sketched::{
    SketchKind, SketchedLinear, SketchedLinearBackend, SketchedLinearConfig, sketch_rows,
};
pub use tt::{TtLinear, TtLinearBackend, TtLinearConfig};
