//! One expert's loss for one batch (paper Eq. 16 with the weights of Eq. 17 or a baseline), as the
//! backend's fused op, plus the unfused composition kept as the benchmark baseline and cross-check.

use super::loss_kinds::Reweighting;
use super::plan::EpochPlan;
use super::sla::SlaTable;
use crate::backend::{
    Backend, CosineDims, LossArgs, LossOutput, LossReduction, LossTargets, LossWeighting, RowDims,
    UnfusedLoss,
};
use anyhow::{bail, Result};

/// Everything the loss of one expert needs for one batch.
pub struct ExpertLossInputs<'a, B: Backend> {
    /// `[n, c]` raw logits, `[n, d]` penultimate features, `[c, d]` classifier weight.
    pub logits: &'a B::Buf,
    pub features: &'a B::Buf,
    pub classifier: &'a B::Buf,
    pub n: usize,
    pub c: usize,
    pub d: usize,
    pub targets: LossTargets<'a, B>,
    /// `[c]` `la_tau * log prior`.
    pub adjustment: &'a B::Buf,
    /// `[c]` class weights of the active class-level reweighting (RW or CB), if any.
    pub class_weights: Option<&'a B::Buf>,
    pub gamma: f32,
    pub tau: f32,
    pub reduction: LossReduction,
}

/// Forms the expert's loss under `plan`; with SLA it also merges the batch into the expert's table.
pub fn expert_loss<B: Backend>(
    be: &B,
    plan: &EpochPlan,
    inputs: ExpertLossInputs<'_, B>,
    sla: Option<&mut SlaTable<B>>,
) -> Result<LossOutput<B>> {
    let adjustment = plan.logit_adjusted.then_some(inputs.adjustment);
    let mut cos_y = None;
    if plan.reweighting == Reweighting::Sla {
        let (LossTargets::Single(labels), Some(table)) = (&inputs.targets, sla) else {
            bail!("SLA needs single targets (no mixup) and a cos-max table");
        };
        let dims = CosineDims {
            n: inputs.n,
            d: inputs.d,
            c: inputs.c,
        };
        let cos = be.row_cosine(inputs.features, inputs.classifier, labels, dims)?;
        // The epoch rule reads last epoch's table, so merging first only matters for the running rule.
        table.observe(be, inputs.logits, &cos, labels, inputs.n)?;
        cos_y = Some((cos, table));
    }
    let weighting = match plan.reweighting {
        Reweighting::None => LossWeighting::Unit,
        Reweighting::InverseFrequency | Reweighting::ClassBalanced => {
            let Some(w) = inputs.class_weights else {
                bail!("class-level reweighting needs class weights");
            };
            LossWeighting::PerClass(w)
        }
        Reweighting::Focal => LossWeighting::Focal {
            gamma: inputs.gamma,
        },
        Reweighting::Sla => {
            let (cos, table) = cos_y.as_ref().expect("set above for SLA");
            LossWeighting::Sla {
                cos_y: cos,
                cos_star: table.cos_star(),
                gamma: inputs.gamma,
                tau: inputs.tau,
            }
        }
    };
    be.fused_loss(LossArgs {
        logits: inputs.logits,
        n: inputs.n,
        c: inputs.c,
        targets: inputs.targets,
        adjustment,
        weighting,
        reduction: inputs.reduction,
    })
}

/// The same logit-adjusted, SLA-weighted cross-entropy as separate ops (add bias, log-softmax, gather,
/// softmax, weights, backward): the baseline the fused op is benchmarked against. Single targets,
/// `Mean` reduction; `logits [n, c]`; returns `(per-sample weighted loss [n], dlogits [n, c])`.
pub fn unfused_loss<B: UnfusedLoss>(
    be: &B,
    logits: &B::Buf,
    labels: &B::Index,
    adjustment: &B::Buf,
    sla: Option<(&B::Buf, &B::Buf, f32, f32)>,
    d: RowDims,
) -> Result<(B::Buf, B::Buf)> {
    let adjusted = be.add_row_bias(logits, adjustment, d)?;
    let log_probs = be.log_softmax_rows(&adjusted, d)?;
    let log_p = be.gather_rows(&log_probs, labels, d)?;
    let probs = be.softmax_rows(&adjusted, d)?;
    let weight = match sla {
        Some((cos_y, cos_star, gamma, tau)) => {
            let p = be.gather_rows(&probs, labels, d)?;
            be.sla_weights(&p, cos_y, cos_star, labels, gamma, tau)?
        }
        None => be.upload(&vec![1.0; d.n])?,
    };
    let loss = be.scale(&be.mul(&log_p, &weight)?, -1.0)?;
    let row_scale = be.scale(&weight, 1.0 / d.n as f32)?;
    let dlogits = be.softmax_xent_backward(&probs, labels, &row_scale, d)?;
    Ok((loss, dlogits))
}
