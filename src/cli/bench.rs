//! `ltrain bench`: training throughput (samples/s) of a model on a device, on random data, with the
//! full stage-1 step (three augmented views, mixup unless `--no-mixup`, fused loss, backward, SGD)
//! or the stage-2 step, fed pre-augmented views, views augmented on the device, or views uploaded
//! from the host; with `--counters`, the device work of a step as counted by the CUDA backend and
//! the time the cost model (`ltrain::backend::cost`) makes of it on an H100 SXM and an H200.

use super::device::{dispatch, OnBackend};
use anyhow::{bail, Context, Result};
use clap::Args;
use ltrain::backend::cost;
use ltrain::backend::cuda::{CudaBackend, CudaOptions};
use ltrain::backend::Backend;
use ltrain::config::{CudaGraphs, DeviceKind, ExpertWidth, ModelKind};
use ltrain::train::bench_step::{BenchInput, BenchStep, BenchStepConfig};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchCmd {
    #[arg(long, value_enum, default_value = "resnet32")]
    pub model: ModelKind,
    /// ResNet-32 experts' widths: full (32/64) or reduced (24/48).
    #[arg(long, value_enum, default_value = "reduced")]
    pub expert_width: ExpertWidth,
    #[arg(long, default_value_t = 3)]
    pub experts: usize,
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    /// Input resolution [default: 32 for resnet32, 224 otherwise].
    #[arg(long)]
    pub image_size: Option<usize>,
    /// [default: auto; cuda with --gpu]
    #[arg(long, value_enum)]
    pub device: Option<DeviceKind>,
    #[arg(long, value_name = "N", help = super::device::GPU_HELP)]
    pub gpu: Option<usize>,
    /// CPU threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Timed (or counted) steps, after the warm-up steps.
    #[arg(long, default_value_t = 20)]
    pub steps: usize,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Time the stage-2 step (one shared view, SLA weights) instead of stage 1.
    #[arg(long)]
    pub stage2: bool,
    /// Stage 1 without mixup: the views go into the step as they are (the PyTorch peer's step).
    /// Harmless with --stage2, which never mixes.
    #[arg(long)]
    pub no_mixup: bool,
    /// Where the views come from: already on the device (the step alone), augmented on the device
    /// from a resident u8 set (the CIFAR path), or uploaded from host staging memory every step (the
    /// ImageNet-LT path).
    #[arg(long, value_enum, default_value = "pre-augmented")]
    pub input: BenchInput,
    /// Strict fp32 products on a CUDA device: cuBLAS without TF32, the convolutions on the fp32 FMA
    /// kernels instead of the TF32 tensor cores.
    #[arg(long)]
    pub no_tf32: bool,
    /// Run each step as one captured CUDA graph (auto: on a GPU).
    #[arg(long, value_enum, default_value = "auto")]
    pub cuda_graphs: CudaGraphs,
    /// Print the device work of a step (kernel launches, cuBLAS calls, memsets, allocations, copies,
    /// synchronisations, FLOPs, bytes moved) and the step time and per-kernel bounds the cost model
    /// makes of it on an H100 SXM and an H200 (a model, not a measurement). Needs a CUDA backend: `--device cuda`, or `--device cuda-emulated` without a GPU.
    #[arg(long)]
    pub counters: bool,
    /// With `--counters --device cuda-emulated`: run no kernel and hold no memory, only count (exact
    /// counts for shapes too large to emulate, e.g. ResNet-50 at 224 px; no times).
    #[arg(long, requires = "counters")]
    pub count_only: bool,
}

pub fn run(mut cmd: BenchCmd) -> Result<()> {
    super::device::choose_gpu(cmd.gpu, &mut cmd.device, None)?;
    let device = cmd.device.unwrap_or(DeviceKind::Auto);
    if cmd.counters && device == DeviceKind::Cpu {
        bail!(
            "--counters counts the device work of the CUDA backend; use --device cuda, or \
             --device cuda-emulated without a GPU"
        );
    }
    if cmd.count_only {
        if device != DeviceKind::CudaEmulated {
            bail!("--count-only runs on the emulator: add --device cuda-emulated");
        }
        let options = CudaOptions { tf32: !cmd.no_tf32 };
        let be =
            CudaBackend::new_count_only_with(options).context("the count-only CUDA emulator")?;
        return cmd.run(&be);
    }
    let tf32 = !cmd.no_tf32;
    let threads = cmd.threads;
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
        let cuda_graphs = self.cuda_graphs.enabled(be)?;
        let mut step = BenchStep::new(
            be,
            BenchStepConfig {
                model: self.model,
                expert_width: self.expert_width,
                experts: self.experts,
                batch_size: n,
                classes: self.classes,
                image_size: size,
                stage2: self.stage2,
                mixup: !self.no_mixup,
                input: self.input,
                cuda_graphs,
            },
        )?;
        // The counters need steady steps: the first one fills the allocation cache, and with
        // graphs the second is captured.
        let warmup = if self.counters {
            self.warmup.max(if cuda_graphs { 2 } else { 1 })
        } else {
            self.warmup
        };
        for _ in 0..warmup {
            step.run(be)?;
        }
        be.synchronize()?;
        let before = be.device_counters();
        let start = Instant::now();
        for _ in 0..self.steps {
            step.run(be)?;
        }
        be.synchronize()?;
        let secs = start.elapsed().as_secs_f64();
        let after = be.device_counters();
        let samples = (self.steps * n) as f64;
        let width = match (self.model, self.expert_width) {
            (ModelKind::Resnet32, ExpertWidth::Full) => " (full width)",
            (ModelKind::Resnet32, ExpertWidth::Reduced) => " (reduced width)",
            _ => "",
        };
        let mixup = if step.plan().mixup_alpha > 0.0 {
            "mixup"
        } else {
            "no mixup"
        };
        let shape = format!(
            "{:?}{width} x{} experts, batch {n}, {size}x{size}, stage {}, {mixup}, {} input, {}",
            self.model,
            self.experts,
            step.plan().stage,
            self.input.name(),
            be.name(),
        );
        if !self.count_only {
            println!(
                "{shape}: {:.1} samples/s ({:.2} ms/step over {} steps)",
                samples / secs,
                secs * 1e3 / self.steps as f64,
                self.steps
            );
        } else {
            println!("{shape}");
        }
        if let (true, Some(before), Some(after)) = (self.counters, before, after) {
            let steps = self.steps.max(1) as u64;
            let mut counted = after.since(&before);
            // The last synchronisation is the bench's, not the steps'.
            counted.synchronizations = counted.synchronizations.saturating_sub(1);
            let per = counted.per_step(steps);
            println!(
                "device work per step (counted over {steps} steps after {warmup} warm-up steps):"
            );
            print!("{}", per.table());
            for gpu in cost::GPUS {
                let m = gpu.step(&per);
                println!(
                    "model (not measured), {}: host {:.2} ms, device {:.2} ms -> {:.2} ms/step",
                    gpu.name,
                    m.host * 1e3,
                    m.device * 1e3,
                    m.step * 1e3
                );
            }
            println!(
                "kernels per step (model, not measured; {}):",
                cost::TABLE_FILE
            );
            print!("{}", cost::kernel_table(&per, &cost::GPUS));
        }
        Ok(())
    }
}
