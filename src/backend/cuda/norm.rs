//! Batch normalisation (kernels/norm.cu): per-channel statistics one block per channel, element-wise
//! normalisation and gradient; PyTorch semantics (see `BatchNormConfig`).

use anyhow::Result;

use super::{kernels, to_u32, CudaBackend, CudaBuf, LaunchConfig};
use crate::backend::{BatchNormAffine, BatchNormConfig, ChannelDims, NormOps};

impl CudaBackend {
    /// One block per channel.
    fn per_channel(&self, d: ChannelDims) -> LaunchConfig {
        LaunchConfig::linear(d.c as u32, self.reduction_threads())
    }
}

impl NormOps for CudaBackend {
    fn batch_norm_train_forward_unchecked(
        &self,
        x: &CudaBuf,
        affine: BatchNormAffine<'_, Self>,
        running_mean: &mut CudaBuf,
        running_var: &mut CudaBuf,
        d: ChannelDims,
        cfg: BatchNormConfig,
    ) -> Result<(CudaBuf, CudaBuf, CudaBuf)> {
        to_u32("batch_norm_train_forward", "size", d.len())?;
        let BatchNormAffine { gamma, beta } = affine;
        let mut y = self.alloc(d.len())?;
        let mut mean = self.alloc(d.c)?;
        let mut inv_std = self.alloc(d.c)?;
        if d.c == 0 {
            return Ok((y, mean, inv_std));
        }
        let (n, c, hw) = (d.n as u32, d.c as u32, d.hw as u32);
        kernels::batch_norm_stats(
            self.dev(),
            self.per_channel(d),
            x,
            &mut mean,
            &mut inv_std,
            running_mean,
            running_var,
            n,
            c,
            hw,
            cfg.eps,
            cfg.momentum,
        )?;
        if let Some(launch) = self.elementwise(d.len()) {
            kernels::batch_norm_apply(
                self.dev(),
                launch,
                x,
                &mean,
                &inv_std,
                gamma,
                beta,
                &mut y,
                n,
                c,
                hw,
            )?;
        }
        Ok((y, mean, inv_std))
    }

    fn batch_norm_eval_forward_unchecked(
        &self,
        x: &CudaBuf,
        affine: BatchNormAffine<'_, Self>,
        running_mean: &CudaBuf,
        running_var: &CudaBuf,
        d: ChannelDims,
        cfg: BatchNormConfig,
    ) -> Result<CudaBuf> {
        to_u32("batch_norm_eval_forward", "size", d.len())?;
        let BatchNormAffine { gamma, beta } = affine;
        let mut y = self.alloc(d.len())?;
        if let Some(launch) = self.elementwise(d.len()) {
            kernels::batch_norm_eval(
                self.dev(),
                launch,
                x,
                gamma,
                beta,
                running_mean,
                running_var,
                &mut y,
                d.n as u32,
                d.c as u32,
                d.hw as u32,
                cfg.eps,
            )?;
        }
        Ok(y)
    }

    fn batch_norm_backward_unchecked(
        &self,
        dy: &CudaBuf,
        x: &CudaBuf,
        gamma: &CudaBuf,
        saved_mean: &CudaBuf,
        saved_inv_std: &CudaBuf,
        d: ChannelDims,
    ) -> Result<(CudaBuf, CudaBuf, CudaBuf)> {
        to_u32("batch_norm_backward", "size", d.len())?;
        let mut dx = self.alloc(d.len())?;
        let mut dgamma = self.alloc(d.c)?;
        let mut dbeta = self.alloc(d.c)?;
        if d.c == 0 || d.n * d.hw == 0 {
            return Ok((dx, dgamma, dbeta));
        }
        let (n, c, hw) = (d.n as u32, d.c as u32, d.hw as u32);
        kernels::batch_norm_backward_reduce(
            self.dev(),
            self.per_channel(d),
            dy,
            x,
            saved_mean,
            saved_inv_std,
            &mut dgamma,
            &mut dbeta,
            n,
            c,
            hw,
        )?;
        if let Some(launch) = self.elementwise(d.len()) {
            kernels::batch_norm_backward_apply(
                self.dev(),
                launch,
                dy,
                x,
                saved_mean,
                saved_inv_std,
                gamma,
                &dgamma,
                &dbeta,
                &mut dx,
                n,
                c,
                hw,
            )?;
        }
        Ok((dx, dgamma, dbeta))
    }
}
