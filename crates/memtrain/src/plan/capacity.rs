//! Capacity: the largest batch, and the longest sequence, whose activations fit a budget, for
//! plain burn (by formula) and for the planner (by profiling each candidate at that shape).

use burn::tensor::Device;

use super::{batch_for, profile_variants, solve};
use crate::data::{Dataset, Tokenizer};
use crate::error::Result;
use crate::memory::total_bytes;
use crate::model::{GptConfig, model_saved};
use crate::policy::{AttnPolicy, BlockPolicy, LinearPolicy, MemoryPolicy};
use crate::train::TrainConfig;

/// Sequence lengths are searched in multiples of this many tokens.
pub const SEQ_STEP: usize = 64;

/// What fits a budget, plain burn against the planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// The largest batch at the configured sequence whose plain activations fit (0: none).
    pub plain_batch: usize,
    /// The largest batch at the configured sequence some plan fits.
    pub planned_batch: usize,
    /// The longest sequence (a multiple of [`SEQ_STEP`]) at the configured batch whose plain
    /// activations fit.
    pub plain_seq: usize,
    /// The longest such sequence some plan fits.
    pub planned_seq: usize,
}

/// Whether any plan for `model` on `batch` fits `budget` (one profile of each candidate).
fn plan_fits(
    model: &GptConfig,
    batch: &crate::data::Batch,
    approx: bool,
    budget: u64,
    device: &Device,
) -> bool {
    // Feasibility only: exact attention and burn's linear keep and peak at least as much as
    // the fused attention and the gemm linear in every stage, so they cannot make a budget
    // feasible that the others do not.
    let candidates: Vec<BlockPolicy> = BlockPolicy::candidates(approx)
        .into_iter()
        .filter(|c| c.attn == AttnPolicy::Memeff && c.linear != LinearPolicy::Exact)
        .collect();
    profile_variants(model, batch, &candidates, 1, device)
        .is_ok_and(|v| solve(&v, model.n_layers, budget, 0.0).is_ok())
}

/// The largest `n` in `1..=8192` with `fits(n)` (0 when `fits(1)` fails), by doubling then
/// bisection: `fits` must be monotone.
fn largest(fits: &dyn Fn(usize) -> bool) -> usize {
    if !fits(1) {
        return 0;
    }
    let mut hi = 1;
    while hi < 4096 && fits(hi * 2) {
        hi *= 2;
    }
    let (mut lo, mut hi) = (hi, hi * 2);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The largest batch whose plain activations fit `budget` bytes and the largest the planner
/// fits (found by doubling, then bisection; each planned candidate is profiled at its batch);
/// then the same for the sequence length at the configured batch, the position table growing
/// with it as `max_seq` would. `text` is the training text, tokenized again at each sequence
/// length tried.
///
/// ```no_run
/// use burn::tensor::Device;
/// use memtrain::data::load_text;
/// use memtrain::model::Preset;
/// use memtrain::plan::capacity;
/// use memtrain::train::TrainConfig;
///
/// # fn main() -> memtrain::Result<()> {
/// let (text, _) = load_text(None)?;
/// let fits = capacity(&TrainConfig::new(Preset::Small), 128 << 20, false, &text, &Device::flex().autodiff())?;
/// println!("batch {} plain, {} planned", fits.plain_batch, fits.planned_batch);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// [`crate::Error::Config`] for a bad configuration ([`TrainConfig::validate`]).
pub fn capacity(
    config: &TrainConfig,
    budget: u64,
    approx: bool,
    text: &str,
    device: &Device,
) -> Result<Capacity> {
    config.validate()?;
    let model = config.model_config();
    let plain_bytes = |m: &GptConfig, b: usize, t: usize| {
        total_bytes(&model_saved(m, &MemoryPolicy::default(), b, t)) as u64
    };
    let data = Dataset::new(text, Tokenizer::Byte, config.seq)?;
    let plain_batch = largest(&|b| plain_bytes(&model, b, config.seq) <= budget);
    let planned_batch = largest(&|b| {
        let batch = batch_for(&data, config.seed, b, config.seq, device);
        plan_fits(&model, &batch, approx, budget, device)
    });
    let at_seq = |t: usize| {
        let mut m = model;
        m.max_seq = m.max_seq.max(t);
        m
    };
    let plain_seq = largest(&|k| {
        let t = k * SEQ_STEP;
        plain_bytes(&at_seq(t), config.batch, t) <= budget
    }) * SEQ_STEP;
    let planned_seq = largest(&|k| {
        let t = k * SEQ_STEP;
        let Ok(data) = Dataset::new(text, Tokenizer::Byte, t) else {
            return false;
        };
        let batch = batch_for(&data, config.seed, config.batch, t, device);
        plan_fits(&at_seq(t), &batch, approx, budget, device)
    }) * SEQ_STEP;
    Ok(Capacity {
        plain_batch,
        planned_batch,
        plain_seq,
        planned_seq,
    })
}
