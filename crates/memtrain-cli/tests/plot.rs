//! `memtrain bench --plot` end to end: a PNG of the expected size, with and without `--budget`.

mod common;

use std::path::Path;

use common::*;

/// The width and height of a PNG, read from its signature and IHDR chunk (the first chunk).
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(bytes.len() > 33, "{} bytes: not a PNG", bytes.len());
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR", "first chunk");
    let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (word(16), word(20))
}

const TINY: [&str; 9] = [
    "bench", "--preset", "tiny", "--batch", "2", "--seq", "16", "--steps", "1",
];

/// The chart's layout: 250 px per bar beside the axis (110 px) and the legend (230 px); the
/// height grows by 18 px a label line (a role and at most five policy lines).
fn assert_chart_size(path: &Path, bars: u32) {
    let (w, h) = png_size(path);
    assert_eq!(w, 340 + 250 * bars, "width of {bars} bars");
    assert!((560 + 18..=560 + 18 * 6).contains(&h), "height {h}");
}

#[test]
fn should_plot_one_bar_per_policy() {
    let dir = scratch("plot");
    let png = dir.join("bench.png");
    let mut args = TINY.to_vec();
    args.extend([
        "--policies",
        "act=exact;act=inverted,norm=output,attn=memeff",
        "--plot",
        png.to_str().unwrap(),
    ]);
    let out = run_ok(&args);
    assert!(String::from_utf8_lossy(&out.stdout).contains("wrote"));
    assert_chart_size(&png, 2);
    // Only the PNG: the drawing goes to a temporary file renamed over it.
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn should_plot_plain_uniform_and_plan_with_a_budget() {
    let dir = scratch("plot-budget");
    let png = dir.join("budget.png");
    // At seq 16 no schedule fits half the activations; at 32 one does.
    let mut args = TINY.to_vec();
    args[6] = "32";
    args.extend(["--budget", "1/2", "--plot", png.to_str().unwrap()]);
    run_ok(&args);
    assert_chart_size(&png, 3);
}

#[test]
fn should_name_plot_when_the_png_cannot_be_written() {
    let dir = scratch("plot-missing");
    let png = dir.join("no-such-dir").join("bench.png");
    let mut args = TINY.to_vec();
    args.extend(["--plot", png.to_str().unwrap()]);
    run_err(&args, "--plot");
}

#[test]
fn should_plot_index_rows_below_recall_one_half() {
    // Rows under recall 0.5 were once left off without a word; `recall_axis` now starts
    // below the lowest (its unit test), and the plot is drawn with them.
    let dir = scratch("plot-index");
    let json = dir.join("rows.json");
    let png = dir.join("index.png");
    let row = |method: &str, params: &str, recall: f64, qps: f64| {
        serde_json::json!({
            "method": method, "params": params, "recall_at_10": recall, "qps": qps,
            "build_seconds": 1.0, "index_bytes": 0,
        })
    };
    let rows = serde_json::json!([
        row("exact", "brute force", 1.0, 150.0),
        row("tt", "beam=64,probe=1", 0.2472, 46692.0),
        row("tt", "beam=64,probe=48", 0.9507, 5056.0),
        row("ivf", "nlist=4096,nprobe=1", 0.3526, 4546.0),
        row("ivf", "nlist=980,nprobe=8", 0.9549, 7268.0),
        row("hnsw", "M=16,ef=10", 0.9408, 3762.0),
    ]);
    std::fs::write(&json, serde_json::to_vec(&rows).unwrap()).unwrap();
    run_ok(&[
        "index",
        "plot",
        "--json",
        json.to_str().unwrap(),
        "--out",
        png.to_str().unwrap(),
    ]);
    assert_eq!(png_size(&png), (960, 640));
}
