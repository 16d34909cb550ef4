//! `memtrain bench`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use memtrain::data::{Dataset, Tokenizer};
use memtrain::model::Preset;
use memtrain::policy::MemoryPolicy;
use memtrain::train::{BenchConfig, BenchRow, run_bench};

use crate::{Common, load_text, mib};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    common: Common,
    /// Policies to compare, SPECs separated by ';' (ratios are to the first).
    #[arg(long, default_value = "act=exact")]
    policies: String,
    /// Steps per policy (the first allocates optimizer state and is not timed when there are
    /// more).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Plan for this activation budget (a size, or a fraction of plain burn's activation
    /// bytes) and bench plain burn, the best uniform policy that fits and the plan, instead
    /// of --policies.
    #[arg(long)]
    budget: Option<String>,
    /// With --budget: let the planner use approximate variants ("approx").
    #[arg(long)]
    allow: Option<String>,
    /// Write the rows as a JSON array.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the memory breakdown per policy as a stacked bar chart (PNG).
    #[arg(long)]
    plot: Option<PathBuf>,
}

fn parse_policies(spec: &str) -> Result<Vec<MemoryPolicy>> {
    let policies = spec
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<MemoryPolicy>()
                .with_context(|| format!("--policies item {s:?}"))
        })
        .collect::<Result<Vec<_>>>()?;
    if policies.is_empty() {
        bail!("invalid --policies: got {spec:?}, expected one or more SPECs separated by ';'");
    }
    Ok(policies)
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn print_table(rows: &[BenchRow]) {
    let base = &rows[0];
    let name_w = rows
        .iter()
        .map(|r| r.policy.len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "{:<name_w$}  {:>9} {:>9} {:>9} {:>10} {:>9} {:>10} {:>8}  {:>7} {:>7} {:>7}",
        "policy",
        "param",
        "grad",
        "optim",
        "activation",
        "peak",
        "step s",
        "loss",
        "act x",
        "peak x",
        "time x"
    );
    for r in rows {
        println!(
            "{:<name_w$}  {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>9.1} {:>10.3} {:>8.4}  {:>7.3} {:>7.3} {:>7.3}",
            r.policy,
            mib(r.param_bytes),
            mib(r.grad_bytes),
            mib(r.optimizer_bytes),
            mib(r.activation_bytes),
            mib(r.peak_bytes),
            r.step_seconds_median,
            r.final_loss,
            r.activation_bytes as f64 / base.activation_bytes.max(1) as f64,
            r.peak_bytes as f64 / base.peak_bytes.max(1) as f64,
            r.step_seconds_median / base.step_seconds_median,
        );
    }
    println!("(memory in MiB; ratios to the first policy, measured in this run)");
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.steps == 0 {
        bail!("invalid --steps: got 0, expected a positive integer");
    }
    let preset: Preset = args.common.preset.parse()?;
    let policies = parse_policies(&args.policies)?;
    let config = BenchConfig {
        preset,
        batch: args.common.batch.unwrap_or(8),
        seq: args
            .common
            .seq
            .unwrap_or(args.common.max_seq.unwrap_or(preset.config(256).max_seq)),
        max_seq: args.common.max_seq,
        policies,
        steps: args.steps,
        seed: args.common.seed,
        lr: args.common.lr,
    };
    // Validate the shape before reading data, with the same messages as `train`.
    let mut check = memtrain::train::TrainConfig::new(preset);
    check.batch = config.batch;
    check.seq = config.seq;
    check.max_seq = config.max_seq;
    check.lr = config.lr;
    check.validate()?;
    let (text, _) = load_text(args.common.data.as_ref())?;
    let data = Dataset::new(&text, Tokenizer::Byte, config.seq).context("--data")?;
    drop(text);
    let mut config = config;
    if let Some(budget) = &args.budget {
        let approx = crate::plan::allow_approx(args.allow.as_deref())?;
        let (bytes, _) = crate::plan::planner_budget(budget, &check)?;
        let report =
            memtrain::plan::make_plan(&check, bytes, approx, &data, &Device::flex().autodiff())?;
        println!(
            "planned for {:.1} MiB: plan {} (predicted {:.3} s), best uniform {} (predicted {:.3} s)",
            mib(bytes),
            report.plan.policy,
            report.plan.time,
            report.uniform.policy,
            report.uniform.time
        );
        config.policies = vec![
            MemoryPolicy::default(),
            report.uniform.policy.clone(),
            report.plan.policy.clone(),
        ];
    }

    let total = (config.steps * config.policies.len()) as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg}").expect("static"),
    );
    let device = Device::flex().autodiff();
    let rows = run_bench(&config, &data, &device, |p, _| {
        bar.inc(1);
        bar.set_message(format!("policy {}/{}", p + 1, config.policies.len()));
    })?;
    bar.finish_and_clear();
    println!(
        "memtrain bench: preset {}, batch {}, seq {}, {} steps per policy",
        config.preset, config.batch, config.seq, config.steps
    );
    print_table(&rows);
    let model = check.model_config();
    println!("activation_bytes measured vs analytic (memtrain::model::model_saved):");
    for (row, policy) in rows.iter().zip(&config.policies) {
        if policy.remat != memtrain::policy::RematPolicy::None {
            println!(
                "  {:<w$}  {:>10.1} MiB: the chain's peak under remat (predicted by memtrain plan)",
                row.policy,
                mib(row.activation_bytes),
                w = rows.iter().map(|r| r.policy.len()).max().unwrap_or(6)
            );
            continue;
        }
        if policy.adapt != memtrain::policy::AdaptPolicy::None {
            println!(
                "  {:<w$}  {:>10.1} MiB: measured only (the formula does not model a frozen base: autodiff keeps less for ops whose weights do not train)",
                row.policy,
                mib(row.activation_bytes),
                w = rows.iter().map(|r| r.policy.len()).max().unwrap_or(6)
            );
            continue;
        }
        let analytic = memtrain::memory::total_bytes(&memtrain::model::model_saved(
            &model,
            policy,
            config.batch,
            config.seq,
        )) as u64;
        println!(
            "  {:<w$}  {:>10.1} MiB vs {:>10.1} MiB  {:+.2}%",
            row.policy,
            mib(row.activation_bytes),
            mib(analytic),
            100.0 * (row.activation_bytes as f64 / analytic as f64 - 1.0),
            w = rows.iter().map(|r| r.policy.len()).max().unwrap_or(6)
        );
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&rows)?;
        write_atomic(path, &json).context("--json")?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        crate::plot::memory_bars(&rows, path).context("--plot")?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
