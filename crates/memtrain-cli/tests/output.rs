//! What the commands print, read as a user reads it (issue 25): log lines when stderr is not
//! a terminal, the run summary, `metrics.csv`'s columns, short policy names in tables, sizes
//! in MiB, the schedule legend, defaults in `--help`.

mod common;

use common::*;

#[test]
fn should_log_summarize_and_write_every_metrics_column() {
    let dir = scratch("log");
    let out = dir.join("run");
    let run = train(
        &out,
        &[
            "--steps",
            "12",
            "--eval-every",
            "6",
            "--save-every",
            "4",
            "--log-every",
            "3",
        ],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    // The test's stderr is a pipe, not a terminal: plain lines, no bar.
    let logs: Vec<&str> = stdout.lines().filter(|l| l.contains("tok/s")).collect();
    assert_eq!(logs.len(), 4, "one line every 3 steps: {stdout}");
    for (line, step) in logs.iter().zip([3, 6, 9, 12]) {
        assert!(line.starts_with(&format!("step {step}/12 ")), "{line}");
        for field in ["loss ", "s/step", "lr ", "step peak ", " MiB", "ETA "] {
            assert!(line.contains(field), "{field:?} not in {line:?}");
        }
    }
    assert!(
        !String::from_utf8_lossy(&run.stderr).contains('\u{1b}'),
        "control characters"
    );
    // The summary.
    for want in [
        "done: steps 0..12 in ",
        "tokens/s)",
        "val_loss ",
        "(best ",
        "step peak ",
        "parameters 120,576 trainable of 120,576",
        "checkpoint ",
    ] {
        assert!(stdout.contains(want), "{want:?} not in {stdout}");
    }
    assert!(stdout.contains(&format!("checkpoint {}", out.join("step-000012").display())));
    // metrics.csv: every column, a row at each evaluation.
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let mut lines = metrics.lines();
    assert_eq!(
        lines.next(),
        Some("step,train_loss,val_loss,seconds,tokens_per_second,lr")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(
        rows.iter().map(|r| r[0]).collect::<Vec<_>>(),
        ["0", "6", "12"]
    );
    for row in &rows[1..] {
        assert_eq!(row.len(), 6, "{row:?}");
        for value in &row[1..] {
            let v: f64 = value.parse().unwrap_or_else(|_| panic!("{row:?}"));
            assert!(v.is_finite() && v > 0.0, "{row:?}");
        }
    }
    // --save-every 4 (and the last step), independent of --eval-every 6; --keep 2.
    let mut steps: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("step-"))
        .collect();
    steps.sort();
    assert_eq!(steps, ["step-000008", "step-000012"]);
    assert!(stdout.contains("checkpoint") && stdout.matches("\ncheckpoint ").count() == 3);
}

#[test]
fn should_say_how_many_parameters_train_under_adapters() {
    let dir = scratch("trainable");
    let base = dir.join("base");
    assert!(train(&base, &["--steps", "1"]).status.success());
    let run = train(
        &dir.join("lora"),
        &[
            "--steps",
            "1",
            "--init-from",
            base.to_str().unwrap(),
            "--policy",
            "adapt=lora:2",
        ],
    );
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    // LoRA rank 2 on 4 linears of 2 blocks: 2 × (2·(64+192) + 2·(64+64) + 2·(64+256) + 2·(256+64)).
    assert!(stdout.contains("parameters, 4,096 trainable"), "{stdout}");
}

#[test]
fn should_name_bench_rows_by_what_differs_from_plain() {
    let out = run_ok(&[
        "bench",
        "--steps",
        "1",
        "--batch",
        "2",
        "--seq",
        "16",
        "--policies",
        "act=exact;attn=memeff,act=inverted",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rows: Vec<&str> = stdout.lines().skip(2).take(2).collect();
    assert!(rows[0].starts_with("plain "), "{stdout}");
    assert!(rows[1].starts_with("act=inverted,attn=memeff "), "{stdout}");
    assert!(
        stdout.lines().all(|l| l.len() < 140),
        "a line wider than 140: {stdout}"
    );
    assert!(!stdout.contains("weights=dense"), "{stdout}");
}

#[test]
fn should_label_budget_rows_and_print_budgets_in_mib() {
    let out = run_ok(&[
        "bench", "--steps", "1", "--batch", "2", "--seq", "32", "--budget", "1/2",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for label in ["plain burn ", "best uniform ", "plan "] {
        assert!(
            stdout.lines().any(|l| l.starts_with(label)),
            "{label:?}: {stdout}"
        );
    }
    assert!(stdout.lines().all(|l| l.len() < 160), "{stdout}");
    let plan = run_ok(&["plan", "--batch", "2", "--seq", "32", "--budget", "1/2"]);
    let stdout = String::from_utf8_lossy(&plan.stdout);
    let policy = stdout
        .lines()
        .find(|l| l.starts_with("plan policy: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let budget = policy.split("remat=budget:").nth(1).unwrap();
    assert!(
        budget.split(',').next().unwrap().ends_with("MiB")
            || budget.split(',').next().unwrap().ends_with("KiB"),
        "{policy}"
    );
    assert!(
        stdout.contains("notation: stages are the block halves"),
        "{stdout}"
    );
}

#[test]
fn should_show_defaults_and_the_schedule_legend_in_help() {
    let train = run_ok(&["train", "--help"]);
    let help = String::from_utf8_lossy(&train.stdout);
    for want in [
        "[default: 500]",
        "[default: 5000]",
        "default: 16 in train, 8 in bench",
        "--save-every",
        "--log-every",
        "--overwrite",
        "--keep",
    ] {
        assert!(help.contains(want), "{want:?} not in train --help");
    }
    // clap wraps the legend to the terminal's width: compare with the lines joined.
    let plan = run_ok(&["plan", "--help"]);
    let help = String::from_utf8_lossy(&plan.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(help.contains("F a..b>C b (X) (Y)"), "{help}");
    assert!(
        help.contains("1 / 2 / 4 slices / one sequence a slice"),
        "{help}"
    );
}

#[test]
fn should_print_the_same_error_measure_as_text_and_json() {
    let text = run_ok(&["table", "--act", "gelu", "--bits", "2"]);
    let json = run_ok(&["table", "--act", "gelu", "--bits", "2", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let mse = v["mean_squared_error"].as_f64().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!("mean squared error {mse:.3e}")),
        "{text}"
    );
}

#[test]
fn should_say_when_not_even_the_smallest_size_fits() {
    let out = run_ok(&["plan", "--batch", "8", "--budget", "1/4", "--capacity"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("seq 0,") && !stdout.contains("batch 0,"),
        "{stdout}"
    );
    assert!(stdout.contains("none (even"), "{stdout}");
}

#[test]
fn should_print_no_step_lines_with_log_every_0() {
    let dir = scratch("log0");
    let run = train(&dir.join("run"), &["--steps", "4", "--log-every", "0"]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(!stdout.contains("tok/s "), "{stdout}");
    assert!(stdout.contains("done: steps 0..4"), "{stdout}");
}
