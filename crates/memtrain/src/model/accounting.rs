//! What the reference GPT keeps and holds, by formula: each block asks its layers what they
//! keep for backward ([`block_saved`]), and the parameter and optimizer-state shapes follow
//! from the geometry and the policy. `tests/memory.rs` checks every formula against the
//! counting allocator.

use super::config::GptConfig;
use super::gpt::linear_config;
use crate::adapter::AdaptPolicy;
use crate::memory::{F32, SavedTensor};
use crate::policy::{BlockPolicy, MemoryPolicy};

/// What one block of the reference GPT keeps for backward under burn's autodiff, for a
/// block policy.
///
/// `b` batch, `t` seq, `d` d_model, `h` heads, `dh = d / h`. Every tensor below was found by
/// reading burn 0.22's autodiff ops and confirmed with the meter (the tests
/// `should_match_the_activation_estimate_*` in `tests/memory.rs`). Under the plain policy:
///
/// | tensor | shape | kept by |
/// |---|---|---|
/// | ln1 centred input `x - mean` | `[b, t, d]` | the square and the division in LayerNorm |
/// | ln1 normalised input | `[b, t, d]` | the multiply by gamma |
/// | ln1 row statistics (variance + eps, its root) | `[b, t, 1]` × 2 | sqrt and the division |
/// | qkv input (= ln1 output) | `[b, t, d]` | the fused QKV linear |
/// | QKV output (q, k, v are views of it) | `[b, t, 3d]` | the two attention matmuls |
/// | scores minus row max | `[b, h, t, t]` | exp (burn keeps its input) |
/// | exp of the scores | `[b, h, t, t]` | the softmax division |
/// | softmax row sums | `[b, h, t, 1]` | the softmax division |
/// | probabilities | `[b, h, t, t]` | the probabilities × v matmul |
/// | merged heads | `[b, t, d]` | the attention output projection |
/// | ln2: as ln1 | `[b, t, d]` × 2, `[b, t, 1]` × 2 | LayerNorm |
/// | fc input (= ln2 output) | `[b, t, d]` | the MLP's first linear |
/// | GELU input | `[b, t, 4d]` | GELU |
/// | GELU output | `[b, t, 4d]` | the MLP's second linear |
///
/// In all `4 (18 b t d + 3 b h t² + b h t + 4 b t)` bytes. At the `small` geometry, batch 8
/// (`b t = 2048`, `d = 384`, `h = 6`, `t = 256`) that is 94.5 MB a block, 40% of it in the
/// three `[b, h, t, t]` tensors. Weights are shared with the parameters and cost nothing.
///
/// Variants change single rows:
///
/// - `attn=memeff` replaces the four softmax rows by one log-sum-exp `[b, h, t]` (its output
///   is the merged heads): `- 4 (3 b h t²)` bytes.
/// - `act=inverted` replaces the GELU input by its branch bits: `- 4 b t 4d (1 - 1/32)`.
/// - `act=fewbit:B` replaces it by `B`-bit codes: `- 4 b t 4d (1 - B/32)` (the table, a few
///   hundred bytes, is shared by every block and not counted).
/// - `linear=sketch:R` replaces each sketched linear's input by `S x` `[ceil(R b t), d_in]`,
///   unless another op keeps that input anyway (LayerNorm outputs under `norm=output`, the
///   fused attention output under `attn=memeff`, the GELU output under `act=inverted`), where
///   the sketch is added on top.
/// - `linear=gemm` keeps what burn's linear keeps (no row changes); it lowers the peak of
///   backward, not what is kept.
/// - `weights=ttm:R[:all]` keeps what a dense linear keeps (its input; the custom backward
///   keeps no contraction intermediate) and is never sketched.
/// - `norm=output` replaces each LayerNorm's four rows by `rstd [b, t, 1]`:
///   `- 4 (2 b t d + b t)` per LayerNorm.
pub fn block_saved(
    config: &GptConfig,
    policy: &BlockPolicy,
    batch: usize,
    seq: usize,
) -> Vec<SavedTensor> {
    let (b, t, d, h) = (batch, seq, config.d_model, config.n_heads);
    let [qkv, proj, fc, mlp_proj] = config
        .block_linears()
        .map(|(d_in, d_out, mlp)| linear_config(d_in, d_out, policy, mlp));
    let mut v = policy.norm.saved(b * t, d);
    v.extend(qkv.saved(
        "qkv linear: input (ln1 output)",
        &[b, t, d],
        policy.norm.keeps_output(),
    ));
    v.push(SavedTensor::f32(
        "attention: QKV output (q, k, v are views)",
        &[b, t, 3 * d],
    ));
    v.extend(policy.attn.saved(b, h, t));
    v.extend(proj.saved(
        "attention proj: input (merged heads)",
        &[b, t, d],
        policy.attn.keeps_output(),
    ));
    v.extend(policy.norm.saved(b * t, d));
    v.extend(fc.saved(
        "fc linear: input (ln2 output)",
        &[b, t, d],
        policy.norm.keeps_output(),
    ));
    v.push(policy.act.saved(&[b, t, 4 * d]));
    v.extend(mlp_proj.saved(
        "mlp proj linear: input (gelu output)",
        &[b, t, 4 * d],
        policy.act.keeps_output(),
    ));
    v
}

/// What the reference GPT keeps for backward under `policy`: every block's [`block_saved`]
/// plus the embedding, the final LayerNorm, the tied LM head and the cross-entropy.
///
/// Outside the blocks: the token ids `[b, t]` (i64, kept by the embedding), the final
/// LayerNorm (`[b, t, d]` × 2 and `[b, t, 1]` × 2), the LM head input `[b t, d]`, and the
/// shifted logits `[b t, vocab]` that log-softmax's exp keeps.
pub fn model_saved(
    config: &GptConfig,
    policy: &MemoryPolicy,
    batch: usize,
    seq: usize,
) -> Vec<SavedTensor> {
    let (b, t, d) = (batch, seq, config.d_model);
    let mut v = Vec::new();
    for i in 0..config.n_layers {
        v.extend(block_saved(config, &policy.block(i), batch, seq));
    }
    v.push(SavedTensor {
        name: "embedding: token ids",
        shape: vec![b, t],
        elem_bytes: 8,
    });
    v.extend(policy.block.norm.saved(b * t, d));
    v.push(SavedTensor::f32(
        "lm head: input (ln_f output)",
        &[b * t, d],
    ));
    v.push(SavedTensor::f32(
        "log-softmax: shifted logits",
        &[b * t, config.vocab_size],
    ));
    v
}

impl GptConfig {
    /// Number of parameters under a policy: [`GptConfig::param_count`] with each TT-matrix
    /// layer's `d_in d_out` weight replaced by its cores
    /// ([`crate::linear::TtLinearConfig::param_count`], bias kept), plus the adapters'
    /// parameters: the element counts of [`param_shapes`].
    pub fn param_count_for(&self, policy: &MemoryPolicy) -> usize {
        param_shapes(self, policy)
            .iter()
            .map(|s| s.iter().product::<usize>())
            .sum()
    }
}

/// Parameter bytes of a GPT under a policy: `4 ×` [`GptConfig::param_count_for`].
pub fn param_bytes(config: &GptConfig, policy: &MemoryPolicy) -> usize {
    F32 * config.param_count_for(policy)
}

/// The shape of every parameter tensor of a GPT under a policy (TT-matrix cores as one flat
/// vector per layer), in module order. Their element counts sum to
/// [`GptConfig::param_count_for`].
pub fn param_shapes(config: &GptConfig, policy: &MemoryPolicy) -> Vec<Vec<usize>> {
    let d = config.d_model;
    let mut out = vec![vec![config.vocab_size, d], vec![config.max_seq, d]];
    for i in 0..config.n_layers {
        let w = policy.block(i).weights;
        let linear = |out: &mut Vec<Vec<usize>>, d_in: usize, d_out: usize, mlp: bool| {
            match w.tt_rank(mlp) {
                Some(rank) => out.push(vec![
                    crate::linear::TtLinearConfig::new(d_in, d_out, rank)
                        .with_bias(false)
                        .param_count()
                        .unwrap_or(d_in * d_out),
                ]),
                None => out.push(vec![d_in, d_out]),
            }
            out.push(vec![d_out]);
        };
        for (slot, (d_in, d_out, mlp)) in config.block_linears().into_iter().enumerate() {
            if slot % 2 == 0 {
                // ln1 before attention's linears, ln2 before the MLP's: scale and shift.
                out.extend([vec![d], vec![d]]);
            }
            linear(&mut out, d_in, d_out, mlp);
        }
    }
    out.extend([vec![d], vec![d]]);
    out.extend(adapter_shapes(config, policy));
    out
}

/// The shapes of the adapter parameters `policy.adapt` attaches (LoRA `[d_in, r]`, `[r, d_out]`
/// per layer; LoTR `[d_in, r]`, `[d_out, r]` per slot and `[r, r]` per layer), in module order
/// within each kind.
pub fn adapter_shapes(config: &GptConfig, policy: &MemoryPolicy) -> Vec<Vec<usize>> {
    let slots = config.block_linears().map(|(d_in, d_out, _)| (d_in, d_out));
    let mut out = Vec::new();
    match policy.adapt {
        AdaptPolicy::None => {}
        AdaptPolicy::Lora { rank, .. } => {
            let r = rank as usize;
            for _ in 0..config.n_layers {
                for (a, b) in slots {
                    out.extend([vec![a, r], vec![r, b]]);
                }
            }
        }
        AdaptPolicy::Lotr { rank, .. } => {
            let r = rank as usize;
            for _ in 0..config.n_layers {
                for _ in slots {
                    out.push(vec![r, r]);
                }
            }
            for (a, b) in slots {
                out.extend([vec![a, r], vec![b, r]]);
            }
        }
    }
    out
}

/// The shapes of the parameters that train: every parameter, or only the adapters when the
/// policy freezes the base.
pub fn trainable_shapes(config: &GptConfig, policy: &MemoryPolicy) -> Vec<Vec<usize>> {
    match policy.adapt {
        AdaptPolicy::None => param_shapes(config, policy),
        _ => adapter_shapes(config, policy),
    }
}

/// Optimizer-state bytes of a GPT under a policy, for its trainable parameters
/// ([`trainable_shapes`]): [`crate::optim::OptimPolicy::state_bytes`].
pub fn optimizer_state_bytes(config: &GptConfig, policy: &MemoryPolicy) -> usize {
    policy.optim.state_bytes(&trainable_shapes(config, policy))
}
