//! The method's fused ops (kernels/loss.cu, kernels/cosmax.cu): the logit-adjusted softmax
//! cross-entropy with per-sample weighting (loss, `p_i`, `w_i` and `dlogits` in one pass, one block
//! per row), the feature/classifier cosine, and the per-class cos-max table update.

use anyhow::Result;

use super::{kernels, to_u32, CudaBackend, CudaBuf, CudaIndex, LaunchConfig};
use crate::backend::abi::{WEIGHT_FOCAL, WEIGHT_PER_CLASS, WEIGHT_SLA};
use crate::backend::{
    CosineDims, ElementwiseOps, LossArgs, LossOps, LossOutput, LossReduction, LossTargets,
    LossWeighting, RowDims,
};

impl LossOps for CudaBackend {
    fn fused_loss_unchecked(&self, args: LossArgs<'_, Self>) -> Result<LossOutput<Self>> {
        let LossArgs {
            logits,
            n,
            c,
            targets,
            adjustment,
            weighting,
            reduction,
        } = args;
        to_u32("fused_loss", "size", n * c)?;
        let (target_a, target_b, lambda) = match targets {
            LossTargets::Single(y) => (y, None, None),
            LossTargets::Mixed { a, b, lambda } => (a, Some(b), Some(lambda)),
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
                self.dev(),
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
            let total = self.sum_unchecked(&weight)?;
            if let Some(cfg) = self.elementwise(n * c) {
                kernels::scale_by_inverse(self.dev(), cfg, &mut dlogits, &total, (n * c) as u32)?;
            }
        }
        Ok(LossOutput {
            loss,
            prob,
            weight,
            dlogits,
        })
    }

    fn row_cosine_unchecked(
        &self,
        features: &CudaBuf,
        w: &CudaBuf,
        labels: &CudaIndex,
        dims: CosineDims,
    ) -> Result<CudaBuf> {
        const OP: &str = "row_cosine";
        let CosineDims { n, d, c } = dims;
        to_u32(OP, "features size", n * d)?;
        to_u32(OP, "w size", c * d)?;
        let mut cos = self.alloc(n)?;
        // One warp per row, 4 warps per block.
        if let Some(cfg) = self.launch_1d(n * 32, 128) {
            {
                let mut record = self.error_record()?;
                kernels::row_cosine(
                    self.dev(),
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

    fn cosmax_update_unchecked(
        &self,
        logits: &CudaBuf,
        cos: &CudaBuf,
        labels: &CudaIndex,
        d: RowDims,
        table_logit: &mut CudaBuf,
        table_cos: &mut CudaBuf,
    ) -> Result<()> {
        let RowDims { n, c } = d;
        to_u32("cosmax_update", "size", n * c)?;
        let Some(cfg) = self.elementwise(n) else {
            return Ok(());
        };
        // Per class: the batch's best (logit, earliest sample) as an ordered u64 key, 0 = none.
        let mut keys = self.alloc_zeroed::<u64>(c)?;
        {
            let mut record = self.error_record()?;
            kernels::cosmax_batch_best(
                self.dev(),
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
            self.dev(),
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
