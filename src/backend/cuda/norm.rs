//! Batch normalisation (kernels/norm.cu): per-channel sums spread over the device (slices of each
//! channel summed by different blocks, added up in order by the channel's last block), the
//! element-wise normalisation with the following residual add and ReLU fused in, and the backward
//! with the ReLU's mask; PyTorch semantics (see `BatchNormConfig`).

use anyhow::Result;

use super::{kernels, to_u32, CudaBackend, CudaBuf, LaunchConfig};
use crate::backend::{
    BatchNormAct, BatchNormAffine, BatchNormBackwardAct, BatchNormBackwardInputs, BatchNormConfig,
    BatchNormRunning, BatchNormStats, ChannelDims, NormOps, ParamGrads,
};

/// Threads of a block that sums one slice of a channel.
const SLICE_THREADS: u32 = 256;
/// A slice holds at least this many values of its channel.
const MIN_SLICE: usize = 2048;

impl CudaBackend {
    /// `(launch, slices per channel)` of a per-channel reduction: enough slices to give every
    /// resident block work, each at least `MIN_SLICE` long.
    fn channel_slices(&self, d: ChannelDims) -> (LaunchConfig, usize) {
        let count = d.n * d.hw;
        let wanted = (self.dev().max_grid_blocks() as usize).div_ceil(d.c.max(1));
        let slices = wanted.clamp(1, count.div_ceil(MIN_SLICE).max(1));
        let blocks = (d.c * slices).min(self.dev().max_grid_blocks() as usize);
        (LaunchConfig::linear(blocks as u32, SLICE_THREADS), slices)
    }

    /// `y = act((x - mean) * gamma * inv_std + beta)` with the batch statistics `saved`.
    pub(super) fn batch_norm_apply(
        &self,
        x: &CudaBuf,
        saved: BatchNormStats<'_, Self>,
        affine: BatchNormAffine<'_, Self>,
        d: ChannelDims,
        act: BatchNormAct<'_, Self>,
        y: &mut CudaBuf,
    ) -> Result<()> {
        let Some(launch) = self.elementwise(d.len()) else {
            return Ok(());
        };
        kernels::batch_norm_apply(
            self.dev(),
            launch,
            x,
            saved.mean,
            saved.var,
            affine.gamma,
            affine.beta,
            act.residual,
            y,
            i32::from(act.relu),
            d.n as u32,
            d.c as u32,
            d.hw as u32,
        )
    }
}

impl NormOps for CudaBackend {
    fn batch_norm_train_forward_unchecked(
        &self,
        x: &CudaBuf,
        affine: BatchNormAffine<'_, Self>,
        running: BatchNormRunning<'_, Self>,
        d: ChannelDims,
        cfg: BatchNormConfig,
        act: BatchNormAct<'_, Self>,
    ) -> Result<(CudaBuf, CudaBuf, CudaBuf)> {
        const OP: &str = "batch_norm_train_forward";
        to_u32(OP, "size", d.len())?;
        let mut y = self.alloc(d.len())?;
        let mut mean = self.alloc(d.c)?;
        let mut inv_std = self.alloc(d.c)?;
        if d.c == 0 {
            return Ok((y, mean, inv_std));
        }
        let (n, c, hw) = (d.n as u32, d.c as u32, d.hw as u32);
        let (launch, slices) = self.channel_slices(d);
        let mut partial = self.alloc::<f64>(2 * d.c * slices)?;
        {
            let mut counters = self.block_counters(d.c)?;
            kernels::batch_norm_stats(
                self.dev(),
                launch,
                x,
                &mut partial,
                &mut counters,
                &mut mean,
                &mut inv_std,
                running.mean,
                running.var,
                n,
                c,
                hw,
                to_u32(OP, "slices", slices)?,
                cfg.eps,
                cfg.momentum,
            )?;
        }
        let saved = BatchNormStats {
            mean: &mean,
            var: &inv_std,
        };
        self.batch_norm_apply(x, saved, affine, d, act, &mut y)?;
        Ok((y, mean, inv_std))
    }

    fn batch_norm_eval_forward_unchecked(
        &self,
        x: &CudaBuf,
        affine: BatchNormAffine<'_, Self>,
        running: BatchNormStats<'_, Self>,
        d: ChannelDims,
        cfg: BatchNormConfig,
        act: BatchNormAct<'_, Self>,
    ) -> Result<CudaBuf> {
        to_u32("batch_norm_eval_forward", "size", d.len())?;
        let mut y = self.alloc(d.len())?;
        if let Some(launch) = self.elementwise(d.len()) {
            kernels::batch_norm_eval(
                self.dev(),
                launch,
                x,
                affine.gamma,
                affine.beta,
                running.mean,
                running.var,
                act.residual,
                &mut y,
                i32::from(act.relu),
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
        inputs: BatchNormBackwardInputs<'_, Self>,
        d: ChannelDims,
        act: BatchNormBackwardAct<'_, Self>,
        grads: ParamGrads<'_, Self>,
    ) -> Result<CudaBuf> {
        const OP: &str = "batch_norm_backward";
        let BatchNormBackwardInputs {
            dy,
            x,
            gamma,
            saved,
        } = inputs;
        let ParamGrads {
            weight: dgamma,
            bias: dbeta,
        } = grads;
        to_u32(OP, "size", d.len())?;
        let mut dx = self.alloc(d.len())?;
        if d.c == 0 || d.n * d.hw == 0 {
            // No values: the parameters' gradients are empty sums.
            self.fill_zero(dgamma)?;
            self.fill_zero(dbeta)?;
            return Ok(dx);
        }
        let (n, c, hw) = (d.n as u32, d.c as u32, d.hw as u32);
        let (launch, slices) = self.channel_slices(d);
        let mut partial = self.alloc::<f64>(2 * d.c * slices)?;
        {
            let mut counters = self.block_counters(d.c)?;
            kernels::batch_norm_backward_reduce(
                self.dev(),
                launch,
                dy,
                x,
                saved.mean,
                saved.var,
                act.relu_output,
                &mut partial,
                &mut counters,
                dgamma,
                dbeta,
                n,
                c,
                hw,
                to_u32(OP, "slices", slices)?,
            )?;
        }
        if let Some(launch) = self.elementwise(d.len()) {
            kernels::batch_norm_backward_apply(
                self.dev(),
                launch,
                dy,
                x,
                saved.mean,
                saved.var,
                gamma,
                dgamma,
                dbeta,
                act.relu_output,
                &mut dx,
                act.masked_dy,
                n,
                c,
                hw,
            )?;
        }
        Ok(dx)
    }
}
