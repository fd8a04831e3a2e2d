//! Max pooling (the ResNet-50 stem) and global average pooling (before the classifier).

use super::{check_len, Nchw};
use crate::backend::{Backend, Pool2dDims};
use anyhow::{Context, Result};

/// Max pooling with a square window; keeps the argmax of the last training forward.
pub struct MaxPool2d<B: Backend> {
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    saved_argmax: Option<B::Index>,
}

impl<B: Backend> MaxPool2d<B> {
    pub fn new(k: usize, stride: usize, pad: usize) -> Self {
        Self {
            k,
            stride,
            pad,
            saved_argmax: None,
        }
    }

    pub fn dims(&self, x: Nchw) -> Pool2dDims {
        Pool2dDims {
            n: x.n,
            c: x.c,
            h: x.h,
            w: x.w,
            k: self.k,
            stride: self.stride,
            pad: self.pad,
        }
    }

    pub fn out_shape(&self, x: Nchw) -> Nchw {
        let d = self.dims(x);
        Nchw::new(x.n, x.c, d.h_out(), d.w_out())
    }

    pub fn forward_train(&mut self, be: &B, x: &B::Buf, s: Nchw) -> Result<(B::Buf, Nchw)> {
        check_len(be, x, s.len(), "max pool")?;
        let (y, argmax) = be.max_pool_forward(x, self.dims(s))?;
        self.saved_argmax = Some(argmax);
        Ok((y, self.out_shape(s)))
    }

    pub fn forward_eval(&self, be: &B, x: &B::Buf, s: Nchw) -> Result<(B::Buf, Nchw)> {
        check_len(be, x, s.len(), "max pool")?;
        Ok((be.max_pool_forward(x, self.dims(s))?.0, self.out_shape(s)))
    }

    /// `dy [n, c, h_out, w_out]` → `dx [n, c, h, w]`; `s` is the forward input shape.
    pub fn backward(&mut self, be: &B, dy: &B::Buf, s: Nchw) -> Result<B::Buf> {
        let argmax = self
            .saved_argmax
            .take()
            .context("max pool: backward without a training forward")?;
        be.max_pool_backward(dy, &argmax, self.dims(s))
    }
}

/// `x [n, c, h, w]` → `[n, c]`.
pub fn global_avg_pool_forward<B: Backend>(be: &B, x: &B::Buf, s: Nchw) -> Result<B::Buf> {
    check_len(be, x, s.len(), "global average pool")?;
    be.global_avg_pool_forward(x, s.channel_dims())
}

/// `dy [n, c]` → `dx [n, c, h, w]`.
pub fn global_avg_pool_backward<B: Backend>(be: &B, dy: &B::Buf, s: Nchw) -> Result<B::Buf> {
    be.global_avg_pool_backward(dy, s.channel_dims())
}
