//! The stacked memory bar chart of `memtrain bench --plot`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use memtrain::run::BenchRow;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

const FONT_DIRS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a system TrueType font for the chart's text (plotters draws no text without one).
fn register_font() -> Result<()> {
    let path = FONT_DIRS
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("no font found at {FONT_DIRS:?}; install fonts-dejavu-core"))?;
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(bytes.into_boxed_slice()),
    )
    .map_err(|_| anyhow!("{} is not a usable TrueType font", path.display()))
}

/// One stacked segment: its legend, colour, and the bytes it takes from a row.
type Part = (&'static str, RGBColor, fn(&BenchRow) -> u64);

/// Draws one stacked bar per policy: parameters, gradients, optimizer state, activations (MiB).
pub fn memory_bars(rows: &[BenchRow], path: &Path) -> Result<()> {
    draw_png(path, (300 + 220 * rows.len() as u32, 600), |root| {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let top = rows
            .iter()
            .map(|r| mib(r.param_bytes + r.grad_bytes + r.optimizer_bytes + r.activation_bytes))
            .fold(0.0, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!(
                    "memory per policy ({} batch {} seq {})",
                    rows[0].preset, rows[0].batch, rows[0].seq
                ),
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(60)
            .y_label_area_size(70)
            .build_cartesian_2d((0..rows.len()).into_segmented(), 0.0..top.max(1.0))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc("MiB")
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => {
                    rows.get(*i).map(|r| short(&r.policy)).unwrap_or_default()
                }
                _ => String::new(),
            })
            .draw()?;
        let parts: [Part; 4] = [
            ("parameters", RGBColor(66, 133, 244), |r| r.param_bytes),
            ("gradients", RGBColor(251, 188, 5), |r| r.grad_bytes),
            ("optimizer", RGBColor(52, 168, 83), |r| r.optimizer_bytes),
            ("activations", RGBColor(234, 67, 53), |r| r.activation_bytes),
        ];
        for (k, &(name, color, get)) in parts.iter().enumerate() {
            let bars = rows.iter().enumerate().map(|(i, r)| {
                let below: u64 = parts[..k].iter().map(|p| (p.2)(r)).sum();
                let (lo, hi) = (mib(below), mib(below + get(r)));
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), lo),
                        (SegmentValue::Exact(i + 1), hi),
                    ],
                    color.filled(),
                );
                bar.set_margin(0, 0, 20, 20);
                bar
            });
            chart.draw_series(bars)?.label(name).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
            });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        Ok(())
    })
}

/// The drawing area of a `size` PNG with a white background, handed to `draw`; the picture
/// goes to a temporary file renamed to `path`, so a failed drawing leaves no half image.
pub(crate) fn draw_png(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
) -> Result<()> {
    register_font()?;
    let tmp: PathBuf = path.with_extension(format!("tmp-{}.png", std::process::id()));
    {
        let root = BitMapBackend::new(&tmp, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())
}

/// The SPEC without its plain (default) items, so bar labels stay short.
fn short(policy: &str) -> String {
    let plain = memtrain::policy::MemoryPolicy::default().to_string();
    let plain: Vec<&str> = plain.split(',').collect();
    let kept: Vec<&str> = policy.split(',').filter(|i| !plain.contains(i)).collect();
    if kept.is_empty() {
        "plain".into()
    } else {
        kept.join(",")
    }
}
