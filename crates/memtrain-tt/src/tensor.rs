//! Tensors in tensor-train form: [`TtTensor`], [`tt_svd`] and [`Truncation`].

use burn::tensor::{Shape, Tensor};

use crate::error::{Error, Result};
use crate::linalg::{capped_ranks, compact, frobenius, svd};

/// How far [`tt_svd`] and [`TtTensor::round`] may truncate: at most `max_rank` per bond, and
/// a relative Frobenius error at most `eps` (split evenly over the `d - 1` bonds). When both
/// are set the rank cap wins, and the error bound holds only if the cap did not bind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Truncation {
    /// Largest rank of any bond; `None` for no cap.
    pub max_rank: Option<usize>,
    /// Relative accuracy `‖A - A_tt‖_F <= eps ‖A‖_F`; 0 keeps every non-zero singular value.
    pub eps: f64,
}

impl Truncation {
    /// Cap every bond at `rank`, no accuracy target.
    pub fn rank(rank: usize) -> Self {
        Self {
            max_rank: Some(rank),
            eps: 0.0,
        }
    }

    /// Truncate to relative accuracy `eps`, no rank cap.
    pub fn accuracy(eps: f64) -> Self {
        Self {
            max_rank: None,
            eps,
        }
    }

    /// The same truncation with a rank cap.
    pub fn with_max_rank(mut self, rank: usize) -> Self {
        self.max_rank = Some(rank);
        self
    }

    fn check(&self) -> Result<()> {
        if self.max_rank == Some(0) {
            return Err(Error::config("rank", 0, "a rank of at least 1"));
        }
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            return Err(Error::config("eps", self.eps, "a finite accuracy >= 0"));
        }
        Ok(())
    }
}

/// Truncated SVD of `a` `[m, n]`: `(U_r [m, r], (S V^T)_r [r, n])` with the smallest `r >= 1`
/// whose discarded energy is at most `delta2`, capped at `max_rank`.
fn truncated_svd(
    a: Tensor<2>,
    delta2: f64,
    max_rank: Option<usize>,
) -> Result<(Tensor<2>, Tensor<2>)> {
    let [m, n] = a.dims();
    let (u, s, vt) = svd(a)?;
    let sv: Vec<f64> = s.to_data().iter::<f64>().collect();
    if sv.iter().any(|x| !x.is_finite()) {
        return Err(Error::config(
            "svd",
            "a singular value that is NaN or infinite",
            "finite tensor entries",
        ));
    }
    let mut r = sv.len();
    let mut tail = 0.0;
    while r > 1 && tail + sv[r - 1] * sv[r - 1] <= delta2 {
        tail += sv[r - 1] * sv[r - 1];
        r -= 1;
    }
    if let Some(cap) = max_rank {
        r = r.min(cap);
    }
    let u = compact(u.slice([0..m, 0..r]));
    let sv = s.narrow(0, 0, r).unsqueeze_dim::<2>(1) * vt.slice([0..r, 0..n]);
    Ok((u, sv))
}

fn delta2(eps: f64, norm: f64, d: usize) -> f64 {
    if d <= 1 {
        return 0.0;
    }
    (eps * norm).powi(2) / (d - 1) as f64
}

/// A tensor in tensor-train form: cores `[r_{k-1}, n_k, r_k]`, `r_0 = r_d = 1`.
///
/// # Memory
///
/// `Σ_k r_{k-1} n_k r_k` elements ([`TtTensor::param_count`]) against `Π_k n_k` dense.
#[derive(Debug, Clone)]
pub struct TtTensor {
    pub(crate) cores: Vec<Tensor<3>>,
}

impl TtTensor {
    /// A tensor train from its cores.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for no cores, a zero dimension, an outer rank other than 1, or
    /// neighbouring cores whose ranks differ (naming the core).
    pub fn new(cores: Vec<Tensor<3>>) -> Result<Self> {
        check_chain(cores.iter().map(|c| {
            let [a, n, b] = c.dims();
            (a, vec![n], b)
        }))?;
        Ok(Self { cores })
    }

    /// A random tensor train with every inner rank `rank` (capped by the unfolding sizes) and
    /// entries N(0, 1) scaled so that the full tensor's entries have variance 1.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an empty shape, a zero mode or rank 0.
    pub fn random(shape: &[usize], rank: usize, device: &burn::tensor::Device) -> Result<Self> {
        let ranks = capped_ranks(&shape.iter().map(|&n| vec![n]).collect::<Vec<_>>(), rank)?;
        let cores = shape
            .iter()
            .enumerate()
            .map(|(k, &n)| {
                let std = 1.0 / (ranks[k] as f64).sqrt();
                Tensor::random(
                    [ranks[k], n, ranks[k + 1]],
                    burn::tensor::Distribution::Normal(0.0, std),
                    device,
                )
            })
            .collect();
        Self::new(cores)
    }

    /// The cores.
    pub fn cores(&self) -> &[Tensor<3>] {
        &self.cores
    }

    /// The modes `n_1..n_d`.
    pub fn shape(&self) -> Vec<usize> {
        self.cores.iter().map(|c| c.dims()[1]).collect()
    }

    /// The ranks `r_0..r_d` (`d + 1` entries, both ends 1).
    pub fn ranks(&self) -> Vec<usize> {
        let mut r: Vec<usize> = self.cores.iter().map(|c| c.dims()[0]).collect();
        r.push(1);
        r
    }

    /// Elements in the cores.
    pub fn param_count(&self) -> usize {
        self.cores
            .iter()
            .map(|c| c.dims().iter().product::<usize>())
            .sum()
    }

    /// The dense tensor, flattened in row-major order.
    pub fn full_flat(&self) -> Tensor<1> {
        let mut acc: Option<Tensor<2>> = None;
        for c in &self.cores {
            let [r, n, r2] = c.dims();
            let core = c.clone().reshape([r, n * r2]);
            acc = Some(match acc {
                None => core.reshape([n, r2]),
                Some(a) => {
                    let [p, _] = a.dims();
                    a.matmul(core).reshape([p * n, r2])
                }
            });
        }
        let a = acc.expect("at least one core");
        let [p, _] = a.dims();
        a.reshape([p])
    }

    /// The dense tensor.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `D` is not the number of cores.
    pub fn full<const D: usize>(&self) -> Result<Tensor<D>> {
        let shape = self.shape();
        if shape.len() != D {
            return Err(Error::config(
                "full::<D>",
                D,
                format!("D = {} (the number of cores)", shape.len()),
            ));
        }
        Ok(self.full_flat().reshape(Shape::from(shape)))
    }

    /// `<self, other>`: sum of the elementwise product, in `O(d n r³)` without forming either.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the modes differ.
    pub fn dot(&self, other: &TtTensor) -> Result<f64> {
        same_modes(&self.shape(), &other.shape())?;
        let device = self.cores[0].device();
        let mut v = Tensor::<2>::ones([1, 1], (&device, self.cores[0].dtype()));
        for (a, b) in self.cores.iter().zip(&other.cores) {
            let ([ra, n, ra2], [rb, _, rb2]) = (a.dims(), b.dims());
            // v [ra, rb] -> t = v^T A [rb, n ra'] -> [rb n, ra'] -> t^T B [ra', rb'].
            let t = v
                .transpose()
                .matmul(a.clone().reshape([ra, n * ra2]))
                .reshape([rb * n, ra2]);
            v = t.transpose().matmul(b.clone().reshape([rb * n, rb2]));
        }
        Ok(v.into_scalar::<f64>())
    }

    /// The Frobenius norm, `sqrt(<self, self>)`.
    pub fn norm(&self) -> f64 {
        self.dot(self).expect("same modes").max(0.0).sqrt()
    }

    /// `self + other`, with ranks added (block-diagonal cores); round it to compress.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the modes differ.
    pub fn add(&self, other: &TtTensor) -> Result<TtTensor> {
        same_modes(&self.shape(), &other.shape())?;
        let d = self.cores.len();
        let cores = self
            .cores
            .iter()
            .zip(&other.cores)
            .enumerate()
            .map(|(k, (a, b))| block_core(a.clone(), b.clone(), k == 0, k + 1 == d))
            .collect();
        Self::new(cores)
    }

    /// `alpha · self` (scales the first core).
    pub fn scale(&self, alpha: f64) -> TtTensor {
        let mut cores = self.cores.clone();
        cores[0] = cores[0].clone().mul_scalar(alpha);
        Self { cores }
    }

    /// Recompress to lower ranks: right-to-left orthogonalisation (by SVD), then left-to-right
    /// truncated SVDs with `eps` split over the bonds. Ranks never grow, and rounding a rounded
    /// train again changes nothing (up to round-off).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for rank 0 or a negative/NaN `eps`, or an SVD that fails on NaN input.
    pub fn round(&self, trunc: Truncation) -> Result<TtTensor> {
        trunc.check()?;
        let mut cores = self.cores.clone();
        let d = cores.len();
        for k in (1..d).rev() {
            let [r, n, r2] = cores[k].dims();
            let m = cores[k].clone().reshape([r, n * r2]).transpose(); // [n r2, r]
            // An SVD rather than burn's QR: it keeps the dtype (f64 stays f64) and runs on the
            // host pipeline; only exact zeros are dropped.
            let (q, rr) = truncated_svd(m, 0.0, None)?; // q [n r2, p], rr [p, r]
            let p = q.dims()[1];
            cores[k] = q.transpose().reshape([p, n, r2]);
            let [r0, n0, _] = cores[k - 1].dims();
            cores[k - 1] = cores[k - 1]
                .clone()
                .reshape([r0 * n0, r])
                .matmul(rr.transpose())
                .reshape([r0, n0, p]);
        }
        let [r0, n0, r1] = cores[0].dims();
        let norm = frobenius(cores[0].clone().reshape([r0 * n0, r1]));
        let delta2 = delta2(trunc.eps, norm, d);
        for k in 0..d.saturating_sub(1) {
            let [r, n, r2] = cores[k].dims();
            let (u, sv) = truncated_svd(
                cores[k].clone().reshape([r * n, r2]),
                delta2,
                trunc.max_rank,
            )?;
            let rk = u.dims()[1];
            cores[k] = u.reshape([r, n, rk]);
            let [_, n1, r3] = cores[k + 1].dims();
            cores[k + 1] = sv
                .matmul(cores[k + 1].clone().reshape([r2, n1 * r3]))
                .reshape([rk, n1, r3]);
        }
        Self::new(cores)
    }
}

/// TT-SVD of a dense tensor: sequential truncated SVDs of its unfoldings (Oseledets 2011).
/// With `trunc.max_rank = None` the result satisfies `‖A - TT‖_F <= eps ‖A‖_F`.
///
/// # Errors
///
/// [`Error::Config`] for rank 0, a bad `eps`, or an SVD that fails (NaN/infinite input).
pub fn tt_svd<const D: usize>(a: Tensor<D>, trunc: Truncation) -> Result<TtTensor> {
    let shape = a.dims().to_vec();
    let n: usize = shape.iter().product();
    tt_svd_shaped(a.reshape([n]), &shape, trunc)
}

/// [`tt_svd`] of a flat tensor read with the given row-major shape.
///
/// # Errors
///
/// As [`tt_svd`], and [`Error::Config`] when `shape` is empty, has a zero, or does not hold
/// the tensor's elements.
pub fn tt_svd_shaped(a: Tensor<1>, shape: &[usize], trunc: Truncation) -> Result<TtTensor> {
    trunc.check()?;
    let numel: usize = shape.iter().product();
    if shape.is_empty() || shape.contains(&0) || numel != a.dims()[0] {
        return Err(Error::config(
            "shape",
            format!("{shape:?} for {} elements", a.dims()[0]),
            "non-empty modes >= 1 whose product is the number of elements",
        ));
    }
    let a = a.detach();
    let d = shape.len();
    let norm = a.clone().powi_scalar(2).sum().into_scalar::<f64>().sqrt();
    let delta2 = delta2(trunc.eps, norm, d);
    let mut rest = numel / shape[0];
    let mut c = a.reshape([shape[0], rest]);
    let mut r = 1;
    let mut cores = Vec::with_capacity(d);
    for k in 0..d - 1 {
        let (u, sv) = truncated_svd(c, delta2, trunc.max_rank)?;
        let rk = u.dims()[1];
        cores.push(u.reshape([r, shape[k], rk]));
        rest /= shape[k + 1];
        c = sv.reshape([rk * shape[k + 1], rest]);
        r = rk;
    }
    cores.push(c.reshape([r, shape[d - 1], 1]));
    TtTensor::new(cores)
}

/// Validates a chain of cores given as `(r_in, modes, r_out)`.
pub(crate) fn check_chain(cores: impl Iterator<Item = (usize, Vec<usize>, usize)>) -> Result<()> {
    let mut prev = 1;
    let mut count = 0;
    for (k, (a, modes, b)) in cores.enumerate() {
        count += 1;
        if a == 0 || b == 0 || modes.contains(&0) {
            return Err(Error::config(
                "TT core",
                format!("core {k} with rank {a}..{b} and modes {modes:?}"),
                "ranks and modes >= 1",
            ));
        }
        if a != prev {
            return Err(Error::config(
                "TT core",
                format!("core {k} with left rank {a} after right rank {prev}"),
                "each core's left rank equal to the previous core's right rank (1 for the first)",
            ));
        }
        prev = b;
    }
    if count == 0 {
        return Err(Error::config("TT cores", "none", "at least one core"));
    }
    if prev != 1 {
        return Err(Error::config(
            "TT core",
            format!("last core with right rank {prev}"),
            "a last right rank of 1",
        ));
    }
    Ok(())
}

pub(crate) fn same_modes(a: &[usize], b: &[usize]) -> Result<()> {
    if a != b {
        return Err(Error::config(
            "TT modes",
            format!("{a:?} against {b:?}"),
            "the same modes on both sides",
        ));
    }
    Ok(())
}

/// The block core of a sum: `[A 0; 0 B]` in the middle, `[A B]` first, `[A; B]` last.
pub(crate) fn block_core<const D: usize>(
    a: Tensor<D>,
    b: Tensor<D>,
    first: bool,
    last: bool,
) -> Tensor<D> {
    let (da, db) = (a.dims(), b.dims());
    let (ra, rb) = (da[0], db[0]);
    match (first, last) {
        (true, true) => a + b,
        (true, false) => Tensor::cat(vec![a, b], D - 1),
        (false, true) => Tensor::cat(vec![a, b], 0),
        (false, false) => {
            let opts = (&a.device(), a.dtype());
            let mut za = db;
            za[0] = ra;
            let mut zb = da;
            zb[0] = rb;
            let top = Tensor::cat(vec![a, Tensor::zeros(za, opts)], D - 1);
            let bottom = Tensor::cat(vec![Tensor::zeros(zb, opts), b], D - 1);
            Tensor::cat(vec![top, bottom], 0)
        }
    }
}
