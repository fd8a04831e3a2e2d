//! ImageNet-LT host data path: JPEG decoding (zune-jpeg) plus the 224x224 training crop / the
//! evaluation Resize(256)+CenterCrop(224), in parallel over a batch, on ImageNet-sized (500x375)
//! JPEGs written to a temporary folder, per level and as the stage-1 training loader does it (one
//! decode, three views). Reported as images/s: the rate the host can feed a GPU.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ltrain::augment::Level;
use ltrain::data::imagenet::{BadImagePolicy, ImageList, ImageNetSet};
use std::path::PathBuf;

const IMAGES: usize = 64;

fn write_jpegs(root: &std::path::Path) -> ImageList {
    let (w, h) = (500u16, 375u16);
    let mut paths = Vec::new();
    for i in 0..IMAGES {
        // Smooth gradients plus texture, so the JPEG is neither trivial nor noise.
        let mut pixels = Vec::with_capacity(w as usize * h as usize * 3);
        for y in 0..h as usize {
            for x in 0..w as usize {
                let t = ((x * 7 + y * 3 + i * 11) % 64) as u8;
                pixels.extend_from_slice(&[(x / 2) as u8 ^ t, (y / 2) as u8, (i * 4) as u8 + t]);
            }
        }
        let mut bytes = Vec::new();
        jpeg_encoder::Encoder::new(&mut bytes, 90)
            .encode(&pixels, w, h, jpeg_encoder::ColorType::Rgb)
            .expect("encoding a JPEG in memory");
        let name = PathBuf::from(format!("img{i}.JPEG"));
        std::fs::write(root.join(&name), bytes).expect("writing to the temporary folder");
        paths.push(name);
    }
    ImageList {
        root: root.to_path_buf(),
        paths,
        labels: (0..IMAGES as u32).map(|i| i % 4).collect(),
        classes: 4,
    }
}

fn decode_benches(crit: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let set = ImageNetSet::new(write_jpegs(dir.path()), 224, BadImagePolicy::Fail);
    let indices: Vec<usize> = (0..IMAGES).collect();
    let mut group = crit.benchmark_group("imagenet_host_batch");
    group.sample_size(10);
    group.throughput(Throughput::Elements(IMAGES as u64));
    for (name, level) in [
        ("eval_resize_center_crop", Level::Plain),
        ("weak", Level::Weak),
        ("medium", Level::Medium),
        ("strong", Level::Strong),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                set.batch(&indices, level, 0, 0)
                    .expect("decoding the batch")
            })
        });
    }
    // What a stage-1 training step needs: each JPEG decoded once, three experts' views, written in
    // place (the trainer's loader writes into page-locked staging memory).
    let levels = [Level::Weak, Level::Medium, Level::Strong];
    let mut views = vec![vec![0f32; IMAGES * 3 * 224 * 224]; levels.len()];
    group.bench_function("stage1_three_views", |b| {
        b.iter(|| {
            let mut out: Vec<&mut [f32]> = views.iter_mut().map(|v| v.as_mut_slice()).collect();
            set.batch_views_into(&indices, &levels, 0, 0, &mut out)
                .expect("decoding the batch")
        })
    });
    group.finish();
}

criterion_group!(benches, decode_benches);
criterion_main!(benches);
