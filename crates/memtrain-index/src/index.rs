//! The tensor-train index: beam descent through the cloud's cluster hierarchy, then an exact
//! scan of the chosen leaves.

use crate::cloud::{TtCloud, mat_mat, vec_mat};
use crate::data::Points;
use crate::exact::{assign, check_dim};
use crate::kernel::{TopK, dot};
use crate::lists::{Lists, Storage};
use crate::{Error, Result};

/// Bytes of the search tables [`TtIndex`] derives from its cloud (prefix vectors and centre
/// norms down to `leaf_level`), `4 Σ_{j<=leaf_level} C_j (r_j + 1)` with `C_j = Π_{l<=j} N_l`;
/// `None` on overflow. `ranks` has `shape.len() + 1` entries and `leaf_level <= shape.len()`.
pub(crate) fn table_bytes(shape: &[usize], ranks: &[usize], leaf_level: usize) -> Option<u64> {
    use crate::budget::Bytes;
    let mut tables = Bytes(Some(0));
    let mut clusters = 1usize;
    for j in 1..=leaf_level {
        clusters = clusters.checked_mul(shape[j - 1])?;
        tables = tables.plus(Bytes::of(4, &[clusters, ranks[j].saturating_add(1)]));
    }
    tables.0
}

/// The Gram matrix `S Sᵀ` `[r, r]` of the rows of `s` `[r, d]`.
pub(crate) fn gram(s: &[f32], d: usize) -> Vec<f32> {
    let rows: Vec<&[f32]> = s.chunks_exact(d).collect();
    rows.iter()
        .flat_map(|a| rows.iter().map(|b| dot(a, b)))
        .collect()
}

/// Search parameters of a [`TtIndex`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TtSearch {
    /// Clusters kept at each level above the leaves: one width for every level, or one per
    /// level (`leaf_level - 1` entries).
    pub beam: Vec<usize>,
    /// Leaves whose points are scanned exactly.
    pub probe: usize,
}

impl TtSearch {
    /// The same beam width at every level, and `probe` leaves.
    pub fn new(beam: usize, probe: usize) -> Self {
        Self {
            beam: vec![beam],
            probe,
        }
    }
}

/// An approximate nearest-neighbour index over a [`TtCloud`]: the clusters at level
/// `leaf_level` (prefixes `(i_1..i_L)`) are the leaves, every real point sits in the inverted
/// list of its nearest leaf centre, and a query descends the levels keeping a beam of the
/// best clusters, then scans the `probe` best leaves exactly.
///
/// A cluster's distance to the query costs `O(r)`, not `O(D)`: with `c = p S + offset` (see
/// [`TtCloud`]), `|q - c|² = |q - offset|² - 2 p·u + |p S|²` where `u = S (q - offset)` is
/// computed once per level (`u_j = M_{j+1} u_{j+1}`) and `|p S|²` is stored per cluster.
///
/// # Memory
///
/// [`TtIndex::structure_bytes`]: the cloud's parameters, the stored prefix vectors and
/// centre norms of every level down to the leaves (`4 Σ_j Π_{l<=j} N_l (r_j + 1)`), and the
/// lists' ids and offsets; the raw vectors (`4 N D`) are excluded.
#[derive(Debug, Clone, PartialEq)]
pub struct TtIndex {
    pub(crate) cloud: TtCloud,
    pub(crate) leaf_level: usize,
    pub(crate) lists: Lists,
    /// Per level `j = 1..=L`: prefix vectors `[n_j, r_j]`.
    pub(crate) prefix: Vec<Vec<f32>>,
    /// Per level: `|p S_j|²` per cluster.
    pub(crate) norms: Vec<Vec<f32>>,
    /// `S_L` `[r_L, D]`.
    pub(crate) suffix: Vec<f32>,
    /// Per level `j = 1..L-1`: `M_{j+1}` `[r_j, r_{j+1}]`.
    pub(crate) means: Vec<Vec<f32>>,
}

impl TtIndex {
    /// Builds the index of `points` over `cloud`, with leaves at level `leaf_level`
    /// (`1..=k`; the clusters of prefixes of that length).
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when the dimensions differ or `leaf_level` is out of range;
    /// [`Error::TooLarge`] when [`TtIndex::build_bytes`] exceeds [`crate::memory_limit`]
    /// (checked before anything is allocated).
    pub fn build(cloud: TtCloud, points: &Points, leaf_level: usize) -> Result<Self> {
        if points.dim() != cloud.dim() {
            return Err(Error::invalid(
                "data dimension",
                points.dim(),
                format!("{}, the cloud's dimension", cloud.dim()),
            ));
        }
        let k = cloud.shape().len();
        if !(1..=k).contains(&leaf_level) {
            return Err(Error::invalid(
                "leaf level",
                leaf_level,
                format!("1..={k} for a cloud of shape {:?}", cloud.shape()),
            ));
        }
        crate::budget::check_bytes(
            "building the index",
            &format!(
                "shape {:?}, ranks {:?}, {} points of dimension {}, leaves at level {leaf_level}",
                cloud.shape(),
                cloud.ranks(),
                points.len(),
                points.dim()
            ),
            Self::build_bytes(
                cloud.shape(),
                cloud.ranks(),
                cloud.dim(),
                points.len(),
                leaf_level,
            )?,
        )?;
        let leaf_of = assign(points, &cloud.centres(leaf_level))?;
        let leaves: usize = cloud.shape()[..leaf_level].iter().product();
        let lists = Lists::new(points, &leaf_of, leaves);
        Ok(Self::from_parts(cloud, leaf_level, lists))
    }

    /// Bytes [`TtIndex::build`] allocates at least for a cloud of `shape` and `ranks`
    /// `[1, r_1, ..., r_k]`, `n` points of dimension `d` and leaves at `leaf_level` (a lower
    /// bound: the largest buffers only); `Ok(None)` when the count overflows `u64`.
    ///
    /// # Memory
    ///
    /// With `L = Π_{j<=leaf_level} N_j` leaves and `C_j = Π_{l<=j} N_l`:
    /// `4 (L (r_L + 2 d) + min(n, 512) L + n (d + 2) + L + 1 + Σ_{j<=leaf_level} C_j (r_j + 1))`
    /// bytes: the leaf centres (prefix vectors, centres and their copy for the matrix
    /// product), one block of distances to them, the lists (vectors, ids, assignment and
    /// offsets), and the search tables.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when `ranks` does not have one more entry than `shape` or
    /// `leaf_level` is outside `1..=k`.
    pub fn build_bytes(
        shape: &[usize],
        ranks: &[usize],
        d: usize,
        n: usize,
        leaf_level: usize,
    ) -> Result<Option<u64>> {
        use crate::budget::Bytes;
        let k = shape.len();
        if ranks.len() != k + 1 {
            return Err(Error::invalid(
                "ranks",
                format!("{ranks:?}"),
                format!("{} ranks for shape {shape:?}", k + 1),
            ));
        }
        if !(1..=k).contains(&leaf_level) {
            return Err(Error::invalid(
                "leaf level",
                leaf_level,
                format!("1..={k} for shape {shape:?}"),
            ));
        }
        let Some(leaves) = shape[..leaf_level]
            .iter()
            .try_fold(1usize, |a, &b| a.checked_mul(b))
        else {
            return Ok(None);
        };
        let tables = Bytes(table_bytes(shape, ranks, leaf_level));
        let centres = Bytes::of(4, &[leaves, ranks[leaf_level]])
            .plus(Bytes::of(8, &[leaves, d]))
            .plus(Bytes::of(4, &[leaves, n.min(512)]));
        let lists =
            Bytes::of(4, &[n, d.saturating_add(2)]).plus(Bytes::of(4, &[leaves.saturating_add(1)]));
        Ok(centres.plus(lists).plus(tables).0)
    }

    /// The index from a cloud and its lists, deriving the search tables.
    pub(crate) fn from_parts(cloud: TtCloud, leaf_level: usize, lists: Lists) -> Self {
        let d = cloud.dim();
        let mut prefix = Vec::new();
        let mut norms = Vec::new();
        for j in 1..=leaf_level {
            let p = cloud.prefixes(j);
            let s = cloud.suffix(j);
            let r = cloud.ranks()[j];
            // |p S|² = p (S Sᵀ) pᵀ with the [r, r] Gram matrix of S.
            let gram = gram(&s, d);
            norms.push(
                p.chunks_exact(r)
                    .map(|v| dot(&vec_mat(v, &gram, r), v))
                    .collect(),
            );
            prefix.push(p);
        }
        let suffix = cloud.suffix(leaf_level);
        let means = (1..leaf_level).map(|j| cloud.mean_slice(j)).collect();
        Self {
            cloud,
            leaf_level,
            lists,
            prefix,
            norms,
            suffix,
            means,
        }
    }

    /// The cloud.
    pub fn cloud(&self) -> &TtCloud {
        &self.cloud
    }

    /// The level of the leaves.
    pub fn leaf_level(&self) -> usize {
        self.leaf_level
    }

    /// The inverted lists.
    pub fn lists(&self) -> &Lists {
        &self.lists
    }

    /// Number of leaves, `Π_{j<=L} N_j`.
    pub fn leaves(&self) -> usize {
        self.lists.leaves()
    }

    /// Bytes of the index proper: cloud parameters and offset, search tables, list ids and
    /// offsets (raw vectors excluded).
    pub fn structure_bytes(&self) -> usize {
        let floats = self.cloud.param_count()
            + self.cloud.dim()
            + self.prefix.iter().map(Vec::len).sum::<usize>()
            + self.norms.iter().map(Vec::len).sum::<usize>()
            + self.suffix.len()
            + self.means.iter().map(Vec::len).sum::<usize>();
        4 * floats + self.lists.structure_bytes()
    }

    /// The index with its vectors stored as `storage`, encoded from `points` (those it was
    /// built from, in the same order).
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when `points` are not the indexed points' count and dimension.
    pub fn with_storage(mut self, points: &Points, storage: Storage) -> Result<Self> {
        self.lists = self.lists.restored(points, storage)?;
        Ok(self)
    }

    /// Inserts `points` into the lists of their nearest leaves (the centres as the index's
    /// tables hold them, refined or not) with the ids `len()..len() + points.len()`, encoded
    /// on the existing sq8 grid when the vectors are stored as sq8 (coordinates outside its
    /// range are clamped). The cloud and the tables are unchanged.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for points of another dimension, or when the index would hold more
    /// than `u32::MAX` points.
    pub fn add(&mut self, points: &Points) -> Result<()> {
        if points.dim() != self.cloud.dim() {
            return Err(Error::invalid(
                "data dimension",
                points.dim(),
                format!("{}, the index's dimension", self.cloud.dim()),
            ));
        }
        if points.is_empty() {
            return Ok(());
        }
        let first = self.len();
        if first + points.len() > u32::MAX as usize {
            return Err(Error::invalid(
                "points",
                first + points.len(),
                format!("at most {} in one index", u32::MAX),
            ));
        }
        let u = self.projections(points);
        let leaf_of = self.nearest_leaves(&u[self.leaf_level - 1]);
        self.lists.insert(points, &leaf_of, first as u32);
        Ok(())
    }

    /// Points in the index.
    pub fn len(&self) -> usize {
        self.lists.ids.len()
    }

    /// Whether the index holds no points.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `k` nearest points found for `query` as `(squared distance, id)`, nearest first.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a query of another dimension, a zero beam or probe, or a beam
    /// list of the wrong length.
    pub fn search(&self, query: &[f32], k: usize, params: &TtSearch) -> Result<Vec<(f32, u32)>> {
        let leaves = self.probe(query, params)?;
        let mut top = TopK::new(k);
        let prepared = self.lists.prepare(query);
        for leaf in leaves {
            self.lists.scan(leaf as usize, &prepared, &mut top);
        }
        Ok(top.into_sorted())
    }

    /// The coarse search alone: the `params.probe` leaves [`TtIndex::search`] scans for
    /// `query`, nearest centre first (the beam descent, `O(r)` a cluster).
    ///
    /// # Errors
    ///
    /// As [`TtIndex::search`].
    pub fn probe(&self, query: &[f32], params: &TtSearch) -> Result<Vec<u32>> {
        check_dim(query, self.cloud.dim())?;
        let levels = self.leaf_level;
        if params.probe == 0 || params.beam.contains(&0) {
            return Err(Error::invalid(
                "search parameters",
                format!("beam {:?}, probe {}", params.beam, params.probe),
                "beam widths and probe of at least 1",
            ));
        }
        if !(params.beam.len() == 1 || params.beam.len() == levels - 1) {
            return Err(Error::invalid(
                "beam",
                format!("{:?}", params.beam),
                format!(
                    "one width, or {} (one per level above the leaves)",
                    levels - 1
                ),
            ));
        }
        let shape = self.cloud.shape();
        let ranks = self.cloud.ranks();
        let d = self.cloud.dim();
        let shifted: Vec<f32> = query
            .iter()
            .zip(self.cloud.offset())
            .map(|(a, b)| a - b)
            .collect();
        // u_L = S_L q', then u_j = M_{j+1} u_{j+1} going up.
        let mut u = vec![Vec::new(); levels];
        u[levels - 1] = (0..ranks[levels])
            .map(|a| dot(&self.suffix[a * d..(a + 1) * d], &shifted))
            .collect();
        for j in (0..levels - 1).rev() {
            u[j] = mat_mat(&self.means[j], &u[j + 1], ranks[j + 1], ranks[j + 2], 1);
        }
        let mut kept: Vec<u32> = vec![0];
        for j in 0..levels {
            let keep = if j + 1 == levels {
                params.probe
            } else {
                params.beam[j.min(params.beam.len() - 1)]
            };
            let (r, n) = (ranks[j + 1], shape[j]);
            let mut top = TopK::new(keep);
            for &parent in &kept {
                for i in 0..n {
                    let c = parent as usize * n + i;
                    let score =
                        self.norms[j][c] - 2.0 * dot(&self.prefix[j][c * r..(c + 1) * r], &u[j]);
                    top.push(score, c as u32);
                }
            }
            kept = top.into_sorted().into_iter().map(|(_, c)| c).collect();
        }
        Ok(kept)
    }

    /// The centre of `leaf` (`< leaves()`) in data space, as the index's tables hold it
    /// (refined or not): `p S_L + offset`.
    ///
    /// # Panics
    ///
    /// When `leaf` is not below [`TtIndex::leaves`].
    pub fn leaf_centre(&self, leaf: usize) -> Vec<f32> {
        let r = self.cloud.ranks()[self.leaf_level];
        let p = &self.prefix[self.leaf_level - 1][leaf * r..(leaf + 1) * r];
        let mut c = vec_mat(p, &self.suffix, self.cloud.dim());
        c.iter_mut()
            .zip(self.cloud.offset())
            .for_each(|(a, b)| *a += b);
        c
    }

    /// The index with no points: the cloud and search tables only (what a coarse quantizer
    /// needs, [`TtIndex::probe`] and [`TtIndex::leaf_centre`]).
    pub fn without_points(mut self) -> Self {
        self.lists = Lists::empty(self.leaves(), self.cloud.dim());
        self
    }
}
