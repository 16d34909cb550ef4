//! The swappable parts of a block: one enum per policy key, one variant per method.
//!
//! Adding a method means adding a variant here and its arm in `new` and `forward`; the GPT
//! itself ([`super::Gpt`]) never matches on a policy.

use burn::module::Module;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{Device, Tensor};

use super::policy::{ActPolicy, AttnPolicy, BlockPolicy, LinearPolicy, WeightsPolicy};

/// The MLP nonlinearity (GELU, erf form), computed as the policy says.
///
/// Stateless: a block stores it as a skipped (non-parameter) module field.
#[derive(Debug, Clone)]
pub enum Activation {
    /// burn's fused GELU: keeps its input `[batch, seq, 4 d_model]` for backward.
    Exact,
}

impl Activation {
    /// The activation a block policy asks for.
    pub fn new(policy: ActPolicy) -> Self {
        match policy {
            ActPolicy::Exact => Activation::Exact,
        }
    }

    /// Applies GELU element-wise.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Exact => gelu(x),
        }
    }
}

/// A linear layer `y = x W + b` (`W: [d_input, d_output]`), computed as the policy says.
#[derive(Module, Debug)]
pub enum LinearLayer {
    /// burn's `Linear`: keeps its input `[.., d_input]` for the weight gradient.
    Exact(Linear),
}

impl LinearLayer {
    /// A layer of the given width with weights drawn N(0, `std`²) and a zero bias.
    pub fn new(
        d_input: usize,
        d_output: usize,
        std: f64,
        policy: BlockPolicy,
        device: &Device,
    ) -> Self {
        let config = LinearConfig::new(d_input, d_output)
            .with_initializer(Initializer::Normal { mean: 0.0, std });
        match (policy.linear, policy.weights) {
            (LinearPolicy::Exact, WeightsPolicy::Dense) => LinearLayer::Exact(config.init(device)),
        }
    }

    /// `[.., d_input]` to `[.., d_output]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            LinearLayer::Exact(l) => l.forward(x),
        }
    }
}

/// The attention core `softmax(q k^T / sqrt(d_head) + causal) v`.
///
/// Stateless: a block stores it as a skipped (non-parameter) module field.
#[derive(Debug, Clone)]
pub enum AttentionCore {
    /// matmul, scale, causal additive mask, softmax, matmul, as burn-nn's
    /// `MultiHeadAttention` computes it; keeps the `[batch, heads, seq, seq]` probabilities.
    Exact,
}

impl AttentionCore {
    /// The core a block policy asks for.
    pub fn new(policy: AttnPolicy) -> Self {
        match policy {
            AttnPolicy::Exact => AttentionCore::Exact,
        }
    }

    /// `q, k, v: [batch, heads, seq, d_head]` to `[batch, heads, seq, d_head]`, causal.
    pub fn forward(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
        match self {
            AttentionCore::Exact => {
                let [_, _, t, d_head] = q.dims();
                let scores = q.matmul(k.transpose()).div_scalar((d_head as f32).sqrt());
                let scores = scores + causal_bias(t, &v.device()).unsqueeze::<4>();
                softmax(scores, 3).matmul(v)
            }
        }
    }
}

/// `[seq, seq]` additive mask: 0 on and below the diagonal, -inf above it.
pub fn causal_bias(seq: usize, device: &Device) -> Tensor<2> {
    let data: Vec<f32> = (0..seq * seq)
        .map(|i| {
            if i % seq > i / seq {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Tensor::<1>::from_floats(data.as_slice(), device).reshape([seq, seq])
}
