//! Out-of-distribution detection with the TT cloud as the memory bank, behind
//! `memtrain index ood`: a test image's score is its distance to the nearest point of the bank,
//! and the AUROC of that score separates the held-out classes from the bank's.
//!
//! [`split`] chooses the bank and the labels, [`run`] trains the cloud and scores three banks:
//! the TT cloud, the full in-distribution training set, and a random subset of it holding as
//! many floats as the cloud.

use std::fmt;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::bench::default_shape;
use crate::data::{FashionMnist, Points};
use crate::metrics::auroc;
use crate::{Error, FitConfig, FitProgress, Result, check_capacity, fit, ground_truth};

/// The in-distribution training points and which test points are out of distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// The training points of the in-distribution classes (the full memory bank).
    pub bank: Points,
    /// Per test point: whether its class is out of distribution (the positive class).
    pub out_of_distribution: Vec<bool>,
}

/// The bank of the training points whose labels are in `classes`, and the test points whose
/// labels are not as the out-of-distribution ones.
///
/// # Errors
///
/// [`Error::Invalid`] for no class, a class above 9, all ten classes (none left out of
/// distribution), no training point in `classes`, test points all in or all out of
/// distribution, or label counts that differ from the image counts.
pub fn split(data: &FashionMnist, classes: &[usize]) -> Result<Split> {
    for (what, images, labels) in [
        ("training labels", data.train.len(), data.train_labels.len()),
        ("test labels", data.test.len(), data.test_labels.len()),
    ] {
        if images != labels {
            return Err(Error::invalid(
                what,
                labels,
                format!("{images}, one per image"),
            ));
        }
    }
    if let Some(&c) = classes.iter().find(|&&c| c > 9) {
        return Err(Error::invalid("class", c, "0..=9"));
    }
    let distinct = (0..10).filter(|c| classes.contains(c)).count();
    if distinct == 0 || distinct == 10 {
        return Err(Error::invalid(
            "classes",
            format!("{distinct} of the ten classes"),
            "1 to 9 classes, the others held out as out of distribution",
        ));
    }
    let is_in = |label: u8| classes.contains(&(label as usize));
    let rows: Vec<usize> = (0..data.train.len())
        .filter(|&i| is_in(data.train_labels[i]))
        .collect();
    if rows.is_empty() {
        return Err(Error::invalid(
            "classes",
            format!("{classes:?} (no training point)"),
            "classes with training points",
        ));
    }
    let out_of_distribution: Vec<bool> = data.test_labels.iter().map(|&l| !is_in(l)).collect();
    let held_out = out_of_distribution.iter().filter(|&&o| o).count();
    if held_out == 0 || held_out == out_of_distribution.len() {
        return Err(Error::invalid(
            "classes",
            format!(
                "{classes:?} ({held_out} of {} test points out of distribution)",
                out_of_distribution.len()
            ),
            "classes that leave test points both in and out of distribution (AUROC needs both)",
        ));
    }
    Ok(Split {
        bank: data.train.select(&rows),
        out_of_distribution,
    })
}

/// How [`run`] trains the cloud.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OodConfig {
    /// Training of the TT cloud; its seed + 7 seeds the random subset.
    pub fit: FitConfig,
    /// Modes of the cloud; `None`: [`default_shape`] of the bank's size.
    pub shape: Option<Vec<usize>>,
}

/// One memory bank's line of the OOD table; the JSON of `memtrain index ood --json` is a list
/// of these (fields in the JSON's alphabetical key order). Its [`Display`](fmt::Display) is
/// the table line the demo prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// AUROC of the distance to the nearest bank point, out of distribution as positive.
    pub auroc: f64,
    /// `tt cloud`, `full training set` or `random subset`.
    pub bank: String,
    /// Floats the bank holds (for the cloud: its parameters).
    pub floats: usize,
    /// Points of the bank (for the cloud: all `Π N_j` of them).
    pub points: usize,
}

impl fmt::Display for Row {
    /// The table line: bank, points, floats, AUROC.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<20} {:>10} {:>12} {:>8.4}",
            self.bank, self.points, self.floats, self.auroc
        )
    }
}

/// What [`run`] reports while it works, in this order.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Progress<'a> {
    /// One training step of the TT cloud.
    Fit(FitProgress),
    /// The cloud is trained.
    Trained {
        /// Modes `[N_1..N_k]`.
        shape: &'a [usize],
        /// TT ranks `[1, r_1, ..., r_k]`.
        ranks: &'a [usize],
        /// Seconds of training.
        seconds: f64,
    },
    /// A bank is scored.
    Row(&'a Row),
}

/// Everything [`run`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Modes of the cloud.
    pub shape: Vec<usize>,
    /// TT ranks of the cloud.
    pub ranks: Vec<usize>,
    /// Seconds of training.
    pub fit_seconds: f64,
    /// The TT cloud, the full bank, the random subset.
    pub rows: Vec<Row>,
}

/// Trains a TT cloud on `split.bank` and scores `test` by the distance to the nearest point of
/// each bank: the cloud's `Π N_j` points, the full bank, and a random subset of the bank with
/// as many floats as the cloud has parameters.
///
/// # Example
///
/// ```
/// use memtrain_index::FitConfig;
/// use memtrain_index::data::{FashionMnist, clustered};
/// use memtrain_index::ood::{self, OodConfig};
///
/// // Ten clusters, one per class; classes 0-4 in distribution.
/// let labels = |n: usize| (0..n).map(|i| (i % 10) as u8).collect::<Vec<u8>>();
/// let data = FashionMnist {
///     train: clustered(400, 8, 10, 0),
///     train_labels: labels(400),
///     test: clustered(100, 8, 10, 0),
///     test_labels: labels(100),
/// };
/// let split = ood::split(&data, &[0, 1, 2, 3, 4]).unwrap();
/// let config = OodConfig {
///     fit: FitConfig { rank: 4, steps: 10, batch: 128, ..FitConfig::default() },
///     shape: None,
/// };
/// let report = ood::run(&split, &data.test, &config, &mut |_| {}).unwrap();
/// assert_eq!(report.rows[1].bank, "full training set");
/// ```
///
/// # Errors
///
/// [`Error::Invalid`] when `test` has another dimension than the bank or another count than
/// `split.out_of_distribution`, or the shape is too small for the bank; [`Error::TooLarge`]
/// when the cloud's points would not fit in [`crate::memory_limit`]; [`Error::Fit`] when
/// training the cloud fails.
pub fn run(
    split: &Split,
    test: &Points,
    config: &OodConfig,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Report> {
    let bank = &split.bank;
    if test.dim() != bank.dim() {
        return Err(Error::invalid(
            "test dimension",
            test.dim(),
            format!("{}, the bank's dimension", bank.dim()),
        ));
    }
    if test.len() != split.out_of_distribution.len() {
        return Err(Error::invalid(
            "test points",
            test.len(),
            format!(
                "{}, one per out-of-distribution flag",
                split.out_of_distribution.len()
            ),
        ));
    }
    let shape = config
        .shape
        .clone()
        .unwrap_or_else(|| default_shape(bank.len()));
    check_capacity(&shape, bank.len())?;
    // Every point of the cloud is a bank point: scoring holds them all, with their copy for
    // the matrix product and one block of distances to them.
    let cloud_points = shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
    let estimate = cloud_points.and_then(|c| {
        let d = bank.dim() as u64;
        (c as u64).checked_mul(d.checked_mul(8)?.checked_add(4 * 512)?)
    });
    crate::budget::check_bytes(
        "scoring with the TT cloud",
        &format!(
            "shape {shape:?} ({} points of dimension {})",
            cloud_points.map_or("overflow".into(), |c| c.to_string()),
            bank.dim()
        ),
        estimate,
    )?;
    let start = Instant::now();
    let cloud = fit(bank, &shape, &config.fit, &mut |p| {
        progress(Progress::Fit(p))
    })
    .map_err(|e| Error::Fit(Box::new(e)))?;
    let fit_seconds = start.elapsed().as_secs_f64();
    progress(Progress::Trained {
        shape: &shape,
        ranks: cloud.ranks(),
        seconds: fit_seconds,
    });
    let tt_points = cloud.points();
    let subset = bank.sample(
        (cloud.param_count() / bank.dim()).max(1),
        config.fit.seed.wrapping_add(7),
    );
    let banks: [(&str, &Points, usize); 3] = [
        ("tt cloud", &tt_points, cloud.param_count()),
        ("full training set", bank, bank.len() * bank.dim()),
        ("random subset", &subset, subset.len() * subset.dim()),
    ];
    let mut rows = Vec::with_capacity(banks.len());
    for (name, points, floats) in banks {
        let truth = ground_truth(points, test, 1)?;
        let scores: Vec<f64> = truth.iter().map(|t| f64::from(t[0].0).sqrt()).collect();
        let row = Row {
            auroc: auroc(&scores, &split.out_of_distribution),
            bank: name.into(),
            floats,
            points: points.len(),
        };
        progress(Progress::Row(&row));
        rows.push(row);
    }
    Ok(Report {
        shape,
        ranks: cloud.ranks().to_vec(),
        fit_seconds,
        rows,
    })
}
