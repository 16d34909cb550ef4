//! `memtrain embed` end to end.

mod common;

use common::*;

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
