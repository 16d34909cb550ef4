//! Malformed invocations of every subcommand but `index` (tested in `index.rs`): each exits
//! with 1 (our error) or 2 (a usage mistake clap found), prints one line on stderr, and never
//! panics (exit code 101). Issue 21.

mod common;

use common::*;

fn assert_clean_failure(args: &[&str]) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code();
    assert!(
        matches!(code, Some(1 | 2)),
        "memtrain {}: exit {code:?}, stderr: {stderr}",
        args.join(" ")
    );
    assert!(!stderr.contains("panicked"), "{}: {stderr}", args.join(" "));
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "memtrain {}: not one line: {stderr}",
        args.join(" ")
    );
    assert!(stderr.starts_with("error"), "{}: {stderr}", args.join(" "));
}

#[test]
fn should_fail_cleanly_on_malformed_invocations() {
    let dir = scratch("malformed");
    let out = dir.join("out");
    let out = out.to_str().unwrap();
    let missing = dir.join("missing");
    let missing = missing.to_str().unwrap();
    let text = dir.join("text.txt");
    std::fs::write(&text, "not a model").unwrap();
    let text = text.to_str().unwrap();
    let table: Vec<Vec<&str>> = vec![
        vec!["frobnicate"],
        vec!["train", "--stpes", "3"],
        vec!["train", "--steps"],
        vec!["train", "--steps", "-3"],
        vec!["train", "--steps", "1e3"],
        vec!["train", "--steps", "99999999999999999999999"],
        vec!["train", "--batch", "x", "--out", out],
        vec!["train", "--seq", "0", "--out", out],
        vec!["train", "--max-seq", "0", "--out", out],
        vec!["train", "--lr", "NaN", "--out", out],
        vec!["train", "--lr", "inf", "--out", out],
        vec!["train", "--device", "tpu", "--out", out],
        vec!["train", "--device", "cuda:x", "--out", out],
        vec!["train", "--tokenizer", "sentencepiece", "--out", out],
        vec!["train", "--policy", "act=", "--out", out],
        vec!["train", "--policy", "=,=,=", "--out", out],
        vec!["train", "--policy", "act=exact,act=exact", "--out", out],
        vec!["train", "--policy", "remat=budget:-1MiB", "--out", out],
        vec!["train", "--budget", "0", "--out", out],
        vec!["train", "--budget", "1/0", "--out", out],
        vec!["train", "--budget", "2/1", "--out", out],
        vec![
            "train",
            "--budget",
            "1/2",
            "--allow",
            "everything",
            "--out",
            out,
        ],
        vec!["train", "--resume", "--out", missing],
        vec!["train", "--init-from", missing, "--out", out],
        vec!["train", "--data", missing, "--out", out],
        vec!["train", "--data", dir.to_str().unwrap(), "--out", out],
        vec!["train", "--out", text, "--steps", "1"],
        vec!["train", "--eval-batches", "0", "--out", out, "--steps", "1"],
        vec!["bench", "--policies", ";;;"],
        vec!["bench", "--policies", "act=fewbit:99"],
        vec!["bench", "--budget", "lots"],
        vec!["bench", "--json", "/proc/nope/x.json", "--steps", "1"],
        vec!["plan", "--budget", "1KiB"],
        vec!["plan", "--budget", "0.0/1"],
        vec!["plan", "--policy", "remat=every:0"],
        vec!["table"],
        vec!["table", "--fn", "relu6", "--bits", "2"],
        vec!["table", "--fn", "gelu", "--bits", "0"],
        vec!["table", "--fn", "gelu", "--bits", "2", "--init", "chaos"],
        vec!["variance", "--policy", "act=exact"],
        vec!["variance", "--batches", "0"],
        vec!["compress", "--from", missing],
        vec!["compress", "--model", missing],
        vec!["compress", "--model", text],
        vec!["compress", "--from", missing, "--model", missing],
        vec!["embed", "--model", missing, "--text", "hi"],
        vec!["embed", "--model", text, "--text", "hi"],
        vec!["eval-embed", "--original", missing, "--compressed", missing],
    ];
    for args in &table {
        assert_clean_failure(args);
    }
}
