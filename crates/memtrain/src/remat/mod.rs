//! Rematerialization under a memory budget: which block inputs to keep and which blocks to
//! recompute in backward, chosen by the Rotor dynamic program ("Optimal checkpointing for
//! heterogeneous chains", Beaumont, Eyraud-Dubois, Herrmann, Joly, Shilova, 2019).
//!
//! The chain is the GPT's block halves ([`Gpt::stage_forward`]: each block's attention with its
//! residual, then its MLP with its residual) followed by the head (final LayerNorm, tied LM
//! head, loss); its input is the embedding output, always stored. Half-block stages let a
//! schedule hold one half's kept tensors at a time, about half a block's. Whatever each block keeps inside (its
//! activation, attention, linear and norm policies) is measured by [`profile`], so remat
//! composes with every other policy.
//!
//! # Execution
//!
//! [`step`] runs a [`Schedule`] on burn: a stage that is not kept runs forward on the
//! autodiff-free view of the model (`Module::valid`), so it builds no graph; a kept stage runs
//! on a detached, gradient-requiring copy of its input, so its graph covers that stage only;
//! its backward runs from the output gradient the stages after it computed ([`backward_from`]).
//! Each stage's parameter gradients are moved into one [`GradientsParams`] (summed for the
//! token embedding, which the head shares), so the optimizer receives exactly what plain
//! autodiff gives (`tests/remat.rs` compares every parameter). This is a driver of per-stage
//! graphs rather than one autodiff op wrapping a block: burn 0.22's backend-extension ops take
//! a fixed list of tensor arguments (a block has a dozen parameters, and their number depends
//! on the policy), and their backward receives inner-backend primitives, on which the block, a
//! module over burn's dispatch tensors, cannot be re-run with autodiff. Separate graphs give
//! the same gradients with nothing shared between them but the parameters.
//!
//! ```
//! use memtrain::remat::{Schedule, StageCost, optimal, simulate};
//!
//! let stage = StageCost { forward: 1.0, backward: 2.0, output: 10, kept: 40, keep_peak: 40, backward_peak: 30, forward_peak: 20 };
//! let chain = vec![stage; 6];
//! let keep = Schedule::keep_all(0, 5);
//! let (peak, time) = simulate(&chain, &keep, 10);
//! assert_eq!((peak, time), (10 + 10 + 6 * 40 + 30, 18.0)); // input, loss gradient, graphs, backward
//! let tight = optimal(&chain, 10, 150, 1).unwrap();
//! let (p, t) = simulate(&chain, &tight, 10);
//! assert!(p <= 150 && t > 18.0);
//! ```

mod schedule;
mod seed;

pub use schedule::{Prediction, Schedule, StageCost, all_schedules, optimal, simulate};
pub use seed::{SeedGradientBackend, backward_from};

use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Gradients, Int, Tensor};

use crate::data::Batch;
use crate::error::Result;
use crate::memory::{Region, gradient_bytes};
use crate::model::Gpt;
pub use crate::policy::RematPolicy;
use crate::stats::median;

/// Moves every gradient `grads` holds for `module`'s parameters into `total`, adding to what
/// is there already.
fn take_grads<M: Module>(module: &M, grads: &mut Gradients, total: &mut GradientsParams) {
    struct Take<'a> {
        grads: &'a mut Gradients,
        total: &'a mut GradientsParams,
    }
    impl ModuleVisitor for Take<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = param.val().grad_remove(self.grads) {
                let g = match self.total.remove::<D>(param.id) {
                    Some(prev) => prev + g,
                    None => g,
                };
                self.total.register(param.id, g);
            }
        }
    }
    module.visit(&mut Take { grads, total });
}

/// What one [`step`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RematStats {
    /// Mean loss of the batch.
    pub loss: f32,
    /// Peak live bytes above the start, gradients of parameters included.
    pub peak: usize,
    /// Peak live bytes above the start minus the parameter gradients held at that moment:
    /// what the chain itself needed (the quantity the budget bounds).
    pub activation_peak: usize,
}

struct Exec<'a> {
    model: &'a Gpt,
    valid: Gpt,
    targets: Tensor<2, Int>,
    total: GradientsParams,
    /// Where the tensors live (and the meter reads).
    device: burn::tensor::Device,
    /// Live bytes when the step started.
    base: usize,
    /// The interval since the last [`Exec::mark`], nested in whatever region the caller
    /// measures.
    interval: Option<Region>,
    peak: usize,
    activation_peak: usize,
    grad_bytes: usize,
    loss: f32,
}

impl Exec<'_> {
    /// Folds the peak since the last call into the statistics and opens the next interval
    /// (the parameter gradients held change between intervals).
    fn mark(&mut self) {
        if let Some(interval) = self.interval.take() {
            let p = (interval.base() + interval.peak()).saturating_sub(self.base);
            self.peak = self.peak.max(p);
            self.activation_peak = self.activation_peak.max(p.saturating_sub(self.grad_bytes));
        }
        self.interval = Some(Region::start_on(&self.device));
    }

    fn n_stages(&self) -> usize {
        self.model.n_stages()
    }

    /// Runs `schedule` from the stored input `x` of its first stage, given the gradient of its
    /// last stage's output (`None` for the head); returns the gradient of its input.
    fn run(&mut self, schedule: &Schedule, x: &Tensor<3>, dy: Option<Tensor<3>>) -> Tensor<3> {
        match schedule {
            Schedule::Keep { stage, rest } => {
                let xin = x.clone().autodiff().require_grad();
                let mut grads = if *stage == self.n_stages() {
                    let loss = self.model.head_loss(xin.clone(), self.targets.clone());
                    self.mark();
                    self.loss = loss.clone().into_scalar::<f32>();
                    loss.backward()
                } else {
                    let y = self.model.stage_forward(*stage, xin.clone());
                    self.mark();
                    let dy = match rest {
                        Some(r) => self.run(r, &y.clone().inner(), dy),
                        None => dy.expect("a block's output gradient"),
                    };
                    backward_from(y, dy)
                };
                let dx = xin
                    .grad_remove(&mut grads)
                    .expect("the input requires grad");
                take_grads(self.model, &mut grads, &mut self.total);
                drop(grads);
                self.mark();
                self.grad_bytes = gradient_bytes(self.model, &self.total);
                dx
            }
            Schedule::Checkpoint { split, right, left } => {
                let (s, _) = left.span();
                let mut h = x.clone();
                for i in s..*split {
                    h = self.valid.stage_forward(i, h);
                }
                self.mark();
                let dy = self.run(right, &h, dy);
                drop(h);
                self.run(left, x, Some(dy))
            }
        }
    }
}

/// One forward and backward of `model` on `batch` following `schedule` (over the block halves
/// and the head: stages `0..=2 n_layers`): the loss, the parameter gradients (exactly those of
/// `model.loss(..).backward()`, up to f32 summation order for the tied embedding), and the
/// measured peaks.
///
/// The peaks are read with the counting allocator in [`Region`]s nested inside whatever region
/// the caller measures, which they never reset.
pub fn step(model: &Gpt, batch: &Batch, schedule: &Schedule) -> (GradientsParams, RematStats) {
    let valid = model.valid();
    let inputs = batch.inputs.clone().inner();
    let device = batch.targets.device();
    let interval = Region::start_on(&device);
    let mut exec = Exec {
        model,
        valid,
        targets: batch.targets.clone(),
        total: GradientsParams::new(),
        device,
        base: interval.base(),
        interval: Some(interval),
        peak: 0,
        activation_peak: 0,
        grad_bytes: 0,
        loss: f32::NAN,
    };
    let x0 = exec.valid.embed(inputs);
    exec.mark();
    let dx0 = exec.run(schedule, &x0, None);
    drop(x0);
    // The embeddings: their own small graph, fed the chain's input gradient.
    let e = model.embed(batch.inputs.clone());
    let mut grads = backward_from(e, dx0);
    take_grads(model, &mut grads, &mut exec.total);
    drop(grads);
    exec.mark();
    exec.interval = None;
    let stats = RematStats {
        loss: exec.loss,
        peak: exec.peak,
        activation_peak: exec.activation_peak,
    };
    (exec.total, stats)
}

/// Measures, for each stage of `model` on `batch` (block halves, then the head), the forward and
/// backward times (medians of `reps`) and the sizes a [`Schedule`] needs, with the memory
/// meter. The counting allocator must be installed.
pub fn profile(model: &Gpt, batch: &Batch, reps: usize) -> Vec<StageCost> {
    let valid = model.valid();
    let device = batch.targets.device();
    let mut x = valid.embed(batch.inputs.clone().inner());
    let n = model.n_stages();
    let mut chain = Vec::with_capacity(n + 1);
    for stage in 0..=n {
        let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
        let mut sizes = (0, 0, 0, 0, 0);
        for _ in 0..reps.max(1) {
            // Forward without autodiff: peak above the input, output included.
            let region = Region::start_on(&device);
            let y_valid = (stage < n).then(|| valid.stage_forward(stage, x.clone()));
            let forward_peak = region.peak();
            drop(region);
            drop(y_valid);
            // Forward with autodiff: what the graph keeps, output included.
            let xin = x.clone().autodiff().require_grad();
            let region = Region::start_on(&device);
            let start = Instant::now();
            let (out, loss) = if stage < n {
                (Some(model.stage_forward(stage, xin.clone())), None)
            } else {
                let loss = model.head_loss(xin.clone(), batch.targets.clone());
                (None, Some(loss))
            };
            crate::device::sync(&device).expect("the device runs the profile");
            fwd.push(start.elapsed().as_secs_f64());
            let kept = region.live().max(0) as usize;
            let keep_peak = region.peak();
            drop(region);
            let output = out
                .as_ref()
                .map_or(4, |y| y.shape().num_elements() * y.dtype().size());
            // Backward, with the output gradient already allocated (not counted).
            let dy = out.as_ref().map(|y| y.ones_like().inner());
            let region = Region::start_on(&device);
            let start = Instant::now();
            let grads = match (out, loss) {
                (Some(y), _) => backward_from(y, dy.expect("a block output")),
                (None, Some(l)) => l.backward(),
                _ => unreachable!("a stage has an output or a loss"),
            };
            crate::device::sync(&device).expect("the device runs the profile");
            bwd.push(start.elapsed().as_secs_f64());
            let backward_peak = region.peak();
            drop(region);
            drop(grads);
            drop(xin);
            sizes = (output, kept, keep_peak, backward_peak, forward_peak);
        }
        let (output, kept, keep_peak, backward_peak, forward_peak) = sizes;
        chain.push(StageCost {
            forward: median(&fwd),
            backward: median(&bwd),
            output,
            kept,
            keep_peak,
            backward_peak,
            forward_peak,
        });
        if stage < n {
            x = valid.stage_forward(stage, x);
        }
    }
    chain
}

/// A schedule for the whole chain, its prediction, and the chain it was made for.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The measured stages.
    pub chain: Vec<StageCost>,
    /// Bytes of the chain's stored input (the embedding output).
    pub input: usize,
    /// The schedule.
    pub schedule: Schedule,
    /// Its simulated peak (input included) and time.
    pub prediction: Prediction,
    /// The same for keeping everything (no remat).
    pub keep_all: Prediction,
}

/// Profiles `model` on `batch` and builds the schedule `policy` asks for.
///
/// # Errors
///
/// [`crate::Error::Config`] for a budget below the smallest feasible one (named in the
/// message).
pub fn plan(model: &Gpt, batch: &Batch, policy: RematPolicy) -> Result<Plan> {
    let chain = profile(model, batch, 3);
    plan_for(chain, policy)
}

/// [`plan`] for an already measured chain.
///
/// # Errors
///
/// As [`plan`].
pub fn plan_for(chain: Vec<StageCost>, policy: RematPolicy) -> Result<Plan> {
    // The chain's stored input, the embedding output, is the size of a block's output.
    let input = chain[0].output;
    let last = chain.len() - 1;
    let schedule = match policy {
        RematPolicy::None => Schedule::keep_all(0, last),
        // Every K-th block input: every 2K-th stage's (the head always joins the last
        // segment).
        RematPolicy::Every(k) => Schedule::every(2 * k as usize, 0, last),
        RematPolicy::Budget(bytes) => {
            let quantum = (bytes as usize / 512).max(4096);
            optimal(&chain, input, bytes as usize, quantum)?
        }
    };
    let predict = |s: &Schedule| {
        let (peak, time) = simulate(&chain, s, input);
        Prediction { peak, time }
    };
    Ok(Plan {
        prediction: predict(&schedule),
        keep_all: predict(&Schedule::keep_all(0, last)),
        input,
        schedule,
        chain,
    })
}
