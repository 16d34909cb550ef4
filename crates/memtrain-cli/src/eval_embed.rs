//! `memtrain eval-embed`: how close a compressed BERT's sentence embeddings stay to the
//! original's on a text corpus, and what the compression bought in bytes and time.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use clap::Args;
use memtrain::bert::{Bert, BertTokenizer, load_compressed};
use memtrain::linear::Linears;
use serde::Serialize;

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
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// One model's numbers.
#[derive(Debug, Serialize)]
struct ModelStats {
    /// Parameters held (all of them, embeddings included).
    params: usize,
    /// Bytes of those parameters as stored (f32).
    model_bytes: usize,
    /// Bytes of the encoder linears' weights alone (f32).
    linear_bytes: usize,
    /// For quantized CP: the model with the factor codes packed at `bits` bits plus one f32
    /// scale per factor (the factors are held as f32 grid values).
    packed_bytes: Option<usize>,
    /// Seconds encoding the lines (after one warm-up batch).
    encode_seconds: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    lines: usize,
    original: ModelStats,
    compressed: Option<ModelStats>,
    method: Option<String>,
    schedule: Option<String>,
    /// Mean cosine of each line's compressed embedding with its original one.
    mean_cosine: Option<f64>,
    /// The smallest such cosine.
    min_cosine: Option<f64>,
    /// Fraction of lines whose nearest other line is the same under both models.
    neighbour_agreement: Option<f64>,
}

fn stats(
    model: &Bert,
    tokenizer: &BertTokenizer,
    texts: &[&str],
    batch: usize,
    bits: Option<u32>,
    device: &Device,
) -> Result<(Vec<Vec<f32>>, ModelStats)> {
    model.embed_texts(tokenizer, &texts[..texts.len().min(batch)], batch, device)?;
    let start = Instant::now();
    let e = model.embed_texts(tokenizer, texts, batch, device)?;
    let encode_seconds = start.elapsed().as_secs_f64();
    let params = model.num_params();
    let linear: Vec<usize> = model
        .linears()
        .iter()
        .map(|(_, l)| l.weight_param_count())
        .collect();
    let linear_params: usize = linear.iter().sum();
    let packed_bytes = bits.map(|b| {
        let codes = linear_params * b as usize;
        (params - linear_params) * 4 + codes.div_ceil(8) + 4 * 4 * linear.len()
    });
    Ok((
        e,
        ModelStats {
            params,
            model_bytes: params * 4,
            linear_bytes: linear_params * 4,
            packed_bytes,
            encode_seconds,
        },
    ))
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

/// For each row, the index of its most similar other row (rows are unit vectors).
fn nearest(e: &[Vec<f32>]) -> Vec<usize> {
    (0..e.len())
        .map(|i| {
            (0..e.len())
                .filter(|&j| j != i)
                .map(|j| (j, dot(&e[i], &e[j])))
                .fold((usize::MAX, f64::NEG_INFINITY), |best, (j, c)| {
                    if c > best.1 { (j, c) } else { best }
                })
                .0
        })
        .collect()
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
    let texts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(args.lines)
        .collect();
    if texts.len() < 2 {
        bail!(
            "--data {}: {} non-empty lines, expected at least 2",
            args.data.display(),
            texts.len()
        );
    }
    let device = Device::flex();
    let original = Bert::load(&args.model, &device)
        .with_context(|| format!("loading the model from {}", args.model.display()))?;
    let tokenizer = BertTokenizer::from_dir(&args.model)
        .with_context(|| format!("loading the tokenizer from {}", args.model.display()))?;
    let compressed = match &args.compressed {
        Some(dir) => Some(
            load_compressed(dir, &device)
                .with_context(|| format!("loading the compressed model from {}", dir.display()))?,
        ),
        None => None,
    };
    let (e0, s0) = stats(&original, &tokenizer, &texts, args.batch, None, &device)?;
    let mut report = Report {
        lines: texts.len(),
        original: s0,
        compressed: None,
        method: None,
        schedule: None,
        mean_cosine: None,
        min_cosine: None,
        neighbour_agreement: None,
    };
    if let Some((model, manifest)) = &compressed {
        let (e1, s1) = stats(
            model,
            &tokenizer,
            &texts,
            args.batch,
            manifest.bits,
            &device,
        )?;
        let cos: Vec<f64> = e0.iter().zip(&e1).map(|(a, b)| dot(a, b)).collect();
        let agree = nearest(&e0)
            .iter()
            .zip(nearest(&e1))
            .filter(|(a, b)| **a == *b)
            .count();
        report.mean_cosine = Some(cos.iter().sum::<f64>() / cos.len() as f64);
        report.min_cosine = Some(cos.iter().copied().fold(f64::INFINITY, f64::min));
        report.neighbour_agreement = Some(agree as f64 / texts.len() as f64);
        report.method = Some(manifest.method.clone());
        report.schedule = Some(manifest.schedule.clone());
        report.compressed = Some(s1);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let row = |name: &str, s: &ModelStats| {
        println!(
            "{name:<11} {:>10} params {:>11} bytes (linears {:>10}{}) encode {:.2} s",
            s.params,
            s.model_bytes,
            s.linear_bytes,
            s.packed_bytes
                .map_or(String::new(), |p| format!(", packed model {p}")),
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
