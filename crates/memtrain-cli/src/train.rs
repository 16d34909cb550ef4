//! `memtrain train`: [`memtrain::run::fit`] with a progress bar.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use memtrain::memory::live_bytes;
use memtrain::policy::MemoryPolicy;
use memtrain::run::{FitEvent, FitOptions, Start, fit};
use memtrain::train::TrainConfig;

use crate::Common;
use crate::output::{mib, mib_usize, print_report};

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
    /// Replace the run already in --out (its checkpoints, latest and metrics.csv) instead of
    /// refusing to start a fresh run there.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
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
        config.policy = args.policy.parse().context("--policy")?;
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
        eval_batches: args.eval_batches,
        budget: crate::fit_budget(args.budget.as_deref(), args.allow.as_deref())?,
        overwrite: args.overwrite,
        keep: args.keep,
    })
}

/// One warning line for each flag given with `--resume` whose value the checkpoint overrides.
fn warn_ignored(args: &TrainArgs, resumed: &TrainConfig) {
    let c = &args.common;
    let policy = args.policy.parse::<MemoryPolicy>().ok();
    let differs = [
        (
            "--preset",
            c.preset.clone(),
            resumed.preset.to_string(),
            c.preset != resumed.preset.to_string(),
        ),
        (
            "--batch",
            opt(c.batch),
            resumed.batch.to_string(),
            c.batch.is_some_and(|b| b != resumed.batch),
        ),
        (
            "--seq",
            opt(c.seq),
            resumed.seq.to_string(),
            c.seq.is_some_and(|s| s != resumed.seq),
        ),
        (
            "--max-seq",
            opt(c.max_seq),
            opt(resumed.max_seq),
            c.max_seq.is_some() && c.max_seq != resumed.max_seq,
        ),
        (
            "--lr",
            c.lr.to_string(),
            resumed.lr.to_string(),
            c.lr != resumed.lr,
        ),
        (
            "--seed",
            c.seed.to_string(),
            resumed.seed.to_string(),
            c.seed != resumed.seed,
        ),
        (
            "--warmup",
            args.warmup.to_string(),
            resumed.warmup.to_string(),
            args.warmup != resumed.warmup,
        ),
        (
            "--tokenizer",
            args.tokenizer.clone(),
            format!("{:?}", resumed.tokenizer).to_lowercase(),
            args.tokenizer.parse::<memtrain::data::Tokenizer>().ok() != Some(resumed.tokenizer),
        ),
        (
            "--policy",
            args.policy.clone(),
            resumed.policy.to_string(),
            policy.as_ref() != Some(&resumed.policy),
        ),
    ];
    for (flag, got, kept, differ) in differs {
        if differ && crate::given(flag) {
            eprintln!(
                "warning: {flag} {got} ignored: --resume continues with the checkpoint's {kept}"
            );
        }
    }
}

fn opt(v: Option<usize>) -> String {
    v.map_or_else(|| "default".to_string(), |v| v.to_string())
}

pub fn run(args: TrainArgs) -> Result<()> {
    let options = options(&args)?;
    let bar = ProgressBar::new(options.steps);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .expect("static template"),
    );
    let mut tokens_per_step = 0.0;
    let device = args.common.autodiff_device()?;
    let summary = fit(&options, &device, |event| {
        match event {
        FitEvent::Planned {
            budget,
            policy,
            peak,
            seconds,
        } => println!(
            "planned for {:.1} MiB: {policy} (predicted chain peak {:.1} MiB, {seconds:.3} s a step)",
            mib(budget),
            mib_usize(peak)
        ),
        FitEvent::Started {
            config,
            params,
            train_tokens,
            valid_tokens,
            step,
        } => {
            tokens_per_step = (config.batch * config.seq) as f64;
            bar.set_position(step);
            if options.start == Start::Resume {
                warn_ignored(&args, config);
                println!("memtrain train: resuming from step {step} of {}", options.out.display());
            }
            println!(
                "memtrain train: preset {} ({params} parameters), batch {}, seq {}, policy {}, {train_tokens} train / {valid_tokens} validation tokens",
                config.preset, config.batch, config.seq, config.policy
            );
        }
        FitEvent::Schedule(plan) => bar.suspend(|| {
            println!(
                "remat schedule: {} (predicted peak {:.1} MiB, {:.3} s a step; keep-all {:.1} MiB, {:.3} s)",
                plan.schedule,
                mib_usize(plan.prediction.peak),
                plan.prediction.time,
                mib_usize(plan.keep_all.peak),
                plan.keep_all.time
            )
        }),
        FitEvent::Step { step, stats } => {
            bar.set_position(step);
            bar.set_message(format!(
                "loss {:.4}  {:.0} tok/s  live {:.1} MiB",
                stats.loss,
                tokens_per_step / stats.seconds,
                mib_usize(live_bytes())
            ));
        }
        FitEvent::Evaluated {
            step,
            train_loss,
            val_loss,
        } => bar.suspend(|| match train_loss {
            None => println!("step {step}: val_loss {val_loss:.4}"),
            Some(t) => println!("step {step}: train_loss {t:.4} val_loss {val_loss:.4}"),
        }),
        FitEvent::Checkpoint(dir) => bar.suspend(|| println!("checkpoint {}", dir.display())),
    }
    });
    bar.finish_and_clear();
    let summary = summary?;
    println!(
        "trained {} steps in {:.1} s; final train loss {:.4}",
        summary.last_step - summary.first_step,
        summary.seconds,
        summary.last.loss
    );
    print_report(&summary.last.memory);
    Ok(())
}
