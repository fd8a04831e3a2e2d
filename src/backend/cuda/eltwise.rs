//! Element-wise ops, the full-buffer sum, the option-A shortcut and mixup (kernels/eltwise.cu,
//! kernels/reduce.cu).

use anyhow::{bail, Result};

use super::{check_len, kernels, to_u32, CudaBackend, CudaBuf, CudaIndex};
use crate::backend::ShortcutDims;

fn check_same(op: &str, a: usize, b: usize) -> Result<()> {
    if a != b {
        bail!("{op}: operands differ in length ({a} vs {b})");
    }
    Ok(())
}

/// The shortcut kernels' shape arguments, after the size checks.
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
    let pad = d.validate(op)?;
    to_u32(op, "input size", d.n * d.c_in * d.h * d.w)?;
    to_u32(op, "output size", d.n * d.c_out * d.h_out() * d.w_out())?;
    Ok(ShortcutArgs {
        n: d.n as u32,
        c_in: d.c_in as u32,
        h: d.h as u32,
        w: d.w as u32,
        c_out: d.c_out as u32,
        stride: d.stride as u32,
        h_out: d.h_out() as u32,
        w_out: d.w_out() as u32,
        pad: pad as u32,
    })
}

impl CudaBackend {
    pub(super) fn add_impl(&self, a: &CudaBuf, b: &CudaBuf) -> Result<CudaBuf> {
        check_same("add", a.len(), b.len())?;
        let n = to_u32("add", "length", a.len())?;
        let mut y = self.alloc(a.len())?;
        if let Some(cfg) = self.elementwise(a.len()) {
            kernels::add(self.rt(), cfg, a, b, &mut y, n)?;
        }
        Ok(y)
    }

    pub(super) fn add_assign_impl(&self, a: &mut CudaBuf, b: &CudaBuf) -> Result<()> {
        check_same("add_assign", a.len(), b.len())?;
        let n = to_u32("add_assign", "length", a.len())?;
        if let Some(cfg) = self.elementwise(a.len()) {
            kernels::add_assign(self.rt(), cfg, a, b, n)?;
        }
        Ok(())
    }

    pub(super) fn mul_impl(&self, a: &CudaBuf, b: &CudaBuf) -> Result<CudaBuf> {
        check_same("mul", a.len(), b.len())?;
        let n = to_u32("mul", "length", a.len())?;
        let mut y = self.alloc(a.len())?;
        if let Some(cfg) = self.elementwise(a.len()) {
            kernels::mul(self.rt(), cfg, a, b, &mut y, n)?;
        }
        Ok(y)
    }

    pub(super) fn scale_impl(&self, a: &CudaBuf, alpha: f32) -> Result<CudaBuf> {
        let n = to_u32("scale", "length", a.len())?;
        let mut y = self.alloc(a.len())?;
        if let Some(cfg) = self.elementwise(a.len()) {
            kernels::scale(self.rt(), cfg, a, &mut y, alpha, n)?;
        }
        Ok(y)
    }

    /// Sum of `a` into a one-element buffer: block partial sums, then one block over the partials
    /// (a fixed summation order for a given device).
    pub(super) fn sum_impl(&self, a: &CudaBuf) -> Result<CudaBuf> {
        let n = to_u32("sum", "length", a.len())?;
        let mut out = self.alloc(1)?;
        let Some(cfg) = self.elementwise(a.len()) else {
            return Ok(out);
        };
        if cfg.grid.0 == 1 {
            kernels::reduce_sum(self.rt(), cfg, a, &mut out, n)?;
        } else {
            let mut partial = self.alloc(cfg.grid.0 as usize)?;
            kernels::reduce_sum(self.rt(), cfg, a, &mut partial, n)?;
            let last = super::LaunchConfig::linear(1, 256);
            kernels::reduce_sum(self.rt(), last, &partial, &mut out, cfg.grid.0)?;
        }
        Ok(out)
    }

    pub(super) fn relu_forward_impl(&self, x: &CudaBuf) -> Result<CudaBuf> {
        let n = to_u32("relu_forward", "length", x.len())?;
        let mut y = self.alloc(x.len())?;
        if let Some(cfg) = self.elementwise(x.len()) {
            kernels::relu_forward(self.rt(), cfg, x, &mut y, n)?;
        }
        Ok(y)
    }

    pub(super) fn relu_backward_impl(&self, dy: &CudaBuf, y: &CudaBuf) -> Result<CudaBuf> {
        check_same("relu_backward", dy.len(), y.len())?;
        let n = to_u32("relu_backward", "length", dy.len())?;
        let mut dx = self.alloc(dy.len())?;
        if let Some(cfg) = self.elementwise(dy.len()) {
            kernels::relu_backward(self.rt(), cfg, dy, y, &mut dx, n)?;
        }
        Ok(dx)
    }

    pub(super) fn shortcut_a_forward_impl(&self, x: &CudaBuf, d: ShortcutDims) -> Result<CudaBuf> {
        const OP: &str = "shortcut_a_forward";
        let s = shortcut_args(OP, d)?;
        check_len(OP, "x", x.len(), d.n * d.c_in * d.h * d.w)?;
        let len = d.n * d.c_out * d.h_out() * d.w_out();
        let mut y = self.alloc(len)?;
        if let Some(cfg) = self.elementwise(len) {
            kernels::shortcut_a_forward(
                self.rt(),
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

    pub(super) fn shortcut_a_backward_impl(
        &self,
        dy: &CudaBuf,
        d: ShortcutDims,
    ) -> Result<CudaBuf> {
        const OP: &str = "shortcut_a_backward";
        let s = shortcut_args(OP, d)?;
        check_len(OP, "dy", dy.len(), d.n * d.c_out * d.h_out() * d.w_out())?;
        let len = d.n * d.c_in * d.h * d.w;
        let mut dx = self.alloc(len)?;
        if let Some(cfg) = self.elementwise(len) {
            kernels::shortcut_a_backward(
                self.rt(),
                cfg,
                dy,
                &mut dx,
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
        Ok(dx)
    }

    pub(super) fn mixup_impl(
        &self,
        x: &CudaBuf,
        perm: &CudaIndex,
        lambda: f32,
        n: usize,
        per_sample: usize,
    ) -> Result<CudaBuf> {
        const OP: &str = "mixup";
        check_len(OP, "x", x.len(), n * per_sample)?;
        check_len(OP, "perm", perm.len(), n)?;
        let total = to_u32(OP, "size", n * per_sample)?;
        let mut y = self.alloc(n * per_sample)?;
        if let Some(cfg) = self.elementwise(total as usize) {
            {
                let mut record = self.error_record()?;
                kernels::mixup(
                    self.rt(),
                    cfg,
                    x,
                    perm,
                    &mut y,
                    &mut record,
                    lambda,
                    n as u32,
                    per_sample as u32,
                )?;
            }
            self.after_checked_kernel()?;
        }
        Ok(y)
    }
}
