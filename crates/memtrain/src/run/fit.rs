//! A whole training run: start (fresh, resumed or fine-tuned), plan for a budget, train with
//! evaluations and checkpoints, and report.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;

use crate::data::{DataSource, Dataset, load_text};
use crate::error::{Error, Result};
use crate::plan::make_plan;
use crate::policy::{Budget, MemoryPolicy};
use crate::remat;
use crate::train::{DEFAULT_KEEP, StepStats, TrainConfig, Trainer, holds_run, prepare_fresh_out};

/// Where a run starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// A fresh model of [`FitOptions::config`] at step 0.
    Fresh,
    /// The newest checkpoint in [`FitOptions::out`], with that checkpoint's configuration and
    /// data (its preset, policy, batch, seq, learning rate, seed and text), up to
    /// [`FitOptions::steps`] in total.
    Resume,
    /// Fine-tuning: the weights of the newest checkpoint in this directory, a fresh optimizer,
    /// step 0. With `adapt=...` in the policy those weights are the frozen base. The geometry
    /// (preset, max_seq, tokenizer) must match [`FitOptions::config`].
    InitFrom(PathBuf),
}

/// Planning the blocks' variants and remat for an activation budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitBudget {
    /// The budget: a size, or a fraction of plain burn's activation bytes at this shape.
    pub budget: Budget,
    /// Whether the planner may use approximate variants (few-bit GELU, sketched linears).
    pub approx: bool,
}

/// What [`fit`] runs.
#[derive(Debug, Clone)]
pub struct FitOptions {
    /// The run's configuration (ignored by [`Start::Resume`], which takes the checkpoint's).
    pub config: TrainConfig,
    /// Where the text comes from: a UTF-8 file, or `None` for the built-in corpus. On resume
    /// `None` means the checkpoint's own source; a file must have the same contents.
    pub data: Option<PathBuf>,
    /// Total steps (a resumed run continues up to this count).
    pub steps: u64,
    /// The run directory: checkpoints and `metrics.csv`.
    pub out: PathBuf,
    /// How the run starts.
    pub start: Start,
    /// Validation loss, a `metrics.csv` row and a checkpoint every this many steps (0: only
    /// at the end).
    pub eval_every: u64,
    /// Validation batches per evaluation.
    pub eval_batches: usize,
    /// Plan the blocks' variants and remat for a budget (fresh and fine-tuning runs); the
    /// policy keys the planner does not choose (weights, optim, adapt) are kept
    /// ([`MemoryPolicy::with_planned`]).
    pub budget: Option<FitBudget>,
    /// A fresh or fine-tuning run into an `out` that already holds a run replaces that run's
    /// files instead of failing ([`crate::train::prepare_fresh_out`]).
    pub overwrite: bool,
    /// Checkpoints kept in `out` (the newest by step; at least 1).
    pub keep: usize,
}

impl FitOptions {
    /// A fresh run of `config` for `steps` steps into `out`, on the built-in corpus,
    /// evaluating every 500 steps on 8 batches.
    pub fn new(config: TrainConfig, steps: u64, out: impl Into<PathBuf>) -> Self {
        FitOptions {
            config,
            data: None,
            steps,
            out: out.into(),
            start: Start::Fresh,
            eval_every: 500,
            eval_batches: 8,
            budget: None,
            overwrite: false,
            keep: DEFAULT_KEEP,
        }
    }
}

/// What happened, as [`fit`] goes: for progress bars and logs.
#[derive(Debug)]
pub enum FitEvent<'a> {
    /// The planner chose a policy for the budget.
    Planned {
        /// The budget in bytes.
        budget: u64,
        /// The policy that runs.
        policy: &'a MemoryPolicy,
        /// Predicted chain peak, bytes.
        peak: usize,
        /// Predicted step seconds.
        seconds: f64,
    },
    /// The run is ready to train.
    Started {
        /// The configuration that runs.
        config: &'a TrainConfig,
        /// Parameters of the model under its policy.
        params: usize,
        /// Training tokens.
        train_tokens: usize,
        /// Validation tokens.
        valid_tokens: usize,
        /// The step it starts from.
        step: u64,
    },
    /// The remat schedule made on the first step (under `remat=...`).
    Schedule(&'a remat::Plan),
    /// One optimizer step finished.
    Step {
        /// Steps completed.
        step: u64,
        /// What it measured.
        stats: &'a StepStats,
    },
    /// An evaluation (also written to `metrics.csv`).
    Evaluated {
        /// Steps completed.
        step: u64,
        /// The last step's training loss (`None` before the first step).
        train_loss: Option<f32>,
        /// Mean validation loss.
        val_loss: f32,
    },
    /// A checkpoint was written.
    Checkpoint(&'a Path),
}

/// What a finished run measured.
#[derive(Debug, Clone, Copy)]
pub struct FitSummary {
    /// The step it started from.
    pub first_step: u64,
    /// The step it ended at.
    pub last_step: u64,
    /// Wall seconds of the training loop (evaluations and checkpoints included).
    pub seconds: f64,
    /// The last step's statistics.
    pub last: StepStats,
    /// The last validation loss.
    pub val_loss: f32,
}

/// The trainer, its text and where the text came from, for each kind of start.
fn start(
    options: &FitOptions,
    device: &Device,
    on_event: &mut impl FnMut(FitEvent),
) -> Result<(Trainer, String, DataSource)> {
    if options.start == Start::Resume {
        let (trainer, state) = Trainer::resume(&options.out, device)?;
        let (text, source) = match &state.data {
            DataSource::Builtin => load_text(None)?,
            DataSource::File { path, .. } => {
                load_text(Some(options.data.as_deref().unwrap_or(path)))?
            }
        };
        if source != state.data {
            return Err(Error::config(
                "data",
                format!("{source:?}"),
                format!("what the checkpoint trained on ({:?})", state.data),
            ));
        }
        return Ok((trainer, text, source));
    }
    let mut config = options.config.clone();
    config.validate()?;
    let (text, source) = load_text(options.data.as_deref())?;
    // The planner's schedule, when the policy it planned runs unchanged.
    let mut schedule = None;
    if let Some(FitBudget { budget, approx }) = options.budget {
        let bytes = budget.resolve(crate::plan::plain_activation_bytes(&config));
        let data = Dataset::new(&text, config.tokenizer, config.seq)?;
        let report = make_plan(&config, bytes, approx, &data, device)?;
        let planned = config.policy.with_planned(&report.plan.policy);
        on_event(FitEvent::Planned {
            budget: bytes,
            policy: &planned,
            peak: report.plan.peak,
            seconds: report.plan.time,
        });
        if planned == report.plan.policy {
            schedule = Some(report.plan.remat_plan());
        }
        config.policy = planned;
    }
    let mut trainer = match &options.start {
        Start::InitFrom(dir) => {
            let (base, state) = Trainer::resume(dir, device).map_err(|e| {
                Error::config(
                    "init_from",
                    dir.display(),
                    format!("a run directory with a checkpoint ({e})"),
                )
            })?;
            let (want, got) = (config.model_config(), state.config.model_config());
            if want != got || config.tokenizer != state.config.tokenizer {
                return Err(Error::config(
                    "init_from",
                    format!(
                        "its model ({got:?}, {:?} tokenizer) is not this run's ({want:?}, {:?} tokenizer)",
                        state.config.tokenizer, config.tokenizer
                    ),
                    "a checkpoint of this run's geometry and tokenizer",
                ));
            }
            let mut model = base.model().clone();
            if model.has_adapters() {
                return Err(Error::config(
                    "init_from",
                    "a checkpoint with adapters",
                    "a plain model to fine-tune from",
                ));
            }
            if let Some(adapter) = config.policy.adapt.config() {
                // The same adapter initialisation for the same seed.
                device.seed(config.seed);
                model = model.with_adapters(&adapter)?;
            }
            Trainer::from_model(config, model, 0, device)?
        }
        _ => Trainer::new(config, device)?,
    };
    if let Some(schedule) = schedule {
        trainer.use_remat_plan(schedule)?;
    }
    Ok((trainer, text, source))
}

/// Appends `row` to `out/metrics.csv`, writing the header first into a new file.
fn append_metrics(out: &Path, row: &str) -> Result<()> {
    let path = out.join("metrics.csv");
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    let empty = file.metadata().map(|m| m.len() == 0).unwrap_or(false);
    let mut text = String::new();
    if empty {
        text.push_str("step,train_loss,val_loss\n");
    }
    text.push_str(row);
    text.push('\n');
    file.write_all(text.as_bytes())
        .map_err(|e| Error::io(&path, e))
}

/// Trains as `options` say on `device` (an autodiff device), calling `on_event` as it goes.
///
/// A fresh or fine-tuning run evaluates at step 0; every run evaluates, appends a row to
/// `out/metrics.csv` (`step,train_loss,val_loss`) and writes a checkpoint
/// ([`Trainer::save_checkpoint`]) every [`FitOptions::eval_every`] steps and at the end.
/// Batches are a function of the seed and the step, so a run killed and resumed reaches the
/// same loss at the same step as an uninterrupted one.
///
/// ```no_run
/// use burn::tensor::Device;
/// use memtrain::model::Preset;
/// use memtrain::run::{FitEvent, FitOptions, fit};
/// use memtrain::train::TrainConfig;
///
/// # fn main() -> memtrain::Result<()> {
/// let options = FitOptions::new(TrainConfig::new(Preset::Tiny), 200, "run1");
/// let summary = fit(&options, &Device::flex().autodiff(), |event| {
///     if let FitEvent::Evaluated { step, val_loss, .. } = event {
///         println!("step {step}: val_loss {val_loss:.4}");
///     }
/// })?;
/// println!("{:.1} s, peak {} bytes", summary.seconds, summary.last.memory.peak_bytes);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// [`Error::Config`] naming the option: `steps` zero or not beyond a resumed checkpoint's
/// step, `keep` or `eval_batches` zero, a fresh run into an `out` that holds a run without `overwrite`, a bad configuration ([`TrainConfig::validate`]), `data` that differs from what a
/// resumed checkpoint trained on, an `init_from` checkpoint of another geometry or with
/// adapters, a budget below the smallest feasible one; [`Error::Data`] for unusable text;
/// [`Error::Checkpoint`] and [`Error::Io`] for checkpoints and files; [`Error::Diverged`] when
/// the loss becomes NaN or infinite (no checkpoint of that step is written).
pub fn fit(
    options: &FitOptions,
    device: &Device,
    mut on_event: impl FnMut(FitEvent),
) -> Result<FitSummary> {
    if options.steps == 0 {
        return Err(Error::config("steps", 0, "a positive integer"));
    }
    if options.eval_batches == 0 {
        return Err(Error::config(
            "eval_batches",
            0,
            "at least 1 validation batch per evaluation",
        ));
    }
    if options.keep == 0 {
        return Err(Error::config("keep", 0, "at least 1 checkpoint to keep"));
    }
    let fresh = options.start != Start::Resume;
    if fresh && !options.overwrite && holds_run(&options.out) {
        // Refused before the data, the planner and the model: the run's files stay as they are.
        prepare_fresh_out(&options.out, false)?;
    }
    let (mut trainer, text, source) = start(options, device, &mut on_event)?;
    let config = trainer.config().clone();
    let data = Dataset::new(&text, config.tokenizer, config.seq)?;
    drop(text);
    let first = trainer.step_count();
    if first >= options.steps {
        return Err(Error::config(
            "steps",
            options.steps,
            format!("more than the checkpoint's step {first}"),
        ));
    }
    if fresh {
        prepare_fresh_out(&options.out, options.overwrite)?;
    }
    std::fs::create_dir_all(&options.out).map_err(|e| Error::io(&options.out, e))?;
    on_event(FitEvent::Started {
        config: &config,
        params: config.model_config().param_count_for(&config.policy),
        train_tokens: data.train_tokens().len(),
        valid_tokens: data.valid_tokens().len(),
        step: first,
    });
    let mut val_loss = f32::NAN;
    if first == 0 {
        val_loss = trainer.evaluate(&data, options.eval_batches);
        on_event(FitEvent::Evaluated {
            step: 0,
            train_loss: None,
            val_loss,
        });
        append_metrics(&options.out, &format!("0,,{val_loss}"))?;
    }
    let started = Instant::now();
    let mut last = None;
    let mut announced = false;
    while trainer.step_count() < options.steps {
        let batch = trainer.next_batch(&data);
        let stats = trainer.try_step(&batch)?;
        if let (Some(plan), false) = (trainer.remat_plan(), announced) {
            announced = true;
            on_event(FitEvent::Schedule(plan));
        }
        let step = trainer.step_count();
        on_event(FitEvent::Step {
            step,
            stats: &stats,
        });
        let at_eval = options.eval_every > 0 && step.is_multiple_of(options.eval_every);
        if at_eval || step == options.steps {
            val_loss = trainer.evaluate(&data, options.eval_batches);
            on_event(FitEvent::Evaluated {
                step,
                train_loss: Some(stats.loss),
                val_loss,
            });
            append_metrics(&options.out, &format!("{step},{},{val_loss}", stats.loss))?;
            let dir = trainer.save_checkpoint(&options.out, &source, options.keep)?;
            on_event(FitEvent::Checkpoint(&dir));
        }
        last = Some(stats);
    }
    Ok(FitSummary {
        first_step: first,
        last_step: trainer.step_count(),
        seconds: started.elapsed().as_secs_f64(),
        last: last.expect("at least one step ran"),
        val_loss,
    })
}
