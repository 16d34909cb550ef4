//! What every test of the `memtrain` binary shares: running it, scratch directories, and the
//! checks of a success and of a user mistake.

// Each test file uses the helpers it needs; the rest are dead code in that binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn memtrain() -> Command {
    Command::new(env!("CARGO_BIN_EXE_memtrain"))
}

pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memtrain-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn run(args: &[&str]) -> Output {
    memtrain().args(args).output().unwrap()
}

/// Runs `memtrain args` and asserts it succeeded (printing its stderr when not).
pub fn run_ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "memtrain {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `memtrain args` and asserts a user mistake naming `needle` ([`assert_user_error`]).
pub fn run_err(args: &[&str], needle: &str) {
    assert_user_error(&run(args), needle);
}

/// A user mistake: non-zero exit, one line on stderr naming `needle`, no panic.
pub fn assert_user_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
}

pub const QUICK: [&str; 6] = ["--batch", "2", "--seq", "16", "--eval-batches", "1"];

pub fn train(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--out", out.to_str().unwrap()];
    args.extend_from_slice(&QUICK);
    args.extend_from_slice(extra);
    run(&args)
}

pub fn final_loss(stdout: &[u8]) -> (u64, String) {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .rfind(|l| l.starts_with("step ") && l.contains("val_loss"))
        .unwrap_or_else(|| panic!("no val_loss line in: {text}"))
        .to_string();
    let step = line
        .trim_start_matches("step ")
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    (step, line)
}

/// A float32 `.npy` file of shape `[rows, d]` (possibly empty) written by hand.
pub fn write_npy(path: &Path, rows: usize, d: usize, values: &[f32]) {
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {d}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

pub fn minilm_dir() -> Option<PathBuf> {
    memtrain::bert::fetched_model_dir()
}
