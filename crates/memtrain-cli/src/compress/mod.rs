//! `memtrain compress`: a GPT checkpoint's linear weights to TT-matrices (`--from`, `gpt.rs`:
//! [`memtrain::compress::compress_checkpoint`]), or a pretrained BERT's encoder linears
//! factorized by a target parameter ratio (`--model`, `bert.rs`:
//! [`memtrain::bert::compress_model`]), with a per-layer report and optionally the compressed
//! model written out. The arguments are shared; each file checks the ones that apply.

mod bert;
mod gpt;

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

/// The distillation text when `--data` is not given.
pub const DEFAULT_DATA: &str = "/work/shared/data/tinyshakespeare.txt";

#[derive(Args, Debug)]
pub struct CompressArgs {
    /// A `memtrain train --out` directory (a GPT); its newest checkpoint is compressed to
    /// TT-matrices. Give this or --model.
    #[arg(long)]
    pub(super) from: Option<PathBuf>,
    /// A sentence-transformers BERT directory (e.g. what `scripts/fetch-minilm.sh` prints);
    /// its encoder linears are factorized by --method at --ratio. Give this or --from.
    #[arg(long)]
    pub(super) model: Option<PathBuf>,
    /// With --model: svd, tucker2, cp, cp-q:BITS (quantization-aware CP, BITS in 2..=8; also
    /// reports CP-ALS-then-quantize), cp-ptq:BITS (CP-ALS, then quantize), ttm, or a
    /// data-aware method that calibrates on text: asvd (SVD in the metric of each layer's
    /// inputs), fwsvd (SVD with rows weighted by their Fisher information), active (projection
    /// on the active subspace of the input gradients), rom (reduced-order MLPs by maxvol,
    /// attention by asvd).
    #[arg(long)]
    pub(super) method: Option<String>,
    /// With --model: each encoder linear keeps at most 1/RATIO of its weight parameters.
    #[arg(long)]
    pub(super) ratio: Option<f64>,
    /// With --model and svd, asvd or fwsvd: "uniform" (every linear at --ratio) or "auto" (the
    /// linears together keep 1/RATIO, each layer's rank chosen by the energy it keeps per
    /// parameter).
    #[arg(long, default_value = "uniform")]
    pub(super) ranks: String,
    /// With --model and asvd or rom, one-shot: compress layer by layer, each linear calibrated
    /// on its inputs in the partly compressed model and fitted to the original's outputs.
    #[arg(long)]
    pub(super) sequential: bool,
    /// With --model: compress in --stages stages of rising ratio, distilling the original
    /// embeddings for --steps steps after each.
    #[arg(long)]
    pub(super) iterative: bool,
    /// With --iterative: Adam steps after each stage.
    #[arg(long, default_value_t = 100)]
    pub(super) steps: usize,
    /// With --iterative: stages (ratios RATIO^(s/STAGES)).
    #[arg(long, default_value_t = 3)]
    pub(super) stages: usize,
    /// With --iterative: text lines per step.
    #[arg(long, default_value_t = 16)]
    pub(super) batch: usize,
    /// With --iterative: Adam learning rate.
    #[arg(long, default_value_t = 1e-4)]
    pub(super) lr: f64,
    /// With --iterative or a data-aware method: text to distill or calibrate on, a sentence a line (the first
    /// 500 non-empty lines are held out for eval-embed); default
    /// /work/shared/data/tinyshakespeare.txt.
    #[arg(long)]
    pub(super) data: Option<PathBuf>,
    /// With a data-aware method: text to calibrate on, all its non-empty lines (keep it apart from the text
    /// eval-embed measures); default: --data's lines after the 500 held out.
    #[arg(long)]
    pub(super) calib: Option<PathBuf>,
    /// With a data-aware method: calibration lines read (one-shot; --iterative recalibrates on its
    /// distillation lines).
    #[arg(long, default_value_t = memtrain::bert::CALIBRATION_LINES)]
    pub(super) calib_lines: usize,
    /// With --model and a CP method: CP-ALS sweeps per layer.
    #[arg(long, default_value_t = 10)]
    pub(super) cp_iters: usize,
    /// With --from: largest TT rank of any bond.
    #[arg(long)]
    pub(super) rank: Option<usize>,
    /// With --from: relative Frobenius accuracy per layer, `‖W - W_tt‖ <= eps ‖W‖`.
    #[arg(long)]
    pub(super) eps: Option<f64>,
    /// With --from: compress the attention linears too, not only the MLP's.
    #[arg(long)]
    pub(super) all: bool,
    /// Write the compressed model here: with --from a checkpoint (`weights=ttm:RANK[:all]`, needs
    /// --rank alone) that `train --resume --out DIR` fine-tunes; with --model the factors and
    /// manifest for `eval-embed --compressed DIR`.
    #[arg(long)]
    pub(super) out: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub(super) json: bool,
    /// Where to run: cpu, wgpu, wgpu:cpu, cuda or cuda:N (GPUs: a wgpu or cuda build).
    #[arg(long, default_value = "cpu")]
    pub(super) device: String,
}

pub fn run(args: CompressArgs) -> Result<()> {
    match (&args.from, &args.model) {
        (Some(_), Some(_)) => bail!(
            "--from and --model both given: compress either a GPT checkpoint (--from RUN_DIR) or a BERT model (--model DIR)"
        ),
        (None, None) => bail!(
            "missing --from or --model: give a GPT checkpoint (--from RUN_DIR) or a BERT model directory (--model DIR)"
        ),
        (None, Some(dir)) => bert::run(&args, dir),
        (Some(from), None) => gpt::run(&args, from),
    }
}

/// A warning line on stderr when compressing layer `name` left it with more weight
/// parameters than it had (a compression factor below 1x), ending with `hint`.
fn warn_if_larger(name: &str, before: usize, after: usize, hint: &str) {
    if after > before {
        eprintln!(
            "warning: {name} got larger: {before} -> {after} weight parameters ({:.2}x, {:.1}% of \
             its size); {hint}",
            crate::output::factor(before, after),
            100.0 * after as f64 / before as f64
        );
    }
}
