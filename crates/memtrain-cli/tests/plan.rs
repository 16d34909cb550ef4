//! `memtrain plan` end to end: a plan, its measurement, and budgets it cannot meet.

mod common;

use common::*;

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
        stdout.contains("b1.mlp") && stdout.contains("head"),
        "{stdout}"
    );
    assert_user_error(&run(&[&args[..], &["--allow", "all"]].concat()), "--allow");
    run_err(
        &["plan", "--preset", "tiny", "--budget", "1/64"],
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
        run_err(&args, needle);
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
