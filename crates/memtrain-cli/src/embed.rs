//! `memtrain embed`: sentence embeddings from a pretrained BERT (all-MiniLM-L6-v2).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use memtrain::bert::{Bert, BertTokenizer};

/// Dimensions shown per text in the plain output.
const SHOWN_DIMS: usize = 6;

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// A sentence-transformers BERT directory (config.json, model.safetensors,
    /// tokenizer.json), e.g. the one `scripts/fetch-minilm.sh` prints.
    #[arg(long)]
    model: PathBuf,
    /// A text to embed; repeat for several. Several texts also print their pairwise
    /// cosines.
    #[arg(long = "text")]
    texts: Vec<String>,
    /// Texts to embed, one a line (blank lines skipped), after those of --text; `-` reads
    /// standard input.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Print a JSON list of embeddings (lists of floats) in input order.
    #[arg(long)]
    json: bool,
    /// Where to run: cpu, wgpu, wgpu:cpu, cuda or cuda:N (the GPU ones need a build with
    /// --features wgpu or cuda).
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: EmbedArgs) -> Result<()> {
    if args.batch == 0 {
        bail!("invalid --batch 0: expected at least 1");
    }
    let from_file = match &args.file {
        None => String::new(),
        Some(p) if p.as_os_str() == "-" => {
            std::io::read_to_string(std::io::stdin()).context("--file -: reading standard input")?
        }
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("--file {}", p.display()))?,
    };
    if args.texts.is_empty() && from_file.trim().is_empty() {
        match &args.file {
            None => bail!("no texts: give --text TEXT (repeatable) or --file PATH (- for stdin)"),
            Some(p) => bail!("--file {}: no non-blank lines to embed", p.display()),
        }
    }
    let device = memtrain::device::parse_device(&args.device)?;
    let start = Instant::now();
    let model = Bert::load(&args.model, &device)
        .with_context(|| format!("loading the model from {}", args.model.display()))?;
    let tokenizer = BertTokenizer::from_dir(&args.model)
        .with_context(|| format!("loading the tokenizer from {}", args.model.display()))?;
    let loaded = start.elapsed();
    let texts: Vec<&str> = args
        .texts
        .iter()
        .map(String::as_str)
        .chain(from_file.lines().filter(|l| !l.trim().is_empty()))
        .collect();
    let start = Instant::now();
    let embeddings = model.embed_texts(&tokenizer, &texts, args.batch, &device)?;
    eprintln!(
        "loaded in {:.2} s, embedded {} texts in {:.2} s (batch {})",
        loaded.as_secs_f64(),
        texts.len(),
        start.elapsed().as_secs_f64(),
        args.batch
    );
    if args.json {
        println!("{}", serde_json::to_string(&embeddings)?);
        return Ok(());
    }
    for (i, (text, e)) in texts.iter().zip(&embeddings).enumerate() {
        let norm = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        let head: Vec<String> = e
            .iter()
            .take(SHOWN_DIMS)
            .map(|x| format!("{x:+.4}"))
            .collect();
        println!(
            "{i:>3} [{} ...] dim {} norm {norm:.4}  {text:?}",
            head.join(" "),
            e.len()
        );
    }
    print_cosines(&embeddings);
    Ok(())
}

/// Texts up to which the pairwise cosines print as a matrix; beyond, as `i j cosine` lines.
const MATRIX_TEXTS: usize = 8;

/// The cosine of every pair of embeddings (the model's are unit vectors, so the cosine is
/// computed from the norms anyway): a matrix for a few texts, `i j cosine` lines for more.
fn print_cosines(e: &[Vec<f32>]) {
    let n = e.len();
    if n < 2 {
        return;
    }
    let cos = |i: usize, j: usize| {
        let dot = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum::<f64>()
        };
        dot(&e[i], &e[j])
            / (dot(&e[i], &e[i]) * dot(&e[j], &e[j]))
                .sqrt()
                .max(f64::MIN_POSITIVE)
    };
    if n <= MATRIX_TEXTS {
        println!("cosine");
        let head: Vec<String> = (0..n).map(|j| format!("{j:>8}")).collect();
        println!("{:>3} {}", "", head.join(""));
        for i in 0..n {
            let row: Vec<String> = (0..n).map(|j| format!("{:>8.4}", cos(i, j))).collect();
            println!("{i:>3} {}", row.join(""));
        }
        return;
    }
    println!("  i   j  cosine");
    for i in 0..n {
        for j in i + 1..n {
            println!("{i:>3} {j:>3} {:>7.4}", cos(i, j));
        }
    }
}
