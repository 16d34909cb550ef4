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

/// Redraws the plot from a `bench --json` file and prints the benchmark's summary lines.
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
    curves(&rows, &a.out).context("--out")?;
    for line in memtrain_index::bench::summaries(&rows) {
        println!("{line}");
    }
    Ok(())
}

/// Recall@10 (x) against queries per second (y, log scale), one line per method through its
/// Pareto front. The x axis starts below the lowest recall, so that no point is left off.
pub(super) fn curves(rows: &[Row], path: &Path) -> Result<()> {
    use plotters::prelude::*;
    crate::plot::draw_png(path, (960, 640), |root| {
        let qps_max = rows.iter().map(|r| r.qps).fold(1.0, f64::max) * 1.5;
        let qps_min = rows
            .iter()
            .map(|r| r.qps)
            .fold(f64::INFINITY, f64::min)
            .max(1.0)
            / 1.5;
        let (x_lo, x_hi) = recall_axis(rows.iter().map(|r| r.recall_at_10));
        let mut chart = ChartBuilder::on(root)
            .caption(
                "recall@10 against queries per second (one query at a time, 1 thread)",
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(x_lo..x_hi, (qps_min..qps_max).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("recall@10")
            .y_desc("queries per second (log scale)")
            .x_label_formatter(&|x| format!("{x:.2}"))
            .y_label_formatter(&|y| qps_label(*y))
            .axis_desc_style(("sans-serif", 16))
            .label_style(("sans-serif", 14))
            .draw()?;
        // One series per method, and per list count for IVF (the two IVFs differ).
        let mut series: Vec<String> = Vec::new();
        for r in rows {
            let key = series_key(r);
            if !series.contains(&key) {
                series.push(key);
            }
        }
        let mut other = 0;
        for (s, key) in series.iter().enumerate() {
            let color = match key.as_str() {
                "tt" => RGBColor(214, 39, 40),
                "tt-sq8" => RGBColor(120, 0, 0),
                "hnsw" => RGBColor(44, 160, 44),
                "exact" => BLACK,
                _ => {
                    other += 1;
                    PALETTE[(other - 1) % PALETTE.len()]
                }
            };
            let mut pts: Vec<(f64, f64)> = rows
                .iter()
                .filter(|r| &series_key(r) == key)
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
            let label = if key == "exact" {
                "exact (brute force)".to_string()
            } else {
                key.clone()
            };
            chart.draw_series(LineSeries::new(front, color.stroke_width(2)))?;
            // A marker shape per series as well as a colour, so that series stay apart in
            // grey print and where they cross.
            let line = move |(x, y): (i32, i32)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (24, 0)], color.stroke_width(2))
            };
            match s % 4 {
                0 => chart
                    .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?
                    .label(label)
                    .legend(move |p| line(p) + Circle::new((12, 0), 4, color.filled())),
                1 => chart
                    .draw_series(
                        pts.iter()
                            .map(|&p| TriangleMarker::new(p, 6, color.filled())),
                    )?
                    .label(label)
                    .legend(move |p| line(p) + TriangleMarker::new((12, 0), 6, color.filled())),
                2 => chart
                    .draw_series(pts.iter().map(|&p| Cross::new(p, 5, color.stroke_width(2))))?
                    .label(label)
                    .legend(move |p| line(p) + Cross::new((12, 0), 5, color.stroke_width(2))),
                _ => chart
                    .draw_series(pts.iter().map(|&p| {
                        EmptyElement::at(p) + Rectangle::new([(-4, -4), (4, 4)], color.filled())
                    }))?
                    .label(label)
                    .legend(move |p| line(p) + Rectangle::new([(8, -4), (16, 4)], color.filled())),
            };
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .label_font(("sans-serif", 15))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })
}

/// Colours of the series other than tt (red), tt-sq8 (dark red), hnsw (green) and exact
/// (black): the IVFs and the other TT modes.
const PALETTE: [plotters::style::RGBColor; 11] = [
    plotters::style::RGBColor(31, 119, 180),
    plotters::style::RGBColor(255, 127, 14),
    plotters::style::RGBColor(148, 103, 189),
    plotters::style::RGBColor(140, 86, 75),
    plotters::style::RGBColor(227, 119, 194),
    plotters::style::RGBColor(23, 190, 207),
    plotters::style::RGBColor(188, 189, 34),
    plotters::style::RGBColor(127, 127, 127),
    plotters::style::RGBColor(0, 0, 128),
    plotters::style::RGBColor(255, 187, 120),
    plotters::style::RGBColor(0, 128, 128),
];

/// The recall axis: from a multiple of 0.05 below the lowest recall (0 at least) to a little
/// past 1, so that every point, those at recall 1 included, is drawn whole.
fn recall_axis(recalls: impl Iterator<Item = f64>) -> (f64, f64) {
    let lowest = recalls.filter(|r| r.is_finite()).fold(1.0, f64::min);
    let lo = (((lowest - 0.01) * 20.0).floor() / 20.0).clamp(0.0, 0.95);
    (lo, 1.0 + 0.03 * (1.0 - lo))
}

/// A queries-per-second tick as people write it: 500, 2k, 1.5k, 100k, 1M.
fn qps_label(qps: f64) -> String {
    let (value, unit) = if qps >= 1e6 {
        (qps / 1e6, "M")
    } else if qps >= 1e3 {
        (qps / 1e3, "k")
    } else {
        (qps, "")
    };
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text}{unit}")
}

/// The plot series of a row: its method, its list count for IVF (`ivf`, `ivf-sq8`), and its
/// code size for the compressed mode (`tt-pq`, with the bytes per vector).
fn series_key(row: &Row) -> String {
    let first = row.params.split(',').next().unwrap_or("");
    match row.method.as_str() {
        m if m.starts_with("ivf") => format!("{m} {first}"),
        "tt-pq" => format!("tt-pq {first} ({:.1} B/vector)", row.bytes_per_vector),
        m => m.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_write_qps_ticks_with_k_and_m() {
        assert_eq!(qps_label(100_000.0), "100k");
        assert_eq!(qps_label(10_000.0), "10k");
        assert_eq!(qps_label(1_000.0), "1k");
        assert_eq!(qps_label(1_500.0), "1.5k");
        assert_eq!(qps_label(2_000_000.0), "2M");
        assert_eq!(qps_label(500.0), "500");
    }

    #[test]
    fn should_start_the_recall_axis_below_the_lowest_point() {
        let (lo, hi) = recall_axis([0.2472, 0.9, 1.0].into_iter());
        assert!((lo - 0.2).abs() < 1e-9, "{lo}");
        assert!(hi > 1.0);
        let (lo, _) = recall_axis([0.93, 1.0].into_iter());
        assert!((lo - 0.9).abs() < 1e-9, "{lo}");
        let (lo, _) = recall_axis([0.0, 1.0].into_iter());
        assert!(lo.abs() < 1e-12, "{lo}");
    }
}
