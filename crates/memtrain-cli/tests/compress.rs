//! `memtrain compress` end to end: a GPT checkpoint to TT-matrices and fine-tuned, a
//! pretrained BERT factorized and evaluated (`eval-embed`), and bad input.

mod common;

use common::*;

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
    let out = run_ok(&[
        "compress", "--from", from, "--eps", "0.5", "--all", "--json",
    ]);
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
        run_err(&args, needle);
    }
}

#[test]
fn should_compress_a_bert_or_reject_bad_input() {
    let dir = scratch("bert-compress");
    run_err(
        &["compress", "--method", "svd", "--ratio", "2"],
        "missing --from or --model",
    );
    run_err(
        &["compress", "--from", "a", "--model", "b", "--ratio", "2"],
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
    let out = run_ok(&[
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
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["layers"].as_array().unwrap().len(), 36);
    let (before, after) = (
        report["linear_params_before"].as_u64().unwrap(),
        report["linear_params_after"].as_u64().unwrap(),
    );
    assert!(4 * after <= before, "{before} -> {after}");
    let out = run_ok(&[
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
