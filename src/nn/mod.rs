//! Layers as parameter + gradient + saved-activation holders, written once over [`Backend`].
//!
//! Every layer has an explicit `forward_train` (saves what its backward needs), a `forward_eval`
//! (saves nothing, batch norm uses its running statistics) and a `backward` that stores the
//! gradients of its parameters in their [`Param::grad`] (overwriting any previous value: one
//! backward per forward, no zeroing needed) and returns the gradient of its input.
//!
//! Buffers are not `Clone`, so a tensor that two parties need (a block's output is both its own
//! ReLU mask and the next block's input) is owned once: primitive layers (`Conv2d`, `BatchNorm2d`,
//! `Linear`) do not keep their input, the caller passes it back to `backward`; blocks keep their
//! inner activations; a [`Stage`] keeps the outputs of its blocks.

mod block;
mod conv;
mod linear;
mod norm;
mod params;
mod pool;
mod state;

pub use block::{BasicBlock, Bottleneck, ResBlock, Stage};
pub use conv::Conv2d;
pub use linear::Linear;
pub use norm::BatchNorm2d;
pub use params::ParamStore;
pub use pool::{global_avg_pool_backward, global_avg_pool_forward, MaxPool2d};
pub use state::{Counter, Module, NamedTensor, RunningStat, StateMut, StateRef, TensorData};

use crate::backend::{Backend, ChannelDims};
use anyhow::Result;
use rand::rngs::StdRng;
use rand::Rng;
use rand_distr::{Distribution, Normal};

/// A trainable tensor with its gradient and optimizer state.
pub struct Param<B: Backend> {
    /// PyTorch state-dict name, e.g. `experts.0.layer2.3.conv1.weight`.
    pub name: String,
    /// PyTorch layout, e.g. `[c_out, c_in / groups, k, k]` for a convolution.
    pub shape: Vec<usize>,
    pub value: B::Buf,
    /// Where backwards write the gradient: a view of the model's flat gradient buffer
    /// ([`ParamStore`]), or a buffer of its own a lone layer allocates on its first backward.
    pub grad: Option<B::Buf>,
    /// Whether `grad` holds the gradient of a backward the optimizer has not stepped with yet.
    pub fresh_grad: bool,
    /// SGD momentum buffer, owned by the optimizer (`None` until its first step).
    pub velocity: Option<B::Buf>,
    /// Whether weight decay applies. `true` for every parameter, as PyTorch's
    /// `SGD(model.parameters(), weight_decay=...)` in the paper's setting does; an optimizer that
    /// wants to spare norms and biases can clear it.
    pub decay: bool,
}

impl<B: Backend> Param<B> {
    pub fn new(name: String, shape: Vec<usize>, value: B::Buf) -> Self {
        Self {
            name,
            shape,
            value,
            grad: None,
            fresh_grad: false,
            velocity: None,
            decay: true,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The buffer a backward writes this parameter's gradient over, now marked fresh.
    pub fn grad_out(&mut self, be: &B) -> Result<&mut B::Buf> {
        Ok(self.value_and_grad_out(be)?.1)
    }

    /// The value (which a backward reads) beside [`Param::grad_out`].
    pub fn value_and_grad_out(&mut self, be: &B) -> Result<(&B::Buf, &mut B::Buf)> {
        if self.grad.is_none() {
            self.grad = Some(be.zeros(self.numel())?);
        }
        self.fresh_grad = true;
        let grad = self.grad.as_mut().expect("allocated above");
        Ok((&self.value, grad))
    }
}

/// Shape of an activation `[n, c, h, w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Nchw {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Nchw {
    pub fn new(n: usize, c: usize, h: usize, w: usize) -> Self {
        Self { n, c, h, w }
    }
    pub fn len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Elements of one sample, `c * h * w`.
    pub fn per_sample(&self) -> usize {
        self.c * self.h * self.w
    }
    pub fn channel_dims(&self) -> ChannelDims {
        ChannelDims {
            n: self.n,
            c: self.c,
            hw: self.h * self.w,
        }
    }
    pub fn with_n(self, n: usize) -> Self {
        Self { n, ..self }
    }
}

/// PyTorch's `nn.init.kaiming_normal_(w)` default (mode `fan_in`, ReLU gain): `N(0, 2 / fan_in)`.
pub fn kaiming_normal(rng: &mut StdRng, len: usize, fan_in: usize) -> Vec<f32> {
    let std = (2.0 / fan_in as f64).sqrt();
    // The standard deviation is finite and positive for any fan_in >= 1.
    let normal = Normal::new(0.0, std).expect("kaiming std is finite and positive");
    (0..len).map(|_| normal.sample(rng) as f32).collect()
}

/// PyTorch's default `nn.Linear` bias init: `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
pub fn uniform_fan_in(rng: &mut StdRng, len: usize, fan_in: usize) -> Vec<f32> {
    let bound = 1.0 / (fan_in as f32).sqrt();
    (0..len).map(|_| rng.random_range(-bound..bound)).collect()
}

/// Checks that a buffer has the length its shape implies (catches caller shape mistakes early,
/// with a message instead of an out-of-bounds access in a kernel).
fn check_len<B: Backend>(be: &B, buf: &B::Buf, expected: usize, what: &str) -> Result<()> {
    let got = be.len(buf);
    anyhow::ensure!(
        got == expected,
        "{what}: buffer holds {got} values, its shape needs {expected}"
    );
    Ok(())
}
