//! One training step (Algorithm 1, lines 3-8), written once for the epoch loop and `ltrain bench`:
//! the batch's views (Eq. 13: one per expert at its level in stage 1, one shared in stage 2), mixup
//! of the views with one draw shared by the experts (Eq. 14), each expert's loss (Eqs. 16-17), the
//! backward of their eps-weighted sum (Eq. 18) and the SGD update.

use crate::augment::draw_mixup;
use crate::backend::{Backend, LossTargets, SampleDims, SgdConfig};
use crate::config::TrainConfig;
use crate::method::{expert_loss, EpochPlan, ExpertLossInputs, LossSetup, SlaTable};
use crate::model::MultiExpertNet;
use crate::train::optimizer::sgd_update;
use anyhow::{ensure, Result};

/// What stays fixed across the steps of an epoch.
pub struct StepContext<'a, B: Backend> {
    pub cfg: &'a TrainConfig,
    pub plan: &'a EpochPlan,
    pub losses: &'a LossSetup<B>,
    pub sgd: SgdConfig,
}

/// One batch's mixup (Eq. 14): `x_i <- lambda x_i + (1 - lambda) x_perm[i]` for every view, the
/// targets mixed alike.
#[derive(Clone, Debug, PartialEq)]
pub struct Mixup {
    pub lambda: f32,
    /// `[n]` the partner of each sample.
    pub perm: Vec<u32>,
}

impl Mixup {
    /// The draw of batch `step` of `epoch` when the plan mixes: a function of `(seed, epoch, step)`,
    /// so a resumed run sees the same mixup.
    pub fn for_step(
        plan: &EpochPlan,
        seed: u64,
        epoch: usize,
        step: usize,
        n: usize,
    ) -> Option<Self> {
        (plan.mixup_alpha > 0.0).then(|| {
            let (lambda, perm) = draw_mixup(seed, epoch as u32, step as u32, n, plan.mixup_alpha);
            Self { lambda, perm }
        })
    }
}

/// What one step trains on.
pub struct StepBatch<'a, B: Backend> {
    /// `[views * n, 3, h, w]`: one view of the batch per entry of the plan's view levels, stacked.
    pub x: B::Buf,
    pub views: usize,
    /// `[n]` the samples' classes.
    pub labels: &'a [u32],
    pub mixup: Option<Mixup>,
    /// `(h, w)` of the views.
    pub hw: (usize, usize),
}

/// One training step. Returns the step's total loss as a one-element device buffer (not read back
/// here, so the step stays asynchronous on a GPU).
pub fn train_step<B: Backend>(
    be: &B,
    model: &mut MultiExpertNet<B>,
    ctx: &StepContext<'_, B>,
    batch: StepBatch<'_, B>,
    sla_tables: &mut [SlaTable<B>],
) -> Result<B::Buf> {
    let StepBatch {
        mut x,
        views,
        labels,
        mixup,
        hw: (h, w),
    } = batch;
    let n = labels.len();
    let labels_dev = be.upload_index(labels)?;
    let mut partner_labels = None;
    if let Some(mix) = &mixup {
        ensure!(
            mix.perm.len() == n,
            "train_step: a mixup permutation of {} for a batch of {n}",
            mix.perm.len()
        );
        be.range_push("mixup");
        // One launch for every view: sample i of view k mixes with sample perm[i] of view k.
        let stacked: Vec<u32> = (0..views)
            .flat_map(|k| mix.perm.iter().map(move |&j| (k * n) as u32 + j))
            .collect();
        let perm = be.upload_index(&stacked)?;
        let d = SampleDims {
            n: views * n,
            per_sample: 3 * h * w,
        };
        x = be.mixup(&x, &perm, mix.lambda, d)?;
        let partner: Vec<u32> = mix.perm.iter().map(|&j| labels[j as usize]).collect();
        partner_labels = Some(be.upload_index(&partner)?);
        be.range_pop();
    }

    let cfg = ctx.cfg;
    let classes = model.num_classes();
    be.range_push("forward");
    let outs = model.forward_train(be, x, views, n, h, w)?;
    be.range_pop();

    be.range_push("loss");
    let mut total = be.zeros(1)?;
    let mut dlogits = Vec::with_capacity(outs.len());
    for (k, o) in outs.iter().enumerate() {
        let targets = match (&partner_labels, &mixup) {
            (Some(b), Some(mix)) => LossTargets::Mixed {
                a: &labels_dev,
                b,
                lambda: mix.lambda,
            },
            _ => LossTargets::Single(&labels_dev),
        };
        let out = expert_loss(
            be,
            ctx.plan,
            ExpertLossInputs {
                logits: &o.logits,
                features: &o.features,
                classifier: model.classifier_weight(k),
                n,
                c: classes,
                d: model.feature_dim(),
                targets,
                adjustment: &ctx.losses.adjustment,
                class_weights: ctx.losses.class_weights.as_ref(),
                gamma: cfg.gamma,
                tau: cfg.tau,
                reduction: ctx.losses.reduction,
            },
            sla_tables.get_mut(k),
        )?;
        let eps = cfg.expert_loss_weight(k);
        be.add_assign(&mut total, &be.scale(&be.sum(&out.loss)?, eps / n as f32)?)?;
        dlogits.push(if eps == 1.0 {
            out.dlogits
        } else {
            be.scale(&out.dlogits, eps)?
        });
    }
    be.range_pop();

    be.range_push("backward");
    model.backward(be, &dlogits)?;
    be.range_pop();
    be.range_push("optimizer");
    sgd_update(be, model, ctx.sgd)?;
    be.range_pop();
    Ok(total)
}
