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
        CpuBuf(self.pool.install(|| {
            a.0.par_iter()
                .with_min_len(CHUNK)
                .zip(&b.0)
                .map(|(&x, &y)| f(x, y))
                .collect()
        }))
    }
}

impl ElementwiseOps for CpuBackend {
    fn add_assign_unchecked(&self, a: &mut CpuBuf, b: &CpuBuf) -> Result<()> {
        self.pool.install(|| {
            a.0.par_iter_mut()
                .with_min_len(CHUNK)
                .zip(&b.0)
                .for_each(|(x, y)| *x += y)
        });
        Ok(())
    }

    fn scale_unchecked(&self, a: &CpuBuf, alpha: f32) -> Result<CpuBuf> {
        Ok(CpuBuf(self.pool.install(|| {
            a.0.par_iter()
                .with_min_len(CHUNK)
                .map(|x| alpha * x)
                .collect()
        })))
    }

    /// Accumulated in f64 over fixed chunks combined in order.
    fn sum_unchecked(&self, a: &CpuBuf) -> Result<CpuBuf> {
        let partials: Vec<f64> = self.pool.install(|| {
            a.0.par_chunks(CHUNK)
                .map(|c| c.iter().map(|&v| v as f64).sum())
                .collect()
        });
        Ok(CpuBuf(vec![partials.iter().sum::<f64>() as f32]))
    }

    fn relu_forward_unchecked(&self, x: &CpuBuf) -> Result<CpuBuf> {
        Ok(CpuBuf(self.pool.install(|| {
            x.0.par_iter()
                .with_min_len(CHUNK)
                .map(|&v| v.max(0.0))
                .collect()
        })))
    }

    fn relu_backward_unchecked(&self, dy: &CpuBuf, y: &CpuBuf) -> Result<CpuBuf> {
        Ok(self.zip_map(dy, y, |g, v| if v > 0.0 { g } else { 0.0 }))
    }

    fn mixup_unchecked(
        &self,
        x: &CpuBuf,
        perm: &CpuIndex,
        lambda: f32,
        d: SampleDims,
    ) -> Result<CpuBuf> {
        check_indices(ERR_MIXUP_PERM, &perm.0, d.n)?;
        let per_sample = d.per_sample;
        let mut y = vec![0.0f32; d.len()];
        if per_sample == 0 {
            return Ok(CpuBuf(y));
        }
        let other = 1.0 - lambda;
        self.pool.install(|| {
            y.par_chunks_mut(per_sample)
                .zip(x.0.par_chunks(per_sample))
                .zip(perm.0.par_iter())
                .for_each(|((y_s, x_s), &j)| {
                    let x_j = &x.0[j as usize * per_sample..(j as usize + 1) * per_sample];
                    for ((o, &a), &b) in y_s.iter_mut().zip(x_s).zip(x_j) {
                        *o = lambda * a + other * b;
                    }
                })
        });
        Ok(CpuBuf(y))
    }
}
