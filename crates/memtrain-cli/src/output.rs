//! What the subcommands share in their output: units, the memory report, and writing files.

use std::path::Path;

use anyhow::{Context, Result};
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
