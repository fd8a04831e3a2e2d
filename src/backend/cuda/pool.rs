//! Max pooling with argmax, global average pooling and the option-A shortcut (kernels/pool.cu).

use anyhow::Result;

use super::{kernels, to_u32, CudaBackend, CudaBuf, CudaIndex};
use crate::backend::{ChannelDims, Pool2dDims, PoolOps, ShortcutDims};

/// The shortcut kernels' shape arguments, after the 32-bit size checks.
struct ShortcutArgs {
    n: u32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    stride: u32,
    h_out: u32,
    w_out: u32,
    pad: u32,
}

fn shortcut_args(op: &str, d: ShortcutDims) -> Result<ShortcutArgs> {
    to_u32(op, "input size", d.input_len())?;
    to_u32(op, "output size", d.output_len())?;
    Ok(ShortcutArgs {
        n: d.n as u32,
        c_in: d.c_in as u32,
        h: d.h as u32,
        w: d.w as u32,
        c_out: d.c_out as u32,
        stride: d.stride as u32,
        h_out: d.h_out() as u32,
        w_out: d.w_out() as u32,
        pad: d.pad() as u32,
    })
}

impl PoolOps for CudaBackend {
    fn shortcut_a_forward_unchecked(&self, x: &CudaBuf, d: ShortcutDims) -> Result<CudaBuf> {
        let s = shortcut_args("shortcut_a_forward", d)?;
        let mut y = self.alloc(d.output_len())?;
        if let Some(cfg) = self.elementwise(d.output_len()) {
            kernels::shortcut_a_forward(
                self.dev(),
                cfg,
                x,
                &mut y,
                s.n,
                s.c_in,
                s.h,
                s.w,
                s.c_out,
                s.stride,
                s.h_out,
                s.w_out,
                s.pad,
            )?;
        }
        Ok(y)
    }

    fn shortcut_a_backward_unchecked(
        &self,
        dy: &CudaBuf,
        d: ShortcutDims,
        dx: &mut CudaBuf,
    ) -> Result<()> {
        let s = shortcut_args("shortcut_a_backward", d)?;
        if let Some(cfg) = self.elementwise(d.input_len()) {
            kernels::shortcut_a_backward(
                self.dev(),
                cfg,
                dy,
                dx,
                s.n,
                s.c_in,
                s.h,
                s.w,
                s.c_out,
                s.stride,
                s.h_out,
                s.w_out,
                s.pad,
            )?;
        }
        Ok(())
    }

    fn max_pool_forward_unchecked(
        &self,
        x: &CudaBuf,
        d: Pool2dDims,
    ) -> Result<(CudaBuf, CudaIndex)> {
        let len = d.output_len();
        to_u32("max_pool_forward", "output size", len)?;
        let mut y = self.alloc(len)?;
        let mut argmax = self.alloc(len)?;
        if let Some(cfg) = self.elementwise(len) {
            kernels::max_pool_forward(
                self.dev(),
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

    fn max_pool_backward_unchecked(
        &self,
        dy: &CudaBuf,
        argmax: &CudaIndex,
        d: Pool2dDims,
    ) -> Result<CudaBuf> {
        let len = d.input_len();
        let mut dx = self.alloc(len)?;
        if let Some(cfg) = self.elementwise(len) {
            kernels::max_pool_backward(
                self.dev(),
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

    fn global_avg_pool_forward_unchecked(&self, x: &CudaBuf, d: ChannelDims) -> Result<CudaBuf> {
        let rows = d.n * d.c;
        to_u32("global_avg_pool_forward", "size", d.len())?;
        let mut y = self.alloc(rows)?;
        // One warp per row, 8 warps per block.
        if let Some(cfg) = self.launch_1d(rows * 32, 256) {
            kernels::global_avg_pool_forward(self.dev(), cfg, x, &mut y, rows as u32, d.hw as u32)?;
        }
        Ok(y)
    }

    fn global_avg_pool_backward_unchecked(&self, dy: &CudaBuf, d: ChannelDims) -> Result<CudaBuf> {
        to_u32("global_avg_pool_backward", "size", d.len())?;
        let mut dx = self.alloc(d.len())?;
        if let Some(cfg) = self.elementwise(d.len()) {
            kernels::global_avg_pool_backward(
                self.dev(),
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
