//! The index's byte formula against the counting allocator (one test: the allocator counts
//! the whole process, so nothing may run beside it).

use memtrain_index::data::clustered;
use memtrain_index::{FitConfig, IvfIndex, TtIndex, fit};

#[global_allocator]
static ALLOC: memtrain::memory::CountingAllocator = memtrain::memory::CountingAllocator;

#[test]
fn should_measure_the_structure_bytes_the_formula_predicts() {
    let points = clustered(4000, 32, 16, 0);
    let config = FitConfig {
        rank: 8,
        steps: 5,
        batch: 256,
        ..FitConfig::default()
    };
    let cloud = fit(&points, &[8, 8, 4, 16], &config, &mut |_| {}).unwrap();
    let cloud_bytes = 4 * (cloud.param_count() + cloud.dim());
    let vectors = 4 * points.len() * points.dim();

    let before = memtrain::memory::live_bytes();
    let index = TtIndex::build(cloud, &points, 3).unwrap();
    let measured = memtrain::memory::live_bytes() - before;
    // The cloud moved in (already counted before); the lists hold a copy of the vectors.
    let predicted = index.structure_bytes() - cloud_bytes + vectors;
    eprintln!("tt: measured {measured} B, formula {predicted} B");
    let slack = (measured as f64 - predicted as f64).abs() / predicted as f64;
    assert!(
        slack < 0.01,
        "tt: measured {measured} B, formula {predicted} B"
    );

    let before = memtrain::memory::live_bytes();
    let ivf = IvfIndex::build(&points, 64, 3, 0).unwrap();
    let measured = memtrain::memory::live_bytes() - before;
    let predicted = ivf.structure_bytes() + vectors;
    eprintln!("ivf: measured {measured} B, formula {predicted} B");
    let slack = (measured as f64 - predicted as f64).abs() / predicted as f64;
    assert!(
        slack < 0.01,
        "ivf: measured {measured} B, formula {predicted} B"
    );
    drop((index, ivf));
}
