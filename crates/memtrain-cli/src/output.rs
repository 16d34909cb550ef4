//! What the subcommands share in their output: units, the memory report, and writing files.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressFinish, ProgressStyle};
use memtrain::memory::MemoryReport;

/// Bytes in MiB.
pub fn mib(bytes: impl Into<u64>) -> f64 {
    bytes.into() as f64 / (1024.0 * 1024.0)
}

/// Bytes (a `usize` count) in MiB.
pub fn mib_usize(bytes: usize) -> f64 {
    mib(bytes as u64)
}

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Prints a step's memory report in MiB, one field a line.
pub fn print_report(r: &MemoryReport) {
    println!("memory report (last step, MiB):");
    for (name, v) in [
        ("param_bytes", r.param_bytes),
        ("grad_bytes", r.grad_bytes),
        ("optimizer_bytes", r.optimizer_bytes),
        ("activation_bytes", r.activation_bytes),
        ("peak_bytes", r.peak_bytes),
    ] {
        println!("  {name:<17} {:>10.2}", mib(v));
    }
}

/// Bytes as KiB, MiB or GiB, whichever reads best (plain bytes below 1 KiB).
pub fn human_bytes(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b < KIB {
        format!("{bytes} B")
    } else if b < KIB * KIB {
        format!("{:.1} KiB", b / KIB)
    } else if b < KIB * KIB * KIB {
        format!("{:.2} MiB", b / (KIB * KIB))
    } else {
        format!("{:.2} GiB", b / (KIB * KIB * KIB))
    }
}

/// A compression factor, `before / after`, as every `ratio` column prints it: `4.00x`
/// (below `1.00x` the result is larger than what it replaced).
pub fn factor(before: usize, after: usize) -> f64 {
    before as f64 / after.max(1) as f64
}

/// Seconds between two plain progress lines when stderr is not a terminal, unless the
/// environment variable `MEMTRAIN_PROGRESS_SECONDS` says otherwise (0: a line per update).
const PLAIN_EVERY_SECONDS: f64 = 5.0;

/// Progress of a long step on stderr with an estimate of the time left: a bar on a terminal;
/// elsewhere (a log file, CI, `nohup`) a plain line now and then (`PLAIN_EVERY_SECONDS`), so
/// that logs hold no control characters. Dropping it clears the bar.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    len: u64,
    start: Instant,
    last_line: Instant,
    every: Duration,
}

impl Progress {
    /// Progress over `len` units, shown as `{label} {pos}/{len}` (e.g. label `compress: layer`).
    pub fn new(label: &str, len: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let style = ProgressStyle::with_template(
                "{prefix} {pos}/{len} {bar:30} [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .expect("a valid template");
            ProgressBar::new(len)
                .with_style(style)
                .with_prefix(label.to_string())
                .with_finish(ProgressFinish::AndClear)
        });
        let every = std::env::var("MEMTRAIN_PROGRESS_SECONDS")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or(PLAIN_EVERY_SECONDS);
        let now = Instant::now();
        Progress {
            bar,
            label: label.to_string(),
            len,
            start: now,
            last_line: now,
            every: Duration::from_secs_f64(every),
        }
    }

    /// Changes the total (for work whose size is known only once it starts).
    pub fn set_total(&mut self, len: u64) {
        self.len = len;
        if let Some(bar) = &self.bar {
            bar.set_length(len);
        }
    }

    /// Shows `pos` of the total done, with `msg` beside it.
    pub fn set(&mut self, pos: u64, msg: &str) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
            bar.set_message(msg.to_string());
            return;
        }
        let now = Instant::now();
        if now.duration_since(self.last_line) < self.every {
            return;
        }
        self.last_line = now;
        let elapsed = now.duration_since(self.start).as_secs_f64();
        let eta = match pos {
            0 => "?".to_string(),
            p => format!(
                "{:.1} s",
                elapsed / p as f64 * self.len.saturating_sub(p) as f64
            ),
        };
        let msg = if msg.is_empty() {
            String::new()
        } else {
            format!(" {msg}")
        };
        eprintln!(
            "{} {pos}/{}{msg} ({elapsed:.1} s elapsed, ETA {eta})",
            self.label, self.len
        );
    }

    /// Runs `f` (which prints) with the bar hidden, so that its lines do not garble it.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(f),
            None => f(),
        }
    }
}

/// Seconds as `1h 02m`, `3m 20s` or `12.3 s`.
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0);
    if s >= 3600.0 {
        format!(
            "{}h {:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    } else if s >= 60.0 {
        format!("{}m {:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else {
        format!("{s:.1} s")
    }
}

/// Integers with thousands separators: `120,576`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `memtrain bench --profile`: one policy's profile over `steps` timed steps, per step.
pub fn print_profile(label: &str, p: &memtrain::profile::Profile, steps: usize) {
    use memtrain::profile::Pass;
    let per = steps.max(1) as f64;
    let total = p.total_seconds().max(1e-12);
    let rate = |flops: f64, s: f64| {
        if flops > 0.0 && s > 0.0 {
            format!("{:8.1}", flops / s / 1e9)
        } else {
            format!("{:>8}", "")
        }
    };
    println!("profile of {label}: {steps} timed steps, per step (GFLOP: a multiply-add is 2)");
    println!(
        "  {:<8} {:<13} {:<36} {:>5} {:>8} {:>6} {:>7} {:>8}",
        "pass", "kind", "detail", "calls", "ms", "share", "GFLOP", "GFLOP/s"
    );
    let row = |pass: &str, kind: &str, detail: &str, calls: String, s: f64, flops: f64| {
        println!(
            "  {pass:<8} {kind:<13} {detail:<36} {calls:>5} {:>8.1} {:>5.1}% {:>7.2} {}",
            1e3 * s / per,
            100.0 * s / total,
            flops / 1e9 / per,
            rate(flops, s)
        );
    };
    for pass in [Pass::Forward, Pass::Backward, Pass::Update] {
        let mut entries: Vec<_> = p.entries.iter().filter(|e| e.pass == pass).collect();
        entries.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        for e in entries {
            let calls = format!("{:.0}", e.calls as f64 / per);
            row(pass.name(), e.kind, &e.detail, calls, e.seconds, e.flops);
        }
        let other = match pass {
            Pass::Forward => "burn's ops outside a scope (adds, reshapes)",
            Pass::Backward => "burn's backward of its own ops",
            Pass::Update => "outside the optimizer",
        };
        if p.phase_seconds(pass) > 0.0 {
            row(
                pass.name(),
                "(unclaimed)",
                other,
                "-".into(),
                p.unclaimed_seconds(pass),
                0.0,
            );
        }
    }
    let flops: f64 = p.entries.iter().map(|e| e.flops).sum();
    row("step", "total", "", "-".into(), total, flops);
    let mut kinds: Vec<(&str, f64, f64)> = Vec::new();
    for e in &p.entries {
        match kinds.iter_mut().find(|k| k.0 == e.kind) {
            Some(k) => (k.1, k.2) = (k.1 + e.seconds, k.2 + e.flops),
            None => kinds.push((e.kind, e.seconds, e.flops)),
        }
    }
    kinds.sort_by(|a, b| b.1.total_cmp(&a.1));
    let by_kind: Vec<String> = kinds
        .iter()
        .map(|(k, s, f)| format!("{k} {:.1} ms{}", 1e3 * s / per, rate(*f, *s).trim_end()))
        .collect();
    println!("  by kind (ms, GFLOP/s): {}", by_kind.join(", "));
    if let (Some(cpu), Some(faults)) = (p.cpu_seconds, p.minor_faults) {
        println!(
            "  cores busy {:.2} of {} (CPU seconds over wall seconds); {:.0} minor page faults a step",
            cpu / total,
            std::thread::available_parallelism().map_or(1, usize::from),
            faults as f64 / per
        );
    }
}
