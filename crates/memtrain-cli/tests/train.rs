//! `memtrain train` end to end: bad input, corrupt checkpoints, resume after `kill -9`, every
//! layer variant checkpointed and resumed, fine-tuning with adapters.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

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
    ] {
        run_err(&args, needle);
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
