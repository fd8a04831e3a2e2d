//! `ltrain bench`: training throughput (samples/s) of a model on a device, on random data, with the
//! full stage-1 step (three augmented views, mixup, fused loss, backward, SGD) or the stage-2 step,
//! fed pre-augmented views, views augmented on the device, or views uploaded from the host.

use super::device::{dispatch, OnBackend};
use anyhow::Result;
use clap::Args;
use ltrain::backend::Backend;
use ltrain::config::{DeviceKind, ModelKind};
use ltrain::train::bench_step::{BenchInput, BenchStep, BenchStepConfig};
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
    /// Where the views come from: already on the device (the step alone), augmented on the device
    /// from a resident u8 set (the CIFAR path), or uploaded from host staging memory every step (the
    /// ImageNet-LT path).
    #[arg(long, value_enum, default_value = "pre-augmented")]
    pub input: BenchInput,
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
        let n = self.batch_size;
        let mut step = BenchStep::new(
            be,
            BenchStepConfig {
                model: self.model,
                experts: self.experts,
                batch_size: n,
                classes: self.classes,
                image_size: size,
                stage2: self.stage2,
                input: self.input,
            },
        )?;
        for _ in 0..self.warmup {
            step.run(be)?;
        }
        be.synchronize()?;
        let start = Instant::now();
        for _ in 0..self.steps {
            step.run(be)?;
        }
        be.synchronize()?;
        let secs = start.elapsed().as_secs_f64();
        let samples = (self.steps * n) as f64;
        println!(
            "{:?} x{} experts, batch {n}, {size}x{size}, stage {}, {} input, {}: {:.1} samples/s ({:.2} ms/step over {} steps)",
            self.model,
            self.experts,
            step.plan().stage,
            self.input.name(),
            be.name(),
            samples / secs,
            secs * 1e3 / self.steps as f64,
            self.steps
        );
        Ok(())
    }
}
