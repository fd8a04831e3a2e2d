//! 2-D convolution as implicit GEMM, in two kernel families with the same signatures:
//! - on the tensor cores (kernels/conv_mma.cu, with TF32 on: [`super::CudaOptions::tf32`]), tiles of
//!   positions x channels, tf32 MMAs in a cp.async pipeline; 3x3 filters of stride 1 and 2 compiled
//!   for their size, others read it from the arguments;
//! - on the fp32 FMA units (kernels/conv.cu, with TF32 off), tiles of channels x positions.
//!
//! Either way the forward, data-gradient and weight-gradient products gather their operand tiles from
//! the NCHW tensors in shared memory, one launch per pass and no column matrix in global memory. Per
//! group, with `kk = k * k` and `P = h_out * w_out`, the products are `[c_out_g, c_in_g kk] x
//! [c_in_g kk, n P]` (forward), `[c_in_g, c_out_g kk] x [c_out_g kk, n h w]` (data; the tensor-core
//! kernels take each stride phase's taps only) and `[c_out_g, n P] x [n P, c_in_g kk]` (weight, its
//! long sum split across blocks and added up in split order by the last block of each tile).

use anyhow::Result;

use super::device::Device;
use super::{kernels, to_u32, CudaBackend, CudaBuf, LaunchConfig};
use crate::backend::abi::{
    CONV_MMA_BK, CONV_MMA_ROWS_HALO_PITCH, CONV_MMA_THREADS, CONV_MMA_THREADS_K3_WEIGHT,
};
use crate::backend::{
    BatchNormAct, BatchNormStats, BatchNormTrain, Conv2dDims, ConvBatchNormOut, ConvOps, WriteMode,
};

/// The tile shape of an FMA product with `m` rows (kernels/conv.cu `conv2d_*_m{16,32,64,128}`).
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
    fn index(self) -> usize {
        self as usize
    }
}

/// The filters the tensor-core kernels are compiled for (kernels/conv_mma.cu `conv2d_mma_*_{k3s1,
/// k3s2,k1s1,any}_*`): a 3x3 filter of stride 1 or 2, a 1x1 of stride 1, or any other, read from the
/// arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MmaFilter {
    K3S1,
    K3S2,
    K1S1,
    Any,
}

impl MmaFilter {
    /// The kernels for `d`'s filter; `k_channels`, the channels per group a forward or data-gradient
    /// product's K runs over, must be a multiple of the K step for the compiled ones (their K loop
    /// assumes every step stays on one tap).
    fn of(d: Conv2dDims, k_channels: Option<usize>) -> Self {
        let whole_steps = k_channels.is_none_or(|c| c % CONV_MMA_BK == 0);
        match (d.k, d.stride, whole_steps) {
            (3, 1, true) => MmaFilter::K3S1,
            (3, 2, true) => MmaFilter::K3S2,
            (1, 1, true) => MmaFilter::K1S1,
            _ => MmaFilter::Any,
        }
    }
    /// Threads and rows of a weight-gradient block.
    fn weight_block(self) -> (u32, usize) {
        let threads = match self {
            MmaFilter::K3S1 | MmaFilter::K3S2 => CONV_MMA_THREADS_K3_WEIGHT,
            MmaFilter::K1S1 | MmaFilter::Any => CONV_MMA_THREADS,
        };
        (threads as u32, threads / 2)
    }
}

/// The channel width of a tensor-core tile (`*_n{16,32,64}`), for `channels` columns.
fn mma_width(channels: usize) -> (usize, usize) {
    match channels {
        0..=16 => (0, 16),
        17..=32 => (1, 32),
        _ => (2, 64),
    }
}

/// Rows of a tensor-core forward or data-gradient tile: one a thread.
const MMA_ROWS: usize = CONV_MMA_THREADS;

type ForwardFn = fn(
    &Device,
    LaunchConfig,
    &CudaBuf,
    &CudaBuf,
    &mut CudaBuf,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
) -> Result<()>;
type ForwardStatsFn = fn(
    &Device,
    LaunchConfig,
    &CudaBuf,
    &CudaBuf,
    &mut CudaBuf,
    &mut super::DeviceBuffer<f64>,
    &mut super::DeviceBuffer<u32>,
    &mut CudaBuf,
    &mut CudaBuf,
    &mut CudaBuf,
    &mut CudaBuf,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    f32,
    f32,
) -> Result<()>;
type DataFn = fn(
    &Device,
    LaunchConfig,
    &CudaBuf,
    &CudaBuf,
    &mut CudaBuf,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    i32,
) -> Result<()>;
type WeightFn = fn(
    &Device,
    LaunchConfig,
    &CudaBuf,
    &CudaBuf,
    &mut CudaBuf,
    &mut CudaBuf,
    &mut super::DeviceBuffer<u32>,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
) -> Result<()>;

/// The kernels of one pass: the FMA family by [`Tiles`], the tensor-core family by [`MmaFilter`]
/// and channel width.
struct PassKernels<F> {
    fma: [F; 4],
    mma: [[F; 3]; 4],
}

const FORWARD: PassKernels<ForwardFn> = PassKernels {
    fma: [
        kernels::conv2d_forward_m16,
        kernels::conv2d_forward_m32,
        kernels::conv2d_forward_m64,
        kernels::conv2d_forward_m128,
    ],
    mma: [
        [
            kernels::conv2d_mma_forward_k3s1_n16,
            kernels::conv2d_mma_forward_k3s1_n32,
            kernels::conv2d_mma_forward_k3s1_n64,
        ],
        [
            kernels::conv2d_mma_forward_k3s2_n16,
            kernels::conv2d_mma_forward_k3s2_n32,
            kernels::conv2d_mma_forward_k3s2_n64,
        ],
        [
            kernels::conv2d_mma_forward_k1s1_n16,
            kernels::conv2d_mma_forward_k1s1_n32,
            kernels::conv2d_mma_forward_k1s1_n64,
        ],
        [
            kernels::conv2d_mma_forward_any_n16,
            kernels::conv2d_mma_forward_any_n32,
            kernels::conv2d_mma_forward_any_n64,
        ],
    ],
};
const FORWARD_STATS: PassKernels<ForwardStatsFn> = PassKernels {
    fma: [
        kernels::conv2d_forward_stats_m16,
        kernels::conv2d_forward_stats_m32,
        kernels::conv2d_forward_stats_m64,
        kernels::conv2d_forward_stats_m128,
    ],
    mma: [
        [
            kernels::conv2d_mma_forward_stats_k3s1_n16,
            kernels::conv2d_mma_forward_stats_k3s1_n32,
            kernels::conv2d_mma_forward_stats_k3s1_n64,
        ],
        [
            kernels::conv2d_mma_forward_stats_k3s2_n16,
            kernels::conv2d_mma_forward_stats_k3s2_n32,
            kernels::conv2d_mma_forward_stats_k3s2_n64,
        ],
        [
            kernels::conv2d_mma_forward_stats_k1s1_n16,
            kernels::conv2d_mma_forward_stats_k1s1_n32,
            kernels::conv2d_mma_forward_stats_k1s1_n64,
        ],
        [
            kernels::conv2d_mma_forward_stats_any_n16,
            kernels::conv2d_mma_forward_stats_any_n32,
            kernels::conv2d_mma_forward_stats_any_n64,
        ],
    ],
};
const DATA: PassKernels<DataFn> = PassKernels {
    fma: [
        kernels::conv2d_backward_data_m16,
        kernels::conv2d_backward_data_m32,
        kernels::conv2d_backward_data_m64,
        kernels::conv2d_backward_data_m128,
    ],
    mma: [
        [
            kernels::conv2d_mma_backward_data_k3s1_n16,
            kernels::conv2d_mma_backward_data_k3s1_n32,
            kernels::conv2d_mma_backward_data_k3s1_n64,
        ],
        [
            kernels::conv2d_mma_backward_data_k3s2_n16,
            kernels::conv2d_mma_backward_data_k3s2_n32,
            kernels::conv2d_mma_backward_data_k3s2_n64,
        ],
        [
            kernels::conv2d_mma_backward_data_k1s1_n16,
            kernels::conv2d_mma_backward_data_k1s1_n32,
            kernels::conv2d_mma_backward_data_k1s1_n64,
        ],
        [
            kernels::conv2d_mma_backward_data_any_n16,
            kernels::conv2d_mma_backward_data_any_n32,
            kernels::conv2d_mma_backward_data_any_n64,
        ],
    ],
};
const WEIGHT: PassKernels<WeightFn> = PassKernels {
    fma: [
        kernels::conv2d_backward_weight_m16,
        kernels::conv2d_backward_weight_m32,
        kernels::conv2d_backward_weight_m64,
        kernels::conv2d_backward_weight_m128,
    ],
    mma: [
        [
            kernels::conv2d_mma_backward_weight_k3s1_n16,
            kernels::conv2d_mma_backward_weight_k3s1_n32,
            kernels::conv2d_mma_backward_weight_k3s1_n64,
        ],
        [
            kernels::conv2d_mma_backward_weight_k3s2_n16,
            kernels::conv2d_mma_backward_weight_k3s2_n32,
            kernels::conv2d_mma_backward_weight_k3s2_n64,
        ],
        [
            kernels::conv2d_mma_backward_weight_k1s1_n16,
            kernels::conv2d_mma_backward_weight_k1s1_n32,
            kernels::conv2d_mma_backward_weight_k1s1_n64,
        ],
        [
            kernels::conv2d_mma_backward_weight_any_n16,
            kernels::conv2d_mma_backward_weight_any_n32,
            kernels::conv2d_mma_backward_weight_any_n64,
        ],
    ],
};

/// The 3x3 weight-gradient kernels whose K steps run along output rows, reading each step's input
/// once as a halo (kernels/conv_mma.cu `conv2d_mma_backward_weight_k3s{1,2}_halo_*`), by stride and
/// channel width: for the layers [`weight_steps_along_rows`] accepts.
const WEIGHT_HALO: [[WeightFn; 3]; 2] = [
    [
        kernels::conv2d_mma_backward_weight_k3s1_halo_n16,
        kernels::conv2d_mma_backward_weight_k3s1_halo_n32,
        kernels::conv2d_mma_backward_weight_k3s1_halo_n64,
    ],
    [
        kernels::conv2d_mma_backward_weight_k3s2_halo_n16,
        kernels::conv2d_mma_backward_weight_k3s2_halo_n32,
        kernels::conv2d_mma_backward_weight_k3s2_halo_n64,
    ],
];

/// The 1x1 stride-1 weight-gradient kernels on 16-byte copies (kernels/conv_mma.cu
/// `conv2d_mma_backward_weight_k1s1_vec_*`), by channel width: for the layers
/// [`weight_pieces_whole`] accepts.
const WEIGHT_K1_VEC: [WeightFn; 3] = [
    kernels::conv2d_mma_backward_weight_k1s1_vec_n16,
    kernels::conv2d_mma_backward_weight_k1s1_vec_n32,
    kernels::conv2d_mma_backward_weight_k1s1_vec_n64,
];

/// Whether a 1x1 weight gradient's K steps come in 16-byte pieces of 4 positions of one image:
/// stride 1, no padding, an image's positions a multiple of 4.
fn weight_pieces_whole(d: Conv2dDims) -> bool {
    d.k == 1 && d.stride == 1 && d.pad == 0 && (d.h_out() * d.w_out()).is_multiple_of(4)
}

/// Whether every 16-deep K step (positions) of a weight gradient is part of one output row or whole
/// rows of one image, as the halo kernels need: `w_out` a multiple of the step, or 8 or 4 with the
/// image's positions a multiple of the step.
fn weight_steps_along_rows(d: Conv2dDims) -> bool {
    let w = d.w_out();
    let rows_or_part = w.is_multiple_of(CONV_MMA_BK) || (w >= 4 && CONV_MMA_BK.is_multiple_of(w));
    rows_or_part && (d.h_out() * w).is_multiple_of(CONV_MMA_BK)
}

/// The 3x3 stride-1 forward and data-gradient kernels whose tiles are whole output rows, reading
/// their input once per 16 channels as a halo (kernels/conv_mma.cu `conv2d_mma_*_k3s1_rows_*`), by
/// channel width: for the layers [`rows_tiles`] accepts.
const FORWARD_ROWS: [ForwardFn; 3] = [
    kernels::conv2d_mma_forward_k3s1_rows_n16,
    kernels::conv2d_mma_forward_k3s1_rows_n32,
    kernels::conv2d_mma_forward_k3s1_rows_n64,
];
const FORWARD_STATS_ROWS: [ForwardStatsFn; 3] = [
    kernels::conv2d_mma_forward_stats_k3s1_rows_n16,
    kernels::conv2d_mma_forward_stats_k3s1_rows_n32,
    kernels::conv2d_mma_forward_stats_k3s1_rows_n64,
];
const DATA_ROWS: [DataFn; 3] = [
    kernels::conv2d_mma_backward_data_k3s1_rows_n16,
    kernels::conv2d_mma_backward_data_k3s1_rows_n32,
    kernels::conv2d_mma_backward_data_k3s1_rows_n64,
];

/// Whether a 3x3 stride-1 product suits the row-tile kernels: its K channels a multiple of the
/// step, its `out` plane's positions (`h x w`) in 128-position tiles of whole rows of one image or
/// of whole images, their halo (2 rows and 2 columns more) within [`CONV_MMA_ROWS_HALO_PITCH`].
fn rows_tiles(d: Conv2dDims, k_channels: usize, (h, w): (usize, usize)) -> bool {
    let p = h * w;
    let (images, rows) = if p >= MMA_ROWS {
        (1, MMA_ROWS / w)
    } else {
        (MMA_ROWS / p.max(1), h)
    };
    let whole = if p >= MMA_ROWS {
        p.is_multiple_of(MMA_ROWS) && MMA_ROWS.is_multiple_of(w)
    } else {
        p > 0 && MMA_ROWS.is_multiple_of(p)
    };
    d.k == 3
        && d.stride == 1
        && d.pad <= 2
        && k_channels.is_multiple_of(CONV_MMA_BK)
        && whole
        && images * (rows + 2) * (w + 2) <= CONV_MMA_ROWS_HALO_PITCH
}

/// Threads of an FMA convolution block (kernels/conv.cu `CONV_THREADS`).
const CONV_THREADS: u32 = 256;
/// A weight-gradient split sums at least this many products per output before handing over: the
/// FMA tiles, and the tensor-core ones (16 of their 16-deep steps; their blocks finish a step about
/// ten times sooner, so shorter splits fill the GPU for the same cost in partial tiles).
const MIN_SPLIT: usize = 1024;
const MIN_SPLIT_MMA: usize = 256;
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

/// How one pass runs: its kernel, the work items of its grid, the block, and the FLOPs its products
/// do (a stride-2 tensor-core data gradient skips the structural zeros the FMA one multiplies).
struct Plan<F> {
    launch: F,
    /// Output tiles, over every group (and stride phase).
    tiles: usize,
    threads: u32,
    /// `(rows, columns)` of a tile.
    tile: (usize, usize),
    /// Tiles along the side of the product that is not the channels (the statistics' blocks fold
    /// this many partial sums each), and the channel blocks (one statistics counter each).
    position_tiles: usize,
    channel_blocks: usize,
    /// Channels a tile covers.
    channel_width: usize,
    flops: u64,
}

/// Per group: output channels `c_out_g`, positions `n h_out w_out`, sum length `c_in_g kk`.
fn forward_sizes(d: Conv2dDims) -> (usize, usize, usize) {
    (
        d.c_out / d.groups,
        d.n * d.h_out() * d.w_out(),
        (d.c_in / d.groups) * d.k * d.k,
    )
}

fn ceil(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

impl CudaBackend {
    fn forward_plan<F: Copy>(
        &self,
        d: Conv2dDims,
        kernels: &PassKernels<F>,
        rows: &[F; 3],
    ) -> Plan<F> {
        let (channels, positions, sum) = forward_sizes(d);
        let flops = 2 * (channels * positions * sum * d.groups) as u64;
        if self.options.tf32 {
            let (w, bn) = mma_width(channels);
            let (tm, tn) = (ceil(positions, MMA_ROWS), ceil(channels, bn));
            let c_in_g = d.c_in / d.groups;
            let launch = if rows_tiles(d, c_in_g, (d.h_out(), d.w_out())) {
                rows[w]
            } else {
                kernels.mma[MmaFilter::of(d, Some(c_in_g)) as usize][w]
            };
            Plan {
                launch,
                tiles: tm * tn * d.groups,
                threads: CONV_MMA_THREADS as u32,
                tile: (MMA_ROWS, bn),
                position_tiles: tm,
                channel_blocks: tn * d.groups,
                channel_width: bn,
                flops,
            }
        } else {
            let tiles = Tiles::for_rows(channels);
            let (bm, bn) = tiles.shape();
            let (tm, tn) = (ceil(channels, bm), ceil(positions, bn));
            Plan {
                launch: kernels.fma[tiles.index()],
                tiles: tm * tn * d.groups,
                threads: CONV_THREADS,
                tile: (bm, bn),
                position_tiles: tn,
                channel_blocks: tm * d.groups,
                channel_width: bm,
                flops,
            }
        }
    }

    fn data_plan(&self, d: Conv2dDims) -> Plan<DataFn> {
        let (c_in_g, c_out_g) = (d.c_in / d.groups, d.c_out / d.groups);
        let kk = d.k * d.k;
        if self.options.tf32 {
            // One tile row per input position of a stride phase; each phase takes its own taps.
            let s = d.stride;
            let (w, bn) = mma_width(c_in_g);
            let most = d.n * ceil(d.h, s) * ceil(d.w, s);
            let (tm, tn) = (ceil(most, MMA_ROWS), ceil(c_in_g, bn));
            // Along one axis, phase `p` has ceil((size - p) / s) positions and the taps
            // kh = (p + pad) % s, + s, ... below k (kernels/conv_mma.cu).
            let positions = |p: usize, size: usize| size.saturating_sub(p).div_ceil(s);
            let taps = |p: usize| d.k.saturating_sub((p + d.pad) % s).div_ceil(s);
            let mut flops = 0u64;
            for ph in 0..s {
                for pw in 0..s {
                    let rows = d.n * positions(ph, d.h) * positions(pw, d.w);
                    let sum = c_out_g * taps(ph) * taps(pw);
                    flops += 2 * (rows * sum * c_in_g * d.groups) as u64;
                }
            }
            let launch = if rows_tiles(d, c_out_g, (d.h, d.w)) {
                DATA_ROWS[w]
            } else {
                DATA.mma[MmaFilter::of(d, Some(c_out_g)) as usize][w]
            };
            Plan {
                launch,
                tiles: tm * tn * s * s * d.groups,
                threads: CONV_MMA_THREADS as u32,
                tile: (MMA_ROWS, bn),
                position_tiles: tm,
                channel_blocks: tn * d.groups,
                channel_width: bn,
                flops,
            }
        } else {
            let positions = d.n * d.h * d.w;
            let tiles = Tiles::for_rows(c_in_g);
            let (bm, bn) = tiles.shape();
            let (tm, tn) = (ceil(c_in_g, bm), ceil(positions, bn));
            Plan {
                launch: DATA.fma[tiles.index()],
                tiles: tm * tn * d.groups,
                threads: CONV_THREADS,
                tile: (bm, bn),
                position_tiles: tn,
                channel_blocks: tm * d.groups,
                channel_width: bm,
                flops: 2 * (c_in_g * positions * c_out_g * kk * d.groups) as u64,
            }
        }
    }

    fn weight_plan(&self, d: Conv2dDims) -> Plan<WeightFn> {
        let (c_out_g, positions, sum) = forward_sizes(d);
        let flops = 2 * (c_out_g * positions * sum * d.groups) as u64;
        if self.options.tf32 {
            // Rows (ci, kh, kw), columns the output channels.
            // Its K runs over positions: any channel count suits the compiled filters.
            let filter = MmaFilter::of(d, None);
            let (threads, bm) = filter.weight_block();
            let (w, bn) = mma_width(c_out_g);
            let (tm, tn) = (ceil(sum, bm), ceil(c_out_g, bn));
            let launch = match filter {
                MmaFilter::K3S1 | MmaFilter::K3S2 if weight_steps_along_rows(d) => {
                    WEIGHT_HALO[d.stride - 1][w]
                }
                MmaFilter::K1S1 if weight_pieces_whole(d) => WEIGHT_K1_VEC[w],
                _ => WEIGHT.mma[filter as usize][w],
            };
            Plan {
                launch,
                tiles: tm * tn * d.groups,
                threads,
                tile: (bm, bn),
                position_tiles: tm,
                channel_blocks: tn * d.groups,
                channel_width: bn,
                flops,
            }
        } else {
            let tiles = Tiles::for_rows(c_out_g);
            let (bm, bn) = tiles.shape();
            let (tm, tn) = (ceil(c_out_g, bm), ceil(sum, bn));
            Plan {
                launch: WEIGHT.fma[tiles.index()],
                tiles: tm * tn * d.groups,
                threads: CONV_THREADS,
                tile: (bm, bn),
                position_tiles: tn,
                channel_blocks: tm * d.groups,
                channel_width: bm,
                flops,
            }
        }
    }

    /// A grid-stride launch over `items` blocks of work, counting the plan's FLOPs; `None` when there
    /// is nothing to compute.
    fn conv_launch<F>(&self, plan: &Plan<F>, items: usize) -> Option<LaunchConfig> {
        if items == 0 {
            return None;
        }
        self.dev().count_kernel_flops(plan.flops);
        let blocks = items.min(self.dev().max_grid_blocks() as usize);
        Some(LaunchConfig::linear(blocks as u32, plan.threads))
    }
}

impl ConvOps for CudaBackend {
    /// Two launches: the convolution with the batch statistics in its epilogue
    /// (`conv2d_forward_stats_*`, `conv2d_mma_forward_stats_*`), then the normalisation with the
    /// fused activation.
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
        let plan = self.forward_plan(d, &FORWARD_STATS, &FORWARD_STATS_ROWS);
        if let Some(cfg) = self.conv_launch(&plan, plan.tiles) {
            let mut partial = self
                .alloc::<f64>(plan.channel_blocks * plan.position_tiles * plan.channel_width * 2)?;
            let mut counters = self.block_counters(plan.channel_blocks)?;
            (plan.launch)(
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
        let plan = self.forward_plan(d, &FORWARD, &FORWARD_ROWS);
        let Some(cfg) = self.conv_launch(&plan, plan.tiles) else {
            return Ok(y);
        };
        (plan.launch)(
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
        let plan = self.data_plan(d);
        let Some(cfg) = self.conv_launch(&plan, plan.tiles) else {
            // Nothing flows back (no output positions): a zero gradient, or nothing to add.
            return match mode {
                WriteMode::Overwrite => self.fill_zero(dx),
                WriteMode::Add => Ok(()),
            };
        };
        (plan.launch)(
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
        let plan = self.weight_plan(d);
        // Enough splits for SPLIT_BLOCKS_PER_SM blocks on every SM, each at least MIN_SPLIT long:
        // more would only add partial tiles to write and read back.
        let sum_len = d.n * d.h_out() * d.w_out();
        let min_split = if self.options.tf32 {
            MIN_SPLIT_MMA
        } else {
            MIN_SPLIT
        };
        let max_splits = sum_len.div_ceil(min_split).max(1);
        let blocks = SPLIT_BLOCKS_PER_SM * self.limits().sm_count as usize;
        let wanted = blocks.div_ceil(plan.tiles.max(1));
        let splits = wanted.clamp(1, max_splits);
        let Some(cfg) = self.conv_launch(&plan, plan.tiles * splits) else {
            return self.fill_zero(dw);
        };
        let mut partial = self.alloc::<f32>(splits * plan.tiles * plan.tile.0 * plan.tile.1)?;
        let mut counters = self.block_counters(plan.tiles)?;
        (plan.launch)(
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The row-tile kernels' fragment reads (kernels/conv_mma.cu `conv_mma_rows`): a warp's
    /// A-fragment load reads, for its 8 row groups `g` and 4 lanes `t`, channel `t` (or `t + 4`) at
    /// the row's halo offset plus the tap's. With the halo pitch no load touches two words of one
    /// bank, for every tile shape CIFAR's planes give and every tap.
    #[test]
    fn row_tile_fragment_reads_have_no_bank_conflicts() {
        for (h, w) in [(32, 32), (16, 16), (8, 8)] {
            let d = Conv2dDims {
                n: 4,
                c_in: 16,
                h,
                w,
                c_out: 16,
                k: 3,
                stride: 1,
                pad: 1,
                groups: 1,
            };
            assert!(rows_tiles(d, 16, (h, w)), "{h}x{w} runs on row tiles");
            let rows = if h * w >= MMA_ROWS { MMA_ROWS / w } else { h };
            let hc = w + 2;
            let row_off = |m: usize| (m / (rows * w) * (rows + 2) + m / w % rows) * hc + m % w;
            for m0 in (0..MMA_ROWS).step_by(8) {
                for tap in 0..9 {
                    for upper in [0, 4] {
                        let words: BTreeSet<usize> = (0..32)
                            .map(|lane| {
                                let channel = lane % 4 + upper;
                                channel * CONV_MMA_ROWS_HALO_PITCH
                                    + tap / 3 * hc
                                    + tap % 3
                                    + row_off(m0 + lane / 4)
                            })
                            .collect();
                        let banks: BTreeSet<usize> = words.iter().map(|w| w % 32).collect();
                        assert_eq!(banks.len(), words.len(), "{h}x{w}: rows {m0}.. tap {tap}");
                    }
                }
            }
        }
    }
}
