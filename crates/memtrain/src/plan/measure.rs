//! Plans against measurements: train a few steps of a plan (or of a fixed policy's remat
//! schedule) and of its reference, and report what the meter saw next to the prediction.

use burn::tensor::Device;

use super::PlanReport;
use crate::data::Dataset;
use crate::error::Result;
use crate::model::model_saved;
use crate::policy::RematPolicy;
use crate::remat::{self, Schedule, plan_with, profile};
use crate::stats::median;
use crate::train::{TrainConfig, Trainer};

/// What some measured training steps gave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    /// Median seconds a step.
    pub step_seconds: f64,
    /// The largest activation bytes of a step (the chain's peak under remat).
    pub activation_bytes: u64,
    /// The largest step peak.
    pub peak_bytes: u64,
    /// The largest remat executor peak, activations and parameter gradients
    /// ([`crate::memory::MemoryReport::chain_bytes`]; 0 without remat): what a plan predicts.
    pub chain_bytes: u64,
}

/// What [`run_steps`] measured: step times, the largest activation, step and chain peaks, and
/// the remat plan the trainer ran.
type Steps = (Vec<f64>, u64, u64, u64, Option<remat::Plan>);

/// The step times of `steps` steps after a first, untimed one, the largest activation, step
/// and chain peaks of those steps (the first, which allocates the optimizer state, is not
/// counted: under per-stage updates that happens inside its chain), and the remat plan the
/// trainer ran (`remat` when given, else the one it made on its first step, if its policy asks
/// for one).
fn run_steps(
    config: TrainConfig,
    remat: Option<remat::Plan>,
    data: &Dataset,
    steps: usize,
    device: &Device,
) -> Result<Steps> {
    let mut trainer = Trainer::new(config, device)?;
    if let Some(plan) = remat {
        trainer.use_remat_plan(plan)?;
    }
    let (mut times, mut act, mut peak, mut chain) = (Vec::new(), 0, 0, 0);
    for s in 0..steps + 1 {
        let batch = trainer.next_batch(data);
        let stats = trainer.try_step(&batch)?;
        if s == 0 {
            continue;
        }
        times.push(stats.seconds);
        act = act.max(stats.memory.activation_bytes);
        peak = peak.max(stats.memory.peak_bytes);
        chain = chain.max(stats.memory.chain_bytes);
    }
    Ok((times, act, peak, chain, trainer.remat_plan().cloned()))
}

/// `config`'s policy as it is (its block variants fixed) with only the remat schedule planned
/// for `budget` bytes: the block halves profiled on the first training batch (3 rounds) and
/// the Rotor schedule of least time within the budget.
///
/// ```no_run
/// use burn::tensor::Device;
/// use memtrain::data::{Dataset, Tokenizer, load_text};
/// use memtrain::model::Preset;
/// use memtrain::plan::plan_remat;
/// use memtrain::train::TrainConfig;
///
/// # fn main() -> memtrain::Result<()> {
/// let mut config = TrainConfig::new(Preset::Small);
/// config.policy = "attn=memeff,act=inverted".parse()?;
/// let (text, _) = load_text(None)?;
/// let data = Dataset::new(&text, Tokenizer::Byte, config.seq)?;
/// let plan = plan_remat(&config, 64 << 20, &data, &Device::flex().autodiff())?;
/// println!("{} peaks at {} bytes", plan.schedule, plan.prediction.peak);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// [`crate::Error::Config`] for a bad configuration or a budget below the smallest feasible
/// one (named in the message).
pub fn plan_remat(
    config: &TrainConfig,
    budget: u64,
    data: &Dataset,
    device: &Device,
) -> Result<remat::Plan> {
    let mut config = config.clone();
    config.policy.remat = RematPolicy::None;
    let update = config.policy.update;
    let trainer = Trainer::new(config, device)?;
    let batch = trainer.next_batch(data);
    // One untimed pass first, so one-off allocations do not count in the profile.
    drop(
        trainer
            .model()
            .loss(batch.inputs.clone(), batch.targets.clone())
            .backward(),
    );
    let chain = profile(trainer.model(), &batch, 3);
    plan_with(chain, RematPolicy::Budget(budget), update)
}

/// The activation bytes `config`'s policy keeps without remat (the formula): what a fixed
/// policy's budget fraction is of.
pub fn policy_activation_bytes(config: &TrainConfig) -> usize {
    let mut policy = config.policy.clone();
    policy.remat = RematPolicy::None;
    crate::memory::total_bytes(&model_saved(
        &config.model_config(),
        &policy,
        config.batch,
        config.seq,
    ))
}

/// A measurement times at least one step (its times are medians).
fn at_least_one(steps: usize) -> Result<()> {
    if steps == 0 {
        return Err(crate::Error::config("measured steps", steps, "at least 1"));
    }
    Ok(())
}

/// A fixed policy's remat schedule measured: `steps` steps under `remat=budget:B` (the
/// trainer plans on its first step) and `steps` without remat.
#[derive(Debug, Clone)]
pub struct RematMeasurement {
    /// The schedule the remat run made and ran.
    pub plan: remat::Plan,
    /// The remat run.
    pub remat: Measured,
    /// The run without remat.
    pub plain: Measured,
}

/// Trains `steps` steps (after a first, untimed one) of `config`'s policy under
/// `remat=budget:B`, then `steps` without remat, and reports both.
///
/// # Errors
///
/// As [`plan_remat`]; [`crate::Error::Config`] for `steps` 0.
pub fn measure_remat(
    config: &TrainConfig,
    budget: u64,
    data: &Dataset,
    steps: usize,
    device: &Device,
) -> Result<RematMeasurement> {
    at_least_one(steps)?;
    let mut plain = config.clone();
    plain.policy.remat = RematPolicy::None;
    let mut remat = plain.clone();
    remat.policy.remat = RematPolicy::Budget(budget);
    let (t, a, p, c, plan) = run_steps(remat, None, data, steps, device)?;
    let remat = Measured {
        step_seconds: median(&t),
        activation_bytes: a,
        peak_bytes: p,
        chain_bytes: c,
    };
    let (t, a, p, c, _) = run_steps(plain, None, data, steps, device)?;
    Ok(RematMeasurement {
        plan: plan.expect("a remat budget makes a plan"),
        remat,
        plain: Measured {
            step_seconds: median(&t),
            activation_bytes: a,
            peak_bytes: p,
            chain_bytes: c,
        },
    })
}

/// A plan, the best uniform policy and the plan's keep-everything reference, measured.
#[derive(Debug, Clone, Copy)]
pub struct PlanMeasurement {
    /// The plan.
    pub plan: Measured,
    /// The best uniform policy; `None` when it is the plan.
    pub uniform: Option<Measured>,
    /// The plan's policy and chain with the keep-everything schedule (no recomputation, run by
    /// the same executor): the reference the plan's time is a ratio of, measured in
    /// alternation with the plan so that a drift in the machine's speed cancels in the ratio.
    pub keep_all: Measured,
}

impl PlanMeasurement {
    /// The plan's measured step time as a ratio of its keep-everything reference's.
    pub fn ratio(&self) -> f64 {
        self.plan.step_seconds / self.keep_all.step_seconds
    }
}

/// The predicted step seconds of `report`'s plan keeping everything (its policy and chain,
/// no recomputation, plus the per-step constant the plan's own time adds): the reference of
/// [`PlanMeasurement::keep_all`].
pub fn predicted_keep_all(report: &PlanReport) -> f64 {
    let remat = report.plan.remat_plan();
    let constant = report.plan.time - remat.prediction.time;
    remat.keep_all.time + constant
}

/// Trains `steps` steps of the plan, of its keep-everything reference and of the best uniform
/// policy of `report`, each running the planner's own schedule
/// ([`super::MemoryPlan::remat_plan`]), in the order plan, keep-everything, uniform, uniform,
/// keep-everything, plan (the uniform runs left out when it is the plan), so that a drift in
/// the machine's speed weighs on all alike; times are medians over both runs of each, peaks
/// the largest.
///
/// Two errors follow: the plan's predicted step time against its measured one, and (the one
/// machine drift between planning and measuring does not reach) its predicted ratio to the
/// keep-everything step against the measured ratio ([`PlanMeasurement::ratio`]).
///
/// ```no_run
/// # use burn::tensor::Device;
/// # use memtrain::data::{Dataset, Tokenizer, load_text};
/// # use memtrain::model::Preset;
/// # use memtrain::train::TrainConfig;
/// use memtrain::plan::{make_plan, measure_plan, predicted_keep_all};
/// # fn main() -> memtrain::Result<()> {
/// # let config = TrainConfig::new(Preset::Small);
/// # let (text, _) = load_text(None)?;
/// # let data = Dataset::new(&text, Tokenizer::Byte, config.seq)?;
/// # let device = Device::flex().autodiff();
/// let report = make_plan(&config, 64 << 20, false, &data, &device)?;
/// let measured = measure_plan(&report, &config, &data, 5, &device)?;
/// println!("predicted {} bytes, measured {}", report.plan.peak, measured.plan.chain_bytes);
/// let predicted = report.plan.time / predicted_keep_all(&report);
/// println!("{:.3}x keep-everything, predicted {predicted:.3}x", measured.ratio());
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// As [`Trainer::new`] for the planned policies; [`crate::Error::Config`] for `steps` 0.
pub fn measure_plan(
    report: &PlanReport,
    config: &TrainConfig,
    data: &Dataset,
    steps: usize,
    device: &Device,
) -> Result<PlanMeasurement> {
    at_least_one(steps)?;
    #[derive(Clone, Copy)]
    enum Run {
        Plan,
        KeepAll,
        Uniform,
    }
    let same = report.plan.policy == report.uniform.policy;
    let order: &[Run] = if same {
        &[Run::Plan, Run::KeepAll, Run::KeepAll, Run::Plan]
    } else {
        &[
            Run::Plan,
            Run::KeepAll,
            Run::Uniform,
            Run::Uniform,
            Run::KeepAll,
            Run::Plan,
        ]
    };
    let mut keep_all = report.plan.remat_plan();
    keep_all.schedule = Schedule::keep_all(0, keep_all.chain.len() - 1);
    keep_all.prediction = keep_all.keep_all;
    let mut pooled = [(); 3].map(|_| (Vec::new(), 0, 0, 0));
    for &run in order {
        let (policy, remat) = match run {
            Run::Plan => (&report.plan.policy, report.plan.remat_plan()),
            Run::KeepAll => (&report.plan.policy, keep_all.clone()),
            Run::Uniform => (&report.uniform.policy, report.uniform.remat_plan()),
        };
        let mut c = config.clone();
        c.policy = policy.clone();
        let (times, a, p, ch, _) = run_steps(c, Some(remat), data, steps, device)?;
        let slot = &mut pooled[run as usize];
        slot.0.extend(times);
        slot.1 = slot.1.max(a);
        slot.2 = slot.2.max(p);
        slot.3 = slot.3.max(ch);
    }
    let measured = |(t, a, p, c): &(Vec<f64>, u64, u64, u64)| Measured {
        step_seconds: median(t),
        activation_bytes: *a,
        peak_bytes: *p,
        chain_bytes: *c,
    };
    Ok(PlanMeasurement {
        plan: measured(&pooled[0]),
        keep_all: measured(&pooled[1]),
        uniform: (!same).then(|| measured(&pooled[2])),
    })
}
