//! What the training loop needs of a dataset, independent of where the pixels come from (the
//! synthetic set, CIFAR records, ImageNet-LT JPEGs).

use anyhow::Result;

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
    /// `[indices.len(), 3, h, w]` normalised pixels. `level` picks an augmentation level (0 weak,
    /// 1 medium, 2 strong) drawn from the counter-based generator at `(seed, epoch, sample)`; `None`
    /// is the plain evaluation transform.
    fn load(
        &self,
        indices: &[usize],
        level: Option<usize>,
        seed: u64,
        epoch: usize,
    ) -> Result<Vec<f32>>;

    /// The set itself when its images are in memory (CIFAR, synthetic): the training loop then
    /// keeps it on the device and augments there. `None` (the default): batches come from `load`.
    fn as_image_set(&self) -> Option<&ImageSet> {
        None
    }

    /// One batch per entry of `levels` (the experts' views of the same samples). Sources that decode
    /// files override it to decode each sample once.
    fn load_views(
        &self,
        indices: &[usize],
        levels: &[Option<usize>],
        seed: u64,
        epoch: usize,
    ) -> Result<Vec<Vec<f32>>> {
        levels
            .iter()
            .map(|&level| self.load(indices, level, seed, epoch))
            .collect()
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
