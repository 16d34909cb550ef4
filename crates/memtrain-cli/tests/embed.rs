//! `memtrain embed` end to end.

mod common;

use common::*;

#[test]
fn should_embed_texts_or_name_the_missing_model() {
    let out = run(&["embed", "--model", "/nonexistent/minilm", "--text", "hi"]);
    assert_user_error(&out, "/nonexistent/minilm");
    run_err(&["embed", "--model", "/nonexistent/minilm"], "no texts");
    run_err(
        &[
            "embed",
            "--model",
            "/nonexistent/minilm",
            "--file",
            "/nonexistent/texts.txt",
        ],
        "/nonexistent/texts.txt",
    );

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

/// The cosine matrix rows of `embed`'s plain output: row `i` is the `i`-th line after the
/// `cosine` line and the column header.
fn cosine_matrix(stdout: &str) -> Vec<Vec<f64>> {
    let mut lines = stdout.lines().skip_while(|l| l.trim() != "cosine").skip(2);
    let mut rows = Vec::new();
    for line in lines.by_ref() {
        let mut cells = line.split_whitespace();
        cells.next();
        rows.push(cells.map(|c| c.parse().unwrap()).collect());
    }
    rows
}

#[test]
fn should_print_pairwise_cosines_of_texts_from_flags_files_or_stdin() {
    let Some(dir) = minilm_dir() else {
        eprintln!("skipping: run scripts/fetch-minilm.sh");
        return;
    };
    let model = dir.to_str().unwrap();
    let out = run_ok(&[
        "embed",
        "--model",
        model,
        "--text",
        "A man is eating food.",
        "--text",
        "Hi",
        "--text",
        "A man is eating a piece of bread.",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let m = cosine_matrix(&stdout);
    assert_eq!(m.len(), 3, "{stdout}");
    for (i, row) in m.iter().enumerate() {
        assert_eq!(row.len(), 3, "{stdout}");
        assert!((row[i] - 1.0).abs() < 1e-3, "{stdout}");
        for (j, c) in row.iter().enumerate() {
            assert!((c - m[j][i]).abs() < 1e-4, "not symmetric: {stdout}");
        }
    }
    assert!(m[0][2] > m[0][1] + 0.2, "{stdout}");

    // Nine texts from a file (blank lines skipped), and the same from stdin: 36 pairs as
    // `i j cosine` lines, identical both ways.
    let scratch = scratch("embed-file");
    let texts: Vec<String> = (0..9)
        .map(|i| format!("Sentence {i} is about cats."))
        .collect();
    let file = scratch.join("texts.txt");
    std::fs::write(&file, format!("{}\n\n", texts.join("\n"))).unwrap();
    let out = run_ok(&["embed", "--model", model, "--file", file.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let pairs: Vec<(usize, usize, f64)> = stdout
        .lines()
        .skip_while(|l| !l.contains("cosine"))
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            (
                c[0].parse().unwrap(),
                c[1].parse().unwrap(),
                c[2].parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(pairs.len(), 36, "{stdout}");
    assert_eq!((pairs[0].0, pairs[0].1), (0, 1), "{stdout}");
    assert_eq!((pairs[35].0, pairs[35].1), (7, 8), "{stdout}");
    assert!(
        pairs.iter().all(|p| p.2 > 0.5 && p.2 < 1.0 + 1e-4),
        "{stdout}"
    );
    let mut child = memtrain()
        .args(["embed", "--model", model, "--file", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(texts.join("\n").as_bytes())
        .unwrap();
    let piped = child.wait_with_output().unwrap();
    assert!(
        piped.status.success(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&piped.stdout), stdout);
    let _ = std::fs::remove_dir_all(&scratch);
}
