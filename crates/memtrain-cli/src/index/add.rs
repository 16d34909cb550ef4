//! `memtrain index add`: insert new points into an index file.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use memtrain_index::io;

use super::load;

#[derive(Args, Debug)]
pub struct AddArgs {
    /// An index written by `memtrain index build`; rewritten in place (through a temporary
    /// file and a rename) unless --out is given.
    #[arg(long)]
    index: PathBuf,
    /// The new points: a float32 [N, D] .npy file, or a Fashion-MNIST directory (its
    /// training images). They get the ids that follow the index's last.
    #[arg(long)]
    data: PathBuf,
    /// Write the grown index here instead of over --index.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub(super) fn run(args: AddArgs) -> Result<()> {
    let mut index = io::load(&args.index).context("--index")?;
    let (points, _) = load(&args.data, "--data")?;
    if points.dim() != index.cloud().dim() {
        bail!(
            "dimension mismatch: --data has dimension {}, the index {}",
            points.dim(),
            index.cloud().dim()
        );
    }
    let first = index.len();
    index.add(&points).context("--data")?;
    let out = args.out.as_ref().unwrap_or(&args.index);
    io::save(&index, out).context(if args.out.is_some() {
        "--out"
    } else {
        "--index"
    })?;
    println!(
        "added {} points (ids {}..{}) to their nearest leaves; the index holds {}; wrote {}",
        points.len(),
        first,
        index.len(),
        index.len(),
        out.display()
    );
    Ok(())
}
