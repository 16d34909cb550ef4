//! Plans against measurements: train a few steps of a plan (or of a fixed policy's remat
//! schedule) and of its reference, and report what the meter saw next to the prediction.

use burn::tensor::Device;

use super::PlanReport;
use crate::data::Dataset;
use crate::error::Result;
use crate::model::model_saved;
use crate::policy::RematPolicy;
use crate::remat::{self, plan_with, profile};
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
/// As [`plan_remat`].
pub fn measure_remat(
    config: &TrainConfig,
    budget: u64,
    data: &Dataset,
    steps: usize,
    device: &Device,
) -> Result<RematMeasurement> {
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

/// A plan and the best uniform policy, measured.
#[derive(Debug, Clone, Copy)]
pub struct PlanMeasurement {
    /// The plan.
    pub plan: Measured,
    /// The best uniform policy; `None` when it is the plan.
    pub uniform: Option<Measured>,
}

/// Trains `steps` steps of the plan and of the best uniform policy of `report`, each running
/// the planner's own schedule ([`super::MemoryPlan::remat_plan`]), in the order plan,
/// uniform, uniform, plan so that a drift in the machine's speed weighs on both alike (once
/// when they are the same policy); times are medians over both runs of a policy, peaks the
/// largest.
///
/// ```no_run
/// # use burn::tensor::Device;
/// # use memtrain::data::{Dataset, Tokenizer, load_text};
/// # use memtrain::model::Preset;
/// # use memtrain::train::TrainConfig;
/// use memtrain::plan::{make_plan, measure_plan};
/// # fn main() -> memtrain::Result<()> {
/// # let config = TrainConfig::new(Preset::Small);
/// # let (text, _) = load_text(None)?;
/// # let data = Dataset::new(&text, Tokenizer::Byte, config.seq)?;
/// # let device = Device::flex().autodiff();
/// let report = make_plan(&config, 64 << 20, false, &data, &device)?;
/// let measured = measure_plan(&report, &config, &data, 5, &device)?;
/// println!("predicted {} bytes, measured {}", report.plan.peak, measured.plan.chain_bytes);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// As [`Trainer::new`] for the planned policies.
pub fn measure_plan(
    report: &PlanReport,
    config: &TrainConfig,
    data: &Dataset,
    steps: usize,
    device: &Device,
) -> Result<PlanMeasurement> {
    let same = report.plan.policy == report.uniform.policy;
    let order: &[bool] = if same {
        &[true]
    } else {
        &[true, false, false, true]
    };
    let mut pooled = [(Vec::new(), 0, 0, 0), (Vec::new(), 0, 0, 0)];
    for &is_plan in order {
        let plan = if is_plan {
            &report.plan
        } else {
            &report.uniform
        };
        let mut c = config.clone();
        c.policy = plan.policy.clone();
        let (times, a, p, ch, _) = run_steps(c, Some(plan.remat_plan()), data, steps, device)?;
        let slot = &mut pooled[usize::from(!is_plan)];
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
        uniform: (!same).then(|| measured(&pooled[1])),
    })
}
