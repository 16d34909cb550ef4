//! [`TtLinear`]: a linear layer whose weight is a TT-matrix ("Efficient GPT Model Pre-training
//! using Tensor Train Matrix Representation", Chekalina, Novikov, Gusak, Oseledets, Panchenko,
//! <https://arxiv.org/abs/2306.02697>).
//!
//! `W [d_in, d_out]` is stored as cores `[r_{k-1}, m_k, n_k, r_k]` with `d_in = Π m_k`,
//! `d_out = Π n_k` ([`crate::tt::TtMatrix`]). Forward contracts the input with the cores one
//! by one (or through the dense `W` when the ranks make that cheaper) and never keeps an
//! intermediate: the custom backward keeps only the input, as a dense layer does, and follows
//! the paper: `dX = dY Wᵀ` and `dW = Xᵀ dY` with `W` rebuilt for the moment, then each core's
//! gradient is `dW` contracted with the partial products of the other cores.
//!
//! Autodiff through the contraction ([`TtLinear::forward_reference`]) instead keeps the sweep
//! intermediates or the dense `W` chain: for `[512, 384] -> 1536` at rank 48 it keeps
//! 3,257,208 bytes, 4.1× the input, where the custom op keeps nothing beyond the input the
//! caller already holds (`tests/memory.rs`).

use std::sync::{Arc, Mutex, OnceLock};

use burn::backend::backend_extension;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata};
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Distribution, Shape, Slice, Tensor};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};

use crate::error::{Error, Result};
use crate::has_kernels;
use memtrain_tt::{self as tt, Truncation, TtMatrix};
use serde::{Deserialize, Serialize};

/// Modes and ranks of a TT-matrix layer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    rows: Vec<usize>,
    cols: Vec<usize>,
    ranks: Vec<usize>,
}

impl Layout {
    fn core_dims(&self, k: usize) -> [usize; 4] {
        [self.ranks[k], self.rows[k], self.cols[k], self.ranks[k + 1]]
    }

    fn core_len(&self, k: usize) -> usize {
        self.core_dims(k).iter().product()
    }

    fn param_count(&self) -> usize {
        (0..self.rows.len()).map(|k| self.core_len(k)).sum()
    }

    /// The cores of a flat parameter vector.
    fn split<B: Backend>(&self, flat: FloatTensor<B>) -> Vec<FloatTensor<B>> {
        let mut start = 0;
        (0..self.rows.len())
            .map(|k| {
                let len = self.core_len(k);
                let core = B::float_slice(flat.clone(), &[Slice::from(start..start + len)]);
                start += len;
                B::float_reshape(core, Shape::from(self.core_dims(k).to_vec()))
            })
            .collect()
    }
}

/// Layouts in use, by id (the id crosses the backend-extension boundary).
fn registry() -> &'static Mutex<Vec<Arc<Layout>>> {
    static LAYOUTS: OnceLock<Mutex<Vec<Arc<Layout>>>> = OnceLock::new();
    LAYOUTS.get_or_init(Default::default)
}

fn register(layout: Layout) -> u32 {
    let mut all = registry().lock().expect("no panic holds the lock");
    if let Some(i) = all.iter().position(|l| **l == layout) {
        return i as u32;
    }
    all.push(Arc::new(layout));
    (all.len() - 1) as u32
}

fn registered(id: u32) -> Arc<Layout> {
    registry().lock().expect("no panic holds the lock")[id as usize].clone()
}

fn flat<B: Backend>(x: FloatTensor<B>) -> (FloatTensor<B>, usize, usize) {
    let (n, d) = crate::rows_and_width(&x.shape());
    (B::float_reshape(x, Shape::from(vec![n, d])), n, d)
}

fn forward<B: Backend>(x: FloatTensor<B>, cores: FloatTensor<B>, l: &Layout) -> FloatTensor<B> {
    let mut shape = x.shape();
    let (x2, _, _) = flat::<B>(x);
    let y = tt::ops::left_mul::<B>(x2, &l.split::<B>(cores), &l.rows, &l.cols, &l.ranks);
    let last = shape.num_dims() - 1;
    shape[last] = l.cols.iter().product();
    B::float_reshape(y, shape)
}

/// The TT-matrix product as a burn backend extension. `layout` is a registry id.
#[backend_extension(Flex, Cube: cfg(memtrain_cube), Autodiff)]
pub trait TtLinearBackend: Backend {
    /// `x W` with `W` given by its flattened cores, keeping only `x` for backward.
    fn tt_linear(x: FloatTensor<Self>, cores: FloatTensor<Self>, layout: u32) -> FloatTensor<Self>;
}

impl TtLinearBackend for Flex {
    fn tt_linear(x: FloatTensor<Self>, cores: FloatTensor<Self>, layout: u32) -> FloatTensor<Self> {
        forward::<Self>(x, cores, &registered(layout))
    }
}

#[cfg(memtrain_cube)]
impl TtLinearBackend for burn_cubecl::CubeBackend {
    fn tt_linear(x: FloatTensor<Self>, cores: FloatTensor<Self>, layout: u32) -> FloatTensor<Self> {
        forward::<Self>(x, cores, &registered(layout))
    }
}

#[derive(Debug)]
struct TtBackward {
    layout: Arc<Layout>,
}

impl<B: Backend> Backward<B, 2> for TtBackward {
    /// The input `[n, d_in]` and the flat cores (a parameter: shared, free).
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_cores] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x2, flat_cores) = ops.state;
        let l = &*self.layout;
        let y_shape = dy.shape();
        let (dy2, _, _) = flat::<B>(dy);
        let cores = l.split::<B>(flat_cores);
        if let Some(node) = node_cores {
            let dw = B::float_matmul(B::float_transpose(x2), dy2.clone());
            let dw = tt::ops::to_interleaved::<B>(dw, &l.rows, &l.cols);
            let parts: Vec<FloatTensor<B>> =
                tt::ops::core_grads::<B>(dw, &cores, &l.rows, &l.cols, &l.ranks)
                    .into_iter()
                    .enumerate()
                    .map(|(k, g)| B::float_reshape(g, Shape::from(vec![l.core_len(k)])))
                    .collect();
            grads.register::<B>(node.id, B::float_cat(parts, 0));
        }
        if let Some(node) = node_x {
            let w = tt::ops::dense_of_cores::<B>(&cores, &l.rows, &l.cols, &l.ranks);
            let dx = B::float_matmul(dy2, B::float_transpose(w));
            let mut shape = y_shape;
            let last = shape.num_dims() - 1;
            shape[last] = l.rows.iter().product();
            grads.register::<B>(node.id, B::float_reshape(dx, shape));
        }
    }
}

impl<B: Backend, C: CheckpointStrategy> TtLinearBackend for Autodiff<B, C> {
    fn tt_linear(x: FloatTensor<Self>, cores: FloatTensor<Self>, layout: u32) -> FloatTensor<Self> {
        let (xp, cp) = (x.primitive().clone(), cores.primitive().clone());
        let layout = registered(layout);
        match (TtBackward {
            layout: layout.clone(),
        })
        .prepare::<C>([x.node(), cores.node()])
        .compute_bound()
        .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = forward::<B>(xp.clone(), cp.clone(), &layout);
                let (x2, _, _) = flat::<B>(xp);
                prep.finish((x2, cp), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward::<B>(xp, cp, &layout)),
        }
    }
}

/// Configuration of a [`TtLinear`]: widths, the rank of every inner bond (capped by the
/// unfolding sizes), and the modes (by default `d_input` and `d_output` each split into
/// `cores` balanced factors by [`tt::matrix_modes`]).
///
/// ```
/// use burn::tensor::Device;
/// use memtrain::linear::TtLinearConfig;
/// let device = Device::flex();
/// let layer = TtLinearConfig::new(64, 96, 4).with_std(Some(0.02)).init(&device).unwrap();
/// assert_eq!(layer.modes(), (vec![4, 4, 4], vec![4, 4, 6]));
/// let e = TtLinearConfig::new(64, 96, 0).init(&device).unwrap_err().to_string();
/// assert!(e.contains("rank"), "{e}");
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct TtLinearConfig {
    /// Input width `Π m_k`.
    pub d_input: usize,
    /// Output width `Π n_k`.
    pub d_output: usize,
    /// Rank of every inner bond, at least 1.
    pub rank: usize,
    /// Number of cores `d` when the modes are chosen automatically.
    #[config(default = 3)]
    pub cores: usize,
    /// Explicit `(row modes, column modes)`, overriding `cores`.
    pub modes: Option<(Vec<usize>, Vec<usize>)>,
    /// Whether the layer has a bias.
    #[config(default = true)]
    pub bias: bool,
    /// `None`: random cores whose dense product has the variance of burn's default `Linear`
    /// init, and burn's uniform bias. `Some(std)`: a dense product of entries N(0, std²) in
    /// variance, and a zero bias (a drop-in for a dense layer drawn N(0, std²)).
    pub std: Option<f64>,
}

impl TtLinearConfig {
    fn layout(&self) -> Result<Layout> {
        if self.rank == 0 {
            return Err(Error::config("rank", 0, "a TT rank of at least 1"));
        }
        let (rows, cols) = match &self.modes {
            Some((r, c)) => (r.clone(), c.clone()),
            None => tt::matrix_modes(self.d_input, self.d_output, self.cores)?,
        };
        if rows.len() != cols.len()
            || rows.iter().product::<usize>() != self.d_input
            || cols.iter().product::<usize>() != self.d_output
        {
            return Err(Error::config(
                "modes",
                format!("rows {rows:?}, cols {cols:?}"),
                format!(
                    "as many row as column modes, with products {} and {}",
                    self.d_input, self.d_output
                ),
            ));
        }
        let ranks = tt::matrix::matrix_ranks(&rows, &cols, self.rank)?;
        Ok(Layout { rows, cols, ranks })
    }

    /// Parameters of the layer (cores and bias) without building it.
    ///
    /// # Errors
    ///
    /// As [`TtLinearConfig::init`].
    pub fn param_count(&self) -> Result<usize> {
        Ok(self.layout()?.param_count() + if self.bias { self.d_output } else { 0 })
    }

    /// Random cores as `std` says (see [`TtLinearConfig::std`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming `rank` (0), `modes` (widths that cannot be split into them)
    /// or `std` (not positive and finite).
    pub fn init(&self, device: &Device) -> Result<TtLinear> {
        let Some(std) = self.std else {
            let mut layer = self
                .clone()
                .with_std(Some((1.0 / (3.0 * self.d_input as f64)).sqrt()))
                .init(device)?;
            if let Some(b) = layer.bias.as_mut() {
                let a = 1.0 / (self.d_input as f64).sqrt();
                *b = Param::from_tensor(Tensor::random(
                    [self.d_output],
                    Distribution::Uniform(-a, a),
                    device,
                ));
            }
            return Ok(layer);
        };
        if !(std.is_finite() && std > 0.0) {
            return Err(Error::config("std", std, "a positive finite number"));
        }
        // Each core N(0, σ²) with σ^{2d} Π r_k = std².
        let l = self.layout()?;
        let m = TtMatrix::random(&l.rows, &l.cols, self.rank, std * std, device)?;
        let flat = Tensor::cat(
            m.cores()
                .iter()
                .map(|c| {
                    let n = c.dims().iter().product::<usize>();
                    c.clone().reshape([n])
                })
                .collect(),
            0,
        );
        Ok(TtLinear {
            cores: Param::from_tensor(flat),
            bias: self
                .bias
                .then(|| Param::from_tensor(Tensor::zeros([self.d_output], device))),
            layout: register(l),
        })
    }

    /// The TT-SVD of a dense layer's weight at this rank (and at most `eps` relative error
    /// when `eps > 0` lowers the ranks further); the bias is copied.
    ///
    /// # Errors
    ///
    /// As [`TtLinearConfig::init`], and when the layer's shape is not `[d_input, d_output]`.
    pub fn init_from(&self, linear: &Linear, eps: f64) -> Result<TtLinear> {
        let l = self.layout()?;
        let w = linear.weight.val();
        let [d_in, d_out] = w.dims();
        if [d_in, d_out] != [self.d_input, self.d_output] {
            return Err(Error::config(
                "linear layer shape",
                format!("[{d_in}, {d_out}]"),
                format!("[{}, {}]", self.d_input, self.d_output),
            ));
        }
        let trunc = Truncation {
            max_rank: Some(self.rank),
            eps,
        };
        let m = TtMatrix::from_dense(w, &l.rows, &l.cols, trunc)?;
        Ok(TtLinear::from_matrix(
            &m,
            linear.bias.as_ref().map(|b| b.val().detach()),
        ))
    }

    /// The configuration that describes the TT-matrix `m`: its widths, largest bond, modes,
    /// and whether a bias comes with it.
    pub fn for_matrix(m: &TtMatrix, bias: bool) -> Self {
        let [d_in, d_out] = m.dims();
        let rank = m.ranks().into_iter().max().unwrap_or(1);
        TtLinearConfig::new(d_in, d_out, rank)
            .with_cores(m.cores().len())
            .with_modes(Some((m.row_modes(), m.col_modes())))
            .with_bias(bias)
    }

    /// The layer of a given TT-matrix weight `m` (and bias): how a decomposition computed
    /// elsewhere ([`TtMatrix::from_dense`], [`TtMatrix::round`]) becomes a layer.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming `d_input`/`d_output` when `m` is not `[d_input, d_output]`,
    /// `rank` when a bond of `m` exceeds it, `modes` when explicit modes differ from `m`'s,
    /// `bias` when its length is not `d_output` or the configuration has none.
    pub fn init_from_matrix(&self, m: &TtMatrix, bias: Option<Tensor<1>>) -> Result<TtLinear> {
        if m.dims() != [self.d_input, self.d_output] {
            return Err(Error::config(
                "d_input/d_output",
                format!("[{}, {}]", self.d_input, self.d_output),
                format!("the TT-matrix's {:?}", m.dims()),
            ));
        }
        let top = m.ranks().into_iter().max().unwrap_or(1);
        if top > self.rank {
            return Err(Error::config(
                "rank",
                self.rank,
                format!("at least the TT-matrix's largest bond {top}"),
            ));
        }
        if let Some((rows, cols)) = &self.modes
            && (rows, cols) != (&m.row_modes(), &m.col_modes())
        {
            return Err(Error::config(
                "modes",
                format!("rows {rows:?}, cols {cols:?}"),
                format!("the TT-matrix's {:?} x {:?}", m.row_modes(), m.col_modes()),
            ));
        }
        match (&bias, self.bias) {
            (Some(b), true) if b.dims() != [self.d_output] => Err(Error::config(
                "bias",
                format!("{:?}", b.dims()),
                format!("[{}]", self.d_output),
            )),
            (Some(_), false) => Err(Error::config(
                "bias",
                "a bias tensor",
                "none: the configuration has bias = false",
            )),
            _ => Ok(TtLinear::from_matrix(m, bias)),
        }
    }
}

/// A linear layer `y = x W + b` whose weight `W [d_input, d_output]` is a TT-matrix.
///
/// # Memory
///
/// Parameters: `Σ_k r_{k-1} m_k n_k r_k` (+ `d_output` bias) instead of `d_input d_output`;
/// for `[384, 1536]`, modes `[6, 8, 8] × [8, 12, 16]`, rank 48: 229,632 + 1,536 instead of
/// 589,824 + 1,536 (39%).
///
/// Kept for backward: the input, `4 n d_input` bytes for `n` rows, exactly what a dense layer
/// keeps (and nothing when another op already keeps the same tensor); the cores are
/// parameters. Backward builds `W` and `dW` (`4 d_input d_output` bytes each) for the moment.
///
/// On backends without memtrain's kernels (see [`crate::device`]; Flex and Cube have them) the
/// forward is [`TtLinear::forward_reference`].
///
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use memtrain::linear::TtLinearConfig;
///
/// let device = Device::flex().autodiff();
/// let layer = TtLinearConfig::new(64, 96, 4).init(&device).unwrap();
/// assert_eq!(layer.param_count(), 4 * 4 * 4 + 16 * 4 * 4 + 4 * 4 * 6 + 96);
/// let x = Tensor::<3>::random([2, 5, 64], Distribution::Normal(0.0, 1.0), &device);
/// let y = layer.forward(x.clone());
/// let dense = layer.to_linear().forward(x);
/// assert!((y - dense).abs().max().into_scalar::<f32>() < 1e-4);
/// ```
#[derive(Module, Debug)]
pub struct TtLinear {
    /// Every core `[r_{k-1}, m_k, n_k, r_k]`, flattened and concatenated in order.
    pub cores: Param<Tensor<1>>,
    /// `[d_output]`.
    pub bias: Option<Param<Tensor<1>>>,
    #[module(skip)]
    layout: u32,
}

impl TtLinear {
    /// A layer with the given TT-matrix weight and bias (checked by
    /// [`TtLinearConfig::init_from_matrix`]).
    fn from_matrix(m: &TtMatrix, bias: Option<Tensor<1>>) -> Self {
        let layout = Layout {
            rows: m.row_modes(),
            cols: m.col_modes(),
            ranks: m.ranks(),
        };
        let flat = Tensor::cat(
            m.cores()
                .iter()
                .map(|c| {
                    let n = c.dims().iter().product::<usize>();
                    c.clone().detach().reshape([n])
                })
                .collect(),
            0,
        );
        TtLinear {
            cores: Param::from_tensor(flat),
            bias: bias.map(Param::from_tensor),
            layout: register(layout),
        }
    }

    fn layout(&self) -> Arc<Layout> {
        registered(self.layout)
    }

    /// The weight as a TT-matrix (views of the parameter: differentiable).
    pub fn matrix(&self) -> TtMatrix {
        let l = self.layout();
        let flat = self.cores.val();
        let mut start = 0;
        let cores = (0..l.rows.len())
            .map(|k| {
                let len = l.core_len(k);
                let c = flat.clone().narrow(0, start, len);
                start += len;
                c.reshape(l.core_dims(k))
            })
            .collect();
        TtMatrix::new(cores).expect("a registered layout is a valid chain")
    }

    /// Ranks `r_0..r_d`.
    pub fn ranks(&self) -> Vec<usize> {
        self.layout().ranks.clone()
    }

    /// `(row modes, column modes)`.
    pub fn modes(&self) -> (Vec<usize>, Vec<usize>) {
        let l = self.layout();
        (l.rows.clone(), l.cols.clone())
    }

    /// Parameters: core entries plus the bias.
    pub fn param_count(&self) -> usize {
        self.layout().param_count() + self.bias.as_ref().map_or(0, |b| b.dims()[0])
    }

    /// The dense equivalent (weight rebuilt from the cores, bias copied).
    pub fn to_linear(&self) -> Linear {
        Linear {
            weight: Param::from_tensor(self.matrix().to_dense().detach()),
            bias: self
                .bias
                .as_ref()
                .map(|b| Param::from_tensor(b.val().detach())),
        }
    }

    /// `[.., d_input]` to `[.., d_output]`, keeping only the input for backward.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let y = if has_kernels(&x.device()) {
            Tensor::from_dispatch(<Dispatch as TtLinearBackend>::tt_linear(
                x.into_dispatch(),
                self.cores.val().into_dispatch(),
                self.layout,
            ))
        } else {
            self.contract(x)
        };
        self.add_bias(y)
    }

    /// The same function by plain autodiff through the core-by-core contraction: the
    /// reference op for tests, and the measure of what the custom backward saves.
    pub fn forward_reference<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let y = self.contract(x);
        self.add_bias(y)
    }

    fn contract<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let mut shape = x.dims();
        let d_in = shape[D - 1];
        let n = shape.iter().product::<usize>() / d_in.max(1);
        let m = self.matrix();
        let y = m
            .left_mul(x.reshape([n, d_in]))
            .expect("the input width is the layer's");
        shape[D - 1] = m.dims()[1];
        y.reshape(shape)
    }

    fn add_bias<const D: usize>(&self, y: Tensor<D>) -> Tensor<D> {
        match &self.bias {
            Some(b) => {
                let mut shape = [1; D];
                shape[D - 1] = b.dims()[0];
                y + b.val().reshape(shape)
            }
            None => y,
        }
    }
}

/// How the blocks' weight matrices are stored: the `weights=` key of a policy SPEC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightsPolicy {
    /// Dense `[d_input, d_output]` matrices.
    #[default]
    Dense,
    /// [`TtLinear`] TT-matrices with three cores and every inner rank `rank` for the MLP's
    /// two linears, or for every linear of the blocks with `all`. A TT layer is never
    /// sketched (`linear=sketch` applies to the dense ones).
    Ttm {
        /// Rank of every inner bond (capped by the unfolding sizes).
        rank: u32,
        /// Attention's linears too, not only the MLP's.
        all: bool,
    },
}

impl WeightsPolicy {
    /// The TT rank of a linear of the MLP (`mlp`) or of attention, if it is a TT-matrix.
    pub fn tt_rank(&self, mlp: bool) -> Option<usize> {
        match *self {
            WeightsPolicy::Ttm { rank, all } if mlp || all => Some(rank as usize),
            _ => None,
        }
    }
}
