//! Batch normalisation over `[n, c, hw]`, PyTorch semantics: training normalises with the biased batch
//! variance and feeds the unbiased one to the running variance. Statistics are accumulated in f64
//! (two passes), one channel per task, so they do not depend on the thread count.

use anyhow::Result;
use rayon::prelude::*;

use super::{CpuBackend, CpuBuf};
use crate::backend::{
    BatchNormAct, BatchNormAffine, BatchNormBackwardAct, BatchNormBackwardInputs, BatchNormConfig,
    BatchNormRunning, BatchNormStats, ChannelDims, NormOps, ParamGrads,
};

/// Sums `f(i)` over the flat indices `i` of every element of channel `ch`, in f64.
fn channel_sum(d: ChannelDims, ch: usize, mut f: impl FnMut(usize) -> f64) -> f64 {
    let mut acc = 0.0f64;
    for s in 0..d.n {
        let base = (s * d.c + ch) * d.hw;
        for i in base..base + d.hw {
            acc += f(i);
        }
    }
    acc
}

/// `y = (x - mean) * scale + shift` per channel, with `(mean, scale, shift) = per_channel(ch)`.
fn normalize(
    x: &[f32],
    d: ChannelDims,
    per_channel: impl Fn(usize) -> (f64, f64, f64) + Sync,
) -> Vec<f32> {
    let mut y = vec![0.0f32; d.len()];
    if d.hw == 0 {
        return y;
    }
    y.par_chunks_mut(d.hw)
        .zip(x.par_chunks(d.hw))
        .enumerate()
        .for_each(|(plane, (y_p, x_p))| {
            let (mean, scale, shift) = per_channel(plane % d.c);
            for (o, &v) in y_p.iter_mut().zip(x_p) {
                *o = ((v as f64 - mean) * scale + shift) as f32;
            }
        });
    y
}

/// `y = relu(y + residual)`, each part as `act` asks, in f32 in that order (as the unfused ops).
fn activate(y: &mut [f32], act: BatchNormAct<'_, CpuBackend>) {
    if let Some(r) = act.residual {
        y.par_iter_mut()
            .zip(r.as_slice())
            .for_each(|(v, &r)| *v += r);
    }
    if act.relu {
        y.par_iter_mut().for_each(|v| *v = v.max(0.0));
    }
}

impl NormOps for CpuBackend {
    /// Training forward: returns `(y [n, c, hw], saved_mean [c], saved_inv_std [c])` and updates the running
    /// statistics in place.
    fn batch_norm_train_forward_unchecked(
        &self,
        x: &CpuBuf,
        affine: BatchNormAffine<'_, Self>,
        running: BatchNormRunning<'_, Self>,
        d: ChannelDims,
        cfg: BatchNormConfig,
        act: BatchNormAct<'_, Self>,
    ) -> Result<(CpuBuf, CpuBuf, CpuBuf)> {
        let (x, gamma, beta) = (
            x.as_slice(),
            affine.gamma.as_slice(),
            affine.beta.as_slice(),
        );
        let (running_mean, running_var) = (running.mean.as_mut_slice(), running.var.as_mut_slice());
        self.pool.install(|| {
            let count = d.n * d.hw;
            // (mean, biased variance) per channel, two-pass in f64.
            let stats: Vec<(f64, f64)> = (0..d.c)
                .into_par_iter()
                .map(|ch| {
                    let mean = channel_sum(d, ch, |i| x[i] as f64) / count as f64;
                    let var = channel_sum(d, ch, |i| {
                        let t = x[i] as f64 - mean;
                        t * t
                    }) / count as f64;
                    (mean, var)
                })
                .collect();
            let eps = cfg.eps as f64;
            let momentum = cfg.momentum as f64;
            let unbias = count as f64 / (count - 1) as f64;
            let mut saved_mean = vec![0.0f32; d.c];
            let mut saved_inv_std = vec![0.0f32; d.c];
            for (ch, &(mean, var)) in stats.iter().enumerate() {
                saved_mean[ch] = mean as f32;
                saved_inv_std[ch] = (1.0 / (var + eps).sqrt()) as f32;
                running_mean[ch] =
                    ((1.0 - momentum) * running_mean[ch] as f64 + momentum * mean) as f32;
                running_var[ch] =
                    ((1.0 - momentum) * running_var[ch] as f64 + momentum * var * unbias) as f32;
            }
            let scale: Vec<f64> = (0..d.c)
                .map(|ch| gamma[ch] as f64 / (stats[ch].1 + eps).sqrt())
                .collect();
            let mut y = normalize(x, d, |ch| (stats[ch].0, scale[ch], beta[ch] as f64));
            activate(&mut y, act);
            Ok((
                CpuBuf::from_vec(y),
                CpuBuf::from_vec(saved_mean),
                CpuBuf::from_vec(saved_inv_std),
            ))
        })
    }

    /// Evaluation forward with the running statistics.
    fn batch_norm_eval_forward_unchecked(
        &self,
        x: &CpuBuf,
        affine: BatchNormAffine<'_, Self>,
        running: BatchNormStats<'_, Self>,
        d: ChannelDims,
        cfg: BatchNormConfig,
        act: BatchNormAct<'_, Self>,
    ) -> Result<CpuBuf> {
        let (gamma, beta) = (affine.gamma.as_slice(), affine.beta.as_slice());
        let (running_mean, running_var) = (running.mean.as_slice(), running.var.as_slice());
        let eps = cfg.eps as f64;
        Ok(CpuBuf::from_vec(self.pool.install(|| {
            let mut y = normalize(x.as_slice(), d, |ch| {
                (
                    running_mean[ch] as f64,
                    gamma[ch] as f64 / (running_var[ch] as f64 + eps).sqrt(),
                    beta[ch] as f64,
                )
            });
            activate(&mut y, act);
            y
        })))
    }

    /// Backward of the training forward: `(dx [n, c, hw], dgamma [c], dbeta [c])` with
    /// `dx = gamma * inv_std / m * (m * dy - sum(dy) - x_hat * sum(dy * x_hat))`, `m = n * hw`.
    fn batch_norm_backward_unchecked(
        &self,
        inputs: BatchNormBackwardInputs<'_, Self>,
        d: ChannelDims,
        act: BatchNormBackwardAct<'_, Self>,
        grads: ParamGrads<'_, Self>,
    ) -> Result<CpuBuf> {
        let BatchNormBackwardInputs {
            dy,
            x,
            gamma,
            saved,
        } = inputs;
        // The gradient reaching the normalisation: dy where the fused ReLU passed it.
        let masked = act.relu_output.map(|y| {
            self.pool.install(|| {
                dy.as_slice()
                    .par_iter()
                    .zip(y.as_slice())
                    .map(|(&g, &v)| if v > 0.0 { g } else { 0.0 })
                    .collect::<Vec<f32>>()
            })
        });
        let (dy, x, gamma) = (
            masked.as_deref().unwrap_or(dy.as_slice()),
            x.as_slice(),
            gamma.as_slice(),
        );
        let (saved_mean, saved_inv_std) = (saved.mean.as_slice(), saved.var.as_slice());
        let dx = self.pool.install(|| {
            let count = (d.n * d.hw) as f64;
            // (sum dy, sum dy * x_hat) per channel.
            let sums: Vec<(f64, f64)> = (0..d.c)
                .into_par_iter()
                .map(|ch| {
                    let mean = saved_mean[ch] as f64;
                    let inv_std = saved_inv_std[ch] as f64;
                    let sum_dy = channel_sum(d, ch, |i| dy[i] as f64);
                    let sum_dy_xhat =
                        channel_sum(d, ch, |i| dy[i] as f64 * (x[i] as f64 - mean) * inv_std);
                    (sum_dy, sum_dy_xhat)
                })
                .collect();
            let mut dx = vec![0.0f32; d.len()];
            if d.hw > 0 {
                dx.par_chunks_mut(d.hw)
                    .zip(dy.par_chunks(d.hw).zip(x.par_chunks(d.hw)))
                    .enumerate()
                    .for_each(|(plane, (dx_p, (dy_p, x_p)))| {
                        let ch = plane % d.c;
                        let mean = saved_mean[ch] as f64;
                        let inv_std = saved_inv_std[ch] as f64;
                        let (sum_dy, sum_dy_xhat) = sums[ch];
                        let k = gamma[ch] as f64 * inv_std / count;
                        for ((o, &g), &v) in dx_p.iter_mut().zip(dy_p).zip(x_p) {
                            let x_hat = (v as f64 - mean) * inv_std;
                            *o = (k * (count * g as f64 - sum_dy - x_hat * sum_dy_xhat)) as f32;
                        }
                    });
            }
            let dgamma = grads.weight.as_mut_slice();
            let dbeta = grads.bias.as_mut_slice();
            for (ch, &(sum_dy, sum_dy_xhat)) in sums.iter().enumerate() {
                dgamma[ch] = sum_dy_xhat as f32;
                dbeta[ch] = sum_dy as f32;
            }
            dx
        });
        if let (Some(out), Some(masked)) = (act.masked_dy, &masked) {
            out.as_mut_slice().copy_from_slice(masked);
        }
        Ok(CpuBuf::from_vec(dx))
    }
}
