//! Search speed on generated clustered data: the TT index against IVF with the same number
//! of leaves and brute force, one query at a time (`cargo bench -p memtrain-index`).
//! The Fashion-MNIST comparison with recall is `memtrain index bench`.

use std::sync::OnceLock;

use memtrain_index::data::{Points, clustered};
use memtrain_index::{ExactIndex, FitConfig, IvfIndex, TtIndex, TtSearch, fit};

fn main() {
    divan::main();
}

struct Setup {
    queries: Points,
    tt: TtIndex,
    ivf: IvfIndex,
    exact: ExactIndex,
}

/// 16,384 points of dimension 64 in 256 clusters; 256 leaves for both indexes.
fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let points = clustered(16_384, 64, 256, 0);
        let config = FitConfig {
            rank: 16,
            steps: 100,
            batch: 1024,
            ..FitConfig::default()
        };
        let cloud = fit(&points, &[16, 16, 64], &config, &mut |_| {}).expect("fit");
        Setup {
            queries: clustered(256, 64, 256, 1),
            tt: TtIndex::build(cloud, &points, 2).expect("tt"),
            ivf: IvfIndex::build(&points, 256, 5, 0).expect("ivf"),
            exact: ExactIndex::new(&points),
        }
    })
}

#[divan::bench(args = [1, 4, 16])]
fn tt(bencher: divan::Bencher, probe: usize) {
    let s = setup();
    let params = TtSearch::new(16, probe);
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) % s.queries.len();
        s.tt.search(s.queries.row(i), 10, &params).expect("search")
    });
}

#[divan::bench(args = [1, 4, 16])]
fn ivf(bencher: divan::Bencher, nprobe: usize) {
    let s = setup();
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) % s.queries.len();
        s.ivf.search(s.queries.row(i), 10, nprobe).expect("search")
    });
}

#[divan::bench]
fn exact(bencher: divan::Bencher) {
    let s = setup();
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) % s.queries.len();
        s.exact.search(s.queries.row(i), 10).expect("search")
    });
}
