//! Fully connected layer `y [n, out] = x [n, in] · weightᵀ + bias`.

use super::{check_len, kaiming_normal, uniform_fan_in, Module, Param, StateMut, StateRef};
use crate::backend::{Backend, LinearDims, ParamGrads};
use anyhow::Result;
use rand::rngs::StdRng;

pub struct Linear<B: Backend> {
    /// `[out, in]`.
    pub weight: Param<B>,
    /// `[out]`.
    pub bias: Param<B>,
    pub d_in: usize,
    pub d_out: usize,
}

impl<B: Backend> Linear<B> {
    /// Kaiming-normal weight, PyTorch's default uniform bias; `name` is the prefix (`experts.0.fc`).
    pub fn new(be: &B, rng: &mut StdRng, name: &str, d_in: usize, d_out: usize) -> Result<Self> {
        let w = kaiming_normal(rng, d_out * d_in, d_in);
        let b = uniform_fan_in(rng, d_out, d_in);
        Ok(Self {
            weight: Param::new(format!("{name}.weight"), vec![d_out, d_in], be.upload(&w)?),
            bias: Param::new(format!("{name}.bias"), vec![d_out], be.upload(&b)?),
            d_in,
            d_out,
        })
    }

    fn dims(&self, n: usize) -> LinearDims {
        LinearDims {
            n,
            d_in: self.d_in,
            d_out: self.d_out,
        }
    }

    /// `x [n, in]` → `y [n, out]`.
    pub fn forward(&self, be: &B, x: &B::Buf, n: usize) -> Result<B::Buf> {
        check_len(be, x, n * self.d_in, &self.weight.name)?;
        be.linear_forward(x, &self.weight.value, &self.bias.value, self.dims(n))
    }

    /// Stores the weight and bias gradients and returns `dx [n, in]`; `x` is the forward input.
    pub fn backward(&mut self, be: &B, x: &B::Buf, dy: &B::Buf, n: usize) -> Result<B::Buf> {
        check_len(be, dy, n * self.d_out, &self.weight.name)?;
        let d = self.dims(n);
        let (w, dw) = self.weight.value_and_grad_out(be)?;
        let grads = ParamGrads {
            weight: dw,
            bias: self.bias.grad_out(be)?,
        };
        be.linear_backward(dy, x, w, d, grads)
    }
}

impl<B: Backend> Module<B> for Linear<B> {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(StateRef<'a, B>)) {
        f(StateRef::Param(&self.weight));
        f(StateRef::Param(&self.bias));
    }
    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(StateMut<'a, B>)) {
        f(StateMut::Param(&mut self.weight));
        f(StateMut::Param(&mut self.bias));
    }
}
