//! The `memtrain` binary end to end: bad input, resume after `kill -9`, bench JSON.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn memtrain() -> Command {
    Command::new(env!("CARGO_BIN_EXE_memtrain"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memtrain-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(args: &[&str]) -> Output {
    memtrain().args(args).output().unwrap()
}

/// A user mistake: non-zero exit, one line on stderr naming `needle`, no panic.
fn assert_user_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
}

const QUICK: [&str; 6] = ["--batch", "2", "--seq", "16", "--eval-batches", "1"];

fn train(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--out", out.to_str().unwrap()];
    args.extend_from_slice(&QUICK);
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn should_reject_bad_data_files() {
    let dir = scratch("data");
    let missing = dir.join("nope.txt");
    let empty = dir.join("empty.txt");
    let binary = dir.join("bin.txt");
    let tiny = dir.join("tiny.txt");
    std::fs::write(&empty, b"").unwrap();
    std::fs::write(&binary, [0x66, 0x6f, 0xff, 0xfe, 0x00]).unwrap();
    std::fs::write(&tiny, "ab").unwrap();
    for (path, needle) in [
        (&missing, "nope.txt"),
        (&empty, "empty"),
        (&binary, "UTF-8"),
        (&tiny, "2 tokens"),
    ] {
        let out = train(
            &dir.join("out"),
            &["--steps", "1", "--data", path.to_str().unwrap()],
        );
        assert_user_error(&out, needle);
    }
    assert!(
        !dir.join("out").join("latest").exists(),
        "a failed run wrote a checkpoint"
    );
}

#[test]
fn should_reject_bad_numbers_presets_and_policies() {
    let dir = scratch("args");
    let out = dir.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["train", "--out", out, "--steps", "0"],
            "--steps: got 0",
        ),
        (
            vec!["train", "--out", out, "--batch", "0"],
            "--batch: got \"0\"",
        ),
        (
            vec!["train", "--out", out, "--seq", "65"],
            "--seq: got \"65\"",
        ),
        (vec!["train", "--out", out, "--preset", "huge"], "\"huge\""),
        (
            vec!["train", "--out", out, "--policy", "color=red"],
            "\"color\"",
        ),
        (
            vec!["train", "--out", out, "--policy", "act=relu"],
            "\"relu\"",
        ),
        (vec!["train", "--out", out, "--lr", "-1"], "--lr"),
        (
            vec!["train", "--out", out, "--policy", "optim=galore:0"],
            "galore:RANK",
        ),
        (
            vec!["train", "--out", out, "--policy", "optim=galore:65"],
            "GaLore rank",
        ),
        (
            vec!["train", "--out", out, "--policy", "optim=galore:8:0"],
            "galore:RANK",
        ),
        (
            vec!["train", "--out", out, "--policy", "optim=naggs:0"],
            "naggs[:MU",
        ),
        (
            vec![
                "train",
                "--out",
                out,
                "--policy",
                "optim=naggs",
                "--lr",
                "0",
            ],
            "--lr",
        ),
        (
            vec!["train", "--out", out, "--policy", "weights=ttm:0"],
            "ttm:RANK",
        ),
        (
            vec!["bench", "--policies", "act=exact;attn=magic"],
            "\"magic\"",
        ),
        (vec!["bench", "--steps", "0"], "--steps: got 0"),
        (
            vec!["bench", "--preset", "tiny", "--seq", "1000"],
            "--seq: got \"1000\"",
        ),
    ] {
        assert_user_error(&run(&args), needle);
    }
}

#[test]
fn should_reject_missing_and_corrupt_checkpoints() {
    let dir = scratch("ckpt");
    let out = dir.join("run");
    assert_user_error(&train(&out, &["--steps", "2", "--resume"]), "latest");

    let ok = train(&out, &["--steps", "2", "--eval-every", "1"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let latest = std::fs::read_to_string(out.join("latest")).unwrap();
    let ckpt = out.join(latest.trim());
    // A truncated model file.
    let model = ckpt.join("model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    assert_user_error(
        &train(&out, &["--steps", "4", "--resume"]),
        "model.safetensors",
    );
    std::fs::write(&model, &bytes).unwrap();
    // A garbled state file.
    let state = ckpt.join("state.json");
    let good_state = std::fs::read(&state).unwrap();
    std::fs::write(&state, b"{ not json").unwrap();
    assert_user_error(&train(&out, &["--steps", "4", "--resume"]), "state.json");
    std::fs::write(&state, &good_state).unwrap();
    // A garbled optimizer file.
    let optim = ckpt.join("optimizer.bpk");
    let good_optim = std::fs::read(&optim).unwrap();
    std::fs::write(&optim, b"garbage").unwrap();
    assert_user_error(&train(&out, &["--steps", "4", "--resume"]), "optimizer.bpk");
    std::fs::write(&optim, &good_optim).unwrap();
    // Restored, it resumes.
    let ok = train(&out, &["--steps", "4", "--resume"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

fn final_loss(stdout: &[u8]) -> (u64, String) {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .rfind(|l| l.contains("val_loss"))
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

#[test]
fn should_resume_after_kill_9_to_the_same_loss() {
    let dir = scratch("resume");
    let steps = "60";
    let every = ["--eval-every", "10"];
    let straight = train(
        &dir.join("straight"),
        &[&["--steps", steps], &every[..]].concat(),
    );
    assert!(
        straight.status.success(),
        "{}",
        String::from_utf8_lossy(&straight.stderr)
    );

    // Start the same run, kill -9 it once it has written a checkpoint but not finished.
    let out = dir.join("killed");
    let mut args = vec!["train", "--out", out.to_str().unwrap(), "--steps", steps];
    args.extend_from_slice(&QUICK);
    args.extend_from_slice(&every);
    let mut child = memtrain()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !out.join("latest").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    let at = std::fs::read_to_string(out.join("latest")).unwrap();
    assert!(
        !status.success(),
        "the run finished before it was killed (latest: {at})"
    );
    assert_ne!(
        at.trim(),
        format!("step-{:06}", 60),
        "killed too late to test resuming"
    );

    let resumed = train(&out, &["--steps", steps, "--resume"]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let (s1, l1) = final_loss(&straight.stdout);
    let (s2, l2) = final_loss(&resumed.stdout);
    assert_eq!(s1, 60);
    assert_eq!((s1, &l1), (s2, &l2), "resumed from {at}");
}

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
fn should_checkpoint_and_resume_every_layer_variant() {
    let dir = scratch("variants");
    for (i, spec) in [
        "act=inverted,norm=output,attn=memeff,weights=ttm:4:all",
        "optim=naggs",
        "optim=galore:4:3",
        "remat=every:1,act=inverted",
    ]
    .into_iter()
    .enumerate()
    {
        let policy = ["--policy", spec, "--eval-every", "2"];
        let straight = train(
            &dir.join(format!("straight{i}")),
            &[&["--steps", "4"], &policy[..]].concat(),
        );
        assert!(
            straight.status.success(),
            "{}",
            String::from_utf8_lossy(&straight.stderr)
        );
        let out = dir.join(format!("split{i}"));
        let first = train(&out, &[&["--steps", "2"], &policy[..]].concat());
        assert!(
            first.status.success(),
            "{}",
            String::from_utf8_lossy(&first.stderr)
        );
        let resumed = train(&out, &["--steps", "4", "--resume"]);
        assert!(
            resumed.status.success(),
            "{}",
            String::from_utf8_lossy(&resumed.stderr)
        );
        assert_eq!(
            final_loss(&straight.stdout),
            final_loss(&resumed.stdout),
            "{spec}"
        );
        let key = spec.split(',').next().unwrap();
        assert!(
            String::from_utf8_lossy(&resumed.stdout).contains(key),
            "{spec}"
        );
    }
}

#[test]
fn should_print_the_few_bit_table_as_json() {
    let out = run(&["table", "--act", "relu", "--bits", "1", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let borders: Vec<f64> = serde_json::from_value(table["borders"].clone()).unwrap();
    let levels: Vec<f64> = serde_json::from_value(table["levels"].clone()).unwrap();
    assert_eq!(borders.len(), 3);
    assert_eq!((borders[0], borders[2]), (-10.0, 10.0));
    assert!(borders[1].abs() < 1e-9 && levels[0].abs() < 1e-12 && (levels[1] - 1.0).abs() < 1e-12);
}

#[test]
fn should_report_the_sketch_variance() {
    let out = run(&[
        "variance",
        "--batch",
        "2",
        "--seq",
        "16",
        "--policy",
        "linear=sketch:0.5",
        "--batches",
        "3",
        "--seeds",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        r["minibatch_variance"].as_f64().unwrap() > 0.0
            && r["sketch_variance"].as_f64().unwrap() > 0.0
    );
    assert_user_error(
        &run(&["variance", "--policy", "linear=exact"]),
        "linear=exact",
    );
    assert_user_error(&run(&["variance", "--block", "9"]), "--block: got \"9\"");
}

#[test]
fn should_compress_a_checkpoint_and_fine_tune_it() {
    let dir = scratch("compress");
    let dense = dir.join("dense");
    let first = train(&dense, &["--steps", "2"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let from = dense.to_str().unwrap();
    let tt = dir.join("tt");
    let out = run(&[
        "compress",
        "--from",
        from,
        "--rank",
        "4",
        "--out",
        tt.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("block.1.mlp.proj") && !stdout.contains("attn.qkv"),
        "{stdout}"
    );
    assert!(stdout.contains("[1, 4, 4, 1]"), "{stdout}");
    // The compressed checkpoint fine-tunes under weights=ttm:4.
    let resumed = train(&tt, &["--steps", "4", "--resume"]);
    let text = String::from_utf8_lossy(&resumed.stdout);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(
        text.contains("weights=ttm:4,") && text.contains("step 4"),
        "{text}"
    );
    // Accuracy-driven, all linears, JSON: every layer within eps.
    let out = run(&[
        "compress", "--from", from, "--eps", "0.5", "--all", "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers = report.as_array().unwrap();
    assert_eq!(layers.len(), 8);
    for l in layers {
        assert!(l["rel_error"].as_f64().unwrap() <= 0.5 + 1e-6, "{l}");
        assert!(
            l["params_after"].as_u64() <= l["params_before"].as_u64(),
            "{l}"
        );
    }
    // Bad input: one line, no panic.
    for (args, needle) in [
        (vec!["compress", "--from", from], "--rank or --eps"),
        (
            vec!["compress", "--from", from, "--rank", "0"],
            "--rank: got 0",
        ),
        (
            vec!["compress", "--from", from, "--eps", "2"],
            "--eps: got 2",
        ),
        (
            vec!["compress", "--from", from, "--eps", "0.1", "--out", "x"],
            "--out with --eps",
        ),
        (
            vec!["compress", "--from", "/nonexistent/memtrain", "--rank", "2"],
            "latest",
        ),
    ] {
        assert_user_error(&run(&args), needle);
    }
}

#[test]
fn should_plan_a_budget_or_name_the_smallest() {
    // The planner: variants per block and the schedule.
    let args = [
        "plan", "--preset", "tiny", "--batch", "4", "--seq", "32", "--budget", "0.9",
    ];
    let out = run(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("plan: blocks") && stdout.contains("best uniform"),
        "{stdout}"
    );
    assert!(
        stdout.contains("plan policy: ") && stdout.contains("remat=budget:"),
        "{stdout}"
    );
    // A fixed policy: the remat schedule only.
    let out = run(&[
        "plan",
        "--preset",
        "tiny",
        "--batch",
        "4",
        "--seq",
        "32",
        "--budget",
        "4MiB",
        "--policy",
        "attn=memeff",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("schedule: ") && stdout.contains("predicted: peak"),
        "{stdout}"
    );
    assert!(
        stdout.contains("block1") && stdout.contains("head"),
        "{stdout}"
    );
    assert_user_error(&run(&[&args[..], &["--allow", "all"]].concat()), "--allow");
    assert_user_error(
        &run(&["plan", "--preset", "tiny", "--budget", "1/64"]),
        "smallest",
    );
    for (args, needle) in [
        (
            vec!["plan", "--preset", "tiny", "--budget", "4096B"],
            "at least",
        ),
        (vec!["plan", "--preset", "tiny", "--budget", "12XB"], "12XB"),
        (
            vec!["plan", "--preset", "tiny", "--budget", "3/2"],
            "fraction in (0, 1]",
        ),
        (
            vec![
                "train",
                "--out",
                "/nonexistent/x",
                "--policy",
                "remat=every:0",
            ],
            "every:K",
        ),
    ] {
        assert_user_error(&run(&args), needle);
    }
    // An infeasible budget in train fails before the first step, without a checkpoint.
    let dir = scratch("remat-budget");
    let out = train(
        &dir.join("out"),
        &["--policy", "remat=budget:4KiB", "--steps", "2"],
    );
    assert_user_error(&out, "at least");
    assert!(!dir.join("out").join("latest").exists());
}

#[test]
fn should_fine_tune_with_adapters_from_a_checkpoint() {
    let dir = scratch("adapters");
    let base = dir.join("base");
    let first = train(&base, &["--steps", "2"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let from = base.to_str().unwrap();
    for spec in ["adapt=lora:2", "adapt=lotr:2"] {
        let out = dir.join(spec.replace([':', '='], "-"));
        let run_ = train(
            &out,
            &["--steps", "3", "--init-from", from, "--policy", spec],
        );
        let text = String::from_utf8_lossy(&run_.stdout);
        assert!(
            run_.status.success(),
            "{}",
            String::from_utf8_lossy(&run_.stderr)
        );
        assert!(text.contains(spec) && text.contains("step 3"), "{text}");
        // Resuming an adapter run reproduces the uninterrupted one.
        let resumed = train(&out, &["--steps", "4", "--resume"]);
        let straight = train(
            &dir.join(format!("{}-straight", spec.replace([':', '='], "-"))),
            &["--steps", "4", "--init-from", from, "--policy", spec],
        );
        assert!(resumed.status.success() && straight.status.success());
        assert_eq!(
            final_loss(&resumed.stdout),
            final_loss(&straight.stdout),
            "{spec}"
        );
    }
    for (args, needle) in [
        (vec!["--init-from", "/nonexistent/memtrain"], "--init-from"),
        (
            vec!["--init-from", from, "--max-seq", "32"],
            "is not this run's",
        ),
        (
            vec!["--init-from", from, "--policy", "adapt=lora:0"],
            "lora:RANK",
        ),
        (
            vec!["--init-from", from, "--policy", "adapt=lora:65"],
            "adapter rank",
        ),
    ] {
        let mut a = vec!["--steps", "2"];
        a.extend(args);
        assert_user_error(&train(&dir.join("bad"), &a), needle);
    }
}

/// A float32 `.npy` file of shape `[rows, d]` (possibly empty) written by hand.
fn write_npy(path: &Path, rows: usize, d: usize, values: &[f32]) {
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

#[test]
fn should_build_query_and_bench_an_index_or_reject_bad_input() {
    let dir = scratch("index");
    let data = memtrain_index::data::clustered(600, 8, 6, 0);
    let queries = memtrain_index::data::clustered(40, 8, 6, 1);
    let (d, q) = (dir.join("data.npy"), dir.join("queries.npy"));
    memtrain_index::data::write_npy(&d, &data).unwrap();
    memtrain_index::data::write_npy(&q, &queries).unwrap();
    let idx = dir.join("data.idx");
    let (d_s, q_s, idx_s) = (
        d.to_str().unwrap(),
        q.to_str().unwrap(),
        idx.to_str().unwrap(),
    );
    let quick = ["--steps", "20", "--batch", "256", "--rank", "4"];

    let mut args = vec!["index", "build", "--data", d_s, "--out", idx_s];
    args.extend_from_slice(&quick);
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "index",
        "query",
        "--index",
        idx_s,
        "--queries",
        q_s,
        "--json",
        "--beam",
        "4",
        "--probe",
        "32",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 40);
    assert!(
        rows.iter()
            .all(|r| r["ids"].as_array().unwrap().len() == 10)
    );

    // Bad input: a shape too small, NaN, no points, a query of another dimension, a
    // truncated index, a foreign file.
    let out = run(&[
        "index", "build", "--data", d_s, "--out", idx_s, "--shape", "4,4,4",
    ]);
    assert_user_error(&out, "product 64");
    let nan = dir.join("nan.npy");
    write_npy(&nan, 1, 2, &[1.0, f32::NAN]);
    let out = run(&[
        "index",
        "build",
        "--data",
        nan.to_str().unwrap(),
        "--out",
        idx_s,
    ]);
    assert_user_error(&out, "NaN in point 0");
    let empty = dir.join("empty.npy");
    write_npy(&empty, 0, 8, &[]);
    let out = run(&[
        "index",
        "build",
        "--data",
        empty.to_str().unwrap(),
        "--out",
        idx_s,
    ]);
    assert_user_error(&out, "0 points");
    let wide = dir.join("wide.npy");
    write_npy(&wide, 1, 5, &[0.0; 5]);
    let out = run(&[
        "index",
        "query",
        "--index",
        idx_s,
        "--queries",
        wide.to_str().unwrap(),
    ]);
    assert_user_error(&out, "dimension mismatch");
    let bytes = std::fs::read(&idx).unwrap();
    let cut = dir.join("cut.idx");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = run(&[
        "index",
        "query",
        "--index",
        cut.to_str().unwrap(),
        "--queries",
        q_s,
    ]);
    assert_user_error(&out, "truncated");
    let out = run(&["index", "query", "--index", d_s, "--queries", q_s]);
    assert_user_error(&out, "not a memtrain index");
    let out = run(&[
        "index",
        "query",
        "--index",
        idx_s,
        "--queries",
        q_s,
        "--beam",
        "2,x",
    ]);
    assert_user_error(&out, "--beam");

    // Bench JSON: every method, exactly the documented keys.
    let json = dir.join("bench.json");
    let mut args = vec![
        "index",
        "bench",
        "--data",
        d_s,
        "--queries",
        q_s,
        "--json",
        json.to_str().unwrap(),
        "--kmeans-iters",
        "2",
    ];
    args.extend_from_slice(&quick);
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let mut methods = std::collections::BTreeSet::new();
    for row in rows.as_array().unwrap() {
        let keys: std::collections::BTreeSet<&str> = row
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let want: std::collections::BTreeSet<&str> = [
            "method",
            "params",
            "recall_at_10",
            "qps",
            "build_seconds",
            "index_bytes",
        ]
        .into();
        assert_eq!(keys, want);
        methods.insert(row["method"].as_str().unwrap().to_string());
        let recall = row["recall_at_10"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&recall));
    }
    let all: std::collections::BTreeSet<String> = ["exact", "hnsw", "ivf", "tt"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(methods, all);
    // Scanning every leaf is exact.
    let tt_max = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["method"] == "tt")
        .map(|r| r["recall_at_10"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(tt_max, 1.0);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn minilm_dir() -> Option<PathBuf> {
    memtrain::bert::fetched_model_dir()
}

#[test]
fn should_embed_texts_or_name_the_missing_model() {
    let out = run(&["embed", "--model", "/nonexistent/minilm", "--text", "hi"]);
    assert_user_error(&out, "/nonexistent/minilm");

    let Some(dir) = minilm_dir() else {
        eprintln!("skipping the embedding half: run scripts/fetch-minilm.sh");
        return;
    };
    let model = dir.to_str().unwrap();
    let texts = [
        "A man is eating food.",
        "Hi",
        "A man is eating a piece of bread.",
    ];
    let mut args = vec!["embed", "--model", model, "--json", "--batch", "2"];
    for t in texts {
        args.extend(["--text", t]);
    }
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Vec<f64>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), texts.len());
    for row in &rows {
        assert_eq!(row.len(), 384);
        let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    // Input order: food is closer to bread (third) than to "Hi" (second).
    let cos = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    assert!(cos(&rows[0], &rows[2]) > cos(&rows[0], &rows[1]) + 0.2);

    let out = run(&["embed", "--model", model, "--text", "Hi"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("dim 384 norm 1.0000"), "{stdout}");
}

#[test]
fn should_compress_a_bert_or_reject_bad_input() {
    let dir = scratch("bert-compress");
    assert_user_error(
        &run(&["compress", "--method", "svd", "--ratio", "2"]),
        "missing --from or --model",
    );
    assert_user_error(
        &run(&["compress", "--from", "a", "--model", "b", "--ratio", "2"]),
        "--from and --model both given",
    );
    for (method, needle) in [("cp-q:9", "2..=8"), ("pca", "tucker2")] {
        let out = run(&[
            "compress",
            "--model",
            "/nonexistent/minilm",
            "--method",
            method,
            "--ratio",
            "2",
        ]);
        assert_user_error(&out, needle);
    }
    let out = run(&[
        "compress",
        "--model",
        "/nonexistent/minilm",
        "--method",
        "svd",
        "--ratio",
        "2",
    ]);
    assert_user_error(&out, "/nonexistent/minilm");
    let foreign = dir.join("gpt2");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("config.json"), r#"{"model_type": "gpt2"}"#).unwrap();
    let out = run(&[
        "compress",
        "--model",
        foreign.to_str().unwrap(),
        "--method",
        "svd",
        "--ratio",
        "2",
    ]);
    assert_user_error(&out, "not a BERT model");
    let out = run(&[
        "eval-embed",
        "--model",
        "/nonexistent/minilm",
        "--compressed",
        "/nonexistent/c",
        "--data",
        "/nonexistent/data.txt",
    ]);
    assert_user_error(&out, "data.txt");

    let Some(model_dir) = minilm_dir() else {
        eprintln!("skipping the MiniLM half: run scripts/fetch-minilm.sh");
        return;
    };
    let model = model_dir.to_str().unwrap();
    let out = run(&[
        "compress", "--model", model, "--method", "svd", "--ratio", "1000",
    ]);
    assert_user_error(&out, "1000");
    let out = run(&[
        "compress",
        "--model",
        model,
        "--method",
        "svd",
        "--ratio",
        "2",
        "--iterative",
        "--data",
        "/nonexistent/lines.txt",
    ]);
    assert_user_error(&out, "lines.txt");

    let data = dir.join("lines.txt");
    let lines: Vec<String> = (0..12)
        .map(|i| {
            format!(
                "Sentence number {i} is about {}.",
                ["cats", "ships", "rain"][i % 3]
            )
        })
        .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let compressed = dir.join("svd4");
    let out = run(&[
        "compress",
        "--model",
        model,
        "--method",
        "svd",
        "--ratio",
        "4",
        "--json",
        "--out",
        compressed.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["layers"].as_array().unwrap().len(), 36);
    let (before, after) = (
        report["linear_params_before"].as_u64().unwrap(),
        report["linear_params_after"].as_u64().unwrap(),
    );
    assert!(4 * after <= before, "{before} -> {after}");
    let out = run(&[
        "eval-embed",
        "--model",
        model,
        "--compressed",
        compressed.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--lines",
        "12",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let eval: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(eval["lines"], 12);
    let cos = eval["mean_cosine"].as_f64().unwrap();
    assert!(cos > 0.0 && cos <= 1.0 + 1e-6, "mean cosine {cos}");
    let agree = eval["neighbour_agreement"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&agree), "{agree}");
    let bytes = |m: &str| eval[m]["model_bytes"].as_u64().unwrap();
    let linear = |m: &str| eval[m]["linear_bytes"].as_u64().unwrap();
    assert!(4 * linear("compressed") <= linear("original"));
    assert_eq!(
        bytes("original") - bytes("compressed"),
        linear("original") - linear("compressed")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
