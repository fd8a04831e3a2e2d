//! Augmentation throughput (images per second) per level on 32x32 images, batch 256: the host path
//! (`ImageSet::batch`: parameter draw + pixel ops + normalisation on the CPU threads) and, when a GPU
//! is present, the device path (`augment_batch` on the resident u8 dataset), both the whole step
//! (host parameter draw + upload + kernel) and the kernel alone.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ltrain::augment::{Level, CIFAR_NORMALIZATION};
use ltrain::backend::augment_params;
use ltrain::backend::cuda::CudaBackend;
use ltrain::backend::{AugmentSpec, Backend};
use ltrain::data::ImageSet;
use rand::{Rng, SeedableRng};

const SIZE: usize = 32;
const DATASET: usize = 4096;
const BATCH: usize = 256;
const LEVELS: [Level; 4] = [Level::Plain, Level::Weak, Level::Medium, Level::Strong];

/// Random pixels with a smooth component (so equalize and autocontrast see real histograms).
fn dataset() -> ImageSet {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut set = ImageSet::empty(SIZE, SIZE, 10);
    let mut pixels = vec![0u8; 3 * SIZE * SIZE];
    for i in 0..DATASET {
        for (k, p) in pixels.iter_mut().enumerate() {
            let smooth = ((k % SIZE) * 4 + (k / SIZE % SIZE) * 2) as u32;
            *p = ((smooth + rng.random_range(0..64u32)) % 256) as u8;
        }
        set.push(&pixels, (i % 10) as u32);
    }
    set
}

fn batch_indices() -> Vec<usize> {
    (0..BATCH).map(|i| (i * 977) % DATASET).collect()
}

fn bench_host(crit: &mut Criterion, set: &ImageSet) {
    let mut group = crit.benchmark_group("augment_cpu");
    group.throughput(Throughput::Elements(BATCH as u64));
    let indices = batch_indices();
    for level in LEVELS {
        group.bench_function(BenchmarkId::new("host_batch", level.name()), |b| {
            let mut epoch = 0;
            b.iter(|| {
                epoch += 1;
                set.batch(&indices, level, 1, epoch)
            })
        });
    }
    group.finish();
}

fn bench_device<B: Backend>(crit: &mut Criterion, be: &B, set: &ImageSet, device: &str) {
    let mut group = crit.benchmark_group(format!("augment_{device}"));
    group.throughput(Throughput::Elements(BATCH as u64));
    let images = be.upload_bytes(&set.images).unwrap();
    let indices = batch_indices();
    let idx: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
    let idx = be.upload_index(&idx).unwrap();
    for level in LEVELS {
        let spec = AugmentSpec {
            h: SIZE,
            w: SIZE,
            drawn: level != Level::Plain,
            mean: CIFAR_NORMALIZATION.mean,
            std: CIFAR_NORMALIZATION.std,
        };
        let draw =
            |epoch| augment_params::draw_batch(&indices, level, SIZE, SIZE, 1, epoch).unwrap();
        group.bench_function(BenchmarkId::new("draw_upload_kernel", level.name()), |b| {
            let mut epoch = 0;
            b.iter(|| {
                epoch += 1;
                let params = be.upload(&draw(epoch)).unwrap();
                let out = be.augment_batch(&images, &idx, &params, spec).unwrap();
                be.synchronize().unwrap();
                out
            })
        });
        let params = be.upload(&draw(0)).unwrap();
        group.bench_function(BenchmarkId::new("kernel", level.name()), |b| {
            b.iter(|| {
                let out = be.augment_batch(&images, &idx, &params, spec).unwrap();
                be.synchronize().unwrap();
                out
            })
        });
    }
    group.finish();
}

fn augment_benches(crit: &mut Criterion) {
    let set = dataset();
    bench_host(crit, &set);
    match CudaBackend::new_gpu(0) {
        Ok(gpu) => bench_device(crit, &gpu, &set, "cuda"),
        Err(e) => println!("skipping the GPU augmentation benchmarks: {e:#}"),
    }
}

criterion_group!(benches, augment_benches);
criterion_main!(benches);
