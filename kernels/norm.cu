// Batch normalisation over [n, c, hw], PyTorch semantics (biased variance to normalise, unbiased to
// the running variance), with what follows it in a ResNet fused in: `y = relu(bn(x) + residual)` in
// the forward, the ReLU's mask applied to the incoming gradient in the backward.
//
// Per-channel sums are spread over the whole device: each block sums one slice of one channel (in
// double, shifted by the channel's first value so that the one-pass variance does not cancel), and
// the last block to finish a channel (an atomic counter, which it resets) adds the slices up in
// order. One launch per reduction, deterministic, no atomics on values.
#include "common.cuh"
#include "batch_stats.cuh"

__device__ __forceinline__ unsigned channel_element(unsigned t, unsigned ch, unsigned c,
                                                    unsigned hw) {
    return ((t / hw) * c + ch) * hw + t % hw;
}

// Adds up this block's pair of sums for slice `slice` of channel `ch` and publishes it in `partial`
// [c, slices, 2]; true in thread 0 of the channel's last block, where `a` and `b` become the
// channel's totals (slices added in order) and its counter is reset.
__device__ bool channel_totals(double& a, double& b, double* partial, unsigned* counters,
                               unsigned ch, unsigned slice, unsigned slices) {
    a = block_sum(a);
    b = block_sum(b);
    if (threadIdx.x == 0) {
        partial[(size_t(ch) * slices + slice) * 2] = a;
        partial[(size_t(ch) * slices + slice) * 2 + 1] = b;
    }
    if (!took_last_ticket(&counters[ch], slices) || threadIdx.x != 0) return false;
    const volatile double* p = partial + size_t(ch) * slices * 2;
    a = 0.0;
    b = 0.0;
    for (unsigned sl = 0; sl < slices; ++sl) {
        a += p[2 * sl];
        b += p[2 * sl + 1];
    }
    counters[ch] = 0u;
    return true;
}

// Statistics: saved mean and 1/sqrt(var + eps), running statistics updated in place. Work items are
// (slice, channel), slice-major; `partial` [c, slices, 2] (shifted sum, shifted sum of squares),
// `counters` [c] zero on entry and on exit.
KERNEL void batch_norm_stats(const float* __restrict__ x, double* __restrict__ partial,
                             unsigned* __restrict__ counters, float* __restrict__ saved_mean,
                             float* __restrict__ saved_inv_std, float* __restrict__ running_mean,
                             float* __restrict__ running_var, unsigned n, unsigned c, unsigned hw,
                             unsigned slices, float eps, float momentum) {
    const unsigned count = n * hw, per = (count + slices - 1) / slices;
    for (unsigned item = blockIdx.x; item < c * slices; item += gridDim.x) {
        const unsigned ch = item % c, slice = item / c;
        const double shift = x[ch * hw];
        const unsigned t1 = min(count, (slice + 1) * per);
        double s1 = 0.0, s2 = 0.0;
        for (unsigned t = slice * per + threadIdx.x; t < t1; t += blockDim.x) {
            const double v = double(x[channel_element(t, ch, c, hw)]) - shift;
            s1 += v;
            s2 += v * v;
        }
        if (channel_totals(s1, s2, partial, counters, ch, slice, slices)) {
            const double shifted_mean = s1 / count;
            const double var = fmax(s2 / count - shifted_mean * shifted_mean, 0.0);
            write_batch_stats(ch, shift + shifted_mean, var, count, eps, momentum, saved_mean,
                              saved_inv_std, running_mean, running_var);
        }
    }
}

// y = act((x - mean) * (gamma * inv_std) + beta [+ residual]), act = ReLU when `relu`.
KERNEL void batch_norm_apply(const float* __restrict__ x, const float* __restrict__ mean,
                             const float* __restrict__ inv_std, const float* __restrict__ gamma,
                             const float* __restrict__ beta, const float* __restrict__ residual_opt,
                             float* __restrict__ y, int relu, unsigned n, unsigned c, unsigned hw) {
    const unsigned total = n * c * hw;
    for (unsigned i = global_thread(); i < total; i += grid_threads()) {
        const unsigned ch = (i / hw) % c;
        float v = (x[i] - mean[ch]) * (gamma[ch] * inv_std[ch]) + beta[ch];
        if (residual_opt != nullptr) v += residual_opt[i];
        y[i] = relu ? fmaxf(v, 0.0f) : v;
    }
}

// Evaluation: the same with the running statistics.
KERNEL void batch_norm_eval(const float* __restrict__ x, const float* __restrict__ gamma,
                            const float* __restrict__ beta, const float* __restrict__ running_mean,
                            const float* __restrict__ running_var,
                            const float* __restrict__ residual_opt, float* __restrict__ y,
                            int relu, unsigned n, unsigned c, unsigned hw, float eps) {
    const unsigned total = n * c * hw;
    for (unsigned i = global_thread(); i < total; i += grid_threads()) {
        const unsigned ch = (i / hw) % c;
        const float scale = float(double(gamma[ch]) / sqrt(double(running_var[ch]) + double(eps)));
        float v = (x[i] - running_mean[ch]) * scale + beta[ch];
        if (residual_opt != nullptr) v += residual_opt[i];
        y[i] = relu ? fmaxf(v, 0.0f) : v;
    }
}

// The gradient reaching the normalisation: dy, masked by the fused ReLU's output when there was one.
__device__ __forceinline__ float incoming(const float* dy, const float* relu_y_opt, unsigned i) {
    return relu_y_opt == nullptr || relu_y_opt[i] > 0.0f ? dy[i] : 0.0f;
}

// dbeta = sum g, dgamma = sum g * x_hat per channel (g the incoming gradient); work items and
// `partial` [c, slices, 2] / `counters` as in batch_norm_stats.
KERNEL void batch_norm_backward_reduce(const float* __restrict__ dy, const float* __restrict__ x,
                                       const float* __restrict__ mean,
                                       const float* __restrict__ inv_std,
                                       const float* __restrict__ relu_y_opt,
                                       double* __restrict__ partial,
                                       unsigned* __restrict__ counters, float* __restrict__ dgamma,
                                       float* __restrict__ dbeta, unsigned n, unsigned c,
                                       unsigned hw, unsigned slices) {
    const unsigned count = n * hw, per = (count + slices - 1) / slices;
    for (unsigned item = blockIdx.x; item < c * slices; item += gridDim.x) {
        const unsigned ch = item % c, slice = item / c;
        const double m = mean[ch], s = inv_std[ch];
        const unsigned t1 = min(count, (slice + 1) * per);
        double sum_g = 0.0, sum_g_xhat = 0.0;
        for (unsigned t = slice * per + threadIdx.x; t < t1; t += blockDim.x) {
            const unsigned i = channel_element(t, ch, c, hw);
            const double g = incoming(dy, relu_y_opt, i);
            sum_g += g;
            sum_g_xhat += g * (double(x[i]) - m) * s;
        }
        if (channel_totals(sum_g, sum_g_xhat, partial, counters, ch, slice, slices)) {
            dbeta[ch] = float(sum_g);
            dgamma[ch] = float(sum_g_xhat);
        }
    }
}

// dx = gamma * inv_std / m * (m * g - sum(g) - x_hat * sum(g * x_hat)),  m = n * hw; the masked g
// itself into `masked_dy_opt` (the residual's gradient) when given.
KERNEL void batch_norm_backward_apply(const float* __restrict__ dy, const float* __restrict__ x,
                                      const float* __restrict__ mean,
                                      const float* __restrict__ inv_std,
                                      const float* __restrict__ gamma,
                                      const float* __restrict__ dgamma,
                                      const float* __restrict__ dbeta,
                                      const float* __restrict__ relu_y_opt,
                                      float* __restrict__ dx, float* __restrict__ masked_dy_opt,
                                      unsigned n, unsigned c, unsigned hw) {
    const unsigned total = n * c * hw;
    const float count = float(n * hw);
    for (unsigned i = global_thread(); i < total; i += grid_threads()) {
        const unsigned ch = (i / hw) % c;
        const float g = incoming(dy, relu_y_opt, i);
        const float x_hat = (x[i] - mean[ch]) * inv_std[ch];
        const float k = gamma[ch] * inv_std[ch] / count;
        dx[i] = k * (count * g - dbeta[ch] - x_hat * dgamma[ch]);
        if (masked_dy_opt != nullptr) masked_dy_opt[i] = g;
    }
}
