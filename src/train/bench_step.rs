//! A complete training step on random data, for throughput measurements (`ltrain bench`, the
//! criterion benches): the same [`train_step`] the epoch loop runs, with inputs already on the device
//! so that only the step itself is timed.

use crate::backend::{Backend, LossReduction, SgdConfig};
use crate::config::{ModelKind, TrainConfig};
use crate::method::{EpochPlan, SlaTable};
use crate::model::MultiExpertNet;
use crate::train::trainer::{train_step, StepInputs};
use anyhow::Result;
use rand::{Rng, SeedableRng};

/// What to time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BenchStepConfig {
    pub model: ModelKind,
    pub experts: usize,
    pub batch_size: usize,
    pub classes: usize,
    /// Square input resolution.
    pub image_size: usize,
    /// Stage 2 (one shared view, no mixup, SLA weights) instead of stage 1 (one view per expert,
    /// mixup, no reweighting).
    pub stage2: bool,
}

/// The model and one batch of random inputs, resident on the device.
pub struct BenchStep<B: Backend> {
    cfg: TrainConfig,
    plan: EpochPlan,
    model: MultiExpertNet<B>,
    /// One `[n, 3, s, s]` view per expert in stage 1, one shared view in stage 2.
    views: Vec<B::Buf>,
    labels: B::Index,         // [n]
    partner_labels: B::Index, // [n] labels of the mixup partners
    perm: B::Index,           // [n] mixup partner of each sample
    adjustment: B::Buf,       // [c] log prior (uniform)
    sla_tables: Vec<SlaTable<B>>,
    n: usize,
    size: usize,
}

/// Mixup coefficient of every timed step (its value does not change the work).
const MIX_LAMBDA: f32 = 0.7;

impl<B: Backend> BenchStep<B> {
    pub fn new(be: &B, bench: BenchStepConfig) -> Result<Self> {
        let BenchStepConfig {
            model,
            experts,
            batch_size: n,
            classes: c,
            image_size: size,
            stage2,
        } = bench;
        let cfg = TrainConfig {
            model,
            experts,
            batch_size: n,
            stage2_epoch: Some(if stage2 { 0 } else { 1 }),
            epochs: 2,
            ..TrainConfig::default()
        };
        let plan = EpochPlan::for_epoch(&cfg, 0);
        let net = MultiExpertNet::from_config(be, &cfg, c)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let per_view = n * 3 * size * size;
        let view_count = if plan.augment { experts } else { 1 };
        let views = (0..view_count)
            .map(|_| {
                let host: Vec<f32> = (0..per_view).map(|_| rng.random_range(-2.0..2.0)).collect();
                be.upload(&host)
            })
            .collect::<Result<Vec<_>>>()?;
        let labels: Vec<u32> = (0..n).map(|_| rng.random_range(0..c as u32)).collect();
        // Mixup partner of sample i: sample n-1-i.
        let perm: Vec<u32> = (0..n as u32).rev().collect();
        let partner_labels: Vec<u32> = perm.iter().map(|&j| labels[j as usize]).collect();
        let sla_tables = (0..experts)
            .map(|_| SlaTable::new(be, c, cfg.sla_table_rule))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            plan,
            model: net,
            views,
            labels: be.upload_index(&labels)?,
            partner_labels: be.upload_index(&partner_labels)?,
            perm: be.upload_index(&perm)?,
            adjustment: be.upload(&vec![-(c as f32).ln(); c])?,
            sla_tables,
            n,
            size,
            cfg,
        })
    }

    /// The epoch plan the step follows (stage, mixup, reweighting).
    pub fn plan(&self) -> &EpochPlan {
        &self.plan
    }

    /// One training step: mixup of the views (stage 1), forward of all experts, fused losses,
    /// backward and SGD. Asynchronous on the GPU; call `be.synchronize()` before reading a clock.
    pub fn run(&mut self, be: &B) -> Result<()> {
        let (n, size) = (self.n, self.size);
        let inputs = StepInputs {
            cfg: &self.cfg,
            plan: &self.plan,
            adjustment: &self.adjustment,
            class_weights: None,
            reduction: LossReduction::Mean,
            sgd: SgdConfig {
                lr: 0.01,
                momentum: 0.9,
                weight_decay: 5e-4,
                nesterov: false,
            },
        };
        if self.plan.mixup_alpha > 0.0 {
            let mixed_views = self
                .views
                .iter()
                .map(|v| be.mixup(v, &self.perm, MIX_LAMBDA, n, 3 * size * size))
                .collect::<Result<Vec<_>>>()?;
            train_step(
                be,
                &mut self.model,
                &inputs,
                &mixed_views,
                &self.labels,
                Some((&self.partner_labels, MIX_LAMBDA)),
                n,
                (size, size),
                &mut self.sla_tables,
            )?;
        } else {
            train_step(
                be,
                &mut self.model,
                &inputs,
                &self.views,
                &self.labels,
                None,
                n,
                (size, size),
                &mut self.sla_tables,
            )?;
        }
        Ok(())
    }
}
