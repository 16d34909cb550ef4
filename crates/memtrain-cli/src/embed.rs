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
    /// A text to embed; repeat for several.
    #[arg(long = "text", required = true)]
    texts: Vec<String>,
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
    let device = memtrain::device::parse_device(&args.device)?;
    let start = Instant::now();
    let model = Bert::load(&args.model, &device)
        .with_context(|| format!("loading the model from {}", args.model.display()))?;
    let tokenizer = BertTokenizer::from_dir(&args.model)
        .with_context(|| format!("loading the tokenizer from {}", args.model.display()))?;
    let loaded = start.elapsed();
    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
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
    for (text, e) in texts.iter().zip(&embeddings) {
        let norm = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        let head: Vec<String> = e
            .iter()
            .take(SHOWN_DIMS)
            .map(|x| format!("{x:+.4}"))
            .collect();
        println!(
            "[{} ...] dim {} norm {norm:.4}  {text:?}",
            head.join(" "),
            e.len()
        );
    }
    Ok(())
}
