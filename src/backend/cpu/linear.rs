//! Fully connected layer: `y [n, out] = x [n, in] · w [out, in]ᵀ + b [out]`.
//!
//! The matrices are small next to the convolutions (the classifier head), so each product is one
//! single-threaded gemm; that also keeps the result independent of the thread count.

use anyhow::Result;

use super::matmul::{matmul, Layout};
use super::{CpuBackend, CpuBuf};
use crate::backend::{LinearDims, LinearOps, ParamGrads};

impl LinearOps for CpuBackend {
    fn linear_forward_unchecked(
        &self,
        x: &CpuBuf,
        w: &CpuBuf,
        b: &CpuBuf,
        d: LinearDims,
    ) -> Result<CpuBuf> {
        let LinearDims { n, d_in, d_out } = d;
        let (x, w, b) = (x.as_slice(), w.as_slice(), b.as_slice());
        let mut y: Vec<f32> = (0..n).flat_map(|_| b.iter().copied()).collect();
        matmul(
            n,
            d_out,
            d_in,
            &mut y,
            x,
            Layout::Plain,
            w,
            Layout::Transposed,
            true,
        );
        Ok(CpuBuf::from_vec(y))
    }

    /// `dx [n, in] = dy · w`, `dw [out, in] = dyᵀ · x`, `db [out]` = column sums of `dy`.
    fn linear_backward_unchecked(
        &self,
        dy: &CpuBuf,
        x: &CpuBuf,
        w: &CpuBuf,
        d: LinearDims,
        grads: ParamGrads<'_, Self>,
    ) -> Result<CpuBuf> {
        let LinearDims { n, d_in, d_out } = d;
        let (dy, x, w) = (dy.as_slice(), x.as_slice(), w.as_slice());
        let mut dx = vec![0.0f32; n * d_in];
        matmul(
            n,
            d_in,
            d_out,
            &mut dx,
            dy,
            Layout::Plain,
            w,
            Layout::Plain,
            false,
        );
        let dw = grads.weight.as_mut_slice();
        dw.fill(0.0);
        matmul(
            d_out,
            d_in,
            n,
            dw,
            dy,
            Layout::Transposed,
            x,
            Layout::Plain,
            false,
        );
        let mut db = vec![0.0f64; d_out];
        for row in dy.chunks_exact(d_out.max(1)) {
            for (acc, &g) in db.iter_mut().zip(row) {
                *acc += g as f64;
            }
        }
        for (out, acc) in grads.bias.as_mut_slice().iter_mut().zip(db) {
            *out = acc as f32;
        }
        Ok(CpuBuf::from_vec(dx))
    }
}
