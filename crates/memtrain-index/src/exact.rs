//! Brute force: the exact baseline, the ground truth, and nearest-centre assignment.

use burn::tensor::{Device, Tensor, TensorData};

use crate::data::Points;
use crate::kernel::{TopK, l2sq};
use crate::{Error, Result};

/// Exact search by scanning every point: the baseline the approximate methods are measured
/// against.
#[derive(Debug, Clone)]
pub struct ExactIndex {
    points: Points,
}

impl ExactIndex {
    /// Holds a copy of `points`.
    pub fn new(points: &Points) -> Self {
        Self {
            points: points.clone(),
        }
    }

    /// The `k` nearest points to `query` as `(squared distance, id)`, nearest first.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when the query's dimension differs from the points'.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<(f32, u32)>> {
        check_dim(query, self.points.dim())?;
        let mut top = TopK::new(k);
        for i in 0..self.points.len() {
            let d = l2sq(query, self.points.row(i));
            top.push(d, i as u32);
        }
        Ok(top.into_sorted())
    }
}

/// An error unless `query` has dimension `d`.
pub(crate) fn check_dim(query: &[f32], d: usize) -> Result<()> {
    if query.len() != d {
        return Err(Error::invalid(
            "query dimension",
            query.len(),
            format!("{d}, the dimension of the indexed points"),
        ));
    }
    Ok(())
}

/// Rows of `points` per block of the blocked matrix products below.
const BLOCK: usize = 512;

/// For every row of `queries`, the `candidates` nearest rows of `base` by the expansion
/// `|x|² - 2 x·q` computed as a matrix product on burn's CPU backend (all cores), in blocks.
fn nearest_by_product(base: &Points, queries: &Points, candidates: usize) -> Vec<Vec<u32>> {
    if base.is_empty() || queries.is_empty() {
        return vec![Vec::new(); queries.len()];
    }
    let device = Device::flex();
    let d = base.dim();
    let norms: Vec<f32> = (0..base.len())
        .map(|i| crate::kernel::dot(base.row(i), base.row(i)))
        .collect();
    let b = Tensor::<2>::from_data(
        TensorData::new(base.as_slice().to_vec(), [base.len(), d]),
        &device,
    )
    .transpose();
    let mut out = Vec::with_capacity(queries.len());
    for start in (0..queries.len()).step_by(BLOCK) {
        let end = (start + BLOCK).min(queries.len());
        let q = Tensor::<2>::from_data(
            TensorData::new(
                queries.as_slice()[start * d..end * d].to_vec(),
                [end - start, d],
            ),
            &device,
        );
        let dots: Vec<f32> = q
            .matmul(b.clone())
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32 data");
        for row in dots.chunks_exact(base.len()) {
            let mut top = TopK::new(candidates);
            for (i, (&dp, &n)) in row.iter().zip(&norms).enumerate() {
                top.push(n - 2.0 * dp, i as u32);
            }
            out.push(top.into_sorted().into_iter().map(|(_, i)| i).collect());
        }
    }
    out
}

/// The index of the nearest row of `centres` for every row of `points`.
///
/// # Errors
///
/// [`Error::Invalid`] when `centres` is empty (and `points` is not) or the dimensions differ.
pub fn assign(points: &Points, centres: &Points) -> Result<Vec<u32>> {
    if points.is_empty() {
        return Ok(Vec::new());
    }
    if centres.is_empty() {
        return Err(Error::invalid("centres", "0 points", "at least 1 centre"));
    }
    if points.dim() != centres.dim() {
        return Err(Error::invalid(
            "point dimension",
            points.dim(),
            format!("{}, the dimension of the centres", centres.dim()),
        ));
    }
    Ok(nearest_by_product(centres, points, 1)
        .into_iter()
        .map(|v| v[0])
        .collect())
}

/// The exact `k` nearest neighbours of every query as `(squared distance, id)`, nearest
/// first: candidates by a blocked matrix product, then the best `2k + 10` re-ranked with the
/// exact squared distance so that rounding in the product cannot reorder the answer.
///
/// # Errors
///
/// [`Error::Invalid`] when the dimensions differ or `base` is empty; no queries give an empty
/// answer.
pub fn ground_truth(base: &Points, queries: &Points, k: usize) -> Result<Vec<Vec<(f32, u32)>>> {
    if queries.dim() != base.dim() {
        return Err(Error::invalid(
            "query dimension",
            queries.dim(),
            format!("{}, the dimension of the indexed points", base.dim()),
        ));
    }
    if queries.is_empty() {
        return Ok(Vec::new());
    }
    if base.is_empty() {
        return Err(Error::invalid("data", "0 points", "at least 1 point"));
    }
    let cands = nearest_by_product(base, queries, (2 * k + 10).min(base.len()));
    Ok(cands
        .into_iter()
        .enumerate()
        .map(|(qi, c)| {
            let mut top = TopK::new(k);
            for i in c {
                top.push(l2sq(queries.row(qi), base.row(i as usize)), i);
            }
            top.into_sorted()
        })
        .collect())
}
