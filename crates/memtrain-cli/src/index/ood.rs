//! `memtrain index ood`: [`memtrain_index::ood::run`], printed as a table.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use memtrain_index::data::{FASHION_MNIST_DIR, read_fashion_mnist};
use memtrain_index::ood::{self, OodConfig};

use super::{CloudArgs, Purpose, fit_config, shape_of, show};

#[derive(Args, Debug)]
pub struct OodArgs {
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

/// The OOD table: AUROC of the distance to the nearest memory-bank point, for the TT cloud,
/// the full in-distribution training set, and a random subset as large as the TT cloud.
pub(super) fn run(args: OodArgs) -> Result<()> {
    let f = read_fashion_mnist(&args.data).with_context(|| {
        format!(
            "--data {}: expected the Fashion-MNIST IDX files (apt-get install \
             dataset-fashion-mnist)",
            args.data.display()
        )
    })?;
    let classes = memtrain_index::parse::classes(&args.classes).context("--classes")?;
    let split = ood::split(&f, &classes).context("--classes")?;
    let (shape, _) = shape_of(&args.cloud, split.bank.len(), Purpose::MemoryBank)?;
    fit_config(&args.cloud, Purpose::MemoryBank)
        .validate()
        .context("training the TT cloud")?;
    eprintln!(
        "memory bank: {} training images of classes {classes:?}; {} test images, {} out of distribution",
        split.bank.len(),
        f.test.len(),
        split.out_of_distribution.iter().filter(|&&p| p).count()
    );
    let config = OodConfig {
        fit: fit_config(&args.cloud, Purpose::MemoryBank),
        shape: Some(shape),
    };
    let mut bar = None;
    let report = ood::run(&split, &f.test, &config, &mut |p| match p {
        ood::Progress::Fit(p) => show(&mut bar, &p),
        ood::Progress::Trained {
            shape,
            ranks,
            seconds,
        } => {
            bar = None;
            println!("TT cloud: shape {shape:?}, ranks {ranks:?}, trained in {seconds:.1} s");
            let head = ("memory bank", "points", "floats", "AUROC");
            println!("{:<20} {:>10} {:>12} {:>8}", head.0, head.1, head.2, head.3);
        }
        ood::Progress::Row(row) => println!("{row}"),
        _ => {}
    })?;
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report.rows)?;
        crate::output::write_atomic(path, json.as_bytes()).context("--json")?;
    }
    Ok(())
}
