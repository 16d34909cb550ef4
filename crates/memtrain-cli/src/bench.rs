//! `memtrain bench`: [`memtrain::run::bench`] with a progress bar, a table, JSON and a plot.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use memtrain::policy::MemoryPolicy;
use memtrain::run::{Analytic, BenchConfig, BenchReport, BenchRow, bench};

use crate::Common;
use crate::output::{mib, write_atomic};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    common: Common,
    /// Policies to compare, SPECs separated by ';' (ratios are to the first).
    #[arg(long, default_value = "act=exact")]
    policies: String,
    /// Steps per policy (the first allocates optimizer state; when there are more, its time
    /// and peak are not counted).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Plan for this budget of the step's peak above weights and optimizer state (activations
    /// and parameter gradients; a size, or a fraction of plain burn's activation bytes) and
    /// bench plain burn, the best uniform policy that fits and the plan (not
    /// with --policies).
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
    /// Run every policy's gemm linear products in this precision: fp32, or bf16 (operands
    /// rounded to bfloat16, f32 accumulation; needs linear=gemm). Same as the policy key.
    #[arg(long)]
    precision: Option<String>,
    /// Print where each policy's timed steps spend their time: wall time per operation kind
    /// (matmuls by shape), the FLOPs and GFLOP/s of each, idle cores and page faults.
    #[arg(long)]
    profile: bool,
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

/// The name of each row in the table: the keys that differ from plain burn (as typed, in
/// canonical order), or with `--budget` which of the three it is.
fn labels(report: &BenchReport) -> Vec<String> {
    if report.plan.is_some() {
        ["plain burn", "best uniform", "plan"]
            .map(String::from)
            .to_vec()
    } else {
        report.policies.iter().map(MemoryPolicy::short).collect()
    }
}

fn print_table(rows: &[BenchRow], labels: &[String]) {
    let base = &rows[0];
    let name_w = labels.iter().map(String::len).max().unwrap_or(6).max(6);
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
    for (r, label) in rows.iter().zip(labels) {
        println!(
            "{:<name_w$}  {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>9.1} {:>10.3} {:>8.4}  {:>7.3} {:>7.3} {:>7.3}",
            label,
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
    println!(
        "(memory in MiB; x: ratio to the first row, measured in this run; --json has each full policy)"
    );
}

fn print_analytic(report: &BenchReport, labels: &[String]) {
    let w = labels.iter().map(String::len).max().unwrap_or(6);
    println!("activation_bytes measured vs analytic (memtrain::model::model_saved):");
    for ((row, analytic), label) in report.rows.iter().zip(&report.analytic).zip(labels) {
        let measured = mib(row.activation_bytes);
        match analytic {
            Analytic::Remat => println!(
                "  {:<w$}  {measured:>10.1} MiB: the chain's peak under remat (predicted by memtrain plan)",
                label
            ),
            Analytic::Adapters => println!(
                "  {:<w$}  {measured:>10.1} MiB: measured only (the formula does not model a frozen base: autodiff keeps less for ops whose weights do not train)",
                label
            ),
            Analytic::Formula(bytes) => println!(
                "  {:<w$}  {measured:>10.1} MiB vs {:>10.1} MiB  {:+.2}%",
                label,
                mib(*bytes),
                100.0 * (row.activation_bytes as f64 / *bytes as f64 - 1.0)
            ),
        }
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.steps == 0 {
        bail!("invalid --steps: got 0, expected a positive integer");
    }
    if args.budget.is_some() && args.precision.is_some() {
        bail!(
            "invalid --precision with --budget: the planner's policies run in fp32; bench --policies with precision instead"
        );
    }
    let shape = args.common.config(8)?;
    let policies = parse_policies(&args.policies)?
        .into_iter()
        .map(|p| crate::with_precision(p, args.precision.as_deref()))
        .collect::<Result<Vec<_>>>()?;
    let mut config = BenchConfig::new(shape.preset, policies);
    config.batch = shape.batch;
    config.seq = args.common.seq.unwrap_or(
        args.common
            .max_seq
            .unwrap_or(shape.preset.config(256).max_seq),
    );
    config.max_seq = shape.max_seq;
    config.steps = args.steps;
    config.seed = shape.seed;
    config.lr = shape.lr;
    config.data = args.common.data.clone();
    config.profile = args.profile;
    if args.budget.is_some() && crate::given("--policies") {
        bail!(
            "invalid --policies: got {:?} with --budget, expected one of the two (--budget benches plain burn, the best uniform policy and the plan)",
            args.policies
        );
    }
    config.budget = crate::fit_budget(args.budget.as_deref(), args.allow.as_deref())?;
    let count = if config.budget.is_some() {
        3
    } else {
        config.policies.len()
    };
    let names: Vec<String> = if config.budget.is_some() {
        ["plain burn", "best uniform", "plan"]
            .map(String::from)
            .to_vec()
    } else {
        config.policies.iter().map(MemoryPolicy::short).collect()
    };
    let mut progress = crate::output::Progress::new("bench: step", (config.steps * count) as u64);
    let device = args.common.autodiff_device()?;
    let mut done = 0;
    let report = bench(&config, &device, |p, _| {
        done += 1;
        let name = names.get(p).map_or("", String::as_str);
        progress.set(done, &format!("policy {}/{count}: {name}", p + 1));
    });
    drop(progress);
    let report = report?;
    if let Some(plan) = &report.plan {
        println!(
            "planned for {:.1} MiB:\n  best uniform: {} (predicted {:.3} s)\n  plan:         {} (predicted {:.3} s)",
            mib(plan.budget),
            plan.uniform.short(),
            plan.uniform_seconds,
            plan.plan.short(),
            plan.plan_seconds,
        );
        for (i, block) in plan.plan.overrides.iter() {
            println!(
                "    block {i}: act={},norm={},linear={},attn={}",
                block.act, block.norm, block.linear, block.attn
            );
        }
    }
    println!(
        "memtrain bench: preset {}, batch {}, seq {}, {} steps per policy",
        config.preset, config.batch, config.seq, config.steps
    );
    let labels = labels(&report);
    print_table(&report.rows, &labels);
    print_analytic(&report, &labels);
    let timed = if config.steps > 1 {
        config.steps - 1
    } else {
        1
    };
    for (profile, label) in report.profiles.iter().zip(&labels) {
        crate::output::print_profile(label, profile, timed);
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&report.rows)?;
        write_atomic(path, &json).context("--json")?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        crate::plot::memory_bars(&report, path).context("--plot")?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
