//! `memtrain compress`: a GPT checkpoint's linear weights to TT-matrices (`--from`,
//! [`memtrain::compress::compress_checkpoint`]), or a pretrained BERT's encoder linears
//! factorized by a target parameter ratio (`--model`, [`memtrain::bert::compress_model`]),
//! with a per-layer report and optionally the compressed model written out.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::Args;
use memtrain::bert::{
    CompressMethod, CompressParams, CompressedManifest, Iterative, IterativeParams, LayerReport,
    compress_model, distill_lines, save_compressed,
};
use memtrain::compress::compress_checkpoint;
use memtrain::tt::Truncation;

/// The distillation text when `--data` is not given.
pub const DEFAULT_DATA: &str = "/work/shared/data/tinyshakespeare.txt";

#[derive(Args, Debug)]
pub struct CompressArgs {
    /// A `memtrain train --out` directory (a GPT); its newest checkpoint is compressed to
    /// TT-matrices. Give this or --model.
    #[arg(long)]
    from: Option<PathBuf>,
    /// A sentence-transformers BERT directory (e.g. what `scripts/fetch-minilm.sh` prints);
    /// its encoder linears are factorized by --method at --ratio. Give this or --from.
    #[arg(long)]
    model: Option<PathBuf>,
    /// With --model: svd, tucker2, cp, cp-q:BITS (quantization-aware CP, BITS in 2..=8; also
    /// reports CP-ALS-then-quantize), cp-ptq:BITS (CP-ALS, then quantize) or ttm.
    #[arg(long)]
    method: Option<String>,
    /// With --model: each encoder linear keeps at most 1/RATIO of its weight parameters.
    #[arg(long)]
    ratio: Option<f64>,
    /// With --model: compress in --stages stages of rising ratio, distilling the original
    /// embeddings for --steps steps after each.
    #[arg(long)]
    iterative: bool,
    /// With --iterative: Adam steps after each stage.
    #[arg(long, default_value_t = 100)]
    steps: usize,
    /// With --iterative: stages (ratios RATIO^(s/STAGES)).
    #[arg(long, default_value_t = 3)]
    stages: usize,
    /// With --iterative: text lines per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// With --iterative: Adam learning rate.
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// With --iterative: text to distill on, a sentence a line (the first 500 non-empty lines
    /// are held out for eval-embed); default /work/shared/data/tinyshakespeare.txt.
    #[arg(long)]
    data: Option<PathBuf>,
    /// With --model and a CP method: CP-ALS sweeps per layer.
    #[arg(long, default_value_t = 10)]
    cp_iters: usize,
    /// With --from: largest TT rank of any bond.
    #[arg(long)]
    rank: Option<usize>,
    /// With --from: relative Frobenius accuracy per layer, `‖W - W_tt‖ <= eps ‖W‖`.
    #[arg(long)]
    eps: Option<f64>,
    /// With --from: compress the attention linears too, not only the MLP's.
    #[arg(long)]
    all: bool,
    /// Write the compressed model here: with --from a checkpoint (`weights=ttm:RANK[:all]`, needs
    /// --rank alone) that `train --resume --out DIR` fine-tunes; with --model the factors and
    /// manifest for `eval-embed --compressed DIR`.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: CompressArgs) -> Result<()> {
    match (&args.from, &args.model) {
        (Some(_), Some(_)) => bail!(
            "--from and --model both given: compress either a GPT checkpoint (--from RUN_DIR) or a BERT model (--model DIR)"
        ),
        (None, None) => bail!(
            "missing --from or --model: give a GPT checkpoint (--from RUN_DIR) or a BERT model directory (--model DIR)"
        ),
        (None, Some(dir)) => run_bert(&args, dir),
        (Some(from), None) => run_gpt(&args, from),
    }
}

fn run_gpt(args: &CompressArgs, from: &Path) -> Result<()> {
    let bert_flags = [
        (args.method.is_some(), "--method"),
        (args.ratio.is_some(), "--ratio"),
        (args.iterative, "--iterative"),
    ];
    if let Some((_, flag)) = bert_flags.iter().find(|f| f.0) {
        bail!("{flag} applies to --model (a BERT); with --from use --rank and/or --eps");
    }
    let trunc = match (args.rank, args.eps) {
        (None, None) => bail!("missing --rank or --eps: give a rank cap, an accuracy, or both"),
        (Some(0), _) => bail!("invalid --rank: got 0, expected a rank of at least 1"),
        (_, Some(e)) if !(0.0..1.0).contains(&e) => {
            bail!("invalid --eps: got {e}, expected an accuracy in [0, 1)")
        }
        (rank, eps) => Truncation {
            max_rank: rank,
            eps: eps.unwrap_or(0.0),
        },
    };
    if args.out.is_some() && (args.rank.is_none() || args.eps.is_some()) {
        let why = if args.eps.is_some() {
            "--eps"
        } else {
            "no --rank"
        };
        bail!(
            "invalid --out with {why}: a checkpoint needs --rank alone (one rank for every layer)"
        );
    }
    let device = Device::flex().autodiff();
    let c = compress_checkpoint(from, trunc, args.all, args.out.as_deref(), &device)
        .context("--from")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&c.layers)?);
        return Ok(());
    }
    let scope = if args.all {
        "all linears"
    } else {
        "MLP linears"
    };
    println!(
        "memtrain compress: {} at step {} ({}), {scope}",
        from.display(),
        c.state.step,
        c.state.config.policy
    );
    println!(
        "{:<20} {:>13} {:>11} {:>9} {:>7} {:<18} {:>10}",
        "layer", "shape", "before", "after", "ratio", "ranks", "rel. error"
    );
    for l in &c.layers {
        println!(
            "{:<20} {:>13} {:>11} {:>9} {:>6.1}% {:<18} {:>10.4}",
            l.name,
            format!("{}x{}", l.shape[0], l.shape[1]),
            l.params_before,
            l.params_after,
            100.0 * l.params_after as f64 / l.params_before as f64,
            format!("{:?}", l.ranks),
            l.rel_error
        );
    }
    let (before, after) = c.layers.iter().fold((0, 0), |(a, b), l| {
        (a + l.params_before, b + l.params_after)
    });
    println!(
        "compressed weights: {before} -> {after} parameters; model {} -> {}",
        c.model_params_before, c.model_params_after
    );
    if let (Some(dir), Some(out)) = (&c.written, &args.out) {
        let (dir, out) = (dir.display(), out.display());
        println!("wrote {dir} (continue with: memtrain train --resume --out {out} --steps N)");
    }
    Ok(())
}

fn print_row(r: &LayerReport) {
    println!(
        "{:<40} {:>9} {:>5} {:>8} {:>8} {:>6.2}x {:>9.4} {:>9} {:>8.2}",
        r.name,
        format!("{}x{}", r.shape[0], r.shape[1]),
        r.rank,
        r.params_before,
        r.params_after,
        r.params_before as f64 / r.params_after as f64,
        r.rel_error,
        r.ptq_rel_error
            .map_or("-".to_string(), |e| format!("{e:.4}")),
        r.seconds
    );
}

fn run_bert(args: &CompressArgs, dir: &Path) -> Result<()> {
    let gpt_flags = [
        (args.rank.is_some(), "--rank"),
        (args.eps.is_some(), "--eps"),
        (args.all, "--all"),
    ];
    if let Some((_, flag)) = gpt_flags.iter().find(|f| f.0) {
        bail!("{flag} applies to --from (a GPT checkpoint); with --model use --method and --ratio");
    }
    let method: CompressMethod = match &args.method {
        Some(m) => m.parse().context("--method")?,
        None => bail!("missing --method: expected svd, tucker2, cp, cp-q:BITS, cp-ptq:BITS or ttm"),
    };
    let Some(ratio) = args.ratio else {
        bail!("missing --ratio: expected a parameter reduction ratio >= 1, e.g. 2 or 4");
    };
    let params = CompressParams {
        cp_iters: args.cp_iters,
        ..CompressParams::new(method, ratio)
    };
    params.validate()?;
    let it = IterativeParams {
        stages: args.stages,
        batch: args.batch,
        lr: args.lr,
        ..IterativeParams::new(args.steps)
    };
    let text = if !args.iterative {
        None
    } else {
        let data = match &args.data {
            Some(p) => p.clone(),
            None if Path::new(DEFAULT_DATA).is_file() => PathBuf::from(DEFAULT_DATA),
            None => bail!(
                "missing --data: --iterative distills on text lines and the default {DEFAULT_DATA} does not exist"
            ),
        };
        let text = memtrain::data::read_text(&data).context("--data")?;
        if distill_lines(&text).is_empty() {
            bail!(
                "--data {}: no non-empty lines after the {} held out for eval-embed",
                data.display(),
                memtrain::bert::HELD_OUT_LINES
            );
        }
        Some(text)
    };
    let lines: Vec<&str> = text.as_deref().map(distill_lines).unwrap_or_default();
    let iterative = args.iterative.then_some(Iterative {
        params: it,
        lines: &lines,
    });
    if !args.json {
        let schedule = match iterative {
            Some(_) => it.describe(ratio),
            None => "one-shot".to_string(),
        };
        println!(
            "memtrain compress: {} with {method} at ratio {ratio} ({schedule})",
            dir.display()
        );
        println!(
            "{:<40} {:>9} {:>5} {:>8} {:>8} {:>7} {:>9} {:>9} {:>8}",
            "layer", "shape", "rank", "before", "after", "ratio", "rel.err", "ptq err", "seconds"
        );
    }
    let json = args.json;
    let (model, summary) = compress_model(
        dir,
        &params,
        iterative,
        |r| {
            if !json {
                print_row(r)
            }
        },
        |msg| eprintln!("{msg}"),
    )
    .with_context(|| format!("compressing {}", dir.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "encoder linears: {} -> {} weight parameters ({:.2}x fewer), mean rel. error {:.4}{}; model {} -> {} parameters; {:.1} s",
            summary.linear_params_before,
            summary.linear_params_after,
            summary.linear_params_before as f64 / summary.linear_params_after as f64,
            summary.mean_rel_error,
            summary
                .mean_ptq_rel_error
                .map_or(String::new(), |e| format!(
                    " (CP-ALS then quantize: {e:.4})"
                )),
            summary.model_params_before,
            summary.model_params_after,
            summary.seconds
        );
    }
    if let Some(out) = &args.out {
        let manifest = CompressedManifest::describe(&model, method, ratio, summary.schedule);
        let written = save_compressed(&model, &manifest, dir, out)
            .with_context(|| format!("--out {}", out.display()))?;
        if !args.json {
            println!(
                "wrote {} (evaluate with: memtrain eval-embed --model {} --compressed {} --data FILE)",
                written.display(),
                dir.display(),
                written.display()
            );
        }
    }
    Ok(())
}
