//! Memory-efficient attention: no `[batch, heads, seq, seq]` tensor survives the forward pass.
//!
//! [`fused_attention`] computes `softmax(scale · q kᵀ + mask) v` in tiles of query rows with
//! the whole key range of a row at once (an exact softmax per tile, no running rescale), keeps
//! for backward only `q`, `k`, `v`, the output and one log-sum-exp per row, and recomputes the
//! scores tile by tile in backward (FlashAttention-2's backward: Dao, 2023,
//! <https://arxiv.org/abs/2307.08691>; Rabe & Staats, 2021, <https://arxiv.org/abs/2112.05682>).
//!
//! Three implementations share one autodiff op:
//!
//! - on Flex, a kernel over slices ([`kernel`]): tiles of [`kernel::BLOCK`] query rows, one
//!   rayon task per (batch, head), products by the `gemm` crate, causal tiles skip the hidden
//!   keys entirely;
//! - on burn's Cube backend (features `wgpu`, `cuda`), CubeCL kernels (`cube.rs`): a
//!   FlashAttention-2 forward (key and value tiles in shared memory, online softmax) and
//!   `cubek-attention`'s FlashAttention backward, for f32 without a mask;
//! - the same algorithm written with a backend's own tensor ops in chunks of [`CHUNK`] query
//!   rows ([`generic`]), the default of [`FusedAttentionKernel`]: Cube takes it for a mask or
//!   a dtype other than f32. On a backend without memtrain's kernels (see [`crate::device`])
//!   [`fused_attention`] falls back to [`reference_attention`].
//!
//! Tensors are laid out `[batch, seq, heads, d_head]`, the layout a fused QKV projection
//! produces, so `q`, `k` and `v` can be views into it and the output reshapes to
//! `[batch, seq, d_model]` without a copy.
//!
//! # Memory
//!
//! Kept for backward: `q`, `k`, `v` (views: whatever storage they share is kept once), the
//! output `[b, t, h, dh]` (shared with the next layer's input) and the log-sum-exp
//! `[b, h, t]`: `4 b h t` bytes beyond what a linear layer after it keeps anyway. The plain
//! [`reference_attention`] keeps `4 (3 b h t² + b h t)` bytes on top (scores, their exp, the
//! probabilities, the row sums).
//!
//! ```
//! use burn::tensor::{Device, Distribution, Tensor};
//! use memtrain::attention::{AttentionParams, fused_attention, reference_attention};
//! let device = Device::flex();
//! let [q, k, v] = [0, 1, 2].map(|_| Tensor::<4>::random([2, 10, 3, 8], Distribution::Default, &device));
//! let params = AttentionParams::causal();
//! let fused = fused_attention(q.clone(), k.clone(), v.clone(), None, params);
//! let plain = reference_attention(q, k, v, None, params);
//! assert!(fused.all_close(plain, Some(1e-4), Some(1e-5)));
//! ```

pub mod generic;
pub mod kernel;

use burn::backend::Backend;
use burn::backend::Dispatch;
use burn::backend::TensorMetadata;
use burn::backend::backend_extension;
use burn::backend::tensor::FloatTensor;
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Slice, Tensor};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};

pub use generic::CHUNK;

use serde::{Deserialize, Serialize};

use crate::memory::SavedTensor;

/// How attention is computed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionParams {
    /// Query `i` sees key `j` only when `j <= i + seq_k - seq_q` (the last query sees every
    /// key).
    pub causal: bool,
    /// Multiplies the scores; `None` means `1 / sqrt(d_head)`.
    pub scale: Option<f32>,
}

impl AttentionParams {
    /// Causal, scaled by `1 / sqrt(d_head)`.
    pub fn causal() -> Self {
        AttentionParams {
            causal: true,
            scale: None,
        }
    }

    /// Every query sees every key, scaled by `1 / sqrt(d_head)`.
    pub fn full() -> Self {
        AttentionParams {
            causal: false,
            scale: None,
        }
    }

    fn scale_for(&self, d_head: usize) -> f32 {
        self.scale.unwrap_or(1.0 / (d_head as f32).sqrt())
    }
}

impl Default for AttentionParams {
    fn default() -> Self {
        Self::causal()
    }
}

/// The two halves of the fused op on one backend: the forward with its log-sum-exp, and the
/// recomputing backward. The defaults are the backend-generic [`generic`] path; Flex
/// overrides both with the slice kernel.
pub trait FusedAttentionKernel: Backend {
    /// The output `[b, tq, h, dv]` and the log-sum-exp of every score row `[b, h, tq]`.
    fn fused_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: Option<FloatTensor<Self>>,
        scale: f32,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        generic::forward::<Self>(q, k, v, mask, scale, causal)
    }

    /// Gradients `(dq, dk, dv)` from the forward's output, log-sum-exp and the output
    /// gradient.
    #[allow(clippy::too_many_arguments)]
    fn fused_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: Option<FloatTensor<Self>>,
        o: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        d_o: FloatTensor<Self>,
        scale: f32,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        generic::backward::<Self>(q, k, v, mask, o, lse, d_o, scale, causal)
    }

    /// The gradient of a `[b, t, 3h, dh]` projection whose thirds are `q`, `k` and `v`
    /// ([`fused_attention_qkv`]), from the forward's output and log-sum-exp. The default
    /// concatenates [`FusedAttentionKernel::fused_attention_backward`]'s three gradients;
    /// Flex writes them into one buffer.
    #[allow(clippy::too_many_arguments)]
    fn fused_attention_backward_packed(
        qkv: FloatTensor<Self>,
        o: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        d_o: FloatTensor<Self>,
        heads: usize,
        scale: f32,
        causal: bool,
    ) -> FloatTensor<Self> {
        let [q, k, v] = split_qkv::<Self>(qkv, heads);
        let (dq, dk, dv) =
            Self::fused_attention_backward(q, k, v, None, o, lse, d_o, scale, causal);
        Self::float_cat(vec![dq, dk, dv], 2)
    }
}

/// The `q`, `k` and `v` views of a `[b, t, 3h, dh]` projection.
fn split_qkv<B: Backend>(qkv: FloatTensor<B>, heads: usize) -> [FloatTensor<B>; 3] {
    [0, 1, 2].map(|i| {
        let part = Slice::from(i * heads..(i + 1) * heads);
        B::float_slice(qkv.clone(), &[Slice::full(), Slice::full(), part])
    })
}

#[cfg(memtrain_cube)]
mod cube;
mod flex;

/// The fused attention op as a burn backend extension: routed to Flex for inference and to
/// `Autodiff` for training, where the backward recomputes scores instead of keeping them.
#[backend_extension(Flex, Cube: cfg(memtrain_cube), Autodiff)]
pub trait FusedAttentionBackend: Backend {
    /// Attention without a mask (see [`fused_attention`]).
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
        causal: bool,
    ) -> FloatTensor<Self>;

    /// Causal or full self-attention on a packed `[b, t, 3h, dh]` projection (see
    /// [`fused_attention_qkv`]).
    fn fused_attention_qkv(
        qkv: FloatTensor<Self>,
        heads: u32,
        scale: f32,
        causal: bool,
    ) -> FloatTensor<Self>;

    /// Attention with an additive `[tq, tk]` mask (see [`fused_attention`]).
    fn fused_attention_masked(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        scale: f32,
        causal: bool,
    ) -> FloatTensor<Self>;
}

/// The inference route of the fused op on a backend with a [`FusedAttentionKernel`]: the
/// forward, its log-sum-exp dropped.
macro_rules! fused_attention_inference {
    ($backend:ty) => {
        impl FusedAttentionBackend for $backend {
            fn fused_attention(
                q: FloatTensor<Self>,
                k: FloatTensor<Self>,
                v: FloatTensor<Self>,
                scale: f32,
                causal: bool,
            ) -> FloatTensor<Self> {
                Self::fused_attention_forward(q, k, v, None, scale, causal).0
            }

            fn fused_attention_qkv(
                qkv: FloatTensor<Self>,
                heads: u32,
                scale: f32,
                causal: bool,
            ) -> FloatTensor<Self> {
                let [q, k, v] = split_qkv::<Self>(qkv, heads as usize);
                Self::fused_attention_forward(q, k, v, None, scale, causal).0
            }

            fn fused_attention_masked(
                q: FloatTensor<Self>,
                k: FloatTensor<Self>,
                v: FloatTensor<Self>,
                mask: FloatTensor<Self>,
                scale: f32,
                causal: bool,
            ) -> FloatTensor<Self> {
                Self::fused_attention_forward(q, k, v, Some(mask), scale, causal).0
            }
        }
    };
}

fused_attention_inference!(burn::backend::Flex);
#[cfg(memtrain_cube)]
fused_attention_inference!(burn_cubecl::CubeBackend);

impl<B: Backend + FusedAttentionKernel, C: CheckpointStrategy> FusedAttentionBackend
    for Autodiff<B, C>
{
    fn fused_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
        causal: bool,
    ) -> FloatTensor<Self> {
        tracked::<B, C>(q, k, v, None, scale, causal)
    }

    fn fused_attention_qkv(
        qkv: FloatTensor<Self>,
        heads: u32,
        scale: f32,
        causal: bool,
    ) -> FloatTensor<Self> {
        let heads = heads as usize;
        let op = PackedAttentionBackward {
            heads,
            scale,
            causal,
        };
        let p = qkv.primitive().clone();
        match op.prepare::<C>([qkv.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let [q, k, v] = split_qkv::<B>(p.clone(), heads);
                let (o, lse) = B::fused_attention_forward(q, k, v, None, scale, causal);
                prep.finish((p, o.clone(), lse), o)
            }
            OpsKind::UnTracked(prep) => {
                let [q, k, v] = split_qkv::<B>(p, heads);
                prep.finish(B::fused_attention_forward(q, k, v, None, scale, causal).0)
            }
        }
    }

    fn fused_attention_masked(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: FloatTensor<Self>,
        scale: f32,
        causal: bool,
    ) -> FloatTensor<Self> {
        tracked::<B, C>(q, k, v, Some(mask), scale, causal)
    }
}

#[derive(Debug)]
struct FusedAttentionBackward {
    scale: f32,
    causal: bool,
}

/// What the backward keeps: q, k, v, the mask, the output and the log-sum-exp.
type Saved<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    Option<FloatTensor<B>>,
    FloatTensor<B>,
    FloatTensor<B>,
);

impl<B: Backend + FusedAttentionKernel> Backward<B, 3> for FusedAttentionBackward {
    type State = Saved<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let d_o = grads.consume::<B>(&ops.node);
        let (q, k, v, mask, o, lse) = ops.state;
        let [b, t, h, dh] = q.shape().dims();
        let _profile = profile_scope(&AttnPolicy::Memeff, "backward", b, h, t, dh);
        let (dq, dk, dv) =
            B::fused_attention_backward(q, k, v, mask, o, lse, d_o, self.scale, self.causal);
        for (node, grad) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, grad);
            }
        }
    }
}

/// A profile scope for causal attention over `[b, t, h, dh]`, counting the FLOPs of the
/// causal half of the score matrix (`t (t + 1) / 2` pairs a head): two products forward, five
/// backward (the scores recomputed, `dV`, `dP`, `dQ`, `dK`).
fn profile_scope(
    policy: &AttnPolicy,
    what: &'static str,
    b: usize,
    h: usize,
    t: usize,
    dh: usize,
) -> Option<crate::profile::Scope> {
    let products = if what == "backward" { 5.0 } else { 2.0 };
    let pairs = (t * (t + 1) / 2) as f64;
    crate::profile::scope(
        "attention",
        || match policy {
            AttnPolicy::Exact => format!("{what} (burn)"),
            AttnPolicy::Memeff => what.to_string(),
        },
        || 2.0 * products * (b * h * dh) as f64 * pairs,
    )
}

#[derive(Debug)]
struct PackedAttentionBackward {
    heads: usize,
    scale: f32,
    causal: bool,
}

impl<B: Backend + FusedAttentionKernel> Backward<B, 1> for PackedAttentionBackward {
    /// The packed projection (q, k and v), the output and the log-sum-exp.
    type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let d_o = grads.consume::<B>(&ops.node);
        let (qkv, o, lse) = ops.state;
        if let Some(node) = node {
            let [b, t, h3, dh] = qkv.shape().dims();
            let _profile = profile_scope(&AttnPolicy::Memeff, "backward", b, h3 / 3, t, dh);
            let d = B::fused_attention_backward_packed(
                qkv,
                o,
                lse,
                d_o,
                self.heads,
                self.scale,
                self.causal,
            );
            grads.register::<B>(node.id, d);
        }
    }
}

fn tracked<B: Backend + FusedAttentionKernel, C: CheckpointStrategy>(
    q: FloatTensor<Autodiff<B, C>>,
    k: FloatTensor<Autodiff<B, C>>,
    v: FloatTensor<Autodiff<B, C>>,
    mask: Option<FloatTensor<Autodiff<B, C>>>,
    scale: f32,
    causal: bool,
) -> FloatTensor<Autodiff<B, C>> {
    // The mask is a constant: its gradient is never needed.
    let mask = mask.map(|m| m.primitive().clone());
    let op = FusedAttentionBackward { scale, causal };
    let (qp, kp, vp) = (
        q.primitive().clone(),
        k.primitive().clone(),
        v.primitive().clone(),
    );
    match op
        .prepare::<C>([q.node(), k.node(), v.node()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (o, lse) = B::fused_attention_forward(
                qp.clone(),
                kp.clone(),
                vp.clone(),
                mask.clone(),
                scale,
                causal,
            );
            prep.finish((qp, kp, vp, mask, o.clone(), lse), o)
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(B::fused_attention_forward(qp, kp, vp, mask, scale, causal).0)
        }
    }
}

fn check_shapes(
    q: &Tensor<4>,
    k: &Tensor<4>,
    v: &Tensor<4>,
    mask: Option<&Tensor<2>>,
    params: &AttentionParams,
) {
    let ([b, tq, h, dh], [bk, tk, hk, dk], [bv, tv, hv, _]) = (q.dims(), k.dims(), v.dims());
    assert!(
        b == bk && b == bv && h == hk && h == hv && tk == tv && dh == dk,
        "attention shapes disagree: q {:?}, k {:?}, v {:?} (as [batch, seq, heads, d_head])",
        q.dims(),
        k.dims(),
        v.dims()
    );
    assert!(
        !params.causal || tq <= tk,
        "causal attention needs seq_q {tq} <= seq_k {tk}"
    );
    if let Some(m) = mask {
        assert_eq!(m.dims(), [tq, tk], "the mask must be [seq_q, seq_k]");
    }
}

/// Memory-efficient attention: `q [b, tq, h, dh]`, `k [b, tk, h, dh]`, `v [b, tk, h, dv]`,
/// an optional additive `mask [tq, tk]` (the same for every batch and head; `-inf` hides a
/// key), to `[b, tq, h, dv]`.
///
/// Gradients flow to `q`, `k` and `v`; the mask is treated as a constant. A query row whose
/// keys are all hidden gets output 0 on Flex (the plain softmax would give NaN).
///
/// The op is routed on Flex and on burn's Cube backend (wgpu, cuda), with or without autodiff;
/// see the [module documentation](self) for which implementation runs where. On other
/// backends this function falls back to [`reference_attention`].
///
/// # Memory
///
/// See the [module documentation](self): nothing quadratic in the sequence is kept.
///
/// # Panics
///
/// When the shapes disagree (the message names them), or a causal call has more queries than
/// keys.
pub fn fused_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<2>>,
    params: AttentionParams,
) -> Tensor<4> {
    check_shapes(&q, &k, &v, mask.as_ref(), &params);
    if !crate::has_kernels(&q.device()) {
        return reference_attention(q, k, v, mask, params);
    }
    let scale = params.scale_for(q.dims()[3]);
    let (q, k, v) = (q.into_dispatch(), k.into_dispatch(), v.into_dispatch());
    Tensor::from_dispatch(match mask {
        None => <Dispatch as FusedAttentionBackend>::fused_attention(q, k, v, scale, params.causal),
        Some(m) => <Dispatch as FusedAttentionBackend>::fused_attention_masked(
            q,
            k,
            v,
            m.into_dispatch(),
            scale,
            params.causal,
        ),
    })
}

/// [`fused_attention`] for self-attention on the packed output of a fused QKV projection:
/// `qkv [b, t, 3h, dh]` holds `q` in heads `0..h`, `k` in `h..2h` and `v` in `2h..3h`; returns
/// `[b, t, h, dh]`. The same forward, kept tensors and gradients as [`fused_attention`] on the
/// three slices, but the backward writes the gradient of `qkv` into one buffer (on Flex, over
/// the kept projection itself when nothing else holds it, so the backward allocates nothing of
/// its size): slicing the projection under autodiff instead makes burn build a zero-filled
/// `[b, t, 3h, dh]` gradient for each slice and add them up.
///
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use memtrain::attention::{AttentionParams, fused_attention, fused_attention_qkv};
/// let device = Device::flex();
/// let qkv = Tensor::<4>::random([2, 10, 3 * 4, 8], Distribution::Default, &device);
/// let part = |i: usize| qkv.clone().slice([0..2, 0..10, 4 * i..4 * (i + 1), 0..8]);
/// let packed = fused_attention_qkv(qkv.clone(), 4, AttentionParams::causal());
/// let sliced = fused_attention(part(0), part(1), part(2), None, AttentionParams::causal());
/// assert!(packed.all_close(sliced, Some(1e-5), Some(1e-6)));
/// ```
///
/// # Panics
///
/// When the third axis is not `3 heads`.
pub fn fused_attention_qkv(qkv: Tensor<4>, heads: usize, params: AttentionParams) -> Tensor<4> {
    let [b, t, three_h, dh] = qkv.dims();
    assert_eq!(
        three_h,
        3 * heads,
        "a packed projection has 3 x {heads} heads on its third axis, got {three_h}"
    );
    if !crate::has_kernels(&qkv.device()) {
        let part = |i: usize| {
            qkv.clone()
                .slice([0..b, 0..t, i * heads..(i + 1) * heads, 0..dh])
        };
        return reference_attention(part(0), part(1), part(2), None, params);
    }
    let scale = params.scale_for(dh);
    Tensor::from_dispatch(<Dispatch as FusedAttentionBackend>::fused_attention_qkv(
        qkv.into_dispatch(),
        heads as u32,
        scale,
        params.causal,
    ))
}

/// Plain attention, as burn-nn's `MultiHeadAttention` computes it (matmul, scale, additive
/// mask, softmax, matmul), in the layout of [`fused_attention`]: the oracle it is tested
/// against, and the `attn=exact` policy.
///
/// # Memory
///
/// Under autodiff it keeps the scores minus their row maximum, their exponential and the
/// probabilities (`[b, h, tq, tk]` each) and the row sums `[b, h, tq, 1]`, besides its inputs.
pub fn reference_attention(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<Tensor<2>>,
    params: AttentionParams,
) -> Tensor<4> {
    check_shapes(&q, &k, &v, mask.as_ref(), &params);
    let ([_, tq, _, dh], tk) = (q.dims(), k.dims()[1]);
    let device = q.device();
    let (q, k, v) = (q.swap_dims(1, 2), k.swap_dims(1, 2), v.swap_dims(1, 2));
    let mut scores = q.matmul(k.transpose()).mul_scalar(params.scale_for(dh));
    if let Some(mask) = mask {
        scores = scores + mask.unsqueeze::<4>();
    }
    if params.causal {
        scores = scores + causal_bias(tq, tk, &device).unsqueeze::<4>();
    }
    softmax(scores, 3).matmul(v).swap_dims(1, 2)
}

/// `[tq, tk]` additive mask: 0 where query `i` may see key `j` (`j <= i + tk - tq`), -inf
/// elsewhere.
pub fn causal_bias(tq: usize, tk: usize, device: &Device) -> Tensor<2> {
    Tensor::<1>::from_floats(generic::causal_rows(0, tq, tq, tk).as_slice(), device)
        .reshape([tq, tk])
}

/// How causal self-attention is computed: the `attn=` key of a policy SPEC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttnPolicy {
    /// [`reference_attention`]: matmul, scale, causal mask, softmax, matmul, as burn-nn's
    /// `MultiHeadAttention` computes it; keeps three `[batch, heads, seq, seq]` tensors.
    #[default]
    Exact,
    /// [`fused_attention`]: tiled, keeps one log-sum-exp per query row instead.
    Memeff,
}

impl AttnPolicy {
    /// Causal attention: `q, k, v: [batch, seq, heads, d_head]` to `[batch, seq, heads, d_head]`.
    pub fn forward(&self, q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
        let [b, t, h, dh] = q.dims();
        let _profile = profile_scope(self, "forward", b, h, t, dh);
        let params = AttentionParams::causal();
        match self {
            AttnPolicy::Exact => reference_attention(q, k, v, None, params),
            AttnPolicy::Memeff => fused_attention(q, k, v, None, params),
        }
    }

    /// Causal self-attention on a fused projection `qkv: [batch, seq, 3 heads, d_head]` (`q`,
    /// `k`, `v` in that order) to `[batch, seq, heads, d_head]`. Under `Memeff` the backward
    /// writes the projection's gradient in one buffer ([`fused_attention_qkv`]).
    pub fn forward_qkv(&self, qkv: Tensor<4>, heads: usize) -> Tensor<4> {
        let [b, t, _, dh] = qkv.dims();
        let _profile = profile_scope(self, "forward", b, heads, t, dh);
        match self {
            AttnPolicy::Exact => {
                let part = |i: usize| {
                    qkv.clone()
                        .slice([0..b, 0..t, i * heads..(i + 1) * heads, 0..dh])
                };
                self.forward(part(0), part(1), part(2))
            }
            AttnPolicy::Memeff => fused_attention_qkv(qkv, heads, AttentionParams::causal()),
        }
    }

    /// What the attention core keeps for backward, `b` batch, `h` heads, `t` seq, besides
    /// the projection it reads (kept by its own op) and its output (kept by the next linear).
    ///
    /// burn's softmax keeps its input minus the row max (exp's input), the exp, the row sums
    /// and the probabilities (the `P V` matmul's input); the fused op one log-sum-exp a row.
    pub fn saved(&self, b: usize, h: usize, t: usize) -> Vec<SavedTensor> {
        match self {
            AttnPolicy::Exact => vec![
                SavedTensor::f32("softmax: scores minus row max (exp input)", &[b, h, t, t]),
                SavedTensor::f32("softmax: exp of the scores", &[b, h, t, t]),
                SavedTensor::f32("softmax: row sums", &[b, h, t, 1]),
                SavedTensor::f32("attention: probabilities (PV matmul input)", &[b, h, t, t]),
            ],
            AttnPolicy::Memeff => vec![SavedTensor::f32(
                "fused attention: log-sum-exp per row",
                &[b, h, t],
            )],
        }
    }

    /// Whether the core keeps its output for backward (which the next linear keeps anyway).
    pub fn keeps_output(&self) -> bool {
        *self == AttnPolicy::Memeff
    }
}
