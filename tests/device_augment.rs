//! The GPU-side data path: `Backend::augment_batch` on the CUDA backend (emulated here; on a GPU
//! with `cargo test --test device_augment -- --ignored`) against the CPU backend, which runs the host
//! ops of `augment` on the same packed parameters, op by op and level by level; and the CPU
//! backend's `augment_batch` against the host batch builder `ImageSet::batch` (the training loop's
//! former path). The kernels reproduce the host arithmetic in the same order, so every comparison is
//! exact (bit-identical f32 after normalisation).

use ltrain::augment::autoaugment::{AutoOp, AutoOpKind};
use ltrain::augment::{self, Geometry, JitterParams, Level, LevelParams, CIFAR_NORMALIZATION};
use ltrain::backend::augment_params::{self, AUTO_KINDS, PARAM_WORDS};
use ltrain::backend::cpu::CpuBackend;
use ltrain::backend::cuda::CudaBackend;
use ltrain::backend::{AugmentSpec, Backend};
use ltrain::data::ImageSet;

const H: usize = 32;
const W: usize = 32;

/// A small set of structured images (gradients, a bright square, hashed noise) so that histograms,
/// extrema, hue and geometry all matter.
fn dataset(n: usize) -> ImageSet {
    let mut set = ImageSet::empty(H, W, 2);
    for s in 0..n {
        let mut pixels = vec![0u8; 3 * H * W];
        for c in 0..3 {
            for y in 0..H {
                for x in 0..W {
                    let hash = ((s * 7919 + c * 104_729 + y * 1299 + x * 31) as u32)
                        .wrapping_mul(2_654_435_761)
                        >> 26;
                    let square = if (8..20).contains(&y) && (10 + s..22 + s).contains(&x) {
                        120
                    } else {
                        0
                    };
                    let base = (x * (3 + c) + y * (2 + s) + 40 * c) % 136;
                    pixels[(c * H + y) * W + x] = (base + square / (1 + c) + hash as usize) as u8;
                }
            }
        }
        set.push(&pixels, (s % 2) as u32);
    }
    set
}

fn spec(level: Level) -> AugmentSpec {
    AugmentSpec {
        h: H,
        w: W,
        drawn: level != Level::Plain,
        mean: CIFAR_NORMALIZATION.mean,
        std: CIFAR_NORMALIZATION.std,
    }
}

/// `augment_batch` on `be` for packed `params` (empty for the plain transform).
fn run<B: Backend>(
    be: &B,
    set: &ImageSet,
    indices: &[u32],
    params: &[f32],
    level: Level,
) -> Vec<f32> {
    let images = be.upload_bytes(&set.images).unwrap();
    let idx = be.upload_index(indices).unwrap();
    let p = be.upload(params).unwrap();
    let out = be.augment_batch(&images, &idx, &p, spec(level)).unwrap();
    be.download(&out).unwrap()
}

/// Asserts bit-identical views, naming the first differing sample, channel and pixel.
fn assert_same(what: &str, got: &[f32], expected: &[f32]) {
    assert_eq!(got.len(), expected.len(), "{what}: lengths");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != expected[i].to_bits()) {
        let (s, c, p) = (i / (3 * H * W), (i / (H * W)) % 3, i % (H * W));
        panic!(
            "{what}: sample {s} channel {c} pixel ({}, {}): {} vs {} (expected)",
            p / W,
            p % W,
            got[i],
            expected[i]
        );
    }
}

fn packed(params: &[LevelParams]) -> Vec<f32> {
    let mut out = vec![0f32; params.len() * PARAM_WORDS];
    for (row, p) in out.chunks_mut(PARAM_WORDS).zip(params) {
        augment_params::pack(p, row).unwrap();
    }
    out
}

/// One case per op: each geometry, each jitter adjustment alone, grayscale, blur, and every
/// AutoAugment kind with both signs (after a flip or crop, so the ops see varied input).
fn op_cases() -> Vec<(String, LevelParams)> {
    let mut cases = Vec::new();
    let base = |geometry| LevelParams {
        geometry,
        ..LevelParams::identity()
    };
    let pad = |top, left| Geometry::PadCrop { pad: 4, top, left };
    cases.push(("identity".into(), LevelParams::identity()));
    cases.push(("pad-crop".into(), base(pad(0, 7))));
    cases.push((
        "pad-crop + flip".into(),
        LevelParams {
            flip: true,
            ..base(pad(8, 3))
        },
    ));
    for (top, left, h, w) in [
        (3, 5, 20, 17),
        (0, 0, 32, 32),
        (10, 2, 9, 30),
        (1, 1, 31, 12),
    ] {
        cases.push((
            format!("resized crop {h}x{w} at ({top}, {left}) + flip"),
            LevelParams {
                flip: top % 2 == 1,
                ..base(Geometry::ResizedCrop { top, left, h, w })
            },
        ));
    }
    let jitter = |which: u8, factor: f32, hue: Option<f32>| JitterParams {
        order: [which, 4, 4, 4].map(|o| if o == 4 { 3 } else { o }),
        brightness: factor,
        contrast: factor,
        saturation: factor,
        hue,
    };
    for (name, which) in [("brightness", 0u8), ("contrast", 1), ("saturation", 2)] {
        for factor in [0.63f32, 1.37] {
            cases.push((
                format!("{name} {factor}"),
                LevelParams {
                    jitter: Some(jitter(which, factor, None)),
                    ..base(pad(4, 4))
                },
            ));
        }
    }
    for shift in [-0.093f32, 0.071] {
        cases.push((
            format!("hue {shift}"),
            LevelParams {
                jitter: Some(jitter(3, 1.0, Some(shift))),
                ..base(pad(2, 5))
            },
        ));
    }
    cases.push((
        "jitter, all four in drawn order".into(),
        LevelParams {
            jitter: Some(JitterParams {
                order: [2, 0, 3, 1],
                brightness: 1.21,
                contrast: 0.77,
                saturation: 1.33,
                hue: Some(0.042),
            }),
            ..base(pad(4, 4))
        },
    ));
    cases.push((
        "grayscale".into(),
        LevelParams {
            grayscale: true,
            ..base(pad(1, 6))
        },
    ));
    for sigma in [0.1f32, 0.83, 1.97] {
        cases.push((
            format!("blur sigma {sigma}"),
            LevelParams {
                blur: Some((3, sigma)),
                ..base(pad(4, 4))
            },
        ));
    }
    for (kind, _) in AUTO_KINDS {
        for m in [3u8, 9] {
            for negative in [false, true] {
                if negative && !kind.signed() {
                    continue;
                }
                let magnitude = kind.magnitude(m, H, W) * if negative { -1.0 } else { 1.0 };
                cases.push((
                    format!("{kind:?} m={m} {}", if negative { "-" } else { "+" }),
                    LevelParams {
                        flip: m == 9,
                        auto_ops: [Some(AutoOp { kind, magnitude }), None],
                        ..base(pad(m as usize % 9, 2))
                    },
                ));
            }
        }
    }
    cases.push((
        "equalize then autocontrast".into(),
        LevelParams {
            auto_ops: [
                Some(AutoOp {
                    kind: AutoOpKind::Equalize,
                    magnitude: 0.0,
                }),
                Some(AutoOp {
                    kind: AutoOpKind::AutoContrast,
                    magnitude: 0.0,
                }),
            ],
            ..base(pad(0, 0))
        },
    ));
    cases
}

/// Every op case on `be` against the CPU backend; images cycle through the set.
fn check_ops<B: Backend>(be: &B) {
    let cpu = CpuBackend::new(Some(2)).unwrap();
    let set = dataset(3);
    let cases = op_cases();
    // One launch with every case (one sample each) keeps the emulator quick.
    let params: Vec<LevelParams> = cases.iter().map(|(_, p)| *p).collect();
    let indices: Vec<u32> = (0..cases.len() as u32).map(|i| i % 3).collect();
    let p = packed(&params);
    let got = run(be, &set, &indices, &p, Level::Strong);
    let expected = run(&cpu, &set, &indices, &p, Level::Strong);
    let len = 3 * H * W;
    for (k, (name, _)) in cases.iter().enumerate() {
        assert_same(
            name,
            &got[k * len..(k + 1) * len],
            &expected[k * len..(k + 1) * len],
        );
    }
}

/// Each level's drawn parameters (several epochs, so the strong level meets many sub-policies) and
/// the plain transform on `be` against the CPU backend.
fn check_levels<B: Backend>(be: &B, epochs: usize) {
    let cpu = CpuBackend::new(Some(2)).unwrap();
    let set = dataset(4);
    let indices: Vec<usize> = vec![0, 3, 1, 2, 2, 0, 3, 1];
    let idx: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
    for level in [Level::Weak, Level::Medium, Level::Strong] {
        for epoch in 0..epochs {
            let p = augment_params::draw_batch(&indices, level, H, W, 11, epoch).unwrap();
            assert_same(
                &format!("{level:?} epoch {epoch}"),
                &run(be, &set, &idx, &p, level),
                &run(&cpu, &set, &idx, &p, level),
            );
        }
    }
    assert_same(
        "plain transform",
        &run(be, &set, &idx, &[], Level::Plain),
        &run(&cpu, &set, &idx, &[], Level::Plain),
    );
}

#[test]
fn emulated_cuda_matches_cpu_per_op() {
    check_ops(&CudaBackend::new_emulated().unwrap());
}

#[test]
fn emulated_cuda_matches_cpu_per_level() {
    check_levels(&CudaBackend::new_emulated().unwrap(), 3);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_matches_cpu_per_op() {
    check_ops(&CudaBackend::new_gpu(0).unwrap());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_matches_cpu_per_level() {
    check_levels(&CudaBackend::new_gpu(0).unwrap(), 40);
}

/// The CPU backend's `augment_batch` on drawn parameters is the host batch builder exactly: the
/// device path and the former host path of the training loop build the same views.
#[test]
fn cpu_augment_batch_equals_host_batch_builder() {
    let cpu = CpuBackend::new(Some(2)).unwrap();
    let set = dataset(5);
    let indices: Vec<usize> = vec![4, 0, 2, 2, 1, 3];
    let idx: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
    for level in [Level::Plain, Level::Weak, Level::Medium, Level::Strong] {
        for epoch in [0, 5] {
            let p = augment_params::draw_batch(&indices, level, H, W, 3, epoch).unwrap();
            assert_same(
                &format!("{level:?} epoch {epoch}"),
                &run(&cpu, &set, &idx, &p, level),
                &set.batch(&indices, level, 3, epoch),
            );
        }
    }
}

/// Drawn per sample in parallel under pools of 1 and 3 threads, the packed parameter bytes equal
/// the sequential `draw_batch` (each row depends on (seed, epoch, sample, level) only).
#[test]
fn parameter_stream_is_independent_of_thread_count() {
    use rayon::prelude::*;
    let indices: Vec<usize> = (0..64).map(|i| (i * 37) % 101).collect();
    for level in [Level::Weak, Level::Medium, Level::Strong] {
        let sequential = augment_params::draw_batch(&indices, level, H, W, 9, 2).unwrap();
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let parallel: Vec<f32> = pool.install(|| {
                indices
                    .par_iter()
                    .flat_map_iter(|&i| {
                        augment_params::draw_batch(&[i], level, H, W, 9, 2).unwrap()
                    })
                    .collect()
            });
            assert_eq!(
                bytemuck::cast_slice::<f32, u8>(&parallel),
                bytemuck::cast_slice::<f32, u8>(&sequential),
                "{level:?} with {threads} threads"
            );
        }
    }
    // And the stream is the host path's: row i unpacks to `sample_params` at (seed, epoch, sample).
    let p = augment_params::draw_batch(&indices[..4], Level::Strong, H, W, 9, 2).unwrap();
    for (row, &i) in p.chunks(PARAM_WORDS).zip(&indices) {
        let mut rng = augment::level_rng(9, 2, i as u32, Level::Strong);
        let expected =
            augment::sample_params(&augment::Recipe::cifar(H, W), Level::Strong, H, W, &mut rng);
        assert_eq!(augment_params::unpack(row).unwrap(), expected);
    }
}

/// An out-of-range image index and a crop outside the image are errors on both backends.
#[test]
fn bad_indices_and_parameters_are_errors() {
    let set = dataset(2);
    let crop = packed(&[LevelParams {
        geometry: Geometry::ResizedCrop {
            top: 20,
            left: 0,
            h: 20,
            w: 8,
        },
        ..LevelParams::identity()
    }]);
    let ok = packed(&[LevelParams::identity()]);
    fn attempt<B: Backend>(be: &B, set: &ImageSet, index: u32, p: &[f32]) -> anyhow::Result<()> {
        let images = be.upload_bytes(&set.images)?;
        let idx = be.upload_index(&[index])?;
        let p = be.upload(p)?;
        let out = be.augment_batch(&images, &idx, &p, spec(Level::Medium))?;
        be.download(&out)?;
        be.synchronize()
    }
    let cpu = CpuBackend::new(Some(1)).unwrap();
    let emu = CudaBackend::new_emulated().unwrap();
    assert!(attempt(&cpu, &set, 1, &ok).is_ok());
    assert!(attempt(&emu, &set, 1, &ok).is_ok());
    for (what, index, p) in [("index", 2, &ok), ("crop", 0, &crop)] {
        assert!(attempt(&cpu, &set, index, p).is_err(), "cpu: bad {what}");
        let err = attempt(&emu, &set, index, p).expect_err("emulator: bad {what}");
        assert!(format!("{err:#}").contains("augment_batch"), "{err:#}");
    }
    // Wrong parameter count.
    let images = cpu.upload_bytes(&set.images).unwrap();
    let idx = cpu.upload_index(&[0, 1]).unwrap();
    let p = cpu.upload(&ok).unwrap();
    assert!(cpu
        .augment_batch(&images, &idx, &p, spec(Level::Weak))
        .is_err());
}

/// The training loop's device path (the in-memory set uploaded once, views built by
/// `augment_batch`) gives the same weights as its host path (views built by `ImageSource::load` on
/// the loader thread): one stage-1 epoch (three levels, mixup) on the CPU backend, bit for bit.
#[test]
fn training_device_path_equals_host_path() {
    use ltrain::config::{ExpertWidth, Imbalance, TrainConfig};
    use ltrain::train::checkpoint::load_checkpoint;
    use ltrain::train::{datasets, train, ImageSource, Start};

    /// The same set, seen only through `load` (as ImageNet-LT is).
    struct HostOnly<'a>(&'a dyn ImageSource);
    impl ImageSource for HostOnly<'_> {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn labels(&self) -> &[u32] {
            self.0.labels()
        }
        fn num_classes(&self) -> usize {
            self.0.num_classes()
        }
        fn image_hw(&self) -> (usize, usize) {
            self.0.image_hw()
        }
        fn load(
            &self,
            indices: &[usize],
            level: Level,
            seed: u64,
            epoch: usize,
        ) -> anyhow::Result<Vec<f32>> {
            self.0.load(indices, level, seed, epoch)
        }
    }

    let cfg = TrainConfig {
        synthetic_classes: 3,
        synthetic_max_per_class: 12,
        synthetic_test_per_class: 2,
        imbalance: Imbalance::Ratio(3.0),
        expert_width: ExpertWidth::Reduced,
        epochs: 1,
        batch_size: 8,
        warmup_epochs: 0,
        milestones: vec![],
        stage2_epoch: Some(1),
        threads: 2,
        ..TrainConfig::default()
    };
    let data = datasets::open(&cfg).unwrap();
    assert!(data.train.as_image_set().is_some());
    let be = CpuBackend::new(Some(2)).unwrap();
    let weights = |source: &dyn ImageSource| {
        let dir = tempfile::tempdir().unwrap();
        train(
            &be,
            &cfg,
            source,
            data.test.as_ref(),
            dir.path(),
            Start::Fresh.into(),
            &mut |_| {},
        )
        .unwrap();
        load_checkpoint(&dir.path().join("checkpoint.safetensors"))
            .unwrap()
            .0
    };
    let device = weights(data.train.as_ref());
    let host = weights(&HostOnly(data.train.as_ref()));
    assert_eq!(device.len(), host.len());
    for (d, h) in device.iter().zip(&host) {
        assert_eq!(d.name, h.name);
        assert!(d.data == h.data, "{} differs between the paths", d.name);
    }
}
