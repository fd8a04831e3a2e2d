//! Row-wise ops on `[n, c]` matrices (kernels/loss.cu): softmax and max.

use anyhow::Result;

use super::{kernels, to_u32, CudaBackend, CudaBuf, CudaIndex};
use crate::backend::{RowDims, RowOps};

impl CudaBackend {
    /// Softmax (or log-softmax) of every row, one block per row.
    pub(super) fn softmax(&self, x: &CudaBuf, d: RowDims, log: bool) -> Result<CudaBuf> {
        let op = if log {
            "log_softmax_rows"
        } else {
            "softmax_rows"
        };
        to_u32(op, "size", d.len())?;
        let mut y = self.alloc(d.len())?;
        if let Some(cfg) = self.per_row(d.n, d.c) {
            kernels::softmax_rows(
                self.dev(),
                cfg,
                x,
                &mut y,
                i32::from(log),
                d.n as u32,
                d.c as u32,
            )?;
        }
        Ok(y)
    }
}

impl RowOps for CudaBackend {
    fn softmax_rows_unchecked(&self, x: &CudaBuf, d: RowDims) -> Result<CudaBuf> {
        self.softmax(x, d, false)
    }

    fn row_max_unchecked(&self, x: &CudaBuf, d: RowDims) -> Result<(CudaBuf, CudaIndex)> {
        to_u32("row_max", "size", d.len())?;
        let mut value = self.alloc(d.n)?;
        let mut index = self.alloc(d.n)?;
        if let Some(cfg) = self.per_row(d.n, d.c) {
            kernels::row_max(
                self.dev(),
                cfg,
                x,
                &mut value,
                &mut index,
                d.n as u32,
                d.c as u32,
            )?;
        }
        Ok((value, index))
    }
}
