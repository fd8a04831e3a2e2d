//! Max pooling (with argmax), global average pooling and the option-A ResNet shortcut. All work one
//! `[h, w]` plane per task.

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::{CpuBackend, CpuBuf, CpuIndex};
use crate::backend::{ChannelDims, Pool2dDims, PoolOps, ShortcutDims};

impl PoolOps for CpuBackend {
    /// `x [n, c, h, w]` → `(y [n, c, h_out, w_out], argmax [n, c, h_out, w_out])`, `argmax` holding
    /// the flat index into `x`. Windows are scanned row-major and the first maximum wins; padding
    /// never wins.
    fn max_pool_forward_unchecked(&self, x: &CpuBuf, d: Pool2dDims) -> Result<(CpuBuf, CpuIndex)> {
        let x = x.as_slice();
        let (h_out, w_out) = (d.h_out(), d.w_out());
        let out_plane = h_out * w_out;
        let in_plane = d.h * d.w;
        let mut y = vec![0.0f32; d.n * d.c * out_plane];
        let mut argmax = vec![0u32; y.len()];
        if y.is_empty() {
            return Ok((CpuBuf::from_vec(y), CpuIndex::from_vec(argmax)));
        }
        self.pool.install(|| {
            y.par_chunks_mut(out_plane)
                .zip(argmax.par_chunks_mut(out_plane))
                .enumerate()
                .for_each(|(plane, (y_p, a_p))| {
                    let base = plane * in_plane;
                    let x_p = &x[base..base + in_plane];
                    for oh in 0..h_out {
                        // Window rows/cols clipped to the input (padding never wins).
                        let h0 = (oh * d.stride).saturating_sub(d.pad);
                        let h1 = (oh * d.stride + d.k - d.pad).min(d.h);
                        for ow in 0..w_out {
                            let w0 = (ow * d.stride).saturating_sub(d.pad);
                            let w1 = (ow * d.stride + d.k - d.pad).min(d.w);
                            let mut best_idx = h0 * d.w + w0;
                            let mut best = x_p[best_idx];
                            for ih in h0..h1 {
                                for iw in w0..w1 {
                                    let v = x_p[ih * d.w + iw];
                                    if v > best {
                                        best = v;
                                        best_idx = ih * d.w + iw;
                                    }
                                }
                            }
                            y_p[oh * w_out + ow] = best;
                            a_p[oh * w_out + ow] = (base + best_idx) as u32;
                        }
                    }
                })
        });
        Ok((CpuBuf::from_vec(y), CpuIndex::from_vec(argmax)))
    }

    /// Routes `dy [n, c, h_out, w_out]` to the argmax positions: `dx [n, c, h, w]`.
    fn max_pool_backward_unchecked(
        &self,
        dy: &CpuBuf,
        argmax: &CpuIndex,
        d: Pool2dDims,
    ) -> Result<CpuBuf> {
        const OP: &str = "max_pool_backward";
        let (dy, argmax) = (dy.as_slice(), &argmax.as_slice());
        let out_plane = d.h_out() * d.w_out();
        let in_plane = d.h * d.w;
        let mut dx = vec![0.0f32; d.n * d.c * in_plane];
        if dx.is_empty() || out_plane == 0 {
            return Ok(CpuBuf::from_vec(dx));
        }
        self.pool.install(|| dx.par_chunks_mut(in_plane)
        .zip(dy.par_chunks(out_plane).zip(argmax.par_chunks(out_plane)))
        .enumerate()
        .try_for_each(|(plane, (dx_p, (dy_p, a_p)))| {
            let base = plane * in_plane;
            for (&g, &a) in dy_p.iter().zip(a_p) {
                let local = (a as usize).wrapping_sub(base);
                if local >= in_plane {
                    bail!("{OP}: argmax {a} lies outside input plane {plane} (not from max_pool_forward with these dims?)");
                }
                dx_p[local] += g;
            }
            Ok(())
        }))?;
        Ok(CpuBuf::from_vec(dx))
    }

    /// `x [n, c, hw]` → `[n, c]` (mean over `hw`).
    fn global_avg_pool_forward_unchecked(&self, x: &CpuBuf, d: ChannelDims) -> Result<CpuBuf> {
        Ok(CpuBuf::from_vec(self.pool.install(|| {
            x.as_slice()
                .par_chunks(d.hw)
                .map(|p| (p.iter().map(|&v| v as f64).sum::<f64>() / d.hw as f64) as f32)
                .collect()
        })))
    }

    /// `dy [n, c]` → `dx [n, c, hw]` with `dx = dy / hw`.
    fn global_avg_pool_backward_unchecked(&self, dy: &CpuBuf, d: ChannelDims) -> Result<CpuBuf> {
        let mut dx = vec![0.0f32; d.len()];
        let inv = 1.0 / d.hw as f32;
        self.pool.install(|| {
            dx.par_chunks_mut(d.hw)
                .zip(dy.as_slice().par_iter())
                .for_each(|(p, &g)| p.fill(g * inv))
        });
        Ok(CpuBuf::from_vec(dx))
    }

    /// `x [n, c_in, h, w]` → `x[:, :, ::s, ::s]` zero-padded by `(c_out - c_in) / 2` channels on each side:
    /// `[n, c_out, ceil(h / s), ceil(w / s)]`.
    fn shortcut_a_forward_unchecked(&self, x: &CpuBuf, d: ShortcutDims) -> Result<CpuBuf> {
        let (x, pad) = (x.as_slice(), d.pad());
        let (h_out, w_out) = (d.h_out(), d.w_out());
        let out_plane = h_out * w_out;
        let mut y = vec![0.0f32; d.n * d.c_out * out_plane];
        if y.is_empty() {
            return Ok(CpuBuf::from_vec(y));
        }
        self.pool.install(|| {
            y.par_chunks_mut(out_plane)
                .enumerate()
                .for_each(|(plane, y_p)| {
                    let (s, co) = (plane / d.c_out, plane % d.c_out);
                    if co < pad || co >= pad + d.c_in {
                        return; // zero padding channel
                    }
                    let base = (s * d.c_in + co - pad) * d.h * d.w;
                    for oh in 0..h_out {
                        for ow in 0..w_out {
                            y_p[oh * w_out + ow] = x[base + oh * d.stride * d.w + ow * d.stride];
                        }
                    }
                })
        });
        Ok(CpuBuf::from_vec(y))
    }

    /// Adjoint of the forward: `dy [n, c_out, h_out, w_out]` → `dx [n, c_in, h, w]`.
    fn shortcut_a_backward_unchecked(
        &self,
        dy: &CpuBuf,
        d: ShortcutDims,
        dx: &mut CpuBuf,
    ) -> Result<()> {
        let (dy, pad) = (dy.as_slice(), d.pad());
        let (h_out, w_out) = (d.h_out(), d.w_out());
        let in_plane = d.h * d.w;
        let dx = dx.as_mut_slice();
        dx.fill(0.0);
        if dx.is_empty() {
            return Ok(());
        }
        self.pool.install(|| {
            dx.par_chunks_mut(in_plane)
                .enumerate()
                .for_each(|(plane, dx_p)| {
                    let (s, ci) = (plane / d.c_in, plane % d.c_in);
                    let base = (s * d.c_out + ci + pad) * h_out * w_out;
                    for oh in 0..h_out {
                        for ow in 0..w_out {
                            dx_p[oh * d.stride * d.w + ow * d.stride] = dy[base + oh * w_out + ow];
                        }
                    }
                })
        });
        Ok(())
    }
}
