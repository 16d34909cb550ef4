//! The recall/QPS benchmark behind `memtrain index bench`: the TT index, k-means IVF, HNSW
//! ([`hnsw_rs`]) and brute force, all built and measured in one run, one query at a time on
//! the calling thread (and, with [`BenchConfig::threads`], the same queries split across
//! threads), with recall@10 as [ann-benchmarks](https://ann-benchmarks.com) counts it. The TT
//! and IVF indexes are measured with each [`Storage`] of their lists (`tt`, `tt-sq8`, `ivf`,
//! `ivf-sq8` rows).
//!
//! [`run`] is the entry point; [`measure`], [`qps_at`], [`summary`] and [`compression`] are
//! its parts, usable on their own.

use std::fmt;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::codes::CompressedIndex;
use crate::data::Points;
use crate::kernel::l2sq;
use crate::metrics::{recall_at_k, sliced_wasserstein};
use crate::{
    Error, ExactIndex, FitConfig, FitProgress, IvfIndex, Result, Storage, TtCloud, TtIndex,
    TtSearch, check_capacity, fit, ground_truth,
};

/// Neighbours per query: every row is recall@`K`.
pub const K: usize = 10;

/// Probe counts of the TT and IVF sweeps (those above the number of leaves are skipped).
const PROBES: [usize; 15] = [1, 2, 4, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96, 128];
/// Beam widths of the TT sweep (one beam of 1 when the leaves are the first level).
const BEAMS: [usize; 5] = [4, 8, 16, 32, 64];
/// `ef` values of the HNSW sweep.
const HNSW_EF: [usize; 6] = [10, 20, 40, 80, 160, 320];
/// HNSW's `M` and `ef_construction`.
const HNSW_M: usize = 16;
const HNSW_EF_CONSTRUCTION: usize = 200;

/// One point of the recall/QPS sweep; the JSON of `memtrain index bench --json` is a list of
/// these.
///
/// Its [`Display`](fmt::Display) is the line the benchmark prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// `tt`, `ivf`, `hnsw` or `exact`; `-sq8` after `tt` and `ivf` for lists stored as
    /// 8-bit codes ([`Storage::Sq8`]); `tt-pq` for the compressed mode
    /// ([`CompressedIndex`], no raw vectors); `tt-add` for the index grown by
    /// [`TtIndex::add`] ([`BenchConfig::add_fraction`]).
    pub method: String,
    /// The method's settings, e.g. `beam=8,probe=16` or `nlist=256,nprobe=4`.
    pub params: String,
    /// Mean recall@10 over the queries, in `[0, 1]`.
    pub recall_at_10: f64,
    /// Queries per second, one query at a time on one thread.
    pub qps: f64,
    /// Seconds to build the index (for the TT index, training included).
    pub build_seconds: f64,
    /// Bytes of the index beyond the vectors it holds (0 where unknown).
    pub index_bytes: usize,
    /// Every byte the index holds per base vector: its structure plus the vectors as it
    /// stores them (raw float32, sq8 codes), over the number of base vectors. 0 in files
    /// written before this key existed.
    #[serde(default)]
    pub bytes_per_vector: f64,
    /// Threads of the [`Row::qps_threads`] measurement (1: none was made).
    #[serde(default = "one")]
    pub threads: usize,
    /// Queries per second in all, the queries split across [`Row::threads`] threads;
    /// `None` when only one thread was measured.
    #[serde(default)]
    pub qps_threads: Option<f64>,
}

fn one() -> usize {
    1
}

impl fmt::Display for Row {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<7} {:<22} recall@10 {:.4}  {:>9.1} QPS  build {:>6.1} s  {:>10} B  {:>7.1} B/vector",
            self.method,
            self.params,
            self.recall_at_10,
            self.qps,
            self.build_seconds,
            self.index_bytes,
            self.bytes_per_vector
        )?;
        if let Some(q) = self.qps_threads {
            write!(
                f,
                "  {q:>9.1} QPS on {} threads ({:.2}x)",
                self.threads,
                q / self.qps
            )?;
        }
        Ok(())
    }
}

/// How [`run`] builds and sweeps the indexes.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Training of the TT cloud; its seed also seeds the IVF's k-means.
    pub fit: FitConfig,
    /// Modes of the TT cloud; `None`: [`index_shape`] of the number of base points.
    pub shape: Option<Vec<usize>>,
    /// Level of the TT index's leaves, `1..=modes`; `None`: the last but one.
    pub leaf_level: Option<usize>,
    /// Only the first `limit` queries; `None`: all.
    pub limit: Option<usize>,
    /// Queries timed for brute force (it takes `N·D` per query), at least 1.
    pub exact_queries: usize,
    /// k-means rounds of the IVF baseline.
    pub kmeans_iters: usize,
    /// Whether to build and sweep the HNSW baseline.
    pub hnsw: bool,
    /// Lloyd rounds of [`TtIndex::refine`] after building the TT index (0: the cloud's own
    /// centres).
    pub refine: usize,
    /// The list storages the TT and IVF indexes are measured with, at least one.
    pub storages: Vec<Storage>,
    /// Threads of the second measurement of every row ([`Row::qps_threads`]); 1: none.
    pub threads: usize,
    /// Code bytes per vector of the compressed mode ([`CompressedIndex`], no raw vectors):
    /// one `tt-pq` sweep at beam 32 per entry; empty: none.
    pub codes: Vec<usize>,
    /// TT rank of the compressed mode's coarse index (its cloud is part of every vector's
    /// bytes, so a smaller rank than [`BenchConfig::fit`]'s can serve it better); when it
    /// differs from `fit.rank`, a second cloud of the same shape is trained for it.
    pub codes_rank: usize,
    /// When above 0, a second TT index is trained, built and refined on all but this
    /// fraction of the base points (at least one held back), the rest is inserted with
    /// [`TtIndex::add`], and the grown index is swept at beam 32 (`tt-add` rows, f32): the
    /// recall of points the cloud never saw. Below 1.
    pub add_fraction: f64,
    /// Live heap bytes of the process, to measure what building an index allocates (the
    /// `memtrain` crate's counting allocator, `memtrain::memory::live_bytes`). `None`: the TT
    /// index reports its formula only and HNSW reports 0 bytes.
    pub byte_meter: Option<fn() -> usize>,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            fit: FitConfig::default(),
            shape: None,
            leaf_level: None,
            limit: None,
            exact_queries: 500,
            kmeans_iters: 10,
            hnsw: true,
            refine: 10,
            storages: Storage::ALL.to_vec(),
            threads: 1,
            codes: Vec::new(),
            codes_rank: 16,
            add_fraction: 0.0,
            byte_meter: None,
        }
    }
}

/// What [`run`] reports while it works, in this order: [`Progress::Start`], the exact
/// [`Progress::Row`], [`Progress::Fit`] per training step, [`Progress::TtBuilt`], the TT rows,
/// [`Progress::Compression`], the IVF rows, the HNSW rows.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Progress<'a> {
    /// The queries are chosen; the ground truth is next.
    Start {
        /// Base points.
        base: usize,
        /// Queries measured (after [`BenchConfig::limit`]).
        queries: usize,
        /// Dimension.
        dim: usize,
    },
    /// One training step of the TT cloud.
    Fit(FitProgress),
    /// The TT index is built (training is over).
    TtBuilt(&'a TtStats),
    /// A row of the sweep is measured.
    Row(&'a Row),
    /// The TT cloud's compression of the data.
    Compression(&'a Compression),
    /// Where a TT search's time goes, for one storage.
    Profile(&'a TtProfile),
    /// Another cloud is being trained (its steps are not reported): `for_what` says which
    /// rows it serves.
    Training {
        /// `tt-pq` (the compressed mode's coarse index) or `tt-add`.
        for_what: &'static str,
        /// Its TT rank.
        rank: usize,
        /// Points it is trained on.
        points: usize,
    },
    /// The second TT index ([`BenchConfig::add_fraction`]) is trained on `trained` points
    /// and `added` more were inserted, in `seconds` (training included).
    Added {
        /// Points the cloud was trained on and built with.
        trained: usize,
        /// Points inserted afterwards.
        added: usize,
        /// Seconds to train, build, refine and insert.
        seconds: f64,
    },
}

/// The TT index as [`run`] built it.
///
/// Its [`Display`](fmt::Display) is the line the benchmark prints.
#[derive(Debug, Clone, PartialEq)]
pub struct TtStats {
    /// Modes `[N_1..N_k]`.
    pub shape: Vec<usize>,
    /// TT ranks `[1, r_1, ..., r_k]`.
    pub ranks: Vec<usize>,
    /// Leaves (inverted lists).
    pub leaves: usize,
    /// Parameters of the cloud.
    pub param_count: usize,
    /// Floats of the data, `N·D`.
    pub data_floats: usize,
    /// Bytes of the index beyond the vectors, by [`TtIndex::structure_bytes`].
    pub structure_bytes: usize,
    /// The same bytes as [`BenchConfig::byte_meter`] measured them, when there is one.
    pub measured_bytes: Option<i64>,
    /// Seconds to train the cloud and build the index.
    pub build_seconds: f64,
}

impl fmt::Display for TtStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tt: shape {:?}, ranks {:?}, {} leaves; {} parameters against N·D = {}; structure \
             {} B (formula)",
            self.shape,
            self.ranks,
            self.leaves,
            self.param_count,
            self.data_floats,
            self.structure_bytes
        )?;
        if let Some(m) = self.measured_bytes {
            write!(f, ", {m} B (allocator, vectors excluded)")?;
        }
        Ok(())
    }
}

/// The TT cloud's size against the data, and its sliced Wasserstein distance to the data next
/// to that of a random subset of the data holding as many floats.
///
/// Its [`Display`](fmt::Display) is the line the benchmark prints.
#[derive(Debug, Clone, PartialEq)]
pub struct Compression {
    /// Parameters of the cloud.
    pub cloud_floats: usize,
    /// Floats of the data, `N·D`.
    pub data_floats: usize,
    /// Points of the random subset (`cloud_floats / D`, at least 1).
    pub subset_points: usize,
    /// Sliced Wasserstein distance from 4096 cloud points to 4096 data points.
    pub sw_cloud: f64,
    /// Sliced Wasserstein distance from the subset to the same 4096 data points.
    pub sw_subset: f64,
}

impl Compression {
    /// How many times fewer floats the cloud holds than the data.
    pub fn ratio(&self) -> f64 {
        self.data_floats as f64 / self.cloud_floats as f64
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "compression: TT cloud {} floats against N·D = {} ({:.1}x smaller); sliced \
             Wasserstein to the data: TT cloud {:.2}, random subset of {} points (as many \
             floats) {:.2}",
            self.cloud_floats,
            self.data_floats,
            self.ratio(),
            self.sw_cloud,
            self.subset_points,
            self.sw_subset
        )
    }
}

/// Where a TT search's time goes ([`profile`]): the coarse search (the beam descent through
/// the tables, [`TtIndex::probe`]) timed alone over the queries, against the whole search.
///
/// Its [`Display`](fmt::Display) is the line the benchmark prints.
#[derive(Debug, Clone, PartialEq)]
pub struct TtProfile {
    /// The lists' storage.
    pub storage: Storage,
    /// The search settings profiled.
    pub params: String,
    /// Microseconds a query in the coarse search.
    pub coarse_us: f64,
    /// Microseconds a query in the whole search.
    pub total_us: f64,
    /// Vectors scanned a query (the probed leaves' points).
    pub vectors: f64,
}

impl TtProfile {
    /// Nanoseconds a scanned vector: the time outside the coarse search over the vectors.
    pub fn ns_per_vector(&self) -> f64 {
        (self.total_us - self.coarse_us).max(0.0) * 1e3 / self.vectors.max(1.0)
    }
}

impl fmt::Display for TtProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "profile: tt {} {}: {:.1} µs a query, of which the coarse search {:.1} µs ({:.0}%) \
             and the scan of {:.0} vectors {:.1} µs ({:.1} ns a vector)",
            self.storage,
            self.params,
            self.total_us,
            self.coarse_us,
            100.0 * self.coarse_us / self.total_us.max(f64::MIN_POSITIVE),
            self.vectors,
            self.total_us - self.coarse_us,
            self.ns_per_vector()
        )
    }
}

/// Profiles `index` at `params` over the first `n` queries (one at a time on this thread):
/// the coarse search alone, then the whole search.
///
/// # Errors
///
/// The first error the search returns.
pub fn profile(
    index: &TtIndex,
    queries: &Points,
    n: usize,
    params: &TtSearch,
) -> Result<TtProfile> {
    let n = n.min(queries.len()).max(1);
    let lists = index.lists();
    let start = Instant::now();
    let mut vectors = 0usize;
    for i in 0..n {
        for leaf in index.probe(queries.row(i), params)? {
            vectors += lists.len_of(leaf as usize);
        }
    }
    let coarse = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for i in 0..n {
        index.search(queries.row(i), K, params)?;
    }
    let total = start.elapsed().as_secs_f64();
    // The coarse pass also counted the vectors; that is a sum over at most `probe` leaves,
    // negligible next to the descent.
    Ok(TtProfile {
        storage: lists.storage(),
        params: format!("beam={},probe={}", params.beam[0], params.probe),
        coarse_us: coarse * 1e6 / n as f64,
        total_us: total * 1e6 / n as f64,
        vectors: vectors as f64 / n as f64,
    })
}

/// Everything [`run`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The sweep: exact, then TT, IVF and HNSW rows.
    pub rows: Vec<Row>,
    /// The TT index.
    pub tt: TtStats,
    /// The TT cloud's compression of the data.
    pub compression: Compression,
}

/// Recall and speed of one setting, from [`measure`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Mean recall@10, in `[0, 1]`.
    pub recall: f64,
    /// Queries per second.
    pub qps: f64,
}

/// The default TT shape of a memory bank of `n` points ([`crate::ood`]): about `n / 16`
/// leaves (a power of two, at least 8) as three modes, and a last mode that makes the
/// product at least `n` (about 16 points a leaf).
///
/// # Example
///
/// ```
/// use memtrain_index::bench::default_shape;
///
/// assert_eq!(default_shape(60_000), vec![16, 16, 16, 15]);
/// ```
pub fn default_shape(n: usize) -> Vec<usize> {
    shape_with_leaf_size(n, 16)
}

/// The default TT shape of an index of `n` points ([`run`], `memtrain index build`): as
/// [`default_shape`] with about 64 points a leaf. With the leaves refined
/// ([`TtIndex::refine`]) this measured faster at equal recall on Fashion-MNIST than 16 a
/// leaf (1024 leaves: recall@10 0.956 at 9,007 QPS; 4096: 0.954 at 7,846; f32, rank 16).
///
/// # Example
///
/// ```
/// use memtrain_index::bench::index_shape;
///
/// assert_eq!(index_shape(60_000), vec![16, 8, 8, 59]);
/// ```
pub fn index_shape(n: usize) -> Vec<usize> {
    shape_with_leaf_size(n, 64)
}

/// About `n / size` leaves (a power of two, at least 8) as three modes, and a last mode that
/// makes the product at least `n`.
fn shape_with_leaf_size(n: usize, size: usize) -> Vec<usize> {
    let bits = ((n as f64 / size as f64).max(8.0).log2().round() as u32).max(3);
    let a = 1usize << bits.div_ceil(3);
    let b = 1usize << (bits - bits.div_ceil(3)).div_ceil(2);
    let c = 1usize << (bits - bits.div_ceil(3) - (bits - bits.div_ceil(3)).div_ceil(2));
    let leaves = a * b * c;
    vec![a, b, c, n.div_ceil(leaves)]
}

/// Splits `points` into base points and held-out queries: the last tenth (at least one point)
/// are the queries.
///
/// # Errors
///
/// [`Error::Invalid`] for fewer than 2 points.
pub fn hold_out(points: &Points) -> Result<(Points, Points)> {
    let n = points.len();
    if n < 2 {
        return Err(Error::invalid(
            "data",
            format!("{n} point"),
            "at least 2 points, to hold some out as queries",
        ));
    }
    let held = (n / 10).max(1);
    let base: Vec<usize> = (0..n - held).collect();
    let test: Vec<usize> = (n - held..n).collect();
    Ok((points.select(&base), points.select(&test)))
}

/// Runs `search` over the first `n` queries one at a time on this thread; returns the mean
/// recall@10 (distances recomputed exactly from the returned ids, against `truth` from
/// [`ground_truth`]) and the queries per second.
///
/// # Errors
///
/// [`Error::Invalid`] when `n` is 0 or more than the queries or the rows of `truth`, or when
/// `search` returns an id outside `base`; the first error `search` returns.
pub fn measure(
    base: &Points,
    queries: &Points,
    truth: &[Vec<(f32, u32)>],
    n: usize,
    search: impl Fn(&[f32]) -> Result<Vec<u32>> + Sync,
) -> Result<Measurement> {
    measure_threads(base, queries, truth, n, 1, search)
}

/// [`measure`] with the `n` queries split into `threads` contiguous blocks, each searched one
/// query at a time on its own thread (scoped threads, started inside the timed span); the
/// queries per second are the total, `n` over the wall time. `threads` 1 runs on this thread.
///
/// # Errors
///
/// As [`measure`], and [`Error::Invalid`] for `threads` 0.
pub fn measure_threads(
    base: &Points,
    queries: &Points,
    truth: &[Vec<(f32, u32)>],
    n: usize,
    threads: usize,
    search: impl Fn(&[f32]) -> Result<Vec<u32>> + Sync,
) -> Result<Measurement> {
    if threads == 0 {
        return Err(Error::invalid("threads", 0, "at least 1"));
    }
    let available = queries.len().min(truth.len());
    if n == 0 || n > available {
        return Err(Error::invalid(
            "queries measured",
            n,
            format!("1..={available} (the queries with a ground truth)"),
        ));
    }
    let start = Instant::now();
    let found: Vec<Vec<u32>> = if threads == 1 {
        (0..n)
            .map(|i| search(queries.row(i)))
            .collect::<Result<_>>()?
    } else {
        let per = n.div_ceil(threads);
        let search = &search;
        let blocks: Vec<Result<Vec<Vec<u32>>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n)
                .step_by(per)
                .map(|a| {
                    scope.spawn(move || {
                        (a..(a + per).min(n))
                            .map(|i| search(queries.row(i)))
                            .collect::<Result<Vec<_>>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a search thread panicked"))
                .collect()
        });
        let mut found = Vec::with_capacity(n);
        for block in blocks {
            found.extend(block?);
        }
        found
    };
    let qps = n as f64 / start.elapsed().as_secs_f64();
    let mut total = 0.0;
    for (i, ids) in found.iter().enumerate() {
        let mut scored = Vec::with_capacity(ids.len());
        for &id in ids {
            if id as usize >= base.len() {
                return Err(Error::invalid(
                    "returned id",
                    id,
                    format!("below {}, the number of base points", base.len()),
                ));
            }
            scored.push((l2sq(queries.row(i), base.row(id as usize)), id));
        }
        total += recall_at_k(&scored, &truth[i], K);
    }
    Ok(Measurement {
        recall: total / n as f64,
        qps,
    })
}

/// The row method of `base` (`tt`, `ivf`) with lists stored as `storage`.
fn method(base: &str, storage: Storage) -> String {
    match storage {
        Storage::F32 => base.to_string(),
        Storage::Sq8 => format!("{base}-sq8"),
    }
}

/// One setting of a sweep: [`measure`] on one thread, then the total QPS of
/// [`measure_threads`] when `threads` is above 1 (`None` otherwise).
fn measure_both(
    base: &Points,
    queries: &Points,
    truth: &[Vec<(f32, u32)>],
    n: usize,
    threads: usize,
    search: &(dyn Fn(&[f32]) -> Result<Vec<u32>> + Sync),
) -> Result<(Measurement, Option<f64>)> {
    let m = measure(base, queries, truth, n, search)?;
    let parallel = if threads > 1 {
        Some(measure_threads(base, queries, truth, n, threads, search)?.qps)
    } else {
        None
    };
    Ok((m, parallel))
}

/// The ids of a search result.
fn ids(found: Vec<(f32, u32)>) -> Vec<u32> {
    found.into_iter().map(|p| p.1).collect()
}

/// The recall/QPS benchmark: brute force on [`BenchConfig::exact_queries`] queries; the TT
/// index (trained on `base`) at beams 4..64 and probes 1..128; k-means IVF with as many lists
/// as the TT index has leaves (the like-for-like baseline) and with the usual `4·sqrt(N)`
/// lists (IVF's own best setting on its own terms), probes 1..128; HNSW (`M` = 16,
/// `ef_construction` = 200, parallel insertion) at `ef` 10..320. Every row is measured one
/// query at a time on the calling thread; `progress` hears of each step as it happens.
///
/// # Example
///
/// ```
/// use memtrain_index::FitConfig;
/// use memtrain_index::bench::{self, BenchConfig};
/// use memtrain_index::data::clustered;
///
/// let (base, queries) = bench::hold_out(&clustered(300, 8, 4, 0)).unwrap();
/// let config = BenchConfig {
///     fit: FitConfig { rank: 4, steps: 10, batch: 128, ..FitConfig::default() },
///     hnsw: false,
///     ..BenchConfig::default()
/// };
/// let report = bench::run(&base, &queries, &config, &mut |_| {}).unwrap();
/// assert_eq!(report.rows[0].method, "exact");
/// println!("{}", bench::summary(&report.rows));
/// ```
///
/// # Errors
///
/// [`Error::Invalid`] for no base points or queries, [`BenchConfig::limit`] 0, queries of
/// another dimension, a shape too small for the base points or a leaf level outside
/// `1..=modes`; [`Error::TooLarge`] when training or building would not fit in
/// [`crate::memory_limit`] ([`crate::check_memory`]); [`Error::Fit`] when training the cloud
/// fails.
pub fn run(
    base: &Points,
    queries: &Points,
    config: &BenchConfig,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Report> {
    if base.is_empty() {
        return Err(Error::invalid("data", "0 points", "at least 1 point"));
    }
    if queries.is_empty() {
        return Err(Error::invalid("queries", "0 points", "at least 1 point"));
    }
    if config.limit == Some(0) {
        return Err(Error::invalid("limit", 0, "at least 1 query"));
    }
    if config.threads == 0 {
        return Err(Error::invalid("threads", 0, "at least 1"));
    }
    if !(0.0..1.0).contains(&config.add_fraction) {
        return Err(Error::invalid(
            "add fraction",
            config.add_fraction,
            "0 (none) up to but not including 1",
        ));
    }
    if !config.codes.is_empty() && config.codes_rank == 0 {
        return Err(Error::invalid("codes rank", 0, "at least 1"));
    }
    if let Some(&c) = config
        .codes
        .iter()
        .find(|&&c| !(1..=4 * base.dim()).contains(&c))
    {
        return Err(Error::invalid(
            "code bytes",
            c,
            format!("1..={} (at most the raw 4 D bytes)", 4 * base.dim()),
        ));
    }
    if config.storages.is_empty() {
        return Err(Error::invalid(
            "storages",
            "none",
            "at least one of f32, sq8",
        ));
    }
    if queries.dim() != base.dim() {
        return Err(Error::invalid(
            "query dimension",
            queries.dim(),
            format!("{}, the data's dimension", base.dim()),
        ));
    }
    let shape = config
        .shape
        .clone()
        .unwrap_or_else(|| index_shape(base.len()));
    check_capacity(&shape, base.len())?;
    let k = shape.len();
    let leaf = config.leaf_level.unwrap_or(if k > 1 { k - 1 } else { 1 });
    if !(1..=k).contains(&leaf) {
        return Err(Error::invalid(
            "leaf level",
            leaf,
            format!("1..={k} for shape {shape:?}"),
        ));
    }
    // The shape and leaf level are checked above: what the check refuses as invalid is a
    // training setting.
    crate::check_memory(&shape, base.dim(), base.len(), leaf, &config.fit).map_err(
        |e| match e {
            Error::Invalid { .. } => Error::Fit(Box::new(e)),
            e => e,
        },
    )?;
    let nq = config.limit.unwrap_or(queries.len()).min(queries.len());
    let queries = queries.head(nq);
    progress(Progress::Start {
        base: base.len(),
        queries: nq,
        dim: base.dim(),
    });
    let truth = ground_truth(base, &queries, K)?;
    let mut rows: Vec<Row> = Vec::new();
    let mut push = |row: Row, progress: &mut dyn FnMut(Progress<'_>)| {
        progress(Progress::Row(&row));
        rows.push(row);
    };
    // One setting: one thread, then `config.threads` when more than one.
    let timed = |search: &(dyn Fn(&[f32]) -> Result<Vec<u32>> + Sync)| {
        measure_both(base, &queries, &truth, nq, config.threads, search)
    };
    let per_vector = |bytes: usize| bytes as f64 / base.len() as f64;

    let exact = ExactIndex::new(base);
    let n_exact = config.exact_queries.clamp(1, nq);
    let m = measure(base, &queries, &truth, n_exact, |q| {
        Ok(ids(exact.search(q, K)?))
    })?;
    push(
        Row {
            method: "exact".into(),
            params: format!("{n_exact} queries"),
            recall_at_10: m.recall,
            qps: m.qps,
            build_seconds: 0.0,
            index_bytes: 0,
            bytes_per_vector: per_vector(4 * base.len() * base.dim()),
            threads: 1,
            qps_threads: None,
        },
        progress,
    );

    let start = Instant::now();
    let cloud = fit(base, &shape, &config.fit, &mut |p| {
        progress(Progress::Fit(p))
    })
    .map_err(|e| Error::Fit(Box::new(e)))?;
    let fit_seconds = start.elapsed().as_secs_f64();
    let cloud_bytes = 4 * (cloud.param_count() + cloud.dim());
    let vector_bytes = 4 * base.len() * base.dim();
    let live = config.byte_meter.map(|meter| meter());
    let start = Instant::now();
    let tt = TtIndex::build(cloud, base, leaf)?;
    let tt = if config.refine > 0 {
        tt.refine(base, config.refine)?
    } else {
        tt
    };
    let build_seconds = fit_seconds + start.elapsed().as_secs_f64();
    // The cloud was allocated before and moved in; the lists copy the vectors.
    let measured_bytes = config
        .byte_meter
        .zip(live)
        .map(|(meter, live)| (meter() + cloud_bytes) as i64 - (live + vector_bytes) as i64);
    let stats = TtStats {
        shape: shape.clone(),
        ranks: tt.cloud().ranks().to_vec(),
        leaves: tt.leaves(),
        param_count: tt.cloud().param_count(),
        data_floats: base.len() * base.dim(),
        structure_bytes: tt.structure_bytes(),
        measured_bytes,
        build_seconds,
    };
    progress(Progress::TtBuilt(&stats));
    let beams: &[usize] = if leaf == 1 { &[1] } else { &BEAMS };
    for &storage in &config.storages {
        let stored;
        let tt = if storage == tt.lists().storage() {
            &tt
        } else {
            stored = tt.clone().with_storage(base, storage)?;
            &stored
        };
        let bytes = per_vector(tt.structure_bytes() + tt.lists().vector_bytes());
        let profiled = TtSearch::new(if leaf == 1 { 1 } else { 16 }, 10.min(tt.leaves()));
        progress(Progress::Profile(&profile(tt, &queries, nq, &profiled)?));
        for &beam in beams {
            for probe in PROBES {
                if probe > tt.leaves() {
                    continue;
                }
                let params = TtSearch::new(beam, probe);
                let (m, parallel) = timed(&|q| Ok(ids(tt.search(q, K, &params)?)))?;
                push(
                    Row {
                        method: method("tt", storage),
                        params: format!("beam={beam},probe={probe}"),
                        recall_at_10: m.recall,
                        qps: m.qps,
                        build_seconds,
                        index_bytes: stats.structure_bytes,
                        bytes_per_vector: bytes,
                        threads: config.threads,
                        qps_threads: parallel,
                    },
                    progress,
                );
            }
        }
    }
    let coarse_seconds = Instant::now();
    let coarse = if config.codes.is_empty() || config.codes_rank == config.fit.rank {
        None
    } else {
        let fit_config = FitConfig {
            rank: config.codes_rank,
            ..config.fit.clone()
        };
        progress(Progress::Training {
            for_what: "tt-pq",
            rank: config.codes_rank,
            points: base.len(),
        });
        let cloud =
            fit(base, &shape, &fit_config, &mut |_| {}).map_err(|e| Error::Fit(Box::new(e)))?;
        Some(TtIndex::build(cloud, base, leaf)?.refine(base, config.refine)?)
    };
    let coarse_seconds = match &coarse {
        Some(_) => coarse_seconds.elapsed().as_secs_f64(),
        None => build_seconds,
    };
    let coarse = coarse.as_ref().unwrap_or(&tt);
    for &code_bytes in &config.codes {
        let start = Instant::now();
        let bank = CompressedIndex::build(coarse.clone(), base, code_bytes, config.fit.seed)?;
        let seconds = coarse_seconds + start.elapsed().as_secs_f64();
        let beam = if leaf == 1 { 1 } else { 32 };
        for probe in PROBES {
            if probe > bank.coarse().leaves() {
                continue;
            }
            let params = TtSearch::new(beam, probe);
            let (m, parallel) = timed(&|q| Ok(ids(bank.search(q, K, &params)?)))?;
            push(
                Row {
                    method: "tt-pq".into(),
                    params: format!(
                        "codes={code_bytes},rank={},beam={beam},probe={probe}",
                        coarse.cloud().ranks().iter().max().unwrap_or(&1)
                    ),
                    recall_at_10: m.recall,
                    qps: m.qps,
                    build_seconds: seconds,
                    index_bytes: bank.bytes(),
                    bytes_per_vector: bank.bytes_per_vector(),
                    threads: config.threads,
                    qps_threads: parallel,
                },
                progress,
            );
        }
    }
    let compression = compression(base, tt.cloud());
    progress(Progress::Compression(&compression));
    let tt_leaves = tt.leaves();
    drop(tt);

    if config.add_fraction > 0.0 && base.len() >= 2 {
        let n = base.len();
        let held = ((n as f64 * config.add_fraction).round() as usize).clamp(1, n - 1);
        let head = base.head(n - held);
        let tail = base.select(&(n - held..n).collect::<Vec<_>>());
        let start = Instant::now();
        progress(Progress::Training {
            for_what: "tt-add",
            rank: config.fit.rank,
            points: head.len(),
        });
        let cloud =
            fit(&head, &shape, &config.fit, &mut |_| {}).map_err(|e| Error::Fit(Box::new(e)))?;
        let mut grown = TtIndex::build(cloud, &head, leaf)?.refine(&head, config.refine)?;
        grown.add(&tail)?;
        let seconds = start.elapsed().as_secs_f64();
        progress(Progress::Added {
            trained: head.len(),
            added: tail.len(),
            seconds,
        });
        let bytes = per_vector(grown.structure_bytes() + grown.lists().vector_bytes());
        let beam = if leaf == 1 { 1 } else { 32 };
        for probe in PROBES {
            if probe > grown.leaves() {
                continue;
            }
            let params = TtSearch::new(beam, probe);
            let (m, parallel) = timed(&|q| Ok(ids(grown.search(q, K, &params)?)))?;
            push(
                Row {
                    method: "tt-add".into(),
                    params: format!("beam={beam},probe={probe}"),
                    recall_at_10: m.recall,
                    qps: m.qps,
                    build_seconds: seconds,
                    index_bytes: grown.structure_bytes(),
                    bytes_per_vector: bytes,
                    threads: config.threads,
                    qps_threads: parallel,
                },
                progress,
            );
        }
    }

    let same = tt_leaves.min(base.len());
    let usual = ((4.0 * (base.len() as f64).sqrt()).round() as usize).clamp(1, base.len());
    let mut nlists = vec![same];
    if usual != same {
        nlists.push(usual);
    }
    for nlist in nlists {
        let start = Instant::now();
        let ivf = IvfIndex::build(base, nlist, config.kmeans_iters, config.fit.seed)?;
        let ivf_seconds = start.elapsed().as_secs_f64();
        for &storage in &config.storages {
            let stored;
            let ivf = if storage == ivf.lists().storage() {
                &ivf
            } else {
                stored = ivf.clone().with_storage(base, storage)?;
                &stored
            };
            let bytes = per_vector(ivf.structure_bytes() + ivf.lists().vector_bytes());
            for nprobe in PROBES {
                if nprobe > nlist {
                    continue;
                }
                let (m, parallel) = timed(&|q| Ok(ids(ivf.search(q, K, nprobe)?)))?;
                push(
                    Row {
                        method: method("ivf", storage),
                        params: format!("nlist={nlist},nprobe={nprobe}"),
                        recall_at_10: m.recall,
                        qps: m.qps,
                        build_seconds: ivf_seconds,
                        index_bytes: ivf.structure_bytes(),
                        bytes_per_vector: bytes,
                        threads: config.threads,
                        qps_threads: parallel,
                    },
                    progress,
                );
            }
        }
    }

    if config.hnsw {
        for row in hnsw(base, &queries, &truth, config.byte_meter, config.threads)? {
            push(row, progress);
        }
    }
    Ok(Report {
        rows,
        tt: stats,
        compression,
    })
}

/// HNSW (hnsw_rs, `M` = 16, `ef_construction` = 200, parallel insertion) for scale: one row
/// per `ef`. Its bytes are what the build allocated less the vectors (hnsw_rs keeps its own
/// copy), 0 without a meter.
fn hnsw(
    base: &Points,
    queries: &Points,
    truth: &[Vec<(f32, u32)>],
    meter: Option<fn() -> usize>,
    threads: usize,
) -> Result<Vec<Row>> {
    use hnsw_rs::prelude::{DistL2, Hnsw};
    let vectors: Vec<Vec<f32>> = (0..base.len()).map(|i| base.row(i).to_vec()).collect();
    let refs: Vec<(&Vec<f32>, usize)> = vectors.iter().zip(0..).collect();
    let live = meter.map(|meter| meter());
    let start = Instant::now();
    let index = Hnsw::<f32, DistL2>::new(HNSW_M, base.len(), 16, HNSW_EF_CONSTRUCTION, DistL2 {});
    index.parallel_insert(&refs);
    let seconds = start.elapsed().as_secs_f64();
    let bytes = meter.zip(live).map_or(0, |(meter, live)| {
        meter()
            .saturating_sub(live)
            .saturating_sub(4 * base.len() * base.dim())
    });
    let mut rows = Vec::with_capacity(HNSW_EF.len());
    for ef in HNSW_EF {
        let search = |q: &[f32]| -> Result<Vec<u32>> {
            Ok(index
                .search(q, K, ef)
                .into_iter()
                .map(|n| n.d_id as u32)
                .collect())
        };
        let (m, parallel) = measure_both(base, queries, truth, queries.len(), threads, &search)?;
        rows.push(Row {
            method: "hnsw".into(),
            params: format!("M={HNSW_M},ef={ef}"),
            recall_at_10: m.recall,
            qps: m.qps,
            build_seconds: seconds,
            index_bytes: bytes,
            bytes_per_vector: (bytes + 4 * base.len() * base.dim()) as f64 / base.len() as f64,
            threads,
            qps_threads: parallel,
        });
    }
    Ok(rows)
}

/// The cloud's size against `base`, and the sliced Wasserstein distances (64 projections) of
/// 4096 cloud points and of a random subset of `base` holding as many floats as the cloud, to
/// 4096 points of `base`; seeded.
pub fn compression(base: &Points, cloud: &TtCloud) -> Compression {
    let params = cloud.param_count();
    let subset_points = (params / base.dim()).max(1);
    let sample = base.sample(4096, 1);
    let cloud_sample = cloud.sample(4096, 2);
    let subset = base.sample(subset_points, 3);
    Compression {
        cloud_floats: params,
        data_floats: base.len() * base.dim(),
        subset_points,
        sw_cloud: sliced_wasserstein(&cloud_sample, &sample, 64, 4),
        sw_subset: sliced_wasserstein(&subset, &sample, 64, 4),
    }
}

/// The queries per second of a method's Pareto front at `recall`: among the rows of `method`
/// whose params start with `params_prefix`, the best QPS at each row's recall or above,
/// interpolated in log(QPS) linearly between the two sweep points around `recall`; `None`
/// when no row reaches `recall`.
///
/// # Example
///
/// ```
/// use memtrain_index::bench::{Row, qps_at};
///
/// let row = |recall_at_10: f64, qps: f64| Row {
///     method: "ivf".into(),
///     params: "nlist=64,nprobe=1".into(),
///     recall_at_10,
///     qps,
///     build_seconds: 0.0,
///     index_bytes: 0,
///     bytes_per_vector: 0.0,
///     threads: 1,
///     qps_threads: None,
/// };
/// let rows = [row(0.8, 1000.0), row(0.9, 10.0)];
/// // Halfway between the two points, in log(QPS): sqrt(1000 · 10) = 100.
/// let q = qps_at(&rows, "ivf", "nlist=64", 0.85).unwrap();
/// assert!((q - 100.0).abs() < 1e-6);
/// assert_eq!(qps_at(&rows, "ivf", "nlist=64", 0.95), None);
/// ```
pub fn qps_at(rows: &[Row], method: &str, params_prefix: &str, recall: f64) -> Option<f64> {
    let mut pts: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.method == method && r.params.starts_with(params_prefix))
        .map(|r| (r.recall_at_10, r.qps))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Best QPS at recall >= x, for each sweep point x.
    let front: Vec<(f64, f64)> = pts
        .iter()
        .map(|&(x, _)| {
            let best = pts
                .iter()
                .filter(|p| p.0 >= x)
                .map(|p| p.1)
                .fold(0.0, f64::max);
            (x, best)
        })
        .collect();
    let above = front.iter().find(|p| p.0 >= recall)?;
    let below = front.iter().rev().find(|p| p.0 < recall);
    Some(match below {
        Some(b) if above.0 > b.0 => {
            let t = (recall - b.0) / (above.0 - b.0);
            (b.1.ln() * (1.0 - t) + above.1.ln() * t).exp()
        }
        _ => above.1,
    })
}

/// Recall@10 the [`summary`] asks of the TT index.
pub const SUMMARY_RECALL: f64 = 0.95;

/// A TT method against each IVF list count of an IVF method at one recall@10 target, both
/// read off their sweeps at that same recall ([`qps_at`]: the Pareto front, log-QPS
/// interpolated between the two settings around the target), from [`summary_at`].
///
/// Its [`Display`](fmt::Display) is the benchmark's closing lines, one per comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The TT method compared (`tt`, `tt-sq8`).
    pub tt_method: String,
    /// The IVF method compared (`ivf`, `ivf-sq8`).
    pub ivf_method: String,
    /// The recall@10 target.
    pub target: f64,
    /// The fastest TT row at recall@10 >= the target; `None` when no row gets there.
    pub tt: Option<Row>,
    /// The TT method's QPS at the target by [`qps_at`]; `None` when no row gets there.
    pub tt_qps: Option<f64>,
    /// Per IVF list count (`nlist=...`), its QPS at the target by [`qps_at`] (`None`: never
    /// reaches it). Empty when `tt` is `None`.
    pub ivf: Vec<(String, Option<f64>)>,
}

/// The summaries the benchmark prints: for each storage with TT and IVF rows (`tt` against
/// `ivf`, `tt-sq8` against `ivf-sq8`), [`summary_at`] recall@10 [`SUMMARY_RECALL`] and 0.99.
pub fn summaries(rows: &[Row]) -> Vec<Summary> {
    let mut out = Vec::new();
    for (tt, ivf) in [("tt", "ivf"), ("tt-sq8", "ivf-sq8")] {
        if rows.iter().any(|r| r.method == tt) {
            for target in [SUMMARY_RECALL, 0.99] {
                out.push(summary_at(rows, tt, ivf, target));
            }
        }
    }
    out
}

/// [`summary_at`] of `tt` against `ivf` at [`SUMMARY_RECALL`].
pub fn summary(rows: &[Row]) -> Summary {
    summary_at(rows, "tt", "ivf", SUMMARY_RECALL)
}

/// Compares `tt_method` with each list count of `ivf_method` in `rows` at recall@10
/// `target`, both interpolated on their sweeps at the target.
pub fn summary_at(rows: &[Row], tt_method: &str, ivf_method: &str, target: f64) -> Summary {
    let tt = rows
        .iter()
        .filter(|r| r.method == tt_method && r.recall_at_10 >= target)
        .max_by(|a, b| a.qps.total_cmp(&b.qps));
    let mut out = Summary {
        tt_method: tt_method.to_string(),
        ivf_method: ivf_method.to_string(),
        target,
        tt: tt.cloned(),
        tt_qps: qps_at(rows, tt_method, "", target),
        ivf: Vec::new(),
    };
    if tt.is_none() {
        return out;
    }
    let mut nlists: Vec<&str> = rows
        .iter()
        .filter(|r| r.method == ivf_method)
        .filter_map(|r| r.params.split(',').next())
        .collect();
    nlists.dedup();
    out.ivf = nlists
        .into_iter()
        .map(|nlist| {
            (
                nlist.to_string(),
                qps_at(rows, ivf_method, &format!("{nlist},"), target),
            )
        })
        .collect();
    out
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (Some(tt), Some(tt_qps)) = (&self.tt, self.tt_qps) else {
            return write!(
                f,
                "summary: no {} setting in the sweep reaches recall@10 {}",
                self.tt_method, self.target
            );
        };
        write!(
            f,
            "summary: {} at recall@10 {} (interpolated): {tt_qps:.0} QPS; its fastest setting \
             at or above: {} ({:.4}, {:.0} QPS)",
            self.tt_method, self.target, tt.params, tt.recall_at_10, tt.qps
        )?;
        for (nlist, qps) in &self.ivf {
            match qps {
                Some(q) => write!(
                    f,
                    "\nsummary: {} {nlist} at recall@10 {} (interpolated): {q:.0} QPS; \
                     {}/{} = {:.2}",
                    self.ivf_method,
                    self.target,
                    self.tt_method,
                    self.ivf_method,
                    tt_qps / q
                )?,
                None => write!(
                    f,
                    "\nsummary: {} {nlist} never reaches recall@10 {}",
                    self.ivf_method, self.target
                )?,
            }
        }
        Ok(())
    }
}
