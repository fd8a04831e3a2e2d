//! Element-wise ops, the full-buffer sum and mixup (kernels/eltwise.cu, kernels/reduce.cu).

use anyhow::Result;

use super::{kernels, to_u32, CudaBackend, CudaBuf, CudaIndex, LaunchConfig};
use crate::backend::{ElementwiseOps, SampleDims};

impl ElementwiseOps for CudaBackend {
    /// Block partial sums, then one block over the partials (a fixed summation order for a given
    /// device).
    fn sum_unchecked(&self, a: &CudaBuf) -> Result<CudaBuf> {
        let n = to_u32("sum", "length", a.len())?;
        let Some(cfg) = self.elementwise(a.len()) else {
            return self.alloc_zeroed(1); // the sum of nothing
        };
        let mut out = self.alloc(1)?;
        if cfg.grid.0 == 1 {
            kernels::reduce_sum(self.dev(), cfg, a, &mut out, n)?;
        } else {
            let mut partial = self.alloc(cfg.grid.0 as usize)?;
            kernels::reduce_sum(self.dev(), cfg, a, &mut partial, n)?;
            let last = LaunchConfig::linear(1, 256);
            kernels::reduce_sum(self.dev(), last, &partial, &mut out, cfg.grid.0)?;
        }
        Ok(out)
    }

    fn add_assign_unchecked(&self, a: &mut CudaBuf, b: &CudaBuf) -> Result<()> {
        let n = to_u32("add_assign", "length", a.len())?;
        if let Some(cfg) = self.elementwise(a.len()) {
            kernels::add_assign(self.dev(), cfg, a, b, n)?;
        }
        Ok(())
    }

    fn scale_unchecked(&self, a: &CudaBuf, alpha: f32) -> Result<CudaBuf> {
        let n = to_u32("scale", "length", a.len())?;
        let mut y = self.alloc(a.len())?;
        if let Some(cfg) = self.elementwise(a.len()) {
            kernels::scale(self.dev(), cfg, a, &mut y, alpha, n)?;
        }
        Ok(y)
    }

    fn mixup_unchecked(
        &self,
        x: &CudaBuf,
        perm: &CudaIndex,
        lambda: &CudaBuf,
        d: SampleDims,
    ) -> Result<CudaBuf> {
        let total = to_u32("mixup", "size", d.len())?;
        let mut y = self.alloc(d.len())?;
        if let Some(cfg) = self.elementwise(total as usize) {
            {
                let mut record = self.error_record()?;
                kernels::mixup(
                    self.dev(),
                    cfg,
                    x,
                    perm,
                    lambda,
                    &mut y,
                    &mut record,
                    d.n as u32,
                    d.per_sample as u32,
                )?;
            }
            self.after_checked_kernel()?;
        }
        Ok(y)
    }
}
