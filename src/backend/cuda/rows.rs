//! Row-wise ops on `[n, c]` matrices (kernels/loss.cu): softmax, log-softmax, bias, gather, max.

use anyhow::{bail, Result};

use super::{check_len, kernels, to_u32, CudaBackend, CudaBuf, CudaIndex};

fn check_rows(op: &str, x: &CudaBuf, n: usize, c: usize) -> Result<()> {
    check_len(op, "x", x.len(), n * c)?;
    if c == 0 && n > 0 {
        bail!("{op}: rows must have at least one column");
    }
    to_u32(op, "size", n * c)?;
    Ok(())
}

impl CudaBackend {
    pub(super) fn softmax_rows_impl(
        &self,
        x: &CudaBuf,
        n: usize,
        c: usize,
        log: bool,
    ) -> Result<CudaBuf> {
        check_rows(
            if log {
                "log_softmax_rows"
            } else {
                "softmax_rows"
            },
            x,
            n,
            c,
        )?;
        let mut y = self.alloc(n * c)?;
        if let Some(cfg) = self.per_row(n, c) {
            kernels::softmax_rows(
                self.rt(),
                cfg,
                x,
                &mut y,
                i32::from(log),
                n as u32,
                c as u32,
            )?;
        }
        Ok(y)
    }

    pub(super) fn add_row_bias_impl(
        &self,
        x: &CudaBuf,
        bias: &CudaBuf,
        n: usize,
        c: usize,
    ) -> Result<CudaBuf> {
        const OP: &str = "add_row_bias";
        check_len(OP, "x", x.len(), n * c)?;
        check_len(OP, "bias", bias.len(), c)?;
        to_u32(OP, "size", n * c)?;
        let mut y = self.alloc(n * c)?;
        if let Some(cfg) = self.elementwise(n * c) {
            kernels::add_row_bias(self.rt(), cfg, x, bias, &mut y, n as u32, c as u32)?;
        }
        Ok(y)
    }

    /// SLA weights as a separate pass (the unfused baseline of `fused_loss`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn sla_weights_impl(
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
        check_len(OP, "cos_y", cos_y.len(), n)?;
        check_len(OP, "labels", labels.len(), n)?;
        let c = to_u32(OP, "classes", cos_star.len())?;
        let mut w = self.alloc(n)?;
        if let Some(cfg) = self.elementwise(n) {
            {
                let mut record = self.error_record()?;
                kernels::sla_weights(
                    self.rt(),
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

    /// `(probs - onehot(labels)) * row_scale` per row (the unfused baseline's backward).
    pub(super) fn softmax_xent_backward_impl(
        &self,
        probs: &CudaBuf,
        labels: &CudaIndex,
        row_scale: &CudaBuf,
        n: usize,
        c: usize,
    ) -> Result<CudaBuf> {
        const OP: &str = "softmax_xent_backward";
        check_rows(OP, probs, n, c)?;
        check_len(OP, "labels", labels.len(), n)?;
        check_len(OP, "row_scale", row_scale.len(), n)?;
        let mut dlogits = self.alloc(n * c)?;
        if let Some(cfg) = self.elementwise(n * c) {
            {
                let mut record = self.error_record()?;
                kernels::softmax_xent_backward(
                    self.rt(),
                    cfg,
                    probs,
                    labels,
                    row_scale,
                    &mut dlogits,
                    &mut record,
                    n as u32,
                    c as u32,
                )?;
            }
            self.after_checked_kernel()?;
        }
        Ok(dlogits)
    }

    pub(super) fn gather_rows_impl(
        &self,
        x: &CudaBuf,
        idx: &CudaIndex,
        n: usize,
        c: usize,
    ) -> Result<CudaBuf> {
        const OP: &str = "gather_rows";
        check_len(OP, "x", x.len(), n * c)?;
        check_len(OP, "idx", idx.len(), n)?;
        to_u32(OP, "size", n * c)?;
        let mut out = self.alloc(n)?;
        if let Some(cfg) = self.elementwise(n) {
            {
                let mut record = self.error_record()?;
                kernels::gather_rows(
                    self.rt(),
                    cfg,
                    x,
                    idx,
                    &mut out,
                    &mut record,
                    n as u32,
                    c as u32,
                )?;
            }
            self.after_checked_kernel()?;
        }
        Ok(out)
    }

    pub(super) fn row_max_impl(
        &self,
        x: &CudaBuf,
        n: usize,
        c: usize,
    ) -> Result<(CudaBuf, CudaIndex)> {
        check_rows("row_max", x, n, c)?;
        let mut value = self.alloc(n)?;
        let mut index = self.alloc(n)?;
        if let Some(cfg) = self.per_row(n, c) {
            kernels::row_max(
                self.rt(),
                cfg,
                x,
                &mut value,
                &mut index,
                n as u32,
                c as u32,
            )?;
        }
        Ok((value, index))
    }
}
