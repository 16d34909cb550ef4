//! `memtrain train` end to end: bad input, corrupt checkpoints, resume after `kill -9`, every
//! layer variant checkpointed and resumed, fine-tuning with adapters.

mod common;

use std::process::Stdio;
use std::time::Duration;

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

/// Kills the run with SIGKILL at seeded random instants, several times, with a checkpoint
/// every step so that many kills land inside a checkpoint write; each time it resumes from
/// the last complete checkpoint, and it reaches the uninterrupted run's loss at the same step.
#[test]
fn should_resume_after_kill_9_at_random_points_to_the_same_loss() {
    let dir = scratch("resume");
    let steps = "40";
    let every = ["--eval-every", "1"];
    let straight = train(
        &dir.join("straight"),
        &[&["--steps", steps], &every[..]].concat(),
    );
    assert!(
        straight.status.success(),
        "{}",
        String::from_utf8_lossy(&straight.stderr)
    );

    let out = dir.join("killed");
    let mut seed = 0x5eed_u64;
    let mut delay_ms = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        10 + (seed >> 33) % 150
    };
    let (mut kills, mut mid_write, mut resumes) = (0, 0, 0);
    loop {
        let mut args = vec!["train", "--out", out.to_str().unwrap(), "--steps", steps];
        args.extend_from_slice(&QUICK);
        args.extend_from_slice(&every);
        // Killed before its first checkpoint, a run starts again (replacing its metrics).
        let resume = out.join("latest").exists();
        args.push(if resume { "--resume" } else { "--overwrite" });
        resumes += usize::from(resume);
        if kills == 6 {
            let last = run(&args);
            assert!(
                last.status.success(),
                "{}",
                String::from_utf8_lossy(&last.stderr)
            );
            let (s1, l1) = final_loss(&straight.stdout);
            let (s2, l2) = final_loss(&last.stdout);
            assert_eq!(s1, 40);
            assert_eq!((s1, &l1), (s2, &l2), "after {kills} kills");
            break;
        }
        let mut child = memtrain()
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms()));
        child.kill().unwrap(); // SIGKILL; a no-op if it already finished
        let status = child.wait().unwrap();
        let last_written = std::fs::read_to_string(out.join("latest"))
            .is_ok_and(|l| l.trim() == format!("step-{:06}", steps.parse::<u32>().unwrap()));
        if status.success() || last_written {
            // It finished before the kill (or was killed after its last checkpoint, with
            // nothing left to resume): start over with a shorter delay next time.
            std::fs::remove_dir_all(&out).unwrap();
            continue;
        }
        kills += 1;
        mid_write += std::fs::read_dir(&out)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(".step-"))
                    .count()
            })
            .unwrap_or(0);
        if let Ok(latest) = std::fs::read_to_string(out.join("latest")) {
            let ckpt = out.join(latest.trim());
            assert!(
                ckpt.join("checksums.json").is_file(),
                "latest names an incomplete checkpoint {}",
                ckpt.display()
            );
        }
    }
    eprintln!("{kills} kills ({mid_write} inside a checkpoint write), {resumes} resumes");
    assert!(resumes > 0, "no kill left a checkpoint to resume from");
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

// Issue 21: inputs that used to panic or mislead. Each test below failed on the code before
// the fix (the panic or the silent behaviour is quoted).

/// Was: `assert!` in GaLore's projector on the first step ("GaLore rank 8 exceeds the smaller
/// side of a [128, 4] matrix"): LoRA's factors are the trained matrices.
#[test]
fn should_reject_a_galore_rank_above_an_adapter_rank() {
    let dir = scratch("galore-lora");
    for policy in ["optim=galore:8,adapt=lora:4", "optim=galore:8,adapt=lotr:4"] {
        let out = train(&dir.join("out"), &["--steps", "1", "--policy", policy]);
        assert_user_error(&out, "GaLore rank");
    }
}

/// Was: GaLore `panic!`ed on the NaN gradient at a projector refresh.
#[test]
fn should_stop_with_an_error_when_the_loss_diverges() {
    let dir = scratch("diverge");
    for policy in ["optim=galore:4:1", "optim=adamw"] {
        let out = dir.join(policy.replace([':', '='], "-"));
        let run = train(
            &out,
            &[
                "--steps",
                "8",
                "--eval-every",
                "1",
                "--warmup",
                "0",
                "--lr",
                "1e30",
                "--policy",
                policy,
            ],
        );
        assert_user_error(&run, "diverged at step");
        // What `latest` names is complete, and the run resumes from it (and diverges again).
        let latest = std::fs::read_to_string(out.join("latest")).unwrap();
        assert!(out.join(latest.trim()).join("state.json").is_file());
        assert_user_error(&train(&out, &["--steps", "8", "--resume"]), "diverged");
    }
}

/// Was: `expect` on a zero NAG-GS constant ("NaggsConfig: mu positive") and on a sketch
/// ratio out of range, reached by a hand-edited `state.json`.
#[test]
fn should_reject_a_hand_edited_policy_in_state_json() {
    let dir = scratch("state-policy");
    let out = dir.join("run");
    let ok = train(
        &out,
        &["--steps", "1", "--policy", "optim=naggs,linear=sketch:0.5"],
    );
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let latest = std::fs::read_to_string(out.join("latest")).unwrap();
    let state = out.join(latest.trim()).join("state.json");
    let good = std::fs::read_to_string(&state).unwrap();
    for (from, to) in [
        ("\"mu_bp\": 10000", "\"mu_bp\": 0"),
        ("\"gamma_bp\": 10000", "\"gamma_bp\": 0"),
        ("\"ratio_bp\": 5000", "\"ratio_bp\": 60000"),
        ("\"ratio_bp\": 5000", "\"ratio_bp\": 0"),
    ] {
        assert!(good.contains(from), "{from} not in {good}");
        std::fs::write(&state, good.replace(from, to)).unwrap();
        assert_user_error(&train(&out, &["--steps", "2", "--resume"]), "state.json");
    }
    std::fs::write(&state, good).unwrap();
}

/// Was: the allocation aborted the process ("memory allocation of ... failed").
#[test]
fn should_refuse_a_model_larger_than_the_machine_before_building_it() {
    let dir = scratch("huge");
    let out = dir.join("out");
    let out = out.to_str().unwrap();
    for (args, needle) in [
        (vec!["--max-seq", "4000000000", "--seq", "16"], "--max-seq"),
        (vec!["--batch", "1000000000000"], "batch"),
        (vec!["--batch", "18446744073709551615"], "batch"),
    ] {
        let mut all = vec!["train", "--out", out, "--steps", "1"];
        all.extend(args);
        let run = run(&all);
        assert_user_error(&run, needle);
        assert_user_error(&run, "memory");
    }
    for args in [
        vec!["bench", "--batch", "1000000000000", "--steps", "1"],
        vec!["plan", "--batch", "1000000000000", "--budget", "1/2"],
    ] {
        assert_user_error(&run(&args), "memory");
    }
}

/// Was: a second step-0 block in `metrics.csv`, the new checkpoint pruned at once and
/// `latest` naming a deleted directory.
#[test]
fn should_refuse_a_fresh_run_into_a_used_directory() {
    let dir = scratch("used");
    let out = dir.join("run1");
    let first = train(&out, &["--steps", "3", "--eval-every", "1"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_user_error(&train(&out, &["--steps", "2"]), "--overwrite");
    assert_eq!(
        std::fs::read_to_string(out.join("metrics.csv")).unwrap(),
        metrics,
        "a refused run touched metrics.csv"
    );
    // --overwrite replaces the run: one step-0 row, `latest` resolves, resume works.
    let again = train(
        &out,
        &[
            "--steps",
            "2",
            "--overwrite",
            "--keep",
            "1",
            "--eval-every",
            "1",
        ],
    );
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    assert_eq!(
        metrics.lines().filter(|l| l.starts_with("0,")).count(),
        1,
        "{metrics}"
    );
    let latest = std::fs::read_to_string(out.join("latest")).unwrap();
    assert_eq!(latest.trim(), "step-000002");
    let steps: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    assert_eq!(steps, ["step-000002"], "--keep 1");
    let resumed = train(&out, &["--steps", "3", "--resume"]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_user_error(&train(&out, &["--steps", "3", "--keep", "0"]), "--keep");
}

/// Was: silence; the checkpoint's batch and learning rate ran.
#[test]
fn should_say_what_a_resume_ignores() {
    let dir = scratch("resume-flags");
    let out = dir.join("run");
    assert!(train(&out, &["--steps", "1"]).status.success());
    let out_arg = out.to_str().unwrap();
    let resumed = run(&[
        "train",
        "--out",
        out_arg,
        "--steps",
        "2",
        "--resume",
        "--batch",
        "3",
        "--lr",
        "0.5",
        "--seq",
        "16",
        "--eval-batches",
        "1",
    ]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(stdout.contains("resuming from step 1"), "{stdout}");
    for flag in ["--batch 3", "--lr 0.5"] {
        assert!(
            stderr.contains(flag) && stderr.contains("ignored"),
            "{flag}: {stderr}"
        );
    }
    // `--seq 16` is the checkpoint's own: nothing to warn about.
    assert!(!stderr.contains("--seq"), "{stderr}");
}
