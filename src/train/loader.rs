//! Batches for the training loop, the SLA-table pass and evaluation, each prepared on a loader thread
//! while the device works on the previous ones.
//!
//! Two paths. An in-memory training set (CIFAR, synthetic) is uploaded once as u8 and each batch's
//! views are built on the device by [`Backend::augment_batch`]; the loader thread only draws the
//! per-sample parameters. Other sources (ImageNet-LT JPEGs) are decoded and augmented by the loader
//! thread (rayon over the batch) straight into the backend's staging memory, page-locked on a GPU, so
//! the upload is an asynchronous copy in stream order and the decoder never waits on it.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::source::ImageSource;
use crate::augment::{Level, CIFAR_NORMALIZATION};
use crate::backend::augment_params;
use crate::backend::{AugmentSpec, Backend, HostStaging};

/// Batches in flight: one being prepared, the rest waiting (on the host path, each holds a staging
/// buffer).
pub(crate) const STAGED_BATCHES: usize = 3;

/// What the loader thread hands over for one batch.
enum Prepared<S> {
    /// The views `[views * n, 3, h, w]`, stacked, written into a staging buffer.
    Staged(S),
    /// Packed per-sample parameters `[n, PARAM_WORDS]` of each view (empty for the plain
    /// transform).
    Params(Vec<Vec<f32>>),
}

/// One batch's views as the loader hands them over.
pub enum BatchViews<'a, B: Backend> {
    /// `[views * n, 3, h, w]` on the device already (host-decoded and uploaded, or a bench's fixed
    /// input).
    Ready(B::Buf),
    /// For the resident set: the samples' parameters, drawn on the host (`[views * n, PARAM_WORDS]`
    /// stacked; empty for the plain transform); one augmentation launch builds the views, inside
    /// the training step or by [`BatchViews::build`].
    Augment {
        images: &'a B::Bytes,
        spec: AugmentSpec,
        params: Vec<f32>,
    },
}

impl<B: Backend> BatchViews<'_, B> {
    /// The `views` stacked views of `batch` (the samples' indices in the set) on the device.
    pub fn build(self, be: &B, batch: &[usize], views: usize) -> Result<B::Buf> {
        match self {
            BatchViews::Ready(x) => Ok(x),
            BatchViews::Augment {
                images,
                spec,
                params,
            } => {
                let indices: Vec<u32> = view_indices(batch, views).collect();
                be.augment_batch(
                    images,
                    &be.upload_index(&indices)?,
                    &be.upload(&params)?,
                    spec,
                )
            }
        }
    }
}

/// The augmentation's sample index of every stacked view: `batch` once per view.
pub(crate) fn view_indices(batch: &[usize], views: usize) -> impl Iterator<Item = u32> + '_ {
    (0..views).flat_map(move |_| batch.iter().map(|&i| i as u32))
}

/// The training set resident on the device.
struct DeviceData<B: Backend> {
    images: B::Bytes, // [N, 3, h, w] u8
    h: usize,
    w: usize,
}

/// Produces the views of a sequence of batches of one [`ImageSource`].
pub struct BatchLoader<'a, B: Backend> {
    source: &'a dyn ImageSource,
    device: Option<DeviceData<B>>,
    /// Free staging buffers of the host path, each `[views * max_batch, 3, h, w]`, reused across
    /// calls (page-locked allocations are slow).
    staging: Vec<B::Staging>,
    max_batch: usize,
    /// Time callers of `for_each` spent waiting for a batch.
    waited: Duration,
}

impl<'a, B: Backend> BatchLoader<'a, B> {
    /// A loader for batches of at most `max_batch` samples of `source`. With `on_device`, an
    /// in-memory source is uploaded now and augmented on the device; other sources use the host path.
    pub fn new(
        be: &B,
        source: &'a dyn ImageSource,
        max_batch: usize,
        on_device: bool,
    ) -> Result<Self> {
        let device = match source.as_image_set() {
            Some(set) if on_device => Some(DeviceData {
                images: be.upload_bytes(&set.images)?,
                h: set.h,
                w: set.w,
            }),
            _ => None,
        };
        Ok(Self {
            source,
            device,
            staging: Vec::new(),
            max_batch: max_batch.max(1),
            waited: Duration::ZERO,
        })
    }

    /// The source the batches come from.
    pub fn source(&self) -> &'a dyn ImageSource {
        self.source
    }

    /// Total time spent waiting for the loader thread (the device may have idled meanwhile).
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The largest batch it takes.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Whether views are built on the device.
    pub fn on_device(&self) -> bool {
        self.device.is_some()
    }

    /// Calls `step(i, batches[i], views)` for every batch in order, where `views` (`[levels.len() *
    /// n, 3, h, w]`) stacks one view per entry of `levels` (its random parameters drawn at `(seed,
    /// epoch, sample)`). The next batches are prepared while `step` runs.
    pub fn for_each(
        &mut self,
        be: &B,
        batches: &[&[usize]],
        levels: &[Level],
        seed: u64,
        epoch: usize,
        mut step: impl FnMut(usize, &[usize], BatchViews<'_, B>) -> Result<()>,
    ) -> Result<()> {
        if let Some(big) = batches.iter().find(|b| b.len() > self.max_batch) {
            bail!(
                "a batch of {} samples exceeds the loader's maximum of {}",
                big.len(),
                self.max_batch
            );
        }
        let (h, w) = self.source.image_hw();
        let sample_len = 3 * h * w;
        let device_hw = self.device.as_ref().map(|d| (d.h, d.w));
        let views = levels.len();
        let (free_tx, free_rx) = mpsc::channel::<B::Staging>();
        if device_hw.is_none() {
            let capacity = views * self.max_batch * sample_len;
            self.staging.retain(|s| s.capacity() >= capacity);
            while self.staging.len() < STAGED_BATCHES {
                self.staging.push(be.alloc_staging(capacity)?);
            }
            for staging in self.staging.drain(..) {
                free_tx.send(staging).map_err(|_| anyhow!("staging pool"))?;
            }
        }
        let source = self.source;
        let device = self.device.as_ref();
        let staging_pool = &mut self.staging;
        let waited = &mut self.waited;
        std::thread::scope(|scope| -> Result<()> {
            // Owned here so that an early return drops it and a loader waiting for a set stops.
            let free_tx = free_tx;
            // Bounded on both paths: the loader runs at most a few batches ahead.
            let (ready_tx, ready_rx) =
                mpsc::sync_channel::<Result<Prepared<B::Staging>>>(STAGED_BATCHES - 1);
            let loader = scope.spawn(move || {
                for batch in batches {
                    let prepared = prepare(source, device_hw, batch, levels, seed, epoch, &free_rx);
                    if ready_tx.send(prepared).is_err() {
                        break;
                    }
                }
                free_rx
            });
            for (i, batch) in batches.iter().enumerate() {
                be.range_push("data");
                let wait_start = Instant::now();
                let prepared = ready_rx.recv();
                *waited += wait_start.elapsed();
                let prepared =
                    prepared.context("the data loader thread stopped unexpectedly")??;
                let x = match prepared {
                    Prepared::Staged(staging) => {
                        let x = be.upload_staged(&staging, views * batch.len() * sample_len);
                        // Back to the loader at once: it waits for the copy before rewriting.
                        let _ = free_tx.send(staging);
                        BatchViews::Ready(x?)
                    }
                    Prepared::Params(params) => {
                        let data = device.ok_or_else(|| {
                            anyhow!("drawn augmentation parameters but no data on the device")
                        })?;
                        BatchViews::Augment {
                            images: &data.images,
                            spec: AugmentSpec {
                                h: data.h,
                                w: data.w,
                                drawn: AugmentSpec::drawn_for(levels)?,
                                mean: CIFAR_NORMALIZATION.mean,
                                std: CIFAR_NORMALIZATION.std,
                            },
                            params: params.concat(),
                        }
                    }
                };
                be.range_pop();
                step(i, batch, x)?;
            }
            let free_rx = loader
                .join()
                .map_err(|_| anyhow!("the data loader thread panicked"))?;
            staging_pool.extend(free_rx.try_iter());
            Ok(())
        })
    }
}

/// Loader-thread work for one batch: the drawn parameters when the set is on the device (`device_hw`
/// is its image size), otherwise the views decoded and augmented into a free staging set.
fn prepare<S: HostStaging>(
    source: &dyn ImageSource,
    device_hw: Option<(usize, usize)>,
    batch: &[usize],
    levels: &[Level],
    seed: u64,
    epoch: usize,
    free: &mpsc::Receiver<S>,
) -> Result<Prepared<S>> {
    if let Some((h, w)) = device_hw {
        return levels
            .iter()
            .map(|&level| augment_params::draw_batch(batch, level, h, w, seed, epoch))
            .collect::<Result<Vec<_>>>()
            .map(Prepared::Params);
    }
    let (h, w) = source.image_hw();
    let len = batch.len() * 3 * h * w;
    let mut staging = free
        .recv()
        .map_err(|_| anyhow!("the trainer stopped taking batches"))?;
    let mut outs: Vec<&mut [f32]> = staging.as_mut_slice()?[..levels.len() * len]
        .chunks_mut(len)
        .collect();
    source.load_views_into(batch, levels, seed, epoch, &mut outs)?;
    Ok(Prepared::Staged(staging))
}
