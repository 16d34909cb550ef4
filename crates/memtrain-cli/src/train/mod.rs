//! `memtrain train`: [`memtrain::run::fit`] with a progress bar or log lines, and a summary.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use memtrain::run::{FitEvent, FitOptions, Start, fit};

mod log;
mod resume;

use log::Log;
use resume::warn_ignored;

use crate::Common;
use crate::output::{duration, mib, mib_usize, print_report, thousands};

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
    /// Validation loss and a metrics.csv row every N steps (0: only at the end).
    #[arg(long, default_value_t = 500)]
    eval_every: u64,
    /// A checkpoint every N steps (0: only at the end) [default: --eval-every].
    #[arg(long)]
    save_every: Option<u64>,
    /// A log line (step, loss, tokens/s, step time, learning rate, step peak, ETA) every N
    /// steps; 0: none. Default: on a terminal a progress bar, otherwise (a log file, CI,
    /// nohup) a line every 10 seconds.
    #[arg(long)]
    log_every: Option<u64>,
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
    /// Plan the blocks' variants, remat and per-stage updates for this budget of the step's
    /// peak above weights and optimizer state (a size, or a fraction of plain burn's
    /// activation bytes); the --policy keys the planner does not choose (weights, optim,
    /// adapt, and update=per-stage when given) are kept.
    #[arg(long, conflicts_with = "resume")]
    budget: Option<String>,
    /// With --budget: let the planner use approximate variants ("approx").
    #[arg(long, requires = "budget")]
    allow: Option<String>,
    /// Replace the run already in --out (its checkpoints, latest and metrics.csv) instead of
    /// refusing to start a fresh run there.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Run the gemm linear's products in this precision: fp32, or bf16 (operands rounded to
    /// bfloat16, f32 accumulation; needs linear=gemm). Same as the policy key `precision`.
    #[arg(long, conflicts_with = "resume")]
    precision: Option<String>,
    /// Checkpoints to keep in --out (the newest; the one `latest` names is never removed).
    #[arg(long, default_value_t = memtrain::train::DEFAULT_KEEP)]
    keep: usize,
}

fn options(args: &TrainArgs) -> Result<FitOptions> {
    if args.steps == 0 {
        bail!("invalid --steps: got 0, expected a positive integer");
    }
    if args.keep == 0 {
        bail!("invalid --keep: got 0, expected at least 1 checkpoint to keep");
    }
    let mut config = args.common.config(16)?;
    let start = match (&args.init_from, args.resume) {
        (_, true) => Start::Resume,
        (Some(dir), false) => Start::InitFrom(dir.clone()),
        (None, false) => Start::Fresh,
    };
    if start != Start::Resume && !args.overwrite && memtrain::train::holds_run(&args.out) {
        let latest = std::fs::read_to_string(args.out.join(memtrain::train::LATEST))
            .map(|l| format!(", latest {}", l.trim()))
            .unwrap_or_default();
        bail!(
            "invalid --out: got {:?}, expected a directory without a run (it holds one{latest}): pass --resume to continue it or --overwrite to replace it",
            args.out
        );
    }
    if start != Start::Resume {
        config.policy = crate::with_precision(
            args.policy.parse().context("--policy")?,
            args.precision.as_deref(),
        )?;
        config.tokenizer = args.tokenizer.parse()?;
        config.warmup = args.warmup;
        config.validate()?;
    }
    Ok(FitOptions {
        config,
        data: args.common.data.clone(),
        steps: args.steps,
        out: args.out.clone(),
        start,
        eval_every: args.eval_every,
        save_every: args.save_every,
        eval_batches: args.eval_batches,
        budget: crate::fit_budget(args.budget.as_deref(), args.allow.as_deref())?,
        overwrite: args.overwrite,
        keep: args.keep,
    })
}

pub fn run(args: TrainArgs) -> Result<()> {
    let options = options(&args)?;
    let mut log = Log::new(options.steps, args.log_every);
    let device = args.common.autodiff_device()?;
    let mut planning = None;
    let summary = fit(&options, &device, |event| {
        match event {
        FitEvent::Profiling { done, total } => planning
            .get_or_insert_with(|| crate::output::Progress::new("plan: profiling pass", total as u64))
            .set(done as u64, ""),
        FitEvent::Planned {
            budget,
            policy,
            peak,
            seconds,
        } => {
            planning = None;
            log.println(&format!(
                "planned for {:.1} MiB: {} (predicted chain peak {:.1} MiB, {seconds:.3} s a step)",
                mib(budget),
                policy.short(),
                mib_usize(peak)
            ))
        }
        FitEvent::Started {
            config,
            params,
            trainable,
            train_tokens,
            valid_tokens,
            step,
        } => {
            log.tokens_per_step = (config.batch * config.seq) as f64;
            log.first_step = step;
            if let Some(bar) = &log.bar {
                bar.set_position(step);
            }
            if options.start == Start::Resume {
                warn_ignored(&args, config);
                log.println(&format!(
                    "memtrain train: resuming from step {step} of {}",
                    options.out.display()
                ));
            }
            let params = if trainable < params {
                format!(
                    "{} parameters, {} trainable",
                    thousands(params),
                    thousands(trainable)
                )
            } else {
                format!("{} parameters", thousands(params))
            };
            log.println(&format!(
                "memtrain train: preset {} ({params}), batch {}, seq {}, policy {}, {} train / {} validation tokens",
                config.preset,
                config.batch,
                config.seq,
                config.policy.short(),
                thousands(train_tokens),
                thousands(valid_tokens)
            ));
        }
        FitEvent::Schedule(plan) => log.println(&format!(
            "remat schedule: {} (predicted peak {:.1} MiB, {:.3} s a step; keep-all {:.1} MiB, {:.3} s; notation in memtrain plan --help)",
            plan.schedule,
            mib_usize(plan.prediction.peak),
            plan.prediction.time,
            mib_usize(plan.keep_all.peak),
            plan.keep_all.time
        )),
        FitEvent::Step { step, stats, lr } => log.step(step, stats, lr),
        FitEvent::Evaluated {
            step,
            train_loss,
            val_loss,
        } => log.println(&match train_loss {
            None => format!("step {step}: val_loss {val_loss:.4}"),
            Some(t) => format!("step {step}: train_loss {t:.4} val_loss {val_loss:.4}"),
        }),
        FitEvent::Checkpoint(dir) => log.println(&format!("checkpoint {}", dir.display())),
    }
    });
    if let Some(bar) = &log.bar {
        bar.finish_and_clear();
    }
    let s = summary?;
    let (best_step, best) = s.best_val_loss;
    println!(
        "done: steps {}..{} in {} ({} in steps, {:.0} tokens/s)",
        s.first_step,
        s.last_step,
        duration(s.seconds),
        duration(s.step_seconds),
        s.tokens_per_second
    );
    println!(
        "  val_loss {:.4} (best {best:.4} at step {best_step})",
        s.val_loss
    );
    println!(
        "  step peak {:.1} MiB (the largest of the run), parameters {} trainable of {}",
        mib(s.peak_bytes),
        thousands(s.params.0),
        thousands(s.params.1)
    );
    println!("  checkpoint {}", s.checkpoint.display());
    print_report(&s.last.memory);
    Ok(())
}
