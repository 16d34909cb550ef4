//! Recall as ann-benchmarks defines it, sliced Wasserstein distance, AUROC.

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::data::Points;
use crate::fit::normal;

/// Slack ann-benchmarks adds to the true k-th distance.
pub const RECALL_EPSILON: f32 = 1e-3;

/// Recall@k of one query as ann-benchmarks computes it: the fraction of the `k` returned
/// points whose distance is within the true `k`-th neighbour's distance (plus
/// [`RECALL_EPSILON`]). Distances are squared on input, compared unsquared.
pub fn recall_at_k(returned: &[(f32, u32)], truth: &[(f32, u32)], k: usize) -> f64 {
    if k == 0 || truth.is_empty() {
        return 1.0;
    }
    let threshold = truth[k.min(truth.len()) - 1].0.max(0.0).sqrt() + RECALL_EPSILON;
    let hits = returned
        .iter()
        .take(k)
        .filter(|(d, _)| d.max(0.0).sqrt() <= threshold)
        .count();
    hits as f64 / k.min(truth.len()) as f64
}

/// Sliced Wasserstein-2 distance between two point sets of the same dimension (any sizes):
/// the root mean over `projections` random unit directions (seeded) of the squared
/// 1-D Wasserstein-2 distance, computed from the two quantile functions at `q` levels
/// (`q` = the larger set's size, at most 4096).
///
/// # Panics
///
/// When the dimensions differ.
pub fn sliced_wasserstein(a: &Points, b: &Points, projections: usize, seed: u64) -> f64 {
    assert_eq!(
        a.dim(),
        b.dim(),
        "sliced Wasserstein of point sets of different dimensions"
    );
    let d = a.dim();
    let mut rng = StdRng::seed_from_u64(seed);
    let levels = a.len().max(b.len()).min(4096);
    let mut total = 0.0;
    for _ in 0..projections {
        let mut theta: Vec<f64> = (0..d).map(|_| normal(&mut rng)).collect();
        let norm = theta.iter().map(|t| t * t).sum::<f64>().sqrt();
        theta.iter_mut().for_each(|t| *t /= norm);
        let project = |p: &Points| -> Vec<f64> {
            let mut v: Vec<f64> = (0..p.len())
                .map(|i| {
                    p.row(i)
                        .iter()
                        .zip(&theta)
                        .map(|(&x, t)| f64::from(x) * t)
                        .sum()
                })
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let (pa, pb) = (project(a), project(b));
        let quantile = |v: &[f64], t: f64| v[((t * v.len() as f64) as usize).min(v.len() - 1)];
        let w2: f64 = (0..levels)
            .map(|l| {
                let t = (l as f64 + 0.5) / levels as f64;
                (quantile(&pa, t) - quantile(&pb, t)).powi(2)
            })
            .sum::<f64>()
            / levels as f64;
        total += w2;
    }
    (total / projections as f64).sqrt()
}

/// Area under the ROC curve of `scores` (higher = more anomalous) for the labels
/// `positive[i]` (true = out of distribution): the probability that a random positive
/// scores above a random negative, ties counting half (Mann-Whitney U).
///
/// # Panics
///
/// When the lengths differ or a class is empty.
pub fn auroc(scores: &[f64], positive: &[bool]) -> f64 {
    assert_eq!(scores.len(), positive.len(), "scores and labels");
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&i, &j| scores[i].total_cmp(&scores[j]));
    // Average ranks over ties, then U from the positives' rank sum.
    let mut ranks = vec![0.0f64; scores.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let r = (i + j) as f64 / 2.0 + 1.0;
        for &o in &order[i..=j] {
            ranks[o] = r;
        }
        i = j + 1;
    }
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    assert!(n_pos > 0 && n_neg > 0, "AUROC needs both classes");
    let rank_sum: f64 = ranks
        .iter()
        .zip(positive)
        .filter(|(_, p)| **p)
        .map(|(r, _)| r)
        .sum();
    (rank_sum - (n_pos * (n_pos + 1)) as f64 / 2.0) / (n_pos * n_neg) as f64
}
