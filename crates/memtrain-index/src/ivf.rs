//! The k-means inverted-file baseline (IVF-Flat).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::data::Points;
use crate::exact::{assign, check_dim};
use crate::kernel::{TopK, dot};
use crate::lists::{Lists, Storage};
use crate::{Error, Result};

/// An IVF-Flat index: `nlist` k-means centroids, every point in the list of its nearest
/// centroid; a query scores every centroid (`O(nlist D)`) and scans the `nprobe` nearest
/// lists exactly.
///
/// # Memory
///
/// [`IvfIndex::structure_bytes`] `= 4 nlist (D + 1)` for the centroids and their norms plus
/// the lists' ids and offsets; raw vectors excluded.
#[derive(Debug, Clone)]
pub struct IvfIndex {
    centroids: Points,
    norms: Vec<f32>,
    lists: Lists,
}

impl IvfIndex {
    /// Lloyd's k-means (`iters` rounds from `nlist` distinct random points, seeded; an empty
    /// cluster is restarted at a random point), then the lists.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when `nlist` is 0 or exceeds the number of points.
    pub fn build(points: &Points, nlist: usize, iters: usize, seed: u64) -> Result<Self> {
        if nlist == 0 || nlist > points.len() {
            return Err(Error::invalid(
                "nlist",
                nlist,
                format!("1..={} (the number of points)", points.len()),
            ));
        }
        let d = points.dim();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut centroids = points.sample(nlist, seed);
        let mut leaf_of = assign(points, &centroids)?;
        for _ in 0..iters {
            let mut sums = vec![0.0f64; nlist * d];
            let mut counts = vec![0usize; nlist];
            for (i, &c) in leaf_of.iter().enumerate() {
                counts[c as usize] += 1;
                for (s, &x) in sums[c as usize * d..(c as usize + 1) * d]
                    .iter_mut()
                    .zip(points.row(i))
                {
                    *s += f64::from(x);
                }
            }
            let mut data = Vec::with_capacity(nlist * d);
            for c in 0..nlist {
                if counts[c] == 0 {
                    data.extend_from_slice(points.row(rng.random_range(0..points.len())));
                } else {
                    data.extend(
                        sums[c * d..(c + 1) * d]
                            .iter()
                            .map(|&s| (s / counts[c] as f64) as f32),
                    );
                }
            }
            centroids = Points::new(data, d)?;
            leaf_of = assign(points, &centroids)?;
        }
        let norms = (0..nlist)
            .map(|c| dot(centroids.row(c), centroids.row(c)))
            .collect();
        let lists = Lists::new(points, &leaf_of, nlist);
        Ok(Self {
            centroids,
            norms,
            lists,
        })
    }

    /// The index with its vectors stored as `storage`, encoded from `points` (those it was
    /// built from).
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when `points` are not the indexed points' count and dimension.
    pub fn with_storage(mut self, points: &Points, storage: Storage) -> Result<Self> {
        self.lists = self.lists.restored(points, storage)?;
        Ok(self)
    }

    /// Number of lists.
    pub fn nlist(&self) -> usize {
        self.norms.len()
    }

    /// The inverted lists.
    pub fn lists(&self) -> &Lists {
        &self.lists
    }

    /// Bytes of the index proper (raw vectors excluded).
    pub fn structure_bytes(&self) -> usize {
        4 * (self.centroids.as_slice().len() + self.norms.len()) + self.lists.structure_bytes()
    }

    /// The `k` nearest points found for `query` as `(squared distance, id)`, nearest first,
    /// scanning the `nprobe` lists whose centroids are nearest.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a query of another dimension or `nprobe` 0.
    pub fn search(&self, query: &[f32], k: usize, nprobe: usize) -> Result<Vec<(f32, u32)>> {
        check_dim(query, self.centroids.dim())?;
        if nprobe == 0 {
            return Err(Error::invalid("nprobe", 0, "at least 1"));
        }
        let mut lists = TopK::new(nprobe);
        for c in 0..self.nlist() {
            lists.push(
                self.norms[c] - 2.0 * dot(self.centroids.row(c), query),
                c as u32,
            );
        }
        let mut top = TopK::new(k);
        let prepared = self.lists.prepare(query);
        for (_, c) in lists.into_sorted() {
            self.lists.scan(c as usize, &prepared, &mut top);
        }
        Ok(top.into_sorted())
    }
}
