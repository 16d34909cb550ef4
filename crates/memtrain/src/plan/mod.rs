//! The memory planner: for a model, a batch shape and an activation budget, choose per block
//! the activation, norm and attention variants (and, with approximations allowed, few-bit
//! GELU and sketched MLP linears) and the rematerialization schedule with the least
//! predicted step time whose predicted peak fits the budget.
//!
//! 1. [`profile_variants`] measures one block and the head under each candidate
//!    [`BlockPolicy`] ([`crate::remat::profile`]: times, kept bytes, backward peak).
//! 2. [`solve`] builds the chain for an assignment of variants to blocks and runs the Rotor
//!    dynamic program ([`crate::remat::optimal`]) for the budget; it tries every uniform
//!    assignment, then improves the best one block at a time while the predicted time drops,
//!    so the plan is never slower (as predicted) than the best uniform policy that fits.
//! 3. The result is a [`MemoryPolicy`] (per-block overrides and `remat=budget:B`) that
//!    `Trainer` runs as is.
//!
//! Predicted step time is the schedule's forward and backward time from the profile plus a
//! per-step constant (embedding, optimizer update, the executor's per-stage bookkeeping)
//! measured once, at batch 1, in [`calibrate`].
//!
//! Around the planner: [`plan_remat`] plans only the remat schedule of a fixed policy,
//! [`measure_plan`] and [`measure_remat`] train a plan next to its reference and report the
//! meter against the prediction, and [`capacity`] searches the largest batch and sequence that
//! fit a budget. Budgets are written as [`crate::policy::Budget`]s (a size or a fraction of
//! [`plain_activation_bytes`]).
//!
//! Approximate variants change the gradients; their fidelity price, from the recorded
//! tinyshakespeare runs (docs/BENCHMARKS.md, `small`, 300 steps): `act=fewbit:2` 2.3867
//! against plain 2.4019 validation loss (-0.6%, no loss), `linear=sketch:0.25:mlp` 2.4718
//! (+2.9%).

mod capacity;
mod measure;

pub use capacity::{Capacity, SEQ_STEP, capacity, capacity_with, extrapolate};
pub use measure::{
    Measured, PlanMeasurement, RematMeasurement, measure_plan, measure_remat, plan_remat,
    policy_activation_bytes, predicted_keep_all,
};

use burn::tensor::Device;
use serde::Serialize;

use crate::data::{Batch, Dataset};
use crate::error::{Error, Result};
use crate::model::{GptConfig, model_saved};
use crate::policy::{BlockPolicy, MemoryPolicy, RematPolicy, UpdatePolicy};
use crate::remat::{Schedule, StageCost, held_as, optimal, simulate};

/// The candidate block variants: [`BlockPolicy::candidates`] (every combination of the exact
/// savers, and with `approx` the approximate variants on top of the leanest). Off Flex the
/// planner drops those with `linear=gemm` (there it is burn's linear).
pub fn candidates(approx: bool) -> Vec<BlockPolicy> {
    BlockPolicy::candidates(approx)
}

/// One candidate's measured costs.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    /// The block policy.
    pub policy: String,
    /// One block's stages, in order ([`crate::model::Gpt::stage_forward`]: its attention half, then its MLP
    /// half).
    pub stages: Vec<StageCost>,
    /// The head (final norm, LM head, loss) under this variant's norm.
    pub head: StageCost,
    #[serde(skip)]
    block_policy: BlockPolicy,
}

impl Variant {
    /// A candidate with given costs (for planning from measurements taken elsewhere): a block
    /// made of `stages`, and the head.
    ///
    /// # Panics
    ///
    /// When `stages` is empty.
    pub fn new(policy: BlockPolicy, stages: Vec<StageCost>, head: StageCost) -> Self {
        assert!(!stages.is_empty(), "a block has at least one stage");
        Self {
            policy: MemoryPolicy {
                block: policy,
                ..MemoryPolicy::default()
            }
            .to_string(),
            stages,
            head,
            block_policy: policy,
        }
    }

    /// The block policy.
    pub fn block_policy(&self) -> BlockPolicy {
        self.block_policy
    }

    /// One block's forward seconds.
    pub fn forward(&self) -> f64 {
        self.stages.iter().map(|s| s.forward).sum()
    }

    /// One block's backward seconds.
    pub fn backward(&self) -> f64 {
        self.stages.iter().map(|s| s.backward).sum()
    }

    /// Bytes one block keeps for backward (all its stages).
    pub fn kept(&self) -> usize {
        self.stages.iter().map(|s| s.kept).sum()
    }

    /// The largest backward peak of the block's stages.
    pub fn backward_peak(&self) -> usize {
        self.stages
            .iter()
            .map(|s| s.backward_peak)
            .max()
            .unwrap_or(0)
    }

    /// The stage with the largest peak while it is kept (its forward with autodiff, or its
    /// kept tensors plus its backward's peak): what the leanest schedule must hold at once.
    fn widest_stage(&self) -> StageCost {
        self.stages
            .iter()
            .max_by_key(|s| held(s))
            .expect("a block has at least one stage")
            .clone()
    }
}

/// A kept stage's own peak: its forward with autodiff, or its kept tensors plus its backward's
/// peak, whichever is larger.
fn held(s: &StageCost) -> usize {
    s.keep_peak.max(s.kept + s.backward_peak)
}

/// Profiles each candidate on a one-block model of `config`'s width at `batch` (block costs
/// do not depend on the block's position): `reps` rounds, each profiling every candidate once
/// in turn, so that a slow spell of the machine lands on all candidates alike; times are the
/// medians over the rounds.
///
/// # Errors
///
/// [`Error::Config`] when a candidate cannot be built.
pub fn profile_variants(
    config: &GptConfig,
    batch: &Batch,
    candidates: &[BlockPolicy],
    reps: usize,
    device: &Device,
) -> Result<Vec<Variant>> {
    profile_variants_with(config, batch, candidates, reps, device, &mut || {})
}

/// [`profile_variants`], calling `tick` after each of its `candidates × (1 + reps)` passes.
fn profile_variants_with(
    config: &GptConfig,
    batch: &Batch,
    candidates: &[BlockPolicy],
    reps: usize,
    device: &Device,
    tick: &mut dyn FnMut(),
) -> Result<Vec<Variant>> {
    let mut one = *config;
    one.n_layers = 1;
    let mut models = Vec::with_capacity(candidates.len());
    for c in candidates {
        let policy = MemoryPolicy {
            block: *c,
            ..MemoryPolicy::default()
        };
        let model = one.init_seeded(&policy, device, 0)?;
        // One untimed pass first, so one-off allocations do not count.
        drop(
            model
                .loss(batch.inputs.clone(), batch.targets.clone())
                .backward(),
        );
        tick();
        models.push((policy.to_string(), model));
    }
    let mut rounds: Vec<Vec<Vec<StageCost>>> = vec![Vec::new(); candidates.len()];
    for _ in 0..reps.max(1) {
        for (i, (_, model)) in models.iter().enumerate() {
            rounds[i].push(crate::remat::profile(model, batch, 1));
            tick();
        }
    }
    let mut out = Vec::with_capacity(candidates.len());
    for ((name, _), (runs, c)) in models.into_iter().zip(rounds.into_iter().zip(candidates)) {
        let mut chain = crate::remat::median_profile(&runs);
        let head = chain.pop().expect("the head is the last stage");
        out.push(Variant {
            policy: name,
            stages: chain,
            head,
            block_policy: *c,
        });
    }
    Ok(out)
}

/// A plan: the policy to run, its schedule and predictions.
#[derive(Debug, Clone)]
pub struct MemoryPlan {
    /// The variant index of each block.
    pub assignment: Vec<usize>,
    /// The policy: per-block variants and `remat=budget:B`.
    pub policy: MemoryPolicy,
    /// The remat schedule over the block halves and the head.
    pub schedule: Schedule,
    /// Predicted chain peak (bytes above the step's start, the stored input included).
    pub peak: usize,
    /// Predicted step seconds (chain time plus the calibrated constant).
    pub time: f64,
    /// The profiled stages the schedule was made for (block halves, then the head).
    pub chain: Vec<StageCost>,
    /// Bytes of the chain's stored input.
    pub input: usize,
}

impl MemoryPlan {
    /// The schedule with its chain, for [`crate::train::Trainer::use_remat_plan`]: the trainer
    /// then runs exactly the schedule whose peak and time were predicted, instead of solving
    /// again on its own profile (whose times differ a little, so near-ties may go the other
    /// way).
    pub fn remat_plan(&self) -> crate::remat::Plan {
        let last = self.chain.len() - 1;
        let predict = |s: &Schedule| {
            let (peak, time) = simulate(&self.chain, s, self.input);
            crate::remat::Prediction { peak, time }
        };
        crate::remat::Plan {
            chain: self.chain.clone(),
            input: self.input,
            schedule: self.schedule.clone(),
            prediction: predict(&self.schedule),
            keep_all: predict(&Schedule::keep_all(0, last)),
        }
    }
}

/// The stored input of the chain (the embedding output, shaped like a block's output).
fn input_bytes(v: &Variant) -> usize {
    v.stages[v.stages.len() - 1].output
}

fn chain_of(variants: &[Variant], assignment: &[usize], head: usize) -> Vec<StageCost> {
    let mut chain: Vec<StageCost> = assignment
        .iter()
        .flat_map(|&i| variants[i].stages.iter().cloned())
        .collect();
    chain.push(variants[head].head.clone());
    chain
}

fn policy_of(
    variants: &[Variant],
    assignment: &[usize],
    head: usize,
    budget: u64,
    update: UpdatePolicy,
) -> MemoryPolicy {
    let mut policy = MemoryPolicy {
        block: variants[head].block_policy,
        remat: RematPolicy::Budget(budget),
        update,
        ..MemoryPolicy::default()
    };
    for (i, &v) in assignment.iter().enumerate() {
        if v != head {
            policy.overrides.insert(i, variants[v].block_policy);
        }
    }
    policy
}

/// The fastest schedule for one assignment, or `None` when it does not fit.
fn evaluate(
    variants: &[Variant],
    assignment: &[usize],
    head: usize,
    budget: u64,
    constant: f64,
    update: UpdatePolicy,
) -> Option<MemoryPlan> {
    let chain = held_as(chain_of(variants, assignment, head), update);
    let input = input_bytes(&variants[head]);
    let quantum = (budget as usize / 512).max(4096);
    let schedule = optimal(&chain, input, budget as usize, quantum).ok()?;
    let (peak, time) = simulate(&chain, &schedule, input);
    Some(MemoryPlan {
        assignment: assignment.to_vec(),
        policy: policy_of(variants, assignment, head, budget, update),
        schedule,
        peak,
        time: time + constant,
        chain,
        input,
    })
}

/// The plan with the least predicted step time whose step peak (activations and parameter
/// gradients) stays within `budget`, and the best uniform plan (one variant everywhere) it
/// improves on. Ordinary updates are planned first; per-stage updates
/// ([`UpdatePolicy::PerStage`], which hold one block half's gradients at a time) are chosen
/// when nothing fits without them or when they are predicted faster (they let the schedule
/// keep more).
///
/// # Errors
///
/// [`Error::Config`] when no assignment fits: the message names the smallest feasible budget
/// (with the leanest variant everywhere, the most recomputation and per-stage updates) and
/// what it holds.
pub fn solve(
    variants: &[Variant],
    n_blocks: usize,
    budget: u64,
    constant: f64,
) -> Result<(MemoryPlan, MemoryPlan)> {
    let step = solve_for(variants, n_blocks, budget, constant, UpdatePolicy::Step);
    let stage = solve_for(variants, n_blocks, budget, constant, UpdatePolicy::PerStage);
    match (step, stage) {
        (Ok(a), Ok(b)) if b.0.time < a.0.time * (1.0 - 1e-6) => Ok(b),
        (Ok(a), _) => Ok(a),
        (Err(_), b) => b,
    }
}

/// [`solve`] with the gradients held as `update` holds them.
fn solve_for(
    variants: &[Variant],
    n_blocks: usize,
    budget: u64,
    constant: f64,
    update: UpdatePolicy,
) -> Result<(MemoryPlan, MemoryPlan)> {
    let mut best_uniform: Option<MemoryPlan> = None;
    for v in 0..variants.len() {
        if let Some(p) = evaluate(variants, &vec![v; n_blocks], v, budget, constant, update)
            && best_uniform.as_ref().is_none_or(|b| p.time < b.time)
        {
            best_uniform = Some(p);
        }
    }
    let Some(uniform) = best_uniform else {
        // Name the smallest feasible budget: the leanest variant's own remat minimum.
        let lean = (0..variants.len())
            .min_by_key(|&v| held(&variants[v].widest_stage()))
            .expect("at least one candidate");
        let chain = held_as(chain_of(variants, &vec![lean; n_blocks], lean), update);
        let input = input_bytes(&variants[lean]);
        let e = optimal(
            &chain,
            input,
            budget as usize,
            (budget as usize / 512).max(4096),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        let b = variants[lean].widest_stage();
        return Err(Error::config(
            "budget",
            format!("{budget} bytes"),
            format!(
                "a budget any plan fits; with {} everywhere {e}; what it holds at its peak: the \
                 stored input and a checkpoint ({:.1} MiB each), the output gradient, and one \
                 half block's own peak, {:.1} MiB (its kept tensors {:.1} MiB and its backward's \
                 peak {:.1} MiB, or its forward with autodiff {:.1} MiB, whichever is larger)",
                variants[lean].policy,
                b.output as f64 / 1048576.0,
                held(&b) as f64 / 1048576.0,
                b.kept as f64 / 1048576.0,
                b.backward_peak as f64 / 1048576.0,
                b.keep_peak as f64 / 1048576.0
            ),
        ));
    };
    // Improve block by block while the prediction drops.
    let head = uniform.assignment[0];
    let mut best = uniform.clone();
    loop {
        let mut improved = false;
        for i in 0..n_blocks {
            for v in 0..variants.len() {
                if best.assignment[i] == v {
                    continue;
                }
                let mut a = best.assignment.clone();
                a[i] = v;
                if let Some(p) = evaluate(variants, &a, head, budget, constant, update)
                    && p.time < best.time * (1.0 - 1e-6)
                {
                    best = p;
                    improved = true;
                }
            }
        }
        if !improved {
            break;
        }
    }
    Ok((best, uniform))
}

/// The per-step constant a plan's time adds to its chain: a measured step of the plain variant
/// that keeps everything (run by the remat executor, as [`make_plan`] does at batch 1) minus
/// the profile's keep-everything forward and backward of the same variant and batch.
pub fn calibrate(measured_step: f64, plain: &Variant, n_blocks: usize) -> f64 {
    let chain = chain_of(std::slice::from_ref(plain), &vec![0; n_blocks], 0);
    let last = chain.len() - 1;
    let (_, time) = simulate(&chain, &Schedule::keep_all(0, last), input_bytes(plain));
    (measured_step - time).max(0.0)
}

/// Profiling rounds (and calibration steps) of [`make_plan`]: times are their medians.
pub const PROFILE_REPS: usize = 5;

/// Plain burn's activation bytes for `config`'s geometry and batch shape (the formula,
/// [`crate::model::model_saved`] of the default policy): what a budget's fraction is of.
pub fn plain_activation_bytes(config: &crate::train::TrainConfig) -> usize {
    crate::memory::total_bytes(&model_saved(
        &config.model_config(),
        &MemoryPolicy::default(),
        config.batch,
        config.seq,
    ))
}

/// The data batch the planner profiles on (the first training batch of `seed`).
pub fn batch_for(data: &Dataset, seed: u64, batch: usize, seq: usize, device: &Device) -> Batch {
    data.train_batch(seed, 0, batch, seq, device)
}

/// What [`make_plan`] found.
#[derive(Debug, Clone)]
pub struct PlanReport {
    /// The plan.
    pub plan: MemoryPlan,
    /// The best uniform plan (one variant everywhere, remat as needed).
    pub uniform: MemoryPlan,
    /// The profiled candidates.
    pub variants: Vec<Variant>,
    /// Plain burn's activation bytes for this shape (formula).
    pub plain_activation: usize,
    /// The per-step constant added to chain times.
    pub constant: f64,
}

/// Profiles the candidates for `config`'s geometry and batch shape, calibrates the per-step
/// constant on plain steps at batch 1, solves for `budget` bytes (activations and parameter
/// gradients), and re-times the plan and the best uniform policy inside the whole model at
/// the batch (their stages profiled on the planned model, the constant calibrated on steps of
/// a different schedule of it).
///
/// ```no_run
/// use burn::tensor::Device;
/// use memtrain::data::{Dataset, Tokenizer, load_text};
/// use memtrain::model::Preset;
/// use memtrain::plan::{make_plan, plain_activation_bytes};
/// use memtrain::train::TrainConfig;
///
/// # fn main() -> memtrain::Result<()> {
/// let config = TrainConfig::new(Preset::Small);
/// let (text, _) = load_text(None)?;
/// let data = Dataset::new(&text, Tokenizer::Byte, config.seq)?;
/// let budget = plain_activation_bytes(&config) as u64 / 4;
/// let report = make_plan(&config, budget, false, &data, &Device::flex().autodiff())?;
/// println!("{} ({:.3} s a step)", report.plan.policy, report.plan.time);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// [`Error::Config`] for a bad configuration or an infeasible budget (naming the smallest
/// feasible one).
pub fn make_plan(
    config: &crate::train::TrainConfig,
    budget: u64,
    approx: bool,
    data: &Dataset,
    device: &Device,
) -> Result<PlanReport> {
    make_plan_with_progress(config, budget, approx, data, device, |_, _| {})
}

/// [`make_plan`], calling `on_progress(done, total)` as it calibrates and profiles (the units
/// are training steps and profiling passes; the search after them takes no measurable time).
///
/// # Errors
///
/// As [`make_plan`].
pub fn make_plan_with_progress(
    config: &crate::train::TrainConfig,
    budget: u64,
    approx: bool,
    data: &Dataset,
    device: &Device,
    mut on_progress: impl FnMut(usize, usize),
) -> Result<PlanReport> {
    let mut cands = candidates(approx);
    if !crate::on_flex(device) {
        // The gemm linear is a Flex kernel; elsewhere it is burn's linear, a duplicate.
        cands.retain(|c| c.linear != crate::linear::LinearPolicy::Gemm);
    }
    let passes = 1 + PROFILE_REPS.max(1);
    let total = (PROFILE_REPS + 1) + passes + cands.len() * passes;
    let mut done = 0;
    let mut tick = || {
        done += 1;
        on_progress(done, total);
    };
    let mut plain = config.clone();
    plain.policy = MemoryPolicy::default();
    plain.validate()?;
    let model_config = plain.model_config();
    let plain_activation = plain_activation_bytes(&plain);
    // The per-step constant (embedding, optimizer update, the remat executor's per-stage
    // bookkeeping) from steps at batch 1, so that planning never allocates the plain
    // activations it is asked to avoid; run by the remat executor with room for everything
    // (it keeps every stage), the path every plan's step takes.
    let mut one = plain.clone();
    one.batch = 1;
    one.policy.remat = RematPolicy::Budget(1 << 40);
    let mut trainer = crate::train::Trainer::new(one.clone(), device)?;
    let mut steps = Vec::new();
    // The first step allocates the optimizer state: PROFILE_REPS timed steps after it.
    for _ in 0..=PROFILE_REPS {
        let b = trainer.next_batch(data);
        steps.push(trainer.try_step(&b)?.seconds);
        tick();
    }
    drop(trainer);
    steps.remove(0);
    let small = batch_for(data, one.seed, 1, one.seq, device);
    let reference = profile_variants_with(
        &model_config,
        &small,
        &[BlockPolicy::default()],
        PROFILE_REPS,
        device,
        &mut tick,
    )?;
    let constant = calibrate(
        crate::stats::median(&steps),
        &reference[0],
        model_config.n_layers,
    );
    let batch = batch_for(data, plain.seed, plain.batch, plain.seq, device);
    let variants = profile_variants_with(
        &model_config,
        &batch,
        &cands,
        PROFILE_REPS,
        device,
        &mut tick,
    )?;
    let (plan, uniform) = solve(&variants, model_config.n_layers, budget, constant)?;
    // Re-time both inside the whole model, at the batch.
    let plan = in_situ(plan, config, &batch, data, budget, device)?;
    let uniform = if uniform.policy == plan.policy {
        plan.clone()
    } else {
        in_situ(uniform, config, &batch, data, budget, device)?
    };
    Ok(PlanReport {
        plan,
        uniform,
        variants,
        plain_activation,
        constant,
    })
}

/// Profiling rounds of [`in_situ`], each followed by a timed calibration step.
const IN_SITU_REPS: usize = 5;

/// `plan` re-timed inside the whole model: its stages profiled on the planned model itself at
/// `batch`, its schedule solved again on that chain for the same budget and updates, and the
/// per-step constant (embedding, loss, optimizer update, the executor's bookkeeping)
/// calibrated on training steps of a different schedule of the same model, keeping every
/// block input (`remat=every:1`), so that the prediction of the plan's own schedule is not a
/// measurement of it. Profiling rounds and calibration steps alternate ([`IN_SITU_REPS`] of
/// each, medians): the constant is the difference of the two, and a slow spell of the machine
/// between them would land in it whole. When the planned model's chain does not fit the budget
/// (its stages measured a little larger than the one-block profile's), the plan stays as the
/// search found it.
fn in_situ(
    plan: MemoryPlan,
    config: &crate::train::TrainConfig,
    batch: &Batch,
    data: &Dataset,
    budget: u64,
    device: &Device,
) -> Result<MemoryPlan> {
    let mut c = config.clone();
    c.policy = plan.policy.clone();
    c.policy.remat = RematPolicy::Every(1);
    let update = plan.policy.update;
    let mut trainer = crate::train::Trainer::new(c, device)?;
    drop(
        trainer
            .model()
            .loss(batch.inputs.clone(), batch.targets.clone())
            .backward(),
    );
    let (mut rounds, mut steps) = (Vec::new(), Vec::new());
    for round in 0..IN_SITU_REPS {
        rounds.push(crate::remat::profile(trainer.model(), batch, 1));
        if round == 0 {
            // The executor runs the schedule it is given; this chain only sizes it. The first
            // step allocates the optimizer state and is not timed.
            let first = crate::remat::plan_with(rounds[0].clone(), RematPolicy::Every(1), update)?;
            trainer.use_remat_plan(first)?;
            let b = trainer.next_batch(data);
            trainer.try_step(&b)?;
        }
        let b = trainer.next_batch(data);
        steps.push(trainer.try_step(&b)?.seconds);
    }
    let raw = crate::remat::median_profile(&rounds);
    let chain = held_as(raw.clone(), update);
    let input = chain[0].output;
    let quantum = (budget as usize / 512).max(4096);
    let Ok(schedule) = optimal(&chain, input, budget as usize, quantum) else {
        return Ok(plan);
    };
    let every_time = crate::remat::plan_with(raw, RematPolicy::Every(1), update)?
        .prediction
        .time;
    let constant = (crate::stats::median(&steps) - every_time).max(0.0);
    let (peak, time) = simulate(&chain, &schedule, input);
    Ok(MemoryPlan {
        schedule,
        peak,
        time: time + constant,
        chain,
        input,
        ..plan
    })
}
