//! conv2d forward, backward-data and backward-weight at the ResNet-32 shapes of a batch of 128
//! (stem/layer1 16ch 32x32, the layer2 entry 16->32 stride 2, layer2 32ch 16x16, layer3 64ch 8x8),
//! on the CPU and, when one is present, the GPU.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ltrain::backend::cpu::CpuBackend;
use ltrain::backend::cuda::CudaBackend;
use ltrain::backend::{Backend, Conv2dDims};
use rand::{Rng, SeedableRng};
use std::time::Duration;

const BATCH: usize = 128;

/// (name, c_in, h = w, c_out, stride), all 3x3 with padding 1.
const SHAPES: [(&str, usize, usize, usize, usize); 4] = [
    ("16ch_32x32", 16, 32, 16, 1),
    ("16to32_s2_32x32", 16, 32, 32, 2),
    ("32ch_16x16", 32, 16, 32, 1),
    ("64ch_8x8", 64, 8, 64, 1),
];

fn dims(c_in: usize, hw: usize, c_out: usize, stride: usize) -> Conv2dDims {
    Conv2dDims {
        n: BATCH,
        c_in,
        h: hw,
        w: hw,
        c_out,
        k: 3,
        stride,
        pad: 1,
        groups: 1,
    }
}

fn random<B: Backend>(be: &B, len: usize, rng: &mut impl Rng) -> B::Buf {
    let host: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
    be.upload(&host).unwrap()
}

fn bench_backend<B: Backend>(crit: &mut Criterion, be: &B, device: &str, quick: bool) {
    let mut group = crit.benchmark_group(format!("conv2d_{device}"));
    if quick {
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for (name, c_in, hw, c_out, stride) in SHAPES {
        let d = dims(c_in, hw, c_out, stride);
        let x = random(be, d.input_len(), &mut rng); // [n, c_in, h, w]
        let w = random(be, d.weight_len(), &mut rng); // [c_out, c_in, 3, 3]
        let dy = random(be, d.output_len(), &mut rng); // [n, c_out, h_out, w_out]
        let mut dw = be.zeros(d.weight_len()).unwrap(); // [c_out, c_in, 3, 3]
                                                        // Multiply-adds of each of the three ops.
        let macs = (d.output_len() * c_in * 9) as u64;
        group.throughput(Throughput::Elements(macs));
        group.bench_function(BenchmarkId::new("forward", name), |b| {
            b.iter(|| {
                let y = be.conv2d_forward(&x, &w, d).unwrap();
                be.synchronize().unwrap();
                y
            })
        });
        group.bench_function(BenchmarkId::new("backward_data", name), |b| {
            b.iter(|| {
                let dx = be.conv2d_backward_data(&dy, &w, d).unwrap();
                be.synchronize().unwrap();
                dx
            })
        });
        group.bench_function(BenchmarkId::new("backward_weight", name), |b| {
            b.iter(|| {
                be.conv2d_backward_weight(&x, &dy, d, &mut dw).unwrap();
                be.synchronize().unwrap();
            })
        });
    }
    group.finish();
}

fn conv_benches(crit: &mut Criterion) {
    bench_backend(crit, &CpuBackend::new(None).unwrap(), "cpu", true);
    match CudaBackend::new_gpu(0) {
        Ok(gpu) => bench_backend(crit, &gpu, "cuda", false),
        Err(e) => println!("skipping the GPU conv2d benchmarks: {e:#}"),
    }
}

criterion_group!(benches, conv_benches);
criterion_main!(benches);
