//! Fully connected layer through cuBLAS: `y [n, out] = x [n, in] · w [out, in]ᵀ + b`.
//! cuBLAS is column-major, so each row-major matrix is handed over as its transpose:
//! - forward: `yᵀ (out x n) = op(W stored in x out, T) · xᵀ (in x n)`, accumulated onto the broadcast
//!   bias (beta = 1);
//! - `dxᵀ (in x n) = W stored (in x out) · dyᵀ (out x n)`;
//! - `dwᵀ (in x out) = xᵀ (in x n) · op(dy stored out x n, T)`; `db` = column sums of `dy`.

use anyhow::Result;

use super::{kernels, to_u32, CudaBackend, CudaBuf, Gemm};
use crate::backend::{LinearDims, LinearOps, ParamGrads};

impl LinearOps for CudaBackend {
    fn linear_forward_unchecked(
        &self,
        x: &CudaBuf,
        w: &CudaBuf,
        b: &CudaBuf,
        d: LinearDims,
    ) -> Result<CudaBuf> {
        let LinearDims { n, d_in, d_out } = d;
        to_u32("linear_forward", "output size", n * d_out)?;
        let mut y = self.alloc(n * d_out)?;
        let Some(cfg) = self.elementwise(n * d_out) else {
            return Ok(y);
        };
        kernels::broadcast_rows(self.dev(), cfg, b, &mut y, n as u32, d_out as u32)?;
        let gemm = Gemm {
            beta: 1.0,
            ..Gemm::new(true, false, d_out, n, d_in)
        };
        self.gemm(&gemm, w, x, &mut y)?;
        Ok(y)
    }

    fn linear_backward_unchecked(
        &self,
        dy: &CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        d: LinearDims,
        grads: ParamGrads<'_, Self>,
    ) -> Result<CudaBuf> {
        const OP: &str = "linear_backward";
        let LinearDims { n, d_in, d_out } = d;
        to_u32(OP, "input size", n * d_in)?;
        to_u32(OP, "output size", n * d_out)?;
        to_u32(OP, "weight size", d_out * d_in)?;
        let mut dx = self.alloc(n * d_in)?;
        if d_in > 0 && n > 0 {
            self.gemm(&Gemm::new(false, false, d_in, n, d_out), w, dy, &mut dx)?;
        }
        if d_in > 0 && d_out > 0 {
            self.gemm(&Gemm::new(false, true, d_in, d_out, n), x, dy, grads.weight)?;
        }
        if let Some(cfg) = self.elementwise(d_out) {
            kernels::sum_rows(self.dev(), cfg, dy, grads.bias, n as u32, d_out as u32, 0)?;
        }
        Ok(dx)
    }
}
