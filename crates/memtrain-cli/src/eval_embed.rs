//! `memtrain eval-embed`: [`memtrain::bert::compare_embeddings`] on a text corpus, printed.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use memtrain::bert::{ModelStats, compare_embeddings_with, text_lines};

use crate::output::{Progress, human_bytes};

#[derive(Args, Debug)]
pub struct EvalEmbedArgs {
    /// The original sentence-transformers BERT directory.
    #[arg(long)]
    model: PathBuf,
    /// A directory written by `memtrain compress --model .. --out DIR`.
    #[arg(long)]
    compressed: Option<PathBuf>,
    /// Text, one sentence per line.
    #[arg(long)]
    data: PathBuf,
    /// Encode the first N non-empty lines.
    #[arg(long, default_value_t = 500)]
    lines: usize,
    /// Lines per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Print the report as JSON (sizes in bytes, keys ending `_bytes`; the table prints
    /// them in KiB/MiB/GiB).
    #[arg(long)]
    json: bool,
    /// Where to run: cpu, wgpu, wgpu:cpu, cuda or cuda:N (the GPU ones need a build with
    /// --features wgpu or cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: EvalEmbedArgs) -> Result<()> {
    if args.lines < 2 {
        bail!(
            "invalid --lines {}: expected at least 2 (neighbours need two lines)",
            args.lines
        );
    }
    if args.batch == 0 {
        bail!("invalid --batch 0: expected at least 1");
    }
    let text = memtrain::data::read_text(&args.data).context("--data")?;
    let texts = text_lines(&text, args.lines);
    if texts.len() < 2 {
        bail!(
            "--data {}: {} non-empty lines, expected at least 2",
            args.data.display(),
            texts.len()
        );
    }
    let mut progress: Option<Progress> = None;
    let report = compare_embeddings_with(
        &args.model,
        args.compressed.as_deref(),
        &texts,
        args.batch,
        &memtrain::device::parse_device(&args.device)?,
        |done, total| {
            progress
                .get_or_insert_with(|| Progress::new("eval-embed: line", total as u64))
                .set(done as u64, "")
        },
    )?;
    drop(progress);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let row = |name: &str, s: &ModelStats| {
        println!(
            "{name:<11} {:>10} params {:>10} (linears {:>10}{}) encode {:.2} s",
            s.params,
            human_bytes(s.model_bytes as u64),
            human_bytes(s.linear_bytes as u64),
            s.packed_bytes.map_or(String::new(), |p| format!(
                ", packed model {}",
                human_bytes(p as u64)
            )),
            s.encode_seconds
        )
    };
    println!(
        "memtrain eval-embed: {} lines of {}",
        texts.len(),
        args.data.display()
    );
    row("original", &report.original);
    if let (Some(s), Some(method)) = (&report.compressed, &report.method) {
        row("compressed", s);
        println!(
            "{method} ({}): mean cosine {:.4} (min {:.4}), nearest-neighbour agreement {:.1}%",
            report.schedule.as_deref().unwrap_or(""),
            report.mean_cosine.unwrap_or(f64::NAN),
            report.min_cosine.unwrap_or(f64::NAN),
            100.0 * report.neighbour_agreement.unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
