//! `memtrain index` end to end: build, query and bench an index, and bad input.

mod common;

use common::*;

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
    let out = run_ok(&[
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
