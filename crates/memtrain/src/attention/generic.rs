//! The backend-generic fused attention: the tiled algorithm in the backend's own tensor ops,
//! chunk by chunk of query rows, for backends without a dedicated kernel (CUDA, wgpu, ...).
//!
//! Transient memory is one `[b, h, CHUNK, tk]` score block at a time; what is returned for the
//! backward is the same as the Flex kernel's.

use burn::backend::Backend;
use burn::backend::TensorMetadata;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{Shape, Slice, TensorData};

/// Query rows per chunk.
pub const CHUNK: usize = 128;

fn full() -> Slice {
    Slice {
        start: 0,
        end: None,
        step: 1,
    }
}

fn rows(r0: usize, r1: usize) -> Slice {
    Slice {
        start: r0 as isize,
        end: Some(r1 as isize),
        step: 1,
    }
}

/// Rows `r0..r1` of the `[tq, tk]` causal bias: 0 where `j <= i + tk - tq`, -inf elsewhere.
pub(crate) fn causal_rows(r0: usize, r1: usize, tq: usize, tk: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity((r1 - r0) * tk);
    for i in r0..r1 {
        out.extend((0..tk).map(|j| {
            if j + tq > i + tk {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        }));
    }
    out
}

fn dims4<B: Backend>(t: &FloatTensor<B>) -> [usize; 4] {
    let s = t.shape();
    [s[0], s[1], s[2], s[3]]
}

/// Scores of query rows `r0..r1`, `[b, h, rows, tk]`: `scale · q kᵀ` + mask + causal bias.
#[allow(clippy::too_many_arguments)]
fn chunk_scores<B: Backend>(
    q: &FloatTensor<B>,
    kt: &FloatTensor<B>,
    mask: &Option<FloatTensor<B>>,
    r0: usize,
    r1: usize,
    tq: usize,
    tk: usize,
    scale: f32,
    causal: bool,
) -> FloatTensor<B> {
    let device = q.device();
    let qc = B::float_slice(q.clone(), &[full(), full(), rows(r0, r1), full()]);
    let mut s = B::float_mul_scalar(B::float_matmul(qc, kt.clone()), scale.into());
    let bias_shape = Shape::from(vec![1, 1, r1 - r0, tk]);
    if let Some(mask) = mask {
        let m = B::float_slice(mask.clone(), &[rows(r0, r1), full()]);
        s = B::float_add(s, B::float_reshape(m, bias_shape.clone()));
    }
    if causal {
        let bias = TensorData::new(causal_rows(r0, r1, tq, tk), bias_shape);
        let bias = B::float_cast(B::float_from_data(bias, &device), s.dtype().into());
        s = B::float_add(s, bias);
    }
    s
}

/// See [`super::FusedAttentionKernel::fused_attention_forward`].
pub fn forward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    mask: Option<FloatTensor<B>>,
    scale: f32,
    causal: bool,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let [b, tq, h, _] = dims4::<B>(&q);
    let tk = dims4::<B>(&k)[1];
    let q = B::float_swap_dims(q, 1, 2);
    let kt = B::float_swap_dims(B::float_swap_dims(k, 1, 2), 2, 3);
    let v = B::float_swap_dims(v, 1, 2);
    let (mut outs, mut lses) = (Vec::new(), Vec::new());
    for r0 in (0..tq).step_by(CHUNK) {
        let r1 = (r0 + CHUNK).min(tq);
        let s = chunk_scores::<B>(&q, &kt, &mask, r0, r1, tq, tk, scale, causal);
        let m = B::float_max_dim(s.clone(), 3);
        let p = B::float_exp(B::float_sub(s, m.clone()));
        let l = B::float_sum_dim(p.clone(), 3);
        lses.push(B::float_add(m, B::float_log(l.clone())));
        outs.push(B::float_div(B::float_matmul(p, v.clone()), l));
    }
    // The output in its own `[b, tq, h, dv]` buffer (not a transposed view), so that the next
    // layer's reshape to `[b, tq, h dv]` is a view and the two share what they keep.
    let o = B::float_swap_dims(B::float_cat(outs, 2), 1, 2);
    let dv = dims4::<B>(&o)[3];
    let flat = B::float_reshape(o, Shape::from(vec![b * tq * h * dv]));
    let o = B::float_reshape(flat, Shape::from(vec![b, tq, h, dv]));
    let lse = B::float_reshape(B::float_cat(lses, 2), Shape::from(vec![b, h, tq]));
    (o, lse)
}

/// See [`super::FusedAttentionKernel::fused_attention_backward`].
#[allow(clippy::too_many_arguments)]
pub fn backward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    mask: Option<FloatTensor<B>>,
    o: FloatTensor<B>,
    lse: FloatTensor<B>,
    d_o: FloatTensor<B>,
    scale: f32,
    causal: bool,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let [b, tq, h, _] = dims4::<B>(&q);
    let tk = dims4::<B>(&k)[1];
    let q = B::float_swap_dims(q, 1, 2);
    let k = B::float_swap_dims(k, 1, 2);
    let kt = B::float_swap_dims(k.clone(), 2, 3);
    let v = B::float_swap_dims(v, 1, 2);
    let vt = B::float_swap_dims(v.clone(), 2, 3);
    let d_o = B::float_swap_dims(d_o, 1, 2);
    let o = B::float_swap_dims(o, 1, 2);
    let lse = B::float_reshape(lse, Shape::from(vec![b, h, tq, 1]));
    // D_i = dO_i · O_i.
    let d = B::float_sum_dim(B::float_mul(d_o.clone(), o), 3);
    let (mut dk, mut dv) = (None, None);
    let mut dqs = Vec::new();
    let sel = |t: &FloatTensor<B>, r0, r1| {
        B::float_slice(t.clone(), &[full(), full(), rows(r0, r1), full()])
    };
    for r0 in (0..tq).step_by(CHUNK) {
        let r1 = (r0 + CHUNK).min(tq);
        let s = chunk_scores::<B>(&q, &kt, &mask, r0, r1, tq, tk, scale, causal);
        let p = B::float_exp(B::float_sub(s, sel(&lse, r0, r1)));
        let doc = sel(&d_o, r0, r1);
        let dv_c = B::float_matmul(B::float_swap_dims(p.clone(), 2, 3), doc.clone());
        let dp = B::float_matmul(doc, vt.clone());
        let ds = B::float_mul(p, B::float_sub(dp, sel(&d, r0, r1)));
        dqs.push(B::float_mul_scalar(
            B::float_matmul(ds.clone(), k.clone()),
            scale.into(),
        ));
        let dk_c = B::float_mul_scalar(
            B::float_matmul(B::float_swap_dims(ds, 2, 3), sel(&q, r0, r1)),
            scale.into(),
        );
        dk = Some(match dk {
            None => dk_c,
            Some(acc) => B::float_add(acc, dk_c),
        });
        dv = Some(match dv {
            None => dv_c,
            Some(acc) => B::float_add(acc, dv_c),
        });
    }
    let dq = B::float_swap_dims(B::float_cat(dqs, 2), 1, 2);
    let dk = B::float_swap_dims(dk.expect("at least one query row"), 1, 2);
    let dv = B::float_swap_dims(dv.expect("at least one query row"), 1, 2);
    (dq, dk, dv)
}
