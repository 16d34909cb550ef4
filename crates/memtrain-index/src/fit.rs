//! Training a [`TtCloud`] as a density model of the data: sliced Wasserstein plus a
//! nearest-neighbour loss, mini-batched, with burn autodiff and Adam.

use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cloud::{TtCloud, check_shape};
use crate::data::Points;
use crate::{Error, Result};

/// How [`fit`] trains a cloud.
#[derive(Debug, Clone, PartialEq)]
pub struct FitConfig {
    /// Largest TT rank (every bond, capped by the unfolding sizes).
    pub rank: usize,
    /// Adam steps.
    pub steps: usize,
    /// Cloud points and data points per step for the sliced Wasserstein term.
    pub batch: usize,
    /// Random projections per step.
    pub projections: usize,
    /// Data points per step for the nearest-neighbour term (0 turns it off).
    pub nn_batch: usize,
    /// Weight of the nearest-neighbour term.
    pub nn_weight: f64,
    /// Weight of the cluster term: for every level `j < k` with at most
    /// [`MAX_LEVEL_CENTRES`] clusters, the mean squared distance (per coordinate) of
    /// the `batch` data points to their nearest cluster centre at that level (0 turns it off).
    pub level_weight: f64,
    /// Adam learning rate (decays linearly to a tenth over the run).
    pub lr: f64,
    /// Seed of the initial cores, the batches and the projections.
    pub seed: u64,
}

impl Default for FitConfig {
    fn default() -> Self {
        Self {
            rank: 16,
            steps: 300,
            batch: 2048,
            projections: 128,
            nn_batch: 512,
            nn_weight: 1.0,
            level_weight: 1.0,
            lr: 0.02,
            seed: 0,
        }
    }
}

/// One training step's numbers, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitProgress {
    /// Step just taken, from 1.
    pub step: usize,
    /// Total steps.
    pub steps: usize,
    /// Sliced Wasserstein term (squared, in units of the data's standard deviation).
    pub sliced_wasserstein: f64,
    /// Nearest-neighbour term (mean squared distance per coordinate, same units).
    pub nearest: f64,
}

/// Levels with more clusters than this get no cluster term (its cost grows with the count).
pub const MAX_LEVEL_CENTRES: usize = 4096;

#[derive(Module, Debug)]
struct CloudModule {
    cores: Vec<Param<Tensor<3>>>,
    basis: Param<Tensor<2>>,
}

impl CloudModule {
    /// The points at multi-indices `idx` (one `[B]` index tensor per mode) `[B, D]`.
    fn forward(&self, idx: &[Tensor<1, Int>]) -> Tensor<2> {
        let first = self.cores[0].val();
        let [_, n1, r1] = first.dims();
        let mut p = first.reshape([n1, r1]).select(0, idx[0].clone());
        for (core, i) in self.cores.iter().zip(idx).skip(1) {
            let g = core.val().swap_dims(0, 1).select(0, i.clone());
            let [b, _, r] = g.dims();
            p = p.unsqueeze_dim::<3>(1).matmul(g).reshape([b, r]);
        }
        p.matmul(self.basis.val())
    }

    /// The cluster centres at level `j` (prefixes of length `j`, row-major) less the offset,
    /// `[Π_{l<=j} N_l, D]`: prefix vectors times `S_j = M_{j+1} .. M_k B`.
    fn centres(&self, j: usize) -> Tensor<2> {
        let first = self.cores[0].val();
        let [_, n1, r1] = first.dims();
        let mut p = first.reshape([n1, r1]);
        for core in &self.cores[1..j] {
            let [a, n, b] = core.dims();
            let [m, _] = p.dims();
            p = p.matmul(core.val().reshape([a, n * b])).reshape([m * n, b]);
        }
        let mut s = self.basis.val();
        for core in self.cores[j..].iter().rev() {
            let [a, _, b] = core.dims();
            s = core.val().mean_dim(1).reshape([a, b]).matmul(s);
        }
        p.matmul(s)
    }
}

/// Mean over the rows of `y` `[m, D]` of the squared distance to the nearest row of `c`,
/// divided by `D`.
fn nearest_term(y: Tensor<2>, c: Tensor<2>) -> Tensor<1> {
    let [_, d] = y.dims();
    let dist = y.clone().square().sum_dim(1) - y.matmul(c.clone().transpose()).mul_scalar(2.0)
        + c.square().sum_dim(1).transpose();
    dist.min_dim(1).mean().div_scalar(d as f64)
}

/// The TT ranks `[1, r_1, ..., r_k]` for `shape` `[N_1..N_k]` and dimension `d`: `rank`,
/// capped by the sizes of the unfoldings of `[N_1, ..., N_k, d]` (as
/// [`memtrain_tt::linalg::capped_ranks`] without the last core's right rank; the products
/// saturate, so a shape near `usize::MAX` caps nothing instead of overflowing).
///
/// # Errors
///
/// [`Error::Invalid`] for rank 0, no modes or a zero mode or dimension.
pub fn capped_ranks(shape: &[usize], d: usize, rank: usize) -> Result<Vec<usize>> {
    if rank == 0 {
        return Err(Error::invalid("rank", 0, "at least 1"));
    }
    check_shape(shape)?;
    if d == 0 {
        return Err(Error::invalid("dimension", 0, "at least 1"));
    }
    let sizes: Vec<usize> = shape.iter().copied().chain([d]).collect();
    let product = |s: &[usize]| s.iter().fold(1usize, |a, &b| a.saturating_mul(b));
    let mut ranks = vec![1; shape.len() + 1];
    for (k, r) in ranks.iter_mut().enumerate().skip(1) {
        *r = rank.min(product(&sizes[..k])).min(product(&sizes[k..]));
    }
    Ok(ranks)
}

/// An error unless `shape` holds at least `n` points.
pub fn check_capacity(shape: &[usize], n: usize) -> Result<()> {
    check_shape(shape)?;
    let total = shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
    match total {
        Some(t) if t >= n => Ok(()),
        _ => Err(Error::invalid(
            "shape",
            format!(
                "{shape:?} (product {})",
                total.map_or("overflow".into(), |t| t.to_string())
            ),
            format!("a product of at least the {n} data points"),
        )),
    }
}

impl FitConfig {
    /// An error unless every setting is usable: rank, batch and projections at least 1, a
    /// finite learning rate above 0, finite weights of at least 0.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming the first bad setting and its value.
    pub fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("rank", self.rank),
            ("batch", self.batch),
            ("projections", self.projections),
        ] {
            if v == 0 {
                return Err(Error::invalid(what, 0, "at least 1"));
            }
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::invalid("lr", self.lr, "a finite learning rate > 0"));
        }
        for (what, w) in [
            ("nn_weight", self.nn_weight),
            ("level_weight", self.level_weight),
        ] {
            if !(w >= 0.0 && w.is_finite()) {
                return Err(Error::invalid(what, w, "a finite weight >= 0"));
            }
        }
        Ok(())
    }
}

/// Bytes [`fit`] allocates at least for `n` points of dimension `d` and a cloud of `shape`
/// (a lower bound: the largest buffers only); `Ok(None)` when the count overflows `u64`.
///
/// # Memory
///
/// With `P = Σ_j r_{j-1} N_j r_j + r_k d` parameters, batch `b`, `p` projections and
/// `C_j = Π_{l<=j} N_l` clusters at the levels with a cluster term:
/// `4 (4 P + 2 n d + 2 d² + b (2 d + 3 p) + Σ_j C_j (d + b)) + 8 b k` bytes: the parameters
/// with their gradients and Adam's two moments, the normalised data and its tensor, the
/// covariance and its singular vectors, the batch and its projections, the level centres and
/// their distances to the batch, and the sampled multi-indices.
///
/// # Errors
///
/// [`Error::Invalid`] for rank 0, no modes, or a zero mode or dimension.
pub fn fit_bytes(shape: &[usize], d: usize, n: usize, config: &FitConfig) -> Result<Option<u64>> {
    use crate::budget::Bytes;
    let ranks = capped_ranks(shape, d, config.rank)?;
    let k = shape.len();
    let mut params = Bytes::of(16, &[ranks[k], d]);
    for j in 0..k {
        params = params.plus(Bytes::of(16, &[ranks[j], shape[j], ranks[j + 1]]));
    }
    let b = config.batch;
    let mut total = params
        .plus(Bytes::of(8, &[n, d]))
        .plus(Bytes::of(8, &[d, d]))
        .plus(Bytes::of(8, &[b, d]))
        .plus(Bytes::of(12, &[b, config.projections]))
        .plus(Bytes::of(8, &[b, k]));
    if config.level_weight > 0.0 {
        let mut clusters = 1usize;
        for &m in &shape[..k - 1] {
            clusters = clusters.saturating_mul(m);
            if clusters <= MAX_LEVEL_CENTRES {
                total = total.plus(Bytes::of(4, &[clusters, d.saturating_add(b)]));
            }
        }
    }
    Ok(total.0)
}

/// An error unless training a cloud of `shape` on `n` points of dimension `d` and building
/// its index with leaves at `leaf_level` fit within [`crate::memory_limit`], by
/// [`fit_bytes`] and [`crate::TtIndex::build_bytes`]: the check to run before anything is
/// allocated.
///
/// # Errors
///
/// [`Error::TooLarge`] naming the estimate and the limit; [`Error::Invalid`] for a bad shape,
/// rank or leaf level.
pub fn check_memory(
    shape: &[usize],
    d: usize,
    n: usize,
    leaf_level: usize,
    config: &FitConfig,
) -> Result<()> {
    let settings = format!(
        "shape {shape:?}, rank {}, batch {}, {n} points of dimension {d}",
        config.rank, config.batch
    );
    crate::budget::check_bytes(
        "training the TT cloud",
        &settings,
        fit_bytes(shape, d, n, config)?,
    )?;
    let ranks = capped_ranks(shape, d, config.rank)?;
    crate::budget::check_bytes(
        "building the index",
        &format!("{settings}, leaves at level {leaf_level}"),
        crate::TtIndex::build_bytes(shape, &ranks, d, n, leaf_level)?,
    )
}

/// Trains a cloud of shape `[N_1..N_k]` on `points`, deterministic for a given
/// [`FitConfig::seed`].
///
/// The data are centred and scaled to unit variance; the basis starts at the top principal
/// directions scaled by their standard deviations and the cores at N(0, 1/r) (so a random
/// cloud point has the data's covariance in that subspace). Each Adam step draws `batch`
/// cloud points at random multi-indices and `batch` data points and minimises
///
/// `SW² + nn_weight · NN + level_weight · Σ_{j<k} C_j`
///
/// - `SW²` (sliced Wasserstein, as in the paper): both sets projected on `projections` random
///   unit directions, the sorted projections matched;
/// - `NN` (nearest neighbour, as in the paper): the mean over `nn_batch` data points of the
///   squared distance (per coordinate) to the nearest drawn cloud point, which pulls the
///   cloud onto every part of the data;
/// - `C_j` (our addition for search): the mean squared distance of the data points to the
///   nearest cluster centre at level `j`, i.e. the k-means objective of every level's
///   centres. Without it the subtrees are spread out and the leaves badly unbalanced: on
///   Fashion-MNIST the index needed the whole first level in its beam and still ran at a
///   third of IVF's speed (docs/BENCHMARKS.md). Levels with more than
///   [`MAX_LEVEL_CENTRES`] clusters are skipped.
///
/// # Errors
///
/// [`Error::Invalid`] for a shape whose product is smaller than the number of points, a
/// setting [`FitConfig::validate`] refuses, or a non-finite loss (the learning rate is too
/// high); [`Error::TooLarge`] when [`fit_bytes`] exceeds [`crate::memory_limit`].
pub fn fit(
    points: &Points,
    shape: &[usize],
    config: &FitConfig,
    progress: &mut dyn FnMut(FitProgress),
) -> Result<TtCloud> {
    check_capacity(shape, points.len())?;
    config.validate()?;
    crate::budget::check_bytes(
        "training the TT cloud",
        &format!(
            "shape {shape:?}, rank {}, batch {}, {} points of dimension {}",
            config.rank,
            config.batch,
            points.len(),
            points.dim()
        ),
        fit_bytes(shape, points.dim(), points.len(), config)?,
    )?;
    let (n, d) = (points.len(), points.dim());
    let mut mean = vec![0.0f64; d];
    for i in 0..n {
        for (m, &x) in mean.iter_mut().zip(points.row(i)) {
            *m += f64::from(x);
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let var: f64 = (0..n)
        .map(|i| {
            points
                .row(i)
                .iter()
                .zip(&mean)
                .map(|(&x, m)| (f64::from(x) - m).powi(2))
                .sum::<f64>()
        })
        .sum::<f64>()
        / (n * d) as f64;
    let scale = if var > 0.0 { var.sqrt() } else { 1.0 };
    let normalized: Vec<f32> = (0..n)
        .flat_map(|i| {
            let mean = &mean;
            points
                .row(i)
                .iter()
                .zip(mean)
                .map(move |(&x, m)| ((f64::from(x) - m) / scale) as f32)
        })
        .collect();

    let ranks = capped_ranks(shape, d, config.rank)?;
    let k = shape.len();
    let device = Device::flex().autodiff();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let basis = principal_basis(&normalized, n, d, ranks[k], &mut rng)?;
    let cores: Vec<Param<Tensor<3>>> = (0..k)
        .map(|j| {
            let std = 1.0 / (ranks[j] as f64).sqrt();
            let len = ranks[j] * shape[j] * ranks[j + 1];
            let values: Vec<f32> = (0..len).map(|_| (std * normal(&mut rng)) as f32).collect();
            Param::from_tensor(Tensor::from_data(
                TensorData::new(values, [ranks[j], shape[j], ranks[j + 1]]),
                &device,
            ))
        })
        .collect();
    let mut model = CloudModule {
        cores,
        basis: Param::from_tensor(Tensor::from_data(
            TensorData::new(basis, [ranks[k], d]),
            &device,
        )),
    };
    let data = Tensor::<2>::from_data(TensorData::new(normalized, [n, d]), &device);
    let mut optim = AdamConfig::new().init();

    for step in 0..config.steps {
        let b = config.batch;
        let idx: Vec<Tensor<1, Int>> = shape
            .iter()
            .map(|&m| {
                let v: Vec<i64> = (0..b).map(|_| rng.random_range(0..m) as i64).collect();
                Tensor::from_data(TensorData::new(v, [b]), &device)
            })
            .collect();
        let rows: Vec<i64> = (0..b).map(|_| rng.random_range(0..n) as i64).collect();
        let y = data
            .clone()
            .select(0, Tensor::from_data(TensorData::new(rows, [b]), &device));
        let x = model.forward(&idx);

        let p = config.projections;
        let mut theta: Vec<f32> = (0..d * p).map(|_| normal(&mut rng) as f32).collect();
        for c in 0..p {
            let norm = (0..d)
                .map(|r| theta[r * p + c].powi(2))
                .sum::<f32>()
                .sqrt()
                .max(1e-12);
            (0..d).for_each(|r| theta[r * p + c] /= norm);
        }
        let theta = Tensor::<2>::from_data(TensorData::new(theta, [d, p]), &device);
        let a = x.clone().matmul(theta.clone());
        let order = a.clone().detach().argsort(0);
        let a_sorted = a.gather(0, order);
        let b_sorted = y.clone().matmul(theta).detach().sort(0);
        let sw = (a_sorted - b_sorted).square().mean();

        let m = config.nn_batch.min(b);
        let mut loss = sw.clone();
        let mut nearest = None;
        if m > 0 && config.nn_weight > 0.0 {
            let yn = y.clone().slice([0..m, 0..d]);
            let term = nearest_term(yn, x.slice([0..m, 0..d]));
            loss = loss + term.clone().mul_scalar(config.nn_weight);
            nearest = Some(term);
        }
        if config.level_weight > 0.0 {
            for j in 1..k {
                if shape[..j].iter().product::<usize>() <= MAX_LEVEL_CENTRES {
                    let term = nearest_term(y.clone(), model.centres(j));
                    loss = loss + term.mul_scalar(config.level_weight);
                }
            }
        }
        let sw_value: f64 = sw.into_scalar::<f32>().into();
        let nn_value: f64 = nearest.map_or(0.0, |t| t.into_scalar::<f32>().into());
        if !(sw_value.is_finite() && nn_value.is_finite()) {
            return Err(Error::invalid(
                "lr",
                config.lr,
                format!("a smaller learning rate (the loss became {sw_value} at step {step})"),
            ));
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let lr = config.lr * (1.0 - 0.9 * step as f64 / config.steps.max(1) as f64);
        model = optim.step(lr, model, grads);
        progress(FitProgress {
            step: step + 1,
            steps: config.steps,
            sliced_wasserstein: sw_value,
            nearest: nn_value,
        });
    }

    let to_vec =
        |t: Tensor<3>| -> Vec<f32> { t.into_data().try_to_vec::<f32>().expect("f32 cores") };
    let cores = model.cores.iter().map(|c| to_vec(c.val())).collect();
    let basis: Vec<f32> = model
        .basis
        .val()
        .into_data()
        .try_to_vec::<f32>()
        .expect("f32 basis");
    let basis = basis
        .into_iter()
        .map(|v| (f64::from(v) * scale) as f32)
        .collect();
    let offset = mean.iter().map(|&m| m as f32).collect();
    TtCloud::new(shape.to_vec(), ranks, cores, basis, offset)
}

/// The top `r` principal directions of `data` `[n, d]` (centred), each scaled by its standard
/// deviation, `[r, d]`; computed from the covariance of at most 8192 sampled rows.
fn principal_basis(
    data: &[f32],
    n: usize,
    d: usize,
    r: usize,
    rng: &mut StdRng,
) -> Result<Vec<f32>> {
    let m = n.min(8192);
    let rows: Vec<usize> = (0..m)
        .map(|i| if m == n { i } else { rng.random_range(0..n) })
        .collect();
    let device = Device::flex();
    let sample: Vec<f32> = rows
        .iter()
        .flat_map(|&i| data[i * d..(i + 1) * d].iter().copied())
        .collect();
    let x = Tensor::<2>::from_data(TensorData::new(sample, [m, d]), &device);
    let cov = x.clone().transpose().matmul(x).div_scalar(m as f64);
    let (u, s, _) = burn::linalg::svd::<2, 1>(cov, 200);
    let u: Vec<f32> = u.into_data().try_to_vec::<f32>().expect("f32");
    let s: Vec<f32> = s.into_data().try_to_vec::<f32>().expect("f32");
    if s.iter().any(|v| !v.is_finite()) {
        return Err(Error::invalid(
            "data",
            "a covariance with NaN",
            "finite data",
        ));
    }
    let mut basis = Vec::with_capacity(r * d);
    for a in 0..r {
        // Directions beyond the data's rank get a small spread so the cores still train.
        let sd = if a < s.len() {
            s[a].max(1e-6).sqrt()
        } else {
            1e-3
        };
        for row in 0..d {
            let v = if a < d { u[row * d + a] } else { 0.0 };
            basis.push(v * sd);
        }
    }
    Ok(basis)
}

/// One standard normal draw (Box-Muller).
pub(crate) fn normal(rng: &mut StdRng) -> f64 {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}
