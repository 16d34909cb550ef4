//! `memtrain index`: build, query and benchmark the tensor-train point-cloud index, and the
//! out-of-distribution demo, one file per subcommand. The benchmark harness and the demo are
//! `memtrain_index::bench` and `memtrain_index::ood`; the files here parse, call them with a
//! progress callback, and print. What they share (loading points, the cloud's flags and
//! shape, the training progress bar) is in this file.

mod add;
mod bench;
mod build;
mod ood;
mod plot;
mod query;

use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use memtrain_index::data::{FASHION_MNIST_DIR, Points, read_fashion_mnist, read_npy};
use memtrain_index::{FitConfig, FitProgress, check_capacity, check_memory};

use crate::output::Progress;

#[derive(Args, Debug)]
pub struct IndexArgs {
    #[command(subcommand)]
    command: IndexCommand,
}

#[derive(Subcommand, Debug)]
enum IndexCommand {
    /// Train a TT cloud on the data and write the index (one file).
    Build(build::BuildArgs),
    /// Search an index for the nearest neighbours of each query.
    Query(query::QueryArgs),
    /// Insert new points into an index file (each into its nearest leaf).
    Add(add::AddArgs),
    /// Recall@10 against queries per second: TT index, k-means IVF, HNSW and brute force,
    /// all built and measured in this run.
    Bench(bench::BenchArgs),
    /// Out-of-distribution detection with the TT cloud as the memory bank (Fashion-MNIST).
    Ood(ood::OodArgs),
    /// Redraw the recall/QPS plot from a `bench --json` file, and print its summary.
    Plot(plot::PlotArgs),
}

/// How the TT cloud is shaped and trained.
#[derive(Args, Debug, Clone)]
pub struct CloudArgs {
    /// Modes N1,N2,...; their product must be at least the number of points. Default: three
    /// modes of about N/16 leaves in all, and a last mode of ceil(N / leaves).
    #[arg(long)]
    shape: Option<String>,
    /// Largest TT rank. Default: 32 for an index (build, bench), 16 for a compressed index
    /// (build --codes: its cloud is part of every vector's bytes) and the ood memory bank.
    #[arg(long)]
    rank: Option<usize>,
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

/// How the index's leaves are refined and its vectors stored.
#[derive(Args, Debug, Clone)]
pub struct ListArgs {
    /// Lloyd rounds refining the cloud's cluster tables on the data (0: the cloud's own
    /// centres).
    #[arg(long, default_value_t = 10)]
    refine: usize,
}

pub fn run(args: IndexArgs) -> Result<()> {
    match args.command {
        IndexCommand::Build(a) => build::run(a),
        IndexCommand::Query(a) => query::run(a),
        IndexCommand::Add(a) => add::run(a),
        IndexCommand::Bench(a) => bench::run(a),
        IndexCommand::Ood(a) => ood::run(a),
        IndexCommand::Plot(a) => plot::run(a),
    }
}

/// The points of `path`, and the queries when the source has its own: an .npy file, or a
/// Fashion-MNIST directory (its training images, and its test images as the queries).
pub(super) fn load(path: &Path, flag: &str) -> Result<(Points, Option<Points>)> {
    if !path.is_dir() {
        return Ok((read_npy(path).context(flag.to_string())?, None));
    }
    let f = read_fashion_mnist(path).with_context(|| match flag {
        "--data" => format!(
            "--data {}: expected the Fashion-MNIST IDX files (apt-get install \
             dataset-fashion-mnist puts them in {FASHION_MNIST_DIR})",
            path.display()
        ),
        _ => flag.to_string(),
    })?;
    Ok((f.train, Some(f.test)))
}

/// What the cloud is for: its default shape and rank differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// An index (build, bench): about 64 points a leaf, rank 32.
    Index,
    /// A compressed index (build --codes): about 64 points a leaf, rank 16.
    Compressed,
    /// The ood memory bank: about 16 points a leaf, rank 16.
    MemoryBank,
}

/// The cloud's shape (`--shape`, or the default for `n` points) and leaf level.
pub(super) fn shape_of(
    cloud: &CloudArgs,
    n: usize,
    purpose: Purpose,
) -> Result<(Vec<usize>, usize)> {
    let shape = match (&cloud.shape, purpose) {
        (Some(s), _) => memtrain_index::parse::shape(s).context("--shape")?,
        (None, Purpose::Index | Purpose::Compressed) => memtrain_index::bench::index_shape(n),
        (None, Purpose::MemoryBank) => memtrain_index::bench::default_shape(n),
    };
    check_capacity(&shape, n).context("--shape")?;
    let k = shape.len();
    let leaf = cloud.leaf_level.unwrap_or(if k > 1 { k - 1 } else { 1 });
    if !(1..=k).contains(&leaf) {
        bail!("invalid --leaf-level: got {leaf}, expected 1..={k} for --shape {shape:?}");
    }
    Ok((shape, leaf))
}

/// An error before any training unless the cloud's settings are valid and training it on `n`
/// points of dimension `d` and building its index fit in memory.
pub(super) fn check_cloud(
    cloud: &CloudArgs,
    shape: &[usize],
    leaf: usize,
    n: usize,
    d: usize,
    purpose: Purpose,
) -> Result<()> {
    let config = fit_config(cloud, purpose);
    config.validate().context("training the TT cloud")?;
    check_memory(shape, d, n, leaf, &config)?;
    Ok(())
}

pub(super) fn fit_config(args: &CloudArgs, purpose: Purpose) -> FitConfig {
    FitConfig {
        rank: args.rank.unwrap_or(match purpose {
            Purpose::Index => 32,
            Purpose::Compressed | Purpose::MemoryBank => 16,
        }),
        steps: args.steps,
        batch: args.batch,
        nn_weight: args.nn_weight,
        level_weight: args.level_weight,
        lr: args.lr,
        seed: args.seed,
        ..FitConfig::default()
    }
}

/// Shows a training step on `bar` ([`Progress`]: a bar on a terminal, a plain line now and
/// then elsewhere), made at the first step; dropping it clears the bar.
pub(super) fn show(bar: &mut Option<Progress>, p: &FitProgress) {
    let bar = bar.get_or_insert_with(|| Progress::new("fit: step", p.steps as u64));
    bar.set(
        p.step as u64,
        &format!("SW² {:.4} NN {:.4}", p.sliced_wasserstein, p.nearest),
    );
}
