//! `memtrain index`: build, query and benchmark the tensor-train point-cloud index, and the
//! out-of-distribution demo.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use memtrain_index::data::{FASHION_MNIST_DIR, Points, read_fashion_mnist, read_npy};
use memtrain_index::kernel::l2sq;
use memtrain_index::metrics::{auroc, recall_at_k, sliced_wasserstein};
use memtrain_index::{
    ExactIndex, FitConfig, IvfIndex, TtCloud, TtIndex, TtSearch, check_capacity, fit, ground_truth,
    io,
};
use serde::{Deserialize, Serialize};

#[derive(Args, Debug)]
pub struct IndexArgs {
    #[command(subcommand)]
    command: IndexCommand,
}

#[derive(Subcommand, Debug)]
enum IndexCommand {
    /// Train a TT cloud on the data and write the index (one file).
    Build(BuildArgs),
    /// Search an index for the nearest neighbours of each query.
    Query(QueryArgs),
    /// Recall@10 against queries per second: TT index, k-means IVF, HNSW and brute force,
    /// all built and measured in this run.
    Bench(BenchArgs),
    /// Out-of-distribution detection with the TT cloud as the memory bank (Fashion-MNIST).
    Ood(OodArgs),
    /// Redraw the recall/QPS plot from a `bench --json` file.
    Plot(PlotArgs),
}

#[derive(Args, Debug)]
struct PlotArgs {
    /// A file written by `memtrain index bench --json`.
    #[arg(long)]
    json: PathBuf,
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
}

/// How the TT cloud is shaped and trained.
#[derive(Args, Debug, Clone)]
struct CloudArgs {
    /// Modes N1,N2,...; their product must be at least the number of points. Default: three
    /// modes of about N/16 leaves in all, and a last mode of ceil(N / leaves).
    #[arg(long)]
    shape: Option<String>,
    /// Largest TT rank.
    #[arg(long, default_value_t = 16)]
    rank: usize,
    /// Level of the leaves (inverted lists), 1..=modes; default: the last but one.
    #[arg(long)]
    leaf_level: Option<usize>,
    /// Training steps.
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Cloud and data points per step.
    #[arg(long, default_value_t = 2048)]
    batch: usize,
    /// Weight of the nearest-neighbour loss next to sliced Wasserstein.
    #[arg(long, default_value_t = 1.0)]
    nn_weight: f64,
    /// Weight of the cluster loss (data to the nearest cluster centre at each level).
    #[arg(long, default_value_t = 1.0)]
    level_weight: f64,
    /// Adam learning rate.
    #[arg(long, default_value_t = 0.02)]
    lr: f64,
    /// Seed of the training.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args, Debug)]
struct BuildArgs {
    /// A float32 [N, D] .npy file, or a directory with the Fashion-MNIST IDX files (its
    /// training images are indexed).
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    cloud: CloudArgs,
    /// Where to write the index.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct QueryArgs {
    /// An index written by `memtrain index build`.
    #[arg(long)]
    index: PathBuf,
    /// Queries: a float32 [Q, D] .npy file, or a Fashion-MNIST directory (its test images).
    #[arg(long)]
    queries: PathBuf,
    /// Neighbours per query.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Beam width per level: one number, or one per level above the leaves (8,16).
    #[arg(long, default_value = "8")]
    beam: String,
    /// Leaves scanned.
    #[arg(long, default_value_t = 16)]
    probe: usize,
    /// Only the first N queries.
    #[arg(long)]
    limit: Option<usize>,
    /// Print JSON: one object per query with `ids` and `distances`.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Base vectors: a float32 [N, D] .npy file, or a Fashion-MNIST directory (60,000 base
    /// vectors, 10,000 queries).
    #[arg(long, default_value = FASHION_MNIST_DIR)]
    data: PathBuf,
    /// Queries for an .npy --data (default: the last 10% of the data, held out).
    #[arg(long)]
    queries: Option<PathBuf>,
    #[command(flatten)]
    cloud: CloudArgs,
    /// Only the first N queries.
    #[arg(long)]
    limit: Option<usize>,
    /// Queries timed for the brute-force baseline (it takes N·D per query).
    #[arg(long, default_value_t = 500)]
    exact_queries: usize,
    /// k-means rounds of the IVF baseline.
    #[arg(long, default_value_t = 10)]
    kmeans_iters: usize,
    /// Skip the HNSW baseline.
    #[arg(long)]
    no_hnsw: bool,
    /// Draw recall@10 against queries per second to this PNG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write the rows as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct OodArgs {
    /// A directory with the Fashion-MNIST IDX files.
    #[arg(long, default_value = FASHION_MNIST_DIR)]
    data: PathBuf,
    /// The in-distribution classes (the other five are out of distribution).
    #[arg(long, default_value = "0,1,2,3,4")]
    classes: String,
    #[command(flatten)]
    cloud: CloudArgs,
    /// Write the table as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(args: IndexArgs) -> Result<()> {
    match args.command {
        IndexCommand::Build(a) => build(a),
        IndexCommand::Query(a) => query(a),
        IndexCommand::Bench(a) => bench(a),
        IndexCommand::Ood(a) => ood(a),
        IndexCommand::Plot(a) => {
            let text = std::fs::read_to_string(&a.json)
                .with_context(|| format!("--json {}", a.json.display()))?;
            let rows: Vec<Row> = serde_json::from_str(&text).with_context(|| {
                format!(
                    "--json {}: not a `memtrain index bench --json` file",
                    a.json.display()
                )
            })?;
            if rows.is_empty() {
                bail!("--json {}: no rows to plot", a.json.display());
            }
            plot_curves(&rows, &a.out).context("--out")
        }
    }
}

/// Base points, and the queries when the source has its own (Fashion-MNIST's test images).
struct Loaded {
    base: Points,
    queries: Option<Points>,
}

fn load(path: &Path) -> Result<Loaded> {
    if path.is_dir() {
        let f = read_fashion_mnist(path).with_context(|| {
            format!(
                "--data {}: expected the Fashion-MNIST IDX files (apt-get install \
                 dataset-fashion-mnist puts them in {FASHION_MNIST_DIR})",
                path.display()
            )
        })?;
        Ok(Loaded {
            base: f.train,
            queries: Some(f.test),
        })
    } else {
        Ok(Loaded {
            base: read_npy(path).context("--data")?,
            queries: None,
        })
    }
}

fn load_queries(path: &Path) -> Result<Points> {
    if path.is_dir() {
        Ok(read_fashion_mnist(path).context("--queries")?.test)
    } else {
        read_npy(path).context("--queries")
    }
}

/// Parses a comma-separated list of positive integers.
fn parse_list(flag: &str, text: &str) -> Result<Vec<usize>> {
    parse_numbers(flag, text, 1..=usize::MAX, "positive integers")
}

/// Parses a comma-separated list of integers in `valid`; the error names the token, the
/// whole list, and `what` was expected.
fn parse_numbers(
    flag: &str,
    text: &str,
    valid: std::ops::RangeInclusive<usize>,
    what: &str,
) -> Result<Vec<usize>> {
    text.split(',')
        .map(|t| match t.trim().parse::<usize>() {
            Ok(v) if valid.contains(&v) => Ok(v),
            _ => Err(anyhow!(
                "invalid {flag}: got {t:?} in {text:?}, expected {what} separated by commas"
            )),
        })
        .collect()
}

/// The default shape for `n` points: about `n / 16` leaves (a power of two, at least 8) as
/// three modes, and a last mode that makes the product at least `n` (about 16 points a leaf).
fn default_shape(n: usize) -> Vec<usize> {
    let bits = ((n as f64 / 16.0).max(8.0).log2().round() as u32).max(3);
    let a = 1usize << bits.div_ceil(3);
    let b = 1usize << (bits - bits.div_ceil(3)).div_ceil(2);
    let c = 1usize << (bits - bits.div_ceil(3) - (bits - bits.div_ceil(3)).div_ceil(2));
    let leaves = a * b * c;
    vec![a, b, c, n.div_ceil(leaves)]
}

fn shape_of(cloud: &CloudArgs, n: usize) -> Result<(Vec<usize>, usize)> {
    let shape = match &cloud.shape {
        Some(s) => parse_list("--shape", s)?,
        None => default_shape(n),
    };
    check_capacity(&shape, n).context("--shape")?;
    let k = shape.len();
    let leaf = cloud.leaf_level.unwrap_or(if k > 1 { k - 1 } else { 1 });
    if !(1..=k).contains(&leaf) {
        bail!("invalid --leaf-level: got {leaf}, expected 1..={k} for --shape {shape:?}");
    }
    Ok((shape, leaf))
}

/// Trains the cloud with a progress bar; returns it and the seconds taken.
fn train(points: &Points, shape: &[usize], args: &CloudArgs) -> Result<(TtCloud, f64)> {
    let config = FitConfig {
        rank: args.rank,
        steps: args.steps,
        batch: args.batch,
        nn_weight: args.nn_weight,
        level_weight: args.level_weight,
        lr: args.lr,
        seed: args.seed,
        ..FitConfig::default()
    };
    let bar = ProgressBar::new(args.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("fit {bar:30} {pos}/{len} {msg} [{elapsed}]")
            .expect("a valid template"),
    );
    let start = Instant::now();
    let cloud = fit(points, shape, &config, &mut |p| {
        bar.set_position(p.step as u64);
        bar.set_message(format!(
            "SW² {:.4} NN {:.4}",
            p.sliced_wasserstein, p.nearest
        ));
    })
    .context("training the TT cloud")?;
    bar.finish_and_clear();
    Ok((cloud, start.elapsed().as_secs_f64()))
}

fn build(args: BuildArgs) -> Result<()> {
    let data = load(&args.data)?;
    let (shape, leaf) = shape_of(&args.cloud, data.base.len())?;
    let (cloud, seconds) = train(&data.base, &shape, &args.cloud)?;
    let index = TtIndex::build(cloud, &data.base, leaf)?;
    io::save(&index, &args.out).context("--out")?;
    println!(
        "indexed {} points of dimension {} in {seconds:.1} s: shape {shape:?}, ranks {:?}, {} leaves, \
         {} structure bytes; wrote {}",
        data.base.len(),
        data.base.dim(),
        index.cloud().ranks(),
        index.leaves(),
        index.structure_bytes(),
        args.out.display()
    );
    Ok(())
}

fn search_params(beam: &str, probe: usize) -> Result<TtSearch> {
    if probe == 0 {
        bail!("invalid --probe: got 0, expected at least 1");
    }
    Ok(TtSearch {
        beam: parse_list("--beam", beam)?,
        probe,
    })
}

fn query(args: QueryArgs) -> Result<()> {
    let index = io::load(&args.index).context("--index")?;
    let queries = load_queries(&args.queries)?;
    if queries.dim() != index.cloud().dim() {
        bail!(
            "dimension mismatch: the queries have dimension {}, the index {}",
            queries.dim(),
            index.cloud().dim()
        );
    }
    let params = search_params(&args.beam, args.probe)?;
    let n = args.limit.unwrap_or(queries.len()).min(queries.len());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let found = index.search(queries.row(i), args.k, &params)?;
        out.push(found);
    }
    if args.json {
        let rows: Vec<serde_json::Value> = out
            .iter()
            .map(|f| {
                serde_json::json!({
                    "ids": f.iter().map(|p| p.1).collect::<Vec<_>>(),
                    "distances": f.iter().map(|p| p.0.max(0.0).sqrt()).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string(&rows)?);
    } else {
        for (i, f) in out.iter().enumerate() {
            let ids: Vec<String> = f.iter().map(|p| p.1.to_string()).collect();
            println!("query {i}: {}", ids.join(" "));
        }
    }
    Ok(())
}

/// One point of the recall/QPS sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    method: String,
    params: String,
    recall_at_10: f64,
    qps: f64,
    build_seconds: f64,
    index_bytes: usize,
}

const K: usize = 10;

/// Runs `search` over the first `n` queries one at a time on this thread; returns the mean
/// recall@10 (distances recomputed exactly from the returned ids) and queries per second.
fn measure(
    base: &Points,
    queries: &Points,
    truth: &[Vec<(f32, u32)>],
    n: usize,
    mut search: impl FnMut(&[f32]) -> Vec<u32>,
) -> (f64, f64) {
    let start = Instant::now();
    let found: Vec<Vec<u32>> = (0..n).map(|i| search(queries.row(i))).collect();
    let qps = n as f64 / start.elapsed().as_secs_f64();
    let recall = found
        .iter()
        .enumerate()
        .map(|(i, ids)| {
            let scored: Vec<(f32, u32)> = ids
                .iter()
                .map(|&id| (l2sq(queries.row(i), base.row(id as usize)), id))
                .collect();
            recall_at_k(&scored, &truth[i], K)
        })
        .sum::<f64>()
        / n as f64;
    (recall, qps)
}

fn bench(args: BenchArgs) -> Result<()> {
    let data = load(&args.data)?;
    let (base, queries) = match (data.queries, &args.queries) {
        (_, Some(q)) => (data.base, load_queries(q)?),
        (Some(q), None) => (data.base, q),
        (None, None) => {
            let n = data.base.len();
            let held = (n / 10).max(1);
            if n < 2 {
                bail!("--data holds {n} point; the benchmark needs at least 2 (or --queries)");
            }
            let rows: Vec<usize> = (0..n - held).collect();
            let test: Vec<usize> = (n - held..n).collect();
            (data.base.select(&rows), data.base.select(&test))
        }
    };
    if queries.dim() != base.dim() {
        bail!(
            "dimension mismatch: the queries have dimension {}, the data {}",
            queries.dim(),
            base.dim()
        );
    }
    let nq = args.limit.unwrap_or(queries.len()).min(queries.len());
    let queries = queries.head(nq);
    let (shape, leaf) = shape_of(&args.cloud, base.len())?;
    eprintln!(
        "{} base vectors, {nq} queries, dimension {}; ground truth...",
        base.len(),
        base.dim()
    );
    let truth = ground_truth(&base, &queries, K)?;
    let mut rows: Vec<Row> = Vec::new();
    let report = |row: &Row| {
        println!(
            "{:<6} {:<22} recall@10 {:.4}  {:>9.1} QPS  build {:>6.1} s  {:>10} B",
            row.method, row.params, row.recall_at_10, row.qps, row.build_seconds, row.index_bytes
        )
    };

    // Brute force.
    let exact = ExactIndex::new(&base);
    let n_exact = args.exact_queries.clamp(1, nq);
    let (recall, qps) = measure(&base, &queries, &truth, n_exact, |q| {
        ids(exact.search(q, K).expect("checked dimension"))
    });
    rows.push(Row {
        method: "exact".into(),
        params: format!("{n_exact} queries"),
        recall_at_10: recall,
        qps,
        build_seconds: 0.0,
        index_bytes: 0,
    });
    report(rows.last().expect("a row"));

    // TT index.
    let (cloud, fit_seconds) = train(&base, &shape, &args.cloud)?;
    let cloud_bytes = 4 * (cloud.param_count() + cloud.dim());
    let vector_bytes = 4 * base.len() * base.dim();
    let live = memtrain::memory::live_bytes();
    let start = Instant::now();
    let tt = TtIndex::build(cloud, &base, leaf)?;
    let tt_seconds = fit_seconds + start.elapsed().as_secs_f64();
    // The cloud was allocated before and moved in; the lists copy the vectors.
    let tt_measured =
        (memtrain::memory::live_bytes() + cloud_bytes) as i64 - (live + vector_bytes) as i64;
    let tt_bytes = tt.structure_bytes();
    eprintln!(
        "tt: shape {shape:?}, ranks {:?}, {} leaves; {} parameters against N·D = {}; structure \
         {tt_bytes} B (formula), {tt_measured} B (allocator, vectors excluded)",
        tt.cloud().ranks(),
        tt.leaves(),
        tt.cloud().param_count(),
        base.len() * base.dim(),
    );
    let mut beams: Vec<usize> = vec![4, 8, 16, 32, 64];
    if leaf == 1 {
        beams = vec![1];
    }
    for &beam in &beams {
        for probe in [1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128] {
            if probe > tt.leaves() {
                continue;
            }
            let params = TtSearch::new(beam, probe);
            let (recall, qps) = measure(&base, &queries, &truth, nq, |q| {
                ids(tt.search(q, K, &params).expect("checked parameters"))
            });
            rows.push(Row {
                method: "tt".into(),
                params: format!("beam={beam},probe={probe}"),
                recall_at_10: recall,
                qps,
                build_seconds: tt_seconds,
                index_bytes: tt_bytes,
            });
            report(rows.last().expect("a row"));
        }
    }
    report_compression(&base, tt.cloud());

    // k-means IVF with as many lists as the TT index has leaves (the like-for-like baseline),
    // and with the usual 4·sqrt(N) lists (IVF's own best setting on its own terms).
    let same = tt.leaves().min(base.len());
    let usual = ((4.0 * (base.len() as f64).sqrt()).round() as usize).clamp(1, base.len());
    let mut nlists = vec![same];
    if usual != same {
        nlists.push(usual);
    }
    for nlist in nlists {
        let start = Instant::now();
        let ivf = IvfIndex::build(&base, nlist, args.kmeans_iters, args.cloud.seed)?;
        let ivf_seconds = start.elapsed().as_secs_f64();
        for nprobe in [1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128] {
            if nprobe > nlist {
                continue;
            }
            let (recall, qps) = measure(&base, &queries, &truth, nq, |q| {
                ids(ivf.search(q, K, nprobe).expect("checked parameters"))
            });
            rows.push(Row {
                method: "ivf".into(),
                params: format!("nlist={nlist},nprobe={nprobe}"),
                recall_at_10: recall,
                qps,
                build_seconds: ivf_seconds,
                index_bytes: ivf.structure_bytes(),
            });
            report(rows.last().expect("a row"));
        }
    }

    if !args.no_hnsw {
        hnsw(&base, &queries, &truth, nq, &mut rows, &report);
    }

    summary(&rows);
    if let Some(path) = &args.json {
        crate::bench::write_atomic(path, serde_json::to_string_pretty(&rows)?.as_bytes())
            .context("--json")?;
    }
    if let Some(path) = &args.plot {
        plot_curves(&rows, path).context("--plot")?;
    }
    Ok(())
}

fn ids(found: Vec<(f32, u32)>) -> Vec<u32> {
    found.into_iter().map(|p| p.1).collect()
}

/// HNSW (hnsw_rs, M = 16, ef_construction = 200, parallel insertion) for scale.
fn hnsw(
    base: &Points,
    queries: &Points,
    truth: &[Vec<(f32, u32)>],
    nq: usize,
    rows: &mut Vec<Row>,
    report: &dyn Fn(&Row),
) {
    use hnsw_rs::prelude::{DistL2, Hnsw};
    let vectors: Vec<Vec<f32>> = (0..base.len()).map(|i| base.row(i).to_vec()).collect();
    let refs: Vec<(&Vec<f32>, usize)> = vectors.iter().zip(0..).collect();
    let live = memtrain::memory::live_bytes();
    let start = Instant::now();
    let (m, ef_c) = (16, 200);
    let index = Hnsw::<f32, DistL2>::new(m, base.len(), 16, ef_c, DistL2 {});
    index.parallel_insert(&refs);
    let seconds = start.elapsed().as_secs_f64();
    // hnsw_rs keeps its own copy of the vectors: the graph is what is left.
    let bytes = memtrain::memory::live_bytes()
        .saturating_sub(live)
        .saturating_sub(4 * base.len() * base.dim());
    for ef in [10, 20, 40, 80, 160, 320] {
        let (recall, qps) = measure(base, queries, truth, nq, |q| {
            index
                .search(q, K, ef)
                .into_iter()
                .map(|n| n.d_id as u32)
                .collect()
        });
        rows.push(Row {
            method: "hnsw".into(),
            params: format!("M={m},ef={ef}"),
            recall_at_10: recall,
            qps,
            build_seconds: seconds,
            index_bytes: bytes,
        });
        report(rows.last().expect("a row"));
    }
}

/// Prints the TT cloud's size against the data and its sliced Wasserstein distance to the
/// data, next to a random subset of the data holding as many floats.
fn report_compression(base: &Points, cloud: &TtCloud) {
    let params = cloud.param_count();
    let subset_points = (params / base.dim()).max(1);
    let sample = base.sample(4096, 1);
    let cloud_sample = cloud.sample(4096, 2);
    let subset = base.sample(subset_points, 3);
    let sw_cloud = sliced_wasserstein(&cloud_sample, &sample, 64, 4);
    let sw_subset = sliced_wasserstein(&subset, &sample, 64, 4);
    println!(
        "compression: TT cloud {params} floats against N·D = {} ({:.1}x smaller); sliced \
         Wasserstein to the data: TT cloud {sw_cloud:.2}, random subset of {subset_points} points \
         (as many floats) {sw_subset:.2}",
        base.len() * base.dim(),
        (base.len() * base.dim()) as f64 / params as f64
    );
}

/// The queries per second of a method's Pareto front at `recall`, interpolating log(QPS)
/// linearly between the two sweep points around it; `None` when the sweep never gets there.
fn qps_at(rows: &[Row], method: &str, params_prefix: &str, recall: f64) -> Option<f64> {
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

/// The fastest TT setting at recall >= 0.95 against each IVF at that same recall.
fn summary(rows: &[Row]) {
    let tt = rows
        .iter()
        .filter(|r| r.method == "tt" && r.recall_at_10 >= 0.95)
        .max_by(|a, b| a.qps.total_cmp(&b.qps));
    let Some(tt) = tt else {
        println!("summary: no tt setting in the sweep reaches recall@10 0.95");
        return;
    };
    println!(
        "summary: tt {} reaches recall@10 {:.4} at {:.0} QPS",
        tt.params, tt.recall_at_10, tt.qps
    );
    let mut nlists: Vec<&str> = rows
        .iter()
        .filter(|r| r.method == "ivf")
        .filter_map(|r| r.params.split(',').next())
        .collect();
    nlists.dedup();
    for nlist in nlists {
        match qps_at(rows, "ivf", nlist, tt.recall_at_10) {
            Some(q) => println!(
                "summary: ivf {nlist} at recall@10 {:.4} (interpolated): {q:.0} QPS; tt/ivf = {:.2}",
                tt.recall_at_10,
                tt.qps / q
            ),
            None => println!(
                "summary: ivf {nlist} never reaches recall@10 {:.4}",
                tt.recall_at_10
            ),
        }
    }
}

/// Recall@10 (x) against queries per second (y, log scale), one line per method.
fn plot_curves(rows: &[Row], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    crate::plot::draw_png(path, (900, 600), |root| {
        let qps_max = rows.iter().map(|r| r.qps).fold(1.0, f64::max) * 1.5;
        let qps_min = rows
            .iter()
            .map(|r| r.qps)
            .fold(f64::INFINITY, f64::min)
            .max(1.0)
            / 1.5;
        let mut chart = ChartBuilder::on(root)
            .caption(
                "recall@10 against queries per second (1 thread)",
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(RECALL_FLOOR..1.0f64, (qps_min..qps_max).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("recall@10")
            .y_desc("queries per second")
            .draw()?;
        // One series per method, and per list count for IVF (the two IVFs differ).
        let mut series: Vec<String> = Vec::new();
        for r in rows {
            let key = series_key(r);
            if !series.contains(&key) {
                series.push(key);
            }
        }
        let mut ivf_seen = 0;
        for key in series.iter() {
            let color = match key.split(' ').next() {
                Some("tt") => RGBColor(234, 67, 53),
                Some("hnsw") => RGBColor(52, 168, 83),
                Some("exact") => RGBColor(0, 0, 0),
                _ => {
                    ivf_seen += 1;
                    if ivf_seen == 1 {
                        RGBColor(66, 133, 244)
                    } else {
                        RGBColor(0, 172, 193)
                    }
                }
            };
            let mut pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| &series_key(r) == key && r.recall_at_10 >= RECALL_FLOOR)
                .map(|r| (r.recall_at_10, r.qps))
                .collect();
            if pts.is_empty() {
                continue;
            }
            // The Pareto front: the best QPS at each recall.
            pts.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut front = Vec::new();
            let mut best = 0.0;
            for p in pts.iter() {
                if p.1 > best {
                    best = p.1;
                    front.push(*p);
                }
            }
            chart
                .draw_series(LineSeries::new(front.clone(), color.stroke_width(2)))?
                .label(key.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })
}

/// Recall below this is left off the plot (the region users choose from is near 1).
const RECALL_FLOOR: f64 = 0.5;

/// The plot series of a row: its method, and its list count for IVF.
fn series_key(row: &Row) -> String {
    match row.method.as_str() {
        "ivf" => format!("ivf {}", row.params.split(',').next().unwrap_or("")),
        m => m.to_string(),
    }
}

/// The OOD table: AUROC of the distance to the nearest memory-bank point, for the TT cloud,
/// the full in-distribution training set, and a random subset as large as the TT cloud.
fn ood(args: OodArgs) -> Result<()> {
    let f = read_fashion_mnist(&args.data).with_context(|| {
        format!(
            "--data {}: expected the Fashion-MNIST IDX files (apt-get install \
             dataset-fashion-mnist)",
            args.data.display()
        )
    })?;
    let classes = parse_numbers("--classes", &args.classes, 0..=9, "class numbers 0-9")?;
    if classes.len() >= 10 {
        bail!(
            "invalid --classes: got all ten classes, expected some to hold out as out of distribution"
        );
    }
    let is_in = |label: u8| classes.contains(&(label as usize));
    let train_rows: Vec<usize> = (0..f.train.len())
        .filter(|&i| is_in(f.train_labels[i]))
        .collect();
    let bank = f.train.select(&train_rows);
    let positive: Vec<bool> = f.test_labels.iter().map(|&l| !is_in(l)).collect();
    let (shape, _) = shape_of(&args.cloud, bank.len())?;
    eprintln!(
        "memory bank: {} training images of classes {classes:?}; {} test images, {} out of distribution",
        bank.len(),
        f.test.len(),
        positive.iter().filter(|&&p| p).count()
    );
    let (cloud, seconds) = train(&bank, &shape, &args.cloud)?;
    let tt_points = cloud.points();
    let subset = bank.sample(
        (cloud.param_count() / bank.dim()).max(1),
        args.cloud.seed + 7,
    );
    let banks: [(&str, &Points, usize); 3] = [
        ("tt cloud", &tt_points, cloud.param_count()),
        ("full training set", &bank, bank.len() * bank.dim()),
        ("random subset", &subset, subset.len() * subset.dim()),
    ];
    println!(
        "TT cloud: shape {shape:?}, ranks {:?}, trained in {seconds:.1} s",
        cloud.ranks()
    );
    println!(
        "{:<20} {:>10} {:>12} {:>8}",
        "memory bank", "points", "floats", "AUROC"
    );
    let mut table = Vec::new();
    for (name, points, floats) in banks {
        let truth = ground_truth(points, &f.test, 1)?;
        let scores: Vec<f64> = truth.iter().map(|t| f64::from(t[0].0).sqrt()).collect();
        let auc = auroc(&scores, &positive);
        println!("{name:<20} {:>10} {floats:>12} {auc:>8.4}", points.len());
        table.push(serde_json::json!({
            "bank": name, "points": points.len(), "floats": floats, "auroc": auc
        }));
    }
    if let Some(path) = &args.json {
        crate::bench::write_atomic(path, serde_json::to_string_pretty(&table)?.as_bytes())
            .context("--json")?;
    }
    Ok(())
}
