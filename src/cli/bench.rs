//! `ltrain bench`: training throughput (samples/s) of a model on a device, on random data, with the
//! full stage-1 step (three augmented views, mixup, fused loss, backward, SGD) or the stage-2 step.

use super::device::{dispatch, OnBackend};
use anyhow::Result;
use clap::Args;
use ltrain::backend::{Backend, LossReduction, SgdConfig};
use ltrain::config::{DeviceKind, ModelKind, TrainConfig};
use ltrain::method::{EpochPlan, SlaTable};
use ltrain::model::MultiExpertNet;
use ltrain::train::trainer::{train_step, StepInputs};
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchCmd {
    #[arg(long, value_enum, default_value = "resnet32")]
    pub model: ModelKind,
    #[arg(long, default_value_t = 3)]
    pub experts: usize,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    /// Input resolution [default: 32 for resnet32, 224 otherwise].
    #[arg(long)]
    pub image_size: Option<usize>,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceKind,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Timed steps (after the warm-up steps).
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Time the stage-2 step (one shared view, SLA weights) instead of stage 1.
    #[arg(long)]
    pub stage2: bool,
    /// Strict fp32 GEMMs on the GPU (no TF32).
    #[arg(long)]
    pub no_tf32: bool,
}

pub fn run(cmd: BenchCmd) -> Result<()> {
    let tf32 = !cmd.no_tf32;
    let (device, threads) = (cmd.device, cmd.threads);
    dispatch(device, threads, tf32, cmd)
}

impl OnBackend for BenchCmd {
    type Output = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let size = self
            .image_size
            .unwrap_or(if self.model == ModelKind::Resnet32 {
                32
            } else {
                224
            });
        let cfg = TrainConfig {
            model: self.model,
            experts: self.experts,
            batch_size: self.batch_size,
            stage2_epoch: Some(if self.stage2 { 0 } else { 1 }),
            epochs: 2,
            ..TrainConfig::default()
        };
        let (n, c) = (self.batch_size, self.classes);
        let plan = EpochPlan::for_epoch(&cfg, 0);
        let mut model = MultiExpertNet::from_config(be, &cfg, c)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let per_view = n * 3 * size * size;
        let view_count = if plan.augment { self.experts } else { 1 };
        let views = (0..view_count)
            .map(|_| {
                be.upload(
                    &(0..per_view)
                        .map(|_| rng.random_range(-2.0..2.0))
                        .collect::<Vec<f32>>(),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let labels: Vec<u32> = (0..n).map(|_| rng.random_range(0..c as u32)).collect();
        // Mixup partner of sample i: sample n-1-i.
        let perm: Vec<u32> = (0..n as u32).rev().collect();
        let partners: Vec<u32> = perm.iter().map(|&j| labels[j as usize]).collect();
        let (labels, partners, perm) = (
            be.upload_index(&labels)?,
            be.upload_index(&partners)?,
            be.upload_index(&perm)?,
        );
        let adjustment = be.upload(&vec![-(c as f32).ln(); c])?;
        let mut tables = (0..self.experts)
            .map(|_| SlaTable::new(be, c, cfg.sla_table_rule))
            .collect::<Result<Vec<_>>>()?;
        let inputs = StepInputs {
            cfg: &cfg,
            plan: &plan,
            adjustment: &adjustment,
            class_weights: None,
            reduction: LossReduction::Mean,
            sgd: SgdConfig {
                lr: 0.01,
                momentum: 0.9,
                weight_decay: 5e-4,
                nesterov: false,
            },
        };
        let mixed = (plan.mixup_alpha > 0.0).then_some((&partners, 0.7));
        let mut step = |model: &mut MultiExpertNet<B>| -> Result<()> {
            if mixed.is_some() {
                let mixed_views = views
                    .iter()
                    .map(|v| be.mixup(v, &perm, 0.7, n, 3 * size * size))
                    .collect::<Result<Vec<_>>>()?;
                train_step(
                    be,
                    model,
                    &inputs,
                    &mixed_views,
                    &labels,
                    mixed,
                    n,
                    (size, size),
                    &mut tables,
                )?;
            } else {
                train_step(
                    be,
                    model,
                    &inputs,
                    &views,
                    &labels,
                    None,
                    n,
                    (size, size),
                    &mut tables,
                )?;
            }
            Ok(())
        };
        for _ in 0..self.warmup {
            step(&mut model)?;
        }
        be.synchronize()?;
        let start = Instant::now();
        for _ in 0..self.steps {
            step(&mut model)?;
        }
        be.synchronize()?;
        let secs = start.elapsed().as_secs_f64();
        let samples = (self.steps * n) as f64;
        println!(
            "{:?} x{} experts, batch {n}, {size}x{size}, stage {}, {}: {:.1} samples/s ({:.2} ms/step over {} steps)",
            self.model,
            self.experts,
            plan.stage,
            be.name(),
            samples / secs,
            secs * 1e3 / self.steps as f64,
            self.steps
        );
        Ok(())
    }
}
