//! `memtrain index plot`, and the plot of `memtrain index bench --plot`: recall@10 against
//! queries per second.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use memtrain_index::bench::Row;

#[derive(Args, Debug)]
pub(super) struct PlotArgs {
    /// A file written by `memtrain index bench --json`.
    #[arg(long)]
    json: PathBuf,
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
}

/// Redraws the plot from a `bench --json` file.
pub(super) fn run(a: PlotArgs) -> Result<()> {
    let text =
        std::fs::read_to_string(&a.json).with_context(|| format!("--json {}", a.json.display()))?;
    let rows: Vec<Row> = serde_json::from_str(&text).with_context(|| {
        format!(
            "--json {}: not a `memtrain index bench --json` file",
            a.json.display()
        )
    })?;
    if rows.is_empty() {
        bail!("--json {}: no rows to plot", a.json.display());
    }
    curves(&rows, &a.out).context("--out")
}

/// Recall@10 (x) against queries per second (y, log scale), one line per method.
pub(super) fn curves(rows: &[Row], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    crate::plot::draw_png(path, (900, 600), |root| {
        let qps_max = rows.iter().map(|r| r.qps).fold(1.0, f64::max) * 1.5;
        let qps_min = rows
            .iter()
            .map(|r| r.qps)
            .fold(f64::INFINITY, f64::min)
            .max(1.0)
            / 1.5;
        let mut chart = ChartBuilder::on(root)
            .caption(
                "recall@10 against queries per second (1 thread)",
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(70)
            .build_cartesian_2d(RECALL_FLOOR..1.0f64, (qps_min..qps_max).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("recall@10")
            .y_desc("queries per second")
            .draw()?;
        // One series per method, and per list count for IVF (the two IVFs differ).
        let mut series: Vec<String> = Vec::new();
        for r in rows {
            let key = series_key(r);
            if !series.contains(&key) {
                series.push(key);
            }
        }
        let mut ivf_seen = 0;
        for key in series.iter() {
            let color = match key.split(' ').next() {
                Some("tt") => RGBColor(234, 67, 53),
                Some("hnsw") => RGBColor(52, 168, 83),
                Some("exact") => RGBColor(0, 0, 0),
                _ => {
                    ivf_seen += 1;
                    if ivf_seen == 1 {
                        RGBColor(66, 133, 244)
                    } else {
                        RGBColor(0, 172, 193)
                    }
                }
            };
            let mut pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| &series_key(r) == key && r.recall_at_10 >= RECALL_FLOOR)
                .map(|r| (r.recall_at_10, r.qps))
                .collect();
            if pts.is_empty() {
                continue;
            }
            // The Pareto front: the best QPS at each recall.
            pts.sort_by(|a, b| b.0.total_cmp(&a.0));
            let mut front = Vec::new();
            let mut best = 0.0;
            for p in pts.iter() {
                if p.1 > best {
                    best = p.1;
                    front.push(*p);
                }
            }
            chart
                .draw_series(LineSeries::new(front.clone(), color.stroke_width(2)))?
                .label(key.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })
}

/// Recall below this is left off the plot (the region users choose from is near 1).
const RECALL_FLOOR: f64 = 0.5;

/// The plot series of a row: its method, and its list count for IVF.
fn series_key(row: &Row) -> String {
    match row.method.as_str() {
        "ivf" => format!("ivf {}", row.params.split(',').next().unwrap_or("")),
        m => m.to_string(),
    }
}
