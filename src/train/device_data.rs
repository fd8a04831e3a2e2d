//! The device data path of the training loop: an in-memory training set (CIFAR, synthetic) is
//! uploaded once as u8, and each step's views are built on the device by
//! [`Backend::augment_batch`] from parameters the loader thread draws (the only host work per step
//! is that draw). Other sources (ImageNet-LT JPEGs) keep the host path: the loader thread decodes
//! and augments, the trainer uploads the finished views.

use super::datasets::level_of_index;
use super::source::ImageSource;
use crate::augment::CIFAR_NORMALIZATION;
use crate::backend::augment_params;
use crate::backend::{AugmentLevel, AugmentSpec, Backend};
use anyhow::Result;

/// What the loader thread hands the trainer for one batch, one entry per view (expert level).
pub enum StepInput {
    /// Finished `[n, 3, h, w]` views built on the host.
    Host(Vec<Vec<f32>>),
    /// Packed per-sample parameters `[n, PARAM_WORDS]` (empty for the plain transform).
    Params(Vec<Vec<f32>>),
}

/// The training set resident on the device.
pub struct DeviceData<B: Backend> {
    images: B::Bytes, // [N, 3, h, w] u8
    h: usize,
    w: usize,
}

fn augment_level(level: Option<usize>) -> AugmentLevel {
    level.map(level_of_index).into()
}

impl<B: Backend> DeviceData<B> {
    /// Uploads `source` when it is an in-memory image set; `None` for the host path.
    pub fn new(be: &B, source: &dyn ImageSource) -> Result<Option<Self>> {
        let Some(set) = source.as_image_set() else {
            return Ok(None);
        };
        Ok(Some(Self {
            images: be.upload_bytes(&set.images)?,
            h: set.h,
            w: set.w,
        }))
    }

    /// `(h, w)` of the resident images.
    pub fn hw(&self) -> (usize, usize) {
        (self.h, self.w)
    }
}

/// Loader-thread work for one batch: the drawn parameters when the set is on the device (`device_hw`
/// is its image size), otherwise the host-built views. `levels` holds each view's level index
/// (`None`: the plain transform).
pub fn prepare(
    source: &dyn ImageSource,
    device_hw: Option<(usize, usize)>,
    batch: &[usize],
    levels: &[Option<usize>],
    seed: u64,
    epoch: usize,
) -> Result<StepInput> {
    match device_hw {
        Some((h, w)) => levels
            .iter()
            .map(|&level| {
                augment_params::draw_batch(batch, augment_level(level), h, w, seed, epoch)
            })
            .collect::<Result<Vec<_>>>()
            .map(StepInput::Params),
        None => source
            .load_views(batch, levels, seed, epoch)
            .map(StepInput::Host),
    }
}

/// The views `[n, 3, h, w]` of one batch on the device, one per entry of `levels`.
pub fn views<B: Backend>(
    be: &B,
    device: Option<&DeviceData<B>>,
    batch: &[usize],
    levels: &[Option<usize>],
    input: StepInput,
) -> Result<Vec<B::Buf>> {
    match (input, device) {
        (StepInput::Host(views), _) => views.iter().map(|v| be.upload(v)).collect(),
        (StepInput::Params(params), Some(data)) => {
            let indices: Vec<u32> = batch.iter().map(|&i| i as u32).collect();
            let indices = be.upload_index(&indices)?;
            levels
                .iter()
                .zip(&params)
                .map(|(&level, p)| {
                    let spec = AugmentSpec {
                        h: data.h,
                        w: data.w,
                        level: augment_level(level),
                        mean: CIFAR_NORMALIZATION.mean,
                        std: CIFAR_NORMALIZATION.std,
                    };
                    be.augment_batch(&data.images, &indices, &be.upload(p)?, spec)
                })
                .collect()
        }
        (StepInput::Params(_), None) => {
            anyhow::bail!("drawn augmentation parameters but the training set is not on the device")
        }
    }
}
