//! The second pass of the TT index: Lloyd refinement of its tables, sq8 lists, the SIMD
//! kernels, incremental add, the version 2 file, and multi-thread measurement.

use memtrain_index::bench::{self, BenchConfig, measure, measure_threads};
use memtrain_index::data::{Points, clustered};
use memtrain_index::kernel::{l2sq, l2sq_portable, l2sq_sq8_portable, variants};
use memtrain_index::{
    ExactIndex, FitConfig, IvfIndex, Storage, TtIndex, TtSearch, fit, ground_truth, io,
};
use rand::{Rng, SeedableRng};

mod common;
use common::{assert_exact_with_every_leaf, small_fit, trained_index};

/// Σ over the points of the squared distance to the centre of the leaf they are listed in.
fn objective(index: &TtIndex, points: &Points) -> f64 {
    let lists = index.lists();
    let mut total = 0.0;
    for l in 0..index.leaves() {
        let c = index.leaf_centre(l);
        for at in lists.offsets()[l] as usize..lists.offsets()[l + 1] as usize {
            total += f64::from(l2sq(points.row(lists.ids()[at] as usize), &c));
        }
    }
    total
}

/// The centre of every leaf with points; far away (all coordinates 1e18) for the empty
/// leaves, which refinement retires.
fn live_centres(index: &TtIndex) -> Vec<Vec<f32>> {
    let lists = index.lists();
    (0..index.leaves())
        .map(|l| {
            if lists.len_of(l) > 0 {
                index.leaf_centre(l)
            } else {
                vec![1e18; index.cloud().dim()]
            }
        })
        .collect()
}

/// Every listed point with id `first..` sits in its nearest live leaf (to f32 rounding).
fn assert_in_nearest_live_leaf(index: &TtIndex, points: &Points, first: usize) {
    let centres = live_centres(index);
    let lists = index.lists();
    for l in 0..index.leaves() {
        for at in lists.offsets()[l] as usize..lists.offsets()[l + 1] as usize {
            let id = lists.ids()[at] as usize;
            if id < first {
                continue;
            }
            let x = points.row(id);
            let mine = l2sq(x, &centres[l]);
            let best = centres
                .iter()
                .map(|c| l2sq(x, c))
                .fold(f32::INFINITY, f32::min);
            assert!(
                mine <= best + 1e-3 * (1.0 + best),
                "point {id} in leaf {l}: {mine} > {best}"
            );
        }
    }
}

/// Every id `0..n` is listed exactly once.
fn assert_each_listed_once(index: &TtIndex, n: usize) {
    let mut ids = index.lists().ids().to_vec();
    ids.sort_unstable();
    assert_eq!(ids, (0..n as u32).collect::<Vec<_>>());
}

/// Lloyd rounds never raise the k-means objective (each round is an exact assignment and an
/// exact least-squares refit inside the subspace), and with enough rounds they lower it.
#[test]
fn should_lower_the_kmeans_objective_of_the_leaves() {
    let points = clustered(800, 12, 10, 1);
    let built = trained_index(&points);
    let before = objective(&built, &points);
    let mut last = before;
    for rounds in [1, 3, 10] {
        let refined = built.clone().refine(&points, rounds).unwrap();
        assert_each_listed_once(&refined, points.len());
        let now = objective(&refined, &points);
        assert!(
            now <= last * (1.0 + 1e-5),
            "{rounds} rounds: {now} after {last}"
        );
        last = now;
    }
    assert!(last < before * 0.99, "10 rounds: {last}, built: {before}");
}

/// The refined index is still exact with every leaf probed, and its points sit in their
/// nearest leaf (by the refined centres).
#[test]
fn should_stay_exact_and_consistent_after_refinement() {
    let points = clustered(600, 10, 8, 2);
    let queries = clustered(30, 10, 8, 3);
    let index = trained_index(&points).refine(&points, 5).unwrap();
    assert_exact_with_every_leaf(&index, &points, &queries);
    assert_in_nearest_live_leaf(&index, &points, 0);
}

/// After refinement a narrow search never spends its probes on empty leaves: the first leaf
/// probed always holds points, and a probe of every live leaf reaches only live leaves.
#[test]
fn should_never_probe_a_retired_leaf() {
    let points = clustered(300, 8, 6, 21);
    let cloud = fit(&points, &[4, 4, 2, 19], &small_fit(), &mut |_| {}).unwrap();
    let index = TtIndex::build(cloud, &points, 3)
        .unwrap()
        .refine(&points, 10)
        .unwrap();
    let lists = index.lists();
    let live = (0..index.leaves()).filter(|&l| lists.len_of(l) > 0).count();
    assert!(live < index.leaves(), "the test wants some empty leaves");
    for i in 0..points.len() {
        let first = index.probe(points.row(i), &TtSearch::new(1, 1)).unwrap()[0];
        assert!(
            lists.len_of(first as usize) > 0,
            "point {i}: probe of an empty leaf"
        );
        let all_live = index
            .probe(points.row(i), &TtSearch::new(16, live))
            .unwrap();
        assert!(
            all_live.iter().all(|&l| lists.len_of(l as usize) > 0),
            "point {i}: {all_live:?}"
        );
    }
}

/// Every SIMD variant of the kernels this CPU runs agrees with the portable one on every
/// length, tails included; the sq8 kernel agrees with the distance to the decoded vector.
#[test]
fn should_agree_with_the_portable_kernels() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let variants = variants();
    eprintln!(
        "kernel variants on this CPU: {:?}",
        variants.iter().map(|v| v.name).collect::<Vec<_>>()
    );
    for n in 0..100 {
        let a: Vec<f32> = (0..n).map(|_| rng.random_range(-3.0f32..3.0)).collect();
        let b: Vec<f32> = (0..n).map(|_| rng.random_range(-3.0f32..3.0)).collect();
        let step: Vec<f32> = (0..n).map(|_| rng.random_range(0.0f32..0.1)).collect();
        let code: Vec<u8> = (0..n).map(|_| rng.random()).collect();
        let slow = l2sq_portable(&a, &b);
        let slow8 = l2sq_sq8_portable(&a, &step, &code);
        for v in &variants {
            let fast = (v.l2sq)(&a, &b);
            assert!(
                (fast - slow).abs() <= 1e-5 * (1.0 + slow),
                "{} n {n}: {fast} {slow}",
                v.name
            );
            let fast8 = (v.l2sq_sq8)(&a, &step, &code);
            assert!(
                (fast8 - slow8).abs() <= 1e-5 * (1.0 + slow8),
                "{} n {n}: {fast8} {slow8}",
                v.name
            );
        }
        assert_eq!(l2sq(&a, &b), (variants.last().unwrap().l2sq)(&a, &b));
        let decoded: Vec<f32> = step
            .iter()
            .zip(&code)
            .map(|(s, &c)| s * f32::from(c))
            .collect();
        let direct = l2sq_portable(&a, &decoded);
        assert!((slow8 - direct).abs() <= 1e-4 * (1.0 + direct), "n {n}");
    }
}

/// 8-bit data (every coordinate spans 0..=255 in steps of 1) is stored exactly: sq8 search
/// equals brute force, distances included.
#[test]
fn should_store_8_bit_data_exactly_as_sq8() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let (n, d) = (400, 9);
    let mut data: Vec<f32> = (0..n * d).map(|_| f32::from(rng.random::<u8>())).collect();
    data[..d].fill(0.0);
    data[d..2 * d].fill(255.0);
    let points = Points::new(data, d).unwrap();
    let queries = clustered(20, d, 4, 5);
    let exact = ExactIndex::new(&points);
    let tt = trained_index(&points)
        .with_storage(&points, Storage::Sq8)
        .unwrap();
    assert_eq!(tt.lists().storage(), Storage::Sq8);
    assert_eq!(tt.lists().vector_bytes(), n * d + 8 * d);
    let ivf = IvfIndex::build(&points, 8, 3, 0)
        .unwrap()
        .with_storage(&points, Storage::Sq8)
        .unwrap();
    let all = TtSearch::new(4, tt.leaves());
    for i in 0..queries.len() {
        let q = queries.row(i);
        let truth = exact.search(q, 10).unwrap();
        assert_eq!(tt.search(q, 10, &all).unwrap(), truth);
        assert_eq!(ivf.search(q, 10, 8).unwrap(), truth);
    }
}

/// On real-valued data each sq8 distance is within the grid's half step of the exact one
/// (triangle inequality: `|√d_sq8 − √d| <= |x − decoded(x)| <= √Σ (step_i / 2)²`).
#[test]
fn should_bound_the_sq8_distance_error_by_half_a_step() {
    let points = clustered(300, 8, 4, 9);
    let queries = clustered(10, 8, 4, 10);
    let d = points.dim();
    let mut bound = 0.0f64;
    for j in 0..d {
        let col = (0..points.len()).map(|i| f64::from(points.row(i)[j]));
        let (lo, hi) = col.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(x), b.max(x))
        });
        bound += ((hi - lo) / 255.0 / 2.0).powi(2);
    }
    let bound = bound.sqrt();
    let tt = trained_index(&points)
        .with_storage(&points, Storage::Sq8)
        .unwrap();
    let all = TtSearch::new(4, tt.leaves());
    for i in 0..queries.len() {
        let q = queries.row(i);
        for (dist, id) in tt.search(q, points.len(), &all).unwrap() {
            let exact = f64::from(l2sq(q, points.row(id as usize))).sqrt();
            let got = f64::from(dist.max(0.0)).sqrt();
            assert!(
                (got - exact).abs() <= bound * 1.001 + 1e-4,
                "{got} {exact} {bound}"
            );
        }
    }
}

/// Adding points puts each into its nearest leaf with the next ids; the grown index is exact
/// with every leaf probed, for f32 and sq8 lists.
#[test]
fn should_add_points_to_their_nearest_leaves() {
    let points = clustered(600, 10, 8, 11);
    let n0 = 540;
    let head = points.head(n0);
    let tail = points.select(&(n0..points.len()).collect::<Vec<_>>());
    let queries = clustered(20, 10, 8, 12);
    for storage in Storage::ALL {
        let mut index = trained_index(&head)
            .refine(&head, 3)
            .unwrap()
            .with_storage(&head, storage)
            .unwrap();
        index.add(&tail).unwrap();
        assert_eq!(index.len(), points.len());
        assert_each_listed_once(&index, points.len());
        assert_in_nearest_live_leaf(&index, &points, n0);
        if storage == Storage::F32 {
            assert_exact_with_every_leaf(&index, &points, &queries);
        }
    }
    let mut index = trained_index(&head);
    let wrong = clustered(5, 3, 2, 0);
    let msg = index.add(&wrong).unwrap_err().to_string();
    assert!(msg.contains("dimension") && msg.contains("10"), "{msg}");
}

/// A refined sq8 index round-trips bit for bit; a version 1 file (no tables, f32 vectors)
/// still loads as the index it was.
#[test]
fn should_round_trip_version_2_and_read_version_1() {
    let points = clustered(300, 6, 4, 13);
    let dir = std::env::temp_dir().join(format!("memtrain-refine-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (p1, p2) = (dir.join("a.idx"), dir.join("b.idx"));
    let built = trained_index(&points);
    for storage in Storage::ALL {
        let index = built
            .clone()
            .refine(&points, 4)
            .unwrap()
            .with_storage(&points, storage)
            .unwrap();
        io::save(&index, &p1).unwrap();
        let loaded = io::load(&p1).unwrap();
        assert_eq!(loaded, index);
        io::save(&loaded, &p2).unwrap();
        assert_eq!(std::fs::read(&p1).unwrap(), std::fs::read(&p2).unwrap());
    }
    // A version 1 payload is version 2's without the tables and the storage tag.
    io::save(&built, &p1).unwrap();
    let bytes = std::fs::read(&p1).unwrap();
    let cloud = built.cloud();
    let (shape, ranks) = (cloud.shape(), cloud.ranks());
    let k = shape.len();
    let head = 4 * (1 + k + (k + 1) + 2) + 4 * (cloud.param_count() + cloud.dim());
    let mut clusters = 1;
    let mut tables = 0;
    for j in 1..=built.leaf_level() {
        clusters *= shape[j - 1];
        tables += 4 * clusters * (ranks[j] + 1);
    }
    let payload = &bytes[24..];
    let lists = built.lists();
    let tag_at = head + tables + 4 * (2 + lists.offsets().len() + lists.ids().len());
    let mut v1 = Vec::new();
    v1.extend_from_slice(&payload[..head]);
    v1.extend_from_slice(&payload[head + tables..tag_at]);
    v1.extend_from_slice(&payload[tag_at + 4..]);
    let mut file = Vec::new();
    file.extend_from_slice(io::MAGIC);
    file.extend_from_slice(&1u32.to_le_bytes());
    file.extend_from_slice(&(v1.len() as u64).to_le_bytes());
    file.extend_from_slice(&crc32fast::hash(&v1).to_le_bytes());
    file.extend_from_slice(&v1);
    std::fs::write(&p2, &file).unwrap();
    assert_eq!(io::load(&p2).unwrap(), built);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The multi-thread measurement finds the same neighbours as the single-thread one.
#[test]
fn should_measure_the_same_recall_on_several_threads() {
    let points = clustered(500, 8, 6, 14);
    let queries = clustered(37, 8, 6, 15);
    let truth = ground_truth(&points, &queries, 10).unwrap();
    let index = trained_index(&points).refine(&points, 3).unwrap();
    let params = TtSearch::new(2, 3);
    let search = |q: &[f32]| -> memtrain_index::Result<Vec<u32>> {
        Ok(index
            .search(q, 10, &params)?
            .into_iter()
            .map(|p| p.1)
            .collect())
    };
    let one = measure(&points, &queries, &truth, 37, search).unwrap();
    for threads in [2, 3, 8, 40] {
        let many = measure_threads(&points, &queries, &truth, 37, threads, search).unwrap();
        assert_eq!(many.recall, one.recall, "{threads} threads");
    }
    let msg = measure_threads(&points, &queries, &truth, 37, 0, search)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("threads"), "{msg}");
}

/// The benchmark measures both storages, the grown index and the threads, and refuses an
/// empty storage list and an add fraction of 1.
#[test]
fn should_bench_storages_threads_and_add() {
    let (base, queries) = bench::hold_out(&clustered(400, 8, 4, 16)).unwrap();
    let config = BenchConfig {
        fit: FitConfig {
            rank: 4,
            steps: 10,
            batch: 128,
            ..FitConfig::default()
        },
        hnsw: false,
        threads: 2,
        add_fraction: 0.1,
        refine: 3,
        codes: vec![4],
        ..BenchConfig::default()
    };
    let mut profiles = Vec::new();
    let report = bench::run(&base, &queries, &config, &mut |p| {
        if let bench::Progress::Profile(p) = p {
            profiles.push(p.clone());
        }
    })
    .unwrap();
    // One profile per storage: the coarse search is part of the whole, the vectors scanned
    // are those of the probed leaves.
    assert_eq!(profiles.len(), 2);
    for p in &profiles {
        assert!(p.coarse_us > 0.0 && p.total_us > 0.0, "{p}");
        assert!(p.vectors > 0.0 && p.vectors <= base.len() as f64, "{p}");
        assert!(p.ns_per_vector().is_finite(), "{p}");
    }
    for method in ["exact", "tt", "tt-sq8", "tt-add", "tt-pq", "ivf", "ivf-sq8"] {
        assert!(report.rows.iter().any(|r| r.method == method), "{method}");
    }
    let d = base.dim() as f64;
    for r in &report.rows {
        match r.method.as_str() {
            "exact" => assert_eq!(r.bytes_per_vector, 4.0 * d),
            "tt" | "ivf" | "tt-add" => assert!(r.bytes_per_vector > 4.0 * d, "{r}"),
            // 360 points: the coarse cloud outweighs the codes, so only the key is checked.
            "tt-pq" => assert!(
                r.bytes_per_vector > 8.0 && r.params.starts_with("codes=4,rank="),
                "{r}"
            ),
            _ => assert!(
                r.bytes_per_vector > d && r.bytes_per_vector < 4.0 * d,
                "{r}"
            ),
        }
        if r.method != "exact" {
            assert_eq!(r.threads, 2);
            assert!(r.qps_threads.unwrap() > 0.0, "{r}");
        }
    }
    assert_eq!(bench::summaries(&report.rows).len(), 4);
    for bad in [
        BenchConfig {
            storages: Vec::new(),
            ..config.clone()
        },
        BenchConfig {
            add_fraction: 1.0,
            ..config.clone()
        },
        BenchConfig {
            threads: 0,
            ..config.clone()
        },
    ] {
        let msg = bench::run(&base, &queries, &bad, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("storages") || msg.contains("add fraction") || msg.contains("threads"),
            "{msg}"
        );
    }
}
