//! `memtrain train`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use memtrain::data::{Dataset, Tokenizer};
use memtrain::memory::{MemoryReport, live_bytes};
use memtrain::model::Preset;
use memtrain::policy::MemoryPolicy;
use memtrain::train::{DataSource, TrainConfig, Trainer};

use crate::{Common, load_text, mib};

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    common: Common,
    /// Total training steps (a resumed run continues up to this count).
    #[arg(long, default_value_t = 5000)]
    steps: u64,
    /// Tokenizer: byte (vocabulary 256) or gpt2 (BPE, vocabulary 50257).
    #[arg(long, default_value = "byte")]
    tokenizer: String,
    /// Memory policy SPEC, e.g. "act=exact,attn=exact" (missing keys: plain variants).
    #[arg(long, default_value = "")]
    policy: String,
    /// Directory for checkpoints and metrics.csv.
    #[arg(long, default_value = "memtrain-out")]
    out: PathBuf,
    /// Continue from the newest checkpoint in --out (its preset, policy, batch, seq, lr,
    /// seed and data are used).
    #[arg(long)]
    resume: bool,
    /// Validation loss and a checkpoint every N steps (0: only at the end).
    #[arg(long, default_value_t = 500)]
    eval_every: u64,
    /// Steps of linear learning-rate warm-up.
    #[arg(long, default_value_t = 100)]
    warmup: u64,
    /// Validation batches per evaluation.
    #[arg(long, default_value_t = 8)]
    eval_batches: usize,
    /// Start a new run (step 0, fresh optimizer) from the weights of the newest checkpoint in
    /// this `--out` directory: fine-tuning. With `--policy adapt=...` those weights are the
    /// frozen base. The geometry (preset, max_seq, tokenizer) must match.
    #[arg(long, conflicts_with = "resume")]
    init_from: Option<PathBuf>,
    /// Plan the blocks' variants and remat for this activation budget (a size, or a fraction
    /// of plain burn's activation bytes); the --policy keys the planner does not choose
    /// (weights, optim, adapt) are kept.
    #[arg(long, conflicts_with = "resume")]
    budget: Option<String>,
    /// With --budget: let the planner use approximate variants ("approx").
    #[arg(long, requires = "budget")]
    allow: Option<String>,
}

fn print_report(r: &MemoryReport) {
    println!("memory report (last step, MiB):");
    for (name, v) in [
        ("param_bytes", r.param_bytes),
        ("grad_bytes", r.grad_bytes),
        ("optimizer_bytes", r.optimizer_bytes),
        ("activation_bytes", r.activation_bytes),
        ("peak_bytes", r.peak_bytes),
    ] {
        println!("  {name:<17} {:>10.2}", mib(v));
    }
}

pub fn run(args: TrainArgs) -> Result<()> {
    if args.steps == 0 {
        bail!("invalid --steps: got 0, expected a positive integer");
    }
    let device = Device::flex().autodiff();
    let (mut trainer, text, source) = if args.resume {
        let (trainer, state) = Trainer::resume(&args.out, &device).context("--resume")?;
        let (text, source) = match &state.data {
            DataSource::Builtin => load_text(None)?,
            DataSource::File { path, .. } => {
                let path = args.common.data.clone().unwrap_or_else(|| path.clone());
                load_text(Some(&path))?
            }
        };
        if source != state.data {
            bail!(
                "--resume: the data ({source:?}) is not what the checkpoint trained on ({:?})",
                state.data
            );
        }
        (trainer, text, source)
    } else {
        let preset: Preset = args.common.preset.parse()?;
        let policy: MemoryPolicy = args.policy.parse().context("--policy")?;
        let tokenizer: Tokenizer = args.tokenizer.parse()?;
        let mut config = TrainConfig::new(preset);
        config.tokenizer = tokenizer;
        config.batch = args.common.batch.unwrap_or(16);
        config.max_seq = args.common.max_seq;
        config.seq = args.common.seq.unwrap_or(config.model_config().max_seq);
        config.lr = args.common.lr;
        config.warmup = args.warmup;
        config.seed = args.common.seed;
        config.policy = policy;
        config.validate()?;
        let (text, source) = load_text(args.common.data.as_ref())?;
        // The planner's schedule, when the policy it planned runs unchanged.
        let mut planned_schedule = None;
        if let Some(budget) = &args.budget {
            let approx = crate::plan::allow_approx(args.allow.as_deref())?;
            let (bytes, _) = crate::plan::planner_budget(budget, &config)?;
            let data = Dataset::new(&text, config.tokenizer, config.seq).context("--data")?;
            let report = memtrain::plan::make_plan(&config, bytes, approx, &data, &device)?;
            let mut planned = report.plan.policy.clone();
            planned.optim = config.policy.optim;
            planned.adapt = config.policy.adapt;
            planned.block.weights = config.policy.block.weights;
            for o in planned.overrides.values_mut() {
                o.weights = config.policy.block.weights;
            }
            println!(
                "planned for {:.1} MiB: {} (predicted chain peak {:.1} MiB, {:.3} s a step)",
                mib(bytes),
                planned,
                mib(report.plan.peak as u64),
                report.plan.time
            );
            if planned == report.plan.policy {
                planned_schedule = Some(report.plan.remat_plan());
            }
            config.policy = planned;
        }
        let mut trainer = match &args.init_from {
            None => Trainer::new(config, &device)?,
            Some(dir) => {
                let (base, state) = Trainer::resume(dir, &device).context("--init-from")?;
                let (want, got) = (config.model_config(), state.config.model_config());
                if want != got || config.tokenizer != state.config.tokenizer {
                    bail!(
                        "invalid --init-from: its model ({got:?}, {:?} tokenizer) is not this run's ({want:?}, {:?} tokenizer)",
                        state.config.tokenizer,
                        config.tokenizer
                    );
                }
                let mut model = base.model().clone();
                if model.has_adapters() {
                    bail!(
                        "invalid --init-from: the checkpoint has adapters; fine-tune from a plain model"
                    );
                }
                if let Some(adapter) = config.policy.adapt.config() {
                    // The same adapter initialisation for the same seed.
                    device.seed(config.seed);
                    model = model.with_adapters(&adapter)?;
                }
                Trainer::from_model(config, model, 0, &device).context("--init-from")?
            }
        };
        if let Some(schedule) = planned_schedule {
            trainer.use_remat_plan(schedule)?;
        }
        (trainer, text, source)
    };
    let config = trainer.config().clone();
    let data = Dataset::new(&text, config.tokenizer, config.seq).context("--data")?;
    drop(text);
    if trainer.step_count() >= args.steps {
        bail!(
            "invalid --steps: got {}, but the checkpoint is already at step {}",
            args.steps,
            trainer.step_count()
        );
    }
    println!(
        "memtrain train: preset {} ({} parameters), batch {}, seq {}, policy {}, {} train / {} validation tokens",
        config.preset,
        config.model_config().param_count_for(&config.policy),
        config.batch,
        config.seq,
        config.policy,
        data.train_tokens().len(),
        data.valid_tokens().len()
    );
    let metrics_path = args.out.join("metrics.csv");
    std::fs::create_dir_all(&args.out).with_context(|| format!("--out {}", args.out.display()))?;
    let mut metrics = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .with_context(|| format!("{}", metrics_path.display()))?;
    if metrics.metadata().map(|m| m.len() == 0).unwrap_or(false) {
        writeln!(metrics, "step,train_loss,val_loss")?;
    }
    let first = trainer.step_count();
    if first == 0 {
        let v = trainer.evaluate(&data, args.eval_batches);
        println!("step 0: val_loss {v:.4}");
        writeln!(metrics, "0,,{v}")?;
    }
    let bar = ProgressBar::new(args.steps);
    bar.set_position(first);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("static template"),
    );
    let tokens_per_step = (config.batch * config.seq) as f64;
    let mut last = None;
    let mut printed_plan = false;
    let started = Instant::now();
    while trainer.step_count() < args.steps {
        let batch = trainer.next_batch(&data);
        let stats = match trainer.try_step(&batch) {
            Ok(stats) => stats,
            Err(e) => {
                bar.finish_and_clear();
                return Err(e).context("--policy");
            }
        };
        if let (Some(plan), false) = (trainer.remat_plan(), printed_plan) {
            printed_plan = true;
            bar.suspend(|| {
                println!(
                    "remat schedule: {} (predicted peak {:.1} MiB, {:.3} s a step; keep-all {:.1} MiB, {:.3} s)",
                    plan.schedule,
                    mib(plan.prediction.peak as u64),
                    plan.prediction.time,
                    mib(plan.keep_all.peak as u64),
                    plan.keep_all.time
                )
            });
        }
        let step = trainer.step_count();
        bar.set_position(step);
        bar.set_message(format!(
            "loss {:.4}  {:.0} tok/s  live {:.1} MiB",
            stats.loss,
            tokens_per_step / stats.seconds,
            mib(live_bytes() as u64)
        ));
        let at_eval = args.eval_every > 0 && step % args.eval_every == 0;
        if at_eval || step == args.steps {
            let v = trainer.evaluate(&data, args.eval_batches);
            bar.suspend(|| println!("step {step}: train_loss {:.4} val_loss {v:.4}", stats.loss));
            writeln!(metrics, "{step},{},{v}", stats.loss)?;
            let dir = trainer.save_checkpoint(&args.out, &source)?;
            bar.suspend(|| println!("checkpoint {}", dir.display()));
        }
        last = Some(stats);
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let last = last.expect("at least one step ran");
    println!(
        "trained {} steps in {elapsed:.1} s; final train loss {:.4}",
        args.steps - first,
        last.loss
    );
    print_report(&last.memory);
    Ok(())
}
