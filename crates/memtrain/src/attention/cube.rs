//! The fused attention on burn's Cube backend (wgpu, cuda), FlashAttention-2 style.
//!
//! - Forward ([`flash_forward_kernel`]): one cube per (batch, head, tile of `BLOCK` query
//!   rows), one unit per row. The cube loads the keys and values tile by tile into shared
//!   memory; each unit scores its row against the tile, rescales its running output once per
//!   tile (online softmax), and at the end writes its output row and one log-sum-exp. Causal
//!   cubes stop at their last row's last key. No `[seq, seq]` tensor exists at any time.
//! - Backward: `cubek-attention`'s FlashAttention backward (the prepass `D = rowsum(dO ∘ O)`,
//!   then dQ, then dK and dV), which recomputes the probabilities from the forward's
//!   log-sum-exp. It takes contiguous `[batch, heads, seq, d]` tensors, so the backward
//!   transposes `q`, `k`, `v`, `o` and `dO` into such copies first (transient, backward only).
//!
//! An additive mask, or a dtype other than f32, takes the generic chunked path
//! ([`super::generic`]).

use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{DType, Shape, TensorMetadata};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim};

use super::{FusedAttentionKernel, generic};

/// The most negative score; WGSL rejects an infinite literal, and `exp` of it minus any
/// finite maximum is 0.
const NEG: f32 = -3.0e38;

/// Query rows (units) per cube: 32 rows and a 32-key tile of keys and values in shared memory,
/// `2 · 32 · d · 4` bytes (16 KiB at `d = 64`); 16 for wider heads, within the 32 KiB every
/// device offers.
fn block_for(d: usize) -> usize {
    if d <= 64 { 32 } else { 16 }
}

/// See the module docs. `q`, `k`, `v` are `[b, t, h, d]` views (any strides); `o` is written
/// contiguous `[b, tq, h, d]`, `lse` contiguous `[b, h, tq]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn flash_forward_kernel(
    q: &Tensor<f32>,
    k: &Tensor<f32>,
    v: &Tensor<f32>,
    o: &mut Tensor<f32>,
    lse: &mut Tensor<f32>,
    scale: f32,
    #[comptime] d: usize,
    #[comptime] block: usize,
    #[comptime] causal: bool,
) {
    let heads = q.shape(2);
    let tq = q.shape(1);
    let tk = k.shape(1);
    let bh = CUBE_POS_Y as usize;
    let bi = bh / heads;
    let hi = bh % heads;
    let u = UNIT_POS_X as usize;
    let row0 = CUBE_POS_X as usize * block;
    let row = row0 + u;
    let valid = row < tq;

    let mut ks = Shared::<[f32]>::new_slice(block * d);
    let mut vs = Shared::<[f32]>::new_slice(block * d);
    let mut qr = Array::<f32>::new(d);
    let mut acc = Array::<f32>::new(d);
    let mut sc = Array::<f32>::new(block);

    let q_at = bi * q.stride(0) + usize::min(row, tq - 1) * q.stride(1) + hi * q.stride(2);
    for c in 0..d {
        qr[c] = q[q_at + c * q.stride(3)] * scale;
        acc[c] = f32::new(0.0);
    }
    let mut m = f32::new(NEG);
    let mut l = f32::new(0.0);

    // Keys this cube needs: all, or (causal, aligned bottom-right) up to its last row's.
    let last_row = usize::min(row0 + block, tq) - 1;
    let mut key_end = tk;
    if causal {
        key_end = usize::min(tk, last_row + 1 + tk - tq);
    }
    let mut j0 = 0usize;
    while j0 < key_end {
        let kj = j0 + u;
        if kj < tk {
            let k_at = bi * k.stride(0) + kj * k.stride(1) + hi * k.stride(2);
            let v_at = bi * v.stride(0) + kj * v.stride(1) + hi * v.stride(2);
            for c in 0..d {
                ks[u * d + c] = k[k_at + c * k.stride(3)];
                vs[u * d + c] = v[v_at + c * v.stride(3)];
            }
        }
        sync_cube();
        if valid {
            let n = usize::min(block, key_end - j0);
            let mut tile_max = f32::new(NEG);
            for jj in 0..n {
                let mut s = f32::new(0.0);
                for c in 0..d {
                    s += qr[c] * ks[jj * d + c];
                }
                if causal && j0 + jj + tq > row + tk {
                    s = f32::new(NEG);
                }
                sc[jj] = s;
                tile_max = f32::max(tile_max, s);
            }
            let m_new = f32::max(m, tile_max);
            let correction = f32::exp(m - m_new);
            l *= correction;
            for c in 0..d {
                acc[c] *= correction;
            }
            for jj in 0..n {
                let p = f32::exp(sc[jj] - m_new);
                l += p;
                for c in 0..d {
                    acc[c] += p * vs[jj * d + c];
                }
            }
            m = m_new;
        }
        sync_cube();
        j0 += block;
    }
    if valid {
        let inv = f32::new(1.0) / l;
        let o_at = ((bi * tq + row) * heads + hi) * d;
        for c in 0..d {
            o[o_at + c] = acc[c] * inv;
        }
        lse[(bi * heads + hi) * tq + row] = m + f32::ln(l);
    }
}

fn dims4(t: &CubeTensor) -> [usize; 4] {
    t.shape().dims::<4>()
}

/// The output `[b, tq, h, d]` and log-sum-exp `[b, h, tq]` of f32 attention without a mask.
fn flash_forward(
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    scale: f32,
    causal: bool,
) -> (CubeTensor, CubeTensor) {
    crate::memory::sample();
    let [b, tq, h, d] = dims4(&q);
    let (client, device) = (q.client.clone(), q.device.clone());
    let o = empty_device_contiguous_dtype(
        client.clone(),
        device.clone(),
        Shape::new([b, tq, h, d]),
        DType::F32,
    );
    let lse =
        empty_device_contiguous_dtype(client.clone(), device, Shape::new([b, h, tq]), DType::F32);
    let block = block_for(d);
    flash_forward_kernel::launch(
        &client,
        CubeCount::Static(tq.div_ceil(block) as u32, (b * h) as u32, 1),
        CubeDim::new_1d(block as u32),
        q.into_tensor_arg(),
        k.into_tensor_arg(),
        v.into_tensor_arg(),
        o.clone().into_tensor_arg(),
        lse.clone().into_tensor_arg(),
        scale,
        d,
        block,
        causal,
    );
    crate::memory::sample();
    (o, lse)
}

/// `[b, t, h, d]` to a contiguous `[b, h, t, d]` copy.
fn heads_first(t: CubeTensor) -> CubeTensor {
    into_contiguous(CubeBackend::float_swap_dims(t, 1, 2))
}

/// `(dq, dk, dv)`, each `[b, t, h, d]`, by `cubek-attention`'s FlashAttention backward.
#[allow(clippy::too_many_arguments)]
fn flash_backward(
    q: CubeTensor,
    k: CubeTensor,
    v: CubeTensor,
    o: CubeTensor,
    lse: CubeTensor,
    d_o: CubeTensor,
    scale: f32,
    causal: bool,
) -> (CubeTensor, CubeTensor, CubeTensor) {
    use burn::backend::cubecl::dtype_to_storage_type;
    use cubek_attention::backward::{BackwardConfig, flash_attention_backward};
    use cubek_attention::forward::definition::AttentionGlobalTypes;
    crate::memory::sample();
    let [q, k, v, o, d_o] = [q, k, v, o, d_o].map(heads_first);
    let lse = into_contiguous(lse);
    let (client, device) = (q.client.clone(), q.device.clone());
    let like = |t: &CubeTensor| {
        empty_device_contiguous_dtype(client.clone(), device.clone(), t.shape(), DType::F32)
    };
    let (dq, dk, dv) = (like(&q), like(&k), like(&v));
    let f = dtype_to_storage_type(DType::F32);
    let types = AttentionGlobalTypes {
        query: f,
        key: f,
        value: f,
        mask: dtype_to_storage_type(DType::U8),
        out: f,
    };
    let mut config = BackwardConfig::from_head_dim(dims4(&q)[3]);
    config.scale = scale;
    config.causal = causal;
    flash_attention_backward(
        &client,
        q.binding(),
        k.binding(),
        v.binding(),
        o.binding(),
        lse.binding(),
        d_o.binding(),
        dq.clone().binding(),
        dk.clone().binding(),
        dv.clone().binding(),
        &types,
        config,
    )
    .expect("cubek-attention's backward accepts contiguous f32 [b, h, t, d] tensors");
    crate::memory::sample();
    let back = |t: CubeTensor| CubeBackend::float_swap_dims(t, 1, 2);
    (back(dq), back(dk), back(dv))
}

impl FusedAttentionKernel for CubeBackend {
    fn fused_attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: Option<FloatTensor<Self>>,
        scale: f32,
        causal: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        match (&mask, q.dtype()) {
            (None, DType::F32) => flash_forward(q, k, v, scale, causal),
            _ => generic::forward::<Self>(q, k, v, mask, scale, causal),
        }
    }

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
        match (&mask, q.dtype()) {
            (None, DType::F32) => flash_backward(q, k, v, o, lse, d_o, scale, causal),
            _ => generic::backward::<Self>(q, k, v, mask, o, lse, d_o, scale, causal),
        }
    }
}
