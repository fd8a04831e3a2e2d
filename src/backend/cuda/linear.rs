//! Fully connected layer through cuBLAS: `y [n, out] = x [n, in] · w [out, in]ᵀ + b`.
//! cuBLAS is column-major, so each row-major matrix is handed over as its transpose:
//! - forward: `yᵀ (out x n) = op(W stored in x out, T) · xᵀ (in x n)`, accumulated onto the broadcast
//!   bias (beta = 1);
//! - `dxᵀ (in x n) = W stored (in x out) · dyᵀ (out x n)`;
//! - `dwᵀ (in x out) = xᵀ (in x n) · op(dy stored out x n, T)`; `db` = column sums of `dy`.

use anyhow::Result;

use super::{check_len, kernels, to_u32, CudaBackend, CudaBuf, Gemm};

impl CudaBackend {
    pub(super) fn linear_forward_impl(
        &self,
        x: &CudaBuf,
        w: &CudaBuf,
        b: &CudaBuf,
        n: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<CudaBuf> {
        const OP: &str = "linear_forward";
        check_len(OP, "x", x.len(), n * d_in)?;
        check_len(OP, "w", w.len(), d_out * d_in)?;
        check_len(OP, "b", b.len(), d_out)?;
        to_u32(OP, "output size", n * d_out)?;
        let mut y = self.alloc(n * d_out)?;
        let Some(cfg) = self.elementwise(n * d_out) else {
            return Ok(y);
        };
        kernels::broadcast_rows(self.rt(), cfg, b, &mut y, n as u32, d_out as u32)?;
        let gemm = Gemm {
            beta: 1.0,
            ..Gemm::new(true, false, d_out, n, d_in)
        };
        self.gemm(&gemm, w, x, &mut y)?;
        Ok(y)
    }

    pub(super) fn linear_backward_impl(
        &self,
        dy: &CudaBuf,
        x: &CudaBuf,
        w: &CudaBuf,
        n: usize,
        d_in: usize,
        d_out: usize,
    ) -> Result<(CudaBuf, CudaBuf, CudaBuf)> {
        const OP: &str = "linear_backward";
        check_len(OP, "dy", dy.len(), n * d_out)?;
        check_len(OP, "x", x.len(), n * d_in)?;
        check_len(OP, "w", w.len(), d_out * d_in)?;
        to_u32(OP, "input size", n * d_in)?;
        to_u32(OP, "output size", n * d_out)?;
        to_u32(OP, "weight size", d_out * d_in)?;
        let mut dx = self.alloc(n * d_in)?;
        let mut dw = self.alloc(d_out * d_in)?;
        let mut db = self.alloc(d_out)?;
        if d_in > 0 && n > 0 {
            self.gemm(&Gemm::new(false, false, d_in, n, d_out), w, dy, &mut dx)?;
        }
        if d_in > 0 && d_out > 0 {
            self.gemm(&Gemm::new(false, true, d_in, d_out, n), x, dy, &mut dw)?;
        }
        if let Some(cfg) = self.elementwise(d_out) {
            kernels::sum_rows(self.rt(), cfg, dy, &mut db, n as u32, d_out as u32, 0)?;
        }
        Ok((dx, dw, db))
    }
}
