//! The method's fused ops (kernels/loss.cu, kernels/cosmax.cu): the logit-adjusted softmax
//! cross-entropy with per-sample weighting (loss, `p_i`, `w_i` and `dlogits` in one pass, one block
//! per row), the feature/classifier cosine, and the per-class cos-max table update.

use anyhow::Result;

use super::{check_len, kernels, to_u32, CudaBackend, CudaBuf, CudaIndex, LaunchConfig};
use crate::backend::abi::{WEIGHT_FOCAL, WEIGHT_PER_CLASS, WEIGHT_SLA};
use crate::backend::{LossArgs, LossOutput, LossReduction, LossTargets, LossWeighting};

impl CudaBackend {
    pub(super) fn fused_loss_impl(&self, args: LossArgs<'_, Self>) -> Result<LossOutput<Self>> {
        const OP: &str = "fused_loss";
        args.validate(|b| b.len(), |i| i.len())?;
        let LossArgs {
            logits,
            n,
            c,
            targets,
            adjustment,
            weighting,
            reduction,
        } = args;
        to_u32(OP, "size", n * c)?;
        let (target_a, target_b, lambda) = match targets {
            LossTargets::Single(y) => (y, None, 1.0),
            LossTargets::Mixed { a, b, lambda } => (a, Some(b), lambda),
        };
        let (code, class_weight, cos_y, cos_star, gamma, tau) = match weighting {
            LossWeighting::Unit => (WEIGHT_PER_CLASS, None, None, None, 0.0, 0.0),
            LossWeighting::PerClass(cw) => (WEIGHT_PER_CLASS, Some(cw), None, None, 0.0, 0.0),
            LossWeighting::Focal { gamma } => (WEIGHT_FOCAL, None, None, None, gamma, 0.0),
            LossWeighting::Sla {
                cos_y,
                cos_star,
                gamma,
                tau,
            } => (WEIGHT_SLA, None, Some(cos_y), Some(cos_star), gamma, tau),
        };

        let mut loss = self.alloc(n)?;
        let mut prob = self.alloc(n)?;
        let mut weight = self.alloc(n)?;
        let mut dlogits = self.alloc(n * c)?;
        let Some(cfg) = self.per_row(n, c) else {
            return Ok(LossOutput {
                loss,
                prob,
                weight,
                dlogits,
            });
        };
        let grad_scale = match reduction {
            LossReduction::Mean => (1.0 / n as f64) as f32,
            LossReduction::WeightNormalized => 1.0,
        };
        {
            let mut record = self.error_record()?;
            kernels::fused_loss_rows(
                self.rt(),
                cfg,
                logits,
                adjustment,
                target_a,
                target_b,
                lambda,
                code,
                class_weight,
                cos_y,
                cos_star,
                gamma,
                tau,
                grad_scale,
                &mut loss,
                &mut prob,
                &mut weight,
                &mut dlogits,
                &mut record,
                n as u32,
                c as u32,
            )?;
        }
        self.after_checked_kernel()?;
        if reduction == LossReduction::WeightNormalized {
            // dlogits /= sum_i w_i, without reading the sum on the host.
            let total = self.sum_impl(&weight)?;
            if let Some(cfg) = self.elementwise(n * c) {
                kernels::scale_by_inverse(self.rt(), cfg, &mut dlogits, &total, (n * c) as u32)?;
            }
        }
        Ok(LossOutput {
            loss,
            prob,
            weight,
            dlogits,
        })
    }

    pub(super) fn row_cosine_impl(
        &self,
        features: &CudaBuf,
        w: &CudaBuf,
        labels: &CudaIndex,
        n: usize,
        d: usize,
        c: usize,
    ) -> Result<CudaBuf> {
        const OP: &str = "row_cosine";
        check_len(OP, "features", features.len(), n * d)?;
        check_len(OP, "w", w.len(), c * d)?;
        check_len(OP, "labels", labels.len(), n)?;
        to_u32(OP, "features size", n * d)?;
        to_u32(OP, "w size", c * d)?;
        let mut cos = self.alloc(n)?;
        // One warp per row, 4 warps per block.
        if let Some(cfg) = self.launch_1d(n * 32, 128) {
            {
                let mut record = self.error_record()?;
                kernels::row_cosine(
                    self.rt(),
                    cfg,
                    features,
                    w,
                    labels,
                    &mut cos,
                    &mut record,
                    n as u32,
                    d as u32,
                    c as u32,
                )?;
            }
            self.after_checked_kernel()?;
        }
        Ok(cos)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn cosmax_update_impl(
        &self,
        logits: &CudaBuf,
        cos: &CudaBuf,
        labels: &CudaIndex,
        n: usize,
        c: usize,
        table_logit: &mut CudaBuf,
        table_cos: &mut CudaBuf,
    ) -> Result<()> {
        const OP: &str = "cosmax_update";
        check_len(OP, "logits", logits.len(), n * c)?;
        check_len(OP, "cos", cos.len(), n)?;
        check_len(OP, "labels", labels.len(), n)?;
        check_len(OP, "table_logit", table_logit.len(), c)?;
        check_len(OP, "table_cos", table_cos.len(), c)?;
        to_u32(OP, "size", n * c)?;
        let Some(cfg) = self.elementwise(n) else {
            return Ok(());
        };
        // Per class: the batch's best (logit, earliest sample) as an ordered u64 key, 0 = none.
        let mut keys = self.alloc::<u64>(c)?;
        {
            let mut record = self.error_record()?;
            kernels::cosmax_batch_best(
                self.rt(),
                cfg,
                logits,
                labels,
                &mut keys,
                &mut record,
                n as u32,
                c as u32,
            )?;
        }
        self.after_checked_kernel()?;
        let merge = self.elementwise(c).unwrap_or(LaunchConfig::linear(1, 32));
        kernels::cosmax_merge(
            self.rt(),
            merge,
            &keys,
            logits,
            cos,
            table_logit,
            table_cos,
            c as u32,
        )
    }
}
