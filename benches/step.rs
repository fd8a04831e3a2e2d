//! One whole training step of the three-expert ResNet-32 at batch 128 in stage 1 (three augmented
//! views, mixup, fused logit-adjusted losses, backward, SGD), on the CPU and, when one is present,
//! the GPU. The same step as `ltrain bench`, fed pre-augmented views (the step alone), views
//! augmented on the device from a resident u8 set (the CIFAR data path) and, on the GPU, views
//! uploaded from host staging memory (the ImageNet-LT data path).

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use ltrain::backend::cpu::CpuBackend;
use ltrain::backend::cuda::CudaBackend;
use ltrain::backend::Backend;
use ltrain::config::{ExpertWidth, ModelKind};
use ltrain::train::bench_step::{BenchInput, BenchStep, BenchStepConfig};
use std::time::Duration;

const STEP: BenchStepConfig = BenchStepConfig {
    model: ModelKind::Resnet32,
    expert_width: ExpertWidth::Reduced,
    experts: 3,
    batch_size: 128,
    classes: 10,
    image_size: 32,
    stage2: false,
    mixup: true,
    input: BenchInput::PreAugmented,
    cuda_graphs: false,
};

fn bench_backend<B: Backend>(
    crit: &mut Criterion,
    be: &B,
    device: &str,
    inputs: &[BenchInput],
    slow: bool,
) {
    let mut group = crit.benchmark_group(format!("train_step_{device}"));
    group.throughput(Throughput::Elements(STEP.batch_size as u64));
    if slow {
        // Seconds per step on a few CPU cores: one step per sample, the fewest samples criterion
        // allows.
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_secs(1));
    }
    for &input in inputs {
        let mut step = BenchStep::new(be, BenchStepConfig { input, ..STEP }).unwrap();
        group.bench_function(format!("resnet32x3_b128_stage1_{}", input.name()), |b| {
            b.iter(|| {
                step.run(be).unwrap();
                be.synchronize().unwrap();
            })
        });
    }
    group.finish();
}

fn step_benches(crit: &mut Criterion) {
    // The CPU group stays cheap (seconds per step): the step alone and the CIFAR data path.
    bench_backend(
        crit,
        &CpuBackend::new(None).unwrap(),
        "cpu",
        &[BenchInput::PreAugmented, BenchInput::DeviceAugment],
        true,
    );
    match CudaBackend::new_gpu(0) {
        Ok(gpu) => bench_backend(
            crit,
            &gpu,
            "cuda",
            &[
                BenchInput::PreAugmented,
                BenchInput::DeviceAugment,
                BenchInput::HostUpload,
            ],
            false,
        ),
        Err(e) => println!("skipping the GPU training-step benchmark: {e:#}"),
    }
}

criterion_group!(benches, step_benches);
criterion_main!(benches);
