//! `memtrain index build`: train a cloud on the data and write the index.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use memtrain_index::{TtIndex, fit, io};

use super::{CloudArgs, check_cloud, fit_config, load, shape_of, show};

#[derive(Args, Debug)]
pub struct BuildArgs {
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

pub(super) fn run(args: BuildArgs) -> Result<()> {
    let (points, _) = load(&args.data, "--data")?;
    let (shape, leaf) = shape_of(&args.cloud, points.len())?;
    check_cloud(&args.cloud, &shape, leaf, points.len(), points.dim())?;
    let mut bar = None;
    let start = Instant::now();
    let cloud = fit(&points, &shape, &fit_config(&args.cloud), &mut |p| {
        show(&mut bar, &p)
    })
    .context("training the TT cloud")?;
    drop(bar);
    let seconds = start.elapsed().as_secs_f64();
    let index = TtIndex::build(cloud, &points, leaf)?;
    io::save(&index, &args.out).context("--out")?;
    println!(
        "indexed {} points of dimension {} in {seconds:.1} s: shape {shape:?}, ranks {:?}, {} leaves, \
         {} structure bytes; wrote {}",
        points.len(),
        points.dim(),
        index.cloud().ranks(),
        index.leaves(),
        index.structure_bytes(),
        args.out.display()
    );
    Ok(())
}
