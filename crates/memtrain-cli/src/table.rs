//! `memtrain table`: the few-bit derivative table of an activation.

use anyhow::{Result, bail};
use clap::Args;
use memtrain::activation::{ActFn, QuantizeParams, Weight, quantize_derivative};

#[derive(Args, Debug)]
pub struct TableArgs {
    /// Activation: gelu, gelu_tanh, silu, tanh, sigmoid, softplus, elu, leaky_relu, relu, mish.
    #[arg(long)]
    act: String,
    /// Bits per code, 1..=8.
    #[arg(long)]
    bits: u32,
    /// Weight of the L2 objective: uniform (the paper's) or gaussian.
    #[arg(long, default_value = "uniform")]
    weight: String,
    /// Print JSON: an object with `borders` (including the two grid ends), `levels`, `error`
    /// (the weighted sum of squared errors) and `mean_squared_error` (the text's number).
    #[arg(long)]
    json: bool,
}

pub fn run(args: TableArgs) -> Result<()> {
    let func: ActFn = args.act.parse()?;
    let weight = match args.weight.as_str() {
        "uniform" => Weight::Uniform,
        "gaussian" => Weight::Gaussian,
        other => bail!("invalid --weight: got {other:?}, expected one of uniform, gaussian"),
    };
    let table = quantize_derivative(
        func,
        args.bits,
        QuantizeParams {
            weight,
            ..Default::default()
        },
    )?;
    let mse = table.error / table.total_weight;
    if args.json {
        // `error` is the table's weighted sum of squared errors; the mean is printed as text.
        let mut json = serde_json::to_value(&table)?;
        json["mean_squared_error"] = serde_json::json!(mse);
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    println!(
        "{} at {} bits ({} levels; w = {}, 4096 points on [-10, 10]); mean squared error {mse:.3e} (JSON mean_squared_error; JSON error is the weighted sum {:.3e})",
        func.name(),
        table.bits,
        table.levels.len(),
        args.weight,
        table.error
    );
    println!("{:>12} {:>12} {:>12}", "from", "to", "level");
    for (b, l) in table.borders.windows(2).zip(&table.levels) {
        println!("{:>12.6} {:>12.6} {:>12.6}", b[0], b[1], l);
    }
    Ok(())
}
