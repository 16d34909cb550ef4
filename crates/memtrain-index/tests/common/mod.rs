//! What the index tests share: a quick training setting, a small trained index, and the
//! brute-force check.

#![allow(dead_code)]

use memtrain_index::data::Points;
use memtrain_index::{ExactIndex, FitConfig, TtIndex, TtSearch, fit};

/// A quick training setting for small generated data.
pub fn small_fit() -> FitConfig {
    FitConfig {
        rank: 4,
        steps: 30,
        batch: 256,
        projections: 32,
        nn_batch: 128,
        ..FitConfig::default()
    }
}

/// An index of `points` trained with [`small_fit`]: shape `[4, 4, ceil(n / 16)]`, 16 leaves
/// at level 2.
pub fn trained_index(points: &Points) -> TtIndex {
    let cloud = fit(
        points,
        &[4, 4, points.len().div_ceil(16)],
        &small_fit(),
        &mut |_| {},
    )
    .unwrap();
    TtIndex::build(cloud, points, 2).unwrap()
}

/// With every leaf probed the search is brute force over `points`.
pub fn assert_exact_with_every_leaf(index: &TtIndex, points: &Points, queries: &Points) {
    let exact = ExactIndex::new(points);
    let all = TtSearch::new(4, index.leaves());
    for i in 0..queries.len() {
        let q = queries.row(i);
        assert_eq!(
            index.search(q, 10, &all).unwrap(),
            exact.search(q, 10).unwrap()
        );
    }
}
