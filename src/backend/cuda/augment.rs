//! The GPU-side data path (kernels/augment.cu): the u8 dataset resident on the device and
//! `augment_batch`, one block per image.

use anyhow::{bail, Result};

use super::device::Device;
use super::{kernels, to_u32, CudaBackend, CudaBuf, CudaIndex, DeviceBuffer, LaunchConfig};
use crate::backend::abi::{AUGMENT_SCRATCH_WORDS, PARAM_WORDS};
use crate::backend::{AugmentOps, AugmentSpec};

/// A device buffer of `u8`, stored as whole 32-bit words (the kernels' pointer types are 32-bit);
/// the padding of the last word is zero.
pub struct CudaBytes {
    words: DeviceBuffer<u32>,
    len: usize,
}

impl CudaBytes {
    /// `data` on `dev`, padded with zeros to whole words.
    pub(super) fn upload(dev: &Device, data: &[u8]) -> Result<Self> {
        let words = data.len().div_ceil(4);
        let mem = if data.len() == 4 * words {
            dev.upload(data)?
        } else {
            let mut padded = Vec::with_capacity(4 * words);
            padded.extend_from_slice(data);
            padded.resize(4 * words, 0);
            dev.upload(&padded)?
        };
        Ok(Self {
            words: DeviceBuffer::from_mem(mem, words),
            len: data.len(),
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Dynamic shared memory of one `augment_batch` block for `h x w` images: f32 planes `[3, h, w]`,
/// the histogram / reduction scratch, two u8 images `[3, h, w]` (kernels/augment.cu `Work`).
fn augment_smem_bytes(h: usize, w: usize) -> usize {
    let hw = h * w;
    4 * 3 * hw + 4 * AUGMENT_SCRATCH_WORDS + 2 * 3 * hw
}

impl AugmentOps for CudaBackend {
    fn augment_batch_unchecked(
        &self,
        images: &CudaBytes,
        indices: &CudaIndex,
        params: &CudaBuf,
        spec: AugmentSpec,
    ) -> Result<CudaBuf> {
        const OP: &str = "augment_batch";
        let (h, w) = (spec.h, spec.w);
        let image_len = 3 * h * w;
        let n = indices.len();
        let with_params = spec.drawn;
        to_u32(OP, "output size", n * image_len)?;
        let dataset_len = to_u32(OP, "dataset size", images.len / image_len)?;
        let smem = augment_smem_bytes(h, w);
        let limits = self.limits();
        if smem > limits.shared_per_block_optin as usize {
            bail!(
                "{OP}: {h}x{w} images need {smem} bytes of shared memory per block, more than the \
                 device's {} (use the host data path for images this large)",
                limits.shared_per_block_optin
            );
        }
        let mut out = self.alloc(n * image_len)?;
        if n == 0 {
            return Ok(out);
        }
        let threads = 256;
        let blocks = n.min(self.dev().max_grid_blocks() as usize).max(1);
        let cfg = LaunchConfig {
            shared_mem_bytes: smem as u32,
            large_shared_mem: smem > limits.shared_per_block as usize,
            ..LaunchConfig::linear(blocks as u32, threads)
        };
        // Exactly the host's `normalize_into` constants.
        let scale: Vec<f32> = spec.std.iter().map(|s| 1.0 / (255.0 * s)).collect();
        let shift: Vec<f32> = spec
            .mean
            .iter()
            .zip(&spec.std)
            .map(|(m, s)| m / s)
            .collect();
        {
            let mut record = self.error_record()?;
            kernels::augment_batch(
                self.dev(),
                cfg,
                &images.words,
                indices,
                with_params.then_some(params),
                &mut out,
                &mut record,
                n as u32,
                h as u32,
                w as u32,
                dataset_len,
                PARAM_WORDS as u32,
                scale[0],
                scale[1],
                scale[2],
                shift[0],
                shift[1],
                shift[2],
            )?;
        }
        self.after_checked_kernel()?;
        Ok(out)
    }
}
