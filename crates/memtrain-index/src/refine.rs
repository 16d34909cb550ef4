//! Lloyd refinement of a [`TtIndex`]'s cluster tables on the data it indexes.
//!
//! The trained cloud fixes, per level `j`, a subspace: every centre at that level is
//! `p S_j + offset` for a prefix vector `p` of length `r_j`. The search scores a cluster in
//! `O(r_j)` because of that form, not because `p` is the product of the cores. So the prefix
//! tables can be re-fitted freely inside the same subspaces: Lloyd's k-means, constrained to
//! centres of that form, with the cloud's centres as the start. The coarse search stays
//! `O(r)` a cluster and the tree stays the cloud's, while the leaves become k-means leaves of
//! the data (within the subspace).
//!
//! Constrained to the affine subspace `offset + span(S)`, the distance of a point `x` to a
//! centre is `|x_⊥|² + |p S|² - 2 p·u(x)` with `u(x) = S (x - offset)`: the first term is the
//! same for every centre, so assignment costs `O(r)` a centre from the projections `u(x)`
//! (computed once), and the best `p` for a set of points is `G⁻¹ ū` with `G = S Sᵀ` and `ū`
//! the mean projection.

use std::num::NonZeroUsize;

use memtrain_tt::linalg::host::{cholesky_solve_rows, ridge_cholesky};

use crate::data::Points;
use crate::index::TtIndex;
use crate::kernel::dot;
use crate::lists::Lists;
use crate::{Error, Result};

impl TtIndex {
    /// The index with its cluster tables refitted to `points` by `rounds` rounds of Lloyd's
    /// k-means at the leaf level (every point to the nearest leaf centre, every leaf centre to
    /// the mean of its points projected onto the leaf subspace), then the tables of the
    /// levels above refitted to the final leaves' points, and the lists rebuilt. A cluster
    /// left without points (at any level) is retired: its norm becomes infinite, so the
    /// search never spends a beam slot or a probe on it and [`TtIndex::add`] never fills
    /// it. `rounds` 0 only reassigns the points (and retires the empty clusters).
    ///
    /// Uses every core the machine has for the assignment (`O(N · leaves · r)` a round).
    ///
    /// # Memory
    ///
    /// `4 N Σ_{j<=L} r_j` bytes of projections, `4 N` of assignments, `8 leaves r_L` of sums,
    /// and new lists (`4 N (D + 1)`), besides the index.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when `points` has another dimension than the index or no points;
    /// [`Error::TooLarge`] when the projections would not fit in [`crate::memory_limit`].
    ///
    /// # Example
    ///
    /// ```
    /// use memtrain_index::{FitConfig, TtIndex, TtSearch, data, fit};
    ///
    /// let points = data::clustered(512, 8, 4, 0);
    /// let config = FitConfig { rank: 4, steps: 20, batch: 256, ..FitConfig::default() };
    /// let cloud = fit(&points, &[4, 4, 32], &config, &mut |_| {}).unwrap();
    /// let index = TtIndex::build(cloud, &points, 2).unwrap().refine(&points, 5).unwrap();
    /// let found = index.search(points.row(7), 10, &TtSearch::new(4, 4)).unwrap();
    /// assert_eq!(found.len(), 10);
    /// ```
    pub fn refine(self, points: &Points, rounds: usize) -> Result<Self> {
        let d = self.cloud.dim();
        if points.dim() != d {
            return Err(Error::invalid(
                "data dimension",
                points.dim(),
                format!("{d}, the index's dimension"),
            ));
        }
        if points.is_empty() {
            return Err(Error::invalid("data", "0 points", "at least 1 point"));
        }
        let levels = self.leaf_level;
        let ranks: Vec<usize> = self.cloud.ranks().to_vec();
        let n = points.len();
        crate::budget::check_bytes(
            "refining the index",
            &format!("{n} points, ranks {ranks:?}, leaves at level {levels}"),
            (1..=levels)
                .try_fold(0u64, |acc, j| {
                    acc.checked_add((n as u64).checked_mul(4 * ranks[j] as u64)?)
                })
                .and_then(|b| b.checked_add((n as u64).checked_mul(4 * (d as u64 + 2))?)),
        )?;
        let u = self.projections(points);
        let grams: Vec<Vec<f64>> = (1..=levels).map(|j| self.gram(j)).collect();
        let mut me = self;
        let r = ranks[levels];
        let leaves = me.lists.leaves();
        let mut leaf_of = me.nearest_leaves(&u[levels - 1]);
        for _ in 0..rounds {
            me.refit_level(levels, &u[levels - 1], &leaf_of, leaves, &grams[levels - 1]);
            leaf_of = me.nearest_leaves(&u[levels - 1]);
        }
        // The final assignment stands (every point in its nearest live leaf); the leaves it
        // left empty retire.
        let mut filled = vec![false; leaves];
        leaf_of.iter().for_each(|&l| filled[l as usize] = true);
        for (norm, filled) in me.norms[levels - 1].iter_mut().zip(filled) {
            if !filled {
                *norm = f32::INFINITY;
            }
        }
        debug_assert_eq!(u[levels - 1].len(), n * r);
        // The levels above: a cluster's points are those of the leaves below it.
        let shape = me.cloud.shape().to_vec();
        for j in 1..levels {
            let below: usize = shape[j..levels].iter().product();
            let of: Vec<u32> = leaf_of.iter().map(|&l| l / below as u32).collect();
            let clusters: usize = shape[..j].iter().product();
            me.refit_level(j, &u[j - 1], &of, clusters, &grams[j - 1]);
        }
        me.lists = Lists::with_storage(points, &leaf_of, leaves, me.lists.storage());
        Ok(me)
    }

    /// Per level `j = 1..=L`, the projections `u_j(x) = S_j (x - offset)` of every point,
    /// `[N, r_j]` row-major.
    pub(crate) fn projections(&self, points: &Points) -> Vec<Vec<f32>> {
        let levels = self.leaf_level;
        let ranks = self.cloud.ranks();
        let d = self.cloud.dim();
        let offset = self.cloud.offset();
        let r = ranks[levels];
        let mut shifted = vec![0.0f32; d];
        let mut leaf = Vec::with_capacity(points.len() * r);
        for i in 0..points.len() {
            shifted
                .iter_mut()
                .zip(points.row(i).iter().zip(offset))
                .for_each(|(s, (x, o))| *s = x - o);
            leaf.extend((0..r).map(|a| dot(&self.suffix[a * d..(a + 1) * d], &shifted)));
        }
        let mut u = vec![Vec::new(); levels];
        u[levels - 1] = leaf;
        for j in (0..levels - 1).rev() {
            let (rj, rn) = (ranks[j + 1], ranks[j + 2]);
            let m = &self.means[j];
            u[j] = u[j + 1]
                .chunks_exact(rn)
                .flat_map(|v| (0..rj).map(move |a| dot(&m[a * rn..(a + 1) * rn], v)))
                .collect();
        }
        u
    }

    /// `S_j S_jᵀ` `[r_j, r_j]` in f64.
    fn gram(&self, j: usize) -> Vec<f64> {
        crate::index::gram(&self.cloud.suffix(j), self.cloud.dim())
            .into_iter()
            .map(f64::from)
            .collect()
    }

    /// For every row of `u` (leaf-level projections), the leaf whose centre is nearest: the
    /// smallest `|p S|² - 2 p·u`, on every core.
    pub(crate) fn nearest_leaves(&self, u: &[f32]) -> Vec<u32> {
        let levels = self.leaf_level;
        let r = self.cloud.ranks()[levels];
        let table = &self.prefix[levels - 1];
        let norms = &self.norms[levels - 1];
        let rows = u.len() / r;
        let threads = std::thread::available_parallelism()
            .map(NonZeroUsize::get)
            .unwrap_or(1)
            .min(rows.max(1));
        let mut out = vec![0u32; rows];
        let per = rows.div_ceil(threads).max(1);
        std::thread::scope(|scope| {
            for (chunk, us) in out.chunks_mut(per).zip(u.chunks(per * r)) {
                scope.spawn(move || {
                    for (o, v) in chunk.iter_mut().zip(us.chunks_exact(r)) {
                        let mut best = (f32::INFINITY, 0u32);
                        for (c, (p, &nc)) in table.chunks_exact(r).zip(norms).enumerate() {
                            let s = nc - 2.0 * dot(p, v);
                            if s < best.0 {
                                best = (s, c as u32);
                            }
                        }
                        *o = best.1;
                    }
                });
            }
        });
        out
    }

    /// Refits the prefix table of level `j` (`clusters` rows): each cluster with points
    /// (`of[i]` is point `i`'s cluster) gets `G⁻¹ ū`, the least-squares centre of its points in
    /// the level's subspace; its norm `p G pᵀ` is recomputed. A cluster without points
    /// retires (infinite norm).
    fn refit_level(&mut self, j: usize, u: &[f32], of: &[u32], clusters: usize, gram: &[f64]) {
        let r = self.cloud.ranks()[j];
        let mut sums = vec![0.0f64; clusters * r];
        let mut counts = vec![0usize; clusters];
        for (v, &c) in u.chunks_exact(r).zip(of) {
            counts[c as usize] += 1;
            for (s, &x) in sums[c as usize * r..(c as usize + 1) * r].iter_mut().zip(v) {
                *s += f64::from(x);
            }
        }
        for (row, &count) in sums.chunks_exact_mut(r).zip(&counts) {
            let count = count.max(1) as f64;
            row.iter_mut().for_each(|s| *s /= count);
        }
        let Some(l) = ridge_cholesky(gram, r) else {
            // A NaN Gram matrix (a broken cloud): keep the tables as they are.
            return;
        };
        cholesky_solve_rows(&l, r, &mut sums);
        let table = &mut self.prefix[j - 1];
        let norms = &mut self.norms[j - 1];
        for (c, &count) in counts.iter().enumerate() {
            if count == 0 {
                norms[c] = f32::INFINITY;
                continue;
            }
            let p = &sums[c * r..(c + 1) * r];
            let mut norm = 0.0f64;
            for a in 0..r {
                for b in 0..r {
                    norm += p[a] * gram[a * r + b] * p[b];
                }
            }
            for (t, &x) in table[c * r..(c + 1) * r].iter_mut().zip(p) {
                *t = x as f32;
            }
            norms[c] = norm as f32;
        }
    }
}
