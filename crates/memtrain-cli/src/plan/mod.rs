//! `memtrain plan`: the memory planner ([`memtrain::plan::make_plan`]) or, with `--policy`,
//! only the remat schedule of a fixed policy ([`memtrain::plan::plan_remat`]); predictions,
//! and optionally measurements and the capacity search.

mod measure;

use anyhow::{Context, Result, bail};
use clap::Args;
use memtrain::data::{Dataset, Tokenizer, load_text};
use memtrain::plan::{
    MemoryPlan, PROFILE_REPS, capacity_with, make_plan_with_progress, measure_plan, measure_remat,
    plain_activation_bytes, plan_remat, policy_activation_bytes,
};
use memtrain::policy::{Budget, MemoryPolicy, RematPolicy};
use memtrain::remat::{Plan, SlicedCost};

use crate::Common;
use crate::output::{mib, mib_usize};

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    common: Common,
    /// A fixed memory policy of the blocks (what each keeps inside), e.g. "attn=memeff": plan
    /// only the rematerialization. Without it the planner also chooses each block's variants.
    #[arg(long)]
    policy: Option<String>,
    /// Let the planner use approximate variants (few-bit GELU, sketched MLP linears): "approx".
    #[arg(long)]
    allow: Option<String>,
    /// Also search the largest batch that fits the budget, plain burn vs planned.
    #[arg(long)]
    capacity: bool,
    /// Budget of the step's peak above weights and optimizer state, activations and parameter
    /// gradients: a size (64MiB, 1.5GiB, 4096B) or a fraction of the activation bytes without
    /// remat (plain burn's; with --policy, that policy's) (1/4, 0.25).
    #[arg(long)]
    budget: String,
    /// Also train this many steps with the schedule and without remat (which holds the
    /// activations the plan avoids), and print the measured peaks and step times, and their
    /// ratio, next to the prediction.
    #[arg(long, default_value_t = 0)]
    measure: usize,
}

/// How to read a schedule (also in `memtrain plan --help` and the README).
pub const SCHEDULE_LEGEND: &str = "notation: stages are the block halves (attention, MLP) in order, then the head; K i: run stage i keeping what its backward needs; S i/n: run stage i forward and backward back to back in n slices of the batch, one slice's graph at a time, skipping its last product (its output is not needed; the sliced columns give 1 / 2 / 4 slices / one sequence a slice, as the batch allows); F a..b>C b (X) (Y): run stages a..b forward keeping nothing but b's output, then X (the stages after b, forward and backward), then Y (a..b again, recomputed from their input, and their backward)";

fn print_plan(plan: &Plan) {
    println!(
        "{:<8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>9} {:>23} {:>20}",
        "stage",
        "fwd ms",
        "bwd ms",
        "out MiB",
        "kept MiB",
        "keep pk",
        "bwd MiB",
        "fwd MiB",
        "grad MiB",
        "sliced ms",
        "sliced MiB"
    );
    let n = plan.chain.len();
    for (i, c) in plan.chain.iter().enumerate() {
        let name = if i + 1 == n {
            "head".to_string()
        } else {
            format!("b{}.{}", i / 2, if i % 2 == 0 { "attn" } else { "mlp" })
        };
        // Back to back in each slicing measured: the whole batch, halves, quarters, then one
        // sequence a slice (`memtrain::remat::slicings`).
        let join = |f: &dyn Fn(&SlicedCost) -> String| match c.sliced.is_empty() {
            true => "-".to_string(),
            false => c.sliced.iter().map(f).collect::<Vec<_>>().join("/"),
        };
        let sliced_ms = join(&|s| format!("{:.1}", 1e3 * s.time));
        let sliced_mib = join(&|s| format!("{:.1}", mib_usize(s.peak)));
        println!(
            "{name:<8} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {sliced_ms:>23} {sliced_mib:>20}",
            1e3 * c.forward,
            1e3 * c.backward,
            mib_usize(c.output),
            mib_usize(c.kept),
            mib_usize(c.keep_peak),
            mib_usize(c.backward_peak),
            mib_usize(c.forward_peak),
            mib_usize(c.grad),
        );
    }
    println!("schedule: {}", plan.schedule);
    println!("  {SCHEDULE_LEGEND}");
    println!(
        "predicted: peak {:.1} MiB, {:.3} s forward+backward ({:+.1}% time); keep-all {:.1} MiB, {:.3} s",
        mib_usize(plan.prediction.peak),
        plan.prediction.time,
        100.0 * (plan.prediction.time / plan.keep_all.time - 1.0),
        mib_usize(plan.keep_all.peak),
        plan.keep_all.time
    );
}

/// Only the remat schedule of the fixed `--policy`.
fn remat_only(args: &PlanArgs, spec: &str) -> Result<()> {
    if args.allow.is_some() || args.capacity {
        bail!(
            "invalid --allow/--capacity with --policy: they apply to the planner's search (omit --policy)"
        );
    }
    let mut config = args.common.config(8)?;
    let mut policy: MemoryPolicy = spec.parse().context("--policy")?;
    policy.remat = RematPolicy::None;
    config.policy = policy.clone();
    config.validate()?;
    let reference = policy_activation_bytes(&config);
    let budget = args.budget.parse::<Budget>()?.resolve(reference);
    let (text, _) = load_text(args.common.data.as_deref())?;
    let data = Dataset::new(&text, Tokenizer::Byte, config.seq)?;
    let device = args.common.autodiff_device()?;
    println!(
        "memtrain plan: preset {}, batch {}, seq {}, policy {policy}; budget {:.1} MiB ({:.1}% of {:.1} MiB kept without remat)",
        config.preset,
        config.batch,
        config.seq,
        mib(budget),
        100.0 * budget as f64 / reference as f64,
        mib_usize(reference)
    );
    if args.measure == 0 {
        print_plan(&plan_remat(&config, budget, &data, &device)?);
        return Ok(());
    }
    let m = measure_remat(&config, budget, &data, args.measure, &device)?;
    print_plan(&m.plan);
    println!(
        "measured over {} steps (medians; peaks the largest):",
        args.measure
    );
    println!(
        "  remat: peak {:.1} MiB (predicted {:.1}, budget {:.1}; activations alone {:.1}), step peak {:.1} MiB, {:.3} s a step",
        mib(m.remat.chain_bytes),
        mib_usize(m.plan.prediction.peak),
        mib(budget),
        mib(m.remat.activation_bytes),
        mib(m.remat.peak_bytes),
        m.remat.step_seconds
    );
    println!(
        "  plain: activations {:.1} MiB, step peak {:.1} MiB, {:.3} s a step",
        mib(m.plain.activation_bytes),
        mib(m.plain.peak_bytes),
        m.plain.step_seconds
    );
    println!(
        "  time: {:+.1}% measured, {:+.1}% predicted",
        100.0 * (m.remat.step_seconds / m.plain.step_seconds - 1.0),
        100.0 * (m.plan.prediction.time / m.plan.keep_all.time - 1.0)
    );
    Ok(())
}

pub fn run(args: PlanArgs) -> Result<()> {
    if let Some(spec) = args.policy.clone() {
        return remat_only(&args, &spec);
    }
    let approx = crate::allow_approx(args.allow.as_deref())?;
    let config = args.common.config(8)?;
    config.validate()?;
    let plain_bytes = plain_activation_bytes(&config);
    let budget = args.budget.parse::<Budget>()?.resolve(plain_bytes);
    let (text, _) = load_text(args.common.data.as_deref())?;
    let data = Dataset::new(&text, Tokenizer::Byte, config.seq)?;
    let device = args.common.autodiff_device()?;
    println!(
        "memtrain plan: preset {}, batch {}, seq {}; budget {:.1} MiB ({:.1}% of plain burn's {:.1} MiB){}",
        config.preset,
        config.batch,
        config.seq,
        mib(budget),
        100.0 * budget as f64 / plain_bytes as f64,
        mib_usize(plain_bytes),
        if approx {
            "; approximate variants allowed"
        } else {
            ""
        }
    );
    let mut progress = crate::output::Progress::new("plan: profiling pass", 0);
    let report = make_plan_with_progress(&config, budget, approx, &data, &device, |done, total| {
        progress.set_total(total as u64);
        progress.set(done as u64, "");
    });
    drop(progress);
    let report = report?;
    println!(
        "candidates (one block each, medians of {PROFILE_REPS} rounds; bwd MiB: the larger backward peak of its two halves):"
    );
    println!(
        "{:<4} {:>9} {:>9} {:>10} {:>10}  policy",
        "#", "fwd ms", "bwd ms", "kept MiB", "bwd MiB"
    );
    for (i, v) in report.variants.iter().enumerate() {
        let b = v.block_policy();
        println!(
            "{:<4} {:>9.1} {:>9.1} {:>10.1} {:>10.1}  act={},norm={},attn={},linear={}",
            i,
            1e3 * v.forward(),
            1e3 * v.backward(),
            mib_usize(v.kept()),
            mib_usize(v.backward_peak()),
            b.act,
            b.norm,
            b.attn,
            b.linear
        );
    }
    let show = |name: &str, p: &MemoryPlan| {
        println!(
            "{name}: blocks {:?}, schedule {}, predicted peak {:.1} MiB (activations and gradients), step {:.3} s",
            p.assignment,
            p.schedule,
            mib_usize(p.peak),
            p.time
        );
    };
    show("plan", &report.plan);
    show("best uniform", &report.uniform);
    println!("  {SCHEDULE_LEGEND}");
    println!("plan policy: {}", report.plan.policy);
    println!(
        "plain burn: {:.1} MiB of activations (formula); per-step constant {:.3} s added to chain times",
        mib_usize(report.plain_activation),
        report.constant
    );
    if args.measure > 0 {
        let m = measure_plan(&report, &config, &data, args.measure, &device)?;
        measure::print_plan_measurement(&report, &m, args.measure);
    }
    if args.capacity {
        let tell = |line: &str| eprintln!("capacity: {line}");
        let c = capacity_with(&config, budget, approx, &text, &device, &tell)?;
        println!(
            "capacity at seq {} within {:.1} MiB of activations: plain burn batch {}, planned batch {}",
            config.seq,
            mib(budget),
            none_if_zero(c.plain_batch, "batch 1"),
            none_if_zero(c.planned_batch, "batch 1")
        );
        println!(
            "capacity at batch {} within {:.1} MiB of activations: plain burn seq {}, planned seq {} (multiples of {})",
            config.batch,
            mib(budget),
            none_if_zero(c.plain_seq, &format!("seq {}", memtrain::plan::SEQ_STEP)),
            none_if_zero(c.planned_seq, &format!("seq {}", memtrain::plan::SEQ_STEP)),
            memtrain::plan::SEQ_STEP
        );
    }
    Ok(())
}

/// A capacity of 0 as what it means: not even the smallest size fits.
fn none_if_zero(n: usize, smallest: &str) -> String {
    match n {
        0 => format!("none (even {smallest} exceeds the budget)"),
        n => n.to_string(),
    }
}
