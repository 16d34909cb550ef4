//! The compressed memory bank: a [`TtIndex`] as the coarse quantizer and, per point, only its
//! leaf and a product-quantization code of its residual to that leaf's centre (no raw
//! vectors).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::data::Points;
use crate::exact::check_dim;
use crate::index::{TtIndex, TtSearch};
use crate::kernel::{TopK, dot, l2sq};
use crate::{Error, Result};

/// Residuals the quantizer trains on at most (a seeded sample of the points).
const TRAIN_SAMPLE: usize = 16_384;

/// Residuals the principal directions are estimated from at most.
const PCA_SAMPLE: usize = 8_192;

/// Lloyd iterations of each subspace's k-means.
const KMEANS_ROUNDS: usize = 12;

/// Subspace iterations for the principal directions.
const PCA_ROUNDS: usize = 24;

/// How a residual is coded: projected onto its `projected` leading principal directions (all
/// `D` coordinates, unrotated, when `projected == D`), split into `subspaces` contiguous
/// groups of coordinates, each coded as the nearest of `2^bits` centroids, plus one byte for
/// the norm of the part the projection drops when `norm` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeLayout {
    /// Coordinates kept, `1..=D`.
    pub projected: usize,
    /// Product-quantizer subspaces, `1..=projected`.
    pub subspaces: usize,
    /// Bits per subspace code: 4 or 8.
    pub bits: u32,
    /// Whether a byte codes the norm of the dropped part (only when `projected < D`).
    pub norm: bool,
}

impl CodeLayout {
    /// Bytes of one vector's code: `ceil(subspaces · bits / 8) + [norm]`.
    pub fn code_bytes(&self) -> usize {
        (self.subspaces * self.bits as usize).div_ceil(8) + usize::from(self.norm)
    }

    /// The layout [`CompressedIndex::build`] uses for `code_bytes` bytes (`1..=4 D`) of code
    /// per vector of dimension `dim`.
    ///
    /// With `s = 2 (code_bytes - 1)` 4-bit subspaces and `m = 2 s + 64` coordinates: when
    /// `m < dim`, those `s` codes over the `m` leading principal directions of the residuals
    /// plus the norm byte (on Fashion-MNIST this beat 8-bit codes at the same bytes, and
    /// no projection by far); otherwise (and for 1 byte) 8-bit codes over all the coordinates,
    /// `min(code_bytes, dim)` subspaces (one coordinate each from `dim` bytes on: nearly
    /// exact).
    pub fn for_bytes(code_bytes: usize, dim: usize) -> Self {
        let subspaces = 2 * code_bytes.saturating_sub(1);
        let projected = 2 * subspaces + 64;
        if subspaces > 0 && projected < dim {
            Self {
                projected,
                subspaces,
                bits: 4,
                norm: true,
            }
        } else {
            Self {
                projected: dim,
                subspaces: code_bytes.clamp(1, dim),
                bits: 8,
                norm: false,
            }
        }
    }

    pub(crate) fn check(&self, dim: usize) -> Result<()> {
        let ok = (1..=dim).contains(&self.projected)
            && (1..=self.projected).contains(&self.subspaces)
            && (self.bits == 4 || self.bits == 8)
            && !(self.norm && self.projected == dim);
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(
                "code layout",
                format!("{self:?}"),
                format!(
                    "projected 1..={dim}, subspaces 1..=projected, bits 4 or 8, \
                     norm only when projected < {dim}"
                ),
            ))
        }
    }

    /// First coordinate of subspace `s` (`s <= subspaces`).
    fn start(&self, s: usize) -> usize {
        s * self.projected / self.subspaces
    }

    fn centroids(&self) -> usize {
        1 << self.bits
    }
}

/// A point-less ANN index: the points' leaves in a coarse [`TtIndex`] and product-quantization
/// codes of their residuals to the leaf centres ([`CodeLayout`]); search scans the probed
/// leaves with asymmetric distances (the float query against the decoded codes) read from
/// per-leaf lookup tables.
///
/// With the query's residual `u = q - c` to the leaf centre, the kept projection `P` `[m, D]`
/// (orthonormal rows, the leading principal directions of the residuals; the identity when
/// `m = D`) and a point's code decoding to `ŷ` `[m]` and dropped norm `ê`, the distance is
/// `|u|² - |P u|² + |P u - ŷ|² + ê²`: the cross term of the two dropped parts is taken as 0.
/// A leaf costs `O(r m + 2^b m)` before its scan (the projected centre from the coarse
/// index's rank-`r` prefix vector, then the lookup tables), and a point `O(subspaces)`.
///
/// The design was chosen by measurement on Fashion-MNIST (60,000 × 784, the 4096-leaf
/// refined TT index as the coarse quantizer, 2000 test queries, beam 32, probe 32): 4-bit
/// codes of 2 to 5 coordinates over a principal-direction projection beat 8-bit codes of the
/// same bytes (whose codebooks and per-leaf tables are 16 times larger) and 4-bit codes of
/// the unprojected residual (recall 0.43 at 28 bytes a vector), and a projection wider than
/// twice the subspaces helps while the 8-bit matrix is cheap; [`CodeLayout::for_bytes`]
/// gives recall@10 0.630 at 27.9 bytes a vector in all (14 bytes of code) and 0.808 at 63.9
/// (48 bytes).
///
/// # Memory
///
/// [`CompressedIndex::bytes`], with `N` points, `c` code bytes a vector
/// ([`CodeLayout::code_bytes`]), `L` leaves, `m` projected coordinates and `b` bits:
/// `N (c + 4) + 4 (L + 1) + S + (m D + 4 m + 4 r m) [m < D] + 4 · 2^b · m + 4 [norm]`, where
/// `S` is the coarse index's [`TtIndex::structure_bytes`] (it holds no points) and `r` its rank
/// at the leaf level: codes, ids, offsets, the coarse structure, the projection (8-bit, one
/// float scale a row) and its product with the leaf-centre basis, the codebooks (float) and
/// the norm's step.
///
/// # Example
///
/// ```
/// use memtrain_index::codes::CompressedIndex;
/// use memtrain_index::{FitConfig, TtIndex, TtSearch, data, fit};
///
/// let points = data::clustered(512, 16, 4, 0);
/// let config = FitConfig { rank: 4, steps: 20, batch: 256, ..FitConfig::default() };
/// let cloud = fit(&points, &[4, 4, 32], &config, &mut |_| {}).unwrap();
/// let index = TtIndex::build(cloud, &points, 2).unwrap();
/// let bank = CompressedIndex::build(index, &points, 8, 0).unwrap();
/// let found = bank.search(points.row(7), 10, &TtSearch::new(4, 4)).unwrap();
/// assert_eq!(found.len(), 10);
/// assert!(bank.bytes_per_vector() < 4.0 * 16.0);
/// ```
#[derive(Debug, Clone)]
pub struct CompressedIndex {
    pub(crate) coarse: TtIndex,
    pub(crate) offsets: Vec<u32>,
    pub(crate) ids: Vec<u32>,
    pub(crate) layout: CodeLayout,
    /// `[m, D]` as 8-bit integers, row `i` scaled by `scales[i]`; empty when `m = D`.
    pub(crate) projection: Vec<i8>,
    /// `[m]`.
    pub(crate) scales: Vec<f32>,
    /// The projected leaf-centre basis `[r, m]`: row `a` is `P` applied to row `a` of the
    /// coarse index's `S_L` (`[r, D]`, leaf centre `c = p S_L + offset`), so that a leaf's
    /// projected residual costs `O(r m)`, not `O(m D)`; empty when `m = D`.
    pub(crate) basis: Vec<f32>,
    /// Subspace `s`: `[2^b, d_s]` at `2^b · start(s)`.
    pub(crate) codebooks: Vec<f32>,
    /// The dropped norm's code `k` decodes to `k · norm_step`.
    pub(crate) norm_step: f32,
    /// `[N, c]`, in list order.
    pub(crate) codes: Vec<u8>,
}

impl CompressedIndex {
    /// Encodes every point of `points` (those `index` was built from: id `i` is row `i`) as its
    /// leaf in `index` and a code of at most `code_bytes` bytes of its residual to the leaf's
    /// centre ([`CodeLayout::for_bytes`]); the quantizer is trained on the data with `seed`.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when `code_bytes` is outside `1..=4 D`, or `points` are not the
    /// indexed points' count and dimension.
    pub fn build(index: TtIndex, points: &Points, code_bytes: usize, seed: u64) -> Result<Self> {
        let d = index.cloud().dim();
        if !(1..=4 * d).contains(&code_bytes) {
            return Err(Error::invalid(
                "code bytes",
                code_bytes,
                format!(
                    "1..={} (at most the raw 4 D bytes for dimension {d})",
                    4 * d
                ),
            ));
        }
        Self::build_with(index, points, CodeLayout::for_bytes(code_bytes, d), seed)
    }

    /// As [`CompressedIndex::build`], with an explicit code layout.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a layout outside its ranges ([`CodeLayout`]), or `points` that
    /// are not the indexed points' count and dimension.
    pub fn build_with(
        index: TtIndex,
        points: &Points,
        layout: CodeLayout,
        seed: u64,
    ) -> Result<Self> {
        let d = index.cloud().dim();
        if points.dim() != d {
            return Err(Error::invalid(
                "data dimension",
                points.dim(),
                format!("{d}, the index's dimension"),
            ));
        }
        if points.len() != index.len() {
            return Err(Error::invalid(
                "points",
                points.len(),
                format!("{}, the number of points in the index", index.len()),
            ));
        }
        layout.check(d)?;
        let offsets = index.lists().offsets().to_vec();
        let ids = index.lists().ids().to_vec();
        let coarse = index.without_points();
        let centres: Vec<Vec<f32>> = (0..coarse.leaves())
            .map(|l| coarse.leaf_centre(l))
            .collect();
        let mut leaf_at = vec![0u32; ids.len()];
        for l in 0..coarse.leaves() {
            leaf_at[offsets[l] as usize..offsets[l + 1] as usize].fill(l as u32);
        }
        let residual = |at: usize| -> Vec<f32> {
            let x = points.row(ids[at] as usize);
            let c = &centres[leaf_at[at] as usize];
            x.iter().zip(c).map(|(a, b)| a - b).collect()
        };
        let mut rng = StdRng::seed_from_u64(seed);
        let sample = sample_rows(ids.len(), TRAIN_SAMPLE, &mut rng);
        let (projection, scales) = if layout.projected < d {
            let pca_rows: Vec<Vec<f32>> = sample
                .iter()
                .take(PCA_SAMPLE)
                .map(|&at| residual(at))
                .collect();
            quantize_rows(&principal_directions(&pca_rows, d, layout, &mut rng), d)
        } else {
            (Vec::new(), Vec::new())
        };
        let m = layout.projected;
        let project = |r: &[f32]| -> Vec<f32> { apply(&projection, &scales, r) };
        let basis = projected_basis(&coarse, &projection, &scales);
        let train: Vec<Vec<f32>> = sample.iter().map(|&at| project(&residual(at))).collect();
        let k = layout.centroids();
        let mut codebooks = vec![0.0f32; k * m];
        for s in 0..layout.subspaces {
            let (a, b) = (layout.start(s), layout.start(s + 1));
            let part: Vec<&[f32]> = train.iter().map(|y| &y[a..b]).collect();
            kmeans(&part, b - a, &mut codebooks[k * a..k * b], &mut rng);
        }
        let c = layout.code_bytes();
        let mut codes = vec![0u8; ids.len() * c];
        let mut dropped = vec![0.0f32; if layout.norm { ids.len() } else { 0 }];
        for at in 0..ids.len() {
            let r = residual(at);
            let y = project(&r);
            let code = &mut codes[at * c..(at + 1) * c];
            for s in 0..layout.subspaces {
                let (a, b) = (layout.start(s), layout.start(s + 1));
                let nearest = nearest(&y[a..b], &codebooks[k * a..k * b]) as u8;
                if layout.bits == 8 {
                    code[s] = nearest;
                } else {
                    code[s / 2] |= nearest << (4 * (s % 2));
                }
            }
            if layout.norm {
                dropped[at] = (dot(&r, &r) - dot(&y, &y)).max(0.0).sqrt();
            }
        }
        let mut norm_step = 0.0;
        if layout.norm {
            let max = dropped.iter().fold(0.0f32, |a, &b| a.max(b));
            norm_step = if max > 0.0 { max / 255.0 } else { 1.0 };
            for (at, e) in dropped.iter().enumerate() {
                codes[at * c + c - 1] = (e / norm_step).round().min(255.0) as u8;
            }
        }
        Ok(Self {
            coarse,
            offsets,
            ids,
            layout,
            projection,
            scales,
            basis,
            codebooks,
            norm_step,
            codes,
        })
    }

    /// The `k` nearest points found for `query` as `(approximate squared distance, id)`,
    /// nearest first, among the leaves `coarse.probe(query, params)` returns.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a query of another dimension or bad search parameters (as
    /// [`TtIndex::search`]).
    pub fn search(&self, query: &[f32], k: usize, params: &TtSearch) -> Result<Vec<(f32, u32)>> {
        let d = self.coarse.cloud().dim();
        check_dim(query, d)?;
        let leaves = self.coarse.probe(query, params)?;
        let layout = self.layout;
        let coarse = &self.coarse;
        let level = coarse.leaf_level - 1;
        let r = coarse.cloud.ranks()[coarse.leaf_level];
        // With q' = q - offset: |q - c|² = |q'|² - 2 p·(S_L q') + |p S_L|², and
        // P (q - c) = P q' - p (P S_L).
        let shifted: Vec<f32> = query
            .iter()
            .zip(coarse.cloud.offset())
            .map(|(a, b)| a - b)
            .collect();
        let (projected, shifted_norm, along) = if self.projection.is_empty() {
            (Vec::new(), 0.0, Vec::new())
        } else {
            let along: Vec<f32> = coarse
                .suffix
                .chunks_exact(d)
                .map(|s| dot(s, &shifted))
                .collect();
            let projected = apply(&self.projection, &self.scales, &shifted);
            (projected, dot(&shifted, &shifted), along)
        };
        let (kc, c) = (layout.centroids(), layout.code_bytes());
        let mut top = TopK::new(k);
        let mut table = vec![0.0f32; layout.subspaces * kc];
        for leaf in leaves {
            let leaf = leaf as usize;
            let (a, b) = (self.offsets[leaf] as usize, self.offsets[leaf + 1] as usize);
            if a == b {
                continue;
            }
            let (y, base) = if self.projection.is_empty() {
                let centre = coarse.leaf_centre(leaf);
                (query.iter().zip(&centre).map(|(q, c)| q - c).collect(), 0.0)
            } else {
                let p = &coarse.prefix[level][leaf * r..(leaf + 1) * r];
                let mut y = projected.clone();
                for (&pa, row) in p.iter().zip(self.basis.chunks_exact(layout.projected)) {
                    y.iter_mut().zip(row).for_each(|(v, b)| *v -= pa * b);
                }
                let u2 = shifted_norm + coarse.norms[level][leaf] - 2.0 * dot(p, &along);
                let base = (u2 - dot(&y, &y)).max(0.0);
                (y, base)
            };
            for s in 0..layout.subspaces {
                let (a, b) = (layout.start(s), layout.start(s + 1));
                let book = &self.codebooks[kc * a..kc * b];
                for (j, cent) in book.chunks_exact(b - a).enumerate() {
                    table[s * kc + j] = l2sq(&y[a..b], cent);
                }
            }
            for at in a..b {
                let code = &self.codes[at * c..(at + 1) * c];
                let mut dist = base;
                if layout.bits == 8 {
                    for (s, &x) in code[..layout.subspaces].iter().enumerate() {
                        dist += table[s * 256 + x as usize];
                    }
                } else {
                    for s in 0..layout.subspaces {
                        let x = (code[s / 2] >> (4 * (s % 2))) & 15;
                        dist += table[s * 16 + x as usize];
                    }
                }
                if layout.norm {
                    let e = code[c - 1] as f32 * self.norm_step;
                    dist += e * e;
                }
                top.push(dist, self.ids[at]);
            }
        }
        Ok(top.into_sorted())
    }

    /// The index read from its parts (with `basis` left empty, derived here), checked so that
    /// search cannot panic: the coarse index holds no points, the layout fits its dimension,
    /// the offsets run monotonically from 0 to `N` over its leaves, the ids are below `N`,
    /// every part has its layout's length, the floats are finite and a 4-bit code's unused
    /// high nibble is 0. `Err` says what is wrong.
    pub(crate) fn validated(mut self) -> std::result::Result<Self, String> {
        let d = self.coarse.cloud().dim();
        let layout = self.layout;
        layout.check(d).map_err(|e| e.to_string())?;
        if !self.coarse.is_empty() {
            return Err(format!(
                "the coarse index holds {} points, expected none",
                self.coarse.len()
            ));
        }
        let (n, leaves) = (self.ids.len(), self.coarse.leaves());
        let offsets_ok = self.offsets.len() == leaves + 1
            && self.offsets.first() == Some(&0)
            && self.offsets.last().map(|&x| x as usize) == Some(n)
            && self.offsets.windows(2).all(|w| w[0] <= w[1]);
        if !offsets_ok {
            return Err(format!(
                "inconsistent offsets: expected {} monotone offsets from 0 to {n} (one per \
                 leaf and one more)",
                leaves + 1
            ));
        }
        if let Some(id) = self.ids.iter().find(|&&i| i as usize >= n) {
            return Err(format!("id {id} out of range: expected below {n}"));
        }
        let m = layout.projected;
        let rows = if m < d { m } else { 0 };
        let c = layout.code_bytes();
        let lengths = [
            ("projection", self.projection.len(), rows * d),
            ("projection scales", self.scales.len(), rows),
            ("codebooks", self.codebooks.len(), layout.centroids() * m),
            ("codes", self.codes.len(), n.saturating_mul(c)),
        ];
        for (what, got, want) in lengths {
            if got != want {
                return Err(format!(
                    "{what}: {got} values, expected {want} for {layout:?}"
                ));
            }
        }
        let finite = self
            .scales
            .iter()
            .chain(&self.codebooks)
            .chain([&self.norm_step])
            .all(|x| x.is_finite());
        if !finite || self.norm_step < 0.0 {
            return Err("non-finite projection scale, codebook entry or norm step".into());
        }
        if layout.bits == 4 && layout.subspaces % 2 == 1 {
            let last = layout.subspaces / 2;
            if let Some(at) = (0..n).find(|at| self.codes[at * c + last] >> 4 != 0) {
                return Err(format!(
                    "code of point {at}: {} in its unused high nibble, expected 0 (4-bit codes \
                     below 2^4)",
                    self.codes[at * c + last] >> 4
                ));
            }
        }
        self.basis = projected_basis(&self.coarse, &self.projection, &self.scales);
        Ok(self)
    }

    /// The code layout.
    pub fn layout(&self) -> CodeLayout {
        self.layout
    }

    /// The coarse index (it holds no points).
    pub fn coarse(&self) -> &TtIndex {
        &self.coarse
    }

    /// Every byte search reads: the formula in [`CompressedIndex`]'s `# Memory`.
    pub fn bytes(&self) -> usize {
        self.codes.len()
            + 4 * (self.ids.len() + self.offsets.len())
            + self.coarse.structure_bytes()
            + self.projection.len()
            + 4 * (self.scales.len() + self.basis.len() + self.codebooks.len())
            + if self.layout.norm { 4 } else { 0 }
    }

    /// [`CompressedIndex::bytes`] per point.
    pub fn bytes_per_vector(&self) -> f64 {
        self.bytes() as f64 / self.len().max(1) as f64
    }

    /// Points in the index.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the index holds no points.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The coarse index's leaf-centre basis `S_L` `[r, D]` under the 8-bit projection, `[r, m]`;
/// empty without a projection.
fn projected_basis(coarse: &TtIndex, projection: &[i8], scales: &[f32]) -> Vec<f32> {
    if projection.is_empty() {
        return Vec::new();
    }
    coarse
        .suffix
        .chunks_exact(coarse.cloud().dim())
        .flat_map(|row| apply(projection, scales, row))
        .collect()
}

/// Each row of `rows` `[m, d]` as 8-bit integers and its scale (its largest magnitude / 127).
fn quantize_rows(rows: &[f32], d: usize) -> (Vec<i8>, Vec<f32>) {
    let mut codes = Vec::with_capacity(rows.len());
    let mut scales = Vec::with_capacity(rows.len() / d);
    for row in rows.chunks_exact(d) {
        let max = row.iter().fold(0.0f32, |a, &b| a.max(b.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
        codes.extend(row.iter().map(|&x| (x / scale).round() as i8));
        scales.push(scale);
    }
    (codes, scales)
}

/// `P x` for the 8-bit projection `P` (`projection`, `scales`); `x` itself when it is empty.
fn apply(projection: &[i8], scales: &[f32], x: &[f32]) -> Vec<f32> {
    if projection.is_empty() {
        return x.to_vec();
    }
    projection
        .chunks_exact(x.len())
        .zip(scales)
        .map(|(p, s)| {
            let mut acc = [0.0f32; 8];
            let (pc, xc) = (p.chunks_exact(8), x.chunks_exact(8));
            let tail: f32 = pc
                .remainder()
                .iter()
                .zip(xc.remainder())
                .map(|(&a, &b)| f32::from(a) * b)
                .sum();
            for (a, b) in pc.zip(xc) {
                for t in 0..8 {
                    acc[t] += f32::from(a[t]) * b[t];
                }
            }
            s * (acc.iter().sum::<f32>() + tail)
        })
        .collect()
}

/// `m` distinct positions below `n` (all of them when `m >= n`), drawn with `rng`.
fn sample_rows(n: usize, m: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut rows: Vec<usize> = (0..n).collect();
    let m = m.min(n);
    for i in 0..m {
        let j = rng.random_range(i..n);
        rows.swap(i, j);
    }
    rows.truncate(m);
    rows
}

/// The index of the row of `book` `[k, len]` nearest to `x` `[len]`.
fn nearest(x: &[f32], book: &[f32]) -> usize {
    let mut best = (f32::INFINITY, 0);
    for (j, cent) in book.chunks_exact(x.len()).enumerate() {
        let dist = l2sq(x, cent);
        if dist < best.0 {
            best = (dist, j);
        }
    }
    best.1
}

/// Lloyd's k-means of `rows` (each `[len]`) into `book` `[k, len]`, started from distinct rows
/// (a centroid left empty keeps its place).
fn kmeans(rows: &[&[f32]], len: usize, book: &mut [f32], rng: &mut StdRng) {
    let k = book.len() / len;
    let start = sample_rows(rows.len(), k, rng);
    for (j, cent) in book.chunks_exact_mut(len).enumerate() {
        cent.copy_from_slice(rows[start[j % start.len()]]);
    }
    let mut assigned = vec![0usize; rows.len()];
    for _ in 0..KMEANS_ROUNDS {
        for (i, row) in rows.iter().enumerate() {
            assigned[i] = nearest(row, book);
        }
        let mut sums = vec![0.0f64; k * len];
        let mut counts = vec![0usize; k];
        for (row, &j) in rows.iter().zip(&assigned) {
            counts[j] += 1;
            for (s, &x) in sums[j * len..(j + 1) * len].iter_mut().zip(row.iter()) {
                *s += f64::from(x);
            }
        }
        for j in 0..k {
            if counts[j] > 0 {
                for t in 0..len {
                    book[j * len + t] = (sums[j * len + t] / counts[j] as f64) as f32;
                }
            }
        }
    }
}

/// The `layout.projected` leading principal directions (uncentred) of `rows` (each `[d]`) as
/// orthonormal rows `[m, d]`, by subspace iteration on their second-moment matrix, ordered so
/// that each subspace of `layout` gets a similar product of variances (eigenvalue allocation:
/// every subspace's code then carries a similar share of the information).
fn principal_directions(
    rows: &[Vec<f32>],
    d: usize,
    layout: CodeLayout,
    rng: &mut StdRng,
) -> Vec<f32> {
    let m = layout.projected;
    // The second moment, from the transposed sample so that each entry is one long dot.
    let n = rows.len();
    let mut cols = vec![0.0f32; d * n];
    for (i, r) in rows.iter().enumerate() {
        for (t, &x) in r.iter().enumerate() {
            cols[t * n + i] = x;
        }
    }
    let mut cov = vec![0.0f64; d * d];
    for a in 0..d {
        for b in a..d {
            let v = f64::from(dot(&cols[a * n..(a + 1) * n], &cols[b * n..(b + 1) * n])) / n as f64;
            cov[a * d + b] = v;
            cov[b * d + a] = v;
        }
    }
    // Subspace iteration: q <- orth(C q), with a few spare vectors to speed convergence.
    let width = (m + 8).min(d);
    let mut q: Vec<f64> = (0..width * d)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    orthonormalize(&mut q, d);
    for _ in 0..PCA_ROUNDS {
        let mut next = vec![0.0f64; width * d];
        for (v, out) in q.chunks_exact(d).zip(next.chunks_exact_mut(d)) {
            for (a, o) in out.iter_mut().enumerate() {
                *o = cov[a * d..(a + 1) * d]
                    .iter()
                    .zip(v)
                    .map(|(x, y)| x * y)
                    .sum();
            }
        }
        q = next;
        orthonormalize(&mut q, d);
    }
    // Rayleigh quotients as the variances, then keep the m largest.
    let variance: Vec<f64> = q
        .chunks_exact(d)
        .map(|v| {
            (0..d)
                .map(|a| {
                    v[a] * cov[a * d..(a + 1) * d]
                        .iter()
                        .zip(v)
                        .map(|(x, y)| x * y)
                        .sum::<f64>()
                })
                .sum()
        })
        .collect();
    let mut order: Vec<usize> = (0..width).collect();
    order.sort_by(|&a, &b| variance[b].total_cmp(&variance[a]));
    order.truncate(m);
    // Eigenvalue allocation: the largest remaining variance goes to the subspace with the
    // smallest log-variance sum that still has room.
    let mut slots: Vec<Vec<usize>> = vec![Vec::new(); layout.subspaces];
    let mut logs = vec![0.0f64; layout.subspaces];
    for &v in &order {
        let s = (0..layout.subspaces)
            .filter(|&s| slots[s].len() < layout.start(s + 1) - layout.start(s))
            .min_by(|&a, &b| logs[a].total_cmp(&logs[b]))
            .expect("m slots for m directions");
        slots[s].push(v);
        logs[s] += variance[v].max(1e-30).ln();
    }
    slots
        .into_iter()
        .flatten()
        .flat_map(|v| q[v * d..(v + 1) * d].iter().map(|&x| x as f32))
        .collect()
}

/// Gram-Schmidt (twice) on the rows `[*, d]` of `q`; a row that vanishes is left at zero.
fn orthonormalize(q: &mut [f64], d: usize) {
    let rows = q.len() / d;
    for i in 0..rows {
        for _ in 0..2 {
            for j in 0..i {
                let (done, rest) = q.split_at_mut(i * d);
                let prev = &done[j * d..(j + 1) * d];
                let row = &mut rest[..d];
                let p: f64 = prev.iter().zip(row.iter()).map(|(a, b)| a * b).sum();
                row.iter_mut().zip(prev).for_each(|(r, a)| *r -= p * a);
            }
        }
        let row = &mut q[i * d..(i + 1) * d];
        let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > 1e-300 {
            row.iter_mut().for_each(|x| *x /= norm);
        }
    }
}
