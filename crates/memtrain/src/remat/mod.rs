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
//! # Sliced stages
//!
//! Every operation of a block acts on each sequence alone (attention mixes positions within a
//! sequence, never across the batch), so a stage whose input is stored can run forward and
//! backward one batch slice at a time ([`Schedule::Sliced`]): a slice's graph is freed before
//! the next is built, and the stage holds one slice's internals instead of the batch's (the
//! Mini-Sequence Transformer's idea, over the batch). The dynamic program chooses it for the
//! last stage of a segment when that is what fits or is faster; [`profile`] measures each
//! block half whole (`S i/1`), in two and four slices, and one sequence a slice
//! ([`slicings`]).
//!
//! A stage run back to back like this never needs its output, only its gradients, so the
//! executor stops its forward before the half's last linear (`attn.proj`, `mlp.proj`) and
//! back-propagates that layer by hand ([`Gpt::stage_split`], [`linear_grads`]): one product
//! of the recomputation is never run. This is the operator-level part of the schedule; on
//! `small` it makes a recomputed MLP half 10% faster than kept (`S i/1` against `K i`), and
//! with burn's plain matmul also lowers its peak (62.3 against 81.3 MiB at batch 8).
//!
//! # Per-stage updates
//!
//! [`step_updating`] hands each block half's parameter gradients to the optimizer as soon as
//! its backward is done ([`UpdatePolicy::PerStage`], `update=per-stage`), so one stage's
//! gradients exist at a time instead of the model's; [`StageCost::grad`] lets the simulator
//! and the dynamic program count the gradients either way, so that a budget bounds the
//! step's peak above weights and optimizer state.
//!
//! ```
//! use memtrain::remat::{Schedule, SlicedCost, StageCost, optimal, simulate};
//!
//! let stage = StageCost { forward: 1.0, backward: 2.0, output: 10, kept: 40, keep_peak: 40, backward_peak: 30, forward_peak: 20, grad: 0, sliced: vec![] };
//! let chain = vec![stage.clone(); 6];
//! let keep = Schedule::keep_all(0, 5);
//! let (peak, time) = simulate(&chain, &keep, 10);
//! assert_eq!((peak, time), (10 + 10 + 6 * 40 + 30, 18.0)); // input, loss gradient, graphs, backward
//! let tight = optimal(&chain, 10, 150, 1).unwrap();
//! let (p, t) = simulate(&chain, &tight, 10);
//! assert!(p <= 150 && t > 18.0);
//! // Below what a kept stage needs (40 + 30), only slices fit: each holds a slice's share.
//! assert!(optimal(&chain, 10, 60, 1).is_err());
//! let sliced = SlicedCost { slices: 8, time: 3.5, peak: 20 };
//! let mut chain = vec![StageCost { sliced: vec![sliced], ..stage.clone() }; 5];
//! chain.push(StageCost { kept: 5, keep_peak: 5, backward_peak: 5, ..stage }); // a small head
//! let lean = optimal(&chain, 10, 60, 1).unwrap();
//! assert!(lean.sliced_stages() > 0 && simulate(&chain, &lean, 10).0 <= 60);
//! ```

mod schedule;
mod seed;

pub use schedule::{
    Prediction, Schedule, SlicedCost, StageCost, all_schedules, all_schedules_with, optimal,
    simulate,
};
pub use seed::{SeedGradientBackend, backward_from};

use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Gradients, Int, Tensor};

use crate::data::Batch;
use crate::error::Result;
use crate::linear::linear_grads;
use crate::memory::{Region, gradient_bytes};
use crate::model::{Gpt, StageSplit};
pub use crate::policy::{RematPolicy, UpdatePolicy};
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
                add_grad(self.total, param.id, g);
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
    /// what the chain itself needed.
    pub activation_peak: usize,
    /// The most parameter-gradient bytes held at once (all of them at the end of an ordinary
    /// step; one stage's under per-stage updates).
    pub grad_peak: usize,
}

/// Updates the parameters of a model given some of their gradients (an optimizer step on
/// that part of the model), returning the updated model.
pub type Update<'a> = &'a mut dyn FnMut(Gpt, GradientsParams) -> Gpt;

struct Exec<'a> {
    /// `None` only inside [`Exec::apply`], so that the optimizer holds the only reference.
    model: Option<Gpt>,
    /// The autodiff-free view of `model` (`None` likewise).
    valid: Option<Gpt>,
    targets: Tensor<2, Int>,
    /// The gradients held until the step ends (all of them without `update`).
    total: GradientsParams,
    /// Per-stage updates: each stage's gradients (but the head's, which hold the tied token
    /// embedding) go to the optimizer as soon as its backward is done. `None` also after a
    /// non-finite loss, so that nothing is updated.
    update: Option<Update<'a>>,
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
    grad_peak: usize,
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

    fn model(&self) -> &Gpt {
        self.model
            .as_ref()
            .expect("the model is only taken inside `apply`")
    }

    fn valid(&self) -> &Gpt {
        self.valid
            .as_ref()
            .expect("the view is only dropped inside `apply`")
    }

    fn n_stages(&self) -> usize {
        self.model().n_stages()
    }

    /// Notes the gradients held after the total grew.
    fn held(&mut self) {
        self.grad_bytes = gradient_bytes(self.model(), &self.total);
        self.grad_peak = self.grad_peak.max(self.grad_bytes);
    }

    /// Runs `backward` (which adds stage `stage`'s parameter gradients to the map it is
    /// given) and routes those gradients: to the optimizer at once under per-stage updates
    /// (a block half's, but not the head's), else into the step's total.
    fn route<T>(
        &mut self,
        stage: usize,
        backward: impl FnOnce(&Gpt, &mut GradientsParams) -> T,
    ) -> T {
        let model = self.model.as_ref().expect("the model is held");
        if self.update.is_some() && stage < model.n_stages() {
            let mut mine = GradientsParams::new();
            let out = backward(model, &mut mine);
            let held = gradient_bytes(model, &mine);
            self.grad_peak = self.grad_peak.max(self.grad_bytes + held);
            self.apply(mine);
            out
        } else {
            let out = backward(model, &mut self.total);
            self.held();
            out
        }
    }

    /// Runs the optimizer on `grads`; the model and its autodiff-free view then hold the
    /// updated parameters only.
    fn apply(&mut self, grads: GradientsParams) {
        // Drop the view first: the optimizer then holds the only reference to each parameter
        // (and may update it in place), and no old parameter outlives its update.
        self.valid = None;
        let model = self.model.take().expect("the model is only taken here");
        let update = self.update.as_mut().expect("per-stage updates");
        let model = update(model, grads);
        self.valid = Some(model.valid());
        self.model = Some(model);
        self.mark();
    }

    /// Runs `schedule` from the stored input `x` of its first stage, given the gradient of its
    /// last stage's output (`None` for the head); returns the gradient of its input.
    fn run(&mut self, schedule: &Schedule, x: &Tensor<3>, dy: Option<Tensor<3>>) -> Tensor<3> {
        match schedule {
            Schedule::Keep { stage, rest } => {
                let xin = x.clone().autodiff().require_grad();
                let mut grads = if *stage == self.n_stages() {
                    let loss = self.model().head_loss(xin.clone(), self.targets.clone());
                    self.mark();
                    self.loss = loss.clone().into_scalar::<f32>();
                    if !self.loss.is_finite() {
                        // The caller reports the divergence; nothing is updated.
                        self.update = None;
                    }
                    loss.backward()
                } else {
                    let y = self.model().stage_forward(*stage, xin.clone());
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
                // The closure takes `grads`, so they are freed before any update.
                self.route(*stage, move |model, to| {
                    let mut grads = grads;
                    take_grads(model, &mut grads, to);
                });
                self.mark();
                dx
            }
            Schedule::Checkpoint { split, right, left } => {
                let (s, _) = left.span();
                let mut h = x.clone();
                for i in s..*split {
                    h = self.valid().stage_forward(i, h);
                }
                self.mark();
                let dy = self.run(right, &h, dy);
                drop(h);
                self.run(left, x, Some(dy))
            }
            Schedule::Sliced { stage, slices } => {
                let dy = dy.expect("a sliced stage is a block half, with an output gradient");
                let dx = self.route(*stage, |model, to| {
                    sliced(model, *stage, x, dy, *slices, to)
                });
                self.mark();
                dx
            }
        }
    }
}

/// Forward and backward of `model`'s stage `stage` (a block half) back to back from its input
/// `x` and output gradient `dy`, one batch slice at a time (`slices` slices of
/// `ceil(batch / slices)` sequences): each slice's graph is built, back-propagated and freed
/// before the next. Adds the parameter gradients to `total`; returns the input gradient.
fn sliced(
    model: &Gpt,
    stage: usize,
    x: &Tensor<3>,
    dy: Tensor<3>,
    slices: usize,
    total: &mut GradientsParams,
) -> Tensor<3> {
    let batch = x.dims()[0];
    let rows = batch.div_ceil(slices.max(1)).max(1);
    if rows >= batch {
        return back_to_back(model, stage, x.clone(), dy, total);
    }
    let mut dxs = Vec::with_capacity(slices);
    for start in (0..batch).step_by(rows) {
        let len = rows.min(batch - start);
        let part = |t: &Tensor<3>| t.clone().narrow(0, start, len);
        dxs.push(back_to_back(model, stage, part(x), part(&dy), total));
    }
    drop(dy);
    Tensor::cat(dxs, 0)
}

/// Forward and backward of `model`'s stage `stage` (a block half) from its input `x` and
/// output gradient `dy`. The half's output is not needed, so where the model allows
/// ([`Gpt::stage_split`]) its last product is never computed: the forward stops at that
/// linear's input `h`, the linear is back-propagated by [`linear_grads`] (`dh = dy Wᵀ`,
/// `dW = hᵀ dy`, `db = Σ dy`), and the rest of the half from `dh`; the residual adds `dy` to
/// the input gradient. Adds the parameter gradients to `total`; returns the input gradient.
fn back_to_back(
    model: &Gpt,
    stage: usize,
    x: Tensor<3>,
    dy: Tensor<3>,
    total: &mut GradientsParams,
) -> Tensor<3> {
    let xin = x.autodiff().require_grad();
    // The graph to back-propagate, and the gradient the residual adds to the input's when
    // the last linear was back-propagated by hand.
    let (mut grads, residual) = match model.stage_split(stage, xin.clone()) {
        None => {
            let y = model.stage_forward(stage, xin.clone());
            (backward_from(y, dy), None)
        }
        Some(StageSplit { h, weight, bias }) => {
            // Frozen under adapters: then only `dh` is needed.
            let w = weight.val();
            let w_tracked = w.is_require_grad();
            let b_tracked = bias.is_some_and(|b| b.val().is_require_grad());
            let (dh, grads) = linear_grads(
                h.clone().inner(),
                w.inner(),
                dy.clone(),
                w_tracked || b_tracked,
            );
            if let Some((dw, db)) = grads {
                if w_tracked {
                    add_grad(total, weight.id, dw);
                }
                if let Some(b) = bias.filter(|_| b_tracked) {
                    add_grad(total, b.id, db);
                }
            }
            (backward_from(h, dh), Some(dy))
        }
    };
    let dx = xin
        .grad_remove(&mut grads)
        .expect("the input requires grad");
    take_grads(model, &mut grads, total);
    match residual {
        Some(dy) => dx + dy,
        None => dx,
    }
}

/// Adds `g` to the gradient `total` holds for parameter `id`.
fn add_grad<const D: usize>(total: &mut GradientsParams, id: ParamId, g: Tensor<D>) {
    let g = match total.remove::<D>(id) {
        Some(prev) => prev + g,
        None => g,
    };
    total.register(id, g);
}

/// One forward and backward of `model` on `batch` following `schedule` (over the block halves
/// and the head: stages `0..=2 n_layers`): the loss, the parameter gradients (exactly those of
/// `model.loss(..).backward()`, up to f32 summation order for the tied embedding and sliced
/// stages), and the measured peaks.
///
/// The peaks are read with the counting allocator in [`Region`]s nested inside whatever region
/// the caller measures, which they never reset.
pub fn step(model: &Gpt, batch: &Batch, schedule: &Schedule) -> (GradientsParams, RematStats) {
    let (exec, stats) = execute(model.clone(), batch, schedule, None);
    (exec.total, stats)
}

/// [`step`] with per-stage updates: as soon as a block half's backward is done, `update`
/// receives its parameters' gradients (and frees them); the head's and the embeddings'
/// (the tied token embedding's gradient is complete only after the embedding's backward)
/// are passed together at the end. Returns the updated model; with an optimizer whose update
/// of a parameter depends only on that parameter's gradient and state (AdamW, NAG-GS,
/// GaLore), it equals one ordinary step's (`tests/remat.rs`).
///
/// When the loss is not finite nothing is updated and the model comes back as it was.
pub fn step_updating(
    model: Gpt,
    batch: &Batch,
    schedule: &Schedule,
    update: Update<'_>,
) -> (Gpt, RematStats) {
    let (mut exec, stats) = execute(model, batch, schedule, Some(update));
    if exec.update.is_some() {
        let rest = std::mem::take(&mut exec.total);
        exec.apply(rest);
    }
    (exec.model.expect("the model is held"), stats)
}

fn execute<'a>(
    model: Gpt,
    batch: &Batch,
    schedule: &Schedule,
    update: Option<Update<'a>>,
) -> (Exec<'a>, RematStats) {
    let valid = model.valid();
    let inputs = batch.inputs.clone().inner();
    let device = batch.targets.device();
    let interval = Region::start_on(&device);
    let mut exec = Exec {
        model: Some(model),
        valid: Some(valid),
        targets: batch.targets.clone(),
        total: GradientsParams::new(),
        update,
        device,
        base: interval.base(),
        interval: Some(interval),
        peak: 0,
        activation_peak: 0,
        grad_bytes: 0,
        grad_peak: 0,
        loss: f32::NAN,
    };
    let x0 = exec.valid().embed(inputs);
    exec.mark();
    let dx0 = exec.run(schedule, &x0, None);
    drop(x0);
    // The embeddings: their own small graph, fed the chain's input gradient.
    // (Nothing to do when they are frozen, as under adapters.)
    let e = exec.model().embed(batch.inputs.clone());
    if e.is_tracked() {
        let mut grads = backward_from(e, dx0);
        let model = exec.model.as_ref().expect("the model is held");
        take_grads(model, &mut grads, &mut exec.total);
    }
    exec.held();
    exec.mark();
    let stats = RematStats {
        loss: exec.loss,
        peak: exec.peak,
        activation_peak: exec.activation_peak,
        grad_peak: exec.grad_peak,
    };
    (exec, stats)
}

/// The slicings [`profile`] measures a block half in for a batch of `batch` sequences: the
/// whole batch (`S i/1`), halves and quarters of it, and one sequence a slice, each once and
/// in that order. Halves and quarters often cost what the whole batch costs: on `small` at
/// batch 8 (products of 1,024 and 512 rows) they run within about 10% of its time at 55-75%
/// and 30-55% of its peak.
///
/// ```
/// use memtrain::remat::slicings;
///
/// assert_eq!(slicings(8), [1, 2, 4, 8]);
/// assert_eq!(slicings(3), [1, 2, 3]);
/// assert_eq!(slicings(1), [1]);
/// ```
pub fn slicings(batch: usize) -> Vec<usize> {
    let mut v = vec![1];
    v.extend([2, 4].into_iter().filter(|&k| k < batch));
    if batch > 1 {
        v.push(batch);
    }
    v
}

/// Measures, for each stage of `model` on `batch` (block halves, then the head), the forward and
/// backward times (medians of `reps`) and the sizes a [`Schedule`] needs, with the memory
/// meter. The counting allocator must be installed.
pub fn profile(model: &Gpt, batch: &Batch, reps: usize) -> Vec<StageCost> {
    let valid = model.valid();
    let device = batch.targets.device();
    let mut x = valid.embed(batch.inputs.clone().inner());
    let batch_size = x.dims()[0];
    let n = model.n_stages();
    let mut chain = Vec::with_capacity(n + 1);
    for stage in 0..=n {
        let slicings = if stage < n {
            slicings(batch_size)
        } else {
            Vec::new()
        };
        let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
        let mut sliced_time = vec![Vec::new(); slicings.len()];
        let mut sliced_peak = vec![0; slicings.len()];
        let mut sizes = (0, 0, 0, 0, 0, 0);
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
            let mut params = GradientsParams::new();
            let mut grads = grads;
            take_grads(model, &mut grads, &mut params);
            let grad = gradient_bytes(model, &params);
            drop((grads, params));
            drop(xin);
            // The same stage back to back, from its input and an output gradient already
            // allocated.
            for (k, &slices) in slicings.iter().enumerate() {
                let dy = x.ones_like();
                let region = Region::start_on(&device);
                let start = Instant::now();
                let mut params = GradientsParams::new();
                let dx = sliced(model, stage, &x, dy, slices, &mut params);
                crate::device::sync(&device).expect("the device runs the profile");
                sliced_time[k].push(start.elapsed().as_secs_f64());
                sliced_peak[k] = region.peak();
                drop((dx, params, region));
            }
            sizes = (output, kept, keep_peak, backward_peak, forward_peak, grad);
        }
        let (output, kept, keep_peak, backward_peak, forward_peak, grad) = sizes;
        chain.push(StageCost {
            forward: median(&fwd),
            backward: median(&bwd),
            output,
            kept,
            keep_peak,
            backward_peak,
            forward_peak,
            grad,
            sliced: slicings
                .iter()
                .zip(sliced_time.iter().zip(&sliced_peak))
                .map(|(&slices, (time, &peak))| SlicedCost {
                    slices,
                    time: median(time),
                    peak,
                })
                .collect(),
        });
        if stage < n {
            x = valid.stage_forward(stage, x);
        }
    }
    chain
}

/// Profiles of the same chain taken in several rounds ([`profile`] with one rep each,
/// interleaved with other work so that a slow spell of the machine weighs on both alike)
/// combined into one: every time (forward, backward, each slicing's) is the median over the
/// rounds, sizes are the last round's.
///
/// # Panics
///
/// When `rounds` is empty or its chains differ in length or slicings.
pub fn median_profile(rounds: &[Vec<StageCost>]) -> Vec<StageCost> {
    let mut chain = rounds.last().expect("at least one round").clone();
    let times =
        |f: &dyn Fn(&[StageCost]) -> f64| median(&rounds.iter().map(|r| f(r)).collect::<Vec<_>>());
    for (s, stage) in chain.iter_mut().enumerate() {
        stage.forward = times(&|r| r[s].forward);
        stage.backward = times(&|r| r[s].backward);
        for (k, sliced) in stage.sliced.iter_mut().enumerate() {
            sliced.time = times(&|r| r[s].sliced[k].time);
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

/// Profiles `model` on `batch` and builds the schedule `policy` asks for, the parameter
/// gradients held as `update` holds them.
///
/// # Errors
///
/// [`crate::Error::Config`] for a budget below the smallest feasible one (named in the
/// message).
pub fn plan(model: &Gpt, batch: &Batch, policy: RematPolicy, update: UpdatePolicy) -> Result<Plan> {
    let chain = profile(model, batch, 3);
    plan_with(chain, policy, update)
}

/// [`plan`] for an already measured chain, with ordinary updates.
///
/// # Errors
///
/// As [`plan`].
pub fn plan_for(chain: Vec<StageCost>, policy: RematPolicy) -> Result<Plan> {
    plan_with(chain, policy, UpdatePolicy::Step)
}

/// The chain as `update` holds its parameter gradients: a [`profile`] counts every stage's
/// gradients as held until the step ends ([`StageCost::grad`]); per-stage updates free a block
/// half's as soon as its backward is done, and keep only the head's.
pub fn held_as(mut chain: Vec<StageCost>, update: UpdatePolicy) -> Vec<StageCost> {
    if update == UpdatePolicy::PerStage {
        let last = chain.len().saturating_sub(1);
        for stage in &mut chain[..last] {
            stage.grad = 0;
        }
    }
    chain
}

/// [`plan`] for an already measured chain (gradients as [`profile`] measures them), the
/// gradients held as `update` holds them.
///
/// # Errors
///
/// As [`plan`].
pub fn plan_with(chain: Vec<StageCost>, policy: RematPolicy, update: UpdatePolicy) -> Result<Plan> {
    let chain = held_as(chain, update);
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
