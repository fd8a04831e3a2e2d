//! SGD with momentum (PyTorch semantics, dampening 0).

use anyhow::Result;
use rayon::prelude::*;

use super::{CpuBackend, CpuBuf};
use crate::backend::{OptimOps, SgdConfig};

impl OptimOps for CpuBackend {
    /// `g = grad + wd * p; v = momentum * v + g; step = nesterov ? g + momentum * v : v; p -= lr * step`.
    fn sgd_step_unchecked(
        &self,
        param: &mut CpuBuf,
        grad: &CpuBuf,
        velocity: &mut CpuBuf,
        lr: &CpuBuf,
        cfg: SgdConfig,
    ) -> Result<()> {
        let lr = lr.as_slice()[0];
        let SgdConfig {
            momentum,
            weight_decay,
            nesterov,
        } = cfg;
        self.pool.install(|| {
            param
                .as_mut_slice()
                .par_iter_mut()
                .with_min_len(1 << 14)
                .zip(
                    grad.as_slice()
                        .par_iter()
                        .zip(velocity.as_mut_slice().par_iter_mut()),
                )
                .for_each(|(p, (&g, v))| {
                    let g = g + weight_decay * *p;
                    *v = momentum * *v + g;
                    let step = if nesterov { g + momentum * *v } else { *v };
                    *p -= lr * step;
                })
        });
        Ok(())
    }
}
