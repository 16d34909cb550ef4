//! The benchmark harness (`bench`) and the OOD demo (`ood`) as library calls: small generated
//! data, every method swept, golden values for the pure parts, and bad input as errors.

use memtrain_index::bench::{self, BenchConfig, Row, default_shape, index_shape, qps_at, summary};
use memtrain_index::data::{FashionMnist, Points, clustered};
use memtrain_index::ood::{self, OodConfig};
use memtrain_index::{Error, FitConfig, ground_truth};

fn quick_fit() -> FitConfig {
    FitConfig {
        rank: 4,
        steps: 20,
        batch: 128,
        projections: 32,
        nn_batch: 64,
        ..FitConfig::default()
    }
}

fn quick_config() -> BenchConfig {
    BenchConfig {
        fit: quick_fit(),
        kmeans_iters: 2,
        ..BenchConfig::default()
    }
}

/// 360 base points and 40 held-out queries of dimension 8 in 4 clusters.
fn base_and_queries() -> (Points, Points) {
    bench::hold_out(&clustered(400, 8, 4, 0)).unwrap()
}

fn row(method: &str, params: &str, recall_at_10: f64, qps: f64) -> Row {
    Row {
        method: method.into(),
        params: params.into(),
        recall_at_10,
        qps,
        build_seconds: 0.0,
        index_bytes: 0,
        bytes_per_vector: 0.0,
        threads: 1,
        qps_threads: None,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

/// A meter that never moves: the harness must call it and survive what it reads.
fn constant_meter() -> usize {
    1 << 20
}

#[test]
fn should_sweep_every_method_with_the_exact_one_at_recall_one() {
    let (base, queries) = base_and_queries();
    let config = BenchConfig {
        byte_meter: Some(constant_meter),
        ..quick_config()
    };
    let (mut starts, mut fits, mut built, mut seen, mut compressions) = (0, 0, 0, 0, 0);
    let report = bench::run(&base, &queries, &config, &mut |p| match p {
        bench::Progress::Start {
            base: b,
            queries: q,
            dim,
        } => {
            assert_eq!((b, q, dim), (360, 40, 8));
            starts += 1;
        }
        bench::Progress::Fit(_) => fits += 1,
        bench::Progress::TtBuilt(_) => built += 1,
        bench::Progress::Row(_) => seen += 1,
        bench::Progress::Compression(_) => compressions += 1,
        _ => {}
    })
    .unwrap();

    assert_eq!((starts, fits, built, compressions), (1, 20, 1, 1));
    assert_eq!(seen, report.rows.len());
    let methods: std::collections::BTreeSet<&str> =
        report.rows.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(
        methods,
        ["exact", "hnsw", "ivf", "ivf-sq8", "tt", "tt-sq8"].into()
    );
    for r in &report.rows {
        assert!(
            (0.0..=1.0).contains(&r.recall_at_10),
            "{r}: recall outside [0, 1]"
        );
        assert!(r.qps > 0.0, "{r}: no speed");
    }
    let exact = &report.rows[0];
    assert_eq!(exact.method, "exact");
    assert!(close(exact.recall_at_10, 1.0), "{exact}");
    // Scanning every leaf with the widest beam is exact.
    let tt_max = report
        .rows
        .iter()
        .filter(|r| r.method == "tt")
        .map(|r| r.recall_at_10)
        .fold(0.0, f64::max);
    assert!(close(tt_max, 1.0), "best tt recall {tt_max}");
    // The default shape for 360 points, leaves at the last level but one.
    assert_eq!(report.tt.shape, index_shape(360));
    assert_eq!(report.tt.leaves, 8);
    assert!(report.tt.measured_bytes.is_some());
    assert!(report.compression.ratio() > 1.0);
}

#[test]
fn should_measure_only_the_first_limit_queries() {
    let (base, queries) = base_and_queries();
    let config = BenchConfig {
        limit: Some(5),
        exact_queries: 500,
        hnsw: false,
        ..quick_config()
    };
    let mut measured = None;
    let report = bench::run(&base, &queries, &config, &mut |p| {
        if let bench::Progress::Start { queries, .. } = p {
            measured = Some(queries);
        }
    })
    .unwrap();
    assert_eq!(measured, Some(5));
    // Brute force is timed on at most the queries measured.
    assert_eq!(report.rows[0].params, "5 queries");
    assert!(report.rows.iter().all(|r| r.method != "hnsw"));
    // No meter: the formula only.
    assert_eq!(report.tt.measured_bytes, None);
}

#[test]
fn should_reject_bad_input_before_training() {
    let (base, queries) = base_and_queries();
    let config = quick_config();
    let mut progress = |_: bench::Progress<'_>| panic!("no progress expected");
    let invalid = |r: Result<bench::Report, Error>, word: &str| match r {
        Err(e @ Error::Invalid { .. }) => {
            assert!(e.to_string().contains(word), "{e} should mention {word}")
        }
        other => panic!("expected an invalid-input error naming {word}, got {other:?}"),
    };

    invalid(
        bench::run(&base, &queries.head(0), &config, &mut progress),
        "queries",
    );
    let no_limit = BenchConfig {
        limit: Some(0),
        ..quick_config()
    };
    invalid(
        bench::run(&base, &queries, &no_limit, &mut progress),
        "limit",
    );
    let wide = clustered(10, 9, 2, 0);
    invalid(
        bench::run(&base, &wide, &config, &mut progress),
        "dimension",
    );
    let small = BenchConfig {
        shape: Some(vec![4, 4, 4]),
        ..quick_config()
    };
    invalid(bench::run(&base, &queries, &small, &mut progress), "64");
    let deep = BenchConfig {
        leaf_level: Some(5),
        ..quick_config()
    };
    invalid(
        bench::run(&base, &queries, &deep, &mut progress),
        "leaf level",
    );
}

#[test]
fn should_report_a_failed_training_as_a_fit_error() {
    let (base, queries) = base_and_queries();
    let config = BenchConfig {
        fit: FitConfig {
            rank: 0,
            ..quick_fit()
        },
        ..quick_config()
    };
    let err = bench::run(&base, &queries, &config, &mut |_| {}).unwrap_err();
    assert!(matches!(err, Error::Fit(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "training the TT cloud: invalid rank: got 0, expected at least 1"
    );
}

#[test]
fn should_measure_recall_from_the_returned_ids_or_reject_bad_ones() {
    let (base, queries) = base_and_queries();
    let truth = ground_truth(&base, &queries, bench::K).unwrap();
    let exact = bench::measure(&base, &queries, &truth, 3, |q| {
        let mut all: Vec<(f32, u32)> = (0..base.len())
            .map(|i| (memtrain_index::kernel::l2sq(q, base.row(i)), i as u32))
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ok(all.iter().take(bench::K).map(|p| p.1).collect())
    })
    .unwrap();
    assert!(close(exact.recall, 1.0));
    let nothing = bench::measure(&base, &queries, &truth, 3, |_| Ok(Vec::new())).unwrap();
    assert!(close(nothing.recall, 0.0));

    for n in [0, 41] {
        let e = bench::measure(&base, &queries, &truth, n, |_| Ok(Vec::new()));
        assert!(matches!(e, Err(Error::Invalid { .. })), "n = {n}: {e:?}");
    }
    let e = bench::measure(&base, &queries, &truth, 1, |_| Ok(vec![360]));
    assert!(matches!(e, Err(Error::Invalid { .. })), "{e:?}");
}

#[test]
fn should_interpolate_qps_on_the_pareto_front() {
    let rows = [
        row("ivf", "nlist=64,nprobe=1", 0.5, 2000.0),
        row("ivf", "nlist=64,nprobe=2", 0.7, 500.0),
        row("ivf", "nlist=64,nprobe=4", 0.8, 1000.0),
        row("ivf", "nlist=64,nprobe=8", 0.9, 10.0),
        // Other list counts and methods are left out.
        row("ivf", "nlist=128,nprobe=1", 0.99, 1e6),
        row("tt", "nlist=64", 0.99, 1e6),
    ];
    let at = |recall| qps_at(&rows, "ivf", "nlist=64,", recall);
    // Front: best QPS at that recall or above, (0.5, 2000) (0.7, 1000) (0.8, 1000) (0.9, 10).
    // 0.85 is halfway from (0.8, 1000) to (0.9, 10) in log(QPS): sqrt(1000 · 10) = 100.
    assert!(close(at(0.85).unwrap(), 100.0));
    // 0.6 is halfway from (0.5, 2000) to (0.7, 1000): sqrt(2000 · 1000).
    assert!(close(at(0.6).unwrap(), (2e6f64).sqrt()));
    // The dominated (0.7, 500) counts at the 1000 QPS of (0.8, 1000).
    assert!(close(at(0.75).unwrap(), 1000.0));
    // At a sweep point, its front value; below the sweep, the first point's.
    assert!(close(at(0.9).unwrap(), 10.0));
    assert!(close(at(0.4).unwrap(), 2000.0));
    assert_eq!(at(0.95), None);
    assert_eq!(qps_at(&rows, "hnsw", "", 0.5), None);
}

#[test]
fn should_summarise_tt_against_each_ivf_at_the_same_recall() {
    let rows = [
        row("tt", "beam=4,probe=1", 0.9, 5000.0),
        row("tt", "beam=8,probe=4", 0.96, 800.0),
        row("tt", "beam=16,probe=8", 0.99, 400.0),
        row("ivf", "nlist=64,nprobe=1", 0.8, 1000.0),
        row("ivf", "nlist=64,nprobe=8", 0.9, 10.0),
        row("ivf", "nlist=640,nprobe=1", 0.99, 1.0),
        row("ivf", "nlist=128,nprobe=1", 0.9, 2000.0),
        row("ivf", "nlist=128,nprobe=8", 1.0, 200.0),
    ];
    let s = summary(&rows);
    // The fastest row at or above 0.95, and both methods read off their sweeps at 0.95.
    assert_eq!(s.tt.as_ref().unwrap().params, "beam=8,probe=4");
    // TT: 0.95 is 5/6 of the way from (0.9, 5000) to (0.96, 800).
    let tt = s.tt_qps.unwrap();
    let want = 5000f64.powf(1.0 / 6.0) * 800f64.powf(5.0 / 6.0);
    assert!((tt - want).abs() < 1e-6 * want, "{tt} {want}");
    assert_eq!(s.ivf.len(), 3);
    // nlist=64 never gets there; nlist=640 is not mistaken for nlist=64 (prefix "nlist=64,").
    assert_eq!(s.ivf[0], ("nlist=64".to_string(), None));
    assert_eq!(s.ivf[1], ("nlist=640".to_string(), Some(1.0)));
    // IVF-128: 0.95 is halfway from (0.9, 2000) to (1.0, 200).
    let q = s.ivf[2].1.unwrap();
    assert!((q - (2000.0f64 * 200.0).sqrt()).abs() < 1e-6, "{q}");
    assert_eq!(
        s.to_string(),
        format!(
            "summary: tt at recall@10 0.95 (interpolated): {tt:.0} QPS; its fastest setting at or \
             above: beam=8,probe=4 (0.9600, 800 QPS)\n\
             summary: ivf nlist=64 never reaches recall@10 0.95\n\
             summary: ivf nlist=640 at recall@10 0.95 (interpolated): 1 QPS; tt/ivf = {:.2}\n\
             summary: ivf nlist=128 at recall@10 0.95 (interpolated): {q:.0} QPS; tt/ivf = {:.2}",
            tt / 1.0,
            tt / q
        )
    );

    let none = summary(&rows[3..]);
    assert_eq!(none.tt, None);
    assert_eq!(
        none.to_string(),
        "summary: no tt setting in the sweep reaches recall@10 0.95"
    );
}

#[test]
fn should_choose_the_default_shape() {
    // bits = max(3, round(log2(max(8, n / 16)))); three modes of 2^ceil(bits/3),
    // 2^ceil(rest/2) and the remainder; the last mode is ceil(n / leaves).
    // The index's shape: about 64 points a leaf, the same construction.
    assert_eq!(index_shape(60_000), vec![16, 8, 8, 59]);
    assert_eq!(index_shape(360), vec![2, 2, 2, 45]);
    assert_eq!(index_shape(1), vec![2, 2, 2, 1]);
    assert_eq!(default_shape(1), vec![2, 2, 2, 1]);
    assert_eq!(default_shape(100), vec![2, 2, 2, 13]);
    assert_eq!(default_shape(360), vec![4, 2, 2, 23]);
    assert_eq!(default_shape(1000), vec![4, 4, 4, 16]);
    assert_eq!(default_shape(60_000), vec![16, 16, 16, 15]);
    assert_eq!(default_shape(1_000_000), vec![64, 32, 32, 16]);
    for n in [1, 7, 100, 999, 12_345, 60_000] {
        let shape = default_shape(n);
        assert!(shape.iter().product::<usize>() >= n, "{shape:?} for {n}");
    }
}

#[test]
fn should_hold_out_the_last_tenth() {
    let points = clustered(25, 3, 2, 0);
    let (base, queries) = bench::hold_out(&points).unwrap();
    assert_eq!((base.len(), queries.len()), (23, 2));
    assert_eq!(queries.row(1), points.row(24));
    let (base, queries) = bench::hold_out(&points.head(2)).unwrap();
    assert_eq!((base.len(), queries.len()), (1, 1));
    assert!(matches!(
        bench::hold_out(&points.head(1)),
        Err(Error::Invalid { .. })
    ));
}

#[test]
fn should_keep_the_json_keys_of_a_row() {
    let r = row("tt", "beam=4,probe=1", 0.5, 10.0);
    let json = serde_json::to_string(&r).unwrap();
    assert_eq!(
        json,
        r#"{"method":"tt","params":"beam=4,probe=1","recall_at_10":0.5,"qps":10.0,"build_seconds":0.0,"index_bytes":0,"bytes_per_vector":0.0,"threads":1,"qps_threads":null}"#
    );
    let back: Row = serde_json::from_str(&json).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
    // A file written before the keys bytes_per_vector, threads and qps_threads still reads.
    let old = r#"{"method":"tt","params":"beam=4,probe=1","recall_at_10":0.5,"qps":10.0,"build_seconds":0.0,"index_bytes":0}"#;
    let back: Row = serde_json::from_str(old).unwrap();
    assert_eq!(back, r);
}

/// Ten well-separated clusters, one per class: 400 training and 100 test points.
fn labelled() -> FashionMnist {
    let all = clustered(500, 8, 10, 0);
    let labels = |range: std::ops::Range<usize>| range.map(|i| (i % 10) as u8).collect();
    FashionMnist {
        train: all.select(&(0..400).collect::<Vec<_>>()),
        train_labels: labels(0..400),
        test: all.select(&(400..500).collect::<Vec<_>>()),
        test_labels: labels(400..500),
    }
}

#[test]
fn should_score_the_three_memory_banks() {
    let data = labelled();
    let split = ood::split(&data, &[0, 1, 2, 3, 4]).unwrap();
    assert_eq!(split.bank.len(), 200);
    assert_eq!(split.out_of_distribution.iter().filter(|&&p| p).count(), 50);
    let config = OodConfig {
        fit: quick_fit(),
        shape: None,
    };
    let mut events = Vec::new();
    let report = ood::run(&split, &data.test, &config, &mut |p| {
        events.push(match p {
            ood::Progress::Fit(_) => "fit",
            ood::Progress::Trained { .. } => "trained",
            ood::Progress::Row(_) => "row",
            _ => "other",
        })
    })
    .unwrap();
    let mut want = vec!["fit"; 20];
    want.extend(["trained", "row", "row", "row"]);
    assert_eq!(events, want);

    let names: Vec<&str> = report.rows.iter().map(|r| r.bank.as_str()).collect();
    assert_eq!(names, ["tt cloud", "full training set", "random subset"]);
    assert_eq!(report.shape, default_shape(200));
    assert_eq!(
        report.rows[0].points,
        report.shape.iter().product::<usize>()
    );
    assert_eq!((report.rows[1].points, report.rows[1].floats), (200, 1600));
    for r in &report.rows {
        assert!((0.0..=1.0).contains(&r.auroc), "{r}");
    }
    // The held-out clusters are far from every in-distribution point.
    assert!(report.rows[1].auroc > 0.99, "{}", report.rows[1]);
    // The JSON keys, in the order the demo has always written them.
    let json = serde_json::to_string(&report.rows[1]).unwrap();
    assert!(
        json.starts_with(r#"{"auroc":"#)
            && json.contains(r#""bank":"full training set","floats":1600,"points":200}"#),
        "{json}"
    );
}

#[test]
fn should_reject_classes_that_leave_nothing_out_or_nothing_in() {
    let data = labelled();
    for classes in [vec![], (0..10).collect(), vec![3, 10]] {
        let e = ood::split(&data, &classes);
        assert!(
            matches!(e, Err(Error::Invalid { .. })),
            "{classes:?}: {e:?}"
        );
    }
    let split = ood::split(&data, &[0]).unwrap();
    let short = data.test.head(10);
    let e = ood::run(&split, &short, &OodConfig::default(), &mut |_| {});
    assert!(matches!(e, Err(Error::Invalid { .. })), "{e:?}");
}
