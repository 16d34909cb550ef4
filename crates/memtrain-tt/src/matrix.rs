//! TT-matrices: a `[M, N]` matrix with cores `[r_{k-1}, m_k, n_k, r_k]`.

use burn::backend::Dispatch;
use burn::tensor::{Device, Distribution, Tensor};

use crate::error::{Error, Result};
use crate::linalg::capped_ranks;
use crate::tensor::{Truncation, TtTensor, block_core, check_chain, same_modes, tt_svd_shaped};

/// A matrix in TT-matrix form: `W[(i_1..i_d), (j_1..j_d)] = Π_k G_k[:, i_k, j_k, :]`, rows
/// `M = Π m_k`, columns `N = Π n_k`.
///
/// # Memory
///
/// `Σ_k r_{k-1} m_k n_k r_k` elements ([`TtMatrix::param_count`]) against `M N` dense: for
/// `[384, 1536]` with modes `[6, 8, 8] × [8, 12, 16]` and rank 16, 27,392 against 589,824.
///
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use memtrain_tt::{TtMatrix, Truncation};
///
/// let device = Device::flex();
/// let w = Tensor::<2>::random([12, 20], Distribution::Normal(0.0, 1.0), &device);
/// let tt = TtMatrix::from_dense(w.clone(), &[3, 4], &[4, 5], Truncation::accuracy(0.0)).unwrap();
/// let x = Tensor::<2>::random([7, 12], Distribution::Normal(0.0, 1.0), &device);
/// let err = (tt.left_mul(x.clone()).unwrap() - x.matmul(w)).abs().max().into_scalar::<f32>();
/// assert!(err < 1e-3);
/// ```
#[derive(Debug, Clone)]
pub struct TtMatrix {
    cores: Vec<Tensor<4>>,
}

impl TtMatrix {
    /// A TT-matrix from its cores.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for no cores, a zero dimension, an outer rank other than 1, or
    /// neighbouring cores whose ranks differ (naming the core).
    pub fn new(cores: Vec<Tensor<4>>) -> Result<Self> {
        check_chain(cores.iter().map(|c| {
            let [a, m, n, b] = c.dims();
            (a, vec![m, n], b)
        }))?;
        Ok(Self { cores })
    }

    /// A random TT-matrix with every inner rank `rank` (capped by the unfolding sizes), its
    /// cores N(0, σ_k²) with `σ_k` chosen so that the dense matrix's entries have variance
    /// `variance`: an entry sums `Π r_k` products of `d` core entries, so
    /// `σ_k² = (variance / Π_{k=1}^{d-1} r_k)^{1/d}`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for rank 0, a zero mode, or `rows` and `cols` of different lengths.
    pub fn random(
        rows: &[usize],
        cols: &[usize],
        rank: usize,
        variance: f64,
        device: &Device,
    ) -> Result<Self> {
        let ranks = matrix_ranks(rows, cols, rank)?;
        let d = rows.len();
        let inner: f64 = ranks[1..d].iter().map(|&r| r as f64).product();
        let std = (variance / inner).powf(0.5 / d as f64);
        let cores = (0..d)
            .map(|k| {
                Tensor::random(
                    [ranks[k], rows[k], cols[k], ranks[k + 1]],
                    Distribution::Normal(0.0, std),
                    device,
                )
            })
            .collect();
        Self::new(cores)
    }

    /// TT-SVD of a dense `[M, N]` matrix with the given modes: the entries are reordered to
    /// `[m_1 n_1, ..., m_d n_d]` and decomposed by [`crate::tt_svd`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the modes' products are not `M` and `N`, the mode lists differ in
    /// length, or as [`crate::tt_svd`].
    pub fn from_dense(
        w: Tensor<2>,
        rows: &[usize],
        cols: &[usize],
        trunc: Truncation,
    ) -> Result<Self> {
        let [m, n] = w.dims();
        if rows.len() != cols.len()
            || rows.is_empty()
            || rows.iter().product::<usize>() != m
            || cols.iter().product::<usize>() != n
        {
            return Err(Error::config(
                "TT-matrix modes",
                format!("rows {rows:?}, cols {cols:?} for a [{m}, {n}] matrix"),
                format!("as many row as column modes, with products {m} and {n}"),
            ));
        }
        let w = Tensor::<1>::from_dispatch(crate::ops::to_interleaved::<Dispatch>(
            w.detach().into_dispatch(),
            rows,
            cols,
        ));
        let shape: Vec<usize> = rows.iter().zip(cols).map(|(a, b)| a * b).collect();
        let tt = tt_svd_shaped(w, &shape, trunc)?;
        Ok(Self::from_tensor(&tt, rows, cols))
    }

    /// Reads a TT tensor with modes `m_k n_k` as a TT-matrix.
    fn from_tensor(tt: &TtTensor, rows: &[usize], cols: &[usize]) -> Self {
        let cores = tt
            .cores()
            .iter()
            .enumerate()
            .map(|(k, c)| {
                let [a, _, b] = c.dims();
                c.clone().reshape([a, rows[k], cols[k], b])
            })
            .collect();
        Self { cores }
    }

    /// This TT-matrix as a TT tensor with modes `m_k n_k`.
    pub fn as_tensor(&self) -> TtTensor {
        TtTensor {
            cores: self
                .cores
                .iter()
                .map(|c| {
                    let [a, m, n, b] = c.dims();
                    c.clone().reshape([a, m * n, b])
                })
                .collect(),
        }
    }

    /// The cores.
    pub fn cores(&self) -> &[Tensor<4>] {
        &self.cores
    }

    /// Row modes `m_1..m_d`.
    pub fn row_modes(&self) -> Vec<usize> {
        self.cores.iter().map(|c| c.dims()[1]).collect()
    }

    /// Column modes `n_1..n_d`.
    pub fn col_modes(&self) -> Vec<usize> {
        self.cores.iter().map(|c| c.dims()[2]).collect()
    }

    /// Ranks `r_0..r_d`.
    pub fn ranks(&self) -> Vec<usize> {
        let mut r: Vec<usize> = self.cores.iter().map(|c| c.dims()[0]).collect();
        r.push(1);
        r
    }

    /// `[M, N]`.
    pub fn dims(&self) -> [usize; 2] {
        [
            self.row_modes().iter().product(),
            self.col_modes().iter().product(),
        ]
    }

    /// Elements in the cores.
    pub fn param_count(&self) -> usize {
        self.cores
            .iter()
            .map(|c| c.dims().iter().product::<usize>())
            .sum()
    }

    fn dispatch_cores(&self) -> Vec<burn::backend::tensor::FloatTensor<Dispatch>> {
        self.cores
            .iter()
            .map(|c| c.clone().into_dispatch())
            .collect()
    }

    /// The dense `[M, N]` matrix.
    pub fn to_dense(&self) -> Tensor<2> {
        Tensor::from_dispatch(crate::ops::dense_of_cores::<Dispatch>(
            &self.dispatch_cores(),
            &self.row_modes(),
            &self.col_modes(),
            &self.ranks(),
        ))
    }

    /// `x W` for rows `x` `[b, M]`, without forming `W` when the core-by-core sweep is cheaper
    /// (it is unless the ranks are large against the batch). Differentiable.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `x` does not have `M` columns.
    pub fn left_mul(&self, x: Tensor<2>) -> Result<Tensor<2>> {
        let [m, _] = self.dims();
        if x.dims()[1] != m {
            return Err(Error::config(
                "left_mul input",
                format!("{:?}", x.dims()),
                format!("[rows, {m}]"),
            ));
        }
        Ok(Tensor::from_dispatch(crate::ops::left_mul::<Dispatch>(
            x.into_dispatch(),
            &self.dispatch_cores(),
            &self.row_modes(),
            &self.col_modes(),
            &self.ranks(),
        )))
    }

    /// `self · other` for TT-matrices `[M, K]` and `[K, N]`, core by core (ranks multiply):
    /// `C_k[(a b), m, n, (a' b')] = Σ_j A_k[a, m, j, a'] B_k[b, j, n, b']`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when this matrix's column modes are not `other`'s row modes.
    pub fn matmul(&self, other: &TtMatrix) -> Result<TtMatrix> {
        same_modes(&self.col_modes(), &other.row_modes())?;
        let cores = self
            .cores
            .iter()
            .zip(&other.cores)
            .map(|(a, b)| {
                let ([ra, m, k, ra2], [rb, _, n, rb2]) = (a.dims(), b.dims());
                let a2 = a.clone().permute([0, 1, 3, 2]).reshape([ra * m * ra2, k]);
                let b2 = b.clone().permute([1, 0, 2, 3]).reshape([k, rb * n * rb2]);
                a2.matmul(b2)
                    .reshape([ra, m, ra2, rb, n, rb2])
                    .permute([0, 3, 1, 4, 2, 5])
                    .reshape([ra * rb, m, n, ra2 * rb2])
            })
            .collect();
        Self::new(cores)
    }

    /// `self · x` for a TT vector `x` with modes `n_1..n_d` (ranks multiply).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `x`'s modes are not this matrix's column modes.
    pub fn matvec(&self, x: &TtTensor) -> Result<TtTensor> {
        let ones = vec![1; x.cores().len()];
        let col = TtMatrix::from_tensor(x, &x.shape(), &ones);
        let y = self.matmul(&col)?;
        let rows = self.row_modes();
        Ok(y.as_tensor_with(&rows))
    }

    fn as_tensor_with(&self, modes: &[usize]) -> TtTensor {
        TtTensor {
            cores: self
                .cores
                .iter()
                .zip(modes)
                .map(|(c, &m)| {
                    let [a, _, _, b] = c.dims();
                    c.clone().reshape([a, m, b])
                })
                .collect(),
        }
    }

    /// The transpose (swaps each core's mode axes).
    pub fn transpose(&self) -> TtMatrix {
        Self {
            cores: self
                .cores
                .iter()
                .map(|c| c.clone().permute([0, 2, 1, 3]))
                .collect(),
        }
    }

    /// Frobenius norm.
    pub fn norm(&self) -> f64 {
        self.as_tensor().norm()
    }

    /// Frobenius inner product.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the modes differ.
    pub fn dot(&self, other: &TtMatrix) -> Result<f64> {
        same_modes(&self.row_modes(), &other.row_modes())?;
        same_modes(&self.col_modes(), &other.col_modes())?;
        self.as_tensor().dot(&other.as_tensor())
    }

    /// `self + other` (ranks add).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the modes differ.
    pub fn add(&self, other: &TtMatrix) -> Result<TtMatrix> {
        same_modes(&self.row_modes(), &other.row_modes())?;
        same_modes(&self.col_modes(), &other.col_modes())?;
        let d = self.cores.len();
        Self::new(
            self.cores
                .iter()
                .zip(&other.cores)
                .enumerate()
                .map(|(k, (a, b))| block_core(a.clone(), b.clone(), k == 0, k + 1 == d))
                .collect(),
        )
    }

    /// TT-rounding ([`TtTensor::round`] on the `m_k n_k` modes).
    ///
    /// # Errors
    ///
    /// As [`TtTensor::round`].
    pub fn round(&self, trunc: Truncation) -> Result<TtMatrix> {
        let t = self.as_tensor().round(trunc)?;
        Ok(Self::from_tensor(&t, &self.row_modes(), &self.col_modes()))
    }
}

/// Ranks `[1, r.., 1]` of a TT-matrix with these modes, each capped by its unfolding.
pub fn matrix_ranks(rows: &[usize], cols: &[usize], rank: usize) -> Result<Vec<usize>> {
    if rows.len() != cols.len() {
        return Err(Error::config(
            "TT-matrix modes",
            format!("rows {rows:?}, cols {cols:?}"),
            "as many row modes as column modes",
        ));
    }
    let modes: Vec<Vec<usize>> = rows.iter().zip(cols).map(|(&a, &b)| vec![a, b]).collect();
    capped_ranks(&modes, rank)
}
