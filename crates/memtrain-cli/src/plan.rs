//! `memtrain plan`: the rematerialization schedule for a memory budget, its predicted peak and
//! overhead, and optionally the same measured next to plain training.

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::Args;
use memtrain::data::{Dataset, Tokenizer};
use memtrain::memory::total_bytes;
use memtrain::model::Preset;
use memtrain::model::model_saved;
use memtrain::policy::{MemoryPolicy, RematPolicy, parse_size};
use memtrain::remat::{Plan, plan_for, profile};
use memtrain::train::{TrainConfig, Trainer};

use crate::{Common, load_text, mib};

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
    /// Activation budget: a size (64MiB, 1.5GiB, 4096B) or a fraction of the policy's
    /// activation bytes without remat (1/4, 0.25).
    #[arg(long)]
    budget: String,
    /// Also train this many steps with the schedule and without remat, and print the
    /// measured peak and step time next to the prediction.
    #[arg(long, default_value_t = 0)]
    measure: usize,
}

/// `1/4` or `0.25` as a fraction in (0, 1], or `None` for a size.
fn fraction(text: &str) -> Option<f64> {
    let f = match text.split_once('/') {
        Some((a, b)) => a.trim().parse::<f64>().ok()? / b.trim().parse::<f64>().ok()?,
        None if !text.chars().any(|c| c.is_ascii_alphabetic()) && text.contains('.') => {
            text.trim().parse().ok()?
        }
        None => return None,
    };
    Some(f)
}

fn print_plan(plan: &Plan) {
    println!(
        "{:<6} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "stage", "fwd ms", "bwd ms", "out MiB", "kept MiB", "keep pk", "bwd MiB", "fwd MiB"
    );
    let n = plan.chain.len();
    for (i, c) in plan.chain.iter().enumerate() {
        println!(
            "{:<6} {:>9.1} {:>9.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            if i + 1 == n {
                "head".to_string()
            } else {
                format!("block{i}")
            },
            1e3 * c.forward,
            1e3 * c.backward,
            mib(c.output as u64),
            mib(c.kept as u64),
            mib(c.keep_peak as u64),
            mib(c.backward_peak as u64),
            mib(c.forward_peak as u64),
        );
    }
    println!("schedule: {}", plan.schedule);
    println!(
        "  (K i: keep stage i; F a..b>C b: run a..b forward keeping only b's output, recompute later)"
    );
    println!(
        "predicted: peak {:.1} MiB, {:.3} s forward+backward ({:+.1}% time); keep-all {:.1} MiB, {:.3} s",
        mib(plan.prediction.peak as u64),
        plan.prediction.time,
        100.0 * (plan.prediction.time / plan.keep_all.time - 1.0),
        mib(plan.keep_all.peak as u64),
        plan.keep_all.time
    );
}

pub fn run(args: PlanArgs) -> Result<()> {
    let Some(spec) = args.policy.clone() else {
        return search(args);
    };
    if args.allow.is_some() || args.capacity {
        bail!(
            "invalid --allow/--capacity with --policy: they apply to the planner's search (omit --policy)"
        );
    }
    let preset: Preset = args.common.preset.parse()?;
    let mut policy: MemoryPolicy = spec.parse().context("--policy")?;
    let mut config = TrainConfig::new(preset);
    config.batch = args.common.batch.unwrap_or(8);
    config.max_seq = args.common.max_seq;
    config.seq = args.common.seq.unwrap_or(config.model_config().max_seq);
    config.seed = args.common.seed;
    config.lr = args.common.lr;
    policy.remat = RematPolicy::None;
    config.policy = policy.clone();
    config.validate()?;
    let plain_bytes = total_bytes(&model_saved(
        &config.model_config(),
        &policy,
        config.batch,
        config.seq,
    ));
    let budget = match fraction(&args.budget) {
        Some(f) if f > 0.0 && f <= 1.0 => (f * plain_bytes as f64) as u64,
        Some(_) => bail!(
            "invalid --budget: got {:?}, expected a fraction in (0, 1] or a size like 64MiB",
            args.budget
        ),
        None => parse_size(&args.budget).context("--budget")?,
    };
    let (text, _) = load_text(args.common.data.as_ref())?;
    let data = Dataset::new(&text, Tokenizer::Byte, config.seq).context("--data")?;
    let device = Device::flex().autodiff();
    println!(
        "memtrain plan: preset {preset}, batch {}, seq {}, policy {policy}; budget {:.1} MiB ({:.1}% of {:.1} MiB kept without remat)",
        config.batch,
        config.seq,
        mib(budget),
        100.0 * budget as f64 / plain_bytes as f64,
        mib(plain_bytes as u64)
    );

    if args.measure == 0 {
        let trainer = Trainer::new(config.clone(), &device)?;
        let batch = trainer.next_batch(&data);
        // One untimed pass first, so one-off allocations do not count in the profile.
        drop(
            trainer
                .model()
                .loss(batch.inputs.clone(), batch.targets.clone())
                .backward(),
        );
        let chain = profile(trainer.model(), &batch, 3);
        let plan = plan_for(chain, RematPolicy::Budget(budget))?;
        print_plan(&plan);
        return Ok(());
    }

    // Measure: the schedule the remat run makes for itself, then plain training.
    let mut measured = Vec::new();
    let mut remat_config = config.clone();
    remat_config.policy.remat = RematPolicy::Budget(budget);
    let mut plan = None;
    for cfg in [remat_config, config] {
        let mut trainer = Trainer::new(cfg, &device)?;
        let (mut times, mut act, mut peak) = (Vec::new(), 0, 0);
        for _ in 0..args.measure + 1 {
            let batch = trainer.next_batch(&data);
            let stats = trainer.try_step(&batch)?;
            times.push(stats.seconds);
            act = act.max(stats.memory.activation_bytes);
            peak = peak.max(stats.memory.peak_bytes);
        }
        times.remove(0);
        times.sort_by(f64::total_cmp);
        if plan.is_none() {
            plan = trainer.remat_plan().cloned();
        }
        measured.push((times[times.len() / 2], act, peak));
    }
    let plan = plan.expect("the budget run made a plan");
    print_plan(&plan);
    let ((t_r, a_r, p_r), (t_p, a_p, p_p)) = (measured[0], measured[1]);
    println!(
        "measured over {} steps (medians; peaks the largest):",
        args.measure
    );
    println!(
        "  remat: chain peak {:.1} MiB (budget {:.1}), step peak {:.1} MiB, {:.3} s a step",
        mib(a_r),
        mib(budget),
        mib(p_r),
        t_r
    );
    println!(
        "  plain: activations {:.1} MiB, step peak {:.1} MiB, {:.3} s a step",
        mib(a_p),
        mib(p_p),
        t_p
    );
    println!(
        "  time: {:+.1}% measured, {:+.1}% predicted",
        100.0 * (t_r / t_p - 1.0),
        100.0 * (plan.prediction.time / plan.keep_all.time - 1.0)
    );
    Ok(())
}

fn shape_config(args: &PlanArgs) -> Result<TrainConfig> {
    let preset: Preset = args.common.preset.parse()?;
    let mut config = TrainConfig::new(preset);
    config.batch = args.common.batch.unwrap_or(8);
    config.max_seq = args.common.max_seq;
    config.seq = args.common.seq.unwrap_or(config.model_config().max_seq);
    config.seed = args.common.seed;
    config.lr = args.common.lr;
    config.validate()?;
    Ok(config)
}

/// `--allow`: whether the planner may use approximate variants.
pub fn allow_approx(allow: Option<&str>) -> Result<bool> {
    match allow {
        None => Ok(false),
        Some("approx") => Ok(true),
        Some(other) => bail!("invalid --allow: got {other:?}, expected \"approx\""),
    }
}

/// The planner's `--budget` in bytes, fractions taken of plain burn's activation bytes for
/// `config`'s shape, and those plain bytes.
pub fn planner_budget(text: &str, config: &TrainConfig) -> Result<(u64, usize)> {
    let plain = total_bytes(&model_saved(
        &config.model_config(),
        &MemoryPolicy::default(),
        config.batch,
        config.seq,
    ));
    Ok((budget_bytes(text, plain)?, plain))
}

fn budget_bytes(text: &str, plain_bytes: usize) -> Result<u64> {
    match fraction(text) {
        Some(f) if f > 0.0 && f <= 1.0 => Ok((f * plain_bytes as f64) as u64),
        Some(_) => bail!(
            "invalid --budget: got {text:?}, expected a fraction in (0, 1] or a size like 64MiB"
        ),
        None => Ok(parse_size(text).context("--budget")?),
    }
}

/// The step times of `steps` steps after a first (untimed) one, and the largest activation
/// and step peaks; with `remat`, the trainer runs that schedule.
fn measure_steps(
    config: TrainConfig,
    remat: Option<memtrain::remat::Plan>,
    data: &Dataset,
    steps: usize,
    device: &Device,
) -> Result<(Vec<f64>, u64, u64)> {
    let mut trainer = Trainer::new(config, device)?;
    if let Some(plan) = remat {
        trainer.use_remat_plan(plan)?;
    }
    let (mut times, mut act, mut peak) = (Vec::new(), 0, 0);
    for _ in 0..steps + 1 {
        let batch = trainer.next_batch(data);
        let stats = trainer.try_step(&batch)?;
        times.push(stats.seconds);
        act = act.max(stats.memory.activation_bytes);
        peak = peak.max(stats.memory.peak_bytes);
    }
    times.remove(0);
    Ok((times, act, peak))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The planner: choose each block's variants and the remat schedule.
fn search(args: PlanArgs) -> Result<()> {
    let approx = allow_approx(args.allow.as_deref())?;
    let config = shape_config(&args)?;
    let (budget, plain_bytes) = planner_budget(&args.budget, &config)?;
    let (text, _) = load_text(args.common.data.as_ref())?;
    let data = Dataset::new(&text, Tokenizer::Byte, config.seq).context("--data")?;
    let device = Device::flex().autodiff();
    println!(
        "memtrain plan: preset {}, batch {}, seq {}; budget {:.1} MiB ({:.1}% of plain burn's {:.1} MiB){}",
        config.preset,
        config.batch,
        config.seq,
        mib(budget),
        100.0 * budget as f64 / plain_bytes as f64,
        mib(plain_bytes as u64),
        if approx {
            "; approximate variants allowed"
        } else {
            ""
        }
    );
    let report = memtrain::plan::make_plan(&config, budget, approx, &data, &device)?;
    println!(
        "candidates (one block each, medians of {} rounds; bwd MiB: the larger backward peak of its two halves):",
        memtrain::plan::PROFILE_REPS
    );
    println!(
        "{:<4} {:>9} {:>9} {:>10} {:>10}  policy",
        "#", "fwd ms", "bwd ms", "kept MiB", "bwd MiB"
    );
    for (i, v) in report.variants.iter().enumerate() {
        println!(
            "{:<4} {:>9.1} {:>9.1} {:>10.1} {:>10.1}  {}",
            i,
            1e3 * v.forward(),
            1e3 * v.backward(),
            mib(v.kept() as u64),
            mib(v.backward_peak() as u64),
            short(&v.block_policy())
        );
    }
    let show = |name: &str, p: &memtrain::plan::MemoryPlan| {
        println!(
            "{name}: blocks {:?}, schedule {}, predicted chain peak {:.1} MiB, step {:.3} s",
            p.assignment,
            p.schedule,
            mib(p.peak as u64),
            p.time
        );
    };
    show("plan", &report.plan);
    show("best uniform", &report.uniform);
    println!("plan policy: {}", report.plan.policy);
    println!(
        "plain burn: {:.1} MiB of activations (formula); per-step constant {:.3} s added to chain times",
        mib(report.plain_activation as u64),
        report.constant
    );
    if args.measure > 0 {
        let run = |plan: &memtrain::plan::MemoryPlan| -> Result<(Vec<f64>, u64, u64)> {
            let mut c = config.clone();
            c.policy = plan.policy.clone();
            measure_steps(c, Some(plan.remat_plan()), &data, args.measure, &device)
        };
        let same = report.plan.policy == report.uniform.policy;
        // Plan, uniform, uniform, plan: a drift in the machine's speed weighs on both alike.
        let order: &[bool] = if same {
            &[true]
        } else {
            &[true, false, false, true]
        };
        let mut pooled = [(Vec::new(), 0, 0), (Vec::new(), 0, 0)];
        for &is_plan in order {
            let plan = if is_plan {
                &report.plan
            } else {
                &report.uniform
            };
            let (times, a, p) = run(plan)?;
            let slot = &mut pooled[usize::from(!is_plan)];
            slot.0.extend(times);
            slot.1 = slot.1.max(a);
            slot.2 = slot.2.max(p);
        }
        let [mut plan_m, mut uniform_m] = pooled;
        println!(
            "measured over {} steps{} (medians; peaks the largest):",
            args.measure,
            if same {
                "; the plan is the best uniform policy"
            } else {
                " in each of two runs per policy, in the order plan, uniform, uniform, plan"
            }
        );
        let tp = median(&mut plan_m.0);
        let mut rows = vec![("plan", &report.plan, (tp, plan_m.1, plan_m.2))];
        if !same {
            let tu = median(&mut uniform_m.0);
            rows.push((
                "best uniform",
                &report.uniform,
                (tu, uniform_m.1, uniform_m.2),
            ));
        }
        for (name, plan, (t, a, p)) in rows {
            println!(
                "  {name}: chain peak {:.1} MiB (predicted {:.1}, {:+.1}%), step peak {:.1} MiB, {:.3} s a step (predicted {:.3}, {:+.1}%)",
                mib(a),
                mib(plan.peak as u64),
                100.0 * (a as f64 / plan.peak as f64 - 1.0),
                mib(p),
                t,
                plan.time,
                100.0 * (t / plan.time - 1.0)
            );
        }
    }
    if args.capacity {
        capacity(&config, budget, approx, &data, &text, &device)?;
    }
    Ok(())
}

/// A compact name for a block policy.
fn short(b: &memtrain::policy::BlockPolicy) -> String {
    format!(
        "act={},norm={},attn={},linear={}",
        b.act, b.norm, b.attn, b.linear
    )
}

/// Whether any plan for `model` on `batch` fits `budget` (one profile of each candidate).
fn plan_fits(
    model: &memtrain::model::GptConfig,
    batch: &memtrain::data::Batch,
    approx: bool,
    budget: u64,
    device: &Device,
) -> bool {
    // Feasibility only: exact attention and burn's linear keep and peak at least as much as
    // the fused attention and the gemm linear in every stage, so they cannot make a budget
    // feasible that the others do not.
    let candidates: Vec<_> = memtrain::plan::candidates(approx)
        .into_iter()
        .filter(|c| {
            c.attn == memtrain::policy::AttnPolicy::Memeff
                && c.linear != memtrain::policy::LinearPolicy::Exact
        })
        .collect();
    memtrain::plan::profile_variants(model, batch, &candidates, 1, device)
        .is_ok_and(|v| memtrain::plan::solve(&v, model.n_layers, budget, 0.0).is_ok())
}

/// The largest batch whose plain activations fit `budget`, and the largest the planner fits
/// (found by doubling, then bisection; each planned candidate is profiled at its batch); then
/// the same for the sequence length at the configured batch.
fn capacity(
    config: &TrainConfig,
    budget: u64,
    approx: bool,
    data: &Dataset,
    text: &str,
    device: &Device,
) -> Result<()> {
    let model = config.model_config();
    let plain_fits = |b: usize| {
        total_bytes(&model_saved(
            &model,
            &MemoryPolicy::default(),
            b,
            config.seq,
        )) as u64
            <= budget
    };
    let planned_fits = |b: usize| -> bool {
        let mut c = config.clone();
        c.batch = b;
        let batch = memtrain::plan::batch_for(data, c.seed, b, c.seq, device);
        plan_fits(&model, &batch, approx, budget, device)
    };
    let largest = |fits: &dyn Fn(usize) -> bool| -> usize {
        if !fits(1) {
            return 0;
        }
        let mut hi = 1;
        while hi < 4096 && fits(hi * 2) {
            hi *= 2;
        }
        let (mut lo, mut hi) = (hi, hi * 2);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    };
    let plain = largest(&plain_fits);
    let planned = largest(&planned_fits);
    println!(
        "capacity at seq {} within {:.1} MiB of activations: plain burn batch {plain}, planned batch {planned}",
        config.seq,
        mib(budget)
    );
    // The longest sequence at this batch, in steps of 64 tokens (the position table grows with
    // it, as --max-seq would).
    const STEP: usize = 64;
    let at_seq = |t: usize| {
        let mut m = model;
        m.max_seq = m.max_seq.max(t);
        m
    };
    let plain_fits_seq = |k: usize| {
        let t = k * STEP;
        total_bytes(&model_saved(
            &at_seq(t),
            &MemoryPolicy::default(),
            config.batch,
            t,
        )) as u64
            <= budget
    };
    let planned_fits_seq = |k: usize| -> bool {
        let t = k * STEP;
        let Ok(data) = Dataset::new(text, Tokenizer::Byte, t) else {
            return false;
        };
        let batch = memtrain::plan::batch_for(&data, config.seed, config.batch, t, device);
        plan_fits(&at_seq(t), &batch, approx, budget, device)
    };
    let plain_seq = largest(&plain_fits_seq) * STEP;
    let planned_seq = largest(&planned_fits_seq) * STEP;
    println!(
        "capacity at batch {} within {:.1} MiB of activations: plain burn seq {plain_seq}, planned seq {planned_seq} (multiples of {STEP})",
        config.batch,
        mib(budget)
    );
    Ok(())
}
