//! The memory bar chart of `memtrain bench --plot`, and the PNG plumbing both plots share.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use memtrain::run::{BenchReport, BenchRow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters::style::text_anchor::{HPos, Pos, VPos};

mod labels;

use labels::{short_label, wrap};

const FONT_DIRS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu",
    "/usr/share/fonts/TTF",
    "/usr/share/fonts/dejavu",
];

/// Registers a system TrueType font for the chart's text (plotters draws no text without one),
/// and its bold face where it is installed (plotters falls back to the regular one).
fn register_font() -> Result<()> {
    let dir = FONT_DIRS
        .iter()
        .map(Path::new)
        .find(|d| d.join("DejaVuSans.ttf").is_file())
        .ok_or_else(|| {
            anyhow!("no DejaVuSans.ttf found in {FONT_DIRS:?}; install fonts-dejavu-core")
        })?;
    for (file, style) in [
        ("DejaVuSans.ttf", FontStyle::Normal),
        ("DejaVuSans-Bold.ttf", FontStyle::Bold),
    ] {
        let path = dir.join(file);
        if matches!(style, FontStyle::Bold) && !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
        plotters::style::register_font("sans-serif", style, Box::leak(bytes.into_boxed_slice()))
            .map_err(|_| anyhow!("{} is not a usable TrueType font", path.display()))?;
    }
    Ok(())
}

/// One stacked segment: its legend, colour, and the bytes it takes from a row.
type Part = (&'static str, RGBColor, fn(&BenchRow) -> u64);

const PARTS: [Part; 4] = [
    ("parameters", RGBColor(66, 133, 244), |r| r.param_bytes),
    ("gradients", RGBColor(251, 188, 5), |r| r.grad_bytes),
    ("optimizer state", RGBColor(52, 168, 83), |r| {
        r.optimizer_bytes
    }),
    ("activations", RGBColor(234, 67, 53), |r| r.activation_bytes),
];

/// The bar labels of a bench with `--budget`, in the order [`memtrain::run::bench`] runs them.
const BUDGET_ROLES: [&str; 3] = ["plain burn", "best uniform", "plan"];

/// Characters per line of a bar's policy label.
const LABEL_WIDTH: usize = 26;

/// Lines of a bar's policy label at most; more end in "...".
const LABEL_LINES: usize = 5;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One bar per benched policy: its measured parameters, gradients, optimizer state and
/// activations stacked (MiB, each value written on its segment), and the step's peak drawn as
/// a black line over them. With a budget the bars read "plain burn", "best uniform" and
/// "plan", the plan's bar highlighted.
pub fn memory_bars(report: &BenchReport, path: &Path) -> Result<()> {
    let rows = &report.rows;
    let roles: Option<&[&str]> =
        (report.plan.is_some() && rows.len() == BUDGET_ROLES.len()).then_some(&BUDGET_ROLES[..]);
    let labels: Vec<Vec<String>> = report
        .policies
        .iter()
        .map(|p| wrap(&short_label(p), LABEL_WIDTH, LABEL_LINES))
        .collect();
    let label_lines = labels.iter().map(Vec::len).max().unwrap_or(1) + usize::from(roles.is_some());
    const SLOT: u32 = 250;
    const LEGEND: u32 = 230;
    const NOTE: u32 = 60;
    let width = 110 + SLOT * rows.len() as u32 + LEGEND;
    let height = 560 + 18 * label_lines as u32;
    draw_png(path, (width, height), |root| {
        let (main, note) = root.split_vertically(height - NOTE);
        let (area, legend) = main.split_horizontally(width - LEGEND);
        let stack = |r: &BenchRow| PARTS.iter().map(|p| (p.2)(r)).sum::<u64>();
        let peak_at = |r: &BenchRow| r.param_bytes + r.peak_bytes;
        let top = rows
            .iter()
            .map(|r| mib(stack(r).max(peak_at(r))))
            .fold(0.0, f64::max)
            .max(0.1)
            * 1.12;
        let mut caption = match rows.first() {
            Some(r) => format!(
                "memory of a training step: {} batch {} seq {}",
                r.preset, r.batch, r.seq
            ),
            None => "memory of a training step".to_string(),
        };
        if let Some(plan) = &report.plan {
            caption += &format!(", activation budget {:.1} MiB", mib(plan.budget));
        }
        let n = rows.len() as f64;
        let mut chart = ChartBuilder::on(&area)
            .caption(caption, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(14 + 18 * label_lines as u32)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5..n - 0.5, 0.0..top)?;
        let decimals = if top < 10.0 { 1 } else { 0 };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .x_label_formatter(&|_| String::new())
            .y_desc("MiB")
            .y_label_formatter(&|v| format!("{v:.decimals$}"))
            .axis_desc_style(("sans-serif", 16))
            .label_style(("sans-serif", 14))
            .draw()?;
        const HALF: f64 = 0.25;
        let y_px = |chart: &ChartContext<'_, _, _>, y: f64| chart.backend_coord(&(0.0, y)).1;
        for (i, r) in rows.iter().enumerate() {
            let x = i as f64;
            if roles.is_some_and(|roles| roles[i] == "plan") {
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x - 0.48, 0.0), (x + 0.48, top)],
                    RGBColor(255, 243, 205).filled(),
                )))?;
            }
            let mut below = 0;
            for &(_, color, get) in &PARTS {
                let (lo, hi) = (mib(below), mib(below + get(r)));
                below += get(r);
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x - HALF, lo), (x + HALF, hi)],
                    color.filled(),
                )))?;
                // A value is written where its segment is tall enough to hold it, and moved
                // off the peak line when that crosses its middle.
                let peak = mib(peak_at(r));
                let (mut a, mut b) = (lo, hi);
                let crosses = |y: f64| (y_px(&chart, y) - y_px(&chart, peak)).abs() < 14;
                if crosses((lo + hi) / 2.0) && lo < peak && peak < hi {
                    (a, b) = if peak - lo >= hi - peak {
                        (lo, peak)
                    } else {
                        (peak, hi)
                    };
                }
                let at = (a + b) / 2.0;
                if y_px(&chart, a) - y_px(&chart, b) >= 16 {
                    let ink = if color == PARTS[1].1 { BLACK } else { WHITE };
                    chart.draw_series(std::iter::once(Text::new(
                        format!("{:.1}", hi - lo),
                        (x, at),
                        ("sans-serif", 14)
                            .into_font()
                            .color(&ink)
                            .pos(Pos::new(HPos::Center, VPos::Center)),
                    )))?;
                }
            }
            let peak = mib(peak_at(r));
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(x - HALF - 0.04, peak), (x + HALF + 0.04, peak)],
                BLACK.stroke_width(3),
            )))?;
            for (k, line) in ["peak".to_string(), format!("{:.1} MiB", mib(r.peak_bytes))]
                .into_iter()
                .enumerate()
            {
                let v = if k == 0 { VPos::Bottom } else { VPos::Top };
                chart.draw_series(std::iter::once(Text::new(
                    line,
                    (x + HALF + 0.06, peak),
                    ("sans-serif", 14)
                        .into_font()
                        .style(FontStyle::Bold)
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Left, v)),
                )))?;
            }
            // The label under the bar, one line at a time (plotters does not wrap).
            let (px, py) = chart.backend_coord(&(x, 0.0));
            let mut lines: Vec<(String, FontStyle)> = Vec::new();
            if let Some(roles) = roles {
                lines.push((roles[i].to_string(), FontStyle::Bold));
            }
            // "plain burn" needs no second line saying "plain".
            if roles.is_none() || labels[i] != ["plain"] {
                lines.extend(labels[i].iter().map(|l| (l.clone(), FontStyle::Normal)));
            }
            for (k, (line, style)) in lines.into_iter().enumerate() {
                let size = if matches!(style, FontStyle::Bold) {
                    16
                } else {
                    14
                };
                root.draw(&Text::new(
                    line,
                    (px, py + 10 + 18 * k as i32),
                    ("sans-serif", size)
                        .into_font()
                        .style(style)
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Center, VPos::Top)),
                ))?;
            }
        }
        // The legend, beside the chart so that it never hides a bar.
        let font = ("sans-serif", 15).into_font();
        let mut y = 70;
        for &(name, color, _) in PARTS.iter().rev() {
            legend.draw(&Rectangle::new([(10, y - 8), (30, y + 8)], color.filled()))?;
            legend.draw(&Text::new(
                name,
                (40, y),
                font.color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center)),
            ))?;
            y += 28;
        }
        legend.draw(&PathElement::new(
            vec![(8, y), (32, y)],
            BLACK.stroke_width(3),
        ))?;
        legend.draw(&Text::new(
            "step peak",
            (40, y),
            font.color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
        if roles.is_some() {
            y += 28;
            legend.draw(&Rectangle::new(
                [(10, y - 8), (30, y + 8)],
                RGBColor(255, 243, 205).filled(),
            ))?;
            legend.draw(&Text::new(
                "the plan",
                (40, y),
                font.color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center)),
            ))?;
        }
        for (k, line) in [
            "Segments: bytes measured during the step (they need not all be live at once).",
            "Step peak: the most bytes live at once above those live before the step, drawn on top of the parameters.",
        ]
        .into_iter()
        .enumerate()
        {
            note.draw(&Text::new(
                line,
                (20, 8 + 20 * k as i32),
                ("sans-serif", 13).into_font(),
            ))?;
        }
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
