//! ImageNet-LT: list files of `relative/path.JPEG label` lines under a root folder, decoded
//! lazily (zune-jpeg, in parallel per batch) and augmented with the ImageNet levels
//! (`augment::Recipe::imagenet`): weak / medium / strong training crops of `size x size`
//! (224 in the paper; smaller for reduced-resolution runs) and Resize + CenterCrop for evaluation,
//! normalised with the ImageNet mean/std.
//!
//! Unreadable images are reported by path. With [`BadImagePolicy::Fail`] the batch fails; with
//! [`BadImagePolicy::Substitute`] the sample is replaced, with a warning on stderr, by the next
//! readable image of the same class in list order (so labels and the batch shape stay intact).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use rayon::prelude::*;
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use crate::augment::{self, ops::Image, Level, Recipe};

/// One list file: paths relative to `root` and their labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageList {
    pub root: PathBuf,
    pub paths: Vec<PathBuf>,
    pub labels: Vec<u32>,
    pub classes: usize,
}

impl ImageList {
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    pub fn class_counts(&self) -> Vec<usize> {
        super::class_counts(&self.labels, self.classes)
    }

    /// The full path of sample `i`.
    pub fn path(&self, i: usize) -> PathBuf {
        self.root.join(&self.paths[i])
    }
}

/// The most classes a list file may have: labels are `0..MAX_LIST_CLASSES`.
pub const MAX_LIST_CLASSES: usize = 1 << 16;

/// Parse a list file (`relative/path.JPEG label` per line; blank lines ignored). Errors name the
/// file and line. `classes` is set to `max label + 1`.
pub fn read_list(root: &Path, list_file: &Path) -> Result<ImageList> {
    let text = std::fs::read_to_string(list_file)
        .with_context(|| format!("cannot read list file {}", list_file.display()))?;
    let mut paths = Vec::new();
    let mut labels = Vec::new();
    for (k, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let where_ = || format!("{}:{}", list_file.display(), k + 1);
        let (path, label) = line.rsplit_once(char::is_whitespace).ok_or_else(|| {
            anyhow!(
                "{}: expected `relative/path.JPEG label`, got `{line}`",
                where_()
            )
        })?;
        let label: u32 = label.parse().map_err(|_| {
            anyhow!(
                "{}: label `{label}` is not a non-negative integer",
                where_()
            )
        })?;
        // The class count is `max label + 1` and sizes per-class tables and the classifier.
        if label as usize >= MAX_LIST_CLASSES {
            bail!(
                "{}: label {label} is out of range (at most {MAX_LIST_CLASSES} classes; \
                 ImageNet-LT has 1000)",
                where_()
            );
        }
        paths.push(PathBuf::from(path.trim()));
        labels.push(label);
    }
    if paths.is_empty() {
        bail!("list file {} has no entries", list_file.display());
    }
    let classes = labels.iter().max().map_or(0, |&m| m as usize + 1);
    Ok(ImageList {
        root: root.to_path_buf(),
        paths,
        labels,
        classes,
    })
}

/// The ImageNet-LT train and test lists. Both use the train list's class count; a test label
/// outside it is an error.
pub fn load_lists(
    root: &Path,
    train_list: &Path,
    test_list: &Path,
) -> Result<(ImageList, ImageList)> {
    if !root.is_dir() {
        bail!(
            "ImageNet-LT root {} is not a directory (--data-dir)",
            root.display()
        );
    }
    let train = read_list(root, train_list)?;
    let mut test = read_list(root, test_list)?;
    if test.classes > train.classes {
        let line = test
            .labels
            .iter()
            .position(|&y| y as usize >= train.classes)
            .unwrap_or(0);
        bail!(
            "{}: entry {} has label {} but the training list {} only has {} classes",
            test_list.display(),
            line + 1,
            test.labels[line],
            train_list.display(),
            train.classes
        );
    }
    test.classes = train.classes;
    Ok((train, test))
}

/// Decode a JPEG file to an RGB [`Image`] `[3, h, w]` (grayscale and CMYK JPEGs are converted by
/// the decoder). Errors name the path; a decoder panic is caught and reported as an error.
pub fn decode_jpeg(path: &Path) -> Result<Image> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
    decode_jpeg_bytes(&bytes).with_context(|| format!("cannot decode JPEG {}", path.display()))
}

/// The largest side of a JPEG that is decoded: ImageNet images are under 10,000 px a side, and a
/// header declaring more is rejected before the decoder allocates `width * height * 3` bytes.
pub const MAX_JPEG_SIDE: usize = 10_000;

/// Huffman-coded JPEGs spend at least one bit per 8x8 block of the full-resolution component, so a
/// file is at least `width * height / 512` bytes: a smaller one declares dimensions it cannot hold.
const MIN_JPEG_BYTES_PER_PIXEL: f64 = 1.0 / 512.0;

/// Decode JPEG bytes to an RGB [`Image`].
pub fn decode_jpeg_bytes(bytes: &[u8]) -> Result<Image> {
    let decoded = std::panic::catch_unwind(|| {
        let options = DecoderOptions::default()
            .jpeg_set_out_colorspace(ColorSpace::RGB)
            .set_max_width(MAX_JPEG_SIDE)
            .set_max_height(MAX_JPEG_SIDE);
        let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
        decoder.decode_headers().map_err(|e| anyhow!("{e:?}"))?;
        let (w, h) = decoder
            .dimensions()
            .ok_or_else(|| anyhow!("no image header"))?;
        if (bytes.len() as f64) < (w * h) as f64 * MIN_JPEG_BYTES_PER_PIXEL {
            bail!(
                "the header declares {w}x{h} pixels, more than {} bytes of JPEG can hold",
                bytes.len()
            );
        }
        let pixels = decoder.decode().map_err(|e| anyhow!("{e:?}"))?;
        let info = decoder.info().ok_or_else(|| anyhow!("no image header"))?;
        Ok::<_, anyhow::Error>((pixels, info.width as usize, info.height as usize))
    })
    .map_err(|_| anyhow!("the JPEG decoder panicked"))??;
    let (pixels, w, h) = decoded;
    if pixels.len() != 3 * h * w || h == 0 || w == 0 {
        bail!("decoded {} bytes for a {w}x{h} RGB image", pixels.len());
    }
    // interleaved HWC → planar CHW
    let mut data = vec![0u8; 3 * h * w];
    for (i, px) in pixels.chunks_exact(3).enumerate() {
        data[i] = px[0];
        data[h * w + i] = px[1];
        data[2 * h * w + i] = px[2];
    }
    Ok(Image::from_data(3, h, w, data))
}

/// What to do with an unreadable image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadImagePolicy {
    /// Fail the batch with an error naming the path.
    Fail,
    /// Warn and use the next readable image of the same class instead.
    Substitute,
}

/// An [`ImageList`] with its output size and bad-image policy: the ImageNet-LT batch builder.
#[derive(Clone, Debug)]
pub struct ImageNetSet {
    pub list: ImageList,
    pub recipe: Recipe,
    pub on_bad_image: BadImagePolicy,
    by_class: Vec<Vec<usize>>, // [classes][samples of that class in list order]
}

impl ImageNetSet {
    /// `size`: the output side (224 in the paper).
    pub fn new(list: ImageList, size: usize, on_bad_image: BadImagePolicy) -> Self {
        let mut by_class = vec![Vec::new(); list.classes];
        for (i, &y) in list.labels.iter().enumerate() {
            by_class[y as usize].push(i);
        }
        Self {
            list,
            recipe: Recipe::imagenet(size),
            on_bad_image,
            by_class,
        }
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Decode sample `i`, applying the bad-image policy.
    pub fn decode(&self, i: usize) -> Result<Image> {
        let first_error = match decode_jpeg(&self.list.path(i)) {
            Ok(img) => return Ok(img),
            Err(e) => e,
        };
        if self.on_bad_image == BadImagePolicy::Fail {
            return Err(first_error);
        }
        let same_class = &self.by_class[self.list.labels[i] as usize];
        let start = same_class.iter().position(|&j| j == i).unwrap_or(0);
        for &j in same_class
            .iter()
            .cycle()
            .skip(start + 1)
            .take(same_class.len() - 1)
        {
            if let Ok(img) = decode_jpeg(&self.list.path(j)) {
                eprintln!(
                    "warning: {first_error:#}; using {} (same class) instead",
                    self.list.path(j).display()
                );
                return Ok(img);
            }
        }
        Err(first_error.context(format!(
            "no readable image of class {} to substitute",
            self.list.labels[i]
        )))
    }

    /// Sample `i` decoded and augmented under `level` (`Level::Plain`: Resize + CenterCrop), as u8
    /// `[3, size, size]`.
    pub fn augmented(&self, i: usize, level: Level, seed: u64, epoch: usize) -> Result<Image> {
        Ok(self.augment_decoded(&self.decode(i)?, i, level, seed, epoch))
    }

    /// The already decoded sample `i` under `level`.
    fn augment_decoded(
        &self,
        image: &Image,
        i: usize,
        level: Level,
        seed: u64,
        epoch: usize,
    ) -> Image {
        let mut rng = augment::level_rng(seed, epoch as u32, i as u32, level);
        let params = augment::sample_params(&self.recipe, level, image.h, image.w, &mut rng);
        augment::apply(&self.recipe, &params, image)
    }

    /// One `[indices.len(), 3, size, size]` batch per entry of `levels` (the experts' views), each
    /// JPEG decoded once for all of them; equal to calling [`batch`](Self::batch) per level.
    pub fn batch_views(
        &self,
        indices: &[usize],
        levels: &[Level],
        seed: u64,
        epoch: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let len = indices.len() * 3 * self.recipe.out_h * self.recipe.out_w;
        let mut views = vec![vec![0f32; len]; levels.len()];
        let mut out: Vec<&mut [f32]> = views.iter_mut().map(|v| v.as_mut_slice()).collect();
        self.batch_views_into(indices, levels, seed, epoch, &mut out)?;
        Ok(views)
    }

    /// [`batch_views`](Self::batch_views) written into `out` (one `[indices.len(), 3, size, size]`
    /// slice per level, e.g. page-locked staging memory), samples in parallel.
    pub fn batch_views_into(
        &self,
        indices: &[usize],
        levels: &[Level],
        seed: u64,
        epoch: usize,
        out: &mut [&mut [f32]],
    ) -> Result<()> {
        let len = 3 * self.recipe.out_h * self.recipe.out_w;
        ensure!(
            out.len() == levels.len() && out.iter().all(|o| o.len() == indices.len() * len),
            "batch_views_into: expected {} output views of {} values",
            levels.len(),
            indices.len() * len
        );
        // Each sample's slot in every view, so that samples can be filled in parallel.
        let mut slots: Vec<Vec<&mut [f32]>> = (0..indices.len())
            .map(|_| Vec::with_capacity(levels.len()))
            .collect();
        for view in out.iter_mut() {
            for (sample, slot) in view.chunks_mut(len).enumerate() {
                slots[sample].push(slot);
            }
        }
        slots.into_par_iter().zip(indices.par_iter()).try_for_each(
            |(mut sample_slots, &i)| -> Result<()> {
                let image = self.decode(i)?;
                for (&level, slot) in levels.iter().zip(sample_slots.iter_mut()) {
                    let view = self.augment_decoded(&image, i, level, seed, epoch);
                    augment::normalize_into(&view, &self.recipe.normalization, slot);
                }
                Ok(())
            },
        )
    }

    /// `[indices.len(), 3, size, size]` normalised f32, decoded and augmented in parallel.
    pub fn batch(
        &self,
        indices: &[usize],
        level: Level,
        seed: u64,
        epoch: usize,
    ) -> Result<Vec<f32>> {
        let len = 3 * self.recipe.out_h * self.recipe.out_w;
        let mut out = vec![0f32; indices.len() * len];
        out.par_chunks_mut(len)
            .zip(indices.par_iter())
            .try_for_each(|(slot, &i)| -> Result<()> {
                let image = self.augmented(i, level, seed, epoch)?;
                augment::normalize_into(&image, &self.recipe.normalization, slot);
                Ok(())
            })?;
        Ok(out)
    }
}
