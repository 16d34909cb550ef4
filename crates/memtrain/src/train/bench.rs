//! Side-by-side policies: memory, median step time and loss, measured in one process.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::{TrainConfig, Trainer};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::Preset;
use crate::policy::MemoryPolicy;
use crate::stats::median;

/// What to bench.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Model geometry.
    pub preset: Preset,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// Overrides the preset's `max_seq`.
    pub max_seq: Option<usize>,
    /// Policies, in order; ratios are to the first.
    pub policies: Vec<MemoryPolicy>,
    /// Measured steps per policy (at least 1).
    pub steps: usize,
    /// Seed of the weights and batches, the same for every policy.
    pub seed: u64,
    /// Learning rate.
    pub lr: f64,
}

/// One policy's result; serializes to exactly the keys of `memtrain bench --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchRow {
    /// The policy's canonical SPEC.
    pub policy: String,
    /// Preset name.
    pub preset: String,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    /// See [`crate::memory::MemoryReport`].
    pub param_bytes: u64,
    /// See [`crate::memory::MemoryReport`].
    pub grad_bytes: u64,
    /// See [`crate::memory::MemoryReport`].
    pub optimizer_bytes: u64,
    /// See [`crate::memory::MemoryReport`]; from the last step.
    pub activation_bytes: u64,
    /// See [`crate::memory::MemoryReport`]; the largest over the steps.
    pub peak_bytes: u64,
    /// Median wall time of a step (forward, backward, optimizer).
    pub step_seconds_median: f64,
    /// Training loss of the last step.
    pub final_loss: f32,
}

/// Trains a fresh model per policy for `steps` steps on the same batches and reports each.
///
/// Every policy starts from the same seed, so the weights and batches are the same and the
/// losses are comparable. `on_step(policy_index, step)` is called after every step, for a
/// progress bar.
///
/// # Errors
///
/// [`Error::Config`] for zero steps, no policies, or a bad batch/seq.
pub fn run_bench(
    config: &BenchConfig,
    data: &Dataset,
    device: &Device,
    mut on_step: impl FnMut(usize, usize),
) -> Result<Vec<BenchRow>> {
    if config.steps == 0 {
        return Err(Error::config("--steps", 0, "a positive integer"));
    }
    if config.policies.is_empty() {
        return Err(Error::config("--policies", "", "at least one SPEC"));
    }
    let mut rows = Vec::new();
    for (i, policy) in config.policies.iter().enumerate() {
        let train = TrainConfig {
            preset: config.preset,
            tokenizer: crate::data::Tokenizer::Byte,
            batch: config.batch,
            seq: config.seq,
            max_seq: config.max_seq,
            lr: config.lr,
            warmup: 0,
            seed: config.seed,
            policy: policy.clone(),
        };
        let mut trainer = Trainer::new(train, device)?;
        let mut times = Vec::new();
        let mut last = None;
        let mut peak = 0;
        for s in 0..config.steps {
            let batch = trainer.next_batch(data);
            let stats = trainer.try_step(&batch)?;
            times.push(stats.seconds);
            peak = peak.max(stats.memory.peak_bytes);
            last = Some(stats);
            on_step(i, s);
        }
        let last = last.expect("steps >= 1");
        // The first step allocates the optimizer state; time the others when there are any.
        let timed = if times.len() > 1 {
            &times[1..]
        } else {
            &times[..]
        };
        rows.push(BenchRow {
            policy: policy.to_string(),
            preset: config.preset.to_string(),
            batch: config.batch,
            seq: config.seq,
            param_bytes: last.memory.param_bytes,
            grad_bytes: last.memory.grad_bytes,
            optimizer_bytes: last.memory.optimizer_bytes,
            activation_bytes: last.memory.activation_bytes,
            peak_bytes: peak,
            step_seconds_median: median(timed),
            final_loss: last.loss,
        });
    }
    Ok(rows)
}
