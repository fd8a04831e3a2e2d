//! 2-D convolution without bias (every convolution of a ResNet is followed by batch norm).

use super::{check_len, kaiming_normal, Module, Nchw, Param, StateMut, StateRef};
use crate::backend::{Backend, Conv2dDims, WriteMode};
use anyhow::{ensure, Result};
use rand::rngs::StdRng;

/// `y = conv(x, weight)`, weight `[c_out, c_in / groups, k, k]`, square kernel, zero padding.
pub struct Conv2d<B: Backend> {
    pub weight: Param<B>,
    pub c_in: usize,
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
}

impl<B: Backend> Conv2d<B> {
    /// `name` is the module's state-dict prefix (`shared.conv1`); the weight is Kaiming-normal.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        be: &B,
        rng: &mut StdRng,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        groups: usize,
    ) -> Result<Self> {
        ensure!(
            groups >= 1 && c_in.is_multiple_of(groups) && c_out.is_multiple_of(groups),
            "{name}: {c_in} input and {c_out} output channels do not split into {groups} groups"
        );
        let shape = vec![c_out, c_in / groups, k, k];
        let fan_in = (c_in / groups) * k * k;
        let values = kaiming_normal(rng, shape.iter().product(), fan_in);
        let weight = Param::new(format!("{name}.weight"), shape, be.upload(&values)?);
        Ok(Self {
            weight,
            c_in,
            c_out,
            k,
            stride,
            pad,
            groups,
        })
    }

    pub fn dims(&self, x: Nchw) -> Conv2dDims {
        Conv2dDims {
            n: x.n,
            c_in: self.c_in,
            h: x.h,
            w: x.w,
            c_out: self.c_out,
            k: self.k,
            stride: self.stride,
            pad: self.pad,
            groups: self.groups,
        }
    }

    pub fn out_shape(&self, x: Nchw) -> Nchw {
        let d = self.dims(x);
        Nchw::new(x.n, self.c_out, d.h_out(), d.w_out())
    }

    /// `x [n, c_in, h, w]` → `y [n, c_out, h_out, w_out]`.
    pub fn forward(&self, be: &B, x: &B::Buf, s: Nchw) -> Result<(B::Buf, Nchw)> {
        ensure!(
            s.c == self.c_in,
            "{}: input has {} channels, expected {}",
            self.weight.name,
            s.c,
            self.c_in
        );
        ensure!(
            s.h + 2 * self.pad >= self.k && s.w + 2 * self.pad >= self.k,
            "{}: input {}x{} is smaller than the {}x{} kernel",
            self.weight.name,
            s.h,
            s.w,
            self.k,
            self.k
        );
        check_len(be, x, s.len(), &self.weight.name)?;
        Ok((
            be.conv2d_forward(x, &self.weight.value, self.dims(s))?,
            self.out_shape(s),
        ))
    }

    /// Stores the weight gradient and returns `dx [n, c_in, h, w]`; `x` is the forward input.
    pub fn backward(&mut self, be: &B, x: &B::Buf, dy: &B::Buf, s: Nchw) -> Result<B::Buf> {
        let d = self.dims(s);
        let dx = be.conv2d_backward_data(dy, &self.weight.value, d)?;
        be.conv2d_backward_weight(x, dy, d, self.weight.grad_out(be)?)?;
        Ok(dx)
    }

    /// [`Conv2d::backward`] with `dx` written over or added to the caller's buffer (`mode`).
    pub fn backward_into(
        &mut self,
        be: &B,
        x: &B::Buf,
        dy: &B::Buf,
        s: Nchw,
        dx: &mut B::Buf,
        mode: WriteMode,
    ) -> Result<()> {
        let d = self.dims(s);
        be.conv2d_backward_data_into(dy, &self.weight.value, d, dx, mode)?;
        be.conv2d_backward_weight(x, dy, d, self.weight.grad_out(be)?)
    }

    /// Stores the weight gradient only (the first layer: nobody needs the image gradient).
    pub fn backward_weight(&mut self, be: &B, x: &B::Buf, dy: &B::Buf, s: Nchw) -> Result<()> {
        let d = self.dims(s);
        be.conv2d_backward_weight(x, dy, d, self.weight.grad_out(be)?)
    }
}

impl<B: Backend> Module<B> for Conv2d<B> {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(StateRef<'a, B>)) {
        f(StateRef::Param(&self.weight));
    }
    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(StateMut<'a, B>)) {
        f(StateMut::Param(&mut self.weight));
    }
}
