//! What the training loop needs of a dataset, independent of where the pixels come from (the
//! synthetic set, CIFAR records, ImageNet-LT JPEGs).

use anyhow::{ensure, Result};

use crate::augment::Level;
use crate::data::ImageSet;

/// A labelled image set that produces normalised `f32` batches.
pub trait ImageSource: Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `[len]` class of every sample.
    fn labels(&self) -> &[u32];
    fn num_classes(&self) -> usize;
    /// `(h, w)` of the produced images.
    fn image_hw(&self) -> (usize, usize);
    /// `[indices.len(), 3, h, w]` normalised pixels under `level`, its random parameters drawn from
    /// the counter-based generator at `(seed, epoch, sample)`.
    fn load(&self, indices: &[usize], level: Level, seed: u64, epoch: usize) -> Result<Vec<f32>>;

    /// The set itself when its images are in memory (CIFAR, synthetic): the training loop then
    /// keeps it on the device and augments there. `None` (the default): batches come from `load`.
    fn as_image_set(&self) -> Option<&ImageSet> {
        None
    }

    /// One batch per entry of `levels` (the experts' views of the same samples).
    fn load_views(
        &self,
        indices: &[usize],
        levels: &[Level],
        seed: u64,
        epoch: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let (h, w) = self.image_hw();
        let len = indices.len() * 3 * h * w;
        let mut views = vec![vec![0f32; len]; levels.len()];
        let mut outs: Vec<&mut [f32]> = views.iter_mut().map(|v| v.as_mut_slice()).collect();
        self.load_views_into(indices, levels, seed, epoch, &mut outs)?;
        Ok(views)
    }

    /// [`ImageSource::load_views`] into `out` (one `[indices.len(), 3, h, w]` slice per level), e.g.
    /// the backend's staging memory. Sources that decode files override it to decode each sample
    /// once for all levels and to write in place.
    fn load_views_into(
        &self,
        indices: &[usize],
        levels: &[Level],
        seed: u64,
        epoch: usize,
        out: &mut [&mut [f32]],
    ) -> Result<()> {
        check_views(indices.len(), self.image_hw(), levels, out)?;
        for (&level, slot) in levels.iter().zip(out.iter_mut()) {
            slot.copy_from_slice(&self.load(indices, level, seed, epoch)?);
        }
        Ok(())
    }

    /// Images per class.
    fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes()];
        for &y in self.labels() {
            counts[y as usize] += 1;
        }
        counts
    }
}

/// Errors unless `out` holds one `[n, 3, h, w]` slice per level.
fn check_views(
    n: usize,
    (h, w): (usize, usize),
    levels: &[Level],
    out: &[&mut [f32]],
) -> Result<()> {
    ensure!(
        out.len() == levels.len(),
        "{} output views for {} levels",
        out.len(),
        levels.len()
    );
    for slot in out {
        ensure!(
            slot.len() == n * 3 * h * w,
            "an output view has {} values, [{n}, 3, {h}, {w}] needs {}",
            slot.len(),
            n * 3 * h * w
        );
    }
    Ok(())
}
