// 2-D convolution as implicit GEMM: each pass is a matrix product whose operand tiles are gathered
// straight from the NCHW tensors into shared memory, so no column matrix exists in global memory.
// Per group (c_in_g = c_in / groups, c_out_g = c_out / groups, kk = k * k, P = h_out * w_out):
// - forward:         y[co, (s, p)]       = sum over (ci, kh, kw) of w[co, (ci, kh, kw)] * X[(ci, kh, kw), (s, p)]
// - backward data:   dx[ci, (s, ih, iw)] = sum over (co, kh, kw) of w[co, (ci, kh, kw)] * D[(co, kh, kw), (s, ih, iw)]
//                    (or += with `accumulate`: a residual block adds its shortcut's gradient this way)
// - backward weight: dw[co, (ci, kh, kw)] = sum over (s, p) of dy[co, (s, p)] * X[(ci, kh, kw), (s, p)]
// where X is the im2col view of x (zero where the kernel covers padding) and D the transposed-
// convolution view of dy (zero where no output position maps onto the input position).
//
// A block computes a BM x BN tile of the product with CONV_THREADS threads, TM x TN outputs each,
// accumulating BK-deep operand tiles in ascending order (deterministic). Blocks grid-stride over the
// tiles. The weight gradient's long sum over (s, p) is split across blocks ("split-K"): each writes
// its partial tile, and the last block to finish a tile (an atomic counter, which it resets) adds the
// partials in split order into dw. One launch per pass, no atomics on values.
//
// The forward can also compute the batch statistics of its output for the batch norm that follows it
// (`conv2d_forward_stats_*`), saving that norm a pass over the tensor: each tile adds up its rows
// (sum and sum of squares in double, unshifted: the values are fp32, so the one-pass variance only
// cancels when mean^2 / var nears 1e10), and the last tile of each block of rows adds the tiles up in
// tile order.
#include "conv_common.cuh"

#define CONV_THREADS 256
#define CONV_BK 16

// X[(ci, kh, kw), (s, oh, ow)] of group `group`.
__device__ __forceinline__ float im2col_at(const float* x, const ConvGeom& g, int group, int r,
                                           int q) {
    const int ci = r / g.kk, t = r % g.kk, kh = t / g.k, kw = t % g.k;
    const int s = q / g.P, p = q % g.P, oh = p / g.w_out, ow = p % g.w_out;
    const int ih = oh * g.stride - g.pad + kh, iw = ow * g.stride - g.pad + kw;
    if (ih < 0 || ih >= g.h || iw < 0 || iw >= g.w) return 0.0f;
    return x[((size_t(s) * g.c_in + group * g.c_in_g + ci) * g.h + ih) * g.w + iw];
}

// D[(co, kh, kw), (s, ih, iw)] of group `group`: the dy entry whose window puts tap (kh, kw) on the
// input position, if any.
__device__ __forceinline__ float col2im_at(const float* dy, const ConvGeom& g, int group, int r,
                                           int q) {
    const int co = r / g.kk, t = r % g.kk, kh = t / g.k, kw = t % g.k;
    const int s = q / g.HW, pix = q % g.HW, ih = pix / g.w, iw = pix % g.w;
    const int th = ih + g.pad - kh, tw = iw + g.pad - kw;
    if (th < 0 || tw < 0 || th % g.stride != 0 || tw % g.stride != 0) return 0.0f;
    const int oh = th / g.stride, ow = tw / g.stride;
    if (oh >= g.h_out || ow >= g.w_out) return 0.0f;
    return dy[((size_t(s) * g.c_out + group * g.c_out_g + co) * g.h_out + oh) * g.w_out + ow];
}

// The operands of each pass: A [M, K] and B [K, N], element by element.
struct ForwardOperands {
    const float* x;
    const float* w;
    ConvGeom g;
    int group;
};
__device__ __forceinline__ float operand_a(const ForwardOperands& o, int m, int k) {
    return o.w[size_t(o.group * o.g.c_out_g + m) * (o.g.c_in_g * o.g.kk) + k];
}
__device__ __forceinline__ float operand_b(const ForwardOperands& o, int k, int n) {
    return im2col_at(o.x, o.g, o.group, k, n);
}

struct DataOperands {
    const float* dy;
    const float* w;
    ConvGeom g;
    int group;
};
__device__ __forceinline__ float operand_a(const DataOperands& o, int m, int k) {
    // w[co, ci, kh, kw] with m = ci and k = (co, kh, kw)
    const int co = k / o.g.kk, t = k % o.g.kk;
    return o.w[(size_t(o.group * o.g.c_out_g + co) * o.g.c_in_g + m) * o.g.kk + t];
}
__device__ __forceinline__ float operand_b(const DataOperands& o, int k, int n) {
    return col2im_at(o.dy, o.g, o.group, k, n);
}

struct WeightOperands {
    const float* x;
    const float* dy;
    ConvGeom g;
    int group;
};
__device__ __forceinline__ float operand_a(const WeightOperands& o, int m, int k) {
    // dy[s, co, p] with m = co and k = (s, p)
    const int s = k / o.g.P, p = k % o.g.P;
    return o.dy[(size_t(s) * o.g.c_out + o.group * o.g.c_out_g + m) * o.g.P + p];
}
__device__ __forceinline__ float operand_b(const WeightOperands& o, int k, int n) {
    return im2col_at(o.x, o.g, o.group, n, k);
}

// acc[i][j] += sum over k in [k0, k1) of A(m, k) B(k, n) for m = m0 + ty + i * (BM / TM) and
// n = n0 + tx + j * (BN / TN) (entries outside [0, M) x [0, N) read as zero). Every thread of the
// block calls it with the same arguments.
template <int BM, int BN, int TM, int TN, class Operands>
__device__ void tile_product(const Operands& ops, int m0, int n0, int M, int N, int k0, int k1,
                             float (&acc)[TM][TN]) {
    constexpr int TX = BN / TN, TY = BM / TM;
    static_assert(TX * TY == CONV_THREADS, "a tile takes every thread of the block");
    STATIC_SMEM(float, as, [CONV_BK][BM]);
    STATIC_SMEM(float, bs, [CONV_BK][BN]);
    const int tid = int(threadIdx.x), tx = tid % TX, ty = tid / TX;
    for (int kb = k0; kb < k1; kb += CONV_BK) {
        // Neighbouring threads walk k in A (contiguous weight rows) and n in B (contiguous positions).
        for (int e = tid; e < BM * CONV_BK; e += CONV_THREADS) {
            const int mm = e / CONV_BK, kq = e % CONV_BK, m = m0 + mm, k = kb + kq;
            as[kq][mm] = (m < M && k < k1) ? operand_a(ops, m, k) : 0.0f;
        }
        for (int e = tid; e < CONV_BK * BN; e += CONV_THREADS) {
            const int kq = e / BN, nn = e % BN, n = n0 + nn, k = kb + kq;
            bs[kq][nn] = (n < N && k < k1) ? operand_b(ops, k, n) : 0.0f;
        }
        __syncthreads();
        for (int kq = 0; kq < CONV_BK; ++kq) {
            float a[TM], b[TN];
            for (int i = 0; i < TM; ++i) a[i] = as[kq][ty + i * TY];
            for (int j = 0; j < TN; ++j) b[j] = bs[kq][tx + j * TX];
            for (int i = 0; i < TM; ++i)
                for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();  // the tiles are overwritten next round
    }
}

// (group, m tile, n tile) of tile index t.
struct TileIndex {
    int group, m0, n0;
};
__device__ __forceinline__ TileIndex tile_index(int t, int tiles_m, int tiles_n, int BM, int BN) {
    const int per_group = tiles_m * tiles_n, rest = t % per_group;
    TileIndex ti;
    ti.group = t / per_group;
    ti.m0 = (rest / tiles_n) * BM;
    ti.n0 = (rest % tiles_n) * BN;
    return ti;
}

// Adds this tile's rows to the statistics (every thread of the block calls it); the tile's last block
// of its rows writes them.
template <int BM, int BN, int TM, int TN>
__device__ void add_tile_stats(const StatsOut& st, const float (&acc)[TM][TN], const TileIndex& ti,
                               int M, int N, int tiles_m, int tiles_n, const ConvGeom& g) {
    constexpr int TX = BN / TN, TY = BM / TM;
    STATIC_SMEM(double, rows, [BM][TX][2]);
    const int tid = int(threadIdx.x), tx = tid % TX, ty = tid / TX;
    for (int i = 0; i < TM; ++i) {
        double s1 = 0.0, s2 = 0.0;
        for (int j = 0; j < TN; ++j) {
            if (ti.m0 + ty + i * TY < M && ti.n0 + tx + j * TX < N) {
                const double v = acc[i][j];
                s1 += v;
                s2 += v * v;
            }
        }
        rows[ty + i * TY][tx][0] = s1;
        rows[ty + i * TY][tx][1] = s2;
    }
    __syncthreads();
    const int row_block = ti.group * tiles_m + ti.m0 / BM, tile_n = ti.n0 / BN;
    for (int r = tid; r < BM; r += CONV_THREADS) {
        double s1 = 0.0, s2 = 0.0;
        for (int x = 0; x < TX; ++x) {
            s1 += rows[r][x][0];
            s2 += rows[r][x][1];
        }
        double* out = st.partial + ((size_t(row_block) * tiles_n + tile_n) * BM + r) * 2;
        out[0] = s1;
        out[1] = s2;
    }
    if (took_last_ticket(&st.counters[row_block], unsigned(tiles_n))) {
        fold_channel_stats(st, st.partial + size_t(row_block) * tiles_n * BM * 2, tiles_n, BM,
                           unsigned(ti.group * g.c_out_g + ti.m0), min(BM, M - ti.m0), unsigned(N));
        if (tid == 0) st.counters[row_block] = 0u;
    }
    __syncthreads();  // `rows` is rewritten by the next tile
}

template <int BM, int BN, int TM, int TN, bool STATS>
__device__ void conv_forward(const float* x, const float* w, float* y, int n_img, ConvGeom g,
                             int groups, const StatsOut& st) {
    constexpr int TX = BN / TN, TY = BM / TM;
    const int M = g.c_out_g, N = n_img * g.P, K = g.c_in_g * g.kk;
    const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN;
    const int tiles = tiles_m * tiles_n * groups;
    const int tx = int(threadIdx.x) % TX, ty = int(threadIdx.x) / TX;
    for (int t = int(blockIdx.x); t < tiles; t += int(gridDim.x)) {
        const TileIndex ti = tile_index(t, tiles_m, tiles_n, BM, BN);
        const ForwardOperands ops = {x, w, g, ti.group};
        float acc[TM][TN] = {};
        tile_product<BM, BN, TM, TN>(ops, ti.m0, ti.n0, M, N, 0, K, acc);
        for (int i = 0; i < TM; ++i) {
            const int co = ti.m0 + ty + i * TY;
            if (co >= M) continue;
            for (int j = 0; j < TN; ++j) {
                const int q = ti.n0 + tx + j * TX;
                if (q >= N) continue;
                const int s = q / g.P, p = q % g.P;
                y[(size_t(s) * g.c_out + ti.group * g.c_out_g + co) * g.P + p] = acc[i][j];
            }
        }
        if (STATS) add_tile_stats<BM, BN, TM, TN>(st, acc, ti, M, N, tiles_m, tiles_n, g);
    }
}

template <int BM, int BN, int TM, int TN>
__device__ void conv_backward_data(const float* dy, const float* w, float* dx, int n_img,
                                   ConvGeom g, int groups, bool accumulate) {
    constexpr int TX = BN / TN, TY = BM / TM;
    const int M = g.c_in_g, N = n_img * g.HW, K = g.c_out_g * g.kk;
    const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN;
    const int tiles = tiles_m * tiles_n * groups;
    const int tx = int(threadIdx.x) % TX, ty = int(threadIdx.x) / TX;
    for (int t = int(blockIdx.x); t < tiles; t += int(gridDim.x)) {
        const TileIndex ti = tile_index(t, tiles_m, tiles_n, BM, BN);
        const DataOperands ops = {dy, w, g, ti.group};
        float acc[TM][TN] = {};
        tile_product<BM, BN, TM, TN>(ops, ti.m0, ti.n0, M, N, 0, K, acc);
        for (int i = 0; i < TM; ++i) {
            const int ci = ti.m0 + ty + i * TY;
            if (ci >= M) continue;
            for (int j = 0; j < TN; ++j) {
                const int q = ti.n0 + tx + j * TX;
                if (q >= N) continue;
                const int s = q / g.HW, pix = q % g.HW;
                float* out = dx + (size_t(s) * g.c_in + ti.group * g.c_in_g + ci) * g.HW + pix;
                *out = accumulate ? *out + acc[i][j] : acc[i][j];
            }
        }
    }
}

// `partial` [splits, tiles, BM * BN]; `counters` [tiles] zero on entry and on exit.
template <int BM, int BN, int TM, int TN>
__device__ void conv_backward_weight(const float* x, const float* dy, float* partial, float* dw,
                                     unsigned* counters, int n_img, ConvGeom g, int groups,
                                     int splits) {
    constexpr int TX = BN / TN, TY = BM / TM;
    const int M = g.c_out_g, N = g.c_in_g * g.kk, K = n_img * g.P;
    const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN;
    const int tiles = tiles_m * tiles_n * groups;
    // Split lengths are whole operand tiles.
    const int per_split = ((K + splits - 1) / splits + CONV_BK - 1) / CONV_BK * CONV_BK;
    const int tx = int(threadIdx.x) % TX, ty = int(threadIdx.x) / TX;
    for (int item = int(blockIdx.x); item < tiles * splits; item += int(gridDim.x)) {
        // Split-major: blocks running at the same time work on different splits of one tile.
        const int t = item % tiles, split = item / tiles;
        const TileIndex ti = tile_index(t, tiles_m, tiles_n, BM, BN);
        const WeightOperands ops = {x, dy, g, ti.group};
        float acc[TM][TN] = {};
        const int k0 = split * per_split, k1 = min(K, k0 + per_split);
        if (k0 < k1) tile_product<BM, BN, TM, TN>(ops, ti.m0, ti.n0, M, N, k0, k1, acc);
        float* mine = partial + (size_t(split) * tiles + t) * (BM * BN);
        for (int i = 0; i < TM; ++i)
            for (int j = 0; j < TN; ++j) mine[(ty + i * TY) * BN + tx + j * TX] = acc[i][j];
        if (took_last_ticket(&counters[t], unsigned(splits))) {
            for (int i = 0; i < TM; ++i) {
                const int co = ti.m0 + ty + i * TY;
                for (int j = 0; j < TN; ++j) {
                    const int r = ti.n0 + tx + j * TX;
                    float sum = 0.0f;
                    for (int sp = 0; sp < splits; ++sp) {
                        const volatile float* theirs =
                            partial + (size_t(sp) * tiles + t) * (BM * BN);
                        sum += theirs[(ty + i * TY) * BN + tx + j * TX];
                    }
                    if (co < M && r < N)
                        dw[size_t(ti.group * g.c_out_g + co) * (g.c_in_g * g.kk) + r] = sum;
                }
            }
            if (threadIdx.x == 0) counters[t] = 0u;
        }
    }
}

// The kernels, one per pass and tile shape, picked by M (output channels per group; input channels for
// the data gradient): BM x BN tiles, TM x TN outputs per thread. Shapes: x [n, c_in, h, w_in],
// w [c_out, c_in / groups, k, k], y [n, c_out, h_out, w_out]; the weight gradient's `partial`
// [splits, tiles, BM * BN]; the forward statistics' as in StatsOut, the statistics `[c_out]` each.
// Written once here and instantiated per tile shape below (build.rs reads the preprocessed source).
#define CONV_KERNELS(TILE, BM, BN, TM, TN)                                                       \
    KERNEL void conv2d_forward_##TILE(const float* __restrict__ x, const float* __restrict__ w,  \
                                      float* __restrict__ y, CONV_SHAPE_ARGS) {                  \
        conv_forward<BM, BN, TM, TN, false>(x, w, y, int(n), CONV_GEOM, int(groups), StatsOut{}); \
    }                                                                                            \
    KERNEL void conv2d_forward_stats_##TILE(                                                     \
        const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,         \
        CONV_STATS_ARGS, CONV_SHAPE_ARGS, CONV_STATS_SCALARS) {                                  \
        const StatsOut st = CONV_STATS_OUT;                                                      \
        conv_forward<BM, BN, TM, TN, true>(x, w, y, int(n), CONV_GEOM, int(groups), st);         \
    }                                                                                            \
    KERNEL void conv2d_backward_data_##TILE(const float* __restrict__ dy,                        \
                                            const float* __restrict__ w, float* __restrict__ dx, \
                                            CONV_SHAPE_ARGS, int accumulate) {                   \
        conv_backward_data<BM, BN, TM, TN>(dy, w, dx, int(n), CONV_GEOM, int(groups),            \
                                           accumulate != 0);                                     \
    }                                                                                            \
    KERNEL void conv2d_backward_weight_##TILE(                                                   \
        const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ partial,  \
        float* __restrict__ dw, unsigned* __restrict__ counters, CONV_SHAPE_ARGS,                \
        unsigned splits) {                                                                       \
        conv_backward_weight<BM, BN, TM, TN>(x, dy, partial, dw, counters, int(n), CONV_GEOM,   \
                                             int(groups), int(splits));                          \
    }

// The tile shapes (src/backend/cuda/conv.rs `Tiles`): TILE, BM, BN, TM, TN.
CONV_KERNELS(m16, 16, 128, 2, 4)
CONV_KERNELS(m32, 32, 128, 4, 4)
CONV_KERNELS(m64, 64, 64, 4, 4)
CONV_KERNELS(m128, 128, 64, 8, 4)
