//! `memtrain variance` end to end.

mod common;

use common::*;

#[test]
fn should_report_the_sketch_variance() {
    let out = run_ok(&[
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
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        r["minibatch_variance"].as_f64().unwrap() > 0.0
            && r["sketch_variance"].as_f64().unwrap() > 0.0
    );
    run_err(&["variance", "--policy", "linear=exact"], "linear=exact");
    assert_user_error(&run(&["variance", "--block", "9"]), "--block: got \"9\"");
}
