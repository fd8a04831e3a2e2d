// 2-D convolution on the tensor cores (mma.sync m16n8k8, tf32 operands rounded to nearest, f32
// accumulate): the three products of conv.cu as implicit GEMMs whose rows are the long dimension and
// whose columns are channels, so the 16-64 channels of a CIFAR ResNet fill the MMA's n8 side. Per
// group (P = h_out w_out, kk = k k):
// - forward:         Y[(s, p), co]        = sum over (ci, kh, kw) of X[(s, p), (ci, kh, kw)] W[co, (ci, kh, kw)]
// - backward data:   dX[(s, ih, iw), ci]  = sum over (co, kh, kw) of D[(s, ih, iw), (co, kh, kw)] W[co, ci, kh, kw],
//                    one phase (ih mod stride, iw mod stride) per tile: a phase's positions take only
//                    the taps whose window lands on them, so a stride-2 pass skips its structural zeros
//                    (a 3x3 tap lands on a stride-2 input position in 1, 2 or 4 of 9 cases);
// - backward weight: dW[(ci, kh, kw), co] = sum over (s, p) of X[(s, p), (ci, kh, kw)] dy[(s, p), co],
//                    the long sum split across blocks and added up in split order by the last block of
//                    each tile, as in conv.cu.
// X is the im2col view of x and D the transposed-convolution view of dy (conv.cu); nothing of either
// is stored. The activations stay NCHW, so a row's K walk reads one position of many channels: each
// thread owns one row of the A tile for a whole tile (its position decomposed once, its K walked by
// additions), neighbouring threads hold neighbouring positions, so every load is coalesced across the
// warp. K runs tap-major with the channels fastest, so a 16-deep step of a layer with a multiple of
// 16 channels stays on one tap and checks the image bounds once; the weight gradient's threads walk
// their positions by additions too. 4-byte cp.async copies fill MMA_STAGES shared-memory stages ahead of the MMAs; padding, not
// swizzling, makes the fragment reads conflict-free: A is stored [BK][BM + 8] (a fragment reads rows
// t and t + 4 at columns g: bank 8 t + g, all 32 distinct) and B [BN][BK + 4] (row g, column t:
// bank 20 g + t mod 32, all distinct). ldmatrix moves 16-bit pairs: the tf32 fragments are loaded
// one word a register.
// The element type is float in this file (tf32 MMAs); the bf16 family will instantiate the same
// tiling with m16n8k16.
// Determinism: every sum runs in a fixed order (K ascending through the MMAs, split order, tile
// order, fixed butterflies), so a run repeats bit for bit on the same GPU.
#include "conv_common.cuh"
#include "mma.cuh"

#define MMA_BK CONV_MMA_BK
#define MMA_STAGES 3
// Threads of a block: CONV_MMA_THREADS and CONV_MMA_THREADS_K3_WEIGHT (src/backend/abi.rs).
#define MMA_THREADS CONV_MMA_THREADS

template <int BM, int BN>
struct MmaStage {
    float a[MMA_BK][BM + 8];
    float b[BN][MMA_BK + 4];
};

// Rows of the B tile ([BN][BK]) a thread fills, each thread at a fixed column: a compile-time trip
// count, so the loop unrolls.
template <int BN, int THREADS>
__device__ constexpr int b_rows_per_thread() {
    static_assert(THREADS % MMA_BK == 0, "a thread keeps its column of the B tile");
    return (BN * MMA_BK + THREADS - 1) / THREADS;
}

// acc[mf][nf] += A[rows of warp, mf] B[BK, nf] over k in [k0, k1), the operand tiles filled by
// `load_stage(ld, stage, kb, k1)` for kb = k0, k0 + BK, ... in that order. Every thread of the block calls it.
// Accumulator fragment (mf, nf) of warp w holds rows w MF 16 + mf 16 + {g, g + 8}, columns
// nf 8 + 2t + {0, 1} (mma.cuh).
template <int WARPS, int MF, int BN, class Loader>
__device__ void mma_mainloop(Loader& ld, int k0, int k1, float (&acc)[MF][BN / 8][4]) {
    constexpr int BM = WARPS * MF * 16, NF = BN / 8;
    using Stage = MmaStage<BM, BN>;
    STATIC_SMEM(Stage, stages, [MMA_STAGES]);
    const int steps = k1 > k0 ? (k1 - k0 + MMA_BK - 1) / MMA_BK : 0;
    for (int s = 0; s < MMA_STAGES - 1; ++s) {
        if (s < steps) load_stage(ld, stages[s], k0 + s * MMA_BK, k1);
        cp_async_commit();
    }
    const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5;
    const int g = lane >> 2, t = lane & 3, row0 = warp * MF * 16 + g;
    for (int s = 0; s < steps; ++s) {
        // Step s's copies are in; the barrier also tells every thread that step s - 1, whose stage
        // the next load overwrites, is done.
        cp_async_wait<MMA_STAGES - 2>();
        __syncthreads();
        const int next = s + MMA_STAGES - 1;
        if (next < steps) load_stage(ld, stages[next % MMA_STAGES], k0 + next * MMA_BK, k1);
        cp_async_commit();
        const Stage& st = stages[s % MMA_STAGES];
UNROLL
        for (int kq = 0; kq < MMA_BK; kq += 8) {
            unsigned a[MF][4], b[NF][2];
UNROLL
            for (int mf = 0; mf < MF; ++mf) {
                const int r = row0 + mf * 16;
                a[mf][0] = tf32_round_bits(st.a[kq + t][r]);
                a[mf][1] = tf32_round_bits(st.a[kq + t][r + 8]);
                a[mf][2] = tf32_round_bits(st.a[kq + t + 4][r]);
                a[mf][3] = tf32_round_bits(st.a[kq + t + 4][r + 8]);
            }
UNROLL
            for (int nf = 0; nf < NF; ++nf) {
                b[nf][0] = tf32_round_bits(st.b[nf * 8 + g][kq + t]);
                b[nf][1] = tf32_round_bits(st.b[nf * 8 + g][kq + t + 4]);
            }
UNROLL
            for (int mf = 0; mf < MF; ++mf)
UNROLL
                for (int nf = 0; nf < NF; ++nf) mma_m16n8k8_tf32(acc[mf][nf], a[mf], b[nf], acc[mf][nf]);
        }
    }
    cp_async_wait<0>();
    __syncthreads();  // the stages are refilled by the next tile
}

// One element of a stage: copied from `src` when `ok`, else zero (padding, or outside the product),
// without a branch; `anywhere` is an address inside the tensor, named instead of an `src` that may
// lie outside it.
__device__ __forceinline__ void fill(float* dst, bool ok, const float* src, const float* anywhere) {
    cp_async_4_zfill(dst, ok ? src : anywhere, ok);
}

// A K index walked tap-major, channels fastest: k = (h nw + w) nc + c, by additions, with `offset`
// kept at c c_step + h h_step + w w_step. Channels fastest, so a 16-deep K step of a layer with a
// multiple of 16 channels stays on one tap: its bounds check is done once a tap, not once an element.
struct TapWalk {
    int c, h, w, nc, nh, nw, offset, c_step, h_step, w_step;
};

// Advances one k; true when the tap changed (the caller checks the new tap's bounds).
__device__ __forceinline__ bool step(TapWalk& k) {
    ++k.c;
    k.offset += k.c_step;
    if (k.c < k.nc) return false;
    k.c = 0;
    ++k.w;
    k.offset += k.w_step - k.nc * k.c_step;
    if (k.w == k.nw) {
        k.w = 0;
        ++k.h;
        k.offset += k.h_step - k.nw * k.w_step;
    }
    return true;
}

// Advances `n` channels, which end exactly at the tap's last (nc a multiple of n); true when the
// tap changed.
__device__ __forceinline__ bool step_channels(TapWalk& k, int n) {
    k.c += n - 1;
    k.offset += (n - 1) * k.c_step;
    return step(k);
}

__device__ __forceinline__ TapWalk tap_walk(int nc, int nh, int nw, int c_step, int h_step,
                                            int w_step) {
    return TapWalk{0, 0, 0, nc, nh, nw, 0, c_step, h_step, w_step};
}

// Filter size and stride: compile-time constants, or 0 for "as the geometry says".
template <int KS>
__device__ __forceinline__ int filter_size(const ConvGeom& g) {
    return KS ? KS : g.k;
}
template <int S>
__device__ __forceinline__ int filter_stride(const ConvGeom& g) {
    return S ? S : g.stride;
}

// ---- forward ----

template <int KS, int S, int BM, int BN>
struct ForwardLoader {
    const float* x_at;  // x at this thread's output position's window origin, this group's channels
    const float* w;     // the first weight row of the tile's channels
    ConvGeom g;
    int ih0, iw0, channels, K;
    const float* anywhere;  // x itself (fill)
    bool row_ok, tap_ok;    // this row is a position; the walk's tap lands inside the image
    bool whole_steps;       // c_in_g is a multiple of MMA_BK: every K step stays on one tap (so for
                            // every layer a compiled-filter kernel runs: its K loop has no other path)
    FastDiv per_tap;        // K index -> (tap, ci): c_in_g channels a tap
    TapWalk walk;         // (kh, kw, ci), offset ci HW + kh w + kw
};

template <int KS, int S, int BM, int BN>
__device__ bool forward_tap_ok(const ForwardLoader<KS, S, BM, BN>& ld) {
    return ld.row_ok && unsigned(ld.ih0 + ld.walk.h) < unsigned(ld.g.h) &&
           unsigned(ld.iw0 + ld.walk.w) < unsigned(ld.g.w);
}

template <int KS, int S, int BM, int BN>
__device__ void load_stage(ForwardLoader<KS, S, BM, BN>& ld, MmaStage<BM, BN>& st, int kb, int k1) {
    const int m = int(threadIdx.x);
    if (KS != 0 || ld.whole_steps) {
        // The step's 16 channels share a tap: one bounds check, then addresses by additions. Off
        // the image they start at x itself, whose first 16 channels any such layer has.
        const float* src = ld.tap_ok ? ld.x_at + ld.walk.offset : ld.anywhere;
        UNROLL
        for (int j = 0; j < MMA_BK; ++j) cp_async_4_zfill(&st.a[j][m], src + j * ld.g.HW, ld.tap_ok);
        if (step_channels(ld.walk, MMA_BK)) ld.tap_ok = forward_tap_ok(ld);
    } else {
        for (int j = 0; j < MMA_BK; ++j) {
            fill(&st.a[j][m], ld.tap_ok && kb + j < k1, ld.x_at + ld.walk.offset, ld.anywhere);
            if (step(ld.walk)) ld.tap_ok = forward_tap_ok(ld);
        }
    }
    // B[(kh, kw, ci), co] = w[co, ci, kh, kw]: this thread's k is fixed within the step.
    const int kq = int(threadIdx.x) % MMA_BK, k = kb + kq;
    const unsigned tap = divide(unsigned(k), ld.per_tap), ci = unsigned(k) - tap * ld.per_tap.d;
    const float* src = ld.w + size_t(ci) * ld.g.kk + tap;
    UNROLL
    for (int j = 0; j < b_rows_per_thread<BN, MMA_THREADS>(); ++j) {
        const int n = int(threadIdx.x) / MMA_BK + j * (MMA_THREADS / MMA_BK);
        if (n < BN)
            fill(&st.b[n][kq], n < ld.channels && k < k1, src + size_t(n) * ld.K, ld.w);
    }
}

// (group, row tile, column tile) of tile index `t`, column tiles fastest (they share the A tile).
struct MmaTile {
    int group, m0, n0;
};
__device__ __forceinline__ MmaTile mma_tile(int t, int tiles_m, int tiles_n, int BM, int BN) {
    const int per_group = tiles_m * tiles_n, rest = t % per_group;
    return MmaTile{t / per_group, (rest / tiles_n) * BM, (rest % tiles_n) * BN};
}

// This tile's per-channel sums into the statistics; the last tile of its block of channels folds
// them (conv_common.cuh). Rows outside the product hold zeros (their A rows were zero), so they add
// nothing. Every thread of the block calls it.
template <int WARPS, int MF, int BN>
__device__ void add_mma_tile_stats(const StatsOut& st, const float (&acc)[MF][BN / 8][4],
                                   const MmaTile& tile, int tile_m, int tiles_m, int col_block,
                                   int channels, unsigned first, unsigned count) {
    constexpr int NF = BN / 8;
    STATIC_SMEM(double, cols, [WARPS][BN][2]);
    const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5, t = lane & 3;
UNROLL
    for (int nf = 0; nf < NF; ++nf)
UNROLL
        for (int c = 0; c < 2; ++c) {
            double s1 = 0.0, s2 = 0.0;
UNROLL
            for (int mf = 0; mf < MF; ++mf)
UNROLL
                for (int half = 0; half < 2; ++half) {
                    const double v = acc[mf][nf][2 * half + c];
                    s1 += v;
                    s2 += v * v;
                }
            // Over the 8 row groups g (lane bits 2-4), a fixed butterfly.
            for (int o = 4; o < 32; o <<= 1) {
                s1 += __shfl_xor_sync(FULL_MASK, s1, o);
                s2 += __shfl_xor_sync(FULL_MASK, s2, o);
            }
            if (lane < 4) {
                cols[warp][nf * 8 + 2 * t + c][0] = s1;
                cols[warp][nf * 8 + 2 * t + c][1] = s2;
            }
        }
    __syncthreads();
    double* mine = st.partial + (size_t(col_block) * tiles_m + tile_m) * BN * 2;
    for (int c = int(threadIdx.x); c < BN; c += int(blockDim.x)) {
        double s1 = 0.0, s2 = 0.0;
        for (int w = 0; w < WARPS; ++w) {
            s1 += cols[w][c][0];
            s2 += cols[w][c][1];
        }
        mine[2 * c] = s1;
        mine[2 * c + 1] = s2;
    }
    if (took_last_ticket(&st.counters[col_block], unsigned(tiles_m))) {
        fold_channel_stats(st, st.partial + size_t(col_block) * tiles_m * BN * 2, tiles_m, BN,
                           first, min(BN, channels - tile.n0), count);
        if (threadIdx.x == 0) st.counters[col_block] = 0u;
    }
    __syncthreads();  // `cols` is rewritten by the next tile
}

// Writes a tile of positions x channels (accumulators as mma_mainloop's): row q < M is position
// q of `out`'s flattened (image, position) planes (per_image.d positions each, `channels` planes an
// image, this group's from plane `first`), column co < N; added to what is there when `accumulate`.
template <int WARPS, int MF, int BN>
__device__ void store_position_tile(const float (&acc)[MF][BN / 8][4], float* out,
                                    const MmaTile& tile, int M, int N, FastDiv per_image,
                                    int channels, int first, bool accumulate) {
    const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5;
    const int gq = lane >> 2, t = lane & 3, P = int(per_image.d);
UNROLL
    for (int mf = 0; mf < MF; ++mf)
UNROLL
        for (int half = 0; half < 2; ++half) {
            const int q = tile.m0 + warp * MF * 16 + mf * 16 + gq + 8 * half;
            if (q >= M) continue;
            const unsigned s = divide(unsigned(q), per_image), p = unsigned(q) - s * unsigned(P);
            float* o = out + (size_t(s) * channels + size_t(first)) * P + p;
UNROLL
            for (int nf = 0; nf < BN / 8; ++nf)
UNROLL
                for (int c = 0; c < 2; ++c) {
                    const int co = tile.n0 + nf * 8 + 2 * t + c;
                    if (co >= N) continue;
                    float* oc = o + size_t(co) * P;
                    const float v = acc[mf][nf][2 * half + c];
                    *oc = accumulate ? *oc + v : v;
                }
        }
}

template <int KS, int S, int BN, bool STATS>
__device__ void conv_mma_forward(const float* x, const float* w, float* y, int n_img, ConvGeom g,
                                 int groups, const StatsOut& st) {
    constexpr int WARPS = MMA_THREADS / 32, MF = 2, BM = WARPS * MF * 16, NF = BN / 8;
    static_assert(BM == MMA_THREADS, "each thread gathers one row of the A tile");
    const int ks = filter_size<KS>(g), stride = filter_stride<S>(g);
    const int M = n_img * g.P, N = g.c_out_g, K = g.c_in_g * ks * ks;
    const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN;
    const int tiles = tiles_m * tiles_n * groups;
    const FastDiv per_image = fast_div(unsigned(g.P)), per_row = fast_div(unsigned(g.w_out));
    for (int ti = int(blockIdx.x); ti < tiles; ti += int(gridDim.x)) {
        const MmaTile tile = mma_tile(ti, tiles_m, tiles_n, BM, BN);
        ForwardLoader<KS, S, BM, BN> ld;
        {
            const int q = tile.m0 + int(threadIdx.x);
            const unsigned s = divide(unsigned(q), per_image), p = unsigned(q) - s * unsigned(g.P);
            const unsigned oh = divide(p, per_row), ow = p - oh * unsigned(g.w_out);
            ld.g = g;
            ld.row_ok = q < M;
            ld.ih0 = int(oh) * stride - g.pad;
            ld.iw0 = int(ow) * stride - g.pad;
            ld.x_at = x + (size_t(s) * g.c_in + size_t(tile.group) * g.c_in_g) * g.HW +
                      (long long)(ld.ih0) * g.w + ld.iw0;
            ld.w = w + (size_t(tile.group) * g.c_out_g + tile.n0) * K;
            ld.channels = N - tile.n0;
            ld.K = K;
            ld.anywhere = x;
            ld.whole_steps = g.c_in_g % MMA_BK == 0;
            ld.per_tap = fast_div(unsigned(g.c_in_g));
            ld.walk = tap_walk(g.c_in_g, ks, ks, g.HW, g.w, 1);
            ld.tap_ok = forward_tap_ok(ld);
        }
        float acc[MF][NF][4] = {};
        mma_mainloop<WARPS, MF, BN>(ld, 0, K, acc);
        store_position_tile<WARPS, MF, BN>(acc, y, tile, M, N, per_image, g.c_out,
                                           tile.group * g.c_out_g, false);
        if (STATS) {
            const int tile_m = tile.m0 / BM, col_block = tile.group * tiles_n + tile.n0 / BN;
            add_mma_tile_stats<WARPS, MF, BN>(st, acc, tile, tile_m, tiles_m, col_block, N,
                                              unsigned(tile.group * g.c_out_g + tile.n0),
                                              unsigned(M));
        }
    }
}

// ---- forward and data gradient of a 3x3 stride-1 filter, tiles of whole output rows ----
//
// The gather above copies each input element into the A tile once per tap. When a 128-position tile
// is whole output rows of one image (R = 128 / w_out rows) or whole images (128 / P of them), its
// input is the halo under those rows, per channel I (R + 2) x (w_out + 2) with I images: the block
// copies it once per 16 channels (a halo block), rounds it to tf32 in place, and the 9 taps' K steps
// read their shifted views of it; only the weights' B tile is copied every step. The data gradient
// of a stride-1 filter is the same product over dy with the filter turned round (tap 8 - tap,
// input and output channels swapped, padding k - 1 - pad). src/backend/cuda/conv.rs
// `rows_tiles` decides which layers run here.

// A channel's halo pitch, CONV_MMA_ROWS_HALO_PITCH (src/backend/abi.rs): the 4 channels a fragment
// read spans start 0, 24, 16 and 8 banks apart and its 8 positions (consecutive in one row) fill the
// gaps, so no read has a bank conflict.
constexpr int ROWS_HALO_PITCH = CONV_MMA_ROWS_HALO_PITCH;
// Halo positions a thread copies (the same ones for every block of channels): 2 x 128 >= 216.
constexpr int ROWS_HALO_COPIES = 2;

template <int BN>
struct RowsShared {
    float halo[2][MMA_BK][ROWS_HALO_PITCH];  // by halo block, double-buffered
    float b[MMA_STAGES][BN][MMA_BK + 4];     // the weights, by step
};

template <bool DATA, int BN, bool STATS>
__device__ void conv_mma_rows(const float* in, const float* w, float* out, int n_img, ConvGeom g,
                              int groups, bool accumulate, const StatsOut& st) {
    constexpr int WARPS = MMA_THREADS / 32, MF = 2, BM = WARPS * MF * 16, NF = BN / 8;
    static_assert(BM == 128 && ROWS_HALO_COPIES * MMA_THREADS >= ROWS_HALO_PITCH, "halo copies");
    // The product's input and output planes: x -> y forward, dy -> dx for the data gradient.
    const int Ci = DATA ? g.c_out_g : g.c_in_g, Co = DATA ? g.c_in_g : g.c_out_g;
    const int in_channels = DATA ? g.c_out : g.c_in, out_channels = DATA ? g.c_in : g.c_out;
    const int Hi = DATA ? g.h_out : g.h, Wi = DATA ? g.w_out : g.w;
    const int Ho = DATA ? g.h : g.h_out, Wo = DATA ? g.w : g.w_out;
    const int HWi = Hi * Wi, Po = Ho * Wo, pad = DATA ? 2 - g.pad : g.pad;
    const int M = n_img * Po, N = Co;
    const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN;
    const int tiles = tiles_m * tiles_n * groups;
    // A tile: I images of R rows; its halo I (R + 2) rows of HC columns a channel.
    const int I = Po >= BM ? 1 : BM / Po, R = Po >= BM ? BM / Wo : Ho, HC = Wo + 2;
    const int plane = I * (R + 2) * HC;
    const FastDiv per_image = fast_div(unsigned(Po));
    const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5, gq = lane >> 2, t = lane & 3;
    STATIC_SMEM(RowsShared<BN>, sh);
    // This thread's fragment rows (mf, g and g + 8) as offsets in a halo plane, before the tap's.
    int row_off[MF][2];
UNROLL
    for (int mf = 0; mf < MF; ++mf)
UNROLL
        for (int h = 0; h < 2; ++h) {
            const int m = warp * MF * 16 + mf * 16 + gq + 8 * h, i = m / (R * Wo), r = m / Wo % R;
            row_off[mf][h] = (i * (R + 2) + r) * HC + m % Wo;
            keep_in_register(row_off[mf][h]);
        }
    for (int ti = int(blockIdx.x); ti < tiles; ti += int(gridDim.x)) {
        const MmaTile tile = mma_tile(ti, tiles_m, tiles_n, BM, BN);
        const int s0 = tile.m0 / Po, oh0 = tile.m0 % Po / Wo;
        // This thread's halo positions: offset from `in` at the first channel, and whether inside.
        int h_src[ROWS_HALO_COPIES];
        bool h_ok[ROWS_HALO_COPIES];
UNROLL
        for (int c = 0; c < ROWS_HALO_COPIES; ++c) {
            const int p = tid + c * MMA_THREADS, i = p / ((R + 2) * HC);
            const int ih = oh0 - pad + p / HC % (R + 2), iw = p % HC - pad;
            h_ok[c] = p < plane && s0 + i < n_img && unsigned(ih) < unsigned(Hi) &&
                      unsigned(iw) < unsigned(Wi);
            h_src[c] = h_ok[c] ? ((s0 + i) * in_channels + tile.group * Ci) * HWi + ih * Wi + iw : 0;
        }
        // The weights of the tile's output channels: forward w[co, ci, tap], data w[ci', co', 8 - tap]
        // (ci' the product's K channel, co' its column).
        const float* wg = w + size_t(tile.group) * g.c_out_g * g.c_in_g * 9;
        const int kq = tid % MMA_BK;
        // Copies step `block` 9 + `tap`'s weights, and at a block's first tap its halo.
        auto load = [&](int block, int tap) {
            const int k_ch = block * MMA_BK + kq;
            float(&b)[BN][MMA_BK + 4] = sh.b[(block * 9 + tap) % MMA_STAGES];
UNROLL
            for (int j = 0; j < b_rows_per_thread<BN, MMA_THREADS>(); ++j) {
                const int n = tid / MMA_BK + j * (MMA_THREADS / MMA_BK), co = tile.n0 + n;
                const bool ok = co < N;
                const int at = DATA ? (k_ch * Co + co) * 9 + 8 - tap : (co * Ci + k_ch) * 9 + tap;
                if (n < BN) cp_async_4_zfill(&b[n][kq], wg + (ok ? at : 0), ok);
            }
            if (tap == 0) {
                const float* base = in + size_t(block) * MMA_BK * HWi;
UNROLL
                for (int c = 0; c < ROWS_HALO_COPIES; ++c) {
                    const int p = tid + c * MMA_THREADS;
                    if (p < plane) {
UNROLL
                        for (int ch = 0; ch < MMA_BK; ++ch)
                            cp_async_4_zfill(&sh.halo[block % 2][ch][p],
                                             h_ok[c] ? base + h_src[c] + ch * HWi : in, h_ok[c]);
                    }
                }
            }
        };
        float acc[MF][NF][4] = {};
        const int blocks = Ci / MMA_BK;
        static_assert(MMA_STAGES == 3, "the loads run 2 steps ahead");
        load(0, 0);
        cp_async_commit();
        load(0, 1);
        cp_async_commit();
        // A halo block's 9 taps unrolled: which step copies a halo, and each tap's offset, are
        // known when compiled (so the hot loop is one block, its halo copy included).
        for (int block = 0; block < blocks; ++block) {
UNROLL
            for (int tap = 0; tap < 9; ++tap) {
                cp_async_wait<MMA_STAGES - 2>();
                if (tap == 0)  // this thread's halo copies of the block are in: round them
UNROLL
                    for (int c = 0; c < ROWS_HALO_COPIES; ++c) {
                        const int p = tid + c * MMA_THREADS;
                        if (p < plane)
UNROLL
                            for (int ch = 0; ch < MMA_BK; ++ch) {
                                float& v = sh.halo[block % 2][ch][p];
                                v = __uint_as_float(tf32_round_bits(v));
                            }
                    }
                // This step is in everywhere, and the one before, whose stage the next load
                // overwrites, is done (as is the halo block two back, which a load at a block's
                // first tap overwrites).
                __syncthreads();
                const int ahead = tap + MMA_STAGES - 1;  // the step 2 ahead: this block's or the next's
                if (ahead < 9)
                    load(block, ahead);
                else if (block + 1 < blocks)
                    load(block + 1, ahead - 9);
                cp_async_commit();
                const float* a_at = &sh.halo[block % 2][t][tap / 3 * HC + tap % 3];
                const float(&b)[BN][MMA_BK + 4] = sh.b[(block * 9 + tap) % MMA_STAGES];
UNROLL
                for (int kq8 = 0; kq8 < MMA_BK; kq8 += 8) {
                    unsigned a[MF][4], bf[NF][2];
UNROLL
                    for (int mf = 0; mf < MF; ++mf) {
                        const float* r0 = a_at + row_off[mf][0] + kq8 * ROWS_HALO_PITCH;
                        const float* r1 = a_at + row_off[mf][1] + kq8 * ROWS_HALO_PITCH;
                        a[mf][0] = __float_as_uint(r0[0]);
                        a[mf][1] = __float_as_uint(r1[0]);
                        a[mf][2] = __float_as_uint(r0[4 * ROWS_HALO_PITCH]);
                        a[mf][3] = __float_as_uint(r1[4 * ROWS_HALO_PITCH]);
                    }
UNROLL
                    for (int nf = 0; nf < NF; ++nf) {
                        bf[nf][0] = tf32_round_bits(b[nf * 8 + gq][kq8 + t]);
                        bf[nf][1] = tf32_round_bits(b[nf * 8 + gq][kq8 + t + 4]);
                    }
UNROLL
                    for (int mf = 0; mf < MF; ++mf)
UNROLL
                        for (int nf = 0; nf < NF; ++nf)
                            mma_m16n8k8_tf32(acc[mf][nf], a[mf], bf[nf], acc[mf][nf]);
                }
            }
        }
        cp_async_wait<0>();
        __syncthreads();  // the buffers are refilled by the next tile
        store_position_tile<WARPS, MF, BN>(acc, out, tile, M, N, per_image, out_channels,
                                           tile.group * Co, DATA && accumulate);
        if (STATS) {
            const int tile_m = tile.m0 / BM, col_block = tile.group * tiles_n + tile.n0 / BN;
            add_mma_tile_stats<WARPS, MF, BN>(st, acc, tile, tile_m, tiles_m, col_block, N,
                                              unsigned(tile.group * g.c_out_g + tile.n0),
                                              unsigned(M));
        }
    }
}

// ---- backward data ----

template <int KS, int S, int BM, int BN>
struct DataLoader {
    const float* dy_at;  // dy at (s, oh_top, ow_left) of this thread's position, this group's channels
    const float* w;      // the weights of this group's output channels, at the tile's input channel
    ConvGeom g;
    int oh_top, ow_left, channels, kh0, kw0, stride;
    const float* anywhere;  // dy itself (fill)
    bool row_ok, tap_ok;
    bool whole_steps;       // c_out_g is a multiple of MMA_BK: every K step stays on one tap (so for
                            // every layer a compiled-filter kernel runs)
    FastDiv per_tap, cols;  // K index -> (tap, co): c_out_g channels a tap; tap -> (jh, jw)
    TapWalk walk;           // (jh, jw, co), offset co P - jh w_out - jw
};

template <int KS, int S, int BM, int BN>
__device__ bool data_tap_ok(const DataLoader<KS, S, BM, BN>& ld) {
    return ld.row_ok && unsigned(ld.oh_top - ld.walk.h) < unsigned(ld.g.h_out) &&
           unsigned(ld.ow_left - ld.walk.w) < unsigned(ld.g.w_out);
}

template <int KS, int S, int BM, int BN>
__device__ void load_stage(DataLoader<KS, S, BM, BN>& ld, MmaStage<BM, BN>& st, int kb, int k1) {
    const int m = int(threadIdx.x);
    if (KS != 0 || ld.whole_steps) {
        // Off the image from dy itself, whose first 16 channels any such layer has.
        const float* src = ld.tap_ok ? ld.dy_at + ld.walk.offset : ld.anywhere;
        UNROLL
        for (int j = 0; j < MMA_BK; ++j) cp_async_4_zfill(&st.a[j][m], src + j * ld.g.P, ld.tap_ok);
        if (step_channels(ld.walk, MMA_BK)) ld.tap_ok = data_tap_ok(ld);
    } else {
        for (int j = 0; j < MMA_BK; ++j) {
            fill(&st.a[j][m], ld.tap_ok && kb + j < k1, ld.dy_at + ld.walk.offset, ld.anywhere);
            if (step(ld.walk)) ld.tap_ok = data_tap_ok(ld);
        }
    }
    // B[(jh, jw, co), ci] = w[co, ci, kh0 + stride jh, kw0 + stride jw]: this thread's k is fixed
    // within the step, its columns vary.
    const int kq = int(threadIdx.x) % MMA_BK, k = kb + kq;
    const unsigned tap = divide(unsigned(k), ld.per_tap), co = unsigned(k) - tap * ld.per_tap.d;
    const unsigned jh = divide(tap, ld.cols), jw = tap - jh * ld.cols.d;
    const int ks = filter_size<KS>(ld.g);
    const float* src = ld.w + size_t(co) * ld.g.c_in_g * ld.g.kk +
                       (ld.kh0 + ld.stride * int(jh)) * ks + ld.kw0 + ld.stride * int(jw);
    UNROLL
    for (int j = 0; j < b_rows_per_thread<BN, MMA_THREADS>(); ++j) {
        const int n = int(threadIdx.x) / MMA_BK + j * (MMA_THREADS / MMA_BK);
        if (n < BN)
            fill(&st.b[n][kq], n < ld.channels && k < k1, src + size_t(n) * ld.g.kk, ld.w);
    }
}

template <int KS, int S, int BN>
__device__ void conv_mma_backward_data(const float* dy, const float* w, float* dx, int n_img,
                                       ConvGeom g, int groups, bool accumulate) {
    constexpr int WARPS = MMA_THREADS / 32, MF = 2, BM = WARPS * MF * 16, NF = BN / 8;
    const int ks = filter_size<KS>(g), stride = filter_stride<S>(g);
    // Phase (0, 0) has the most positions: ceil(h / stride) x ceil(w / stride) per image.
    const int rows_max = (g.h + stride - 1) / stride, cols_max = (g.w + stride - 1) / stride;
    const int M_max = n_img * rows_max * cols_max, N = g.c_in_g;
    const int tiles_m = (M_max + BM - 1) / BM, tiles_n = (N + BN - 1) / BN;
    const int phases = stride * stride, tiles = tiles_m * tiles_n * phases * groups;
    const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5;
    const int gq = lane >> 2, t = lane & 3;
    for (int ti = int(blockIdx.x); ti < tiles; ti += int(gridDim.x)) {
        // (group and phase, row tile, column tile), columns fastest.
        const MmaTile tile = mma_tile(ti, tiles_m, tiles_n, BM, BN);
        const int group = tile.group / phases, phase = tile.group % phases;
        const int ph = phase / stride, pw = phase % stride;
        // This phase's positions (ph + stride a, pw + stride b), and the taps that land on them:
        // kh = kh0 + stride jh for jh < nh, with oh = a + dh - jh.
        const int rows = (g.h - ph + stride - 1) / stride, cols = (g.w - pw + stride - 1) / stride;
        const int M = n_img * rows * cols;
        const int kh0 = (ph + g.pad) % stride, kw0 = (pw + g.pad) % stride;
        const int nh = kh0 < ks ? (ks - kh0 + stride - 1) / stride : 0;
        const int nw = kw0 < ks ? (ks - kw0 + stride - 1) / stride : 0;
        const int dh = (ph + g.pad - kh0) / stride, dw = (pw + g.pad - kw0) / stride;
        const int K = g.c_out_g * nh * nw;
        const FastDiv per_image = fast_div(unsigned(max(rows * cols, 1)));
        const FastDiv per_row = fast_div(unsigned(max(cols, 1)));
        DataLoader<KS, S, BM, BN> ld;
        {
            const int q = tile.m0 + int(threadIdx.x);
            const unsigned s = divide(unsigned(q), per_image);
            const unsigned r = unsigned(q) - s * per_image.d;
            const unsigned a = divide(r, per_row), b = r - a * per_row.d;
            ld.g = g;
            ld.row_ok = q < M;
            ld.oh_top = int(a) + dh;
            ld.ow_left = int(b) + dw;
            ld.dy_at = dy + (size_t(s) * g.c_out + size_t(group) * g.c_out_g) * g.P +
                       (long long)(ld.oh_top) * g.w_out + ld.ow_left;
            ld.w = w + (size_t(group) * g.c_out_g * g.c_in_g + tile.n0) * g.kk;
            ld.channels = N - tile.n0;
            ld.kh0 = kh0;
            ld.kw0 = kw0;
            ld.stride = stride;
            ld.anywhere = dy;
            ld.whole_steps = g.c_out_g % MMA_BK == 0;
            ld.per_tap = fast_div(unsigned(g.c_out_g));
            ld.cols = fast_div(unsigned(max(nw, 1)));
            ld.walk = tap_walk(g.c_out_g, nh, nw, g.P, -g.w_out, -1);
            ld.tap_ok = data_tap_ok(ld);
        }
        float acc[MF][NF][4] = {};
        mma_mainloop<WARPS, MF, BN>(ld, 0, K, acc);
UNROLL
        for (int mf = 0; mf < MF; ++mf)
UNROLL
            for (int half = 0; half < 2; ++half) {
                const int q = tile.m0 + warp * MF * 16 + mf * 16 + gq + 8 * half;
                if (q >= M) continue;
                const unsigned s = divide(unsigned(q), per_image);
                const unsigned r = unsigned(q) - s * per_image.d;
                const unsigned a = divide(r, per_row), b = r - a * per_row.d;
                const int ih = ph + stride * int(a), iw = pw + stride * int(b);
                float* out = dx + (size_t(s) * g.c_in + size_t(group) * g.c_in_g) * g.HW +
                             size_t(ih) * g.w + iw;
UNROLL
                for (int nf = 0; nf < NF; ++nf)
UNROLL
                    for (int c = 0; c < 2; ++c) {
                        const int ci = tile.n0 + nf * 8 + 2 * t + c;
                        if (ci >= N) continue;
                        float* o = out + size_t(ci) * g.HW;
                        const float v = acc[mf][nf][2 * half + c];
                        *o = accumulate ? *o + v : v;
                    }
            }
    }
}

// ---- backward weight ----

// A weight-gradient tile's split done (`acc`: one 16-row fragment a warp, rows (ci, kh, kw) of the
// tile's, columns its output channels): written to its slot of `partial` [splits, tiles, BM * BN];
// the last split of the tile to finish adds all of them up in split order into dw and re-arms the
// tile's counter (zero on entry and exit). Every thread of the block calls it.
template <int BM, int BN>
__device__ void finish_weight_tile(const float (&acc)[BN / 8][4], float* partial, float* dw,
                                   unsigned* counters, const MmaTile& tile, int ti, int split,
                                   int tiles, int splits, int M, int N, int c_out_g) {
    constexpr int NF = BN / 8;
    const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5;
    const int gq = lane >> 2, t = lane & 3, row = warp * 16 + gq;
    // The tile's (row, column) -> this thread's accumulator slot, the same in every split.
    float* mine = partial + (size_t(split) * tiles + ti) * (BM * BN);
UNROLL
    for (int nf = 0; nf < NF; ++nf)
UNROLL
        for (int i = 0; i < 4; ++i)
            mine[(row + 8 * (i >> 1)) * BN + nf * 8 + 2 * t + (i & 1)] = acc[nf][i];
    if (took_last_ticket(&counters[ti], unsigned(splits))) {
UNROLL
        for (int nf = 0; nf < NF; ++nf)
UNROLL
            for (int i = 0; i < 4; ++i) {
                const int r = row + 8 * (i >> 1), c = nf * 8 + 2 * t + (i & 1);
                float sum = 0.0f;
                for (int sp = 0; sp < splits; ++sp) {
                    const volatile float* theirs = partial + (size_t(sp) * tiles + ti) * (BM * BN);
                    sum += theirs[r * BN + c];
                }
                const int m = tile.m0 + r, co = tile.n0 + c;
                if (m < M && co < N) dw[(size_t(tile.group) * c_out_g + co) * M + m] = sum;
            }
        if (threadIdx.x == 0) counters[ti] = 0u;
    }
}

template <int KS, int S, int BM, int BN, int THREADS>
struct WeightLoader {
    const float* x_row;  // x at (image 0, this thread's input channel)
    const float* dy;     // dy at (image 0, the tile's first output channel)
    ConvGeom g;
    int kh, kw, stride, channels;  // kh and kw less the padding
    bool row_ok;
    FastDiv per_image, per_row;
    int b_s, b_p;  // the next position this thread copies into the B tile: image, index in it
};

template <int KS, int S, int BM, int BN, int THREADS>
__device__ void load_stage(WeightLoader<KS, S, BM, BN, THREADS>& ld, MmaStage<BM, BN>& st, int kb,
                           int k1) {
    // A[(s, p), (ci, kh, kw)] stored [k][row]: this thread's row is fixed; its positions are the
    // step's RUN consecutive ones from kb + (tid / BM) RUN, decomposed once and then walked along
    // the output row by additions.
    constexpr int RUN = MMA_BK / (THREADS / BM);
    const ConvGeom& g = ld.g;
    const int m = int(threadIdx.x) % BM, kq0 = int(threadIdx.x) / BM * RUN;
    const unsigned q = unsigned(kb + kq0);
    const unsigned s = divide(q, ld.per_image), p = q - s * ld.per_image.d;
    const unsigned oh = divide(p, ld.per_row);
    int ow = int(p - oh * ld.per_row.d), ih = int(oh) * ld.stride + ld.kh;
    int iw = ow * ld.stride + ld.kw, oh_left = g.h_out - 1 - int(oh);
    const float* img = ld.x_row + size_t(s) * g.c_in * g.HW;
    UNROLL
    for (int j = 0; j < RUN; ++j) {
        const bool ok = ld.row_ok && kb + kq0 + j < k1 && unsigned(ih) < unsigned(g.h) &&
                        unsigned(iw) < unsigned(g.w);
        fill(&st.a[kq0 + j][m], ok, img + ih * g.w + iw, ld.dy);
        iw += ld.stride;
        if (++ow == g.w_out) {  // the next output row, or the next image
            ow = 0;
            iw = ld.kw;
            ih += ld.stride;
            if (oh_left-- == 0) {
                oh_left = g.h_out - 1;
                ih = ld.kh;
                img += size_t(g.c_in) * g.HW;
            }
        }
    }
    // B[(s, p), co] stored [co][k]: this thread's position is fixed within the step.
    const int kq = int(threadIdx.x) % MMA_BK;
    const float* src = ld.dy + size_t(ld.b_s) * g.c_out * g.P + ld.b_p;
    UNROLL
    for (int j = 0; j < b_rows_per_thread<BN, THREADS>(); ++j) {
        const int n = int(threadIdx.x) / MMA_BK + j * (THREADS / MMA_BK);
        if (n < BN)
            fill(&st.b[n][kq], n < ld.channels && kb + kq < k1, src + size_t(n) * g.P, ld.dy);
    }
    ld.b_p += MMA_BK;
    if (ld.b_p >= g.P) {
        const unsigned images = divide(unsigned(ld.b_p), ld.per_image);
        ld.b_s += int(images);
        ld.b_p -= int(images) * g.P;
    }
}

// `partial` [splits, tiles, BM * BN]; `counters` [tiles] zero on entry and on exit.
template <int KS, int S, int BN, int THREADS>
__device__ void conv_mma_backward_weight(const float* x, const float* dy, float* partial, float* dw,
                                         unsigned* counters, int n_img, ConvGeom g, int groups,
                                         int splits) {
    constexpr int WARPS = THREADS / 32, MF = 1, BM = WARPS * MF * 16, NF = BN / 8;
    static_assert(THREADS % BM == 0, "each thread owns one row of the A tile");
    const int ks = filter_size<KS>(g), stride = filter_stride<S>(g);
    const int M = g.c_in_g * ks * ks, N = g.c_out_g, K = n_img * g.P;
    const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN;
    const int tiles = tiles_m * tiles_n * groups;
    const int per_split = ((K + splits - 1) / splits + MMA_BK - 1) / MMA_BK * MMA_BK;
    const FastDiv per_image = fast_div(unsigned(g.P)), per_row = fast_div(unsigned(g.w_out));
    for (int item = int(blockIdx.x); item < tiles * splits; item += int(gridDim.x)) {
        // Split-major: blocks running at the same time work on different splits of one tile.
        const int ti = item % tiles, split = item / tiles;
        const MmaTile tile = mma_tile(ti, tiles_m, tiles_n, BM, BN);
        const int k0 = split * per_split, k1 = min(K, k0 + per_split);
        WeightLoader<KS, S, BM, BN, THREADS> ld;
        {
            const int m = tile.m0 + int(threadIdx.x) % BM;
            const int ci = m / (ks * ks), tap = m % (ks * ks);
            ld.g = g;
            ld.row_ok = m < M;
            ld.kh = tap / ks - g.pad;
            ld.kw = tap % ks - g.pad;
            ld.stride = stride;
            ld.x_row = x + (size_t(tile.group) * g.c_in_g + ci) * g.HW;
            ld.dy = dy + (size_t(tile.group) * g.c_out_g + tile.n0) * g.P;
            ld.channels = N - tile.n0;
            ld.per_image = per_image;
            ld.per_row = per_row;
            const unsigned qb = unsigned(k0 + int(threadIdx.x) % MMA_BK);
            const unsigned sb = divide(qb, per_image);
            ld.b_s = int(sb);
            ld.b_p = int(qb - sb * per_image.d);
        }
        float acc[MF][NF][4] = {};
        mma_mainloop<WARPS, MF, BN>(ld, k0, k1, acc);
        finish_weight_tile<BM, BN>(acc[0], partial, dw, counters, tile, ti, split, tiles, splits, M, N,
                                   g.c_out_g);
    }
}

// The pipeline of the kernels whose threads round their own copies in place: `steps` stages filled
// by `load(stage)` in step order, MMA_STAGES - 1 ahead; each step's stage rounded by `round(stage)`
// once this thread's copies are in (before the barrier that shows them to the others), then
// `multiply(stage)`. Every thread of the block calls it; the stages are free again on return.
template <class Stage, class Load, class Round, class Multiply>
__device__ __forceinline__ void rounded_pipeline(Stage (&stages)[MMA_STAGES], int steps, Load&& load,
                                                 Round&& round, Multiply&& multiply) {
    for (int s = 0; s < MMA_STAGES - 1; ++s) {
        if (s < steps) load(stages[s]);
        cp_async_commit();
    }
    // The stages of step s and of step s + MMA_STAGES - 1, turned round by one each step.
    int current = 0, refill = MMA_STAGES - 1;
    for (int s = 0; s < steps; ++s) {
        cp_async_wait<MMA_STAGES - 2>();
        Stage& st = stages[current];
        round(st);
        // Step s is in and rounded everywhere, and step s - 1, whose stage the next load
        // overwrites, is done.
        __syncthreads();
        if (s + MMA_STAGES - 1 < steps) load(stages[refill]);
        cp_async_commit();
        current = current == MMA_STAGES - 1 ? 0 : current + 1;
        refill = refill == MMA_STAGES - 1 ? 0 : refill + 1;
        multiply(static_cast<const Stage&>(st));
    }
    cp_async_wait<0>();
    __syncthreads();
}

// ---- backward weight of a 3x3 filter, its K steps along output rows ----
//
// The gather above copies every input element into the A tile once per tap and walks every
// element's position. When each 16-deep K step is R whole output rows of C positions or part of one
// (R C = 16: w_out a multiple of 16, or 8 or 4, with P a multiple of 16; src/backend/cuda/conv.rs
// `weight_steps_along_rows` decides), a step needs only the input under its positions: per channel
// (R - 1) S + 3 rows of (C - 1) S + 3 columns, the halo. The block copies that once a step and every
// tap reads its shifted view: a 144-row tile is 16 input channels x 9 taps. Each thread copies the
// same halo elements every step, so it can round them to tf32 in place once they are in (before the
// barrier that shows them to the others), and the fragments are read as they are.

constexpr int HALO_CHANNELS = 16;  // 144 rows / 9 taps
constexpr int HALO_PLANE = 128;    // floats a channel's plane takes at most (plane pitch below)

// A step's halo: rows and columns a channel, and their pitches in shared memory, by stride S and
// positions a row C (16, 8, 4). The pitches were found by trying every pair: with them no fragment
// read of any warp has a bank conflict (two lanes reading different words of one bank).
struct HaloShape {
    int rows, cols, row_pitch, plane_pitch;
};
template <int S>
__device__ __forceinline__ HaloShape halo_shape(int C) {
    const int rows = (MMA_BK / C - 1) * S + 3, cols = (C - 1) * S + 3;
    if (S == 1) return {rows, cols, C == 16 ? 19 : C == 8 ? 12 : 6, C == 16 ? 57 : 50};
    return {rows, cols, C == 16 ? 41 : C == 8 ? 21 : 9, C == 16 ? 123 : C == 8 ? 127 : 91};
}

template <int BN>
struct alignas(16) HaloStage {
    float a[HALO_CHANNELS * HALO_PLANE];
    float b[BN][MMA_BK + 4];  // dy [co][position], 16-byte rows
};

// The halo elements a thread copies each step: at most 16 x 3 x 18 / 288 (S = 1) or 16 x 3 x 33 /
// 288 (S = 2).
template <int S>
__device__ constexpr int halo_copies() {
    return S == 1 ? 3 : 6;
}

template <int S, int BN>
struct HaloLoader {
    const float* x;   // x at (image 0, the tile's first input channel)
    const float* dy;  // dy at (image 0, the tile's first output channel)
    ConvGeom g;
    int C, R;
    int s, oh0, ow0;  // the next step's first position
    // This thread's halo elements: shared-memory offset in a stage, offset from the halo's origin in
    // x, row and column in the halo. Every slot is filled, so the copies need no branch: a slot past
    // the halo (or in a channel past the tile's) copies zeros into the stage's scratch word, its row
    // lying outside every image.
    int soff[halo_copies<S>()], goff[halo_copies<S>()], row[halo_copies<S>()],
        col[halo_copies<S>()];
    // This thread's 16-byte piece of the dy tile, if it has one: its offset in a stage's `b`, from the
    // step's first position in dy, and whether its channel is inside the product.
    bool b_has, b_ok;
    int b_soff, b_goff;
};

// A stage's last word of `a`, past every plane pitch's 16 planes: where empty slots copy zeros.
constexpr int HALO_SCRATCH = HALO_CHANNELS * HALO_PLANE - 1;

template <int S, int BN>
__device__ __forceinline__ void load_stage(HaloLoader<S, BN>& ld, HaloStage<BN>& st) {
    const ConvGeom& g = ld.g;
    const int ih0 = ld.oh0 * S - g.pad, iw0 = ld.ow0 * S - g.pad;
    // Offsets from ld.x in 32 bits (the input's size is checked to fit; one that is copied is not
    // negative), one address a copy.
    const int origin = ld.s * g.c_in * g.HW + ih0 * g.w + iw0;
UNROLL
    for (int i = 0; i < halo_copies<S>(); ++i) {
        const bool ok = unsigned(ih0 + ld.row[i]) < unsigned(g.h) &&
                        unsigned(iw0 + ld.col[i]) < unsigned(g.w);
        cp_async_4_zfill(&st.a[ld.soff[i]], ld.x + unsigned(ok ? origin + ld.goff[i] : 0), ok);
    }
    if (ld.b_has) {
        const int at = ld.s * g.c_out * g.P + ld.oh0 * g.w_out + ld.ow0 + ld.b_goff;
        cp_async_16_zfill(&st.b[0][0] + ld.b_soff, ld.dy + unsigned(ld.b_ok ? at : 0), ld.b_ok);
    }
    ld.ow0 += ld.C;
    if (ld.ow0 == g.w_out) {
        ld.ow0 = 0;
        ld.oh0 += ld.R;
        if (ld.oh0 == g.h_out) {
            ld.oh0 = 0;
            ++ld.s;
        }
    }
}

// This thread's copies in `st`, in (after its wait), rounded to tf32 in place.
template <int S, int BN>
__device__ __forceinline__ void round_own(const HaloLoader<S, BN>& ld, HaloStage<BN>& st) {
UNROLL
    for (int i = 0; i < halo_copies<S>(); ++i)
        st.a[ld.soff[i]] = __uint_as_float(tf32_round_bits(st.a[ld.soff[i]]));
    if (ld.b_has) {
        float* b = &st.b[0][0] + ld.b_soff;
UNROLL
        for (int i = 0; i < 4; ++i) b[i] = __uint_as_float(tf32_round_bits(b[i]));
    }
}

template <int S, int BN>
__device__ void conv_mma_backward_weight_halo(const float* x, const float* dy, float* partial,
                                              float* dw, unsigned* counters, int n_img, ConvGeom g,
                                              int groups, int splits) {
    constexpr int THREADS = CONV_MMA_THREADS_K3_WEIGHT, BM = HALO_CHANNELS * 9, NF = BN / 8;
    static_assert(THREADS == BM * 2, "a warp a 16-row fragment");
    const int M = g.c_in_g * 9, N = g.c_out_g, K = n_img * g.P;
    const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN;
    const int tiles = tiles_m * tiles_n * groups;
    const int per_split = ((K + splits - 1) / splits + MMA_BK - 1) / MMA_BK * MMA_BK;
    const int C = min(MMA_BK, g.w_out), R = MMA_BK / C;
    const HaloShape hs = halo_shape<S>(C);
    const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5, gq = lane >> 2, t = lane & 3;
    STATIC_SMEM(HaloStage<BN>, stages, [MMA_STAGES]);
    // This thread's fragment elements' offsets in a stage's halo: rows (ci, kh, kw) warp 16 + gq and
    // + 8, columns (positions) t, t + 4, t + 8 and t + 12 of the step.
    int a_off[4][2];
UNROLL
    for (int c = 0; c < 4; ++c)
UNROLL
        for (int h = 0; h < 2; ++h) {
            const int m = warp * 16 + gq + 8 * h, tap = m % 9, j = t + 4 * c;
            a_off[c][h] = (m / 9) * hs.plane_pitch + (tap / 3 + j / C * S) * hs.row_pitch +
                          tap % 3 + j % C * S;
            keep_in_register(a_off[c][h]);
        }
    for (int item = int(blockIdx.x); item < tiles * splits; item += int(gridDim.x)) {
        // Split-major: blocks running at the same time work on different splits of one tile.
        const int ti = item % tiles, split = item / tiles;
        const MmaTile tile = mma_tile(ti, tiles_m, tiles_n, BM, BN);
        const int k0 = split * per_split, k1 = min(K, k0 + per_split);
        const int ci0 = tile.m0 / 9, channels = min(HALO_CHANNELS, g.c_in_g - ci0);
        HaloLoader<S, BN> ld;
        ld.x = x + (size_t(tile.group) * g.c_in_g + ci0) * g.HW;
        ld.dy = dy + (size_t(tile.group) * g.c_out_g + tile.n0) * g.P;
        ld.g = g;
        ld.C = C;
        ld.R = R;
        ld.s = k0 / g.P;
        ld.oh0 = (k0 - ld.s * g.P) / g.w_out;
        ld.ow0 = k0 - ld.s * g.P - ld.oh0 * g.w_out;
        const int plane = hs.rows * hs.cols;
UNROLL
        for (int i = 0; i < halo_copies<S>(); ++i) {
            const int e = tid + i * THREADS, ci = e / plane, r = (e % plane) / hs.cols,
                      c = e % hs.cols;
            const bool used = ci < channels;
            ld.soff[i] = used ? ci * hs.plane_pitch + r * hs.row_pitch + c : HALO_SCRATCH;
            ld.goff[i] = used ? ci * g.HW + r * g.w + c : 0;
            ld.row[i] = used ? r : -(1 << 30);
            ld.col[i] = c;
            keep_in_register(ld.soff[i]);
            keep_in_register(ld.goff[i]);
            keep_in_register(ld.row[i]);
            keep_in_register(ld.col[i]);
        }
        ld.b_has = tid < BN * 4;
        ld.b_ok = tid / 4 < N - tile.n0;
        ld.b_soff = tid / 4 * (MMA_BK + 4) + tid % 4 * 4;
        ld.b_goff = tid / 4 * g.P + tid % 4 * 4;

        float acc[NF][4] = {};
        const int steps = k1 > k0 ? (k1 - k0) / MMA_BK : 0;
        rounded_pipeline(
            stages, steps, [&](HaloStage<BN>& st) { load_stage(ld, st); },
            [&](HaloStage<BN>& st) { round_own(ld, st); },
            [&](const HaloStage<BN>& st) {
UNROLL
                for (int kq = 0; kq < 2; ++kq) {
                    const unsigned a[4] = {__float_as_uint(st.a[a_off[2 * kq][0]]),
                                           __float_as_uint(st.a[a_off[2 * kq][1]]),
                                           __float_as_uint(st.a[a_off[2 * kq + 1][0]]),
                                           __float_as_uint(st.a[a_off[2 * kq + 1][1]])};
UNROLL
                    for (int nf = 0; nf < NF; ++nf) {
                        const unsigned b[2] = {__float_as_uint(st.b[nf * 8 + gq][8 * kq + t]),
                                               __float_as_uint(st.b[nf * 8 + gq][8 * kq + t + 4])};
                        mma_m16n8k8_tf32(acc[nf], a, b, acc[nf]);
                    }
                }
            });
        finish_weight_tile<BM, BN>(acc, partial, dw, counters, tile, ti, split, tiles, splits, M, N,
                                   g.c_out_g);
    }
}

// ---- backward weight of a 1x1 stride-1 filter: 16-byte copies ----
//
// dW[ci, co] = sum over positions of x[ci, p] dy[co, p]: both operands run along the positions, so
// when an image's positions are a multiple of 4 (src/backend/cuda/conv.rs `weight_pieces_whole`) a
// 16-deep K step is four 16-byte pieces of each row, each inside one image, with no bounds to check
// but the tile's last channels and the end of the sum. Both tiles are stored [row][k] (pitch BK + 4:
// fragment reads at bank 20 g + t, conflict-free) and rounded to tf32 in place by the thread that
// copied. A thread's pieces all sit at one column of the step.

template <int BN>
struct alignas(16) VecStage {
    float a[CONV_MMA_THREADS / 2][MMA_BK + 4];  // x [ci][position]
    float b[BN][MMA_BK + 4];                    // dy [co][position]
};

// This thread's `n`-th 16-byte piece of a [rows][BK] tile: row and first column, and whether it
// has one (a tile has rows x 4 pieces).
struct VecPiece {
    int row, col;
    bool has;
};
__device__ __forceinline__ VecPiece vec_piece(int n, int rows) {
    const int c = int(threadIdx.x) + n * MMA_THREADS;
    return VecPiece{c / 4, c % 4 * 4, c < rows * 4};
}

template <int BN>
__device__ void conv_mma_backward_weight_k1_vec(const float* x, const float* dy, float* partial,
                                                float* dw, unsigned* counters, int n_img,
                                                ConvGeom g, int groups, int splits) {
    constexpr int WARPS = MMA_THREADS / 32, BM = WARPS * 16, NF = BN / 8;
    constexpr int A_PIECES = BM * 4 / MMA_THREADS, B_PIECES = (BN * 4 + MMA_THREADS - 1) / MMA_THREADS;
    const int M = g.c_in_g, N = g.c_out_g, K = n_img * g.P;
    const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN;
    const int tiles = tiles_m * tiles_n * groups;
    const int per_split = ((K + splits - 1) / splits + MMA_BK - 1) / MMA_BK * MMA_BK;
    const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5, gq = lane >> 2, t = lane & 3;
    STATIC_SMEM(VecStage<BN>, stages, [MMA_STAGES]);
    for (int item = int(blockIdx.x); item < tiles * splits; item += int(gridDim.x)) {
        // Split-major: blocks running at the same time work on different splits of one tile.
        const int ti = item % tiles, split = item / tiles;
        const MmaTile tile = mma_tile(ti, tiles_m, tiles_n, BM, BN);
        const int k0 = split * per_split, k1 = min(K, k0 + per_split);
        const int steps = k1 > k0 ? (k1 - k0 + MMA_BK - 1) / MMA_BK : 0;
        const int col = vec_piece(0, BM).col;  // every piece of this thread's
        // Offsets (32 bits: the sizes are checked to fit) of this thread's pieces at image 0,
        // position 0; a piece past the tile's channels, or the sum's end, copies zeros.
        int a_at[A_PIECES], b_at[B_PIECES];
        bool a_ok[A_PIECES], b_ok[B_PIECES];
UNROLL
        for (int i = 0; i < A_PIECES; ++i) {
            const VecPiece pc = vec_piece(i, BM);
            a_ok[i] = tile.m0 + pc.row < M;
            a_at[i] = (tile.group * g.c_in_g + tile.m0 + pc.row) * g.HW;
        }
UNROLL
        for (int i = 0; i < B_PIECES; ++i) {
            const VecPiece pc = vec_piece(i, BN);
            b_ok[i] = pc.has && tile.n0 + pc.row < N;
            b_at[i] = (tile.group * g.c_out_g + tile.n0 + pc.row) * g.P;
        }
        // The next step: its first position in the sum, and this thread's column's image and
        // position in it.
        int q = k0, s_img = (k0 + col) / g.P, pos = k0 + col - s_img * g.P;
        auto load = [&](VecStage<BN>& st) {
            const bool in_sum = q + col < k1;
            const int x_off = s_img * g.c_in * g.HW + pos, dy_off = s_img * g.c_out * g.P + pos;
UNROLL
            for (int i = 0; i < A_PIECES; ++i) {
                const VecPiece pc = vec_piece(i, BM);
                const bool ok = a_ok[i] && in_sum;
                cp_async_16_zfill(&st.a[pc.row][pc.col], x + unsigned(ok ? x_off + a_at[i] : 0), ok);
            }
UNROLL
            for (int i = 0; i < B_PIECES; ++i) {
                const VecPiece pc = vec_piece(i, BN);
                const bool ok = b_ok[i] && in_sum;
                if (pc.has)
                    cp_async_16_zfill(&st.b[pc.row][pc.col], dy + unsigned(ok ? dy_off + b_at[i] : 0),
                                      ok);
            }
            q += MMA_BK;
            pos += MMA_BK;
            if (pos >= g.P) {  // P >= 4, so a step of 16 crosses into the next image at most 4 times
                pos -= g.P;
                ++s_img;
                while (pos >= g.P) {
                    pos -= g.P;
                    ++s_img;
                }
            }
        };
        auto round_own = [&](VecStage<BN>& st) {
UNROLL
            for (int i = 0; i < A_PIECES; ++i) {
                const VecPiece pc = vec_piece(i, BM);
UNROLL
                for (int e = 0; e < 4; ++e) {
                    float& v = st.a[pc.row][pc.col + e];
                    v = __uint_as_float(tf32_round_bits(v));
                }
            }
UNROLL
            for (int i = 0; i < B_PIECES; ++i) {
                const VecPiece pc = vec_piece(i, BN);
                if (pc.has)
UNROLL
                    for (int e = 0; e < 4; ++e) {
                        float& v = st.b[pc.row][pc.col + e];
                        v = __uint_as_float(tf32_round_bits(v));
                    }
            }
        };
        float acc[NF][4] = {};
        const int r = warp * 16 + gq;
        rounded_pipeline(stages, steps, load, round_own, [&](const VecStage<BN>& st) {
UNROLL
            for (int kq = 0; kq < MMA_BK; kq += 8) {
                const unsigned a[4] = {
                    __float_as_uint(st.a[r][kq + t]), __float_as_uint(st.a[r + 8][kq + t]),
                    __float_as_uint(st.a[r][kq + t + 4]), __float_as_uint(st.a[r + 8][kq + t + 4])};
UNROLL
                for (int nf = 0; nf < NF; ++nf) {
                    const unsigned b[2] = {__float_as_uint(st.b[nf * 8 + gq][kq + t]),
                                           __float_as_uint(st.b[nf * 8 + gq][kq + t + 4])};
                    mma_m16n8k8_tf32(acc[nf], a, b, acc[nf]);
                }
            }
        });
        finish_weight_tile<BM, BN>(acc, partial, dw, counters, tile, ti, split, tiles, splits, M, N,
                                   g.c_out_g);
    }
}

// The kernels, one per pass, filter (KS x KS, stride S; 0 0 = any, read from the arguments) and
// channel tile BN; shapes and buffers as in conv.cu's kernels (src/backend/cuda/conv.rs picks them).
// A compiled-filter forward (data gradient) also takes its input (output) channels per group to be a
// multiple of MMA_BK, so that its K loop holds only the one-tap-a-step gather; conv.rs sends other
// layers (a 3-channel stem) to the `any` kernels, which check at run time.
#define CONV_MMA_KERNELS(NAME, KS, S, BN, WEIGHT_THREADS)                                        \
    KERNEL void __launch_bounds__(MMA_THREADS) conv2d_mma_forward_##NAME(                        \
        const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,         \
        CONV_SHAPE_ARGS) {                                                                       \
        conv_mma_forward<KS, S, BN, false>(x, w, y, int(n), CONV_GEOM, int(groups), StatsOut{}); \
    }                                                                                            \
    KERNEL void __launch_bounds__(MMA_THREADS) conv2d_mma_forward_stats_##NAME(                  \
        const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,         \
        CONV_STATS_ARGS, CONV_SHAPE_ARGS, CONV_STATS_SCALARS) {                                  \
        const StatsOut st = CONV_STATS_OUT;                                                      \
        conv_mma_forward<KS, S, BN, true>(x, w, y, int(n), CONV_GEOM, int(groups), st);          \
    }                                                                                            \
    KERNEL void __launch_bounds__(MMA_THREADS) conv2d_mma_backward_data_##NAME(                  \
        const float* __restrict__ dy,                                                            \
                                                const float* __restrict__ w,                     \
                                                float* __restrict__ dx, CONV_SHAPE_ARGS,         \
                                                int accumulate) {                                \
        conv_mma_backward_data<KS, S, BN>(dy, w, dx, int(n), CONV_GEOM, int(groups),             \
                                          accumulate != 0);                                      \
    }                                                                                            \
    KERNEL void __launch_bounds__(WEIGHT_THREADS) conv2d_mma_backward_weight_##NAME(             \
        const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ partial,  \
        float* __restrict__ dw, unsigned* __restrict__ counters, CONV_SHAPE_ARGS,                \
        unsigned splits) {                                                                       \
        conv_mma_backward_weight<KS, S, BN, WEIGHT_THREADS>(x, dy, partial, dw, counters, int(n), \
                                                            CONV_GEOM, int(groups),              \
                                                            int(splits));                        \
    }

#define CONV_MMA_HALO_KERNEL(NAME, S, BN)                                                       \
    KERNEL void __launch_bounds__(CONV_MMA_THREADS_K3_WEIGHT)                                    \
        conv2d_mma_backward_weight_##NAME(const float* __restrict__ x,                           \
                                          const float* __restrict__ dy,                          \
                                          float* __restrict__ partial, float* __restrict__ dw,   \
                                          unsigned* __restrict__ counters, CONV_SHAPE_ARGS,      \
                                          unsigned splits) {                                     \
        conv_mma_backward_weight_halo<S, BN>(x, dy, partial, dw, counters, int(n), CONV_GEOM,    \
                                             int(groups), int(splits));                          \
    }

// NAME, KS, S, BN, weight-gradient threads (src/backend/cuda/conv.rs `MmaFilter`, `MmaWidth`).
CONV_MMA_KERNELS(k3s1_n16, 3, 1, 16, CONV_MMA_THREADS_K3_WEIGHT)
CONV_MMA_KERNELS(k3s1_n32, 3, 1, 32, CONV_MMA_THREADS_K3_WEIGHT)
CONV_MMA_KERNELS(k3s1_n64, 3, 1, 64, CONV_MMA_THREADS_K3_WEIGHT)
CONV_MMA_KERNELS(k3s2_n16, 3, 2, 16, CONV_MMA_THREADS_K3_WEIGHT)
CONV_MMA_KERNELS(k3s2_n32, 3, 2, 32, CONV_MMA_THREADS_K3_WEIGHT)
CONV_MMA_KERNELS(k3s2_n64, 3, 2, 64, CONV_MMA_THREADS_K3_WEIGHT)
CONV_MMA_KERNELS(k1s1_n16, 1, 1, 16, MMA_THREADS)
CONV_MMA_KERNELS(k1s1_n32, 1, 1, 32, MMA_THREADS)
CONV_MMA_KERNELS(k1s1_n64, 1, 1, 64, MMA_THREADS)
CONV_MMA_KERNELS(any_n16, 0, 0, 16, MMA_THREADS)
CONV_MMA_KERNELS(any_n32, 0, 0, 32, MMA_THREADS)
CONV_MMA_KERNELS(any_n64, 0, 0, 64, MMA_THREADS)
// NAME, S, BN (src/backend/cuda/conv.rs `WEIGHT_HALO`).
CONV_MMA_HALO_KERNEL(k3s1_halo_n16, 1, 16)
CONV_MMA_HALO_KERNEL(k3s1_halo_n32, 1, 32)
CONV_MMA_HALO_KERNEL(k3s1_halo_n64, 1, 64)
CONV_MMA_HALO_KERNEL(k3s2_halo_n16, 2, 16)
CONV_MMA_HALO_KERNEL(k3s2_halo_n32, 2, 32)
CONV_MMA_HALO_KERNEL(k3s2_halo_n64, 2, 64)

// Forward (with statistics or without) and data gradient of a 3x3 stride-1 filter on row tiles
// (src/backend/cuda/conv.rs `FORWARD_ROWS`, `FORWARD_STATS_ROWS`, `DATA_ROWS`); shapes and buffers
// as the kernels above.
#define CONV_MMA_ROWS_KERNELS(BN)                                                                 \
    KERNEL void __launch_bounds__(MMA_THREADS) conv2d_mma_forward_k3s1_rows_n##BN(                \
        const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,          \
        CONV_SHAPE_ARGS) {                                                                        \
        conv_mma_rows<false, BN, false>(x, w, y, int(n), CONV_GEOM, int(groups), false,           \
                                        StatsOut{});                                              \
    }                                                                                             \
    KERNEL void __launch_bounds__(MMA_THREADS) conv2d_mma_forward_stats_k3s1_rows_n##BN(          \
        const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,          \
        CONV_STATS_ARGS, CONV_SHAPE_ARGS, CONV_STATS_SCALARS) {                                  \
        const StatsOut st = CONV_STATS_OUT;                                                      \
        conv_mma_rows<false, BN, true>(x, w, y, int(n), CONV_GEOM, int(groups), false, st);       \
    }                                                                                             \
    KERNEL void __launch_bounds__(MMA_THREADS) conv2d_mma_backward_data_k3s1_rows_n##BN(          \
        const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,        \
        CONV_SHAPE_ARGS, int accumulate) {                                                        \
        conv_mma_rows<true, BN, false>(dy, w, dx, int(n), CONV_GEOM, int(groups), accumulate != 0, \
                                       StatsOut{});                                               \
    }

CONV_MMA_ROWS_KERNELS(16)
CONV_MMA_ROWS_KERNELS(32)
CONV_MMA_ROWS_KERNELS(64)

// The 1x1 stride-1 weight gradient on 16-byte copies (src/backend/cuda/conv.rs `WEIGHT_K1_VEC`).
#define CONV_MMA_K1_VEC_KERNEL(BN)                                                                \
    KERNEL void __launch_bounds__(MMA_THREADS) conv2d_mma_backward_weight_k1s1_vec_n##BN(          \
        const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ partial,   \
        float* __restrict__ dw, unsigned* __restrict__ counters, CONV_SHAPE_ARGS,                 \
        unsigned splits) {                                                                        \
        conv_mma_backward_weight_k1_vec<BN>(x, dy, partial, dw, counters, int(n), CONV_GEOM,       \
                                            int(groups), int(splits));                            \
    }

CONV_MMA_K1_VEC_KERNEL(16)
CONV_MMA_K1_VEC_KERNEL(32)
CONV_MMA_K1_VEC_KERNEL(64)
