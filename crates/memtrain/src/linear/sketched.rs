//! [`SketchedLinear`]: a linear layer that keeps a random sketch of its input for backward.
//!
//! "Memory-Efficient Backpropagation through Large Linear Layers"
//! (Bershatsky, Mikhalev, Katrutsa, Gusak, Merkulov, Oseledets,
//! <https://arxiv.org/abs/2201.13195>). A linear layer `Y = X W + b` (`X: [n, d_in]`, `n` the
//! rows of all leading axes) keeps `X` only to form `dW = Xᵀ dY`. The sketched layer keeps
//! `S X` instead, with a random `S: [k, n]`, `k = ceil(ratio · n)`, `E[Sᵀ S] = I`, and forms
//! `dW ≈ (S X)ᵀ (S dY)`, regenerating `S` from its seed in backward. `dX = dY Wᵀ` and `db`
//! stay exact; `dW` is unbiased.
//!
//! The seed of a call is a hash of the layer's salt and a few values of its input, so a run
//! replays the same sketches after a resume, and no sketch is ever stored.

use burn::backend::backend_extension;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata};
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::{Device, Shape, Tensor, TensorData};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::has_kernels;

/// How the sketch `S` is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SketchKind {
    /// Entries N(0, 1/k).
    Gaussian,
    /// Entries ±1/√k.
    Rademacher,
    /// `k` distinct rows of `X` sampled uniformly without replacement, scaled by `√(n/k)`:
    /// `S X` costs a gather, not a product. Sampling without replacement multiplies the
    /// variance of uniform sampling with replacement by `(n - k)/(n - 1)`: 0.75 at ratio 0.25.
    Rows,
}

impl SketchKind {
    /// Every kind, in code order.
    pub const ALL: [SketchKind; 3] = [
        SketchKind::Gaussian,
        SketchKind::Rademacher,
        SketchKind::Rows,
    ];

    /// The name in a policy SPEC.
    pub fn name(self) -> &'static str {
        match self {
            SketchKind::Gaussian => "gaussian",
            SketchKind::Rademacher => "rademacher",
            SketchKind::Rows => "rows",
        }
    }
}

/// Rows of the sketch for `n` input rows at `ratio`.
pub fn sketch_rows(n: usize, ratio: f64) -> usize {
    ((ratio * n as f64).ceil() as usize).clamp(1, n.max(1))
}

/// The sketch of one call, regenerated from its seed.
enum Sketch {
    Dense(Vec<f32>),
    Rows(Vec<i64>, f32),
}

fn draw(kind: SketchKind, k: usize, n: usize, seed: u64) -> Sketch {
    let mut rng = StdRng::seed_from_u64(seed);
    let scale = 1.0 / (k as f64).sqrt();
    match kind {
        SketchKind::Gaussian => Sketch::Dense(
            (0..k * n)
                .map(|_| {
                    // Box-Muller.
                    let (u, v): (f64, f64) =
                        (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
                    ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos() * scale) as f32
                })
                .collect(),
        ),
        SketchKind::Rademacher => Sketch::Dense(
            (0..k * n)
                .map(|_| {
                    if rng.random::<bool>() {
                        scale as f32
                    } else {
                        -scale as f32
                    }
                })
                .collect(),
        ),
        SketchKind::Rows => Sketch::Rows(
            rand::seq::index::sample(&mut rng, n, k)
                .into_iter()
                .map(|i| i as i64)
                .collect(),
            ((n as f64) / (k as f64)).sqrt() as f32,
        ),
    }
}

/// `S m` for `m: [n, c]`.
fn apply<B: Backend>(sketch: &Sketch, m: FloatTensor<B>, k: usize, n: usize) -> FloatTensor<B> {
    let device = m.device();
    match sketch {
        Sketch::Dense(s) => {
            let s = B::float_from_data(TensorData::new(s.clone(), [k, n]), &device);
            let s = B::float_cast(s, m.dtype().into());
            B::float_matmul(s, m)
        }
        Sketch::Rows(rows, scale) => {
            let idx = B::int_from_data(TensorData::new(rows.clone(), [k]), &device);
            B::float_mul_scalar(B::float_select(m, 0, idx), (*scale).into())
        }
    }
}

fn flat<B: Backend>(x: FloatTensor<B>) -> (FloatTensor<B>, usize, usize) {
    let (n, d) = crate::rows_and_width(&x.shape());
    (B::float_reshape(x, Shape::from(vec![n, d])), n, d)
}

/// The sketched linear op as a burn backend extension. `kind` indexes [`SketchKind::ALL`].
#[backend_extension(Flex, Cube: cfg(memtrain_cube), Autodiff)]
pub trait SketchedLinearBackend: Backend {
    /// `x w + b`, keeping `S x` for the weight gradient.
    fn sketched_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        ratio: f32,
        kind: u32,
        seed: u64,
    ) -> FloatTensor<Self>;
}

fn forward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    bias: FloatTensor<B>,
) -> FloatTensor<B> {
    let mut shape = x.shape();
    let (x2, _, _) = flat::<B>(x);
    let d_out = weight.shape()[1];
    let y = B::float_add(
        B::float_matmul(x2, weight),
        B::float_reshape(bias, Shape::from(vec![1, d_out])),
    );
    let last = shape.num_dims() - 1;
    shape[last] = d_out;
    B::float_reshape(y, shape)
}

impl SketchedLinearBackend for Flex {
    fn sketched_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        _ratio: f32,
        _kind: u32,
        _seed: u64,
    ) -> FloatTensor<Self> {
        forward::<Self>(x, weight, bias)
    }
}

#[cfg(memtrain_cube)]
impl SketchedLinearBackend for burn_cubecl::CubeBackend {
    fn sketched_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        _ratio: f32,
        _kind: u32,
        _seed: u64,
    ) -> FloatTensor<Self> {
        forward::<Self>(x, weight, bias)
    }
}

#[derive(Debug)]
struct SketchedBackward {
    kind: SketchKind,
    seed: u64,
    k: usize,
    n: usize,
}

/// Kept for backward: `S x` `[k, d_in]` and the weight (a parameter: shared, free).
type Saved<B> = (FloatTensor<B>, FloatTensor<B>);

impl<B: Backend> Backward<B, 3> for SketchedBackward {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (sx, weight) = ops.state;
        let y_shape = dy.shape();
        let (dy2, n, d_out) = flat::<B>(dy);
        if let Some(node) = node_b {
            let db = B::float_reshape(B::float_sum_dim(dy2.clone(), 0), Shape::from(vec![d_out]));
            grads.register::<B>(node.id, db);
        }
        if let Some(node) = node_w {
            let sketch = draw(self.kind, self.k, self.n, self.seed);
            let sdy = apply::<B>(&sketch, dy2.clone(), self.k, n);
            grads.register::<B>(node.id, B::float_matmul(B::float_transpose(sx), sdy));
        }
        if let Some(node) = node_x {
            let d_in = weight.shape()[0];
            let dx = B::float_matmul(dy2, B::float_transpose(weight));
            let mut shape = y_shape;
            let last = shape.num_dims() - 1;
            shape[last] = d_in;
            grads.register::<B>(node.id, B::float_reshape(dx, shape));
        }
    }
}

impl<B: Backend, C: CheckpointStrategy> SketchedLinearBackend for Autodiff<B, C> {
    fn sketched_linear(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        ratio: f32,
        kind: u32,
        seed: u64,
    ) -> FloatTensor<Self> {
        let (xp, wp, bp) = (
            x.primitive().clone(),
            weight.primitive().clone(),
            bias.primitive().clone(),
        );
        let (n, _) = crate::rows_and_width(&xp.shape());
        let k = sketch_rows(n, f64::from(ratio));
        let op = SketchedBackward {
            kind: SketchKind::ALL[kind as usize],
            seed,
            k,
            n,
        };
        match op
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = forward::<B>(xp.clone(), wp.clone(), bp);
                let (x2, _, _) = flat::<B>(xp);
                let sx = apply::<B>(&draw(SketchKind::ALL[kind as usize], k, n, seed), x2, k, n);
                prep.finish((sx, wp), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(forward::<B>(xp, wp, bp)),
        }
    }
}

/// Configuration of a [`SketchedLinear`].
///
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use memtrain::linear::{SketchKind, SketchedLinearConfig};
/// let device = Device::flex().autodiff();
/// let layer = SketchedLinearConfig::new(8, 4, 0.5)
///     .with_kind(SketchKind::Rows)
///     .init(&device)
///     .unwrap();
/// let x = Tensor::<2>::random([6, 8], Distribution::Default, &device);
/// assert_eq!(layer.forward(x).dims(), [6, 4]);
/// assert!(SketchedLinearConfig::new(8, 4, 1.5).init(&device).is_err());
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct SketchedLinearConfig {
    /// Input width.
    pub d_input: usize,
    /// Output width.
    pub d_output: usize,
    /// Sketch rows per input row, in `(0, 1]`.
    pub ratio: f64,
    /// How the sketch is drawn.
    #[config(default = "SketchKind::Gaussian")]
    pub kind: SketchKind,
    /// Mixed into every call's sketch seed, so that layers draw different sketches.
    #[config(default = 0)]
    pub salt: u64,
    /// How [`SketchedLinearConfig::init`] draws the weight (the bias starts at zero).
    #[config(default = "Initializer::Normal { mean: 0.0, std: 0.02 }")]
    pub initializer: Initializer,
}

impl SketchedLinearConfig {
    fn check(&self) -> Result<()> {
        if !(self.ratio > 0.0 && self.ratio <= 1.0) {
            return Err(Error::config("ratio", self.ratio, "a number in (0, 1]"));
        }
        for (name, v) in [("d_input", self.d_input), ("d_output", self.d_output)] {
            if v == 0 {
                return Err(Error::config(name, 0, "a positive width"));
            }
        }
        Ok(())
    }

    /// A layer with the weight drawn by `initializer` and a zero bias.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming `ratio` outside `(0, 1]` or a zero width.
    pub fn init(&self, device: &Device) -> Result<SketchedLinear> {
        self.check()?;
        let linear = LinearConfig::new(self.d_input, self.d_output)
            .with_initializer(self.initializer.clone())
            .init(device);
        let bias = Param::from_tensor(Tensor::zeros([self.d_output], device));
        self.init_from(Linear {
            weight: linear.weight,
            bias: Some(bias),
        })
    }

    /// Takes over the weights of a burn `Linear` (a zero bias when it has none).
    ///
    /// # Errors
    ///
    /// As [`SketchedLinearConfig::init`], and [`Error::Config`] naming `d_input`/`d_output`
    /// when the layer's widths differ.
    pub fn init_from(&self, linear: Linear) -> Result<SketchedLinear> {
        self.check()?;
        // `lazy_shape` keeps a lazily initialised weight lazy, so a model built with sketched
        // layers draws its weights in the same order, from the same seed, as an exact one.
        let shape = linear.weight.lazy_shape();
        let (d_in, d_out) = (shape[0], shape[1]);
        if [d_in, d_out] != [self.d_input, self.d_output] {
            return Err(Error::config(
                "d_input/d_output",
                format!("[{}, {}]", self.d_input, self.d_output),
                format!("the layer's [{d_in}, {d_out}]"),
            ));
        }
        let bias = match linear.bias {
            Some(b) => b,
            None => Param::from_tensor(Tensor::zeros([d_out], &linear.weight.device())),
        };
        Ok(SketchedLinear {
            weight: linear.weight,
            bias,
            ratio: self.ratio,
            kind: self.kind,
            salt: self.salt,
        })
    }
}

/// A linear layer `y = x W + b` (`W: [d_input, d_output]`, burn's layout) whose weight
/// gradient comes from a random sketch of its input.
///
/// # Memory
///
/// Kept for backward: `S x`, `4 k d_input` bytes with `k = ceil(ratio · n)` for `n` input rows,
/// instead of the input's `4 n d_input` (a saving only where nothing else keeps the input).
/// The sketch itself is regenerated from a seed, never stored.
///
/// On backends without memtrain's kernels (see [`crate::device`]; Flex and Cube have them)
/// the layer computes the exact gradient (no saving).
#[derive(Module, Debug)]
pub struct SketchedLinear {
    /// `[d_input, d_output]`.
    pub weight: Param<Tensor<2>>,
    /// `[d_output]`.
    pub bias: Param<Tensor<1>>,
    #[module(skip)]
    ratio: f64,
    #[module(skip)]
    kind: SketchKind,
    #[module(skip)]
    salt: u64,
}

impl SketchedLinear {
    /// The same layer drawing other sketches: `salt` enters every call's seed.
    pub fn with_salt(mut self, salt: u64) -> Self {
        self.salt = salt;
        self
    }

    /// The weights as a burn `Linear`.
    pub fn into_linear(self) -> Linear {
        Linear {
            weight: self.weight,
            bias: Some(self.bias),
        }
    }

    /// `[.., d_input]` to `[.., d_output]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let (w, b) = (self.weight.val(), self.bias.val());
        if !has_kernels(&x.device()) {
            let [_, d_out] = w.dims();
            let mut shape = [1; D];
            shape[D - 1] = d_out;
            return x.matmul(w.unsqueeze()) + b.reshape(shape);
        }
        let seed = self.seed_for(&x);
        let kind = SketchKind::ALL
            .iter()
            .position(|k| *k == self.kind)
            .expect("listed") as u32;
        Tensor::from_dispatch(<Dispatch as SketchedLinearBackend>::sketched_linear(
            x.into_dispatch(),
            w.into_dispatch(),
            b.into_dispatch(),
            self.ratio as f32,
            kind,
            seed,
        ))
    }

    /// The call's seed: the layer's salt and a hash of up to 16 input values.
    fn seed_for<const D: usize>(&self, x: &Tensor<D>) -> u64 {
        let n = x.shape().num_elements();
        let probe = x.clone().reshape([n]).narrow(0, 0, n.min(16));
        let mut h = self.salt ^ 0x9E37_79B9_7F4A_7C15;
        for v in probe.into_data().iter::<f32>() {
            h = (h ^ u64::from(v.to_bits())).wrapping_mul(0x0100_0000_01b3);
        }
        h
    }
}
