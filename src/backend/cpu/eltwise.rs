//! Element-wise ops, the sum reduction and mixup.

use anyhow::Result;
use rayon::prelude::*;

use super::{check_indices, CpuBackend, CpuBuf, CpuIndex};
use crate::backend::abi::ERR_MIXUP_PERM;
use crate::backend::{ElementwiseOps, SampleDims};

/// Elements per parallel task: large enough that scheduling costs little next to the work.
const CHUNK: usize = 1 << 14;

impl CpuBackend {
    /// `f(a_i, b_i)` over two buffers of equal length, on the backend's pool.
    pub(super) fn zip_map(
        &self,
        a: &CpuBuf,
        b: &CpuBuf,
        f: impl Fn(f32, f32) -> f32 + Sync,
    ) -> CpuBuf {
        CpuBuf::from_vec(self.pool.install(|| {
            a.as_slice()
                .par_iter()
                .with_min_len(CHUNK)
                .zip(b.as_slice())
                .map(|(&x, &y)| f(x, y))
                .collect()
        }))
    }
}

impl ElementwiseOps for CpuBackend {
    fn add_assign_unchecked(&self, a: &mut CpuBuf, b: &CpuBuf) -> Result<()> {
        self.pool.install(|| {
            a.as_mut_slice()
                .par_iter_mut()
                .with_min_len(CHUNK)
                .zip(b.as_slice())
                .for_each(|(x, y)| *x += y)
        });
        Ok(())
    }

    fn scale_unchecked(&self, a: &CpuBuf, alpha: f32) -> Result<CpuBuf> {
        Ok(CpuBuf::from_vec(self.pool.install(|| {
            a.as_slice()
                .par_iter()
                .with_min_len(CHUNK)
                .map(|x| alpha * x)
                .collect()
        })))
    }

    /// Accumulated in f64 over fixed chunks combined in order.
    fn sum_unchecked(&self, a: &CpuBuf) -> Result<CpuBuf> {
        let partials: Vec<f64> = self.pool.install(|| {
            a.as_slice()
                .par_chunks(CHUNK)
                .map(|c| c.iter().map(|&v| v as f64).sum())
                .collect()
        });
        Ok(CpuBuf::from_vec(vec![partials.iter().sum::<f64>() as f32]))
    }

    fn mixup_unchecked(
        &self,
        x: &CpuBuf,
        perm: &CpuIndex,
        lambda: &CpuBuf,
        d: SampleDims,
    ) -> Result<CpuBuf> {
        let lambda = lambda.as_slice()[0];
        check_indices(ERR_MIXUP_PERM, perm.as_slice(), d.n)?;
        let per_sample = d.per_sample;
        let mut y = vec![0.0f32; d.len()];
        if per_sample == 0 {
            return Ok(CpuBuf::from_vec(y));
        }
        let other = 1.0 - lambda;
        self.pool.install(|| {
            y.par_chunks_mut(per_sample)
                .zip(x.as_slice().par_chunks(per_sample))
                .zip(perm.as_slice().par_iter())
                .for_each(|((y_s, x_s), &j)| {
                    let x_j = &x.as_slice()[j as usize * per_sample..(j as usize + 1) * per_sample];
                    for ((o, &a), &b) in y_s.iter_mut().zip(x_s).zip(x_j) {
                        *o = lambda * a + other * b;
                    }
                })
        });
        Ok(CpuBuf::from_vec(y))
    }
}
