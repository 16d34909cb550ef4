//! `memtrain index build`: train a cloud on the data and write the index.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use memtrain_index::codes::CompressedIndex;
use memtrain_index::{Storage, TtIndex, fit, io};

use super::{CloudArgs, ListArgs, Purpose, check_cloud, fit_config, load, shape_of, show};
use crate::output::human_bytes;

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// A float32 [N, D] .npy file, or a directory with the Fashion-MNIST IDX files (its
    /// training images are indexed).
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    cloud: CloudArgs,
    #[command(flatten)]
    lists: ListArgs,
    /// How the lists store the vectors: f32 (exact distances) or sq8 (one byte a
    /// coordinate, 4x smaller, distances from the codes). Not with --codes.
    #[arg(long, default_value = "f32")]
    storage: String,
    /// Write a compressed index instead: no raw vectors, each point coded in BYTES bytes
    /// (1..=4 D) of product-quantization code of its residual to its leaf's centre
    /// (memtrain_index::codes::CompressedIndex); `index query` reads either kind. The lists'
    /// --storage does not apply (f32 only).
    #[arg(long, value_name = "BYTES")]
    codes: Option<usize>,
    /// Index only the first N points of --data.
    #[arg(long)]
    limit: Option<usize>,
    /// Where to write the index.
    #[arg(long)]
    out: PathBuf,
}

pub(super) fn run(args: BuildArgs) -> Result<()> {
    if args.limit == Some(0) {
        bail!("invalid --limit: got 0, expected at least 1 point");
    }
    let (points, _) = load(&args.data, "--data")?;
    let points = match args.limit {
        Some(n) if n < points.len() => points.head(n),
        _ => points,
    };
    let storage: Storage = args.storage.parse().context("--storage")?;
    // Both checks come before training the cloud, which can take minutes.
    if let Some(bytes) = args.codes {
        let d = points.dim();
        if !(1..=4 * d).contains(&bytes) {
            bail!(
                "invalid --codes: got {bytes}, expected 1..={} code bytes per vector (at most \
                 the raw 4 D bytes for dimension {d})",
                4 * d
            );
        }
        if storage != Storage::F32 {
            bail!(
                "invalid --storage {} with --codes: a compressed index stores codes, not \
                 vectors; expected --storage f32 (the default) or no --codes",
                args.storage
            );
        }
    }
    let purpose = if args.codes.is_some() {
        Purpose::Compressed
    } else {
        Purpose::Index
    };
    let (shape, leaf) = shape_of(&args.cloud, points.len(), purpose)?;
    check_cloud(
        &args.cloud,
        &shape,
        leaf,
        points.len(),
        points.dim(),
        purpose,
    )?;
    let mut bar = None;
    let start = Instant::now();
    let cloud = fit(
        &points,
        &shape,
        &fit_config(&args.cloud, purpose),
        &mut |p| show(&mut bar, &p),
    )
    .context("training the TT cloud")?;
    drop(bar);
    eprintln!("trained the cloud; building the inverted lists...");
    let index = TtIndex::build(cloud, &points, leaf)?.refine(&points, args.lists.refine)?;
    if let Some(bytes) = args.codes {
        eprintln!("coding each point in at most {bytes} bytes...");
        let bank =
            CompressedIndex::build(index, &points, bytes, args.cloud.seed).context("--codes")?;
        let seconds = start.elapsed().as_secs_f64();
        io::save_compressed(&bank, &args.out).context("--out")?;
        let (coarse, l) = (bank.coarse(), bank.layout());
        println!(
            "compressed {} points of dimension {} in {seconds:.1} s: shape {shape:?}, ranks {:?}, \
             {} leaves, {}-byte codes ({} {}-bit subspaces over {} coordinates{}); {:.1} bytes \
             per vector, {} bytes in all ({}); wrote {}",
            points.len(),
            points.dim(),
            coarse.cloud().ranks(),
            coarse.leaves(),
            l.code_bytes(),
            l.subspaces,
            l.bits,
            l.projected,
            if l.norm { " and a norm byte" } else { "" },
            bank.bytes_per_vector(),
            bank.bytes(),
            human_bytes(bank.bytes() as u64),
            args.out.display()
        );
        return Ok(());
    }
    let index = index.with_storage(&points, storage)?;
    let seconds = start.elapsed().as_secs_f64();
    io::save(&index, &args.out).context("--out")?;
    println!(
        "indexed {} points of dimension {} in {seconds:.1} s: shape {shape:?}, ranks {:?}, {} leaves, \
         structure {}; wrote {}",
        points.len(),
        points.dim(),
        index.cloud().ranks(),
        index.leaves(),
        human_bytes(index.structure_bytes() as u64),
        args.out.display()
    );
    Ok(())
}
