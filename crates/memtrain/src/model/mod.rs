//! The reference GPT-2, built from a [`GptConfig`] under a [`MemoryPolicy`], and its byte
//! accounting.
//!
//! | file | what it holds |
//! |---|---|
//! | `config.rs` | [`GptConfig`] (the geometry; [`GptConfig::init`] builds the model) and [`Preset`] |
//! | `gpt.rs` | [`Gpt`], [`Block`], [`SelfAttention`], [`Mlp`]: the model; each part built by its method's module |
//! | `adapt.rs` | LoRA/LoTR on the block linears: attach, merge, unmerge |
//! | `accounting.rs` | what the model keeps for backward ([`model_saved`], asking each layer), its parameter and optimizer-state shapes |
//!
//! The GPT never matches on a policy: each block asks the policy's value for its layer
//! ([`crate::norm::NormPolicy::init`], [`crate::linear::LinearLayerConfig::init`]) or its op
//! ([`crate::activation::ActPolicy::forward`], [`crate::attention::AttnPolicy::forward_qkv`]),
//! and the accounting asks the same values what they keep.
//!
//! # How to add a method
//!
//! Say a new way for the MLP activation to keep less, `act=mine`:
//!
//! 1. **One module** (or file) for the method, beside its kin: `src/activation/mine.rs` with
//!    the op (a burn backend extension with its own autodiff backward, as
//!    `activation/inverted.rs` does), its `MineConfig` (`#[derive(Config)]`, `init` validating
//!    every field with an error that names it), its `saved_bytes` formula in the type's docs,
//!    and its kernels per backend in the module's backend files (`flex.rs`).
//! 2. **One policy variant**: `ActPolicy::Mine` in `activation/mod.rs`, with its arm in
//!    [`crate::activation::ActPolicy::forward`] (the line where the layer is built) and in
//!    [`crate::activation::ActPolicy::saved`] (what it keeps: the accounting then includes
//!    it), and its words in `policy/keys.rs` (`parse`, `Display`, and
//!    `exact_variants`/`approximate_variants` if the planner may choose it).
//! 3. **Tests**: the oracle ladder in `tests/` (golden values, the exact op as reference, f64
//!    finite differences) and the allocator check in `tests/memory.rs`
//!    (`check_activation_estimate("act=mine")`).
//!
//! Nothing else changes: the GPT, the planner (its candidates come from the policy keys'
//! variants, [`BlockPolicy::candidates`]), the bench and the CLI pick the variant up from the
//! policy.

mod accounting;
mod adapt;
mod config;
mod gpt;

pub use accounting::{
    adapter_shapes, block_saved, model_saved, optimizer_state_bytes, param_bytes, param_shapes,
    trainable_shapes,
};
pub use config::{GptConfig, Preset};
pub use gpt::{Block, Gpt, Mlp, SelfAttention, StageSplit};

#[cfg(doc)]
use crate::policy::{BlockPolicy, MemoryPolicy};
