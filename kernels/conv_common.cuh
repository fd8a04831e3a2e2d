// Shared by the convolution families (conv.cu on the fp32 FMA units, conv_mma.cu on the tensor
// cores): the geometry, exact division by run-time constants, and the batch statistics a forward
// takes from its output tiles.
#pragma once

#include "common.cuh"
#include "batch_stats.cuh"

struct ConvGeom {
    int c_in, h, w, c_out, k, stride, pad, h_out, w_out;
    int c_in_g, c_out_g, kk, P, HW;
};

__device__ ConvGeom conv_geom(unsigned c_in, unsigned h, unsigned w, unsigned c_out, unsigned k,
                              unsigned stride, unsigned pad, unsigned h_out, unsigned w_out,
                              unsigned groups) {
    ConvGeom g;
    g.c_in = int(c_in);
    g.h = int(h);
    g.w = int(w);
    g.c_out = int(c_out);
    g.k = int(k);
    g.stride = int(stride);
    g.pad = int(pad);
    g.h_out = int(h_out);
    g.w_out = int(w_out);
    g.c_in_g = int(c_in / groups);
    g.c_out_g = int(c_out / groups);
    g.kk = int(k * k);
    g.P = int(h_out * w_out);
    g.HW = int(h * w);
    return g;
}

// Every convolution kernel's shape parameters (x [n, c_in, h, w_in], w [c_out, c_in / groups, k, k],
// y [n, c_out, h_out, w_out]), written once for both families, and their geometry.
#define CONV_SHAPE_ARGS                                                                          \
    unsigned n, unsigned c_in, unsigned h, unsigned w_in, unsigned c_out, unsigned k,            \
        unsigned stride, unsigned pad, unsigned h_out, unsigned w_out, unsigned groups
#define CONV_GEOM conv_geom(c_in, h, w_in, c_out, k, stride, pad, h_out, w_out, groups)
// A forward-with-statistics kernel's outputs besides y (StatsOut's buffers), its two trailing
// scalars, and the StatsOut they make.
#define CONV_STATS_ARGS                                                              \
    double* __restrict__ partial, unsigned* __restrict__ counters,                   \
        float* __restrict__ saved_mean, float* __restrict__ saved_inv_std,           \
        float* __restrict__ running_mean, float* __restrict__ running_var
#define CONV_STATS_SCALARS float eps, float momentum
#define CONV_STATS_OUT                                                                            \
    StatsOut {                                                                                    \
        partial, counters, saved_mean, saved_inv_std, running_mean, running_var, eps, momentum    \
    }

// Division by a divisor fixed for a launch, as a multiply and a shift (Granlund and Montgomery,
// "Division by invariant integers using multiplication", 1994, figure 4.1: l = ceil(log2 d),
// m = floor(2^32 (2^l - d) / d) + 1, n / d = (mulhi(m, n) + n) >> l, exact for every 32-bit n when
// the sum is taken in 64 bits). A hardware division by a run-time value is about 20 instructions.
struct FastDiv {
    unsigned d, mul, shift;
};

__device__ __forceinline__ FastDiv fast_div(unsigned d) {
    FastDiv f;
    f.d = d;
    f.shift = 0;
    while ((1ull << f.shift) < d) ++f.shift;
    f.mul = unsigned(((1ull << 32) * ((1ull << f.shift) - d)) / d + 1);
    return f;
}

__device__ __forceinline__ unsigned divide(unsigned n, const FastDiv& f) {
    const unsigned long long hi = (static_cast<unsigned long long>(n) * f.mul) >> 32;
    return unsigned((hi + n) >> f.shift);
}

// Where a forward writes its output's batch statistics. `partial` [blocks of channels, tiles, width,
// 2] holds each tile's per-channel (sum, sum of squares); `counters` [blocks of channels] zero on
// entry and on exit.
struct StatsOut {
    double* partial;
    unsigned* counters;
    float* saved_mean;
    float* saved_inv_std;
    float* running_mean;
    float* running_var;
    float eps, momentum;
};

// Run by the block that took the last ticket of a block of `width` channels (the first `first`,
// `valid` of them real): adds the `tiles` partial sums at `partial` ([tiles, width, 2]) in tile order
// (a warp per channel, its lanes over the tiles, then a fixed butterfly) and writes the statistics of
// `count` values per channel (unshifted in double: the values are fp32, so the one-pass variance only
// cancels when mean^2 / var nears 1e10).
__device__ void fold_channel_stats(const StatsOut& st, const double* partial, int tiles, int width,
                                   unsigned first, int valid, unsigned count) {
    const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) >> 5;
    const int warps = int(blockDim.x) >> 5;
    for (int r = warp; r < valid; r += warps) {
        double s1 = 0.0, s2 = 0.0;
        for (int t = lane; t < tiles; t += 32) {
            const volatile double* p = partial + (size_t(t) * width + r) * 2;
            s1 += p[0];
            s2 += p[1];
        }
        s1 = warp_sum(s1);
        s2 = warp_sum(s2);
        if (lane == 0) {
            const double mean = s1 / count, var = fmax(s2 / count - mean * mean, 0.0);
            write_batch_stats(first + unsigned(r), mean, var, count, st.eps, st.momentum,
                              st.saved_mean, st.saved_inv_std, st.running_mean, st.running_var);
        }
    }
}
