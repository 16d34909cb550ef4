//! `memtrain index bench`: [`memtrain_index::bench::run`], printed row by row.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use memtrain_index::bench::{self, BenchConfig};
use memtrain_index::data::FASHION_MNIST_DIR;

use super::{CloudArgs, ListArgs, Purpose, fit_config, load, shape_of, show};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Base vectors: a float32 [N, D] .npy file, or a Fashion-MNIST directory (60,000 base
    /// vectors, 10,000 queries).
    #[arg(long, default_value = FASHION_MNIST_DIR)]
    data: PathBuf,
    /// Queries for an .npy --data (default: the last 10% of the data, held out).
    #[arg(long)]
    queries: Option<PathBuf>,
    #[command(flatten)]
    cloud: CloudArgs,
    #[command(flatten)]
    lists: ListArgs,
    /// The list storages TT and IVF are measured with: f32, sq8, or both (f32,sq8).
    #[arg(long, default_value = "f32,sq8")]
    storage: String,
    /// Code bytes per vector of the compressed mode (no raw vectors: a TT leaf and a code of
    /// the residual per vector), one `tt-pq` sweep each, comma-separated; "" for none.
    /// Default: 17 and 50 (those at most the raw 4·D bytes).
    #[arg(long)]
    codes: Option<String>,
    /// TT rank of the compressed mode's coarse index (a second cloud is trained when it
    /// differs from --rank).
    #[arg(long, default_value_t = 16)]
    codes_rank: usize,
    /// Also measure every setting with the queries split across this many threads (total
    /// QPS next to the single-thread QPS).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Also build the TT index on all but this fraction of the base vectors, add the rest
    /// with `TtIndex::add`, and measure it (`tt-add` rows); 0: skip.
    #[arg(long, default_value_t = 0.1)]
    add_fraction: f64,
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

pub(super) fn run(args: BenchArgs) -> Result<()> {
    if args.limit == Some(0) {
        bail!("invalid --limit: got 0, expected at least 1 query");
    }
    if args.codes_rank == 0 {
        bail!("invalid --codes-rank: got 0, expected at least 1");
    }
    if args.threads == 0 {
        bail!("invalid --threads: got 0, expected at least 1");
    }
    if !(0.0..1.0).contains(&args.add_fraction) {
        bail!(
            "invalid --add-fraction: got {}, expected 0 (skip) up to but not including 1",
            args.add_fraction
        );
    }
    let storages = args
        .storage
        .split(',')
        .map(|s| s.trim().parse::<memtrain_index::Storage>())
        .collect::<memtrain_index::Result<Vec<_>>>()
        .context("--storage")?;
    if args.exact_queries == 0 {
        bail!("invalid --exact-queries: got 0, expected at least 1 query");
    }
    let (data, own) = load(&args.data, "--data")?;
    let (base, queries) = match (own, &args.queries) {
        (_, Some(q)) => {
            let (points, test) = load(q, "--queries")?;
            (data, test.unwrap_or(points))
        }
        (Some(q), None) => (data, q),
        (None, None) if data.len() < 2 => bail!(
            "--data holds {} point; the benchmark needs at least 2 (or --queries)",
            data.len()
        ),
        (None, None) => bench::hold_out(&data)?,
    };
    if queries.dim() != base.dim() {
        bail!(
            "dimension mismatch: the queries have dimension {}, the data {}",
            queries.dim(),
            base.dim()
        );
    }
    let raw = 4 * base.dim();
    let codes = match &args.codes {
        None => [17, 50].into_iter().filter(|&c| c <= raw).collect(),
        Some(list) if list.trim().is_empty() => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|c| {
                c.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|c| (1..=raw).contains(c))
                    .with_context(|| {
                        format!(
                            "invalid --codes entry {c:?}: expected code bytes per vector, \
                             1..={raw} (at most the raw 4·D bytes for dimension {})",
                            base.dim()
                        )
                    })
            })
            .collect::<Result<Vec<_>>>()?,
    };
    let (shape, leaf) = shape_of(&args.cloud, base.len(), Purpose::Index)?;
    let config = BenchConfig {
        fit: fit_config(&args.cloud, Purpose::Index),
        shape: Some(shape),
        leaf_level: Some(leaf),
        limit: args.limit,
        exact_queries: args.exact_queries,
        kmeans_iters: args.kmeans_iters,
        hnsw: !args.no_hnsw,
        refine: args.lists.refine,
        storages,
        threads: args.threads,
        codes,
        codes_rank: args.codes_rank,
        add_fraction: args.add_fraction,
        byte_meter: Some(memtrain::memory::live_bytes),
    };
    let mut bar = None;
    let report = bench::run(&base, &queries, &config, &mut |p| match p {
        bench::Progress::Start { base, queries, dim } => {
            eprintln!("{base} base vectors, {queries} queries, dimension {dim}; ground truth...")
        }
        bench::Progress::Fit(p) => show(&mut bar, &p),
        bench::Progress::TtBuilt(tt) => {
            bar = None;
            eprintln!("{tt}");
        }
        bench::Progress::Row(row) => println!("{row}"),
        bench::Progress::Compression(c) => println!("{c}"),
        bench::Progress::Profile(p) => println!("{p}"),
        bench::Progress::Training {
            for_what,
            rank,
            points,
        } => eprintln!("{for_what}: training another cloud (rank {rank}, {points} points)..."),
        bench::Progress::Added {
            trained,
            added,
            seconds,
        } => eprintln!(
            "tt-add: trained and built on {trained} points, then added {added} ({seconds:.1} s)"
        ),
        _ => {}
    })?;
    for line in bench::summaries(&report.rows) {
        println!("{line}");
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report.rows)?;
        crate::output::write_atomic(path, json.as_bytes()).context("--json")?;
    }
    if let Some(path) = &args.plot {
        super::plot::curves(&report.rows, path).context("--plot")?;
    }
    Ok(())
}
