//! A whole training run: start (fresh, resumed or fine-tuned), plan for a budget, train with
//! evaluations and checkpoints, and report.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::Device;

use crate::data::{DataSource, Dataset, load_text};
use crate::error::{Error, Result};
use crate::plan::make_plan_with_progress;
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
    /// Validation loss and a `metrics.csv` row every this many steps (0: only at the end).
    pub eval_every: u64,
    /// A checkpoint every this many steps (0: only at the end; `None`: with every
    /// evaluation). The last step always gets one.
    pub save_every: Option<u64>,
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
            save_every: None,
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
    /// The planner is profiling candidates for the budget: `done` of `total` passes.
    Profiling {
        /// Passes done.
        done: usize,
        /// All passes.
        total: usize,
    },
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
        /// Of which train (fewer than `params` when adapters freeze the base).
        trainable: usize,
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
        /// The learning rate it used.
        lr: f64,
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
#[derive(Debug, Clone)]
pub struct FitSummary {
    /// The step it started from.
    pub first_step: u64,
    /// The step it ended at.
    pub last_step: u64,
    /// Wall seconds of the training loop (evaluations and checkpoints included).
    pub seconds: f64,
    /// Seconds inside training steps (forward, backward, update) only.
    pub step_seconds: f64,
    /// Training tokens per second over the steps (`batch × seq × steps / step_seconds`).
    pub tokens_per_second: f64,
    /// The last step's statistics.
    pub last: StepStats,
    /// The largest step peak of the run ([`crate::memory::MemoryReport::peak_bytes`]).
    pub peak_bytes: u64,
    /// The last validation loss.
    pub val_loss: f32,
    /// The lowest validation loss of this run and its step.
    pub best_val_loss: (u64, f32),
    /// Trainable parameters (the adapters' alone when the base is frozen) and all parameters.
    pub params: (usize, usize),
    /// The last checkpoint written.
    pub checkpoint: PathBuf,
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
        let report =
            make_plan_with_progress(&config, bytes, approx, &data, device, |done, total| {
                on_event(FitEvent::Profiling { done, total })
            })?;
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

/// The columns of `metrics.csv`.
pub const METRICS_HEADER: &str = "step,train_loss,val_loss,seconds,tokens_per_second,lr";

/// Appends `row` to `out/metrics.csv`, writing the header first into a new file. A file of an
/// older run with fewer columns gets the current header, its rows padded with empty fields
/// (through a temporary file and a rename).
fn append_metrics(out: &Path, row: &str) -> Result<()> {
    let path = out.join("metrics.csv");
    if let Ok(old) = std::fs::read_to_string(&path) {
        let header = old.lines().next().unwrap_or("");
        if !old.is_empty() && header != METRICS_HEADER {
            let pad = METRICS_HEADER.split(',').count();
            let mut text = format!("{METRICS_HEADER}\n");
            for line in old.lines().skip(1) {
                let fields = line.split(',').count();
                text.push_str(line);
                text.push_str(&",".repeat(pad.saturating_sub(fields)));
                text.push('\n');
            }
            let tmp = out.join(format!(".metrics.csv.tmp-{}", std::process::id()));
            std::fs::write(&tmp, text).map_err(|e| Error::io(&tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        }
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    let empty = file.metadata().map(|m| m.len() == 0).unwrap_or(false);
    let mut text = String::new();
    if empty {
        text.push_str(METRICS_HEADER);
        text.push('\n');
    }
    text.push_str(row);
    text.push('\n');
    file.write_all(text.as_bytes())
        .map_err(|e| Error::io(&path, e))
}

/// Trains as `options` say on `device` (an autodiff device), calling `on_event` as it goes.
///
/// A fresh or fine-tuning run evaluates at step 0; every run evaluates and appends a row to
/// `out/metrics.csv` ([`METRICS_HEADER`]: the step, the last training loss, the validation
/// loss, wall seconds since the run started, training tokens per second since the previous
/// row, the learning rate) every [`FitOptions::eval_every`] steps and at the end, and writes a
/// checkpoint ([`Trainer::save_checkpoint`]) every [`FitOptions::save_every`] steps and at the
/// end.
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
    let model_config = config.model_config();
    let params = model_config.param_count_for(&config.policy);
    let trainable = crate::model::trainable_shapes(&model_config, &config.policy)
        .iter()
        .map(|s| s.iter().product::<usize>())
        .sum();
    on_event(FitEvent::Started {
        config: &config,
        params,
        trainable,
        train_tokens: data.train_tokens().len(),
        valid_tokens: data.valid_tokens().len(),
        step: first,
    });
    let started = Instant::now();
    let tokens_per_step = (config.batch * config.seq) as f64;
    let mut val_loss = f32::NAN;
    let mut best = (first, f32::INFINITY);
    if first == 0 {
        val_loss = trainer.evaluate(&data, options.eval_batches);
        best = (0, val_loss);
        on_event(FitEvent::Evaluated {
            step: 0,
            train_loss: None,
            val_loss,
        });
        append_metrics(
            &options.out,
            &format!("0,,{val_loss},0,,{}", config.lr_at(0)),
        )?;
    }
    let save_every = options.save_every.unwrap_or(options.eval_every);
    let mut last = None;
    let mut checkpoint = None;
    let mut announced = false;
    let (mut step_seconds, mut peak_bytes) = (0.0, 0);
    let (mut row_seconds, mut row_steps) = (0.0, 0u64);
    while trainer.step_count() < options.steps {
        let lr = config.lr_at(trainer.step_count());
        let batch = trainer.next_batch(&data);
        let stats = trainer.try_step(&batch)?;
        step_seconds += stats.seconds;
        (row_seconds, row_steps) = (row_seconds + stats.seconds, row_steps + 1);
        peak_bytes = peak_bytes.max(stats.memory.peak_bytes);
        if let (Some(plan), false) = (trainer.remat_plan(), announced) {
            announced = true;
            on_event(FitEvent::Schedule(plan));
        }
        let step = trainer.step_count();
        on_event(FitEvent::Step {
            step,
            stats: &stats,
            lr,
        });
        let every = |n: u64| n > 0 && step.is_multiple_of(n);
        if every(options.eval_every) || step == options.steps {
            val_loss = trainer.evaluate(&data, options.eval_batches);
            if val_loss < best.1 {
                best = (step, val_loss);
            }
            on_event(FitEvent::Evaluated {
                step,
                train_loss: Some(stats.loss),
                val_loss,
            });
            let tps = tokens_per_step * row_steps as f64 / row_seconds.max(1e-12);
            (row_seconds, row_steps) = (0.0, 0);
            append_metrics(
                &options.out,
                &format!(
                    "{step},{},{val_loss},{:.3},{tps:.1},{lr}",
                    stats.loss,
                    started.elapsed().as_secs_f64()
                ),
            )?;
        }
        if every(save_every) || step == options.steps {
            let dir = trainer.save_checkpoint(&options.out, &source, options.keep)?;
            on_event(FitEvent::Checkpoint(&dir));
            checkpoint = Some(dir);
        }
        last = Some(stats);
    }
    let steps = trainer.step_count() - first;
    Ok(FitSummary {
        first_step: first,
        last_step: trainer.step_count(),
        seconds: started.elapsed().as_secs_f64(),
        step_seconds,
        tokens_per_second: tokens_per_step * steps as f64 / step_seconds.max(1e-12),
        last: last.expect("at least one step ran"),
        peak_bytes,
        val_loss,
        best_val_loss: best,
        params: (trainable, params),
        checkpoint: checkpoint.expect("the last step writes a checkpoint"),
    })
}
