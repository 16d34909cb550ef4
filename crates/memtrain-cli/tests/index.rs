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

    // Off a terminal, progress is plain lines (here one per step): no control characters.
    let mut args = vec!["index", "build", "--data", d_s, "--out", idx_s];
    args.extend_from_slice(&quick);
    let out = memtrain()
        .env("MEMTRAIN_PROGRESS_SECONDS", "0")
        .args(&args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("fit: step 20/20 SW² "), "{stderr}");
    assert!(stderr.contains("ETA"), "{stderr}");
    assert!(
        !stderr.contains('\x1b') && !stderr.contains('\r'),
        "{stderr:?}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("indexed 600 points"), "{stdout}");
    let query = ["index", "query", "--index", idx_s, "--queries", q_s];
    let search = ["--beam", "4", "--probe", "32"];
    let out = run_ok(&[&query[..], &search, &["--json"]].concat());
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 40);
    assert!(
        rows.iter()
            .all(|r| r["ids"].as_array().unwrap().len() == 10)
    );
    // The plain output: `query I: ID (DISTANCE) ...`, the same neighbours as the JSON.
    let out = run_ok(&[&query[..], &search].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 40, "{stdout}");
    for (line, row) in stdout.lines().zip(rows) {
        let cells: Vec<&str> = line.split(": ").nth(1).unwrap().split(' ').collect();
        assert_eq!(cells.len(), 20, "{line}");
        for (k, pair) in cells.chunks(2).enumerate() {
            assert_eq!(pair[0], row["ids"][k].to_string(), "{line}");
            let d: f64 = pair[1]
                .trim_start_matches('(')
                .trim_end_matches(')')
                .parse()
                .unwrap();
            let want = row["distances"][k].as_f64().unwrap();
            assert!((d - want).abs() < 1e-3 * want.max(1.0), "{line}");
        }
    }
    // --limit: the first N points only; 0 is a mistake naming it.
    let mut args = vec![
        "index", "build", "--data", d_s, "--out", idx_s, "--limit", "100",
    ];
    args.extend_from_slice(&quick);
    let out = run_ok(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("indexed 100 points"), "{stdout}");
    run_err(
        &[
            "index", "build", "--data", d_s, "--out", idx_s, "--limit", "0",
        ],
        "--limit",
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
    let out = memtrain()
        .env("MEMTRAIN_PROGRESS_SECONDS", "0")
        .args(&args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("fit: step 20/20"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
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
            "bytes_per_vector",
            "threads",
            "qps_threads",
        ]
        .into();
        assert_eq!(keys, want);
        methods.insert(row["method"].as_str().unwrap().to_string());
        let recall = row["recall_at_10"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&recall));
    }
    let all: std::collections::BTreeSet<String> = [
        "exact", "hnsw", "ivf", "ivf-sq8", "tt", "tt-add", "tt-pq", "tt-sq8",
    ]
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

/// `bytes` as a gzip file of stored (uncompressed) deflate blocks: what the reader needs,
/// without a compression library in this crate.
fn gzip_stored(bytes: &[u8]) -> Vec<u8> {
    let crc = !bytes.iter().fold(!0u32, |mut c, &b| {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
        c
    });
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    let chunks: Vec<&[u8]> = bytes.chunks(65_535).collect();
    for (n, chunk) in chunks.iter().enumerate() {
        out.push(u8::from(n + 1 == chunks.len()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out
}

/// A Fashion-MNIST directory in miniature (gzipped IDX): 40 training and 20 test images of
/// 4x4 pixels, labels 0-9 in turn.
fn fake_fashion_mnist(dir: &std::path::Path) {
    let gz = |bytes: &[u8]| gzip_stored(bytes);
    let idx = |magic: u32, dims: &[u32], body: &[u8]| {
        let mut b = magic.to_be_bytes().to_vec();
        dims.iter()
            .for_each(|d| b.extend_from_slice(&d.to_be_bytes()));
        b.extend_from_slice(body);
        b
    };
    for (prefix, n) in [("train", 40u32), ("t10k", 20)] {
        let pixels: Vec<u8> = (0..n * 16).map(|i| (i * 37 % 256) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let images = gz(&idx(0x0803, &[n, 4, 4], &pixels));
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte.gz")), images).unwrap();
        let labels = gz(&idx(0x0801, &[n], &labels));
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte.gz")), labels).unwrap();
    }
}

/// Every malformed `memtrain index ...` invocation is a user error: exit code 1 (ours) or 2
/// (clap's), a message on stderr, never Rust's panic exit code 101.
#[test]
fn should_refuse_malformed_index_invocations_without_panicking() {
    let dir = scratch("index-malformed");
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let data = memtrain_index::data::clustered(64, 3, 4, 0);
    memtrain_index::data::write_npy(&dir.join("d.npy"), &data).unwrap();
    let queries = memtrain_index::data::clustered(5, 3, 4, 1);
    memtrain_index::data::write_npy(&dir.join("q.npy"), &queries).unwrap();
    write_npy(&dir.join("q5.npy"), 1, 5, &[0.0; 5]);
    write_npy(&dir.join("one.npy"), 1, 3, &[0.0; 3]);
    write_npy(&dir.join("empty.npy"), 0, 3, &[]);
    // An index without training: the exact cloud of the data.
    let cloud = memtrain_index::TtCloud::from_points_exact(&data, &[4, 4, 4]).unwrap();
    let index = memtrain_index::TtIndex::build(cloud, &data, 2).unwrap();
    memtrain_index::io::save(&index, &dir.join("i.idx")).unwrap();
    let bytes = std::fs::read(dir.join("i.idx")).unwrap();
    std::fs::write(dir.join("cut.idx"), &bytes[..bytes.len() / 3]).unwrap();
    let fashion = dir.join("fashion");
    std::fs::create_dir_all(&fashion).unwrap();
    fake_fashion_mnist(&fashion);
    std::fs::write(dir.join("rows.json"), "[{\"method\": 1}]").unwrap();
    let (d, q, i, f) = (path("d.npy"), path("q.npy"), path("i.idx"), path("fashion"));
    let out = path("out.idx");
    let huge = "1000000,1000000,1000000";

    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let bench = |extra: &[&str]| {
        let mut a = vec!["index", "bench", "--data", &d, "--no-hnsw", "--steps", "1"];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let build = |extra: &[&str]| {
        let mut a = vec![
            "index", "build", "--data", &d, "--out", &out, "--steps", "1",
        ];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let query = |extra: &[&str]| {
        let mut a = vec!["index", "query", "--index", &i, "--queries", &q];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let ood = |extra: &[&str]| {
        let mut a = vec!["index", "ood", "--data", &f, "--steps", "1"];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    // (arguments, a word the error must contain)
    let table: Vec<(Vec<String>, &str)> = vec![
        // The case: before, `queries.row(0)` on an empty set panicked.
        (bench(&["--limit", "0"]), "--limit"),
        (bench(&["--exact-queries", "0"]), "--exact-queries"),
        (bench(&["--limit", "-1"]), "'-1'"),
        (bench(&["--queries", &path("q5.npy")]), "dimension"),
        (bench(&["--queries", &path("empty.npy")]), "0 points"),
        (
            argv(&["index", "bench", "--data", &path("one.npy")]),
            "at least 2",
        ),
        (bench(&["--shape", huge]), "needs an estimated"),
        (bench(&["--shape", "0"]), "--shape"),
        (bench(&["--leaf-level", "0"]), "--leaf-level"),
        (bench(&["--rank", "0"]), "rank"),
        (bench(&["--codes", "0"]), "--codes"),
        (bench(&["--codes", "14,x"]), "--codes"),
        (bench(&["--codes", "13"]), "1..=12"),
        (bench(&["--storage", "f16"]), "f32 or sq8"),
        (bench(&["--threads", "0"]), "--threads"),
        (bench(&["--add-fraction", "1"]), "--add-fraction"),
        (
            argv(&["index", "bench", "--data", &path("missing.npy")]),
            "missing.npy",
        ),
        (build(&["--shape", ""]), "--shape"),
        (build(&["--shape", "4,x,4"]), "--shape"),
        (build(&["--shape", "4,-4"]), "--shape"),
        (build(&["--shape", "18446744073709551615,2"]), "overflow"),
        (build(&["--shape", "99999999999999999999999"]), "--shape"),
        (build(&["--shape", "2,2"]), "product 4"),
        (build(&["--shape", huge]), "needs an estimated"),
        (
            build(&["--batch", "1000000000000000"]),
            "needs an estimated",
        ),
        (build(&["--batch", "0"]), "batch"),
        (build(&["--rank", "0"]), "rank"),
        (build(&["--lr", "NaN"]), "lr"),
        (build(&["--lr=-1"]), "lr"),
        (build(&["--lr", "inf"]), "lr"),
        (build(&["--nn-weight", "NaN"]), "nn_weight"),
        (build(&["--level-weight=-1"]), "level_weight"),
        (build(&["--leaf-level", "9"]), "--leaf-level"),
        (build(&["--steps", "x"]), "--steps"),
        (
            argv(&[
                "index",
                "build",
                "--out",
                &out,
                "--data",
                &path("empty.npy"),
            ]),
            "0 points",
        ),
        (
            argv(&["index", "build", "--out", &out, "--data", &i]),
            "i.idx",
        ),
        (
            argv(&[
                "index",
                "build",
                "--out",
                &out,
                "--data",
                dir.to_str().unwrap(),
            ]),
            "Fashion-MNIST",
        ),
        (query(&["--k", "0"]), "--k"),
        (query(&["--probe", "0"]), "--probe"),
        (query(&["--limit", "0"]), "--limit"),
        (query(&["--beam", "0"]), "--beam"),
        (query(&["--beam", ""]), "--beam"),
        (query(&["--beam", "18446744073709551616"]), "--beam"),
        (query(&["--beam", "2,2,2,2"]), "one per level"),
        (
            argv(&[
                "index",
                "query",
                "--index",
                &i,
                "--queries",
                &path("q5.npy"),
            ]),
            "dimension",
        ),
        (
            argv(&[
                "index",
                "query",
                "--queries",
                &q,
                "--index",
                &path("cut.idx"),
            ]),
            "cut.idx",
        ),
        (
            argv(&["index", "query", "--queries", &q, "--index", &d]),
            "not a memtrain index",
        ),
        (
            argv(&[
                "index",
                "query",
                "--queries",
                &q,
                "--index",
                &path("missing.idx"),
            ]),
            "missing.idx",
        ),
        (
            argv(&["index", "query", "--index", &i, "--queries", &f]),
            "dimension",
        ),
        (ood(&["--classes", ""]), "--classes"),
        (ood(&["--classes", "10"]), "--classes"),
        (ood(&["--classes", "0,1,2,3,4,5,6,7,8,9"]), "all ten"),
        (ood(&["--classes", "x"]), "--classes"),
        (ood(&["--shape", huge]), "needs an estimated"),
        (ood(&["--rank", "0"]), "rank"),
        (argv(&["index", "ood", "--data", &d]), "Fashion-MNIST"),
        (
            argv(&[
                "index",
                "plot",
                "--json",
                &path("rows.json"),
                "--out",
                &path("p.png"),
            ]),
            "not a `memtrain index bench --json` file",
        ),
    ];
    let mut failures = Vec::new();
    for (args, word) in &table {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        // 101 is Rust's panic exit code; 1 is ours, 2 clap's.
        if !matches!(code, Some(1 | 2)) || stderr.contains("panicked") || !stderr.contains(word) {
            failures.push(format!(
                "memtrain {}: exit {code:?}, {word:?} expected in: {stderr}",
                args.join(" ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A huge k is not malformed: every point, without reserving room for k of them.
    let out = run_ok(
        &query(&["--k", "18446744073709551615", "--probe", "16", "--json"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["ids"].as_array().unwrap().len(), 64);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn should_build_and_query_a_compressed_index_or_reject_bad_codes() {
    let dir = scratch("index-codes");
    let data = memtrain_index::data::clustered(300, 8, 4, 0);
    let (d, q) = (dir.join("data.npy"), dir.join("queries.npy"));
    memtrain_index::data::write_npy(&d, &data).unwrap();
    // The first 20 points as the queries: each is its own nearest neighbour.
    memtrain_index::data::write_npy(&q, &data.head(20)).unwrap();
    let idx = dir.join("codes.idx");
    let (d_s, q_s, idx_s) = (
        d.to_str().unwrap(),
        q.to_str().unwrap(),
        idx.to_str().unwrap(),
    );
    let build = |extra: &[&str]| {
        let mut a = vec![
            "index", "build", "--data", d_s, "--out", idx_s, "--shape", "4,4,20", "--steps", "20",
            "--batch", "128", "--rank", "4",
        ];
        a.extend_from_slice(extra);
        memtrain()
            .env("MEMTRAIN_PROGRESS_SECONDS", "0")
            .args(&a)
            .output()
            .unwrap()
    };
    // Every leaf scanned (16 leaves at level 2).
    let query = [
        "index",
        "query",
        "--index",
        idx_s,
        "--queries",
        q_s,
        "--beam",
        "4",
        "--probe",
        "16",
        "--json",
    ];
    // (--codes, the code bytes used: one 8-bit code a coordinate at most, found themselves)
    for (codes, used, found_self) in [("6", 6, 12), ("32", 8, 19)] {
        let out = build(&["--codes", codes]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("compressed 300 points"), "{stdout}");
        assert!(stdout.contains(&format!("{used}-byte codes")), "{stdout}");
        assert!(stdout.contains("bytes per vector"), "{stdout}");
        assert!(stdout.contains("bytes in all"), "{stdout}");
        let out = run_ok(&query);
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), 20);
        let mut hits = 0;
        for (i, row) in rows.iter().enumerate() {
            let ids = row["ids"].as_array().unwrap();
            assert_eq!(ids.len(), 10);
            let dists: Vec<f64> = row["distances"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert!(dists.windows(2).all(|w| w[0] <= w[1]), "{dists:?}");
            hits += usize::from(ids[0].as_u64() == Some(i as u64));
        }
        assert!(
            hits >= found_self,
            "--codes {codes}: {hits} of 20 found themselves"
        );
    }
    // A compressed file is no plain index for `index add`.
    run_err(
        &["index", "add", "--index", idx_s, "--data", q_s],
        "a compressed index",
    );
    // Bad --codes: refused before training (one line on stderr, no progress lines).
    for (extra, words) in [
        (&["--codes", "0"][..], &["--codes", "got 0", "1..=32"][..]),
        (&["--codes", "33"], &["--codes", "got 33", "1..=32"]),
        (
            &["--codes", "4", "--storage", "sq8"],
            &["--storage sq8", "--codes"],
        ),
    ] {
        let out = build(extra);
        for w in words {
            assert_user_error(&out, w);
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
