//! `memtrain bench` end to end: the JSON keys, the same loss for the same policy, bad input.

mod common;

use common::*;

#[test]
fn should_write_bench_json_with_exactly_the_documented_keys() {
    let dir = scratch("bench");
    let json = dir.join("out.json");
    let out = run(&[
        "bench",
        "--preset",
        "tiny",
        "--batch",
        "2",
        "--seq",
        "16",
        "--steps",
        "2",
        "--policies",
        "act=exact;attn=exact",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let mut keys: Vec<&str> = rows[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    let mut want = vec![
        "policy",
        "preset",
        "batch",
        "seq",
        "param_bytes",
        "grad_bytes",
        "optimizer_bytes",
        "activation_bytes",
        "peak_bytes",
        "step_seconds_median",
        "final_loss",
    ];
    want.sort();
    assert_eq!(keys, want);
    // Same seed and batches: the same loss for the same (plain) policy twice.
    assert_eq!(rows[0]["final_loss"], rows[1]["final_loss"]);
    assert!(rows[0]["activation_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn should_bench_and_profile_in_bf16() {
    let out = run(&[
        "bench",
        "--preset",
        "tiny",
        "--batch",
        "2",
        "--seq",
        "16",
        "--steps",
        "2",
        "--policies",
        "linear=gemm",
        "--precision",
        "bf16",
        "--profile",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("linear=gemm,precision=bf16"), "{text}");
    assert!(
        text.contains("profile of linear=gemm,precision=bf16: 1 timed steps"),
        "{text}"
    );
    for needle in [
        "matmul",
        "[32x64]·[64x256]",
        "attention",
        "optimizer",
        "cores busy",
    ] {
        assert!(text.contains(needle), "no {needle:?} in {text}");
    }
}

#[test]
fn should_reject_bad_bench_arguments() {
    for (args, needle) in [
        (
            vec!["bench", "--policies", "act=exact;attn=magic"],
            "\"magic\"",
        ),
        (vec!["bench", "--steps", "0"], "--steps: got 0"),
        (
            vec!["bench", "--preset", "tiny", "--seq", "1000"],
            "--seq: got \"1000\"",
        ),
        // Was: the budget's plain/uniform/plan rows silently replaced the policies.
        (
            vec!["bench", "--budget", "1/2", "--policies", "act=inverted"],
            "--policies",
        ),
        (
            vec!["bench", "--precision", "fp16", "--policies", "linear=gemm"],
            "--precision: got \"fp16\", expected one of fp32, bf16",
        ),
        (
            vec!["bench", "--precision", "bf16", "--policies", "act=inverted"],
            "linear=gemm",
        ),
        (
            vec!["bench", "--precision", "bf16", "--budget", "1/2"],
            "--precision with --budget",
        ),
    ] {
        run_err(&args, needle);
    }
}
