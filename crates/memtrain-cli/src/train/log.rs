//! How `memtrain train` shows its steps: a progress bar on a terminal, plain log lines
//! elsewhere or every `--log-every` steps.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use memtrain::train::StepStats;

use crate::output::{duration, mib};

/// Seconds between log lines when stderr is not a terminal and `--log-every` is not given.
const LOG_SECONDS: f64 = 10.0;

/// How the step-by-step progress shows: a bar on a terminal, and/or plain lines.
pub(super) struct Log {
    pub(super) bar: Option<ProgressBar>,
    every_steps: Option<u64>,
    last_line: Instant,
    start: Instant,
    pub(super) first_step: u64,
    total: u64,
    pub(super) tokens_per_step: f64,
}

impl Log {
    pub(super) fn new(total: u64, log_every: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
                )
                .expect("static template"),
            );
            bar
        });
        let now = Instant::now();
        Log {
            bar,
            every_steps: log_every,
            last_line: now,
            start: now,
            first_step: 0,
            total,
            tokens_per_step: 0.0,
        }
    }

    pub(super) fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    pub(super) fn step(&mut self, step: u64, stats: &StepStats, lr: f64) {
        let tps = self.tokens_per_step / stats.seconds.max(1e-12);
        if let Some(bar) = &self.bar {
            bar.set_position(step);
            bar.set_message(format!(
                "loss {:.4}  {tps:.0} tok/s  step peak {:.1} MiB",
                stats.loss,
                mib(stats.memory.peak_bytes)
            ));
        }
        let due = match self.every_steps {
            Some(0) => false,
            Some(n) => step.is_multiple_of(n),
            None => self.bar.is_none() && self.last_line.elapsed().as_secs_f64() >= LOG_SECONDS,
        };
        // The last step gets a line too, unless --log-every 0 asked for none.
        if !due && (step != self.total || self.every_steps == Some(0)) {
            return;
        }
        self.last_line = Instant::now();
        let done = step - self.first_step;
        let elapsed = self.start.elapsed().as_secs_f64();
        let eta = elapsed / done.max(1) as f64 * (self.total - step) as f64;
        self.println(&format!(
            "step {step}/{}  loss {:.4}  {tps:.0} tok/s  {:.3} s/step  lr {lr:.3e}  step peak {:.1} MiB  ETA {}",
            self.total,
            stats.loss,
            stats.seconds,
            mib(stats.memory.peak_bytes),
            duration(eta)
        ));
    }
}
