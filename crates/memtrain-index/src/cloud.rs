//! The tensor-train point cloud: `Π N_j` points of dimension `D` in a few small cores.

use burn::tensor::{Device, Tensor, TensorData};
use memtrain_tt::{Truncation, tt_svd_shaped};

use crate::data::Points;
use crate::{Error, Result};

/// A cloud of `Π_j N_j` points of dimension `D` stored as a tensor train over the shape
/// `[N_1, ..., N_k, D]`: the point with multi-index `(i_1..i_k)` is
/// `G_1[i_1] G_2[i_2] ... G_k[i_k] B + offset`, where `G_j[i]` is an `[r_{j-1}, r_j]` slice of
/// core `j` (`r_0 = 1`), `B` `[r_k, D]` is the basis and `offset` `[D]` a fixed shift (the
/// data mean for a trained cloud).
///
/// A prefix `(i_1..i_j)` names the cluster of the `Π_{l>j} N_l` points below it; its centre
/// (the mean of those points) is `G_1[i_1]..G_j[i_j] S_j + offset` with
/// `S_j = M_{j+1} .. M_k B` and `M_l` the mean of core `l`'s slices: the hierarchy that
/// [`crate::TtIndex`] searches.
///
/// # Memory
///
/// [`TtCloud::param_count`] `= Σ_j r_{j-1} N_j r_j + r_k D` floats (plus `D` for the offset)
/// against `N D` for the points themselves.
///
/// Paper: Novikov, Gneushev, Kadeishvili, Oseledets, "Tensor-Train Point Cloud Compression and
/// Efficient Approximate Nearest-Neighbor Search", <https://arxiv.org/abs/2410.04462>.
#[derive(Debug, Clone, PartialEq)]
pub struct TtCloud {
    pub(crate) shape: Vec<usize>,
    pub(crate) ranks: Vec<usize>,
    pub(crate) cores: Vec<Vec<f32>>,
    pub(crate) basis: Vec<f32>,
    pub(crate) offset: Vec<f32>,
}

impl TtCloud {
    /// A cloud from its parts: `cores[j]` row-major `[ranks[j], shape[j], ranks[j + 1]]`,
    /// `basis` `[ranks[k], d]`, `offset` `[d]`.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for an empty shape, a zero mode or rank, `ranks[0] != 1`, a core or
    /// basis of the wrong length, or non-finite values.
    pub fn new(
        shape: Vec<usize>,
        ranks: Vec<usize>,
        cores: Vec<Vec<f32>>,
        basis: Vec<f32>,
        offset: Vec<f32>,
    ) -> Result<Self> {
        check_shape(&shape)?;
        let k = shape.len();
        if ranks.len() != k + 1 || ranks[0] != 1 || ranks.contains(&0) {
            return Err(Error::invalid(
                "ranks",
                format!("{ranks:?}"),
                format!("{} ranks >= 1 starting with 1", k + 1),
            ));
        }
        if cores.len() != k {
            return Err(Error::invalid("cores", cores.len(), format!("{k} cores")));
        }
        for (j, c) in cores.iter().enumerate() {
            let want = ranks[j] * shape[j] * ranks[j + 1];
            if c.len() != want {
                return Err(Error::invalid(
                    format!("core {j} length"),
                    c.len(),
                    format!("{want} = {} x {} x {}", ranks[j], shape[j], ranks[j + 1]),
                ));
            }
        }
        let d = offset.len();
        if d == 0 || basis.len() != ranks[k] * d {
            return Err(Error::invalid(
                "basis length",
                basis.len(),
                format!("{} = r_k {} x dimension {d}", ranks[k] * d, ranks[k]),
            ));
        }
        let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
        if !(cores.iter().all(|c| finite(c)) && finite(&basis) && finite(&offset)) {
            return Err(Error::invalid(
                "cloud",
                "NaN or infinite values",
                "finite values",
            ));
        }
        Ok(Self {
            shape,
            ranks,
            cores,
            basis,
            offset,
        })
    }

    /// The cloud whose points are exactly `points` (`N = Π shape`), by TT-SVD without
    /// truncation of the `[N_1, ..., N_k, D]` tensor: a full-rank tensor train represents any
    /// point set of its shape. Point `i` gets the row-major multi-index of `i`.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when `Π shape` differs from the number of points.
    pub fn from_points_exact(points: &Points, shape: &[usize]) -> Result<Self> {
        check_shape(shape)?;
        let total: usize = shape.iter().product();
        if total != points.len() {
            return Err(Error::invalid(
                "shape",
                format!("{shape:?} (product {total})"),
                format!("a product equal to the {} points", points.len()),
            ));
        }
        let device = Device::flex();
        let flat = Tensor::<1>::from_data(
            TensorData::new(
                points
                    .as_slice()
                    .iter()
                    .map(|&x| f64::from(x))
                    .collect::<Vec<_>>(),
                [points.as_slice().len()],
            ),
            (&device, burn::tensor::DType::F64),
        );
        let mut full_shape = shape.to_vec();
        full_shape.push(points.dim());
        let tt = tt_svd_shaped(flat, &full_shape, Truncation::accuracy(0.0))
            .map_err(|e| Error::invalid("TT-SVD", e, "a decomposable point set"))?;
        let mut cores: Vec<Vec<f32>> = tt
            .cores()
            .iter()
            .map(|c| {
                c.clone()
                    .into_data()
                    .iter::<f64>()
                    .map(|x| x as f32)
                    .collect()
            })
            .collect();
        let mut ranks = tt.ranks();
        ranks.pop();
        let basis = cores.pop().expect("k + 1 cores");
        Self::new(shape.to_vec(), ranks, cores, basis, vec![0.0; points.dim()])
    }

    /// The modes `[N_1, ..., N_k]`.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The ranks `[1, r_1, ..., r_k]`.
    pub fn ranks(&self) -> &[usize] {
        &self.ranks
    }

    /// Dimension `D` of every point.
    pub fn dim(&self) -> usize {
        self.offset.len()
    }

    /// Number of points, `Π N_j`.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Always false: every mode is at least 1.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Core `j`, row-major `[r_{j-1}, N_j, r_j]`.
    pub fn core(&self, j: usize) -> &[f32] {
        &self.cores[j]
    }

    /// The basis `[r_k, D]`.
    pub fn basis(&self) -> &[f32] {
        &self.basis
    }

    /// The fixed shift `[D]`.
    pub fn offset(&self) -> &[f32] {
        &self.offset
    }

    /// Floats in the cores and the basis: `Σ_j r_{j-1} N_j r_j + r_k D`.
    pub fn param_count(&self) -> usize {
        self.cores.iter().map(Vec::len).sum::<usize>() + self.basis.len()
    }

    /// The slice `G_j[i]` `[r_{j-1}, r_j]`, row-major.
    pub(crate) fn slice(&self, j: usize, i: usize) -> Vec<f32> {
        let (a, n, b) = (self.ranks[j], self.shape[j], self.ranks[j + 1]);
        let core = &self.cores[j];
        let mut out = Vec::with_capacity(a * b);
        for p in 0..a {
            out.extend_from_slice(&core[(p * n + i) * b..(p * n + i + 1) * b]);
        }
        out
    }

    /// The mean over `i` of `G_j[i]` `[r_{j-1}, r_j]`.
    pub(crate) fn mean_slice(&self, j: usize) -> Vec<f32> {
        let (a, n, b) = (self.ranks[j], self.shape[j], self.ranks[j + 1]);
        let mut out = vec![0.0f32; a * b];
        for i in 0..n {
            for (o, s) in out.iter_mut().zip(self.slice(j, i)) {
                *o += s;
            }
        }
        out.iter_mut().for_each(|o| *o /= n as f32);
        out
    }

    /// The point at multi-index `index` `[D]`.
    ///
    /// # Panics
    ///
    /// When `index` has the wrong length or an index is out of range.
    pub fn point(&self, index: &[usize]) -> Vec<f32> {
        assert_eq!(index.len(), self.shape.len(), "multi-index length");
        let mut v = vec![1.0f32];
        for (j, &i) in index.iter().enumerate() {
            assert!(
                i < self.shape[j],
                "index {i} out of mode {j} of size {}",
                self.shape[j]
            );
            v = vec_mat(&v, &self.slice(j, i), self.ranks[j + 1]);
        }
        let mut x = vec_mat(&v, &self.basis, self.dim());
        x.iter_mut().zip(&self.offset).for_each(|(a, b)| *a += b);
        x
    }

    /// Every point, in row-major multi-index order `[Π N_j, D]`.
    pub fn points(&self) -> Points {
        let prefixes = self.prefixes(self.shape.len());
        let r = self.ranks[self.shape.len()];
        let d = self.dim();
        let mut data = Vec::with_capacity(prefixes.len() / r * d);
        for p in prefixes.chunks_exact(r) {
            let mut x = vec_mat(p, &self.basis, d);
            x.iter_mut().zip(&self.offset).for_each(|(a, b)| *a += b);
            data.extend(x);
        }
        Points::new(data, d).expect("a finite cloud has finite points")
    }

    /// `m` points at multi-indices drawn uniformly with `seed`.
    pub fn sample(&self, m: usize, seed: u64) -> Points {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut data = Vec::with_capacity(m * self.dim());
        for _ in 0..m {
            let index: Vec<usize> = self.shape.iter().map(|&n| rng.random_range(0..n)).collect();
            data.extend(self.point(&index));
        }
        Points::new(data, self.dim()).expect("a finite cloud has finite points")
    }

    /// The prefix vectors `G_1[i_1]..G_j[i_j]` of every prefix of length `j`, row-major
    /// `[Π_{l<=j} N_l, r_j]` (prefixes in row-major order).
    pub(crate) fn prefixes(&self, j: usize) -> Vec<f32> {
        let mut acc = vec![1.0f32];
        for l in 0..j {
            let (a, n, b) = (self.ranks[l], self.shape[l], self.ranks[l + 1]);
            let slices: Vec<Vec<f32>> = (0..n).map(|i| self.slice(l, i)).collect();
            let mut next = Vec::with_capacity(acc.len() / a * n * b);
            for p in acc.chunks_exact(a) {
                for s in &slices {
                    next.extend(vec_mat(p, s, b));
                }
            }
            acc = next;
        }
        acc
    }

    /// `S_j = M_{j+1} .. M_k B` `[r_j, D]`: prefix vectors at level `j` times `S_j` are the
    /// cluster centres (less the offset).
    pub(crate) fn suffix(&self, j: usize) -> Vec<f32> {
        let mut s = self.basis.clone();
        for l in (j..self.shape.len()).rev() {
            s = mat_mat(
                &self.mean_slice(l),
                &s,
                self.ranks[l],
                self.ranks[l + 1],
                self.dim(),
            );
        }
        s
    }

    /// The centres of the clusters at level `j` (prefixes of length `j`), `[Π_{l<=j} N_l, D]`.
    pub fn centres(&self, j: usize) -> Points {
        let p = self.prefixes(j);
        let s = self.suffix(j);
        let (r, d) = (self.ranks[j], self.dim());
        let mut c = mat_mat(&p, &s, p.len() / r, r, d);
        for row in c.chunks_exact_mut(d) {
            row.iter_mut().zip(&self.offset).for_each(|(a, b)| *a += b);
        }
        Points::new(c, d).expect("a finite cloud has finite centres")
    }
}

/// An error unless `shape` is non-empty with every mode at least 1 and a product that fits
/// in `usize` (so that counting the points never overflows).
pub(crate) fn check_shape(shape: &[usize]) -> Result<()> {
    if shape.is_empty() || shape.contains(&0) {
        return Err(Error::invalid(
            "shape",
            format!("{shape:?}"),
            "one or more modes, each at least 1 (e.g. 16,16,16)",
        ));
    }
    if shape
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .is_none()
    {
        return Err(Error::invalid(
            "shape",
            format!("{shape:?} (product overflow)"),
            format!("a product of at most {}", usize::MAX),
        ));
    }
    Ok(())
}

/// `v [a] · m [a, b]`.
pub(crate) fn vec_mat(v: &[f32], m: &[f32], b: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; b];
    for (p, &x) in v.iter().enumerate() {
        if x != 0.0 {
            for (o, &w) in out.iter_mut().zip(&m[p * b..(p + 1) * b]) {
                *o += x * w;
            }
        }
    }
    out
}

/// `a [m, k] · b [k, n]`.
pub(crate) fn mat_mat(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(m * n);
    for row in a.chunks_exact(k).take(m) {
        out.extend(vec_mat(row, b, n));
    }
    out
}
