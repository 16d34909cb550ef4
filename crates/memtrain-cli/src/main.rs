//! `memtrain`: train the reference GPT under a memory policy, or bench policies side by side.

mod bench;
mod compress;
mod embed;
mod eval_embed;
mod index;
mod plan;
mod plot;
mod table;
mod train;
mod variance;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[global_allocator]
static ALLOC: memtrain::memory::CountingAllocator = memtrain::memory::CountingAllocator;

/// Train and compress neural networks in a fraction of the memory.
#[derive(Parser, Debug)]
#[command(name = "memtrain", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train the reference GPT and print the step's memory report.
    Train(train::TrainArgs),
    /// Train each policy for a few steps and compare memory, time and loss.
    Bench(bench::BenchArgs),
    /// Print the few-bit derivative table (borders and levels) of an activation.
    Table(table::TableArgs),
    /// Report the gradient variance a sketched linear adds, against the minibatch variance.
    Variance(variance::VarianceArgs),
    /// Compress a GPT checkpoint's linears to TT-matrices, or a pretrained BERT's by a ratio.
    Compress(compress::CompressArgs),
    /// The rematerialization schedule for an activation budget, predicted and measured.
    Plan(plan::PlanArgs),
    /// The tensor-train point-cloud index: build, query, bench against IVF and HNSW, OOD demo.
    Index(index::IndexArgs),
    /// Sentence embeddings from a pretrained BERT such as all-MiniLM-L6-v2.
    Embed(embed::EmbedArgs),
    /// Compare a compressed BERT's sentence embeddings, bytes and speed with the original's.
    EvalEmbed(eval_embed::EvalEmbedArgs),
}

/// Options both subcommands share.
#[derive(Args, Debug, Clone)]
struct Common {
    /// Model geometry: tiny, small or gpt2.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// UTF-8 text to train on (90% train, 10% validation); default: the built-in
    /// arithmetic corpus.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Sequences per step.
    #[arg(long)]
    batch: Option<usize>,
    /// Tokens per sequence; default and maximum: the model's max_seq.
    #[arg(long)]
    seq: Option<usize>,
    /// Length of the learned position table (default: the preset's: 64, 256, 1024).
    #[arg(long)]
    max_seq: Option<usize>,
    /// AdamW learning rate.
    #[arg(long, default_value_t = 1e-3, allow_negative_numbers = true)]
    lr: f64,
    /// Seed of the weights and the batches.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// Loads `--data` or builds the built-in corpus.
fn load_text(data: Option<&PathBuf>) -> anyhow::Result<(String, memtrain::train::DataSource)> {
    use anyhow::Context;
    match data {
        Some(path) => {
            let text = memtrain::data::read_text(path).context("--data")?;
            let source = memtrain::train::DataSource::file(path, &text);
            Ok((text, source))
        }
        None => Ok((
            memtrain::data::synthetic_corpus(memtrain::data::SYNTHETIC_LINES, 0),
            memtrain::train::DataSource::Builtin,
        )),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() -> ExitCode {
    // Freed activations stay in the process for the next step (memtrain::memory::
    // keep_freed_memory: 13-16% of a `small` step was page faults); MEMTRAIN_KEEP_FREED_MEMORY=0
    // keeps the C allocator's defaults, for comparison.
    if std::env::var_os("MEMTRAIN_KEEP_FREED_MEMORY").is_none_or(|v| v != "0") {
        memtrain::memory::keep_freed_memory();
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Table(args) => table::run(args),
        Command::Variance(args) => variance::run(args),
        Command::Compress(args) => compress::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Index(args) => index::run(args),
        Command::Embed(args) => embed::run(args),
        Command::EvalEmbed(args) => eval_embed::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
