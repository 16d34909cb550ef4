//! The TT point-cloud index: representation, search, persistence and bad input.

use memtrain_index::data::{Points, clustered};
use memtrain_index::kernel::TopK;
use memtrain_index::metrics::{auroc, recall_at_k, sliced_wasserstein};
use memtrain_index::{
    Error, ExactIndex, FitConfig, IvfIndex, TtCloud, TtIndex, TtSearch, fit, ground_truth, io,
};
use proptest::prelude::*;

mod common;
use common::{assert_exact_with_every_leaf, small_fit, trained_index};

fn random_points(n: usize, d: usize, seed: u64) -> Points {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Points::new(
        (0..n * d).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
        d,
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// A tensor train of full rank represents any point set of its shape exactly.
    #[test]
    fn should_represent_any_point_set_at_full_rank(
        n1 in 1usize..4, n2 in 1usize..4, n3 in 1usize..3, d in 1usize..5, seed in 0u64..1000,
    ) {
        let shape = [n1, n2, n3];
        let points = random_points(n1 * n2 * n3, d, seed);
        let cloud = TtCloud::from_points_exact(&points, &shape).unwrap();
        let back = cloud.points();
        for (a, b) in back.as_slice().iter().zip(points.as_slice()) {
            prop_assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    /// TopK keeps exactly the k smallest (score, id) pairs, sorted.
    #[test]
    fn should_keep_the_k_smallest(scores in proptest::collection::vec(0u8..20, 0..50), k in 0usize..8) {
        let mut top = TopK::new(k);
        for (i, &s) in scores.iter().enumerate() {
            top.push(f32::from(s), i as u32);
        }
        let mut all: Vec<(f32, u32)> = scores.iter().enumerate().map(|(i, &s)| (f32::from(s), i as u32)).collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        all.truncate(k);
        prop_assert_eq!(top.into_sorted(), all);
    }
}

/// A cluster's centre is the mean of the cloud points below its prefix.
#[test]
fn should_place_centres_at_the_mean_of_their_subtree() {
    let points = random_points(2 * 3 * 4, 5, 1);
    let cloud = TtCloud::from_points_exact(&points, &[2, 3, 4]).unwrap();
    let all = cloud.points();
    for level in 1..=3 {
        let centres = cloud.centres(level);
        let per: usize = [2, 3, 4][level..].iter().product();
        for c in 0..centres.len() {
            for j in 0..5 {
                let mean: f32 = (0..per).map(|i| all.row(c * per + i)[j]).sum::<f32>() / per as f32;
                assert!(
                    (centres.row(c)[j] - mean).abs() < 1e-4,
                    "level {level} centre {c}"
                );
            }
        }
    }
}

/// With the beam covering every cluster and every leaf probed, the search is brute force.
#[test]
fn should_equal_brute_force_when_the_beam_covers_every_leaf() {
    let points = clustered(600, 12, 8, 3);
    let queries = clustered(40, 12, 8, 4);
    let index = trained_index(&points);
    assert_exact_with_every_leaf(&index, &points, &queries);
    // Every point is in exactly one list.
    let lists = index.lists();
    let total: usize = (0..lists.leaves()).map(|l| lists.len_of(l)).sum();
    assert_eq!(total, points.len());
}

/// IVF scanning every list is brute force too; the ground truth agrees with both.
#[test]
fn should_match_ground_truth_with_ivf_scanning_every_list() {
    let points = clustered(500, 10, 6, 5);
    let queries = clustered(30, 10, 6, 6);
    let ivf = IvfIndex::build(&points, 16, 5, 0).unwrap();
    let truth = ground_truth(&points, &queries, 10).unwrap();
    let exact = ExactIndex::new(&points);
    for (i, t) in truth.iter().enumerate() {
        let q = queries.row(i);
        let brute = exact.search(q, 10).unwrap();
        assert_eq!(ivf.search(q, 10, 16).unwrap(), brute);
        let ids: Vec<u32> = t.iter().map(|p| p.1).collect();
        let brute_ids: Vec<u32> = brute.iter().map(|p| p.1).collect();
        assert_eq!(ids, brute_ids);
    }
}

/// On clustered data a quarter of the leaves holds most true neighbours.
#[test]
fn should_reach_high_recall_with_a_narrow_search() {
    let points = clustered(2000, 16, 16, 7);
    let queries = clustered(100, 16, 16, 8);
    // Rank 16: the 16 leaf centres span at most r dimensions, and the clusters need all 16.
    let config = FitConfig {
        rank: 16,
        steps: 200,
        ..small_fit()
    };
    let cloud = fit(&points, &[4, 4, 125], &config, &mut |_| {}).unwrap();
    let index = TtIndex::build(cloud, &points, 2).unwrap();
    let truth = ground_truth(&points, &queries, 10).unwrap();
    // Scanning a quarter of the leaves (a random quarter of the points would give 0.25).
    let params = TtSearch::new(4, 4);
    let recall: f64 = (0..queries.len())
        .map(|i| {
            recall_at_k(
                &index.search(queries.row(i), 10, &params).unwrap(),
                &truth[i],
                10,
            )
        })
        .sum::<f64>()
        / queries.len() as f64;
    assert!(recall > 0.85, "recall {recall}");
}

/// The same seed trains the same cloud; training moves the cloud towards the data.
#[test]
fn should_train_deterministically_and_reduce_the_distance_to_the_data() {
    let points = clustered(800, 8, 4, 9);
    let a = fit(&points, &[4, 4, 50], &small_fit(), &mut |_| {}).unwrap();
    let b = fit(&points, &[4, 4, 50], &small_fit(), &mut |_| {}).unwrap();
    assert_eq!(a, b);
    let untrained = fit(
        &points,
        &[4, 4, 50],
        &FitConfig {
            steps: 0,
            ..small_fit()
        },
        &mut |_| {},
    )
    .unwrap();
    let sw = |c: &TtCloud| sliced_wasserstein(&c.sample(800, 1), &points, 32, 2);
    assert!(
        sw(&a) < 0.8 * sw(&untrained),
        "trained {} untrained {}",
        sw(&a),
        sw(&untrained)
    );
}

/// Save then load gives the same index, and saving it again the same bytes.
#[test]
fn should_round_trip_save_and_load_bit_for_bit() {
    let points = clustered(300, 6, 4, 10);
    let index = trained_index(&points);
    let dir = std::env::temp_dir().join(format!("memtrain-index-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (p1, p2) = (dir.join("a.idx"), dir.join("b.idx"));
    io::save(&index, &p1).unwrap();
    let loaded = io::load(&p1).unwrap();
    assert_eq!(loaded, index);
    io::save(&loaded, &p2).unwrap();
    assert_eq!(std::fs::read(&p1).unwrap(), std::fs::read(&p2).unwrap());

    // A truncated file, a flipped byte and a foreign file are clear errors.
    let bytes = std::fs::read(&p1).unwrap();
    std::fs::write(&p2, &bytes[..bytes.len() - 7]).unwrap();
    let msg = io::load(&p2).unwrap_err().to_string();
    assert!(msg.contains("truncated"), "{msg}");
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x40;
    std::fs::write(&p2, &flipped).unwrap();
    let msg = io::load(&p2).unwrap_err().to_string();
    assert!(msg.contains("checksum"), "{msg}");
    std::fs::write(&p2, b"PK\x03\x04 not an index at all, a zip header").unwrap();
    let msg = io::load(&p2).unwrap_err().to_string();
    assert!(msg.contains("not a memtrain index"), "{msg}");
    let mut other = bytes;
    other[8] = 9;
    std::fs::write(&p2, &other).unwrap();
    let msg = io::load(&p2).unwrap_err().to_string();
    assert!(msg.contains("version 9"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn should_reject_bad_input_with_clear_errors() {
    // Empty data, NaN, a shape too small for the data.
    let msg = Points::new(vec![], 4).unwrap_err().to_string();
    assert!(msg.contains("0 points"), "{msg}");
    let msg = Points::new(vec![1.0, f32::NAN, 3.0, 4.0], 2)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("NaN in point 0, coordinate 1"), "{msg}");
    let points = clustered(100, 4, 2, 0);
    let err = fit(&points, &[4, 4, 4], &small_fit(), &mut |_| {}).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("[4, 4, 4] (product 64)") && msg.contains("100 data points"),
        "{msg}"
    );
    assert!(matches!(err, Error::Invalid { .. }));
    let msg = fit(&points, &[4, 0, 8], &small_fit(), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(msg.contains("[4, 0, 8]"), "{msg}");

    // Query of the wrong dimension, zero probe, a beam list of the wrong length.
    let index = trained_index(&clustered(300, 4, 2, 1));
    let msg = index
        .search(&[0.0; 5], 10, &TtSearch::new(2, 2))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("query dimension") && msg.contains("got 5") && msg.contains("4"),
        "{msg}"
    );
    assert!(index.search(&[0.0; 4], 10, &TtSearch::new(2, 0)).is_err());
    let bad_beam = TtSearch {
        beam: vec![2, 2, 2],
        probe: 2,
    };
    let msg = index
        .search(&[0.0; 4], 10, &bad_beam)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("one per level"), "{msg}");
    let msg = TtIndex::build(index.cloud().clone(), &clustered(10, 5, 1, 0), 2)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("data dimension"), "{msg}");
    assert!(IvfIndex::build(&points, 0, 1, 0).is_err());
    assert!(ExactIndex::new(&points).search(&[0.0; 3], 1).is_err());
}

#[test]
fn should_compute_recall_as_ann_benchmarks_does() {
    let truth: Vec<(f32, u32)> = (0..10).map(|i| ((i * i) as f32, i)).collect();
    // Distances 0..9 (squared 0..81); the 10th true neighbour is at distance 9.
    assert_eq!(recall_at_k(&truth, &truth, 10), 1.0);
    // Another point at exactly the 10th distance counts; one beyond it does not.
    let mut found = truth.clone();
    found[9] = (81.0, 99);
    assert_eq!(recall_at_k(&found, &truth, 10), 1.0);
    found[8] = (100.0, 98);
    assert!((recall_at_k(&found, &truth, 10) - 0.9).abs() < 1e-12);
}

#[test]
fn should_compute_auroc_as_the_mann_whitney_probability() {
    assert_eq!(
        auroc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
        1.0
    );
    assert_eq!(
        auroc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]),
        0.0
    );
    assert_eq!(auroc(&[0.5, 0.5], &[false, true]), 0.5);
    // One of four positive-negative pairs misordered.
    assert_eq!(
        auroc(&[0.1, 0.6, 0.5, 0.9], &[false, false, true, true]),
        0.75
    );
}

#[test]
fn should_measure_zero_sliced_wasserstein_between_a_set_and_itself() {
    let a = clustered(200, 5, 3, 1);
    assert!(sliced_wasserstein(&a, &a, 16, 0) < 1e-9);
    let far = Points::new(a.as_slice().iter().map(|x| x + 3.0).collect(), 5).unwrap();
    // A shift by 3 in every coordinate moves each unit projection by 3 (θ·1) on average.
    assert!(sliced_wasserstein(&a, &far, 16, 0) > 1.0);
}
