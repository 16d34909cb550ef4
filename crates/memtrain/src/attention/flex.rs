//! Flex: the slice kernel for f32 and f64, the generic path for other float types.

use burn::backend::Flex;
use burn::backend::TensorMetadata;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, TensorData};

use super::kernel::{self, Heads, Params, Real};
use super::{FusedAttentionKernel, generic};

type Prim = FloatTensor<Flex>;

/// The tensor itself when its last axis has unit stride and its strides are non-negative,
/// otherwise a contiguous copy.
fn kernel_ready(t: Prim) -> Prim {
    let l = t.layout();
    let ok = l.strides().last() == Some(&1) && l.strides().iter().all(|&s| s >= 0);
    if ok { t } else { t.to_contiguous() }
}

fn heads<'a, T: Real + bytemuck::Pod + burn::tensor::Element>(t: &'a Prim) -> Heads<'a, T> {
    let l = t.layout();
    let s = l.strides();
    let d = t.shape();
    Heads::new(
        t.storage::<T>(),
        l.start_offset(),
        [s[0] as usize, s[1] as usize, s[2] as usize],
        [d[0], d[1], d[2], d[3]],
    )
}

fn mask_slice<T: bytemuck::Pod + burn::tensor::Element>(mask: &Option<Prim>) -> Option<&[T]> {
    mask.as_ref()
        .map(|m| m.as_slice::<T>().expect("the mask was made contiguous"))
}

fn to_prim<T: burn::tensor::Element>(data: Vec<T>, shape: [usize; 4], like: &Prim) -> Prim {
    Flex::float_from_data(TensorData::new(data, shape.to_vec()), &like.device())
}

fn forward_in<T: Real + bytemuck::Pod + burn::tensor::Element>(
    q: Prim,
    k: Prim,
    v: Prim,
    mask: Option<Prim>,
    scale: f32,
    causal: bool,
) -> (Prim, Prim) {
    let (q, k, v) = (kernel_ready(q), kernel_ready(k), kernel_ready(v));
    let mask = mask.map(|m| m.to_contiguous());
    let p = Params {
        scale: T::from_f64(scale as f64),
        causal,
        mask: mask_slice::<T>(&mask),
    };
    let ([b, tq, h, _], dv) = (heads::<T>(&q).dims(), heads::<T>(&v).dims()[3]);
    let (o, lse) = kernel::forward(heads::<T>(&q), heads::<T>(&k), heads::<T>(&v), p);
    let lse = Flex::float_from_data(TensorData::new(lse, vec![b, h, tq]), &q.device());
    (to_prim(o, [b, tq, h, dv], &q), lse)
}

#[allow(clippy::too_many_arguments)]
fn backward_in<T: Real + bytemuck::Pod + burn::tensor::Element>(
    q: Prim,
    k: Prim,
    v: Prim,
    mask: Option<Prim>,
    o: Prim,
    lse: Prim,
    d_o: Prim,
    scale: f32,
    causal: bool,
) -> (Prim, Prim, Prim) {
    let (q, k, v, o, d_o) = (
        kernel_ready(q),
        kernel_ready(k),
        kernel_ready(v),
        kernel_ready(o),
        kernel_ready(d_o),
    );
    let (mask, lse) = (mask.map(|m| m.to_contiguous()), lse.to_contiguous());
    let p = Params {
        scale: T::from_f64(scale as f64),
        causal,
        mask: mask_slice::<T>(&mask),
    };
    let (hq, hk, hv) = (heads::<T>(&q), heads::<T>(&k), heads::<T>(&v));
    let lse_s = lse.as_slice::<T>().expect("contiguous");
    let (dq, dk, dv) = kernel::backward(hq, hk, hv, heads::<T>(&o), heads::<T>(&d_o), lse_s, p);
    (
        to_prim(dq, hq.dims(), &q),
        to_prim(dk, hk.dims(), &q),
        to_prim(dv, hv.dims(), &q),
    )
}

fn backward_packed_in<T: Real + bytemuck::Pod + burn::tensor::Element>(
    qkv: Prim,
    o: Prim,
    lse: Prim,
    d_o: Prim,
    n_heads: usize,
    scale: f32,
    causal: bool,
) -> Prim {
    let [b, t, three_h, dh] = qkv.shape().dims();
    let (o, d_o, lse) = (kernel_ready(o), kernel_ready(d_o), lse.to_contiguous());
    let p = Params {
        scale: T::from_f64(scale as f64),
        causal,
        mask: None,
    };
    let lse_s = lse.as_slice::<T>().expect("contiguous");
    // The kept projection is usually held by this backward alone: then its gradient is
    // written over it.
    let mut qkv = qkv;
    let whole = qkv.is_contiguous()
        && qkv.layout().start_offset() == 0
        && qkv.bytes().len() == qkv.shape().num_elements() * std::mem::size_of::<T>();
    if whole && let Some(buffer) = qkv.try_storage_mut::<T>() {
        kernel::backward_packed_in_place(
            buffer,
            [b, t, n_heads, dh],
            heads::<T>(&o),
            heads::<T>(&d_o),
            lse_s,
            p,
        );
        return qkv;
    }
    let qkv = kernel_ready(qkv);
    let part = |i: usize| {
        let l = qkv.layout();
        let st = l.strides();
        Heads::new(
            qkv.storage::<T>(),
            l.start_offset() + i * n_heads * st[2] as usize,
            [st[0] as usize, st[1] as usize, st[2] as usize],
            [b, t, n_heads, dh],
        )
    };
    let d = kernel::backward_packed(
        part(0),
        part(1),
        part(2),
        heads::<T>(&o),
        heads::<T>(&d_o),
        lse_s,
        p,
    );
    to_prim(d, [b, t, three_h, dh], &qkv)
}

impl FusedAttentionKernel for Flex {
    fn fused_attention_forward(
        q: Prim,
        k: Prim,
        v: Prim,
        mask: Option<Prim>,
        scale: f32,
        causal: bool,
    ) -> (Prim, Prim) {
        match q.dtype() {
            DType::F32 => forward_in::<f32>(q, k, v, mask, scale, causal),
            DType::F64 => forward_in::<f64>(q, k, v, mask, scale, causal),
            _ => generic::forward::<Flex>(q, k, v, mask, scale, causal),
        }
    }

    fn fused_attention_backward(
        q: Prim,
        k: Prim,
        v: Prim,
        mask: Option<Prim>,
        o: Prim,
        lse: Prim,
        d_o: Prim,
        scale: f32,
        causal: bool,
    ) -> (Prim, Prim, Prim) {
        match q.dtype() {
            DType::F32 => backward_in::<f32>(q, k, v, mask, o, lse, d_o, scale, causal),
            DType::F64 => backward_in::<f64>(q, k, v, mask, o, lse, d_o, scale, causal),
            _ => generic::backward::<Flex>(q, k, v, mask, o, lse, d_o, scale, causal),
        }
    }

    fn fused_attention_backward_packed(
        qkv: Prim,
        o: Prim,
        lse: Prim,
        d_o: Prim,
        heads: usize,
        scale: f32,
        causal: bool,
    ) -> Prim {
        match qkv.dtype() {
            DType::F32 => backward_packed_in::<f32>(qkv, o, lse, d_o, heads, scale, causal),
            DType::F64 => backward_packed_in::<f64>(qkv, o, lse, d_o, heads, scale, causal),
            _ => {
                let [q, k, v] = super::split_qkv::<Flex>(qkv, heads);
                let (dq, dk, dv) =
                    generic::backward::<Flex>(q, k, v, None, o, lse, d_o, scale, causal);
                Flex::float_cat(vec![dq, dk, dv], 2)
            }
        }
    }
}
