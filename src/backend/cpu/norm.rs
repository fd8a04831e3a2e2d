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

/// Partial sums of the channel reductions: independent accumulators the compiler keeps in vector
/// registers, added in a fixed order at the end.
const SUM_LANES: usize = 8;

/// Rows `ch` of `x [n, c, hw]`: channel `ch`'s plane of each sample.
fn channel_planes(x: &[f32], d: ChannelDims, ch: usize) -> impl Iterator<Item = &[f32]> {
    (0..d.n).map(move |s| &x[(s * d.c + ch) * d.hw..(s * d.c + ch + 1) * d.hw])
}

/// `Σ f(x)` over channel `ch` of `x [n, c, hw]`, in f64.
fn channel_sum(x: &[f32], d: ChannelDims, ch: usize, f: impl Fn(f64) -> f64) -> f64 {
    let mut lanes = [0.0f64; SUM_LANES];
    for plane in channel_planes(x, d, ch) {
        let mut chunks = plane.chunks_exact(SUM_LANES);
        for chunk in &mut chunks {
            for (acc, &v) in lanes.iter_mut().zip(chunk) {
                *acc += f(v as f64);
            }
        }
        for (acc, &v) in lanes.iter_mut().zip(chunks.remainder()) {
            *acc += f(v as f64);
        }
    }
    lanes.iter().sum()
}

/// The gradient reaching the normalisation: `dy` where the fused ReLU's output `y` is positive (NaN
/// blocks), all of `dy` without one.
#[inline(always)]
fn masked<const RELU: bool>(dy: f32, y: f32) -> f32 {
    if !RELU || y > 0.0 {
        dy
    } else {
        0.0
    }
}

/// `(Σ g, Σ g · x_hat)` over channel `ch`, `g = masked(dy, y)`, in f64.
fn gradient_sums<const RELU: bool>(
    (dy, x, y): (&[f32], &[f32], &[f32]),
    d: ChannelDims,
    ch: usize,
    (mean, inv_std): (f64, f64),
) -> (f64, f64) {
    let (mut sum_g, mut sum_gx) = ([0.0f64; SUM_LANES], [0.0f64; SUM_LANES]);
    let planes = channel_planes(dy, d, ch)
        .zip(channel_planes(x, d, ch))
        .zip(channel_planes(y, d, ch));
    for ((dy_p, x_p), y_p) in planes {
        let whole = d.hw - d.hw % SUM_LANES;
        let chunks = dy_p[..whole]
            .chunks_exact(SUM_LANES)
            .zip(x_p[..whole].chunks_exact(SUM_LANES))
            .zip(y_p[..whole].chunks_exact(SUM_LANES));
        for ((dy_c, x_c), y_c) in chunks {
            for l in 0..SUM_LANES {
                let g = masked::<RELU>(dy_c[l], y_c[l]) as f64;
                sum_g[l] += g;
                sum_gx[l] += g * (x_c[l] as f64 - mean) * inv_std;
            }
        }
        for l in 0..d.hw - whole {
            let g = masked::<RELU>(dy_p[whole + l], y_p[whole + l]) as f64;
            sum_g[l] += g;
            sum_gx[l] += g * (x_p[whole + l] as f64 - mean) * inv_std;
        }
    }
    (sum_g.iter().sum(), sum_gx.iter().sum())
}

/// One plane of the input gradient, and of the masked gradient when asked for.
#[allow(clippy::too_many_arguments)]
fn plane_gradient<const RELU: bool>(
    dx_p: &mut [f32],
    masked_p: Option<&mut [f32]>,
    (dy_p, x_p, y_p): (&[f32], &[f32], &[f32]),
    (mean, inv_std): (f64, f64),
    (sum_dy, sum_dy_xhat): (f64, f64),
    gamma: f64,
    count: f64,
) {
    let k = gamma * inv_std / count;
    for (((o, &g), &v), &y) in dx_p.iter_mut().zip(dy_p).zip(x_p).zip(y_p) {
        let x_hat = (v as f64 - mean) * inv_std;
        let g = masked::<RELU>(g, y) as f64;
        *o = (k * (count * g - sum_dy - x_hat * sum_dy_xhat)) as f32;
    }
    if let Some(out) = masked_p {
        for ((o, &g), &y) in out.iter_mut().zip(dy_p).zip(y_p) {
            *o = masked::<RELU>(g, y);
        }
    }
}

/// `y = act((x - mean) * scale + shift)` per channel, with `(mean, scale, shift) = per_channel(ch)`:
/// then the residual added and the ReLU applied, in f32 in that order (as the unfused ops), one plane
/// at a time while it is in cache.
fn normalize(
    x: &[f32],
    d: ChannelDims,
    per_channel: impl Fn(usize) -> (f64, f64, f64) + Sync,
    act: BatchNormAct<'_, CpuBackend>,
) -> Vec<f32> {
    let mut y = vec![0.0f32; d.len()];
    if d.hw == 0 {
        return y;
    }
    let residual = act.residual.map(|r| r.as_slice());
    y.par_chunks_mut(d.hw)
        .zip(x.par_chunks(d.hw))
        .enumerate()
        .for_each(|(plane, (y_p, x_p))| {
            let (mean, scale, shift) = per_channel(plane % d.c);
            for (o, &v) in y_p.iter_mut().zip(x_p) {
                *o = ((v as f64 - mean) * scale + shift) as f32;
            }
            if let Some(r) = residual {
                let r_p = &r[plane * d.hw..(plane + 1) * d.hw];
                y_p.iter_mut().zip(r_p).for_each(|(v, &r)| *v += r);
            }
            if act.relu {
                y_p.iter_mut().for_each(|v| *v = v.max(0.0));
            }
        });
    y
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
                    let mean = channel_sum(x, d, ch, |v| v) / count as f64;
                    let var = channel_sum(x, d, ch, |v| (v - mean) * (v - mean)) / count as f64;
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
            let y = normalize(x, d, |ch| (stats[ch].0, scale[ch], beta[ch] as f64), act);
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
            normalize(
                x.as_slice(),
                d,
                |ch| {
                    (
                        running_mean[ch] as f64,
                        gamma[ch] as f64 / (running_var[ch] as f64 + eps).sqrt(),
                        beta[ch] as f64,
                    )
                },
                act,
            )
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
        let (dy, x, gamma) = (dy.as_slice(), x.as_slice(), gamma.as_slice());
        // Without a fused ReLU, `dy` stands in for its output (never read).
        let relu = act.relu_output.is_some();
        let y = act.relu_output.map_or(dy, |y| y.as_slice());
        let (saved_mean, saved_inv_std) = (saved.mean.as_slice(), saved.var.as_slice());
        let stats = |ch: usize| (saved_mean[ch] as f64, saved_inv_std[ch] as f64);
        let masked_out = act.masked_dy.map(|out| out.as_mut_slice());
        let dx = self.pool.install(|| {
            let count = (d.n * d.hw) as f64;
            // (sum dy, sum dy * x_hat) per channel.
            let sums: Vec<(f64, f64)> = (0..d.c)
                .into_par_iter()
                .map(|ch| match relu {
                    true => gradient_sums::<true>((dy, x, y), d, ch, stats(ch)),
                    false => gradient_sums::<false>((dy, x, y), d, ch, stats(ch)),
                })
                .collect();
            let mut dx = vec![0.0f32; d.len()];
            if d.hw > 0 {
                let plane = |p: usize| {
                    let r = p * d.hw..(p + 1) * d.hw;
                    (&dy[r.clone()], &x[r.clone()], &y[r])
                };
                let write = |p: usize, dx_p: &mut [f32], masked_p: Option<&mut [f32]>| {
                    let ch = p % d.c;
                    let args = (plane(p), stats(ch), sums[ch], gamma[ch] as f64, count);
                    let (inputs, stats, sums, gamma, count) = args;
                    match relu {
                        true => plane_gradient::<true>(
                            dx_p, masked_p, inputs, stats, sums, gamma, count,
                        ),
                        false => plane_gradient::<false>(
                            dx_p, masked_p, inputs, stats, sums, gamma, count,
                        ),
                    }
                };
                match masked_out {
                    Some(out) => dx
                        .par_chunks_mut(d.hw)
                        .zip(out.par_chunks_mut(d.hw))
                        .enumerate()
                        .for_each(|(p, (dx_p, out_p))| write(p, dx_p, Some(out_p))),
                    None => dx
                        .par_chunks_mut(d.hw)
                        .enumerate()
                        .for_each(|(p, dx_p)| write(p, dx_p, None)),
                }
            }
            let dgamma = grads.weight.as_mut_slice();
            let dbeta = grads.bias.as_mut_slice();
            for (ch, &(sum_dy, sum_dy_xhat)) in sums.iter().enumerate() {
                dgamma[ch] = sum_dy_xhat as f32;
                dbeta[ch] = sum_dy as f32;
            }
            dx
        });
        Ok(CpuBuf::from_vec(dx))
    }
}
