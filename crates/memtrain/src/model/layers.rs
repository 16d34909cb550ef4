//! The swappable parts of a block: one enum per policy key, one variant per method.
//!
//! Adding a method means adding a variant here and its arm in `new` and `forward`; the GPT
//! itself ([`super::Gpt`]) never matches on a policy.

use burn::module::Module;
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Tensor};

use crate::activation::{FewBit, FewBitGeluConfig, Invertible, inverted_activation};
use crate::attention::{
    AttentionParams, fused_attention, fused_attention_qkv, reference_attention,
};
use crate::linear::{
    FactoredLinear, SketchedLinear, SketchedLinearConfig, TtLinear, TtLinearConfig,
};
use crate::norm::OutputLayerNorm;

use super::policy::{ActPolicy, AttnPolicy, BlockPolicy, LinearPolicy, NormPolicy};

/// The MLP nonlinearity (GELU, erf form), computed as the policy says.
///
/// Stateless: a block stores it as a skipped (non-parameter) module field.
#[derive(Debug, Clone)]
pub enum Activation {
    /// burn's fused GELU: keeps its input `[batch, seq, 4 d_model]` for backward.
    Exact,
    /// [`inverted_activation`]: keeps its output and one bit per element.
    Inverted,
    /// [`FewBit`] GELU: keeps a `b`-bit code per element.
    FewBit(FewBit),
}

impl Activation {
    /// The activation a block policy asks for.
    pub fn new(policy: ActPolicy) -> Self {
        match policy {
            ActPolicy::Exact => Activation::Exact,
            ActPolicy::Inverted => Activation::Inverted,
            ActPolicy::FewBit(b) => Activation::FewBit(
                FewBitGeluConfig::new(u32::from(b))
                    .init()
                    .expect("MemoryPolicy::validate admits only 1..=8 bits"),
            ),
        }
    }

    /// Applies GELU element-wise.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Exact => gelu(x),
            Activation::Inverted => inverted_activation(x, Invertible::Gelu),
            Activation::FewBit(f) => f.forward(x),
        }
    }
}

/// A linear layer `y = x W + b` (`W: [d_input, d_output]`), computed as the policy says.
#[derive(Module, Debug)]
pub enum LinearLayer {
    /// burn's `Linear`: keeps its input `[.., d_input]` for the weight gradient.
    Exact(Linear),
    /// burn's `Linear` parameters run by [`crate::linear::gemm_linear`]: the same math and
    /// kept input, each product written once.
    Gemm(Linear),
    /// [`SketchedLinear`]: keeps a sketch of its input.
    Sketched(SketchedLinear),
    /// [`TtLinear`]: a TT-matrix weight; keeps its input.
    Tt(TtLinear),
    /// [`FactoredLinear`]: the factors of a low-rank, Tucker-2 or CP decomposition, applied
    /// one after the other (what compressing a pretrained model produces).
    Factored(FactoredLinear),
}

impl LinearLayer {
    /// A layer of the given width with weights drawn N(0, `std`²) and a zero bias. `mlp` says
    /// whether it belongs to the MLP; `salt` distinguishes its sketches from other layers'.
    pub fn new(
        d_input: usize,
        d_output: usize,
        std: f64,
        policy: BlockPolicy,
        mlp: bool,
        salt: u64,
        device: &Device,
    ) -> Self {
        let config = LinearConfig::new(d_input, d_output)
            .with_initializer(Initializer::Normal { mean: 0.0, std });
        if let Some(rank) = policy.weights.tt_rank(mlp) {
            return LinearLayer::Tt(
                TtLinearConfig::new(d_input, d_output, rank)
                    .init_normal(std, device)
                    .expect("Gpt::new checks that the TT layouts exist"),
            );
        }
        match (policy.linear, policy.weights) {
            (linear, _) if linear.sketches(mlp) => {
                let LinearPolicy::Sketch { kind, .. } = linear else {
                    unreachable!("only sketch policies sketch")
                };
                let ratio = linear.ratio().expect("a sketch policy has a ratio");
                LinearLayer::Sketched(
                    SketchedLinearConfig::new(d_input, d_output, ratio)
                        .with_kind(kind)
                        .init_from(config.init(device), salt)
                        .expect("the policy parser admits only ratios in (0, 1]"),
                )
            }
            (LinearPolicy::Gemm, _) => LinearLayer::Gemm(config.init(device)),
            _ => LinearLayer::Exact(config.init(device)),
        }
    }

    /// The dense weight `[d_input, d_output]`; `None` for a TT-matrix or factored layer.
    pub fn weight(&self) -> Option<&burn::module::Param<Tensor<2>>> {
        match self {
            LinearLayer::Exact(l) | LinearLayer::Gemm(l) => Some(&l.weight),
            LinearLayer::Sketched(l) => Some(&l.weight),
            LinearLayer::Tt(_) | LinearLayer::Factored(_) => None,
        }
    }

    /// `[d_input, d_output]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            LinearLayer::Exact(l) | LinearLayer::Gemm(l) => l.weight.lazy_shape().dims(),
            LinearLayer::Sketched(l) => l.weight.lazy_shape().dims(),
            LinearLayer::Tt(l) => {
                let (rows, cols) = l.modes();
                [rows.iter().product(), cols.iter().product()]
            }
            LinearLayer::Factored(l) => l.dims(),
        }
    }

    /// The weight as a dense `[d_input, d_output]` tensor (rebuilt for a TT-matrix or
    /// factored layer).
    pub fn dense_weight(&self) -> Tensor<2> {
        match self {
            LinearLayer::Exact(l) | LinearLayer::Gemm(l) => l.weight.val(),
            LinearLayer::Sketched(l) => l.weight.val(),
            LinearLayer::Tt(l) => l.matrix().to_dense(),
            LinearLayer::Factored(l) => l.dense_weight(),
        }
    }

    /// The bias `[d_output]`, if any.
    pub fn bias(&self) -> Option<Tensor<1>> {
        match self {
            LinearLayer::Exact(l) | LinearLayer::Gemm(l) => l.bias.as_ref().map(|b| b.val()),
            LinearLayer::Sketched(l) => Some(l.bias.val()),
            LinearLayer::Tt(l) => l.bias.as_ref().map(|b| b.val()),
            LinearLayer::Factored(l) => l.bias.as_ref().map(|b| b.val()),
        }
    }

    /// Weight parameters (dense entries, TT cores or factors), without the bias.
    pub fn weight_param_count(&self) -> usize {
        match self {
            LinearLayer::Exact(_) | LinearLayer::Gemm(_) | LinearLayer::Sketched(_) => {
                let [a, b] = self.dims();
                a * b
            }
            LinearLayer::Tt(l) => l.matrix().param_count(),
            LinearLayer::Factored(l) => l.weight_param_count(),
        }
    }

    /// Adds `delta` to a dense weight in place of the parameter (same id, same
    /// `require_grad`).
    ///
    /// # Errors
    ///
    /// [`crate::Error::Config`] for a TT-matrix layer, which has no dense weight to add to.
    pub fn add_to_weight(&mut self, delta: Tensor<2>) -> crate::error::Result<()> {
        let add = |p: &mut burn::module::Param<Tensor<2>>| {
            let param = std::mem::replace(p, burn::module::Param::from_tensor(delta.zeros_like()));
            *p = param.map(|w| {
                let grad = w.is_require_grad();
                let sum = (w.detach() + delta.clone()).detach();
                if grad { sum.require_grad() } else { sum }
            });
        };
        match self {
            LinearLayer::Exact(l) | LinearLayer::Gemm(l) => add(&mut l.weight),
            LinearLayer::Sketched(l) => add(&mut l.weight),
            LinearLayer::Tt(_) | LinearLayer::Factored(_) => {
                return Err(crate::error::Error::config(
                    "merge",
                    "an adapter on a TT-matrix or factored layer",
                    "adapters on dense layers (factors cannot absorb a dense update)",
                ));
            }
        }
        Ok(())
    }

    /// A sketched layer with another salt (other sketches); an exact one unchanged.
    pub fn with_salt(self, salt: u64) -> Self {
        match self {
            LinearLayer::Sketched(l) => LinearLayer::Sketched(l.with_salt(salt)),
            exact => exact,
        }
    }

    /// `[.., d_input]` to `[.., d_output]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            LinearLayer::Exact(l) => l.forward(x),
            LinearLayer::Gemm(l) => match &l.bias {
                Some(b) => crate::linear::gemm_linear(x, l.weight.val(), b.val()),
                None => l.forward(x),
            },
            LinearLayer::Sketched(l) => l.forward(x),
            LinearLayer::Tt(l) => l.forward(x),
            LinearLayer::Factored(l) => l.forward(x),
        }
    }
}

/// The attention core `softmax(q kᵀ / sqrt(d_head) + causal) v`, as the policy says.
///
/// Stateless: a block stores it as a skipped (non-parameter) module field.
#[derive(Debug, Clone)]
pub enum AttentionCore {
    /// [`reference_attention`]: matmul, scale, causal mask, softmax, matmul, as burn-nn's
    /// `MultiHeadAttention` computes it; keeps three `[batch, heads, seq, seq]` tensors.
    Exact,
    /// [`fused_attention`]: tiled, keeps one log-sum-exp per query row.
    Memeff,
}

impl AttentionCore {
    /// The core a block policy asks for.
    pub fn new(policy: AttnPolicy) -> Self {
        match policy {
            AttnPolicy::Exact => AttentionCore::Exact,
            AttnPolicy::Memeff => AttentionCore::Memeff,
        }
    }

    /// Causal attention: `q, k, v: [batch, seq, heads, d_head]` to `[batch, seq, heads, d_head]`.
    pub fn forward(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
        let params = AttentionParams::causal();
        match self {
            AttentionCore::Exact => reference_attention(q, k, v, None, params),
            AttentionCore::Memeff => fused_attention(q, k, v, None, params),
        }
    }

    /// Causal self-attention on a fused projection `qkv: [batch, seq, 3 heads, d_head]` (`q`,
    /// `k`, `v` in that order) to `[batch, seq, heads, d_head]`. Under `Memeff` the backward
    /// writes the projection's gradient in one buffer ([`fused_attention_qkv`]).
    pub fn forward_qkv(&self, qkv: Tensor<4>, heads: usize) -> Tensor<4> {
        let [b, t, _, dh] = qkv.dims();
        match self {
            AttentionCore::Exact => {
                let part = |i: usize| {
                    qkv.clone()
                        .slice([0..b, 0..t, i * heads..(i + 1) * heads, 0..dh])
                };
                self.forward(part(0), part(1), part(2))
            }
            AttentionCore::Memeff => fused_attention_qkv(qkv, heads, AttentionParams::causal()),
        }
    }
}

/// LayerNorm over the last axis, computed as the policy says.
#[derive(Module, Debug)]
pub enum Norm {
    /// burn's `LayerNorm`: keeps the centred and the normalised input.
    Exact(LayerNorm),
    /// [`OutputLayerNorm`]: keeps its output and one scalar per row.
    Output(OutputLayerNorm),
}

impl Norm {
    /// A LayerNorm of width `d` (γ = 1, β = 0).
    pub fn new(d: usize, policy: NormPolicy, device: &Device) -> Self {
        match policy {
            NormPolicy::Exact => Norm::Exact(LayerNormConfig::new(d).init(device)),
            NormPolicy::Output => Norm::Output(OutputLayerNorm::new(d, device)),
        }
    }

    /// `[.., d]` to `[.., d]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Norm::Exact(n) => n.forward(x),
            Norm::Output(n) => n.forward(x),
        }
    }
}
