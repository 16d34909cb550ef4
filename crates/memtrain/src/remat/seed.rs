//! Back-propagating a given output gradient: [`backward_from`] runs the backward of `y`'s
//! graph from `dy`, which is what `(y ∘ dy).sum().backward()` computes, without forming
//! `y ∘ dy`, the ones that seed its sum, or their product with `dy` (three tensors of `y`'s
//! size at the start of every stage's backward).

use burn::backend::backend_extension;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, TensorMetadata};
use burn::tensor::{Gradients, Shape, Tensor, TensorData};
use burn_autodiff::Autodiff;
use burn_autodiff::checkpoint::base::Checkpointer;
use burn_autodiff::checkpoint::strategy::CheckpointStrategy;
use burn_autodiff::grads::Gradients as AutodiffGradients;
use burn_autodiff::ops::{Backward, Ops, OpsKind};

/// The seeding op as a burn backend extension.
#[backend_extension(Flex, Cube: cfg(memtrain_cube), Autodiff)]
pub trait SeedGradientBackend: Backend {
    /// A one-element zero whose backward gives `y` the gradient `dy`.
    fn seed_gradient(y: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self>;
}

fn zero<B: Backend>(like: &FloatTensor<B>) -> FloatTensor<B> {
    B::float_from_data(TensorData::new(vec![0f32], Shape::new([1])), &like.device())
}

impl SeedGradientBackend for Flex {
    fn seed_gradient(y: FloatTensor<Self>, _dy: FloatTensor<Self>) -> FloatTensor<Self> {
        zero::<Self>(&y)
    }
}

#[cfg(memtrain_cube)]
impl SeedGradientBackend for burn_cubecl::CubeBackend {
    fn seed_gradient(y: FloatTensor<Self>, _dy: FloatTensor<Self>) -> FloatTensor<Self> {
        zero::<Self>(&y)
    }
}

#[derive(Debug)]
struct Seed;

impl<B: Backend> Backward<B, 1> for Seed {
    /// The gradient to hand to `y`.
    type State = FloatTensor<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut AutodiffGradients,
        _: &mut Checkpointer,
    ) {
        let [node] = ops.parents;
        // The backward's own seed (a one-element one) is not needed.
        drop(grads.consume::<B>(&ops.node));
        if let Some(node) = node {
            grads.register::<B>(node.id, ops.state);
        }
    }
}

impl<B: Backend, C: CheckpointStrategy> SeedGradientBackend for Autodiff<B, C> {
    fn seed_gradient(y: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        let out = zero::<B>(y.primitive());
        match Seed.prepare::<C>([y.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(dy.primitive().clone(), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}

/// The gradients of `y`'s graph given `dy`, the gradient of some loss with respect to `y`:
/// equal to `(y * dy).sum().backward()`. `dy` must have `y`'s shape and carry no graph.
///
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use memtrain::remat::backward_from;
/// let device = Device::flex().autodiff();
/// let x = Tensor::<2>::random([3, 4], Distribution::Default, &device).require_grad();
/// let dy = Tensor::<2>::random([3, 4], Distribution::Default, &device).inner();
/// let seeded = backward_from(x.clone().exp(), dy.clone());
/// let summed = (x.clone().exp() * dy).sum().backward();
/// let (a, b) = (x.grad(&seeded).unwrap(), x.grad(&summed).unwrap());
/// assert!(a.all_close(b, Some(1e-6), Some(1e-7)));
/// ```
///
/// # Panics
///
/// When the shapes differ, or `y` is not tracked by autodiff.
pub fn backward_from<const D: usize>(y: Tensor<D>, dy: Tensor<D>) -> Gradients {
    assert_eq!(
        y.dims(),
        dy.dims(),
        "the output gradient must have the output's shape"
    );
    if !crate::has_kernels(&y.device()) {
        return (y * dy).sum().backward();
    }
    let dy = dy.autodiff();
    let root = Tensor::<1>::from_dispatch(<Dispatch as SeedGradientBackend>::seed_gradient(
        y.into_dispatch(),
        dy.into_dispatch(),
    ));
    root.backward()
}
