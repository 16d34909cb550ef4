//! Rematerialization schedules for a chain of stages: the Rotor dynamic program, the
//! keep-every-K baseline, and an event simulator that predicts a schedule's peak and time.

use std::fmt;

use serde::Serialize;

use crate::error::{Error, Result};

/// What one stage of the chain costs, measured by [`super::profile`].
///
/// Sizes are bytes; times are seconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageCost {
    /// Forward time (the same with or without keeping internals).
    pub forward: f64,
    /// Backward time.
    pub backward: f64,
    /// The stage's output (`x_i`; its gradient `dy_i` has the same size).
    pub output: usize,
    /// Everything a forward with autodiff keeps, output included.
    pub kept: usize,
    /// Peak above the input during a forward with autodiff, what it keeps and its output
    /// included (at least `kept`: an op's input and output can coexist for a moment, e.g. a
    /// few-bit activation's 4d-wide input and output).
    pub keep_peak: usize,
    /// Peak above `kept` during the stage's backward (gradients of its parameters and input,
    /// temporaries), not counting the incoming output gradient.
    pub backward_peak: usize,
    /// Peak above the input during a forward without autodiff, output included.
    pub forward_peak: usize,
    /// Parameter-gradient bytes its backward leaves that stay live until the step ends: all
    /// of them under ordinary updates, none under per-stage updates
    /// ([`crate::policy::UpdatePolicy::PerStage`], which updates the stage's parameters and
    /// frees their gradients at once) except the head's (the tied token embedding is
    /// updated after the embedding's backward).
    pub grad: usize,
    /// The stage run forward and backward back to back ([`Schedule::Sliced`]), in each number
    /// of batch slices [`super::profile`] measured ([`super::slicings`]: the whole batch,
    /// `S i/1`, halves, quarters, and one sequence at a time); empty for the head.
    pub sliced: Vec<SlicedCost>,
}

/// What a stage costs run forward and backward back to back, one batch slice at a time, each
/// slice's graph freed before the next is built ([`Schedule::Sliced`]; measured by
/// [`super::profile`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SlicedCost {
    /// Slices of the batch (each `ceil(batch / slices)` sequences).
    pub slices: usize,
    /// Seconds of every slice's forward and backward.
    pub time: f64,
    /// Peak above the stage's input and output gradient, its input gradient and parameter
    /// gradients included.
    pub peak: usize,
}

/// A schedule for stages `s..=t`, given their input is stored and the gradient of stage
/// `t`'s output is available.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Schedule {
    /// Forward stage `s` keeping its internals, schedule `rest` (`s+1..=t`), then back-propagate
    /// stage `s`.
    Keep {
        /// The stage.
        stage: usize,
        /// Stages `s+1..=t`, if any.
        rest: Option<Box<Schedule>>,
    },
    /// Forward stages `s..split` without keeping anything but the output of `split - 1` (a
    /// checkpoint), schedule `right` (`split..=t`), free the checkpoint, then schedule `left`
    /// (`s..split`, recomputed from the stored input).
    Checkpoint {
        /// First stage of the right part.
        split: usize,
        /// Stages `split..=t`.
        right: Box<Schedule>,
        /// Stages `s..split`.
        left: Box<Schedule>,
    },
    /// Forward and back-propagate `stage` back to back, one batch slice at a time (only the
    /// last stage of a segment, `s == t`): a slice's graph is freed before the next is
    /// built, so the stage holds a slice's internals instead of the batch's. Every operation
    /// of a block acts on each sequence alone, so the gradients are the same (up to f32
    /// summation order of the parameter gradients). The stage's output is never needed, so
    /// its last product is skipped where the model allows ([`crate::model::Gpt::stage_split`]);
    /// with one slice, that is the whole gain over [`Schedule::Keep`].
    Sliced {
        /// The stage.
        stage: usize,
        /// Slices of the batch.
        slices: usize,
    },
}

impl Schedule {
    /// The stages `(s, t)` this schedule covers.
    pub fn span(&self) -> (usize, usize) {
        match self {
            Schedule::Keep { stage, rest } => {
                (*stage, rest.as_ref().map_or(*stage, |r| r.span().1))
            }
            Schedule::Checkpoint { right, left, .. } => (left.span().0, right.span().1),
            Schedule::Sliced { stage, .. } => (*stage, *stage),
        }
    }

    /// Keep everything: plain autodiff, no recomputation.
    pub fn keep_all(s: usize, t: usize) -> Schedule {
        Schedule::Keep {
            stage: s,
            rest: (s < t).then(|| Box::new(Schedule::keep_all(s + 1, t))),
        }
    }

    /// Keep the input of every `k`-th stage: segments of `k` stages, each recomputed with
    /// autodiff during backward (what `torch.utils.checkpoint` users write by hand).
    pub fn every(k: usize, s: usize, t: usize) -> Schedule {
        let split = s + k.max(1);
        if split > t {
            return Schedule::keep_all(s, t);
        }
        Schedule::Checkpoint {
            split,
            right: Box::new(Schedule::every(k, split, t)),
            left: Box::new(Schedule::keep_all(s, split - 1)),
        }
    }

    /// Stages run forward more than once (recomputations).
    pub fn recomputed_forwards(&self) -> usize {
        match self {
            Schedule::Keep { rest, .. } => rest.as_ref().map_or(0, |r| r.recomputed_forwards()),
            Schedule::Checkpoint { split, right, left } => {
                let (s, _) = left.span();
                (split - s) + right.recomputed_forwards() + left.recomputed_forwards()
            }
            Schedule::Sliced { .. } => 0,
        }
    }

    /// Stages run [`Schedule::Sliced`].
    pub fn sliced_stages(&self) -> usize {
        match self {
            Schedule::Keep { rest, .. } => rest.as_ref().map_or(0, |r| r.sliced_stages()),
            Schedule::Checkpoint { right, left, .. } => {
                right.sliced_stages() + left.sliced_stages()
            }
            Schedule::Sliced { .. } => 1,
        }
    }
}

impl fmt::Display for Schedule {
    /// `K3` keeps stage 3; `F0..2>C2 (right) (left)` runs 0..2 forward without keeping and
    /// checkpoints the output of 2; `S3/8` runs stage 3 in 8 batch slices.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Keep { stage, rest } => {
                write!(f, "K{stage}")?;
                if let Some(r) = rest {
                    write!(f, " {r}")?;
                }
                Ok(())
            }
            Schedule::Checkpoint { split, right, left } => {
                let (s, _) = left.span();
                write!(f, "F{s}..{}>C{} ({right}) ({left})", split - 1, split - 1)
            }
            Schedule::Sliced { stage, slices } => write!(f, "S{stage}/{slices}"),
        }
    }
}

/// Predicted peak and time of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prediction {
    /// Peak bytes above what is live before the step (the chain's input included).
    pub peak: usize,
    /// Seconds of forward and backward.
    pub time: f64,
}

/// Simulates `schedule` event by event: live bytes start at `live` (the stored input of the
/// first stage) plus the gradient of the last stage's output, and the peak is tracked over
/// every allocation, the parameter gradients each stage leaves ([`StageCost::grad`])
/// included. Returns `(peak, time)`.
pub fn simulate(chain: &[StageCost], schedule: &Schedule, live: usize) -> (usize, f64) {
    let live = live + chain[schedule.span().1].output;
    let mut peak = live;
    let mut time = 0.0;
    sim(chain, schedule, live, &mut peak, &mut time);
    (peak, time)
}

/// Returns the live bytes after `schedule` ran: its input gradient replaced its output
/// gradient.
fn sim(
    chain: &[StageCost],
    schedule: &Schedule,
    live: usize,
    peak: &mut usize,
    time: &mut f64,
) -> usize {
    let (s, t) = schedule.span();
    let dy = |i: usize| chain[i].output;
    let dx = |i: usize| if i == 0 { 0 } else { chain[i - 1].output };
    match schedule {
        Schedule::Keep { stage, rest } => {
            let c = &chain[*stage];
            *peak = (*peak).max(live + c.keep_peak.max(c.kept));
            let mut live = live + c.kept;
            *time += c.forward;
            if let Some(r) = rest {
                // The rest consumes dy_t and leaves dy_s.
                live = sim(chain, r, live, peak, time);
            } else {
                debug_assert_eq!(s, t);
            }
            // Backward of s: dy_s is live; its transients come on top.
            *peak = (*peak).max(live + c.backward_peak);
            *time += c.backward;
            // Frees the graph and dy_s, leaves dx (the gradient of s's input) and the
            // parameter gradients that stay.
            live - c.kept - dy(*stage) + dx(*stage) + c.grad
        }
        Schedule::Sliced { stage, slices } => {
            let c = &chain[*stage];
            let sliced = c
                .sliced
                .iter()
                .find(|x| x.slices == *slices)
                .expect("a sliced stage has a cost for its slices");
            *peak = (*peak).max(live + sliced.peak);
            *time += sliced.time;
            live - dy(*stage) + dx(*stage) + c.grad
        }
        Schedule::Checkpoint { split, right, left } => {
            // Forward s..split without keeping: each stage's input (beyond the stored one) and
            // its forward peak; only x_{split-1} stays.
            for i in s..*split {
                let input = if i == s { 0 } else { chain[i - 1].output };
                *peak = (*peak).max(live + input + chain[i].forward_peak);
                *time += chain[i].forward;
            }
            let stored = chain[split - 1].output;
            let live = sim(chain, right, live + stored, peak, time) - stored;
            sim(chain, left, live, peak, time)
        }
    }
}

/// The Rotor dynamic program (Beaumont et al. 2019) over memory discretised in `quantum`
/// bytes: the schedule of least time for the whole chain whose simulated peak stays within
/// `budget` bytes above `base` (bytes live before the chain runs, counted in the budget: the
/// stored input of stage 0).
///
/// `C(s, t, m)` is the least time to back-propagate stages `s..=t` with `m` bytes free
/// besides the stored input of `s` and the gradient of `t`'s output; either
/// keep stage `s` (`u_f + C(s+1, t, m - kept_s) + u_b`, backward needing
/// `kept_s + backward_peak_s + G(s+1..=t) <= m + out_t - out_s`, where `G` sums the
/// gradients the stages leave, [`StageCost::grad`]), checkpoint before some `s'`
/// (`Σ_{s..s'} u_f + C(s', t, m - out_{s'-1}) + C(s, s'-1, m + out_t - out_{s'-1} - G(s'..=t))`),
/// or, for a single stage with a [`StageCost::sliced`] cost, run it in slices (its peak
/// within `m`). Sizes are rounded up to quanta, so the schedule's true peak is at most its
/// quantised one.
///
/// # Errors
///
/// [`Error::Config`] when no schedule fits: the message names the smallest feasible budget.
pub fn optimal(
    chain: &[StageCost],
    base: usize,
    budget: usize,
    quantum: usize,
) -> Result<Schedule> {
    let n = chain.len();
    if n == 0 {
        return Err(Error::config("chain", "no stages", "at least one stage"));
    }
    let q = quantum.max(1);
    let up = |b: usize| b.div_ceil(q);
    let quant: Vec<QCost> = chain
        .iter()
        .map(|c| QCost {
            time_f: c.forward,
            time_b: c.backward,
            output: up(c.output),
            kept: up(c.kept),
            keep_peak: up(c.keep_peak.max(c.kept)),
            backward_peak: up(c.backward_peak),
            forward_peak: up(c.forward_peak),
            grad: up(c.grad),
        })
        .collect();
    let sliced: Vec<Vec<(f64, usize, usize)>> = chain
        .iter()
        .map(|c| {
            c.sliced
                .iter()
                .map(|x| (x.time, up(x.peak), x.slices))
                .collect()
        })
        .collect();
    // Free quanta besides the stored input and the last stage's output gradient.
    let free = |budget: usize| (budget / q).checked_sub(up(base) + quant[n - 1].output);
    let solve = |budget: usize| -> Option<Schedule> {
        let m = free(budget)?;
        let mut dp = Dp::new(&quant, &sliced, m);
        dp.cost(0, n - 1, m)
            .is_finite()
            .then(|| dp.build(0, n - 1, m))
    };
    if let Some(s) = solve(budget) {
        return Ok(s);
    }
    // The smallest feasible budget, by bisection between the budget and keep-everything.
    let (_, keep_peak) = {
        let (p, _) = simulate(chain, &Schedule::keep_all(0, n - 1), base);
        ((), p + n * q)
    };
    let (mut lo, mut hi) = (budget, keep_peak.max(budget + q));
    while solve(hi).is_none() {
        hi *= 2;
    }
    while hi - lo > q {
        let mid = lo + (hi - lo) / 2;
        if solve(mid).is_some() {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Err(Error::config(
        "remat budget",
        format!("{budget} bytes"),
        format!(
            "at least {hi} bytes ({:.1} MiB): the smallest budget any schedule fits",
            hi as f64 / (1 << 20) as f64
        ),
    ))
}

#[derive(Debug, Clone, Copy)]
struct QCost {
    time_f: f64,
    time_b: f64,
    output: usize,
    kept: usize,
    keep_peak: usize,
    backward_peak: usize,
    forward_peak: usize,
    grad: usize,
}

struct Dp<'a> {
    c: &'a [QCost],
    /// Per stage: time, peak and slices of each way to run it sliced.
    sliced: &'a [Vec<(f64, usize, usize)>],
    m_max: usize,
    memo: Vec<Option<(f64, Choice)>>,
    /// `grads[i]`: the gradients stages `0..i` leave.
    grads: Vec<usize>,
}

#[derive(Debug, Clone, Copy)]
enum Choice {
    Keep,
    Split(usize),
    Sliced(usize),
    None,
}

impl<'a> Dp<'a> {
    fn new(c: &'a [QCost], sliced: &'a [Vec<(f64, usize, usize)>], m_max: usize) -> Self {
        let n = c.len();
        let mut grads = vec![0; n + 1];
        for i in 0..n {
            grads[i + 1] = grads[i] + c[i].grad;
        }
        Dp {
            c,
            sliced,
            m_max,
            memo: vec![None; n * n * (m_max + 1)],
            grads,
        }
    }

    fn out(&self, i: usize) -> usize {
        self.c[i].output
    }

    /// The gradients stages `a..=b` leave (0 when `a > b`).
    fn grad(&self, a: usize, b: usize) -> usize {
        if a > b {
            0
        } else {
            self.grads[b + 1] - self.grads[a]
        }
    }

    fn cost(&mut self, s: usize, t: usize, m: usize) -> f64 {
        let n = self.c.len();
        let key = (s * n + t) * (self.m_max + 1) + m.min(self.m_max);
        if m <= self.m_max
            && let Some((v, _)) = self.memo[key]
        {
            return v;
        }
        let (v, choice) = self.compute(s, t, m);
        if m <= self.m_max {
            self.memo[key] = Some((v, choice));
        }
        v
    }

    fn compute(&mut self, s: usize, t: usize, m: usize) -> (f64, Choice) {
        let c = self.c[s];
        let mut best = (f64::INFINITY, Choice::None);
        // Keep stage s.
        let after = m + self.out(t);
        if c.keep_peak <= m && c.kept + c.backward_peak + self.out(s) + self.grad(s + 1, t) <= after
        {
            let rest = if s == t {
                0.0
            } else {
                self.cost(s + 1, t, m - c.kept)
            };
            let v = c.time_f + rest + c.time_b;
            if v < best.0 {
                best = (v, Choice::Keep);
            }
        }
        // Checkpoint before s' in s+1..=t.
        let mut fwd = 0.0;
        let mut fits = true;
        for split in s + 1..=t {
            let i = split - 1;
            let input = if i == s { 0 } else { self.out(i - 1) };
            fits &= input + self.c[i].forward_peak <= m;
            fwd += self.c[i].time_f;
            let stored = self.out(i);
            if !fits || stored > m {
                break;
            }
            let right = self.cost(split, t, m - stored);
            if !right.is_finite() {
                continue;
            }
            // After the right part: its output gradient is gone, dy_{split-1} and the right
            // part's parameter gradients are live.
            let Some(m_left) = (m + self.out(t)).checked_sub(stored + self.grad(split, t)) else {
                continue;
            };
            let left = self.cost(s, split - 1, m_left);
            let v = fwd + right + left;
            if v < best.0 {
                best = (v, Choice::Split(split));
            }
        }
        // Run a single stage back to back, in slices.
        if s == t {
            for &(time, peak, slices) in &self.sliced[s] {
                if peak <= m && time < best.0 {
                    best = (time, Choice::Sliced(slices));
                }
            }
        }
        best
    }

    fn build(&mut self, s: usize, t: usize, m: usize) -> Schedule {
        self.cost(s, t, m);
        let (_, choice) = if m <= self.m_max {
            self.memo[(s * self.c.len() + t) * (self.m_max + 1) + m].expect("computed")
        } else {
            self.compute(s, t, m)
        };
        match choice {
            Choice::Keep => Schedule::Keep {
                stage: s,
                rest: (s < t).then(|| Box::new(self.build(s + 1, t, m - self.c[s].kept))),
            },
            Choice::Split(split) => {
                let stored = self.out(split - 1);
                let right = self.build(split, t, m - stored);
                let left = self.build(s, split - 1, m + self.out(t) - stored - self.grad(split, t));
                Schedule::Checkpoint {
                    split,
                    right: Box::new(right),
                    left: Box::new(left),
                }
            }
            Choice::Sliced(slices) => Schedule::Sliced { stage: s, slices },
            Choice::None => unreachable!("build follows a finite cost"),
        }
    }
}

/// Every schedule of stages `s..=t` without slicing (for brute-force checks on small chains).
pub fn all_schedules(s: usize, t: usize) -> Vec<Schedule> {
    all_schedules_with(s, t, &|_| Vec::new())
}

/// Every schedule of stages `s..=t`, a stage `i` also run sliced in each number of slices
/// `slices(i)` lists (for brute-force checks on small chains).
pub fn all_schedules_with(
    s: usize,
    t: usize,
    slices: &dyn Fn(usize) -> Vec<usize>,
) -> Vec<Schedule> {
    let mut out = Vec::new();
    if s == t {
        out.push(Schedule::Keep {
            stage: s,
            rest: None,
        });
        for slices in slices(s) {
            out.push(Schedule::Sliced { stage: s, slices });
        }
        return out;
    }
    for rest in all_schedules_with(s + 1, t, slices) {
        out.push(Schedule::Keep {
            stage: s,
            rest: Some(Box::new(rest)),
        });
    }
    for split in s + 1..=t {
        for right in all_schedules_with(split, t, slices) {
            for left in all_schedules_with(s, split - 1, slices) {
                out.push(Schedule::Checkpoint {
                    split,
                    right: Box::new(right.clone()),
                    left: Box::new(left),
                });
            }
        }
    }
    out
}
