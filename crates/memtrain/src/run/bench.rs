//! Side-by-side policies: memory, median step time and loss, measured in one process.

use std::path::PathBuf;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, Tokenizer, load_text};
use crate::error::{Error, Result};
use crate::memory::{is_installed, total_bytes};
use crate::model::{Preset, model_saved};
use crate::plan::{make_plan, plain_activation_bytes};
use crate::policy::{AdaptPolicy, MemoryPolicy, RematPolicy};
use crate::profile::{self, Profile};
use crate::stats::median;
use crate::train::{TrainConfig, Trainer};

use super::FitBudget;

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
    /// Policies, in order; ratios are to the first. Replaced by plain burn, the best
    /// uniform policy and the plan when [`BenchConfig::budget`] is set.
    pub policies: Vec<MemoryPolicy>,
    /// Plan for this budget and bench plain burn, the best uniform policy that fits and the
    /// plan instead of [`BenchConfig::policies`].
    pub budget: Option<FitBudget>,
    /// Measured steps per policy (at least 1).
    pub steps: usize,
    /// Seed of the weights and batches, the same for every policy.
    pub seed: u64,
    /// Learning rate.
    pub lr: f64,
    /// The text (byte tokenizer): a UTF-8 file, or `None` for the built-in corpus.
    pub data: Option<PathBuf>,
    /// Record where each policy's timed steps spend their time ([`crate::profile`]) in
    /// [`BenchReport::profiles`]. The scopes cost a clock read per operation.
    pub profile: bool,
}

impl BenchConfig {
    /// `policies` on `preset` at batch 8, the preset's full sequence, 3 steps, seed 42,
    /// lr 1e-3, the built-in corpus.
    pub fn new(preset: Preset, policies: Vec<MemoryPolicy>) -> Self {
        BenchConfig {
            preset,
            batch: 8,
            seq: preset.config(256).max_seq,
            max_seq: None,
            policies,
            budget: None,
            steps: 3,
            seed: 42,
            lr: 1e-3,
            data: None,
            profile: false,
        }
    }

    /// The training configuration of one policy (no warm-up: every step is at `lr`).
    pub fn train_config(&self, policy: MemoryPolicy) -> TrainConfig {
        TrainConfig {
            preset: self.preset,
            tokenizer: Tokenizer::Byte,
            batch: self.batch,
            seq: self.seq,
            max_seq: self.max_seq,
            lr: self.lr,
            warmup: 0,
            seed: self.seed,
            policy,
        }
    }
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
    /// See [`crate::memory::MemoryReport`]; the largest over the timed steps (all but the
    /// first when there are several: under per-stage updates the first step's peak also
    /// holds the optimizer state it allocates as it goes).
    pub peak_bytes: u64,
    /// Median wall time of a step (forward, backward, optimizer).
    pub step_seconds_median: f64,
    /// Training loss of the last step.
    pub final_loss: f32,
}

/// The analytic activation bytes of a benched policy, next to the measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Analytic {
    /// [`crate::model::model_saved`]'s total.
    Formula(u64),
    /// Under `remat=...` the row's activation bytes are the chain's peak, which the planner
    /// predicts ([`crate::remat::Plan::prediction`]), not the formula.
    Remat,
    /// The formula does not model a frozen base (autodiff keeps less for ops whose weights do
    /// not train): measured only.
    Adapters,
}

/// What the planner chose for a bench with a budget.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    /// The budget in bytes.
    pub budget: u64,
    /// The plan's policy.
    pub plan: MemoryPolicy,
    /// Its predicted step seconds.
    pub plan_seconds: f64,
    /// The best uniform policy that fits.
    pub uniform: MemoryPolicy,
    /// Its predicted step seconds.
    pub uniform_seconds: f64,
}

/// What [`bench()`] measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// The policies benched, in order.
    pub policies: Vec<MemoryPolicy>,
    /// One row per policy.
    pub rows: Vec<BenchRow>,
    /// One analytic estimate per policy.
    pub analytic: Vec<Analytic>,
    /// The plan, when benched for a budget.
    pub plan: Option<BenchPlan>,
    /// With [`BenchConfig::profile`], one profile per policy over its timed steps.
    pub profiles: Vec<Profile>,
}

/// Trains a fresh model per policy for `steps` steps on the same batches and reports each.
///
/// Every policy starts from the same seed, so the weights and batches are the same and the
/// losses are comparable. The first step allocates the optimizer state: it is left out of the
/// median when there are more. `on_step(policy_index, step)` is called after every step, for
/// a progress bar.
///
/// ```no_run
/// use burn::tensor::Device;
/// use memtrain::model::Preset;
/// use memtrain::run::{BenchConfig, bench};
///
/// # fn main() -> memtrain::Result<()> {
/// let policies = vec!["act=exact".parse()?, "act=inverted,attn=memeff".parse()?];
/// let report = bench(&BenchConfig::new(Preset::Tiny, policies), &Device::flex().autodiff(), |_, _| {})?;
/// let (plain, ours) = (&report.rows[0], &report.rows[1]);
/// println!("activations x{:.2}", ours.activation_bytes as f64 / plain.activation_bytes as f64);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// [`Error::Config`] naming the option: `steps` zero, no `policies`, a bad shape
/// ([`TrainConfig::validate`]), an infeasible `budget`, or `memory meter` when the counting
/// allocator is not installed (a bench without it would report zeros);
/// [`Error::Data`] for unusable text.
pub fn bench(
    config: &BenchConfig,
    device: &Device,
    mut on_step: impl FnMut(usize, usize),
) -> Result<BenchReport> {
    if config.steps == 0 {
        return Err(Error::config("steps", 0, "a positive integer"));
    }
    if config.policies.is_empty() && config.budget.is_none() {
        return Err(Error::config("policies", "", "at least one SPEC"));
    }
    if !is_installed() {
        return Err(Error::config(
            "memory meter",
            "no counting allocator",
            "#[global_allocator] static A: memtrain::memory::CountingAllocator in the binary",
        ));
    }
    // The shape first, with the messages `train` gives.
    let plain = config.train_config(MemoryPolicy::default());
    plain.validate()?;
    let (text, _) = load_text(config.data.as_deref())?;
    let data = Dataset::new(&text, Tokenizer::Byte, config.seq)?;
    drop(text);
    let mut policies = config.policies.clone();
    let mut plan = None;
    if let Some(FitBudget { budget, approx }) = config.budget {
        let bytes = budget.resolve(plain_activation_bytes(&plain));
        let report = make_plan(&plain, bytes, approx, &data, device)?;
        policies = vec![
            MemoryPolicy::default(),
            report.uniform.policy.clone(),
            report.plan.policy.clone(),
        ];
        plan = Some(BenchPlan {
            budget: bytes,
            plan: report.plan.policy,
            plan_seconds: report.plan.time,
            uniform: report.uniform.policy,
            uniform_seconds: report.uniform.time,
        });
    }
    let mut rows = Vec::new();
    let mut profiles = Vec::new();
    for (i, policy) in policies.iter().enumerate() {
        let mut trainer = Trainer::new(config.train_config(policy.clone()), device)?;
        let mut times = Vec::new();
        let mut last = None;
        let mut peak = 0;
        for s in 0..config.steps {
            let batch = trainer.next_batch(&data);
            // The profile covers the timed steps.
            let timed = s > 0 || config.steps == 1;
            if config.profile && timed {
                if s <= 1 {
                    drop(profile::take());
                }
                profile::enable(true);
            }
            let stats = trainer.try_step(&batch);
            if config.profile {
                profile::enable(false);
            }
            let stats = stats?;
            times.push(stats.seconds);
            if timed {
                peak = peak.max(stats.memory.peak_bytes);
            }
            last = Some(stats);
            on_step(i, s);
        }
        let last = last.expect("steps >= 1");
        if config.profile {
            profiles.push(profile::take());
        }
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
    let model = plain.model_config();
    let analytic = policies
        .iter()
        .map(|p| {
            if p.remat != RematPolicy::None {
                Analytic::Remat
            } else if p.adapt != AdaptPolicy::None {
                Analytic::Adapters
            } else {
                Analytic::Formula(
                    total_bytes(&model_saved(&model, p, config.batch, config.seq)) as u64,
                )
            }
        })
        .collect();
    Ok(BenchReport {
        policies,
        rows,
        analytic,
        plan,
        profiles,
    })
}
