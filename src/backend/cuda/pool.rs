//! Max pooling with argmax and global average pooling (kernels/pool.cu).

use anyhow::{bail, Result};

use super::{check_len, kernels, to_u32, CudaBackend, CudaBuf, CudaIndex};
use crate::backend::{ChannelDims, Pool2dDims};

impl CudaBackend {
    pub(super) fn max_pool_forward_impl(
        &self,
        x: &CudaBuf,
        d: Pool2dDims,
    ) -> Result<(CudaBuf, CudaIndex)> {
        const OP: &str = "max_pool_forward";
        d.validate(OP)?;
        check_len(OP, "x", x.len(), d.n * d.c * d.h * d.w)?;
        let len = d.n * d.c * d.h_out() * d.w_out();
        to_u32(OP, "output size", len)?;
        let mut y = self.alloc(len)?;
        let mut argmax = self.alloc(len)?;
        if let Some(cfg) = self.elementwise(len) {
            kernels::max_pool_forward(
                self.rt(),
                cfg,
                x,
                &mut y,
                &mut argmax,
                d.n as u32,
                d.c as u32,
                d.h as u32,
                d.w as u32,
                d.k as u32,
                d.stride as u32,
                d.pad as u32,
                d.h_out() as u32,
                d.w_out() as u32,
            )?;
        }
        Ok((y, argmax))
    }

    pub(super) fn max_pool_backward_impl(
        &self,
        dy: &CudaBuf,
        argmax: &CudaIndex,
        d: Pool2dDims,
    ) -> Result<CudaBuf> {
        const OP: &str = "max_pool_backward";
        d.validate(OP)?;
        let out_len = d.n * d.c * d.h_out() * d.w_out();
        check_len(OP, "dy", dy.len(), out_len)?;
        check_len(OP, "argmax", argmax.len(), out_len)?;
        let len = d.n * d.c * d.h * d.w;
        let mut dx = self.alloc(len)?;
        if let Some(cfg) = self.elementwise(len) {
            kernels::max_pool_backward(
                self.rt(),
                cfg,
                dy,
                argmax,
                &mut dx,
                d.n as u32,
                d.c as u32,
                d.h as u32,
                d.w as u32,
                d.k as u32,
                d.stride as u32,
                d.pad as u32,
                d.h_out() as u32,
                d.w_out() as u32,
            )?;
        }
        Ok(dx)
    }

    pub(super) fn global_avg_pool_forward_impl(
        &self,
        x: &CudaBuf,
        d: ChannelDims,
    ) -> Result<CudaBuf> {
        const OP: &str = "global_avg_pool_forward";
        check_len(OP, "x", x.len(), d.len())?;
        if d.hw == 0 {
            bail!("{OP}: cannot average over an empty plane (hw = 0)");
        }
        let rows = d.n * d.c;
        to_u32(OP, "size", d.len())?;
        let mut y = self.alloc(rows)?;
        // One warp per row, 8 warps per block.
        if let Some(cfg) = self.launch_1d(rows * 32, 256) {
            kernels::global_avg_pool_forward(self.rt(), cfg, x, &mut y, rows as u32, d.hw as u32)?;
        }
        Ok(y)
    }

    pub(super) fn global_avg_pool_backward_impl(
        &self,
        dy: &CudaBuf,
        d: ChannelDims,
    ) -> Result<CudaBuf> {
        const OP: &str = "global_avg_pool_backward";
        check_len(OP, "dy", dy.len(), d.n * d.c)?;
        if d.hw == 0 {
            bail!("{OP}: cannot average over an empty plane (hw = 0)");
        }
        to_u32(OP, "size", d.len())?;
        let mut dx = self.alloc(d.len())?;
        if let Some(cfg) = self.elementwise(d.len()) {
            kernels::global_avg_pool_backward(
                self.rt(),
                cfg,
                dy,
                &mut dx,
                (d.n * d.c) as u32,
                d.hw as u32,
            )?;
        }
        Ok(dx)
    }
}
