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
    // The ratio column is a compression factor; off a terminal the progress is plain lines
    // (here one per layer), with no control characters.
    let out = memtrain()
        .env("MEMTRAIN_PROGRESS_SECONDS", "0")
        .args(["compress", "--from", from, "--rank", "4"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("block.0.mlp.fc"))
        .unwrap();
    let ratio: f64 = row
        .split_whitespace()
        .nth(4)
        .unwrap()
        .trim_end_matches('x')
        .parse()
        .unwrap();
    assert!(ratio > 1.0 && !row.contains('%'), "{row}");
    assert!(stdout.contains("(ratio "), "{stdout}");
    for i in 1..=4 {
        assert!(
            stderr.contains(&format!("compress: layer {i}/4 ")),
            "{stderr}"
        );
    }
    assert!(
        stderr.contains("ETA") && !stderr.contains('\x1b'),
        "{stderr:?}"
    );
    assert!(!stderr.contains("warning:"), "{stderr}");
    // An accuracy the TT cores can only meet at full rank makes every layer larger: a
    // warning for each, naming it and its ratio.
    let out = run_ok(&["compress", "--from", from, "--eps", "0.001", "--all"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 8, "{stderr}");
    assert!(
        warnings[0].contains("block.0.attn.qkv") && warnings[0].contains("0.91x"),
        "{stderr}"
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
    for (method, ranks, needle) in [
        ("svd", "magic", "invalid --ranks: got \"magic\""),
        ("cp", "auto", "auto ranks with svd, asvd or fwsvd"),
    ] {
        let out = run(&[
            "compress",
            "--model",
            "/nonexistent/minilm",
            "--method",
            method,
            "--ratio",
            "2",
            "--ranks",
            ranks,
        ]);
        assert_user_error(&out, needle);
    }
    for (method, flag, value, needle) in [
        (
            "svd",
            "--calib",
            "lines.txt",
            "svd reads no calibration data",
        ),
        ("asvd", "--calib-lines", "0", "invalid --calib-lines: got 0"),
        ("asvd", "--calib", "/nonexistent/calib.txt", "calib.txt"),
    ] {
        let out = run(&[
            "compress",
            "--model",
            "/nonexistent/minilm",
            "--method",
            method,
            "--ratio",
            "2",
            flag,
            value,
        ]);
        assert_user_error(&out, needle);
    }
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
    // One-shot: a layer at a time, with an estimate of the rest, plain off a terminal.
    let out = memtrain()
        .env("MEMTRAIN_PROGRESS_SECONDS", "0")
        .args([
            "compress", "--model", model, "--method", "svd", "--ratio", "4",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("compress: layer 1/36 encoder.layer.0.attention.self.query (")
            && stderr.contains("compress: layer 36/36 "),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\x1b') && !stderr.contains("warning:"),
        "{stderr:?}"
    );
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("encoder.layer."))
        .collect();
    assert_eq!(rows.len(), 36, "{stdout}");
    assert!(rows.iter().all(|r| r.contains("x ")), "{stdout}");
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
    // The table prints sizes in MiB (the JSON keeps bytes), with progress over both models.
    let out = memtrain()
        .env("MEMTRAIN_PROGRESS_SECONDS", "0")
        .args([
            "eval-embed",
            "--model",
            model,
            "--compressed",
            compressed.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--lines",
            "12",
            "--batch",
            "6",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    let original = stdout.lines().find(|l| l.starts_with("original")).unwrap();
    let mib = eval["original"]["model_bytes"].as_f64().unwrap() / (1024.0 * 1024.0);
    assert!(original.contains(&format!("{mib:.2} MiB")), "{original}");
    assert!(!original.contains(" bytes"), "{original}");
    for done in [6, 12, 18, 24] {
        assert!(
            stderr.contains(&format!("eval-embed: line {done}/24 ")),
            "{stderr}"
        );
    }
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

/// `compress --method asvd` calibrates on the lines after the 500 that eval-embed holds out
/// (issue 22), and refuses a text that has none.
#[test]
fn should_compress_minilm_by_asvd_on_calibration_lines() {
    let Some(model_dir) = minilm_dir() else {
        eprintln!("skipping: run scripts/fetch-minilm.sh");
        return;
    };
    let model = model_dir.to_str().unwrap();
    let dir = scratch("asvd");
    let line = |i: usize| {
        format!(
            "Sentence {i} tells of {} and {}.",
            ["cats", "ships", "rain", "kings"][i % 4],
            ["bread", "stars", "war"][i % 3]
        )
    };
    let short = dir.join("short.txt");
    std::fs::write(&short, (0..20).map(line).collect::<Vec<_>>().join("\n")).unwrap();
    let out = run(&[
        "compress",
        "--model",
        model,
        "--method",
        "asvd",
        "--ratio",
        "4",
        "--data",
        short.to_str().unwrap(),
    ]);
    assert_user_error(&out, "held out");
    let data = dir.join("lines.txt");
    std::fs::write(&data, (0..540).map(line).collect::<Vec<_>>().join("\n")).unwrap();
    let out_dir = dir.join("asvd4");
    let out = run_ok(&[
        "compress",
        "--model",
        model,
        "--method",
        "asvd",
        "--ratio",
        "4",
        "--data",
        data.to_str().unwrap(),
        "--json",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["method"], "asvd");
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
        out_dir.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--lines",
        "12",
        "--json",
    ]);
    let eval: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(eval["lines"], 12);
    // A calibration text of its own (all its lines), a few of them.
    let calib = dir.join("calib.txt");
    std::fs::write(&calib, (0..30).map(line).collect::<Vec<_>>().join("\n")).unwrap();
    let out = run_ok(&[
        "compress",
        "--model",
        model,
        "--method",
        "asvd",
        "--ratio",
        "4",
        "--calib",
        calib.to_str().unwrap(),
        "--calib-lines",
        "20",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["method"], "asvd");
    // The distillation path, recalibrating at its stage: a short schedule runs end to end.
    let out = run_ok(&[
        "compress",
        "--model",
        model,
        "--method",
        "asvd",
        "--ratio",
        "4",
        "--data",
        data.to_str().unwrap(),
        "--iterative",
        "--stages",
        "2",
        "--steps",
        "2",
        "--batch",
        "4",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stages = report["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2, "{report}");
    assert!(
        report["schedule"].as_str().unwrap().contains("2 stages"),
        "{report}"
    );
}

/// `compress --method rom` reduces each MLP to half its neurons and `eval-embed` reads the
/// narrower model back (issue 22's README commands); `fwsvd` calibrates with gradients, and
/// both run the iterative distillation path (the reduced MLPs train, their widths shrink per
/// stage).
#[test]
fn should_compress_minilm_by_rom_and_fwsvd_one_shot_and_iteratively() {
    let Some(model_dir) = minilm_dir() else {
        eprintln!("skipping: run scripts/fetch-minilm.sh");
        return;
    };
    let model = model_dir.to_str().unwrap();
    let dir = scratch("rom");
    let line = |i: usize| {
        format!(
            "Line {i} speaks of {} in {}.",
            ["love", "ships", "rain", "crowns"][i % 4],
            ["winter", "the court", "war"][i % 3]
        )
    };
    let data = dir.join("lines.txt");
    std::fs::write(&data, (0..560).map(line).collect::<Vec<_>>().join("\n")).unwrap();
    let data = data.to_str().unwrap();
    let out_dir = dir.join("rom2");
    let out = run_ok(&[
        "compress",
        "--model",
        model,
        "--method",
        "rom",
        "--ratio",
        "2",
        "--data",
        data,
        "--calib-lines",
        "48",
        "--json",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["method"], "rom");
    let layers = report["layers"].as_array().unwrap();
    let mlp_in = &layers[4];
    assert_eq!(mlp_in["name"], "encoder.layer.0.intermediate.dense");
    assert_eq!(mlp_in["rank"], 768, "half of 1536 neurons: {mlp_in}");
    let (before, after) = (
        report["linear_params_before"].as_u64().unwrap(),
        report["linear_params_after"].as_u64().unwrap(),
    );
    assert!(2 * after <= before, "{before} -> {after}");
    let out = run_ok(&[
        "eval-embed",
        "--model",
        model,
        "--compressed",
        out_dir.to_str().unwrap(),
        "--data",
        data,
        "--lines",
        "12",
        "--json",
    ]);
    let eval: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(eval["method"], "rom");
    let cosine = eval["mean_cosine"].as_f64().unwrap();
    assert!(cosine > 0.0 && cosine <= 1.0 + 1e-6, "{eval}");
    // Sequential calibration (asvd and rom, one-shot): layer by layer on the partly compressed
    // model.
    let out = run_ok(&[
        "compress",
        "--model",
        model,
        "--method",
        "asvd",
        "--ratio",
        "2",
        "--data",
        data,
        "--calib-lines",
        "32",
        "--sequential",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["schedule"], "one-shot, sequential", "{report}");
    assert_eq!(report["layers"].as_array().unwrap().len(), 36);
    let out = run(&[
        "compress",
        "--model",
        model,
        "--method",
        "svd",
        "--ratio",
        "2",
        "--sequential",
    ]);
    assert_user_error(&out, "sequential calibration with asvd or rom");
    let out = run(&[
        "compress",
        "--model",
        model,
        "--method",
        "rom",
        "--ratio",
        "2",
        "--data",
        data,
        "--sequential",
        "--iterative",
    ]);
    assert_user_error(&out, "sequential calibration one-shot");
    for method in ["rom", "fwsvd"] {
        let out = run_ok(&[
            "compress",
            "--model",
            model,
            "--method",
            method,
            "--ratio",
            "2",
            "--data",
            data,
            "--iterative",
            "--stages",
            "2",
            "--steps",
            "2",
            "--batch",
            "4",
            "--json",
        ]);
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            report["stages"].as_array().unwrap().len(),
            2,
            "{method}: {report}"
        );
        let after = report["linear_params_after"].as_u64().unwrap();
        assert!(2 * after <= before + 1000, "{method}: {after}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
