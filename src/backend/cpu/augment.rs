//! The data path of the CPU backend: the dataset stays a host byte vector and `augment_batch`
//! decodes each packed parameter row and runs the host ops (`augment::apply`), so it is the
//! reference the CUDA kernels are compared against.

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::{check_indices, CpuBackend, CpuBuf, CpuIndex};
use crate::augment::{self, ops::Image, Normalization, Recipe};
use crate::backend::abi::{self, ERR_AUGMENT_INDEX, ERR_AUGMENT_PARAMS};
use crate::backend::augment_params::{self, PARAM_WORDS};
use crate::backend::{AugmentOps, AugmentSpec};

/// A host buffer of `u8` (an in-memory dataset).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuBytes(pub(super) Vec<u8>);

impl AugmentOps for CpuBackend {
    fn augment_batch_unchecked(
        &self,
        images: &CpuBytes,
        indices: &CpuIndex,
        params: &CpuBuf,
        spec: AugmentSpec,
    ) -> Result<CpuBuf> {
        let (h, w) = (spec.h, spec.w);
        let len = 3 * h * w;
        check_indices(ERR_AUGMENT_INDEX, indices.as_slice(), images.0.len() / len)?;
        let n = indices.as_slice().len();
        let rows: Vec<_> = match spec.drawn {
            false => vec![augment::LevelParams::identity(); n],
            true => {
                for (i, row) in params.as_slice().chunks(PARAM_WORDS).enumerate() {
                    if let Some(word) = augment_params::malformed_word(row, h, w) {
                        bail!(
                            "{}",
                            abi::error_message(
                                ERR_AUGMENT_PARAMS,
                                i as u64,
                                word as u64,
                                row[word].to_bits().into()
                            )
                        );
                    }
                }
                params
                    .as_slice()
                    .chunks(PARAM_WORDS)
                    .map(augment_params::unpack)
                    .collect::<Result<Vec<_>>>()?
            }
        };
        let recipe = Recipe::cifar(h, w);
        let norm = Normalization {
            mean: spec.mean,
            std: spec.std,
        };
        let mut out = vec![0f32; n * len];
        self.pool.install(|| {
            out.par_chunks_mut(len)
                .zip(indices.as_slice().par_iter().zip(rows.par_iter()))
                .for_each(|(slot, (&i, p))| {
                    let i = i as usize;
                    let image =
                        Image::from_data(3, h, w, images.0[i * len..(i + 1) * len].to_vec());
                    augment::normalize_into(&augment::apply(&recipe, p, &image), &norm, slot);
                })
        });
        Ok(CpuBuf::from_vec(out))
    }
}
