//! `memtrain compress`: a GPT checkpoint's linear weights to TT-matrices (`--from`), or a
//! pretrained BERT's encoder linears factorized by a target parameter ratio (`--model`), with
//! a per-layer report and optionally the compressed model written out.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use clap::Args;
use memtrain::bert::{
    Bert, BertTokenizer, CompressMethod, CompressParams, CompressedManifest, IterativeParams,
    LayerReport, compress_bert, compress_bert_iterative, save_compressed,
};
use memtrain::compress::gpt_to_ttm;
use memtrain::policy::WeightsPolicy;
use memtrain::train::Trainer;
use memtrain::tt::Truncation;

/// The distillation text when `--data` is not given.
pub const DEFAULT_DATA: &str = "/work/shared/data/tinyshakespeare.txt";
/// Non-empty lines at the start of `--data` that distillation never trains on: `memtrain
/// eval-embed` measures on the first 500 lines by default, so they stay held out.
pub const HELD_OUT_LINES: usize = 500;

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
    /// With --iterative: text to distill on, one sentence per line (the first 500 non-empty
    /// lines are held out for eval-embed); default /work/shared/data/tinyshakespeare.txt.
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
    /// Write the compressed model here. With --from: a checkpoint (policy
    /// `weights=ttm:RANK[:all]`, same step, fresh optimizer) so `memtrain train --resume --out
    /// DIR` fine-tunes it; needs --rank without --eps. With --model: the factors, a manifest
    /// and the config/tokenizer files, for `memtrain eval-embed --compressed DIR`.
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
        (None, Some(_)) => run_bert(args),
        (Some(_), None) => run_gpt(args),
    }
}

fn run_gpt(args: CompressArgs) -> Result<()> {
    for (given, flag) in [
        (args.method.is_some(), "--method"),
        (args.ratio.is_some(), "--ratio"),
        (args.iterative, "--iterative"),
    ] {
        if given {
            bail!("{flag} applies to --model (a BERT); with --from use --rank and/or --eps");
        }
    }
    let from = args.from.clone().expect("run checks --from");
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
    let rank_for_policy = match (&args.out, args.rank, args.eps) {
        (Some(_), Some(r), None) => Some(r),
        (Some(_), _, _) => bail!(
            "invalid --out with {}: a checkpoint needs --rank alone (one rank for every layer)",
            if args.eps.is_some() {
                "--eps"
            } else {
                "no --rank"
            }
        ),
        _ => None,
    };
    let device = Device::flex().autodiff();
    let (trainer, state) = Trainer::resume(&from, &device).context("--from")?;
    let model = trainer.model().clone();
    let (compressed, report) = gpt_to_ttm(model, trunc, args.all)?;

    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "memtrain compress: {} at step {} ({}), {}",
            from.display(),
            state.step,
            state.config.policy,
            if args.all {
                "all linears"
            } else {
                "MLP linears"
            }
        );
        println!(
            "{:<20} {:>13} {:>11} {:>9} {:>7} {:<18} {:>10}",
            "layer", "shape", "before", "after", "ratio", "ranks", "rel. error"
        );
        for l in &report {
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
        let (before, after): (usize, usize) = report
            .iter()
            .map(|l| (l.params_before, l.params_after))
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
        let model_params = state
            .config
            .model_config()
            .param_count_for(&state.config.policy);
        println!(
            "compressed weights: {before} -> {after} parameters; model {model_params} -> {}",
            model_params - before + after
        );
    }

    if let (Some(out), Some(rank)) = (&args.out, rank_for_policy) {
        let mut config = state.config.clone();
        let ttm = WeightsPolicy::Ttm {
            rank: u32::try_from(rank).context("--rank")?,
            all: args.all,
        };
        config.policy.block.weights = ttm;
        for o in config.policy.overrides.values_mut() {
            o.weights = ttm;
        }
        let trainer = Trainer::from_model(config, compressed, state.step, &device)
            .context("--out: the compressed model")?;
        let dir = trainer.save_checkpoint(out, &state.data)?;
        if !args.json {
            println!(
                "wrote {} (continue with: memtrain train --resume --out {} --steps N)",
                dir.display(),
                out.display()
            );
        }
    }
    Ok(())
}

/// The distillation lines: the non-empty lines of `path` after the held-out first ones.
fn distill_lines(path: &Path) -> Result<Vec<String>> {
    let text = memtrain::data::read_text(path).context("--data")?;
    let lines: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .skip(HELD_OUT_LINES)
        .map(str::to_string)
        .collect();
    if lines.is_empty() {
        bail!(
            "--data {}: no non-empty lines after the {HELD_OUT_LINES} held out for eval-embed",
            path.display()
        );
    }
    Ok(lines)
}

fn run_bert(args: CompressArgs) -> Result<()> {
    let dir = args.model.clone().expect("run checks --model");
    for (given, flag) in [
        (args.rank.is_some(), "--rank"),
        (args.eps.is_some(), "--eps"),
        (args.all, "--all"),
    ] {
        if given {
            bail!(
                "{flag} applies to --from (a GPT checkpoint); with --model use --method and --ratio"
            );
        }
    }
    let Some(method) = &args.method else {
        bail!("missing --method: expected svd, tucker2, cp, cp-q:BITS, cp-ptq:BITS or ttm");
    };
    let method: CompressMethod = method.parse().context("--method")?;
    let Some(ratio) = args.ratio else {
        bail!("missing --ratio: expected a parameter reduction ratio >= 1, e.g. 2 or 4");
    };
    if !(ratio >= 1.0 && ratio.is_finite()) {
        bail!("invalid --ratio {ratio}: expected a finite parameter reduction ratio >= 1");
    }
    if args.cp_iters == 0 {
        bail!("invalid --cp-iters 0: expected at least 1 sweep");
    }
    let params = CompressParams {
        cp_iters: args.cp_iters,
        ..CompressParams::new(method, ratio)
    };
    let plain = Device::flex();
    let load = |device: &Device| {
        Bert::load(&dir, device)
            .with_context(|| format!("loading the model from {}", dir.display()))
    };
    let original = load(&plain)?;
    let dense_total = original.num_params();
    let start = Instant::now();
    let print_row = |r: &LayerReport| {
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
    };
    let header = || {
        println!(
            "{:<40} {:>9} {:>5} {:>8} {:>8} {:>7} {:>9} {:>9} {:>8}",
            "layer", "shape", "rank", "before", "after", "ratio", "rel.err", "ptq err", "seconds"
        )
    };
    let (model, reports, stages, schedule) = if args.iterative {
        let it = IterativeParams {
            stages: args.stages,
            batch: args.batch,
            lr: args.lr,
            ..IterativeParams::new(args.steps)
        };
        let data = match &args.data {
            Some(p) => p.clone(),
            None if Path::new(DEFAULT_DATA).is_file() => PathBuf::from(DEFAULT_DATA),
            None => bail!(
                "missing --data: --iterative distills on text lines and the default {DEFAULT_DATA} does not exist"
            ),
        };
        let lines = distill_lines(&data)?;
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let tokenizer = BertTokenizer::from_dir(&dir)
            .with_context(|| format!("loading the tokenizer from {}", dir.display()))?;
        let autodiff = Device::flex().autodiff();
        let student = load(&autodiff)?;
        if !args.json {
            println!(
                "memtrain compress: {} with {method} at ratio {ratio} ({})",
                dir.display(),
                it.describe(ratio)
            );
        }
        let (model, reports, stages) = compress_bert_iterative(
            student,
            &original,
            &tokenizer,
            &lines,
            &params,
            &it,
            &autodiff,
            &plain,
            |msg| eprintln!("{msg}"),
        )?;
        if !args.json {
            header();
            reports.iter().for_each(print_row);
        }
        (model.valid(), reports, stages, it.describe(ratio))
    } else {
        if !args.json {
            println!(
                "memtrain compress: {} with {method} at ratio {ratio} (one-shot)",
                dir.display()
            );
            header();
        }
        let json = args.json;
        let (model, reports) = compress_bert(original, &params, |r| {
            if !json {
                print_row(r)
            }
        })?;
        (model, reports, Vec::new(), "one-shot".to_string())
    };
    let seconds = start.elapsed().as_secs_f64();
    let (before, after) = reports.iter().fold((0, 0), |(a, b), r| {
        (a + r.params_before, b + r.params_after)
    });
    let mean_err = reports.iter().map(|r| r.rel_error).sum::<f64>() / reports.len() as f64;
    let ptq: Vec<f64> = reports.iter().filter_map(|r| r.ptq_rel_error).collect();
    let mean_ptq = (!ptq.is_empty()).then(|| ptq.iter().sum::<f64>() / ptq.len() as f64);
    let total = model.num_params();
    if args.json {
        let out = serde_json::json!({
            "model": dir,
            "method": method.to_string(),
            "ratio": ratio,
            "schedule": schedule,
            "layers": reports,
            "stages": stages,
            "linear_params_before": before,
            "linear_params_after": after,
            "model_params_before": dense_total,
            "model_params_after": total,
            "mean_rel_error": mean_err,
            "mean_ptq_rel_error": mean_ptq,
            "seconds": seconds,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "encoder linears: {before} -> {after} weight parameters ({:.2}x fewer), mean rel. error {mean_err:.4}{}; model {dense_total} -> {total} parameters; {seconds:.1} s",
            before as f64 / after as f64,
            mean_ptq.map_or(String::new(), |e| format!(
                " (CP-ALS then quantize: {e:.4})"
            )),
        );
    }
    if let Some(out) = &args.out {
        let manifest = CompressedManifest::describe(&model, method, ratio, schedule);
        let written = save_compressed(&model, &manifest, &dir, out)
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
