//! 2-D convolution as implicit GEMM (kernels/conv.cu): the forward, data-gradient and
//! weight-gradient products gather their operand tiles from the NCHW tensors in shared memory, one
//! launch per pass and no column matrix in global memory. Per group, with `kk = k * k` and
//! `P = h_out * w_out`, the products are `[c_out_g, c_in_g kk] x [c_in_g kk, n P]` (forward),
//! `[c_in_g, c_out_g kk] x [c_out_g kk, n h w]` (data) and `[c_out_g, n P] x [n P, c_in_g kk]`
//! (weight, its long sum split across blocks and added up in split order by the last block of each
//! tile).

use anyhow::Result;

use super::{kernels, to_u32, CudaBackend, CudaBuf, LaunchConfig};
use crate::backend::{
    BatchNormAct, BatchNormStats, BatchNormTrain, Conv2dDims, ConvBatchNormOut, ConvOps, WriteMode,
};

/// The tile shape of a product with `m` rows (kernels/conv.cu `conv2d_*_m{16,32,64,128}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tiles {
    M16,
    M32,
    M64,
    M128,
}

impl Tiles {
    fn for_rows(m: usize) -> Self {
        match m {
            0..=16 => Tiles::M16,
            17..=32 => Tiles::M32,
            33..=64 => Tiles::M64,
            _ => Tiles::M128,
        }
    }
    /// `(BM, BN)`.
    fn shape(self) -> (usize, usize) {
        match self {
            Tiles::M16 => (16, 128),
            Tiles::M32 => (32, 128),
            Tiles::M64 => (64, 64),
            Tiles::M128 => (128, 64),
        }
    }
    /// Tiles of an `m x n` product per group.
    fn count(self, m: usize, n: usize) -> usize {
        let (bm, bn) = self.shape();
        m.div_ceil(bm) * n.div_ceil(bn)
    }
}

/// Threads of a convolution block (kernels/conv.cu `CONV_THREADS`).
const CONV_THREADS: u32 = 256;
/// A weight-gradient split sums at least this many products per output before handing over.
const MIN_SPLIT: usize = 1024;
/// Blocks per SM the weight gradient's splits aim at (each writes a partial tile).
const SPLIT_BLOCKS_PER_SM: usize = 4;

/// The kernels' shape arguments, after the 32-bit size checks.
struct ConvArgs {
    n: u32,
    c_in: u32,
    h: u32,
    w: u32,
    c_out: u32,
    k: u32,
    stride: u32,
    pad: u32,
    h_out: u32,
    w_out: u32,
    groups: u32,
}

impl ConvArgs {
    fn new(op: &str, d: Conv2dDims) -> Result<Self> {
        to_u32(op, "input size", d.input_len())?;
        to_u32(op, "output size", d.output_len())?;
        to_u32(op, "weight size", d.weight_len())?;
        Ok(Self {
            n: d.n as u32,
            c_in: d.c_in as u32,
            h: d.h as u32,
            w: d.w as u32,
            c_out: d.c_out as u32,
            k: d.k as u32,
            stride: d.stride as u32,
            pad: d.pad as u32,
            h_out: d.h_out() as u32,
            w_out: d.w_out() as u32,
            groups: d.groups as u32,
        })
    }
}

/// The product sizes `(m, n, k)` per group of each pass.
fn forward_product(d: Conv2dDims) -> (usize, usize, usize) {
    let kk = d.k * d.k;
    (
        d.c_out / d.groups,
        d.n * d.h_out() * d.w_out(),
        (d.c_in / d.groups) * kk,
    )
}
fn data_product(d: Conv2dDims) -> (usize, usize, usize) {
    let kk = d.k * d.k;
    (
        d.c_in / d.groups,
        d.n * d.h * d.w,
        (d.c_out / d.groups) * kk,
    )
}
fn weight_product(d: Conv2dDims) -> (usize, usize, usize) {
    let kk = d.k * d.k;
    (
        d.c_out / d.groups,
        (d.c_in / d.groups) * kk,
        d.n * d.h_out() * d.w_out(),
    )
}

impl CudaBackend {
    /// A grid-stride launch over `items` blocks of work, counting the product's FLOPs.
    fn conv_launch(
        &self,
        items: usize,
        (m, n, k): (usize, usize, usize),
        groups: usize,
    ) -> Option<LaunchConfig> {
        if items == 0 || m == 0 || n == 0 {
            return None;
        }
        self.dev()
            .count_kernel_flops(2 * (m * n * k * groups) as u64);
        let blocks = items.min(self.dev().max_grid_blocks() as usize);
        Some(LaunchConfig::linear(blocks as u32, CONV_THREADS))
    }
}

impl ConvOps for CudaBackend {
    /// Two launches: the convolution with the batch statistics in its epilogue
    /// (`conv2d_forward_stats_*`), then the normalisation with the fused activation.
    fn conv2d_batch_norm_train_unchecked(
        &self,
        x: &CudaBuf,
        w: &CudaBuf,
        d: Conv2dDims,
        bn: BatchNormTrain<'_, Self>,
        act: BatchNormAct<'_, Self>,
    ) -> Result<ConvBatchNormOut<Self>> {
        const OP: &str = "conv2d_batch_norm_train";
        let a = ConvArgs::new(OP, d)?;
        let mut z = self.alloc(d.output_len())?;
        let mut y = self.alloc(d.output_len())?;
        let mut saved_mean = self.alloc(d.c_out)?;
        let mut saved_inv_std = self.alloc(d.c_out)?;
        let product = forward_product(d);
        let tiles = Tiles::for_rows(product.0);
        let (bm, bn_cols) = tiles.shape();
        let (tiles_m, tiles_n) = (product.0.div_ceil(bm), product.1.div_ceil(bn_cols));
        if let Some(cfg) = self.conv_launch(tiles_m * tiles_n * d.groups, product, d.groups) {
            let row_blocks = d.groups * tiles_m;
            let mut partial = self.alloc::<f64>(row_blocks * tiles_n * bm * 2)?;
            let mut counters = self.block_counters(row_blocks)?;
            let launch = match tiles {
                Tiles::M16 => kernels::conv2d_forward_stats_m16,
                Tiles::M32 => kernels::conv2d_forward_stats_m32,
                Tiles::M64 => kernels::conv2d_forward_stats_m64,
                Tiles::M128 => kernels::conv2d_forward_stats_m128,
            };
            launch(
                self.dev(),
                cfg,
                x,
                w,
                &mut z,
                &mut partial,
                &mut counters,
                &mut saved_mean,
                &mut saved_inv_std,
                bn.running.mean,
                bn.running.var,
                a.n,
                a.c_in,
                a.h,
                a.w,
                a.c_out,
                a.k,
                a.stride,
                a.pad,
                a.h_out,
                a.w_out,
                a.groups,
                bn.cfg.eps,
                bn.cfg.momentum,
            )?;
        }
        let saved = BatchNormStats {
            mean: &saved_mean,
            var: &saved_inv_std,
        };
        self.batch_norm_apply(&z, saved, bn.affine, d.output_channels(), act, &mut y)?;
        Ok(ConvBatchNormOut {
            z,
            y,
            saved_mean,
            saved_inv_std,
        })
    }

    fn conv2d_forward_unchecked(&self, x: &CudaBuf, w: &CudaBuf, d: Conv2dDims) -> Result<CudaBuf> {
        let a = ConvArgs::new("conv2d_forward", d)?;
        let mut y = self.alloc(d.output_len())?;
        let product = forward_product(d);
        let tiles = Tiles::for_rows(product.0);
        let Some(cfg) = self.conv_launch(
            tiles.count(product.0, product.1) * d.groups,
            product,
            d.groups,
        ) else {
            return Ok(y);
        };
        let launch = match tiles {
            Tiles::M16 => kernels::conv2d_forward_m16,
            Tiles::M32 => kernels::conv2d_forward_m32,
            Tiles::M64 => kernels::conv2d_forward_m64,
            Tiles::M128 => kernels::conv2d_forward_m128,
        };
        launch(
            self.dev(),
            cfg,
            x,
            w,
            &mut y,
            a.n,
            a.c_in,
            a.h,
            a.w,
            a.c_out,
            a.k,
            a.stride,
            a.pad,
            a.h_out,
            a.w_out,
            a.groups,
        )?;
        Ok(y)
    }

    fn conv2d_backward_data_unchecked(
        &self,
        dy: &CudaBuf,
        w: &CudaBuf,
        d: Conv2dDims,
        dx: &mut CudaBuf,
        mode: WriteMode,
    ) -> Result<()> {
        let a = ConvArgs::new("conv2d_backward_data", d)?;
        let product = data_product(d);
        let tiles = Tiles::for_rows(product.0);
        let Some(cfg) = self.conv_launch(
            tiles.count(product.0, product.1) * d.groups,
            product,
            d.groups,
        ) else {
            // Nothing flows back (no output positions): a zero gradient, or nothing to add.
            return match mode {
                WriteMode::Overwrite => self.fill_zero(dx),
                WriteMode::Add => Ok(()),
            };
        };
        let launch = match tiles {
            Tiles::M16 => kernels::conv2d_backward_data_m16,
            Tiles::M32 => kernels::conv2d_backward_data_m32,
            Tiles::M64 => kernels::conv2d_backward_data_m64,
            Tiles::M128 => kernels::conv2d_backward_data_m128,
        };
        launch(
            self.dev(),
            cfg,
            dy,
            w,
            dx,
            a.n,
            a.c_in,
            a.h,
            a.w,
            a.c_out,
            a.k,
            a.stride,
            a.pad,
            a.h_out,
            a.w_out,
            a.groups,
            i32::from(mode == WriteMode::Add),
        )
    }

    fn conv2d_backward_weight_unchecked(
        &self,
        x: &CudaBuf,
        dy: &CudaBuf,
        d: Conv2dDims,
        dw: &mut CudaBuf,
    ) -> Result<()> {
        let a = ConvArgs::new("conv2d_backward_weight", d)?;
        let product = weight_product(d);
        let tiles_shape = Tiles::for_rows(product.0);
        let (bm, bn) = tiles_shape.shape();
        let tiles = tiles_shape.count(product.0, product.1) * d.groups;
        // Enough splits for SPLIT_BLOCKS_PER_SM blocks on every SM, each at least MIN_SPLIT long:
        // more would only add partial tiles to write and read back.
        let sum_len = product.2;
        let max_splits = sum_len.div_ceil(MIN_SPLIT).max(1);
        let blocks = SPLIT_BLOCKS_PER_SM * self.limits().sm_count as usize;
        let wanted = blocks.div_ceil(tiles.max(1));
        let splits = wanted.clamp(1, max_splits);
        let Some(cfg) = self.conv_launch(tiles * splits, product, d.groups) else {
            return self.fill_zero(dw);
        };
        let mut partial = self.alloc::<f32>(splits * tiles * bm * bn)?;
        let mut counters = self.block_counters(tiles)?;
        let launch = match tiles_shape {
            Tiles::M16 => kernels::conv2d_backward_weight_m16,
            Tiles::M32 => kernels::conv2d_backward_weight_m32,
            Tiles::M64 => kernels::conv2d_backward_weight_m64,
            Tiles::M128 => kernels::conv2d_backward_weight_m128,
        };
        launch(
            self.dev(),
            cfg,
            x,
            dy,
            &mut partial,
            dw,
            &mut counters,
            a.n,
            a.c_in,
            a.h,
            a.w,
            a.c_out,
            a.k,
            a.stride,
            a.pad,
            a.h_out,
            a.w_out,
            a.groups,
            to_u32("conv2d_backward_weight", "splits", splits)?,
        )
    }
}
