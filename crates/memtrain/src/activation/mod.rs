//! Activations that keep less than their input for backward, and the MLP activation policy.
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | [`ActPolicy`] (`act=...`): the MLP's GELU as the policy says, and what it keeps |
//! | `function.rs` | [`ActFn`]: the pointwise functions' math, shared by every method here |
//! | `inverted.rs` | inverted activations: keep the output (shared with the next layer) and, for GELU and SiLU, one branch bit per element ([`InvertedConfig`]) |
//! | `branch.rs` | the branch tables that recover GELU's and SiLU's derivative from the output |
//! | `few_bit.rs` | few-bit activations: keep a 1-8-bit code of the input ([`FewBitConfig`]) |
//! | `quantize.rs` | the optimal few-bit derivative table, by dynamic programming ([`quantize_derivative`]) |
//! | `codes.rs` | bit packing of per-element codes ([`codes`]) |
//! | `flex.rs` | both methods' kernels on burn's Flex CPU backend |
//! | `cube.rs` | both methods' CubeCL kernels on burn's Cube backend (wgpu, cuda; features `wgpu`, `cuda`) |
//!
//! ```
//! use burn::tensor::{Device, Tensor};
//! use memtrain::activation::{ActFn, ActPolicy, InvertedConfig};
//! let device = Device::flex().autodiff();
//! let x = Tensor::<2>::from_floats([[-1.0, 0.5], [2.0, -3.0]], &device).require_grad();
//! let y = InvertedConfig::new(ActFn::Gelu).init().unwrap().forward(x.clone());
//! let dx = x.grad(&y.sum().backward()).unwrap();
//!
//! let x2 = x.clone().detach().require_grad();
//! let exact = ActPolicy::Exact.forward(x2.clone()); // burn's GELU
//! let dx_exact = x2.grad(&exact.sum().backward()).unwrap();
//! assert!(dx.all_close(dx_exact, Some(1e-4), Some(1e-4)));
//! ```

mod branch;
pub mod codes;
#[cfg(memtrain_cube)]
mod cube;
mod few_bit;
mod flex;
mod function;
mod inverted;
mod quantize;

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

pub use branch::{BranchTable, CELLS};
pub use few_bit::{FewBit, FewBitActivationBackend, FewBitConfig, FewBitKernel};
pub use function::ActFn;
pub use inverted::{
    Inverted, InvertedActivationBackend, InvertedConfig, InvertedKernel, inverted_activation,
};
pub use quantize::{
    FewBitTable, QuantizeParams, Weight, default_table, quantize_derivative, validate_bits,
};

use crate::memory::SavedTensor;

/// How the MLP nonlinearity (GELU, erf form) keeps what its backward needs: the `act=` key of
/// a policy SPEC (its grammar is in [`crate::policy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActPolicy {
    /// burn's GELU: keeps its input, 4 bytes an element.
    #[default]
    Exact,
    /// [`Inverted`] GELU: keeps its output (shared with the next linear) and one bit an
    /// element.
    Inverted,
    /// [`FewBit`] GELU: keeps a code of this many bits (1..=8) an element.
    FewBit(u8),
}

impl ActPolicy {
    /// GELU under this policy, element-wise, any shape.
    ///
    /// # Panics
    ///
    /// For a few-bit width outside 1..=8 ([`crate::policy::MemoryPolicy::validate`] and the
    /// SPEC parser admit none).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let _profile = crate::profile::scope(
            "activation",
            || match self {
                ActPolicy::Exact => "forward (burn)".into(),
                _ => "forward".into(),
            },
            || 0.0,
        );
        match *self {
            ActPolicy::Exact => ActFn::Gelu.exact(x),
            ActPolicy::Inverted => inverted_activation(x, ActFn::Gelu),
            ActPolicy::FewBit(bits) => FewBitConfig::new(ActFn::Gelu, u32::from(bits))
                .init()
                .expect("policies admit only 1..=8 bits")
                .forward(x),
        }
    }

    /// What the activation keeps for backward for an input of `shape` (besides its output
    /// under `Inverted`, which the next layer keeps: [`ActPolicy::keeps_output`]).
    pub fn saved(&self, shape: &[usize]) -> SavedTensor {
        let n = shape.iter().product();
        match *self {
            ActPolicy::Exact => SavedTensor::f32("gelu: input", shape),
            ActPolicy::Inverted => SavedTensor::packed(
                "inverted gelu: branch bits, 8 a byte",
                InvertedConfig::new(ActFn::Gelu).saved_bytes(n),
            ),
            ActPolicy::FewBit(bits) => SavedTensor::packed(
                "few-bit gelu: packed interval codes",
                FewBitConfig::new(ActFn::Gelu, u32::from(bits)).saved_bytes(n),
            ),
        }
    }

    /// Whether the activation keeps its output for backward (which the next linear keeps
    /// anyway, so a sketched next linear must keep it too).
    pub fn keeps_output(&self) -> bool {
        *self == ActPolicy::Inverted
    }
}
