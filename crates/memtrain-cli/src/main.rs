//! `memtrain`: train the reference GPT under a memory policy, bench policies side by side,
//! plan a memory budget, compress trained or pretrained weights, and build and search the
//! tensor-train point-cloud index.
//!
//! Each subcommand is one file: it parses its arguments, calls one library entry point and
//! prints. What they share (common flags, loading text, units, writing files) is in this file
//! and `output.rs`.

mod bench;
mod compress;
mod embed;
mod eval_embed;
mod index;
mod output;
mod plan;
mod plot;
mod table;
mod train;
mod variance;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, CommandFactory, Parser, Subcommand};
use memtrain::model::Preset;
use memtrain::policy::Budget;
use memtrain::run::FitBudget;
use memtrain::train::TrainConfig;

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
    #[command(after_help = plan::SCHEDULE_LEGEND)]
    Plan(plan::PlanArgs),
    /// The tensor-train point-cloud index: build, query, bench against IVF and HNSW, OOD demo.
    Index(index::IndexArgs),
    /// Sentence embeddings from a pretrained BERT such as all-MiniLM-L6-v2.
    Embed(embed::EmbedArgs),
    /// Compare a compressed BERT's sentence embeddings, bytes and speed with the original's.
    EvalEmbed(eval_embed::EvalEmbedArgs),
}

/// The model and data options of the commands that train the GPT.
#[derive(Args, Debug, Clone)]
struct Common {
    /// Model geometry: tiny, small or gpt2.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// UTF-8 text to train on (90% train, 10% validation); default: the built-in
    /// arithmetic corpus.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Sequences per step [default: 16 in train, 8 in bench, plan and variance].
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
    /// Where to train: cpu (burn's Flex), wgpu, wgpu:cpu (a software adapter such as Mesa's
    /// lavapipe), cuda or cuda:N; the GPU ones need a build with --features wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    device: String,
}

impl Common {
    /// The training configuration these options describe, `batch` defaulting to
    /// `default_batch`; not yet validated.
    fn config(&self, default_batch: usize) -> anyhow::Result<TrainConfig> {
        let preset: Preset = self.preset.parse()?;
        let mut config = TrainConfig::new(preset);
        config.batch = self.batch.unwrap_or(default_batch);
        config.max_seq = self.max_seq;
        config.seq = self.seq.unwrap_or(config.model_config().max_seq);
        config.lr = self.lr;
        config.seed = self.seed;
        Ok(config)
    }

    /// The autodiff device `--device` names.
    fn autodiff_device(&self) -> anyhow::Result<burn::tensor::Device> {
        Ok(memtrain::device::parse_device(&self.device)?.autodiff())
    }
}

/// `--allow`: whether the planner may use approximate variants.
fn allow_approx(allow: Option<&str>) -> anyhow::Result<bool> {
    match allow {
        None => Ok(false),
        Some("approx") => Ok(true),
        Some(other) => bail!("invalid --allow: got {other:?}, expected \"approx\""),
    }
}

/// `--budget` and `--allow` as the library takes them.
fn fit_budget(budget: Option<&str>, allow: Option<&str>) -> anyhow::Result<Option<FitBudget>> {
    let approx = allow_approx(allow)?;
    budget
        .map(|b| {
            Ok(FitBudget {
                budget: b.parse::<Budget>()?,
                approx,
            })
        })
        .transpose()
}

/// Whether the user gave `flag` (`--batch 3` or `--batch=3`) on the command line, as opposed
/// to its default.
/// `policy` with `--precision` applied (fp32 or bf16: the gemm linear's products), when given.
fn with_precision(
    mut policy: memtrain::policy::MemoryPolicy,
    precision: Option<&str>,
) -> anyhow::Result<memtrain::policy::MemoryPolicy> {
    use memtrain::policy::{PolicyKey, PrecisionPolicy};
    if let Some(p) = precision {
        policy.precision = PrecisionPolicy::parse(p).map_err(|_| {
            anyhow::anyhow!("invalid --precision: got {p:?}, expected one of fp32, bf16")
        })?;
        policy
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid --precision {p}: {e}"))?;
    }
    Ok(policy)
}

fn given(flag: &str) -> bool {
    std::env::args().any(|a| a == flag || a.starts_with(&format!("{flag}=")))
}

/// The long flags of the subcommand the user ran (`batch`, `max-seq`, ...).
fn flags_of(args: &[String]) -> Vec<String> {
    let mut command = Cli::command();
    let mut flags = Vec::new();
    for name in args.iter().skip(1).filter(|a| !a.starts_with('-')) {
        let Some(sub) = command.find_subcommand(name).cloned() else {
            break;
        };
        flags.extend(
            sub.get_arguments()
                .filter_map(|a| a.get_long().map(str::to_string)),
        );
        command = sub;
    }
    flags
}

/// The error as one line: its chain joined by `": "` (anyhow's `{:#}`), where a library
/// [`memtrain::Error::Config`] that names a field the command has a flag for is written with
/// the flag (`invalid --max-seq: ...` for the field `max_seq`).
fn message(e: &anyhow::Error, flags: &[String]) -> String {
    let parts: Vec<String> = e
        .chain()
        .map(|cause| match cause.downcast_ref::<memtrain::Error>() {
            Some(memtrain::Error::Config {
                what,
                got,
                expected,
            }) if flags.contains(&what.replace('_', "-")) => format!(
                "invalid --{}: got {got:?}, expected {expected}",
                what.replace('_', "-")
            ),
            _ => cause.to_string(),
        })
        .collect();
    parts.join(": ")
}

/// A command-line mistake clap found, as one line (its message and tip) with exit code 2;
/// `--help`, `--version` and a bare `memtrain` print as clap does.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let mut parts = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more"));
    let first = parts.next().unwrap_or("error: invalid arguments");
    let tips: Vec<&str> = parts.filter(|l| l.starts_with("tip:")).collect();
    let mut line = first.to_string();
    for tip in tips {
        line.push_str("; ");
        line.push_str(tip);
    }
    eprintln!("{line} (see --help)");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    // `memtrain bench | head` closes the pipe early: end quietly as Unix tools do, instead of
    // Rust's "failed printing to stdout" panic.
    #[cfg(unix)]
    // SAFETY: the first statement of `main`, before any thread exists; SIG_DFL is always valid.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // burn 0.22 materializes a loaded optimizer state (`--resume`) on `Device::default()`,
    // which in a build with a GPU feature is the GPU, and moves it to the parameters' device
    // at the next step. Keep it on the host, so that a CPU run never starts a GPU runtime.
    if std::env::var_os("BURN_DEVICE").is_none() {
        // SAFETY: the first statement of `main`: no other thread exists yet to read the
        // environment concurrently.
        unsafe { std::env::set_var("BURN_DEVICE", "flex") };
    }
    // Freed activations stay in the process for the next step (memtrain::memory::
    // keep_freed_memory: 13-16% of a `small` step was page faults); MEMTRAIN_KEEP_FREED_MEMORY=0
    // keeps the C allocator's defaults, for comparison.
    if std::env::var_os("MEMTRAIN_KEEP_FREED_MEMORY").is_none_or(|v| v != "0") {
        memtrain::memory::keep_freed_memory();
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
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
            let args: Vec<String> = std::env::args().collect();
            eprintln!("error: {}", message(&e, &flags_of(&args)));
            ExitCode::FAILURE
        }
    }
}
