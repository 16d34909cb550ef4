//! LayerNorm under the memory policy: burn's, or the output-saving one.
//!
//! | file | what it holds |
//! |---|---|
//! | `mod.rs` | [`NormPolicy`] (`norm=...`), the [`Norm`] layer a block holds, what each keeps |
//! | `output.rs` | [`OutputLayerNorm`]: keeps its output (which the next linear keeps anyway) and one scalar per row, instead of its input; its op runs on every backend's primitive ops, routed as a custom autodiff op on Flex |
//! | `flex.rs` | the same op fused on Flex in f32: one pass forward, one backward |

mod flex;
mod output;

use burn::module::Module;
use burn::nn::{LayerNorm, LayerNormConfig};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use output::{
    GAMMA_MIN, OutputLayerNorm, OutputLayerNormBackend, OutputLayerNormConfig,
    OutputLayerNormKernel,
};

use crate::error::Result;
use crate::memory::SavedTensor;

/// How LayerNorm keeps what its backward needs: the `norm=` key of a policy SPEC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormPolicy {
    /// burn's `LayerNorm`: keeps the centred and the normalised input.
    #[default]
    Exact,
    /// [`OutputLayerNorm`]: keeps its output (shared with the next linear) and one scalar per
    /// row.
    Output,
}

impl NormPolicy {
    /// A LayerNorm of width `d` (γ = 1, β = 0) on `device`.
    ///
    /// # Errors
    ///
    /// [`crate::Error::Config`] for a zero width.
    pub fn init(&self, d: usize, device: &Device) -> Result<Norm> {
        Ok(match self {
            NormPolicy::Exact => Norm::Exact(LayerNormConfig::new(d).init(device)),
            NormPolicy::Output => Norm::Output(OutputLayerNormConfig::new(d).init(device)?),
        })
    }

    /// What one LayerNorm over `n` rows of width `d` keeps for backward besides its output.
    ///
    /// burn's keeps the centred input `[n, d]` (for the square and the division), the
    /// normalised input `[n, d]` (for the multiply by γ) and two row statistics; the
    /// output-saving one keeps `rstd` ([`OutputLayerNorm::saved_bytes`]).
    pub fn saved(&self, n: usize, d: usize) -> Vec<SavedTensor> {
        match self {
            NormPolicy::Exact => vec![
                SavedTensor::f32("layernorm: centred input", &[n, d]),
                SavedTensor::f32("layernorm: normalised input", &[n, d]),
                SavedTensor::f32("layernorm: variance + eps", &[n, 1]),
                SavedTensor::f32("layernorm: its square root", &[n, 1]),
            ],
            NormPolicy::Output => vec![SavedTensor::f32("output layernorm: rstd", &[n, 1])],
        }
    }

    /// Whether the norm keeps its output for backward (which the next linear keeps anyway).
    pub fn keeps_output(&self) -> bool {
        *self == NormPolicy::Output
    }
}

/// LayerNorm over the last axis, as the policy says.
#[derive(Module, Debug)]
pub enum Norm {
    /// burn's `LayerNorm`: keeps the centred and the normalised input.
    Exact(LayerNorm),
    /// [`OutputLayerNorm`]: keeps its output and one scalar per row.
    Output(OutputLayerNorm),
}

impl Norm {
    /// `[.., d]` to `[.., d]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let _profile = crate::profile::scope(
            "norm",
            || match self {
                Norm::Exact(_) => "forward (burn)".into(),
                Norm::Output(_) => "forward".into(),
            },
            || 0.0,
        );
        match self {
            Norm::Exact(n) => n.forward(x),
            Norm::Output(n) => n.forward(x),
        }
    }
}
