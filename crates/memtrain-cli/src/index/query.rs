//! `memtrain index query`: the nearest neighbours of each query.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use memtrain_index::{TtSearch, io};

use super::load;

#[derive(Args, Debug)]
pub struct QueryArgs {
    /// An index written by `memtrain index build`, plain or compressed (--codes). Each query
    /// prints a line `query I: ID (DISTANCE) ...`, nearest first, distances Euclidean as the
    /// index estimates them: exact from f32 lists, approximate from sq8 lists or codes.
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

pub(super) fn run(args: QueryArgs) -> Result<()> {
    let index = io::load_any(&args.index).context("--index")?;
    let (points, test) = load(&args.queries, "--queries")?;
    let queries = test.unwrap_or(points);
    if queries.dim() != index.dim() {
        bail!(
            "dimension mismatch: the queries have dimension {}, the index {}",
            queries.dim(),
            index.dim()
        );
    }
    for (flag, value) in [
        ("--k", Some(args.k)),
        ("--probe", Some(args.probe)),
        ("--limit", args.limit),
    ] {
        if value == Some(0) {
            bail!("invalid {flag}: got 0, expected at least 1");
        }
    }
    let beam = memtrain_index::parse::beam(&args.beam).context("--beam")?;
    let params = TtSearch {
        beam,
        probe: args.probe,
    };
    let n = args.limit.unwrap_or(queries.len()).min(queries.len());
    let found = (0..n)
        .map(|i| index.search(queries.row(i), args.k, &params))
        .collect::<memtrain_index::Result<Vec<_>>>()?;
    if !args.json {
        for (i, f) in found.iter().enumerate() {
            let ids: Vec<String> = f
                .iter()
                .map(|p| format!("{} ({:.4})", p.1, p.0.max(0.0).sqrt()))
                .collect();
            println!("query {i}: {}", ids.join(" "));
        }
        return Ok(());
    }
    let rows: Vec<serde_json::Value> = found
        .iter()
        .map(|f| {
            serde_json::json!({
                "ids": f.iter().map(|p| p.1).collect::<Vec<_>>(),
                "distances": f.iter().map(|p| p.0.max(0.0).sqrt()).collect::<Vec<_>>(),
            })
        })
        .collect();
    println!("{}", serde_json::to_string(&rows)?);
    Ok(())
}
