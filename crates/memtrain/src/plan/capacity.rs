//! Capacity: the largest batch, and the longest sequence, whose activations fit a budget, for
//! plain burn (by formula) and for the planner (by profiling each candidate at that shape).

use burn::tensor::Device;

use super::{Variant, batch_for, profile_variants, solve};
use crate::data::{Dataset, Tokenizer};
use crate::error::Result;
use crate::memory::total_bytes;
use crate::model::{GptConfig, model_saved};
use crate::policy::{AttnPolicy, BlockPolicy, LinearPolicy, MemoryPolicy};
use crate::remat::{SlicedCost, StageCost};
use crate::train::TrainConfig;

/// Sequence lengths are searched in multiples of this many tokens.
pub const SEQ_STEP: usize = 64;

/// What fits a budget, plain burn against the planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// The largest batch at the configured sequence whose plain activations fit (0: none).
    pub plain_batch: usize,
    /// The largest batch at the configured sequence some plan fits.
    pub planned_batch: usize,
    /// The longest sequence (a multiple of [`SEQ_STEP`]) at the configured batch whose plain
    /// activations fit.
    pub plain_seq: usize,
    /// The longest such sequence some plan fits.
    pub planned_seq: usize,
}

/// The candidates the search profiles. Feasibility only: exact attention and burn's linear
/// keep and peak at least as much as the fused attention and the gemm linear in every stage,
/// so they cannot make a budget feasible that the others do not.
fn candidates(approx: bool) -> Vec<BlockPolicy> {
    BlockPolicy::candidates(approx)
        .into_iter()
        .filter(|c| c.attn == AttnPolicy::Memeff && c.linear != LinearPolicy::Exact)
        .collect()
}

/// Whether any plan for `model` on `batch` fits `budget` (one profile of each candidate).
fn plan_fits(
    model: &GptConfig,
    batch: &crate::data::Batch,
    approx: bool,
    budget: u64,
    device: &Device,
) -> bool {
    profile_variants(model, batch, &candidates(approx), 1, device)
        .is_ok_and(|v| solve(&v, model.n_layers, budget, 0.0).is_ok())
}

/// A stage's sizes at `x` (a batch or a sequence length; meant for `x >= x2`) from its
/// measurements `lo` at `x1` and `hi` at `x2 > x1`, each size extended along the line through
/// the two (every tensor a stage holds is the batch's, linear in its size, or its parameters'
/// gradients, constant; with fused attention nothing grows with the square of the sequence).
/// A slicing measured at both sizes stays (its slices grow with the batch); the
/// one-sequence-a-slice cost follows the batch. Times are only scaled by `x / x1`: the
/// capacity search asks feasibility, not time. `tests/memory.rs` checks the sizes at batch 16,
/// from 4 and 8, against a profile at 16: within 15% (the head's backward peak is 12% low).
/// Peaks are maxima over a stage's run, not quite lines, so [`capacity`] only takes the
/// extrapolation as a guess and confirms its answer by profiling.
pub fn extrapolate(lo: &StageCost, hi: &StageCost, x1: usize, x2: usize, x: usize) -> StageCost {
    // A size that shrank between the two (a backward's transient peak above what it frees
    // as it goes can) is held at the larger: never extrapolated below either measurement.
    let line = |a: usize, b: usize| {
        let slope = (b as f64 - a as f64).max(0.0) / (x2 - x1) as f64;
        (a.max(b) as f64 + slope * (x as f64 - x2 as f64)).ceil() as usize
    };
    let scale = x as f64 / x1 as f64;
    StageCost {
        forward: lo.forward * scale,
        backward: lo.backward * scale,
        output: line(lo.output, hi.output),
        kept: line(lo.kept, hi.kept),
        keep_peak: line(lo.keep_peak, hi.keep_peak),
        backward_peak: line(lo.backward_peak, hi.backward_peak),
        forward_peak: line(lo.forward_peak, hi.forward_peak),
        grad: line(lo.grad, hi.grad),
        // The same number of slices at both sizes is one line (its slices' rows grow with
        // the batch, or their length with the sequence). One sequence a slice at `x2` (its
        // slices are the batch, absent at `x1`) pairs with one sequence a slice at `x1`,
        // `lo`'s last.
        sliced: hi
            .sliced
            .iter()
            .filter_map(|b| {
                let same = lo.sliced.iter().find(|a| a.slices == b.slices);
                let (a, slices) = match same {
                    Some(a) => (a, b.slices),
                    None => (lo.sliced.last()?, x),
                };
                Some(SlicedCost {
                    slices,
                    time: a.time * scale,
                    peak: line(a.peak, b.peak),
                })
            })
            .collect(),
    }
}

/// Whether any plan fits `budget` at `x`, the candidates' sizes extrapolated from their
/// profiles `lo` at `x1` and `hi` at `x2` ([`extrapolate`]).
fn extrapolated_fits(
    lo: &[Variant],
    hi: &[Variant],
    (x1, x2): (usize, usize),
    x: usize,
    n_layers: usize,
    budget: u64,
) -> bool {
    let at: Vec<Variant> = lo
        .iter()
        .zip(hi)
        .map(|(a, b)| {
            let stages = (a.stages.iter().zip(&b.stages))
                .map(|(s, t)| extrapolate(s, t, x1, x2, x))
                .collect();
            Variant::new(
                a.block_policy(),
                stages,
                extrapolate(&a.head, &b.head, x1, x2, x),
            )
        })
        .collect();
    solve(&at, n_layers, budget, 0.0).is_ok()
}

/// The largest `n` that `fits`, searched on extrapolated sizes (`guess`), then settled by
/// `fits` itself: when the guess does not fit, a lower bound that does is found 15% at a
/// time, and the gap is bisected to 2% (0 when nothing fits).
fn confirmed(guess: &dyn Fn(usize) -> bool, fits: &dyn Fn(usize) -> bool) -> usize {
    let mut hi = largest(guess);
    if hi == 0 || fits(hi) {
        return hi;
    }
    let mut lo = hi * 85 / 100;
    while lo > 0 && !fits(lo) {
        hi = lo;
        lo = lo * 85 / 100;
    }
    if lo == 0 {
        return 0;
    }
    while hi - lo > (lo / 50).max(1) {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The largest `n` in `1..=8192` with `fits(n)` (0 when `fits(1)` fails), by doubling then
/// bisection: `fits` must be monotone.
fn largest(fits: &dyn Fn(usize) -> bool) -> usize {
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
}

/// The largest batch whose plain activations fit `budget` bytes and the largest the planner
/// fits; then the same for the sequence length at the configured batch, the position table
/// growing with it as `max_seq` would. Each is found by doubling, then bisection: plain
/// burn's by formula, the planner's on the candidates' sizes extrapolated from two small
/// profiles ([`extrapolate`]), then confirmed by profiling every candidate at the answer
/// (and, where it does not fit, below it, to within 2%). `text` is the training text,
/// tokenized again at each sequence length tried.
///
/// ```no_run
/// use burn::tensor::Device;
/// use memtrain::data::load_text;
/// use memtrain::model::Preset;
/// use memtrain::plan::capacity;
/// use memtrain::train::TrainConfig;
///
/// # fn main() -> memtrain::Result<()> {
/// let (text, _) = load_text(None)?;
/// let fits = capacity(&TrainConfig::new(Preset::Small), 128 << 20, false, &text, &Device::flex().autodiff())?;
/// println!("batch {} plain, {} planned", fits.plain_batch, fits.planned_batch);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// [`crate::Error::Config`] for a bad configuration ([`TrainConfig::validate`]).
pub fn capacity(
    config: &TrainConfig,
    budget: u64,
    approx: bool,
    text: &str,
    device: &Device,
) -> Result<Capacity> {
    capacity_with(config, budget, approx, text, device, &|_| {})
}

/// [`capacity`], telling `progress` each size it tries (a line such as `batch 256: fits,
/// extrapolated` or `batch 256: does not fit, profiled`).
///
/// # Errors
///
/// As [`capacity`].
pub fn capacity_with(
    config: &TrainConfig,
    budget: u64,
    approx: bool,
    text: &str,
    device: &Device,
    progress: &dyn Fn(&str),
) -> Result<Capacity> {
    config.validate()?;
    let told = |what: String, ok: bool, how: &str| {
        let verdict = if ok { "fits" } else { "does not fit" };
        progress(&format!("{what}: {verdict}, {how}"));
        ok
    };
    let model = config.model_config();
    let plain_bytes = |m: &GptConfig, b: usize, t: usize| {
        total_bytes(&model_saved(m, &MemoryPolicy::default(), b, t)) as u64
    };
    let data = Dataset::new(text, Tokenizer::Byte, config.seq)?;
    let plain_batch = largest(&|b| plain_bytes(&model, b, config.seq) <= budget);
    // Profiles at every batch tried would take minutes each once the batch reaches the
    // hundreds: the search runs on sizes extrapolated from batches 4 and 8 (smaller ones
    // are dominated by per-thread scratch, which does not grow with the batch), and its
    // answer is confirmed by profiling at that batch.
    let profile_at = |b: usize, t: usize, m: &GptConfig, data: &Dataset| {
        let batch = batch_for(data, config.seed, b, t, device);
        profile_variants(m, &batch, &candidates(approx), 1, device)
    };
    let (lo, hi) = (
        profile_at(4, config.seq, &model, &data)?,
        profile_at(8, config.seq, &model, &data)?,
    );
    let planned_batch = confirmed(
        &|b| {
            let ok = extrapolated_fits(&lo, &hi, (4, 8), b, model.n_layers, budget);
            told(format!("batch {b}"), ok, "extrapolated")
        },
        &|b| {
            let batch = batch_for(&data, config.seed, b, config.seq, device);
            let ok = plan_fits(&model, &batch, approx, budget, device);
            told(format!("batch {b}"), ok, "profiled")
        },
    );
    let at_seq = |t: usize| {
        let mut m = model;
        m.max_seq = m.max_seq.max(t);
        m
    };
    let plain_seq = largest(&|k| {
        let t = k * SEQ_STEP;
        plain_bytes(&at_seq(t), config.batch, t) <= budget
    }) * SEQ_STEP;
    let seq_fits = |k: usize| {
        let t = k * SEQ_STEP;
        let Ok(data) = Dataset::new(text, Tokenizer::Byte, t) else {
            return false;
        };
        let batch = batch_for(&data, config.seed, config.batch, t, device);
        let ok = plan_fits(&at_seq(t), &batch, approx, budget, device);
        told(format!("seq {t}"), ok, "profiled")
    };
    // The same for the sequence, extrapolated from 4 and 8 multiples of SEQ_STEP (the text
    // must hold a sequence that long: else each length is profiled).
    let (t1, t2) = (4 * SEQ_STEP, 8 * SEQ_STEP);
    let profiles = Dataset::new(text, Tokenizer::Byte, t2).and_then(|d2| {
        let d1 = Dataset::new(text, Tokenizer::Byte, t1)?;
        Ok((
            profile_at(config.batch, t1, &at_seq(t1), &d1)?,
            profile_at(config.batch, t2, &at_seq(t2), &d2)?,
        ))
    });
    let planned_seq = match profiles {
        Ok((lo, hi)) => confirmed(
            &|k| {
                let t = k * SEQ_STEP;
                let ok = extrapolated_fits(&lo, &hi, (t1, t2), t, model.n_layers, budget);
                told(format!("seq {t}"), ok, "extrapolated")
            },
            &seq_fits,
        ),
        Err(_) => largest(&seq_fits),
    } * SEQ_STEP;
    Ok(Capacity {
        plain_batch,
        planned_batch,
        plain_seq,
        planned_seq,
    })
}
