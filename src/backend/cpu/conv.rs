//! 2-D convolution (square kernel, stride, symmetric zero padding, groups, no bias) as the
//! register-blocked products of `gemm.rs`, per sample and group `g` (`ckk = (c_in / groups) * k * k`):
//! - forward:         `y_g [c_out_g, hw] = w_g [c_out_g, ckk] · X_g [ckk, hw]`;
//! - backward data:   `dx_g = w_gᵀ · dy_g` put back where each patch came from;
//! - backward weight: `dw_g += dy_g · X_gᵀ`.
//!
//! `X_g`, the patch matrix, is read in one of two ways:
//! - a "same" convolution (stride 1, output the input's size: the 3x3s of a ResNet) reads it in place
//!   as shifted windows of the input planes copied once inside a zero border ([`Bordered`]); its
//!   backward data is the same kind of product, over the bordered `dy` with the flipped kernel;
//! - any other one copies it out (im2col, and col2im for the backward data); a 1x1 stride-1 unpadded
//!   one reads the input itself.
//!
//! The batch is split across threads. For the weight gradient each fixed chunk of samples
//! accumulates its own partial `dw` and the partials are summed in chunk order, so the result does not
//! depend on the thread count.

use anyhow::Result;
use rayon::prelude::*;

use super::gemm::{gemm_nn, gemm_nt, PackedA};
use super::{CpuBackend, CpuBuf};
use crate::backend::{
    BatchNormAct, BatchNormTrain, Conv2dDims, ConvBatchNormOut, ConvOps, NormOps, WriteMode,
};

/// The weight gradient is reduced over this many fixed chunks of the batch (at most): enough to keep
/// a handful of threads busy, few enough that the partial gradients stay small.
const WEIGHT_GRAD_CHUNKS: usize = 8;

/// The weight gradient sums the products of consecutive samples of a chunk until they cover at least
/// this many output pixels, then reduces them once (8x8 maps: 3 samples at a time).
const WEIGHT_GRAD_PIXELS: usize = 256;

/// Derived sizes of a convolution.
struct Geometry {
    d: Conv2dDims,
    c_in_g: usize,
    c_out_g: usize,
    h_out: usize,
    w_out: usize,
    /// `(c_in / groups) * k * k`: rows of a group's patch matrix.
    ckk: usize,
    /// `h_out * w_out`: columns of a group's patch matrix.
    hw_out: usize,
    /// A 1x1, stride-1, unpadded convolution reads its input directly as the patch matrix.
    direct: bool,
    /// A stride-1 convolution whose output has its input's size reads bordered planes.
    bordered: Option<Bordered>,
}

impl Geometry {
    fn new(d: Conv2dDims) -> Self {
        let c_in_g = d.c_in / d.groups;
        let (h_out, w_out) = (d.h_out(), d.w_out());
        let direct = d.k == 1 && d.stride == 1 && d.pad == 0;
        let same = !direct && d.stride == 1 && h_out == d.h && w_out == d.w;
        Self {
            d,
            c_in_g,
            c_out_g: d.c_out / d.groups,
            h_out,
            w_out,
            ckk: c_in_g * d.k * d.k,
            hw_out: h_out * w_out,
            direct,
            bordered: same.then(|| Bordered::new(&d)),
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
    /// Group `gi`'s weights `[c_out_g, ckk]` of `w [c_out, c_in_g, k, k]`.
    fn weight_of<'a>(&self, w: &'a [f32], gi: usize) -> &'a [f32] {
        &w[gi * self.weight_per_group()..(gi + 1) * self.weight_per_group()]
    }
    /// Scratch length of one group's patch matrix (im2col only).
    fn col_len(&self) -> usize {
        if self.direct {
            0
        } else {
            self.ckk * self.hw_out
        }
    }
    /// Where each of `rows` rows of `cols` columns starts in a row-major matrix.
    fn dense_rows(rows: usize, cols: usize) -> Vec<usize> {
        (0..rows).map(|r| r * cols).collect()
    }
}

/// The planes of a "same" convolution inside a zero border: `pad` zero rows above and below, and `pad`
/// zeros before each row, which also serve as the previous row's right border (rows `pitch = w + pad`
/// apart). Output pixel `(oh, ow)` at `j = oh * pitch + ow` reads input `(ci, kh, kw)` at
/// `ci * plane + kh * pitch + kw + j`, so row `(ci, kh, kw)` of the patch matrix is the window of the
/// bordered planes starting there. Products run over `span = h * pitch` pixels, `pitch - w` of each
/// row wasted (they read the border), and their results are copied out row by row.
#[derive(Clone, Copy)]
struct Bordered {
    h: usize,
    w: usize,
    k: usize,
    pad: usize,
    pitch: usize,
    /// `(h + 2 pad) * pitch`.
    plane: usize,
    /// `h * pitch`: pixels of a product.
    span: usize,
}

impl Bordered {
    fn new(d: &Conv2dDims) -> Self {
        let pitch = d.w + d.pad;
        Self {
            h: d.h,
            w: d.w,
            k: d.k,
            pad: d.pad,
            pitch,
            plane: (d.h + 2 * d.pad) * pitch,
            span: d.h * pitch,
        }
    }

    /// Scratch for `c` bordered planes: the last window reads `k - 1` values past them.
    fn len(&self, c: usize) -> usize {
        c * self.plane + self.k
    }

    /// Window starts of rows `(ci, kh, kw)` of the forward's patch matrix.
    fn rows(&self, c: usize) -> Vec<usize> {
        let k = self.k;
        (0..c * k * k)
            .map(|q| (q / (k * k)) * self.plane + (q % (k * k) / k) * self.pitch + q % k)
            .collect()
    }

    /// Window starts of rows `(co, kh, kw)` of the backward data's: `dx (i) = Σ w (kh, kw) ·
    /// dy (i + pad - kh)`, the bordered `dy` read at `k - 1 - kh`, `k - 1 - kw`.
    fn flipped_rows(&self, c: usize) -> Vec<usize> {
        let k = self.k;
        (0..c * k * k)
            .map(|q| {
                let (kh, kw) = (q % (k * k) / k, q % k);
                (q / (k * k)) * self.plane + (k - 1 - kh) * self.pitch + (k - 1 - kw)
            })
            .collect()
    }

    /// Copies `x [c, h, w]` inside the borders of `dst [c, h + 2 pad, pitch]` (+ `k` of slack). The borders are not
    /// written: `dst` is zeroed once and only ever receives planes of this shape.
    fn fill(&self, x: &[f32], dst: &mut [f32]) {
        for (ci, x_plane) in x.chunks_exact(self.h * self.w).enumerate() {
            for (r, x_row) in x_plane.chunks_exact(self.w).enumerate() {
                let at = ci * self.plane + (r + self.pad) * self.pitch + self.pad;
                dst[at..at + self.w].copy_from_slice(x_row);
            }
        }
    }

    /// Copies `x [c, h, w]` into `dst [c, span]` on the pitch; the wasted columns are not written
    /// (zero, as in [`Bordered::fill`]).
    fn fill_pitched(&self, x: &[f32], dst: &mut [f32]) {
        for (ci, x_plane) in x.chunks_exact(self.h * self.w).enumerate() {
            for (r, x_row) in x_plane.chunks_exact(self.w).enumerate() {
                let at = ci * self.span + r * self.pitch;
                dst[at..at + self.w].copy_from_slice(x_row);
            }
        }
    }

    /// Writes (or adds) the products `src [c, span]` into `dst [c, h, w]`.
    fn unpitch(&self, src: &[f32], dst: &mut [f32], add: bool) {
        for (ci, dst_plane) in dst.chunks_exact_mut(self.h * self.w).enumerate() {
            for (r, dst_row) in dst_plane.chunks_exact_mut(self.w).enumerate() {
                let src_row = &src[ci * self.span + r * self.pitch..][..self.w];
                if add {
                    dst_row.iter_mut().zip(src_row).for_each(|(o, v)| *o += v);
                } else {
                    dst_row.copy_from_slice(src_row);
                }
            }
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
                    // Input column of output column `ow` is `ow * stride + kw - pad`.
                    if d.stride == 1 {
                        let start = ow_lo + kw - d.pad;
                        let dst = &mut dst[start..start + (ow_hi - ow_lo)];
                        for (o, &v) in dst.iter_mut().zip(&src[ow_lo..ow_hi]) {
                            *o += v;
                        }
                    } else {
                        for (ow, &v) in src.iter().enumerate().take(ow_hi).skip(ow_lo) {
                            dst[ow * d.stride + kw - d.pad] += v;
                        }
                    }
                }
            }
        }
    }
}

impl CpuBackend {
    /// Each group's `w_g [c_out_g, ckk]` packed as the `A` of the forward.
    fn pack_forward(&self, g: &Geometry, w: &[f32]) -> Vec<PackedA> {
        (0..g.d.groups)
            .map(|gi| {
                let w_g = g.weight_of(w, gi);
                PackedA::new(self.isa, g.c_out_g, g.ckk, |r, p| w_g[r * g.ckk + p])
            })
            .collect()
    }

    /// Each group's `A` of the backward data: `w_gᵀ [ckk, c_out_g]` for im2col; for bordered planes
    /// `[c_in_g, c_out_g * k * k]`, `A[ci, (co, kh, kw)] = w_g[co, ci, kh, kw]`.
    fn pack_backward_data(&self, g: &Geometry, w: &[f32]) -> Vec<PackedA> {
        let kk = g.d.k * g.d.k;
        (0..g.d.groups)
            .map(|gi| {
                let w_g = g.weight_of(w, gi);
                match g.bordered {
                    Some(_) => PackedA::new(self.isa, g.c_in_g, g.c_out_g * kk, |ci, q| {
                        w_g[(q / kk) * g.ckk + ci * kk + q % kk]
                    }),
                    None => PackedA::new(self.isa, g.ckk, g.c_out_g, |r, p| w_g[p * g.ckk + r]),
                }
            })
            .collect()
    }
}

/// Per-thread scratch of a sample's products: the bordered (or im2col) input and the pitched output.
fn scratch(g: &Geometry, c_in: usize, c_out: usize) -> (Vec<f32>, Vec<f32>) {
    match g.bordered {
        Some(b) => (vec![0.0; b.len(c_in)], vec![0.0; c_out * b.span]),
        None => (vec![0.0; g.col_len()], Vec::new()),
    }
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
        let packed = self.pack_forward(&g, w);
        let rows = match g.bordered {
            Some(b) => b.rows(g.c_in_g),
            None => Geometry::dense_rows(g.ckk, g.hw_out),
        };
        let isa = self.isa;
        self.pool.install(|| {
            y.par_chunks_mut(g.out_per_sample())
                .zip(x.par_chunks(g.in_per_sample()))
                .for_each_init(
                    || scratch(&g, g.c_in_g, g.c_out_g),
                    |(input, output), (y_s, x_s)| {
                        for (gi, w_g) in packed.iter().enumerate() {
                            let x_g = &x_s[gi * g.in_per_group()..(gi + 1) * g.in_per_group()];
                            let y_g =
                                &mut y_s[gi * g.out_per_group()..(gi + 1) * g.out_per_group()];
                            match g.bordered {
                                Some(b) => {
                                    b.fill(x_g, input);
                                    gemm_nn(isa, w_g, (input, &rows), b.span, output, false);
                                    b.unpitch(output, y_g, false);
                                }
                                None if g.direct => {
                                    gemm_nn(isa, w_g, (x_g, &rows), g.hw_out, y_g, false)
                                }
                                None => {
                                    im2col(&g, x_g, input);
                                    gemm_nn(isa, w_g, (input, &rows), g.hw_out, y_g, false);
                                }
                            }
                        }
                    },
                )
        });
        Ok(CpuBuf::from_vec(y))
    }

    /// `dy [n, c_out, h_out, w_out]`, `w [c_out, c_in / groups, k, k]` → `dx [n, c_in, h, w]`,
    /// written or added straight into `dx_out`.
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
        let dx = dx_out.as_mut_slice();
        let add = mode == WriteMode::Add;
        if dx.is_empty() {
            return Ok(());
        }
        if g.out_per_sample() == 0 {
            if !add {
                dx.fill(0.0);
            }
            return Ok(());
        }
        let packed = self.pack_backward_data(&g, w);
        let rows = match g.bordered {
            Some(b) => b.flipped_rows(g.c_out_g),
            None => Geometry::dense_rows(g.c_out_g, g.hw_out),
        };
        let isa = self.isa;
        self.pool.install(|| {
            dx.par_chunks_mut(g.in_per_sample())
                .zip(dy.par_chunks(g.out_per_sample()))
                .for_each_init(
                    || scratch(&g, g.c_out_g, g.c_in_g),
                    |(input, output), (dx_s, dy_s)| {
                        if !add && g.bordered.is_none() && !g.direct {
                            dx_s.fill(0.0); // col2im adds
                        }
                        for (gi, a_g) in packed.iter().enumerate() {
                            let dy_g = &dy_s[gi * g.out_per_group()..(gi + 1) * g.out_per_group()];
                            let dx_g =
                                &mut dx_s[gi * g.in_per_group()..(gi + 1) * g.in_per_group()];
                            match g.bordered {
                                Some(b) => {
                                    b.fill(dy_g, input);
                                    gemm_nn(isa, a_g, (input, &rows), b.span, output, false);
                                    b.unpitch(output, dx_g, add);
                                }
                                // A direct conv's patch matrix is dx_g itself.
                                None if g.direct => {
                                    gemm_nn(isa, a_g, (dy_g, &rows), g.hw_out, dx_g, add)
                                }
                                None => {
                                    gemm_nn(isa, a_g, (dy_g, &rows), g.hw_out, input, false);
                                    col2im(&g, input, dx_g);
                                }
                            }
                        }
                    },
                )
        });
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
        // Products over `pixels` per sample; samples are summed `together` before one reduction.
        let (pixels, rows) = match g.bordered {
            Some(b) => (b.span, b.rows(g.c_in_g)),
            None => (g.hw_out, Geometry::dense_rows(g.ckk, g.hw_out)),
        };
        let together = (WEIGHT_GRAD_PIXELS / pixels).max(1);
        let isa = self.isa;
        self.pool.install(|| {
            // Fixed chunking of the batch (depends on n only), partials summed in chunk order.
            let chunk = d.n.div_ceil(WEIGHT_GRAD_CHUNKS);
            let chunks = d.n.div_ceil(chunk);
            let partials: Vec<Vec<f32>> = (0..chunks)
                .into_par_iter()
                .map(|ci| {
                    let mut dw = vec![0.0f32; weight_len];
                    // Per sample of a `together` group: its patch source and (bordered) its dy.
                    let mut inputs: Vec<Vec<f32>> = (0..together)
                        .map(|_| match g.bordered {
                            Some(b) => vec![0.0; b.len(g.c_in_g)],
                            None => vec![0.0; g.col_len()],
                        })
                        .collect();
                    let mut pitched: Vec<Vec<f32>> = (0..together)
                        .map(|_| match g.bordered {
                            Some(b) => vec![0.0; g.c_out_g * b.span],
                            None => Vec::new(),
                        })
                        .collect();
                    let samples = ci * chunk..((ci + 1) * chunk).min(d.n);
                    for first in samples.clone().step_by(together) {
                        let group_of = first..(first + together).min(samples.end);
                        for gi in 0..d.groups {
                            let slots = inputs.iter_mut().zip(pitched.iter_mut());
                            let segments: Vec<(&[f32], &[f32])> = group_of
                                .clone()
                                .zip(slots)
                                .map(|(s, (input, pitched))| {
                                    let x_s = &x[s * g.in_per_sample()..][..g.in_per_sample()];
                                    let x_g = &x_s[gi * g.in_per_group()..][..g.in_per_group()];
                                    let dy_s = &dy[s * g.out_per_sample()..][..g.out_per_sample()];
                                    let dy_g = &dy_s[gi * g.out_per_group()..][..g.out_per_group()];
                                    match g.bordered {
                                        Some(b) => {
                                            b.fill(x_g, input);
                                            b.fill_pitched(dy_g, pitched);
                                            (&pitched[..], &input[..])
                                        }
                                        None if g.direct => (dy_g, x_g),
                                        None => {
                                            im2col(&g, x_g, input);
                                            (dy_g, &input[..])
                                        }
                                    }
                                })
                                .collect();
                            // dw_g [c_out_g, ckk] += Σ_s dy_g [c_out_g, pixels] · X_gᵀ
                            let dw_g =
                                &mut dw[gi * g.weight_per_group()..(gi + 1) * g.weight_per_group()];
                            gemm_nt(isa, (g.c_out_g, g.ckk, pixels), &segments, &rows, dw_g);
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
