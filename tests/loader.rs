//! The batch loader of the training loop, SLA pass and evaluation (`train::loader::BatchLoader`), on
//! the CPU backend and the emulated CUDA backend: every batch's views equal the source's own
//! `load_views` on both paths (host staging, device-resident set), in order, with more batches than
//! staging sets so the buffers are reused; errors of the source or of the step end the loop with
//! that error instead of hanging the loader thread.

use anyhow::{bail, Result};
use ltrain::augment::Level;
use ltrain::backend::cpu::CpuBackend;
use ltrain::backend::cuda::CudaBackend;
use ltrain::backend::Backend;
use ltrain::data::ImageSet;
use ltrain::train::loader::BatchLoader;
use ltrain::train::ImageSource;

const H: usize = 16;
const W: usize = 16;

/// `n` images with structure (so crops, flips and colour ops all change values), labels cycling
/// over 3 classes.
fn dataset(n: usize) -> ImageSet {
    let mut set = ImageSet::empty(H, W, 3);
    for s in 0..n {
        let pixels: Vec<u8> = (0..3 * H * W)
            .map(|i| ((i * 37 + s * 101 + (i / W) * 13) % 251) as u8)
            .collect();
        set.push(&pixels, (s % 3) as u32);
    }
    set
}

/// Batches of 4 over a shuffled order of 19 samples (the last one short).
fn order() -> Vec<usize> {
    (0..19).map(|i| (i * 7) % 19).collect()
}

const LEVELS: [Level; 3] = Level::AUGMENTED;

fn views_match_the_source<B: Backend>(be: &B, on_device: bool) {
    let set = dataset(19);
    let order = order();
    let batches: Vec<&[usize]> = order.chunks(4).collect();
    let mut loader = BatchLoader::new(be, &set, 4, on_device).unwrap();
    assert_eq!(loader.on_device(), on_device);
    // Twice: the second pass reuses the staging buffers of the first.
    for epoch in [3, 4] {
        let mut seen = Vec::new();
        loader
            .for_each(be, &batches, &LEVELS, 11, epoch, |i, batch, views| {
                let want = set.load_views(batch, &LEVELS, 11, epoch)?;
                let views = be.download(&views.build(be, batch, LEVELS.len())?)?;
                assert_eq!(views.len(), LEVELS.len() * want[0].len(), "batch {i}");
                for (level, (got, want)) in views.chunks(want[0].len()).zip(&want).enumerate() {
                    assert_eq!(got.len(), want.len(), "batch {i} level {level}");
                    let worst = got
                        .iter()
                        .zip(want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(
                        worst <= 1e-6,
                        "batch {i} level {level}: differs from load_views by {worst}"
                    );
                }
                seen.push(batch.to_vec());
                Ok(())
            })
            .unwrap();
        let want: Vec<Vec<usize>> = batches.iter().map(|b| b.to_vec()).collect();
        assert_eq!(seen, want, "batches out of order");
    }
}

#[test]
fn host_staged_views_match_the_source_on_the_cpu_backend() {
    views_match_the_source(&CpuBackend::new(Some(2)).unwrap(), false);
}

#[test]
fn device_views_match_the_source_on_the_cpu_backend() {
    views_match_the_source(&CpuBackend::new(Some(2)).unwrap(), true);
}

#[test]
fn host_staged_views_match_the_source_on_the_emulated_gpu() {
    views_match_the_source(&CudaBackend::new_emulated().unwrap(), false);
}

#[test]
fn device_views_match_the_source_on_the_emulated_gpu() {
    views_match_the_source(&CudaBackend::new_emulated().unwrap(), true);
}

/// A source whose batches containing sample 13 fail to load, as a corrupt file would.
struct Failing(ImageSet);

impl ImageSource for Failing {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn labels(&self) -> &[u32] {
        &self.0.labels
    }
    fn num_classes(&self) -> usize {
        3
    }
    fn image_hw(&self) -> (usize, usize) {
        (H, W)
    }
    fn load(&self, indices: &[usize], level: Level, seed: u64, epoch: usize) -> Result<Vec<f32>> {
        if indices.contains(&13) {
            bail!("sample 13: corrupt image");
        }
        self.0.load(indices, level, seed, epoch)
    }
}

#[test]
fn a_failing_source_ends_the_loop_with_its_error() {
    let be = CpuBackend::new(Some(2)).unwrap();
    let source = Failing(dataset(19));
    let order: Vec<usize> = (0..19).collect();
    let batches: Vec<&[usize]> = order.chunks(4).collect();
    let mut loader = BatchLoader::new(&be, &source, 4, false).unwrap();
    let mut steps = 0;
    let err = loader
        .for_each(&be, &batches, &[Level::Plain], 0, 0, |_, _, _| {
            steps += 1;
            Ok(())
        })
        .unwrap_err();
    assert!(format!("{err:#}").contains("sample 13"), "{err:#}");
    assert_eq!(steps, 3, "the batches before the failing one are used");
}

#[test]
fn a_failing_step_stops_the_loader_thread() {
    for on_device in [false, true] {
        let be = CpuBackend::new(Some(2)).unwrap();
        let set = dataset(19);
        let order: Vec<usize> = (0..19).collect();
        // Batches of 1: the loader is far ahead and blocked when the step fails.
        let batches: Vec<&[usize]> = order.chunks(1).collect();
        let mut loader = BatchLoader::new(&be, &set, 1, on_device).unwrap();
        let err = loader
            .for_each(&be, &batches, &LEVELS, 0, 0, |i, _, _| {
                if i == 1 {
                    bail!("step 1 failed");
                }
                Ok(())
            })
            .unwrap_err();
        assert_eq!(err.to_string(), "step 1 failed");
        // The loader is usable again afterwards.
        let mut steps = 0;
        loader
            .for_each(&be, &batches[..2], &LEVELS, 0, 0, |_, _, _| {
                steps += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(steps, 2);
    }
}

#[test]
fn batches_larger_than_the_loader_maximum_are_errors() {
    let be = CpuBackend::new(Some(2)).unwrap();
    let set = dataset(8);
    let order: Vec<usize> = (0..8).collect();
    let mut loader = BatchLoader::new(&be, &set, 4, false).unwrap();
    let err = loader
        .for_each(&be, &[&order[..]], &[Level::Plain], 0, 0, |_, _, _| Ok(()))
        .unwrap_err();
    assert!(err.to_string().contains("exceeds"), "{err}");
}
