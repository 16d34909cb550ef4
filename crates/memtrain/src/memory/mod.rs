//! Byte accounting: analytic formulas and the measured meter.
//!
//! Training memory is four things: parameters, gradients, optimizer state and the
//! activations kept for backward. The meter ([`CountingAllocator`]) measures each of them for
//! a real training step ([`MemoryReport`]); the formulas here predict them, and the tests
//! check that the two agree.

mod heap;
mod meter;

use serde::{Deserialize, Serialize};

pub use heap::keep_freed_memory;
pub use meter::{CountingAllocator, Region, is_installed, live_bytes, peak_bytes, reset_peak};

use crate::activation::codes;
use crate::model::{ActPolicy, AttnPolicy, BlockPolicy, GptConfig, MemoryPolicy, NormPolicy};

/// Bytes of one f32.
pub const F32: usize = 4;

/// The memory of one training step, measured with [`CountingAllocator`].
///
/// All fields are bytes. They are measured, not computed: see [`crate::train::Trainer::step`]
/// for exactly where each is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemoryReport {
    /// Live bytes the model's parameters hold.
    pub param_bytes: u64,
    /// Live bytes the gradients hold right after backward.
    pub grad_bytes: u64,
    /// Live bytes the optimizer state holds.
    pub optimizer_bytes: u64,
    /// Live bytes right after the forward pass and loss, minus live bytes before it: what the
    /// autodiff graph keeps for backward.
    pub activation_bytes: u64,
    /// Peak during forward, backward and optimizer step, above the live bytes before the step.
    pub peak_bytes: u64,
}

/// One tensor a layer keeps for backward.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SavedTensor {
    /// Which op keeps it and why.
    pub name: &'static str,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Bytes per element.
    pub elem_bytes: usize,
}

impl SavedTensor {
    fn f32(name: &'static str, shape: &[usize]) -> Self {
        SavedTensor {
            name,
            shape: shape.to_vec(),
            elem_bytes: F32,
        }
    }

    /// Bytes of the tensor.
    pub fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.elem_bytes
    }
}

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
    let f32 = SavedTensor::f32;
    let mut v = Vec::new();
    layernorm_saved(&mut v, policy.norm, b * t, d);
    let n = b * t;
    // A linear's input; a sketched linear keeps `S x` instead, and the input too only when
    // another op keeps it (`shared`).
    let linear_input =
        |v: &mut Vec<SavedTensor>, name: &'static str, d_in: usize, mlp: bool, shared: bool| {
            match policy
                .linear
                .ratio()
                .filter(|_| policy.linear.sketches(mlp) && policy.weights.tt_rank(mlp).is_none())
            {
                None => v.push(f32(name, &[b, t, d_in])),
                Some(ratio) => {
                    if shared {
                        v.push(f32(name, &[b, t, d_in]));
                    }
                    v.push(f32(
                        "sketched linear: S x",
                        &[crate::linear::sketch_rows(n, ratio), d_in],
                    ));
                }
            }
        };
    let norm_shares = policy.norm == NormPolicy::Output;
    linear_input(
        &mut v,
        "qkv linear: input (ln1 output)",
        d,
        false,
        norm_shares,
    );
    v.push(f32(
        "attention: QKV output (q, k, v are views)",
        &[b, t, 3 * d],
    ));
    match policy.attn {
        AttnPolicy::Exact => {
            v.push(f32(
                "softmax: scores minus row max (exp input)",
                &[b, h, t, t],
            ));
            v.push(f32("softmax: exp of the scores", &[b, h, t, t]));
            v.push(f32("softmax: row sums", &[b, h, t, 1]));
            v.push(f32(
                "attention: probabilities (PV matmul input)",
                &[b, h, t, t],
            ));
        }
        AttnPolicy::Memeff => v.push(f32("fused attention: log-sum-exp per row", &[b, h, t])),
    }
    let attn_shares = policy.attn == AttnPolicy::Memeff;
    linear_input(
        &mut v,
        "attention proj: input (merged heads)",
        d,
        false,
        attn_shares,
    );
    layernorm_saved(&mut v, policy.norm, b * t, d);
    linear_input(
        &mut v,
        "fc linear: input (ln2 output)",
        d,
        true,
        norm_shares,
    );
    match policy.act {
        ActPolicy::Exact => v.push(f32("gelu: input", &[b, t, 4 * d])),
        ActPolicy::Inverted => v.push(SavedTensor {
            name: "inverted gelu: branch bits, 8 a byte",
            shape: vec![codes::packed_len(b * t * 4 * d, 1)],
            elem_bytes: 1,
        }),
        ActPolicy::FewBit(bits) => v.push(SavedTensor {
            name: "few-bit gelu: packed interval codes",
            shape: vec![codes::packed_len(b * t * 4 * d, u32::from(bits))],
            elem_bytes: 1,
        }),
    }
    let act_shares = policy.act == ActPolicy::Inverted;
    linear_input(
        &mut v,
        "mlp proj linear: input (gelu output)",
        4 * d,
        true,
        act_shares,
    );
    v
}

/// What one LayerNorm over `n` rows of width `d` keeps besides its output.
fn layernorm_saved(v: &mut Vec<SavedTensor>, policy: NormPolicy, n: usize, d: usize) {
    match policy {
        NormPolicy::Exact => {
            v.push(SavedTensor::f32("layernorm: centred input", &[n, d]));
            v.push(SavedTensor::f32("layernorm: normalised input", &[n, d]));
            v.push(SavedTensor::f32("layernorm: variance + eps", &[n, 1]));
            v.push(SavedTensor::f32("layernorm: its square root", &[n, 1]));
        }
        NormPolicy::Output => v.push(SavedTensor::f32("output layernorm: rstd", &[n, 1])),
    }
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
    layernorm_saved(&mut v, policy.block.norm, b * t, d);
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

/// Sum of [`SavedTensor::bytes`].
pub fn total_bytes(tensors: &[SavedTensor]) -> usize {
    tensors.iter().map(SavedTensor::bytes).sum()
}

/// Parameter bytes of a GPT under a policy: `4 ×` [`GptConfig::param_count_for`].
pub fn param_bytes(config: &GptConfig, policy: &crate::model::MemoryPolicy) -> usize {
    F32 * config.param_count_for(policy)
}

/// The shape of every parameter tensor of a GPT under a policy (TT-matrix cores as one flat
/// vector per layer), in module order. Their element counts sum to
/// [`GptConfig::param_count_for`].
pub fn param_shapes(config: &GptConfig, policy: &crate::model::MemoryPolicy) -> Vec<Vec<usize>> {
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
pub fn adapter_shapes(config: &GptConfig, policy: &crate::model::MemoryPolicy) -> Vec<Vec<usize>> {
    let slots = config.block_linears().map(|(d_in, d_out, _)| (d_in, d_out));
    let mut out = Vec::new();
    match policy.adapt {
        crate::model::AdaptPolicy::None => {}
        crate::model::AdaptPolicy::Lora { rank, .. } => {
            let r = rank as usize;
            for _ in 0..config.n_layers {
                for (a, b) in slots {
                    out.extend([vec![a, r], vec![r, b]]);
                }
            }
        }
        crate::model::AdaptPolicy::Lotr { rank, .. } => {
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
pub fn trainable_shapes(
    config: &GptConfig,
    policy: &crate::model::MemoryPolicy,
) -> Vec<Vec<usize>> {
    match policy.adapt {
        crate::model::AdaptPolicy::None => param_shapes(config, policy),
        _ => adapter_shapes(config, policy),
    }
}

/// Optimizer-state bytes of a GPT under a policy, for its trainable parameters
/// ([`trainable_shapes`]): AdamW `8 P`; NAG-GS `4 P` (one state
/// vector); GaLore per matrix `[m, n]` `4 (r min(m, n) + 2 r max(m, n))` (projector and the
/// two projected moments) and `8 numel` for every other parameter.
pub fn optimizer_state_bytes(config: &GptConfig, policy: &crate::model::MemoryPolicy) -> usize {
    let shapes = trainable_shapes(config, policy);
    let numel = |s: &Vec<usize>| s.iter().product::<usize>();
    match policy.optim {
        crate::model::OptimPolicy::Adamw => shapes.iter().map(|s| 2 * F32 * numel(s)).sum(),
        crate::model::OptimPolicy::NagGs { .. } => shapes.iter().map(|s| F32 * numel(s)).sum(),
        crate::model::OptimPolicy::Galore { rank, .. } => {
            let r = rank as usize;
            shapes
                .iter()
                .map(|s| match s.as_slice() {
                    [m, n] => F32 * (r * m.min(n) + 2 * r * m.max(n)),
                    _ => 2 * F32 * numel(s),
                })
                .sum()
        }
    }
}

/// AdamW state bytes for `n_params` f32 parameters: two moments, `8 × n_params`.
///
/// burn's AdamW also keeps one step counter per parameter tensor, which is host metadata of
/// a few bytes and not counted here.
pub fn adamw_state_bytes(n_params: usize) -> usize {
    2 * F32 * n_params
}
