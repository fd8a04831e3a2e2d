//! The unfused loss composition's ops (kernels/unfused.cu), the benchmark baseline of the fused loss.

use anyhow::Result;

use super::{kernels, to_u32, CudaBackend, CudaBuf, CudaIndex};
use crate::backend::unfused::UnfusedLossOps;
use crate::backend::RowDims;

impl UnfusedLossOps for CudaBackend {
    fn add_row_bias_unchecked(&self, x: &CudaBuf, bias: &CudaBuf, d: RowDims) -> Result<CudaBuf> {
        to_u32("add_row_bias", "size", d.len())?;
        let mut y = self.alloc(d.len())?;
        if let Some(cfg) = self.elementwise(d.len()) {
            kernels::add_row_bias(self.dev(), cfg, x, bias, &mut y, d.n as u32, d.c as u32)?;
        }
        Ok(y)
    }

    fn log_softmax_rows_unchecked(&self, x: &CudaBuf, d: RowDims) -> Result<CudaBuf> {
        self.softmax(x, d, true)
    }

    fn gather_rows_unchecked(&self, x: &CudaBuf, idx: &CudaIndex, d: RowDims) -> Result<CudaBuf> {
        to_u32("gather_rows", "size", d.len())?;
        let mut out = self.alloc(d.n)?;
        if let Some(cfg) = self.elementwise(d.n) {
            {
                let mut record = self.error_record()?;
                kernels::gather_rows(
                    self.dev(),
                    cfg,
                    x,
                    idx,
                    &mut out,
                    &mut record,
                    d.n as u32,
                    d.c as u32,
                )?;
            }
            self.after_checked_kernel()?;
        }
        Ok(out)
    }

    fn sla_weights_unchecked(
        &self,
        prob: &CudaBuf,
        cos_y: &CudaBuf,
        cos_star: &CudaBuf,
        labels: &CudaIndex,
        gamma: f32,
        tau: f32,
    ) -> Result<CudaBuf> {
        const OP: &str = "sla_weights";
        let n = prob.len();
        let c = to_u32(OP, "classes", cos_star.len())?;
        let mut w = self.alloc(n)?;
        if let Some(cfg) = self.elementwise(n) {
            {
                let mut record = self.error_record()?;
                kernels::sla_weights(
                    self.dev(),
                    cfg,
                    prob,
                    cos_y,
                    cos_star,
                    labels,
                    &mut w,
                    &mut record,
                    to_u32(OP, "rows", n)?,
                    c,
                    gamma,
                    tau,
                )?;
            }
            self.after_checked_kernel()?;
        }
        Ok(w)
    }

    fn softmax_xent_backward_unchecked(
        &self,
        probs: &CudaBuf,
        labels: &CudaIndex,
        row_scale: &CudaBuf,
        d: RowDims,
    ) -> Result<CudaBuf> {
        to_u32("softmax_xent_backward", "size", d.len())?;
        let mut dlogits = self.alloc(d.len())?;
        if let Some(cfg) = self.elementwise(d.len()) {
            {
                let mut record = self.error_record()?;
                kernels::softmax_xent_backward(
                    self.dev(),
                    cfg,
                    probs,
                    labels,
                    row_scale,
                    &mut dlogits,
                    &mut record,
                    d.n as u32,
                    d.c as u32,
                )?;
            }
            self.after_checked_kernel()?;
        }
        Ok(dlogits)
    }

    fn mul_unchecked(&self, a: &CudaBuf, b: &CudaBuf) -> Result<CudaBuf> {
        let n = to_u32("mul", "length", a.len())?;
        let mut y = self.alloc(a.len())?;
        if let Some(cfg) = self.elementwise(a.len()) {
            kernels::mul(self.dev(), cfg, a, b, &mut y, n)?;
        }
        Ok(y)
    }
}
