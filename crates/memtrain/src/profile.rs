//! Where a training step's time goes: wall time per operation kind, with the FLOPs of each,
//! so the achieved GFLOP/s per kind is visible (`memtrain bench --profile`).
//!
//! The model's operations open a [`scope`] around their forward and, for memtrain's own ops,
//! around their backward; the trainer opens a [`phase`] around forward, backward and the
//! optimizer update. Each phase's time that no operation claimed is reported as its own
//! remainder: in backward that is the backward of burn's operations (residual adds, the
//! embedding, the LM head and the loss under plain policies, every op burn differentiates), which
//! autodiff runs without a hook per op.
//!
//! Profiling is off unless [`enable`]d; off, a scope costs one atomic load. Scopes do not
//! nest: an operation that calls another (LoRA around a linear) is timed once, as the
//! outermost. On the CPU backend operations run synchronously, so a scope's wall time is the
//! operation's time; on a GPU backend it would be the time to enqueue it, and the profile is
//! only meaningful on Flex.
//!
//! Besides the scopes, [`take`] reports the process's CPU time over the profiled phases
//! (`utime + stime` from `/proc/self/stat`, Linux only), so that idle cores show as
//! `cores busy` below the thread count, and its minor page faults (fresh pages the allocator
//! touched).
//!
//! ```
//! use memtrain::profile::{self, Pass};
//! profile::enable(true);
//! // Outside a phase nothing is recorded.
//! assert!(profile::scope("matmul", String::new, || 0.0).is_none());
//! {
//!     let _phase = profile::phase(Pass::Forward);
//!     let _op = profile::scope("matmul", || "[2x3]·[3x4]".into(), || 48.0);
//! }
//! let report = profile::take();
//! profile::enable(false);
//! assert_eq!(report.entries.len(), 1);
//! assert_eq!(report.entries[0].calls, 1);
//! assert_eq!(report.entries[0].flops, 48.0);
//! assert!(report.phase_seconds(Pass::Forward) >= report.entries[0].seconds);
//! ```

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The part of a step an operation belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pass {
    /// The forward pass and the loss.
    Forward,
    /// `loss.backward()`.
    Backward,
    /// The optimizer update.
    Update,
}

impl Pass {
    /// The pass's name as the profile table prints it.
    pub fn name(self) -> &'static str {
        match self {
            Pass::Forward => "forward",
            Pass::Backward => "backward",
            Pass::Update => "update",
        }
    }
}

/// One operation kind and detail (for a matmul its shape) in one pass, summed over its calls.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The kind: `matmul`, `attention`, `norm`, `activation`, `embedding`, `lm head`,
    /// `cross-entropy`, `optimizer`.
    pub kind: &'static str,
    /// The pass it ran in.
    pub pass: Pass,
    /// What distinguishes calls of one kind (a matmul's shape), or empty.
    pub detail: String,
    /// Calls.
    pub calls: u64,
    /// Wall seconds over all calls.
    pub seconds: f64,
    /// Floating-point operations over all calls (a multiply-add is two), 0 where not counted.
    pub flops: f64,
}

/// What [`take`] returns: every entry, the phases' wall times, and the process's counters over
/// the phases.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// Entries, by kind, pass and detail.
    pub entries: Vec<Entry>,
    /// Wall seconds per pass, over every [`phase`].
    pub phases: Vec<(Pass, f64)>,
    /// Process CPU seconds (user + system) over the phases; `None` off Linux.
    pub cpu_seconds: Option<f64>,
    /// Minor page faults over the phases; `None` off Linux.
    pub minor_faults: Option<u64>,
}

impl Profile {
    /// Wall seconds of one pass over every phase (0 when none ran).
    pub fn phase_seconds(&self, pass: Pass) -> f64 {
        self.phases
            .iter()
            .filter(|(p, _)| *p == pass)
            .map(|(_, s)| s)
            .sum()
    }

    /// Wall seconds of every phase.
    pub fn total_seconds(&self) -> f64 {
        self.phases.iter().map(|(_, s)| s).sum()
    }

    /// The seconds of `pass` no entry claimed (never negative).
    pub fn unclaimed_seconds(&self, pass: Pass) -> f64 {
        let claimed: f64 = self
            .entries
            .iter()
            .filter(|e| e.pass == pass)
            .map(|e| e.seconds)
            .sum();
        (self.phase_seconds(pass) - claimed).max(0.0)
    }
}

#[derive(Default)]
struct State {
    entries: BTreeMap<(&'static str, Pass, String), (u64, f64, f64)>,
    phases: BTreeMap<Pass, f64>,
    cpu_seconds: f64,
    minor_faults: u64,
    counted: bool,
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static STATE: Mutex<Option<State>> = Mutex::new(None);

thread_local! {
    /// Whether an operation scope is open on this thread.
    static OPEN: Cell<bool> = const { Cell::new(false) };
    /// The phase open on this thread, which operation scopes record under.
    static PHASE: Cell<Option<Pass>> = const { Cell::new(None) };
}

/// Turns recording on or off for the whole process (off by default).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether recording is on.
pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Everything recorded since the last call, and a fresh start.
pub fn take() -> Profile {
    let state = lock().take().unwrap_or_default();
    Profile {
        entries: state
            .entries
            .into_iter()
            .map(|((kind, pass, detail), (calls, seconds, flops))| Entry {
                kind,
                pass,
                detail,
                calls,
                seconds,
                flops,
            })
            .collect(),
        phases: state.phases.into_iter().collect(),
        cpu_seconds: state.counted.then_some(state.cpu_seconds),
        minor_faults: state.counted.then_some(state.minor_faults),
    }
}

fn lock() -> std::sync::MutexGuard<'static, Option<State>> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// An open operation scope: records its wall time when dropped.
#[must_use = "the scope records when dropped"]
pub struct Scope {
    kind: &'static str,
    pass: Pass,
    detail: String,
    flops: f64,
    start: Instant,
}

/// Opens a scope for one operation of `kind`, recorded under the [`phase`] open on this
/// thread: `None` when profiling is off, no phase is open, or another scope is open on this
/// thread. `detail` and `flops` are only evaluated when it opens.
pub fn scope(
    kind: &'static str,
    detail: impl FnOnce() -> String,
    flops: impl FnOnce() -> f64,
) -> Option<Scope> {
    if !is_enabled() || OPEN.with(Cell::get) {
        return None;
    }
    let pass = PHASE.with(Cell::get)?;
    OPEN.with(|o| o.set(true));
    Some(Scope {
        kind,
        pass,
        detail: detail(),
        flops: flops(),
        start: Instant::now(),
    })
}

impl Drop for Scope {
    fn drop(&mut self) {
        let seconds = self.start.elapsed().as_secs_f64();
        OPEN.with(|o| o.set(false));
        let mut state = lock();
        let e = state
            .get_or_insert_with(State::default)
            .entries
            .entry((self.kind, self.pass, std::mem::take(&mut self.detail)))
            .or_default();
        e.0 += 1;
        e.1 += seconds;
        e.2 += self.flops;
    }
}

/// An open phase: records its wall time, CPU time and page faults when dropped.
#[must_use = "the phase records when dropped"]
pub struct Phase {
    pass: Pass,
    outer: Option<Pass>,
    start: Instant,
    counters: Option<(f64, u64)>,
}

/// Opens the phase `pass` of a step on this thread (`None` when profiling is off). Phases do
/// not nest: one opened inside another replaces it until dropped.
pub fn phase(pass: Pass) -> Option<Phase> {
    is_enabled().then(|| Phase {
        pass,
        outer: PHASE.with(|p| p.replace(Some(pass))),
        counters: counters(),
        start: Instant::now(),
    })
}

impl Drop for Phase {
    fn drop(&mut self) {
        let seconds = self.start.elapsed().as_secs_f64();
        let end = counters();
        PHASE.with(|p| p.set(self.outer));
        let mut state = lock();
        let state = state.get_or_insert_with(State::default);
        *state.phases.entry(self.pass).or_default() += seconds;
        if let (Some((cpu0, faults0)), Some((cpu1, faults1))) = (self.counters, end) {
            state.cpu_seconds += cpu1 - cpu0;
            state.minor_faults += faults1.saturating_sub(faults0);
            state.counted = true;
        }
    }
}

/// The process's CPU seconds (user + system) and minor page faults, from `/proc/self/stat`.
fn counters() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let minflt: u64 = f.get(7)?.parse().ok()?;
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some(((utime + stime) / ticks, minflt))
}

/// A scope for the product `[m, k] · [k, n]` named `what` (`x·W`, `dY·Wᵀ`, ...): kind
/// `matmul`, its shape as detail, `2 m k n` FLOPs.
pub fn matmul(what: &'static str, m: usize, k: usize, n: usize) -> Option<Scope> {
    scope(
        "matmul",
        || format!("{what} [{m}x{k}]·[{k}x{n}]"),
        || 2.0 * m as f64 * k as f64 * n as f64,
    )
}
