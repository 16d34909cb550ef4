//! One measured training step ([`Trainer`]), evaluation, checkpoints, and the sketch-variance
//! probe. Whole runs (the loop, the bench) are in [`crate::run`].

mod checkpoint;
mod variance;

use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

pub use checkpoint::{CheckpointState, DEFAULT_KEEP, LATEST, holds_run, prepare_fresh_out};
pub use variance::{VarianceReport, gradient_variance};

use crate::data::{Batch, Dataset, Tokenizer};
use crate::error::{Error, Result};
use crate::memory::{MemoryReport, Region, gradient_bytes, live_bytes_on};
use crate::model::{Gpt, GptConfig, Preset};
use crate::policy::{MemoryPolicy, RematPolicy, UpdatePolicy};
use crate::profile::{self, Pass};

/// Everything that defines a training run, saved in every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Model geometry.
    pub preset: Preset,
    /// Tokenizer (sets the vocabulary).
    pub tokenizer: Tokenizer,
    /// Sequences per step.
    pub batch: usize,
    /// Tokens per sequence (at most `max_seq`).
    pub seq: usize,
    /// Overrides the preset's position-table length (`max_seq`), e.g. to train the `small`
    /// geometry at seq 2048.
    #[serde(default)]
    pub max_seq: Option<usize>,
    /// Peak AdamW learning rate.
    pub lr: f64,
    /// Steps of linear learning-rate warm-up from `lr / warmup` to `lr` (0: none); constant
    /// after.
    #[serde(default)]
    pub warmup: u64,
    /// Seeds the weights and the batches.
    pub seed: u64,
    /// How each part of the model is computed.
    pub policy: MemoryPolicy,
}

impl TrainConfig {
    /// Defaults for a preset: batch 8, the preset's full sequence, lr 1e-3 with 100 warm-up
    /// steps, seed 42, plain policy.
    pub fn new(preset: Preset) -> Self {
        TrainConfig {
            preset,
            tokenizer: Tokenizer::Byte,
            batch: 8,
            seq: preset.config(256).max_seq,
            max_seq: None,
            lr: 1e-3,
            warmup: 100,
            seed: 42,
            policy: MemoryPolicy::default(),
        }
    }

    /// The model geometry.
    pub fn model_config(&self) -> GptConfig {
        let mut config = self.preset.config(self.tokenizer.vocab_size());
        if let Some(max_seq) = self.max_seq {
            config.max_seq = max_seq;
        }
        config
    }

    /// Checks every value.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the bad value: `batch` or `seq` zero, `seq` above the preset's
    /// `max_seq`, a learning rate that is not a positive finite number, a policy value out of
    /// range ([`MemoryPolicy::validate`]), a GaLore rank above the smaller side of a matrix
    /// that trains (an adapter's rank included).
    pub fn validate(&self) -> Result<()> {
        let max_seq = self.model_config().max_seq;
        if self.max_seq == Some(0) {
            return Err(Error::config("max_seq", 0, "a positive integer"));
        }
        if self.batch == 0 {
            return Err(Error::config("batch", self.batch, "a positive integer"));
        }
        if self.seq == 0 || self.seq > max_seq {
            return Err(Error::config(
                "seq",
                self.seq,
                match self.max_seq {
                    Some(_) => format!("1..={max_seq} (max_seq)"),
                    None => format!(
                        "1..={max_seq} (the {} preset's max_seq; max_seq raises it)",
                        self.preset
                    ),
                },
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::config("lr", self.lr, "a positive finite number"));
        }
        self.policy.validate()?;
        if self.policy.update == UpdatePolicy::PerStage
            && matches!(self.policy.adapt, crate::adapter::AdaptPolicy::Lotr { .. })
        {
            return Err(Error::config(
                "update",
                format!("per-stage with adapt={}", self.policy.adapt),
                "update=step with LoTR (its factors are shared by every block, so no stage's \
                 gradients are complete before the whole backward), or adapt=lora",
            ));
        }
        self.check_fits_memory()?;
        if let Some(galore) = self.policy.optim.galore() {
            // GaLore projects the 2-D parameters that train: wte, wpe and the blocks' dense
            // linears, or the adapters' factors when the base is frozen.
            let min_side = crate::model::trainable_shapes(&self.model_config(), &self.policy)
                .iter()
                .filter(|s| s.len() == 2)
                .map(|s| s[0].min(s[1]))
                .min()
                .unwrap_or(usize::MAX);
            galore.check(min_side)?;
        }
        Ok(())
    }

    /// A lower bound of a training step's bytes, computed in `f64` so that no size overflows:
    /// parameters and their gradients, one layer's residual stream and the logits (both exist
    /// at some instant under every policy, remat included). Returns `(bound, of which the
    /// part that grows with batch × seq)`.
    pub fn step_bytes_lower_bound(&self) -> (f64, f64) {
        let c = self.model_config();
        let (d, vocab) = (c.d_model as f64, c.vocab_size as f64);
        let params = (vocab + c.max_seq as f64) * d + c.n_layers as f64 * 12.0 * d * d;
        let tokens = self.batch as f64 * self.seq as f64;
        let per_token = tokens * (d + vocab) * 4.0;
        (2.0 * 4.0 * params + per_token, per_token)
    }

    /// Refuses a step that cannot fit this machine's physical memory
    /// ([`TrainConfig::step_bytes_lower_bound`] above [`crate::memory::physical_bytes`]), before
    /// anything is allocated: a huge `batch` or `max_seq` is an error, not an aborted process.
    /// The bound is the host's memory on every device (a GPU's memory is not known before
    /// the device starts).
    fn check_fits_memory(&self) -> Result<()> {
        let Some(machine) = crate::memory::physical_bytes() else {
            return Ok(());
        };
        let (bound, per_token) = self.step_bytes_lower_bound();
        if bound <= machine as f64 {
            return Ok(());
        }
        let gib = |b: f64| b / (1u64 << 30) as f64;
        let expected = format!(
            "a step that fits this machine's {:.1} GiB of memory (it needs at least {:.1} GiB: parameters, gradients, one layer's activations and the logits)",
            gib(machine as f64),
            gib(bound)
        );
        Err(if per_token > machine as f64 / 2.0 {
            Error::config(
                "batch",
                format!("{} with seq {}", self.batch, self.seq),
                expected,
            )
        } else {
            Error::config("max_seq", self.model_config().max_seq, expected)
        })
    }

    /// The learning rate of step `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        if step < self.warmup {
            self.lr * (step + 1) as f64 / self.warmup as f64
        } else {
            self.lr
        }
    }
}

/// What one training step measured.
#[derive(Debug, Clone, Copy)]
pub struct StepStats {
    /// Training loss of the batch (before the update).
    pub loss: f32,
    /// The step's memory.
    pub memory: MemoryReport,
    /// Wall time of forward, backward and optimizer step.
    pub seconds: f64,
}

/// A model, its optimizer and the step counter.
///
/// # Memory
///
/// [`Trainer::step`] measures a [`MemoryReport`] every step with the counting allocator, which
/// the binary must install (`#[global_allocator]`); without it the report reads zero.
pub struct Trainer {
    config: TrainConfig,
    // `None` only inside `step`, so the optimizer can own the only reference and update
    // parameters in place.
    model: Option<Gpt>,
    optim: ModuleOptimizer,
    step: u64,
    device: Device,
    param_bytes: u64,
    optimizer_bytes: Option<u64>,
    warm: bool,
    /// The rematerialization plan, made on the first step when the policy asks for one.
    remat: Option<crate::remat::Plan>,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("config", &self.config)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl Trainer {
    /// A fresh model and optimizer on `device` (an autodiff device), seeded by `config.seed`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] from [`TrainConfig::validate`].
    pub fn new(config: TrainConfig, device: &Device) -> Result<Self> {
        config.validate()?;
        let region = Region::start_on(device);
        let model = config
            .model_config()
            .init_seeded(&config.policy, device, config.seed)?;
        let param_bytes = region.live().max(0) as u64;
        Ok(Trainer {
            optim: config.policy.optim.init()?,
            config,
            model: Some(model),
            step: 0,
            device: device.clone(),
            param_bytes,
            optimizer_bytes: None,
            warm: false,
            remat: None,
        })
    }

    /// A run under `config` that starts from `model`'s weights at step `step`, with a fresh
    /// optimizer: how a compressed model is fine-tuned (see [`crate::compress`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] from [`TrainConfig::validate`], or when `model` does not have the
    /// structure and shapes of the model `config` builds (naming the first mismatch).
    pub fn from_model(config: TrainConfig, model: Gpt, step: u64, device: &Device) -> Result<Self> {
        let mut trainer = Trainer::new(config, device)?;
        let fresh = trainer.model.take().expect("a new trainer holds its model");
        let loaded = fresh
            .try_load_record(model.into_record())
            .map_err(|e| {
                Error::config(
                    "model",
                    format!("{e:?}"),
                    format!("the shapes of policy {}", trainer.config.policy),
                )
            })?
            .with_sequential_ids();
        trainer.model = Some(loaded);
        trainer.step = step;
        Ok(trainer)
    }

    /// The run's configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// The model.
    pub fn model(&self) -> &Gpt {
        self.model
            .as_ref()
            .expect("the model is only taken inside `step`")
    }

    /// The device the model trains on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The training batch of the next step (a pure function of seed and step).
    pub fn next_batch(&self, data: &Dataset) -> Batch {
        data.train_batch(
            self.config.seed,
            self.step,
            self.config.batch,
            self.config.seq,
            &self.device,
        )
    }

    /// One optimizer step on `batch` (the policy's optimizer), measured.
    ///
    /// The first call first runs one forward and backward without an update, so that one-off
    /// allocations (thread pools, matmul scratch) are not counted as activations.
    ///
    /// Where each [`MemoryReport`] field is read: `activation_bytes` is live bytes right after
    /// the loss minus live bytes before the forward; `grad_bytes` is live bytes after
    /// `backward` and gradient collection minus the same base (the graph is freed by then);
    /// `peak_bytes` is the peak from the forward to the end of the optimizer step above the
    /// base; `optimizer_bytes` is the change of live bytes across the first optimizer update
    /// (AdamW allocates its state then) plus the bytes of the gradient tensors the update
    /// consumed (so a thread growing its matmul scratch in the forward cannot be counted as
    /// optimizer state); `param_bytes` is live bytes after building
    /// the model minus before.
    pub fn step(&mut self, batch: &Batch) -> StepStats {
        self.try_step(batch)
            .expect("a step failed (remat budget or diverged loss); use try_step for the error")
    }

    /// [`Trainer::step`], returning an error instead of panicking when the policy's remat
    /// budget is below the smallest feasible one (known only once the first batch has
    /// been profiled) or the loss is not finite.
    ///
    /// Under `remat=...` the step runs [`crate::remat::step`] on the schedule made on the
    /// first call, and `activation_bytes` is the chain's measured peak (what it keeps,
    /// recomputes and needs in backward, parameter gradients excluded) instead of what a
    /// plain forward keeps.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] from [`crate::remat::plan`]; [`Error::Diverged`] when the loss is NaN
    /// or infinite, in which case the update is not applied and the step count stays.
    pub fn try_step(&mut self, batch: &Batch) -> Result<StepStats> {
        let precision = self.config.policy.precision;
        crate::linear::with_precision(precision, || self.try_step_in_precision(batch))
    }

    /// [`Trainer::try_step`] inside the policy's precision scope.
    fn try_step_in_precision(&mut self, batch: &Batch) -> Result<StepStats> {
        if !self.warm {
            let loss = self
                .model()
                .loss(batch.inputs.clone(), batch.targets.clone());
            drop(loss.backward());
            self.warm = true;
        }
        if self.config.policy.remat != RematPolicy::None && self.remat.is_none() {
            self.remat = Some(crate::remat::plan(
                self.model(),
                batch,
                self.config.policy.remat,
                self.config.policy.update,
            )?);
        }
        if self.config.policy.update == UpdatePolicy::PerStage {
            return self.step_per_stage(batch);
        }
        let region = Region::start_on(&self.device);
        let start = Instant::now();
        let mut chain_bytes = 0;
        let (grads, loss, activation_bytes) = match &self.remat {
            None => {
                let phase = profile::phase(Pass::Forward);
                let loss = self
                    .model()
                    .loss(batch.inputs.clone(), batch.targets.clone());
                drop(phase);
                let activation_bytes = region.live().max(0) as u64;
                let phase = profile::phase(Pass::Backward);
                let grads = GradientsParams::from_grads(loss.backward(), self.model());
                drop(phase);
                (grads, loss.into_scalar::<f32>(), activation_bytes)
            }
            Some(plan) => {
                // Forward and backward interleave: the profile counts the executor as backward.
                let _phase = profile::phase(Pass::Backward);
                let (grads, stats) = crate::remat::step(self.model(), batch, &plan.schedule);
                chain_bytes = stats.peak as u64;
                (grads, stats.loss, stats.activation_peak as u64)
            }
        };
        let grad_bytes = region.live().max(0) as u64;
        if !loss.is_finite() {
            // Stop before the update: NaN gradients would poison the weights (and GaLore's
            // projector refresh), and the step counter stays at the last good step.
            drop(grads);
            return Err(Error::Diverged {
                step: self.step + 1,
                loss,
            });
        }
        let model = self
            .model
            .take()
            .expect("the model is only taken inside `step`");
        let lr = self.config.lr_at(self.step);
        // The optimizer step frees the gradients and, the first time, allocates its state.
        // AdamW and NAG-GS run no matrix product, so no thread grows its matmul scratch
        // inside this window; GaLore's SVDs and projections may (about 1 MiB on `small`).
        // Only the first update is measured; later steps skip the walk over the parameters.
        let consumed = self
            .optimizer_bytes
            .is_none()
            .then(|| gradient_bytes(&model, &grads) as i64);
        let before_update = live_bytes_on(&self.device) as i64;
        let phase = profile::phase(Pass::Update);
        let op = profile::scope("optimizer", || self.config.policy.optim.to_string(), || 0.0);
        self.model = Some(self.optim.step(lr, model, grads));
        drop((op, phase));
        let update = live_bytes_on(&self.device) as i64 - before_update;
        // A device runs asynchronously: the step ends when its queue is done.
        crate::device::sync(&self.device)?;
        let seconds = start.elapsed().as_secs_f64();
        let peak_bytes = region.peak() as u64;
        let optimizer_bytes = *self
            .optimizer_bytes
            .get_or_insert_with(|| (update + consumed.unwrap_or(0)).max(0) as u64);
        self.step += 1;
        Ok(StepStats {
            loss,
            seconds,
            memory: MemoryReport {
                param_bytes: self.param_bytes,
                grad_bytes,
                optimizer_bytes,
                activation_bytes,
                peak_bytes,
                chain_bytes,
            },
        })
    }

    /// [`Trainer::try_step`] under `update=per-stage`: the remat executor runs the plan's
    /// schedule (keep everything without one) and updates each stage as its backward ends.
    fn step_per_stage(&mut self, batch: &Batch) -> Result<StepStats> {
        let schedule = match &self.remat {
            Some(plan) => plan.schedule.clone(),
            None => crate::remat::Schedule::keep_all(0, self.model().n_stages()),
        };
        let lr = self.config.lr_at(self.step);
        let model = self
            .model
            .take()
            .expect("the model is only taken inside `step`");
        let before = live_bytes_on(&self.device) as i64;
        let region = Region::start_on(&self.device);
        let start = Instant::now();
        let optim = &mut self.optim;
        // Forward, backward and the updates interleave: the profile counts them as backward.
        let _phase = profile::phase(Pass::Backward);
        let (model, stats) =
            crate::remat::step_updating(model, batch, &schedule, &mut |m, g| optim.step(lr, m, g));
        self.model = Some(model);
        crate::device::sync(&self.device)?;
        let seconds = start.elapsed().as_secs_f64();
        let peak_bytes = region.peak() as u64;
        drop(region);
        if !stats.loss.is_finite() {
            return Err(Error::Diverged {
                step: self.step + 1,
                loss: stats.loss,
            });
        }
        // Parameters are replaced one for one and every gradient is freed: what stays is the
        // optimizer state the first update allocated.
        let grown = (live_bytes_on(&self.device) as i64 - before).max(0) as u64;
        let optimizer_bytes = *self.optimizer_bytes.get_or_insert(grown);
        self.step += 1;
        Ok(StepStats {
            loss: stats.loss,
            seconds,
            memory: MemoryReport {
                param_bytes: self.param_bytes,
                grad_bytes: stats.grad_peak as u64,
                optimizer_bytes,
                activation_bytes: stats.activation_peak as u64,
                peak_bytes,
                chain_bytes: stats.peak as u64,
            },
        })
    }

    /// Runs `plan`'s schedule from the next step on, instead of the one the trainer would make
    /// from its own profile on its first step (see [`crate::plan::MemoryPlan::remat_plan`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the policy asks for no rematerialization, or the plan's chain
    /// does not have one stage per block half plus the head.
    pub fn use_remat_plan(&mut self, plan: crate::remat::Plan) -> Result<()> {
        if self.config.policy.remat == RematPolicy::None {
            return Err(Error::config(
                "remat",
                "none",
                "a policy with remat=every:K or remat=budget:SIZE to run a remat plan",
            ));
        }
        let stages = self.model().n_stages() + 1;
        if plan.chain.len() != stages {
            return Err(Error::config(
                "remat plan",
                format!("{} stages", plan.chain.len()),
                format!("{stages} stages: two per block and the head"),
            ));
        }
        self.remat = Some(plan);
        Ok(())
    }

    /// The rematerialization plan in use (made on the first step), if the policy asks for
    /// one.
    pub fn remat_plan(&self) -> Option<&crate::remat::Plan> {
        self.remat.as_ref()
    }

    /// Mean validation loss over `batches` fixed validation batches, without autodiff, in the
    /// policy's precision.
    pub fn evaluate(&self, data: &Dataset, batches: usize) -> f32 {
        let precision = self.config.policy.precision;
        crate::linear::with_precision(precision, || self.evaluate_in_precision(data, batches))
    }

    fn evaluate_in_precision(&self, data: &Dataset, batches: usize) -> f32 {
        let model = self.model().valid();
        let device = self.device.clone().without_autodiff();
        let mut total = 0.0;
        for i in 0..batches.max(1) {
            let b = data.valid_batch(i, self.config.batch, self.config.seq, &device);
            total += model.loss(b.inputs, b.targets).into_scalar::<f32>();
        }
        total / batches.max(1) as f32
    }
}
