//! [`FactoredLinear`]: a linear layer whose weight is kept as the factors of a
//! decomposition ([`crate::decompose`]) and applied in factored form, never rebuilt.
//!
//! - a chain `W = F₁ F₂ … F_k` (truncated SVD: two factors; Tucker-2 of a linear: three,
//!   `U₁ core U₂ᵀ`) runs as `k` thin matmuls `((x F₁) F₂) … F_k`;
//! - a CP decomposition of the weight read as the order-4 tensor `[o₁, o₂, i₁, i₂]`
//!   ([`crate::decompose::cp_modes`] of `[d_output, d_input]`) contracts the input mode by
//!   mode: `i₂`, then `i₁`, then `o₁`, then `o₂`.
//!
//! Both are plain burn ops, so autodiff fine-tunes the factors.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::decompose::{Cp, QuantGrid};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// How a [`FactoredLinear`]'s factors make its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FactoredKind {
    /// `W [d_input, d_output] = F₁ F₂ … F_k`, factor `j` `[r_{j-1}, r_j]`.
    Chain,
    /// `Wᵀ [d_output, d_input]` read as `[o₁, o₂, i₁, i₂]` is `Σ_r a_r ∘ b_r ∘ c_r ∘ d_r`,
    /// the factors `[o₁, R]`, `[o₂, R]`, `[i₁, R]`, `[i₂, R]` in that order.
    Cp,
}

/// A linear layer `y = x W + b` with `W [d_input, d_output]` held as factors.
///
/// # Memory
///
/// Parameters: the factors' elements (`r (d_input + d_output)` for an SVD chain,
/// `r (d_input + d_output) + r²` for Tucker-2, `R (o₁ + o₂ + i₁ + i₂)` for CP) plus the bias.
/// Autodiff keeps each intermediate product for backward: `[n, r]` per chain link, and for
/// CP `[n, i₁, R]`, `[n, R]` and `[n, o₁, R]` for `n` rows.
///
/// Built by [`FactoredLinearConfig`].
#[derive(Module, Debug)]
pub struct FactoredLinear {
    /// The factors, as [`FactoredKind`] says.
    pub factors: Vec<Param<Tensor<2>>>,
    /// `[d_output]`.
    pub bias: Option<Param<Tensor<1>>>,
    #[module(skip)]
    kind: FactoredKind,
    /// The grid the factors lie on, for a quantized CP ([`FactoredLinear::with_grid`]).
    #[module(skip)]
    grid: Option<QuantGrid>,
}

/// Configuration of a [`FactoredLinear`]: what its factors make.
///
/// [`FactoredLinearConfig::init_from`] builds the layer from factors a decomposition returned;
/// [`FactoredLinearConfig::init`] builds zero factors of given shapes, the skeleton a saved
/// layer loads into.
///
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use memtrain::linear::{FactoredKind, FactoredLinearConfig};
///
/// let device = Device::flex();
/// let a = Tensor::<2>::random([8, 3], Distribution::Normal(0.0, 1.0), &device);
/// let b = Tensor::<2>::random([3, 5], Distribution::Normal(0.0, 1.0), &device);
/// let layer = FactoredLinearConfig::new(FactoredKind::Chain).init_from(vec![a, b], None).unwrap();
/// assert_eq!((layer.dims(), layer.param_count()), ([8, 5], 3 * (8 + 5)));
/// let x = Tensor::<2>::random([4, 8], Distribution::Normal(0.0, 1.0), &device);
/// let dense = x.clone().matmul(layer.dense_weight());
/// assert!((layer.forward(x) - dense).abs().max().into_scalar::<f32>() < 1e-4);
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct FactoredLinearConfig {
    /// What the factors make.
    pub kind: FactoredKind,
    /// The factors' shapes, for [`FactoredLinearConfig::init`].
    #[config(default = "Vec::new()")]
    pub factor_shapes: Vec<[usize; 2]>,
    /// Whether [`FactoredLinearConfig::init`] gives the layer a (zero) bias.
    #[config(default = true)]
    pub bias: bool,
}

impl FactoredLinearConfig {
    /// The layer of `factors` (and `bias`), as [`FactoredKind`] reads them: `x F₁ … F_k (+ b)`
    /// for a chain; for CP, the factors of `Wᵀ` read as `[o₁, o₂, i₁, i₂]` (as
    /// [`crate::decompose::cp_als_shaped`] with [`crate::decompose::cp_modes`]`(d_output,
    /// d_input, 2)` returns them; a quantized [`Cp`] contributes its grid values).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming `factors` for no factor, a chain whose inner widths do not
    /// chain, or CP factors that are not four of one rank; naming `bias` when its length is
    /// not the layer's output width.
    pub fn init_from(
        &self,
        factors: Vec<Tensor<2>>,
        bias: Option<Tensor<1>>,
    ) -> Result<FactoredLinear> {
        let dims: Vec<[usize; 2]> = factors.iter().map(Tensor::dims).collect();
        match self.kind {
            FactoredKind::Chain => {
                if dims.is_empty() || dims.windows(2).any(|w| w[0][1] != w[1][0]) {
                    return Err(Error::config(
                        "factors",
                        format!("{dims:?}"),
                        "a chain: at least one factor, each [a, b] followed by one [b, c]",
                    ));
                }
            }
            FactoredKind::Cp => {
                if dims.len() != 4 || dims.iter().any(|d| d[1] != dims[0][1]) {
                    return Err(Error::config(
                        "factors",
                        format!("{dims:?}"),
                        "four CP factors [o1, R], [o2, R], [i1, R], [i2, R]",
                    ));
                }
            }
        }
        FactoredLinear::build(factors, bias, self.kind)
    }

    /// Zero factors of [`FactoredLinearConfig::factor_shapes`] and, with
    /// [`FactoredLinearConfig::bias`], a zero bias, on `device`.
    ///
    /// # Errors
    ///
    /// As [`FactoredLinearConfig::init_from`].
    pub fn init(&self, device: &Device) -> Result<FactoredLinear> {
        let factors: Vec<Tensor<2>> = self
            .factor_shapes
            .iter()
            .map(|&s| Tensor::zeros(s, device))
            .collect();
        let layer = self.init_from(factors, None)?;
        let d_out = layer.dims()[1];
        FactoredLinear::build(
            layer.factors.iter().map(|p| p.val()).collect(),
            self.bias.then(|| Tensor::zeros([d_out], device)),
            self.kind,
        )
    }
}

impl FactoredLinear {
    fn build(factors: Vec<Tensor<2>>, bias: Option<Tensor<1>>, kind: FactoredKind) -> Result<Self> {
        let layer = FactoredLinear {
            factors: factors
                .into_iter()
                .map(|f| Param::from_tensor(f.detach()))
                .collect(),
            bias: None,
            kind,
            grid: None,
        };
        let d_out = layer.dims()[1];
        if let Some(b) = &bias
            && b.dims()[0] != d_out
        {
            return Err(Error::config(
                "bias length",
                b.dims()[0],
                format!("{d_out} (the layer's output width)"),
            ));
        }
        Ok(FactoredLinear {
            bias: bias.map(|b| Param::from_tensor(b.detach())),
            ..layer
        })
    }

    /// The layer with the grid its factors lie on (a quantized [`Cp`]'s
    /// [`grid`](Cp::grid)): factor `k`'s entries are exactly `f32(scales[k] · q)` for integers
    /// `|q| ≤ 2^(bits−1) − 1`, so they can be stored as `bits`-bit codes
    /// ([`FactoredLinear::codes`]) and rebuilt bit for bit.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the factor for a grid with another number of scales, or a
    /// factor entry that is not on its grid.
    pub fn with_grid(self, grid: QuantGrid) -> Result<Self> {
        if grid.scales.len() != self.factors.len() {
            return Err(Error::config(
                "grid",
                format!("{} scales", grid.scales.len()),
                format!("one per factor ({})", self.factors.len()),
            ));
        }
        let layer = FactoredLinear {
            grid: Some(grid),
            ..self
        };
        layer.codes()?;
        Ok(layer)
    }

    /// The grid of a quantized layer ([`FactoredLinear::with_grid`]).
    pub fn grid(&self) -> Option<&QuantGrid> {
        self.grid.as_ref()
    }

    /// Each factor's integer codes `q` (row-major) on the layer's grid, `None` without one.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the factor whose entry is not `f32(scale · q)` for an integer
    /// `|q| ≤ 2^(bits−1) − 1`.
    pub fn codes(&self) -> Result<Option<Vec<Vec<i32>>>> {
        let Some(grid) = &self.grid else {
            return Ok(None);
        };
        let qmax = (1i32 << (grid.bits - 1)) - 1;
        let mut all = Vec::with_capacity(self.factors.len());
        for (k, (f, &scale)) in self.factors.iter().zip(&grid.scales).enumerate() {
            let values: Vec<f32> = f.val().into_data().iter::<f32>().collect();
            let mut codes = Vec::with_capacity(values.len());
            for v in values {
                let q = if scale == 0.0 {
                    0
                } else {
                    (f64::from(v) / scale).round() as i32
                };
                if q.abs() > qmax || grid_value(scale, q) != v {
                    return Err(Error::config(
                        format!("factor {k}"),
                        format!("entry {v}"),
                        format!("a value on the {}-bit grid of step {scale}", grid.bits),
                    ));
                }
                codes.push(q);
            }
            all.push(codes);
        }
        Ok(Some(all))
    }

    /// What the factors are.
    pub fn kind(&self) -> FactoredKind {
        self.kind
    }

    /// Each factor's shape, in order.
    pub fn factor_shapes(&self) -> Vec<[usize; 2]> {
        self.factors
            .iter()
            .map(|f| f.lazy_shape().dims::<2>())
            .collect()
    }

    /// `[d_input, d_output]`.
    pub fn dims(&self) -> [usize; 2] {
        let s = self.factor_shapes();
        match self.kind {
            FactoredKind::Chain => [s[0][0], s[s.len() - 1][1]],
            FactoredKind::Cp => [s[2][0] * s[3][0], s[0][0] * s[1][0]],
        }
    }

    /// The rank: the inner width of an SVD chain (the largest inner width of a longer
    /// chain), the CP rank `R`.
    pub fn rank(&self) -> usize {
        let s = self.factor_shapes();
        match self.kind {
            FactoredKind::Chain => s.iter().map(|d| d[1]).take(s.len() - 1).max().unwrap_or(0),
            FactoredKind::Cp => s[0][1],
        }
    }

    /// Weight parameters (the factors' elements), without the bias.
    pub fn weight_param_count(&self) -> usize {
        self.factor_shapes().iter().map(|[a, b]| a * b).sum()
    }

    /// Parameters: factors plus bias.
    pub fn param_count(&self) -> usize {
        self.weight_param_count() + self.bias.as_ref().map_or(0, |b| b.dims()[0])
    }

    /// The dense weight `[d_input, d_output]` the factors stand for (differentiable).
    pub fn dense_weight(&self) -> Tensor<2> {
        let f: Vec<Tensor<2>> = self.factors.iter().map(|p| p.val()).collect();
        match self.kind {
            FactoredKind::Chain => f
                .into_iter()
                .reduce(|acc, g| acc.matmul(g))
                .expect("a chain has a factor"),
            FactoredKind::Cp => {
                let [d_in, d_out] = self.dims();
                let cp = Cp {
                    factors: f,
                    grid: None,
                };
                cp.full_flat().reshape([d_out, d_in]).transpose()
            }
        }
    }

    /// `[.., d_input]` to `[.., d_output]`, in factored form.
    ///
    /// # Panics
    ///
    /// When the input's last dimension is not `d_input`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let mut shape = x.dims();
        let [d_in, d_out] = self.dims();
        assert_eq!(
            shape[D - 1],
            d_in,
            "FactoredLinear input {shape:?} does not end in d_input {d_in}"
        );
        let n = shape.iter().product::<usize>() / d_in.max(1);
        let x2 = x.reshape([n, d_in]);
        let y = match self.kind {
            FactoredKind::Chain => self.factors.iter().fold(x2, |acc, f| acc.matmul(f.val())),
            FactoredKind::Cp => {
                let s = self.factor_shapes();
                let ([o1, r], [o2, _], [i1, _], [i2, _]) = (s[0], s[1], s[2], s[3]);
                // Σ_{i₂} x[n, i₁, i₂] d[i₂, r], then Σ_{i₁} c[i₁, r]: one value per (row, r).
                let t = x2.reshape([n * i1, i2]).matmul(self.factors[3].val());
                let z =
                    (t.reshape([n, i1, r]) * self.factors[2].val().reshape([1, i1, r])).sum_dim(1); // [n, 1, r]
                let u = z * self.factors[0].val().reshape([1, o1, r]); // [n, o1, r]
                u.reshape([n * o1, r])
                    .matmul(self.factors[1].val().transpose())
                    .reshape([n, o1 * o2])
            }
        };
        shape[D - 1] = d_out;
        let y = y.reshape(shape);
        match &self.bias {
            Some(b) => {
                let mut bshape = [1; D];
                bshape[D - 1] = d_out;
                y + b.val().reshape(bshape)
            }
            None => y,
        }
    }
}

/// The f32 value of code `q` on a grid of step `scale`: `f32(scale · q)`, rounded once from
/// f64, as [`crate::decompose::quantize_to_grid`] makes it.
pub fn grid_value(scale: f64, q: i32) -> f32 {
    (scale * f64::from(q)) as f32
}
