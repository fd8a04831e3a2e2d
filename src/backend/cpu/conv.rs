//! 2-D convolution (square kernel, stride, symmetric zero padding, groups, no bias) by im2col + gemm.
//!
//! Per sample and group `g`, with `ckk = (c_in / groups) * k * k` and `hw_out = h_out * w_out`:
//! - forward:         `y_g [c_out_g, hw_out] = w_g [c_out_g, ckk] · col_g [ckk, hw_out]`;
//! - backward data:   `dcol_g = w_gᵀ · dy_g`, then col2im adds the patches back into `dx_g`;
//! - backward weight: `dw_g += dy_g · col_gᵀ`.
//!
//! The batch is split across threads. For the weight gradient each fixed chunk of samples
//! accumulates its own partial `dw` and the partials are summed in chunk order, so the result does not
//! depend on the thread count.

use anyhow::Result;
use rayon::prelude::*;

use super::matmul::{matmul, Layout};
use super::{CpuBackend, CpuBuf};
use crate::backend::{
    BatchNormAct, BatchNormTrain, Conv2dDims, ConvBatchNormOut, ConvOps, NormOps, WriteMode,
};

/// The weight gradient is reduced over this many fixed chunks of the batch (at most): enough to keep
/// a handful of threads busy, few enough that the partial gradients stay small.
const WEIGHT_GRAD_CHUNKS: usize = 8;

/// Derived sizes of a convolution.
struct Geometry {
    d: Conv2dDims,
    c_in_g: usize,
    c_out_g: usize,
    h_out: usize,
    w_out: usize,
    /// `(c_in / groups) * k * k`: rows of a group's column matrix.
    ckk: usize,
    /// `h_out * w_out`: columns of a group's column matrix.
    hw_out: usize,
    /// A 1x1, stride-1, unpadded convolution reads its input directly as the column matrix.
    direct: bool,
}

impl Geometry {
    fn new(d: Conv2dDims) -> Self {
        let c_in_g = d.c_in / d.groups;
        let (h_out, w_out) = (d.h_out(), d.w_out());
        Self {
            d,
            c_in_g,
            c_out_g: d.c_out / d.groups,
            h_out,
            w_out,
            ckk: c_in_g * d.k * d.k,
            hw_out: h_out * w_out,
            direct: d.k == 1 && d.stride == 1 && d.pad == 0,
        }
    }

    fn in_per_sample(&self) -> usize {
        self.d.c_in * self.d.h * self.d.w
    }
    fn out_per_sample(&self) -> usize {
        self.d.c_out * self.hw_out
    }
    fn in_per_group(&self) -> usize {
        self.c_in_g * self.d.h * self.d.w
    }
    fn out_per_group(&self) -> usize {
        self.c_out_g * self.hw_out
    }
    fn weight_per_group(&self) -> usize {
        self.c_out_g * self.ckk
    }
    /// Scratch length of one group's column matrix (none when the input is used directly).
    fn col_len(&self) -> usize {
        if self.direct {
            0
        } else {
            self.ckk * self.hw_out
        }
    }
}

/// Output positions `lo..hi` along one axis whose input coordinate `o * stride + offset - pad` lies
/// inside `0..size`.
fn valid_range(
    offset: usize,
    pad: usize,
    stride: usize,
    size: usize,
    out_size: usize,
) -> (usize, usize) {
    let lo = if offset >= pad {
        0
    } else {
        (pad - offset).div_ceil(stride)
    };
    let hi = if size + pad > offset {
        (size + pad - offset).div_ceil(stride).min(out_size)
    } else {
        0
    };
    (lo.min(out_size), hi.max(lo.min(out_size)))
}

/// `x [c, h, w]` → `col [c * k * k, h_out * w_out]` (zeros where the patch covers padding).
fn im2col(g: &Geometry, x: &[f32], col: &mut [f32]) {
    let d = &g.d;
    let plane = d.h * d.w;
    for ci in 0..g.c_in_g {
        let x_plane = &x[ci * plane..(ci + 1) * plane];
        for kh in 0..d.k {
            for kw in 0..d.k {
                let row = (ci * d.k + kh) * d.k + kw;
                let col_row = &mut col[row * g.hw_out..(row + 1) * g.hw_out];
                let (ow_lo, ow_hi) = valid_range(kw, d.pad, d.stride, d.w, g.w_out);
                for oh in 0..g.h_out {
                    let out = &mut col_row[oh * g.w_out..(oh + 1) * g.w_out];
                    let ih = oh * d.stride + kh;
                    if ih < d.pad || ih - d.pad >= d.h {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &x_plane[(ih - d.pad) * d.w..(ih - d.pad + 1) * d.w];
                    out[..ow_lo].fill(0.0);
                    out[ow_hi..].fill(0.0);
                    // Input column of output column `ow` is `ow * stride + kw - pad`.
                    if d.stride == 1 {
                        let start = ow_lo + kw - d.pad;
                        out[ow_lo..ow_hi].copy_from_slice(&src[start..start + (ow_hi - ow_lo)]);
                    } else {
                        for (ow, o) in out.iter_mut().enumerate().take(ow_hi).skip(ow_lo) {
                            *o = src[ow * d.stride + kw - d.pad];
                        }
                    }
                }
            }
        }
    }
}

/// Adds `col [c * k * k, h_out * w_out]` back into `dx [c, h, w]` (the adjoint of [`im2col`]).
fn col2im(g: &Geometry, col: &[f32], dx: &mut [f32]) {
    let d = &g.d;
    let plane = d.h * d.w;
    for ci in 0..g.c_in_g {
        let dx_plane = &mut dx[ci * plane..(ci + 1) * plane];
        for kh in 0..d.k {
            for kw in 0..d.k {
                let row = (ci * d.k + kh) * d.k + kw;
                let col_row = &col[row * g.hw_out..(row + 1) * g.hw_out];
                let (ow_lo, ow_hi) = valid_range(kw, d.pad, d.stride, d.w, g.w_out);
                for oh in 0..g.h_out {
                    let ih = oh * d.stride + kh;
                    if ih < d.pad || ih - d.pad >= d.h {
                        continue;
                    }
                    let src = &col_row[oh * g.w_out..(oh + 1) * g.w_out];
                    let dst = &mut dx_plane[(ih - d.pad) * d.w..(ih - d.pad + 1) * d.w];
                    for ow in ow_lo..ow_hi {
                        dst[ow * d.stride + kw - d.pad] += src[ow];
                    }
                }
            }
        }
    }
}

/// `dx [n, c_in, h, w]` (zero on entry) of `dy [n, c_out, h_out, w_out]` and `w`, on the current pool.
fn backward_data(g: &Geometry, d: Conv2dDims, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    dx.par_chunks_mut(g.in_per_sample())
        .zip(dy.par_chunks(g.out_per_sample()))
        .for_each_init(
            || vec![0.0f32; g.col_len()],
            |col, (dx_s, dy_s)| {
                for gi in 0..d.groups {
                    let dy_g = &dy_s[gi * g.out_per_group()..(gi + 1) * g.out_per_group()];
                    let w_g = &w[gi * g.weight_per_group()..(gi + 1) * g.weight_per_group()];
                    let dx_g = &mut dx_s[gi * g.in_per_group()..(gi + 1) * g.in_per_group()];
                    // dcol [ckk, hw_out] = w_gᵀ · dy_g; a direct conv's dcol is dx_g itself.
                    let dcol: &mut [f32] = if g.direct { &mut *dx_g } else { &mut col[..] };
                    matmul(
                        g.ckk,
                        g.hw_out,
                        g.c_out_g,
                        dcol,
                        w_g,
                        Layout::Transposed,
                        dy_g,
                        Layout::Plain,
                        false,
                    );
                    if !g.direct {
                        col2im(g, col, dx_g);
                    }
                }
            },
        );
}

impl ConvOps for CpuBackend {
    /// The convolution, then the batch norm on its output (two passes on the CPU).
    fn conv2d_batch_norm_train_unchecked(
        &self,
        x: &CpuBuf,
        w: &CpuBuf,
        d: Conv2dDims,
        bn: BatchNormTrain<'_, Self>,
        act: BatchNormAct<'_, Self>,
    ) -> Result<ConvBatchNormOut<Self>> {
        let z = self.conv2d_forward_unchecked(x, w, d)?;
        let (y, saved_mean, saved_inv_std) = self.batch_norm_train_forward_unchecked(
            &z,
            bn.affine,
            bn.running,
            d.output_channels(),
            bn.cfg,
            act,
        )?;
        Ok(ConvBatchNormOut {
            z,
            y,
            saved_mean,
            saved_inv_std,
        })
    }

    /// `x [n, c_in, h, w]`, `w [c_out, c_in / groups, k, k]` → `y [n, c_out, h_out, w_out]`.
    fn conv2d_forward_unchecked(&self, x: &CpuBuf, w: &CpuBuf, d: Conv2dDims) -> Result<CpuBuf> {
        let (x, w) = (x.as_slice(), w.as_slice());
        let g = Geometry::new(d);
        let mut y = vec![0.0f32; d.output_len()];
        if y.is_empty() || g.in_per_sample() == 0 {
            return Ok(CpuBuf::from_vec(y));
        }
        self.pool.install(|| {
            y.par_chunks_mut(g.out_per_sample())
                .zip(x.par_chunks(g.in_per_sample()))
                .for_each_init(
                    || vec![0.0f32; g.col_len()],
                    |col, (y_s, x_s)| {
                        for gi in 0..d.groups {
                            let x_g = &x_s[gi * g.in_per_group()..(gi + 1) * g.in_per_group()];
                            let w_g =
                                &w[gi * g.weight_per_group()..(gi + 1) * g.weight_per_group()];
                            let y_g =
                                &mut y_s[gi * g.out_per_group()..(gi + 1) * g.out_per_group()];
                            let col_g: &[f32] = if g.direct {
                                x_g
                            } else {
                                im2col(&g, x_g, col);
                                col
                            };
                            matmul(
                                g.c_out_g,
                                g.hw_out,
                                g.ckk,
                                y_g,
                                w_g,
                                Layout::Plain,
                                col_g,
                                Layout::Plain,
                                false,
                            );
                        }
                    },
                )
        });
        Ok(CpuBuf::from_vec(y))
    }

    /// `dy [n, c_out, h_out, w_out]`, `w [c_out, c_in / groups, k, k]` → `dx [n, c_in, h, w]`.
    fn conv2d_backward_data_unchecked(
        &self,
        dy: &CpuBuf,
        w: &CpuBuf,
        d: Conv2dDims,
        dx_out: &mut CpuBuf,
        mode: WriteMode,
    ) -> Result<()> {
        let (dy, w) = (dy.as_slice(), w.as_slice());
        let g = Geometry::new(d);
        let mut dx = vec![0.0f32; d.input_len()];
        if !dx.is_empty() && g.out_per_sample() > 0 {
            self.pool.install(|| backward_data(&g, d, dy, w, &mut dx));
        }
        let out = dx_out.as_mut_slice();
        match mode {
            WriteMode::Overwrite => out.copy_from_slice(&dx),
            WriteMode::Add => self.pool.install(|| {
                out.par_iter_mut()
                    .zip(dx.par_iter())
                    .for_each(|(o, v)| *o += v)
            }),
        }
        Ok(())
    }

    /// `x [n, c_in, h, w]`, `dy [n, c_out, h_out, w_out]` → `dw [c_out, c_in / groups, k, k]`.
    fn conv2d_backward_weight_unchecked(
        &self,
        x: &CpuBuf,
        dy: &CpuBuf,
        d: Conv2dDims,
        dw_out: &mut CpuBuf,
    ) -> Result<()> {
        let (x, dy) = (x.as_slice(), dy.as_slice());
        let g = Geometry::new(d);
        let weight_len = d.weight_len();
        let dw_out = dw_out.as_mut_slice();
        if d.n == 0 || weight_len == 0 || g.hw_out == 0 {
            dw_out.fill(0.0);
            return Ok(());
        }
        self.pool.install(|| {
            // Fixed chunking of the batch (depends on n only), partials summed in chunk order.
            let chunk = d.n.div_ceil(WEIGHT_GRAD_CHUNKS);
            let chunks = d.n.div_ceil(chunk);
            let partials: Vec<Vec<f32>> = (0..chunks)
                .into_par_iter()
                .map(|ci| {
                    let mut dw = vec![0.0f32; weight_len];
                    let mut col = vec![0.0f32; g.col_len()];
                    for s in ci * chunk..((ci + 1) * chunk).min(d.n) {
                        let x_s = &x[s * g.in_per_sample()..(s + 1) * g.in_per_sample()];
                        let dy_s = &dy[s * g.out_per_sample()..(s + 1) * g.out_per_sample()];
                        for gi in 0..d.groups {
                            let x_g = &x_s[gi * g.in_per_group()..(gi + 1) * g.in_per_group()];
                            let dy_g = &dy_s[gi * g.out_per_group()..(gi + 1) * g.out_per_group()];
                            let dw_g =
                                &mut dw[gi * g.weight_per_group()..(gi + 1) * g.weight_per_group()];
                            let col_g: &[f32] = if g.direct {
                                x_g
                            } else {
                                im2col(&g, x_g, &mut col);
                                &col
                            };
                            // dw_g [c_out_g, ckk] += dy_g [c_out_g, hw_out] · col_gᵀ
                            matmul(
                                g.c_out_g,
                                g.ckk,
                                g.hw_out,
                                dw_g,
                                dy_g,
                                Layout::Plain,
                                col_g,
                                Layout::Transposed,
                                true,
                            );
                        }
                    }
                    dw
                })
                .collect();
            let mut partials = partials.into_iter();
            dw_out.copy_from_slice(&partials.next().unwrap_or_else(|| vec![0.0; weight_len]));
            for partial in partials {
                dw_out
                    .par_iter_mut()
                    .zip(partial.par_iter())
                    .for_each(|(a, b)| *a += b);
            }
            Ok(())
        })
    }
}
