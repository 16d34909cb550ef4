//! Whole runs, as the `memtrain` commands make them: [`fit`] trains a model from start to
//! finish (fresh, resumed or fine-tuned, optionally planned for a memory budget) with
//! evaluations, `metrics.csv` and checkpoints; [`bench()`] trains several policies side by side
//! and reports memory, time and loss measured in one process.
//!
//! Both report progress through a callback, so a program shows it as it likes (the CLI draws a
//! progress bar); neither prints.

mod bench;
mod fit;

pub use bench::{Analytic, BenchConfig, BenchPlan, BenchReport, BenchRow, bench};
pub use fit::{FitBudget, FitEvent, FitOptions, FitSummary, METRICS_HEADER, Start, fit};
