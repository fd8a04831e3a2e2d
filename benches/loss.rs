//! Fused vs unfused logit-adjusted, SLA-weighted softmax cross-entropy (forward + dlogits), on the
//! CPU and, when one is present, the GPU, at (batch, classes) = (128, 10), (128, 100), (512, 1000),
//! (4096, 1000).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ltrain::backend::cpu::CpuBackend;
use ltrain::backend::cuda::CudaBackend;
use ltrain::backend::RowDims;
use ltrain::backend::UnfusedLoss;
use ltrain::backend::{LossArgs, LossReduction, LossTargets, LossWeighting};
use ltrain::method::unfused_loss;
use rand::{Rng, SeedableRng};

const SHAPES: [(usize, usize); 4] = [(128, 10), (128, 100), (512, 1000), (4096, 1000)];

struct Inputs<B: UnfusedLoss> {
    logits: B::Buf,
    labels: B::Index,
    adjustment: B::Buf,
    cos_y: B::Buf,
    cos_star: B::Buf,
}

fn inputs<B: UnfusedLoss>(be: &B, n: usize, c: usize) -> Inputs<B> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let logits: Vec<f32> = (0..n * c).map(|_| rng.random_range(-4.0..4.0)).collect();
    let labels: Vec<u32> = (0..n).map(|_| rng.random_range(0..c as u32)).collect();
    let adjustment: Vec<f32> = (0..c).map(|j| -(j as f32 * 4.6 / c as f32)).collect();
    let cos_y: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let cos_star: Vec<f32> = (0..c).map(|_| rng.random_range(0.5..1.0)).collect();
    Inputs {
        logits: be.upload(&logits).unwrap(),
        labels: be.upload_index(&labels).unwrap(),
        adjustment: be.upload(&adjustment).unwrap(),
        cos_y: be.upload(&cos_y).unwrap(),
        cos_star: be.upload(&cos_star).unwrap(),
    }
}

fn bench_backend<B: UnfusedLoss>(crit: &mut Criterion, be: &B, device: &str) {
    let mut group = crit.benchmark_group(format!("loss_{device}"));
    for (n, c) in SHAPES {
        let x = inputs(be, n, c);
        group.throughput(Throughput::Elements((n * c) as u64));
        let id = format!("{n}x{c}");
        group.bench_with_input(BenchmarkId::new("fused", &id), &x, |b, x| {
            b.iter(|| {
                let out = be
                    .fused_loss(LossArgs {
                        logits: &x.logits,
                        n,
                        c,
                        targets: LossTargets::Single(&x.labels),
                        adjustment: Some(&x.adjustment),
                        weighting: LossWeighting::Sla {
                            cos_y: &x.cos_y,
                            cos_star: &x.cos_star,
                            gamma: 1.0,
                            tau: 1.0,
                        },
                        reduction: LossReduction::Mean,
                    })
                    .unwrap();
                be.synchronize().unwrap();
                out
            })
        });
        group.bench_with_input(BenchmarkId::new("unfused", &id), &x, |b, x| {
            b.iter(|| {
                let out = unfused_loss(
                    be,
                    &x.logits,
                    &x.labels,
                    &x.adjustment,
                    Some((&x.cos_y, &x.cos_star, 1.0, 1.0)),
                    RowDims { n, c },
                )
                .unwrap();
                be.synchronize().unwrap();
                out
            })
        });
    }
    group.finish();
}

fn loss_benches(crit: &mut Criterion) {
    bench_backend(crit, &CpuBackend::new(None).unwrap(), "cpu");
    match CudaBackend::new_gpu(0) {
        Ok(gpu) => bench_backend(crit, &gpu, "cuda"),
        Err(e) => println!("skipping the GPU loss benchmarks: {e:#}"),
    }
}

criterion_group!(benches, loss_benches);
criterion_main!(benches);
