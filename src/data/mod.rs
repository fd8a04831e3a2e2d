//! Datasets: the built-in synthetic long-tailed set, CIFAR-10/100-LT (official binaries, archives
//! or record files, with the exact LDAM-DRW long-tail protocol) and ImageNet-LT (JPEG list files,
//! decoded lazily), all producing normalised `f32 [b, 3, h, w]` batches under an augmentation
//! level.
//!
//! ```no_run
//! use ltrain::augment::Level;
//! use ltrain::data::{self, cifar::CifarVariant, synthetic::SyntheticConfig};
//! # fn main() -> anyhow::Result<()> {
//! // built-in synthetic data (train long-tailed, test balanced)
//! let synth = data::synthetic::generate(&SyntheticConfig::default());
//! // CIFAR-10-LT rho=100 from the official directory or archive
//! let cifar = data::cifar::load_official(CifarVariant::Cifar10, "cifar-10-binary.tar.gz".as_ref())?;
//! let lt = data::longtail::long_tail(&cifar.train, Some(CifarVariant::Cifar10), 100.0, 0)?;
//! println!("{}", data::info::DatasetInfo::new("cifar10-lt", &lt.set.class_counts(), None).to_table());
//! // a training batch: [b, 3, 32, 32] normalised f32, augmented at (seed, epoch, sample, level)
//! let indices = [0usize, 5, 9];
//! let x = lt.set.batch(&indices, Level::Weak, /*seed*/ 0, /*epoch*/ 0);
//! let y = lt.set.labels_of(&indices);
//! # let _ = (synth, x, y); Ok(()) }
//! ```

pub mod cifar;
pub mod download;
pub mod imagenet;
pub mod info;
pub mod longtail;
pub mod preview;
pub mod synthetic;

use rayon::prelude::*;

use crate::augment::{self, ops::Image, Level, Recipe};

/// An in-memory labelled image set of u8 RGB images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSet {
    pub images: Vec<u8>,  // [n, 3, h, w]
    pub labels: Vec<u32>, // [n]
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub classes: usize,
}

/// Images per class of a label list.
pub fn class_counts(labels: &[u32], classes: usize) -> Vec<usize> {
    let mut counts = vec![0; classes];
    for &y in labels {
        counts[y as usize] += 1;
    }
    counts
}

impl ImageSet {
    /// An empty set of `h x w` images over `classes` classes.
    pub fn empty(h: usize, w: usize, classes: usize) -> Self {
        Self {
            images: Vec::new(),
            labels: Vec::new(),
            n: 0,
            h,
            w,
            classes,
        }
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Bytes per image (`3 * h * w`).
    pub fn image_len(&self) -> usize {
        3 * self.h * self.w
    }

    /// The raw u8 pixels `[3, h, w]` of sample `i`.
    pub fn pixels(&self, i: usize) -> &[u8] {
        let len = self.image_len();
        &self.images[i * len..(i + 1) * len]
    }

    /// Sample `i` as an [`Image`].
    pub fn image(&self, i: usize) -> Image {
        Image::from_data(3, self.h, self.w, self.pixels(i).to_vec())
    }

    pub fn class_counts(&self) -> Vec<usize> {
        class_counts(&self.labels, self.classes)
    }

    pub fn labels_of(&self, indices: &[usize]) -> Vec<u32> {
        indices.iter().map(|&i| self.labels[i]).collect()
    }

    /// The samples at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> ImageSet {
        let len = self.image_len();
        let mut images = Vec::with_capacity(indices.len() * len);
        for &i in indices {
            images.extend_from_slice(self.pixels(i));
        }
        ImageSet {
            images,
            labels: self.labels_of(indices),
            n: indices.len(),
            h: self.h,
            w: self.w,
            classes: self.classes,
        }
    }

    /// Append one image `[3, h, w]` with its label.
    pub fn push(&mut self, pixels: &[u8], label: u32) {
        assert_eq!(
            pixels.len(),
            self.image_len(),
            "image size must match the set"
        );
        self.images.extend_from_slice(pixels);
        self.labels.push(label);
        self.n += 1;
    }

    /// Sample `i` augmented under `level` (`Level::Plain`: unchanged) at `(seed, epoch)`, as u8.
    pub fn augmented(&self, i: usize, level: Level, seed: u64, epoch: usize) -> Image {
        let recipe = Recipe::cifar(self.h, self.w);
        let image = self.image(i);
        let mut rng = augment::level_rng(seed, epoch as u32, i as u32, level);
        let params = augment::sample_params(&recipe, level, self.h, self.w, &mut rng);
        augment::apply(&recipe, &params, &image)
    }

    /// The batch builder of the training loop: samples `indices` under `level`, normalised with the CIFAR mean/std, `[indices.len(), 3, h, w]`. Each
    /// sample's draws depend only on `(seed, epoch, dataset index, level)`; samples are processed
    /// in parallel (rayon).
    pub fn batch(&self, indices: &[usize], level: Level, seed: u64, epoch: usize) -> Vec<f32> {
        let len = self.image_len();
        let norm = augment::CIFAR_NORMALIZATION;
        let mut out = vec![0f32; indices.len() * len];
        out.par_chunks_mut(len)
            .zip(indices.par_iter())
            .for_each(|(slot, &i)| {
                let image = self.augmented(i, level, seed, epoch);
                augment::normalize_into(&image, &norm, slot);
            });
        out
    }
}
