// Batch normalisation over [n, c, hw], PyTorch semantics (biased variance to normalise, unbiased to
// the running variance). Statistics: one block per channel, two passes, accumulated in double (as the
// CPU reference does); the element-wise parts are grid-stride kernels.
#include "common.cuh"

__device__ __forceinline__ unsigned channel_element(unsigned t, unsigned ch, unsigned c,
                                                    unsigned hw) {
    return ((t / hw) * c + ch) * hw + t % hw;
}

// One block per channel: saved mean and 1/sqrt(var + eps), running statistics updated in place.
KERNEL void batch_norm_stats(const float* __restrict__ x, float* __restrict__ saved_mean,
                             float* __restrict__ saved_inv_std, float* __restrict__ running_mean,
                             float* __restrict__ running_var, unsigned n, unsigned c, unsigned hw,
                             float eps, float momentum) {
    const unsigned ch = blockIdx.x;
    const unsigned count = n * hw;
    double acc = 0.0;
    for (unsigned t = threadIdx.x; t < count; t += blockDim.x) acc += x[channel_element(t, ch, c, hw)];
    const double mean = block_sum(acc) / count;
    acc = 0.0;
    for (unsigned t = threadIdx.x; t < count; t += blockDim.x) {
        const double d = double(x[channel_element(t, ch, c, hw)]) - mean;
        acc += d * d;
    }
    const double var = block_sum(acc) / count;
    if (threadIdx.x == 0) {
        const double m = momentum;
        saved_mean[ch] = float(mean);
        saved_inv_std[ch] = float(1.0 / sqrt(var + double(eps)));
        running_mean[ch] = float((1.0 - m) * running_mean[ch] + m * mean);
        running_var[ch] = float((1.0 - m) * running_var[ch] + m * var * count / (count - 1));
    }
}

// y = (x - mean) * inv_std * gamma + beta with the saved batch statistics.
KERNEL void batch_norm_apply(const float* __restrict__ x, const float* __restrict__ mean,
                             const float* __restrict__ inv_std, const float* __restrict__ gamma,
                             const float* __restrict__ beta, float* __restrict__ y, unsigned n,
                             unsigned c, unsigned hw) {
    const unsigned total = n * c * hw;
    for (unsigned i = global_thread(); i < total; i += grid_threads()) {
        const unsigned ch = (i / hw) % c;
        y[i] = (x[i] - mean[ch]) * (gamma[ch] * inv_std[ch]) + beta[ch];
    }
}

// Evaluation: the same with the running statistics.
KERNEL void batch_norm_eval(const float* __restrict__ x, const float* __restrict__ gamma,
                            const float* __restrict__ beta, const float* __restrict__ running_mean,
                            const float* __restrict__ running_var, float* __restrict__ y,
                            unsigned n, unsigned c, unsigned hw, float eps) {
    const unsigned total = n * c * hw;
    for (unsigned i = global_thread(); i < total; i += grid_threads()) {
        const unsigned ch = (i / hw) % c;
        const float scale = float(double(gamma[ch]) / sqrt(double(running_var[ch]) + double(eps)));
        y[i] = (x[i] - running_mean[ch]) * scale + beta[ch];
    }
}

// One block per channel: dbeta = sum dy, dgamma = sum dy * x_hat.
KERNEL void batch_norm_backward_reduce(const float* __restrict__ dy, const float* __restrict__ x,
                                       const float* __restrict__ mean,
                                       const float* __restrict__ inv_std,
                                       float* __restrict__ dgamma, float* __restrict__ dbeta,
                                       unsigned n, unsigned c, unsigned hw) {
    const unsigned ch = blockIdx.x;
    const unsigned count = n * hw;
    const double m = mean[ch], s = inv_std[ch];
    double sum_dy = 0.0, sum_dy_xhat = 0.0;
    for (unsigned t = threadIdx.x; t < count; t += blockDim.x) {
        const unsigned i = channel_element(t, ch, c, hw);
        const double g = dy[i];
        sum_dy += g;
        sum_dy_xhat += g * (double(x[i]) - m) * s;
    }
    sum_dy = block_sum(sum_dy);
    sum_dy_xhat = block_sum(sum_dy_xhat);
    if (threadIdx.x == 0) {
        dbeta[ch] = float(sum_dy);
        dgamma[ch] = float(sum_dy_xhat);
    }
}

// dx = gamma * inv_std / m * (m * dy - sum(dy) - x_hat * sum(dy * x_hat)),  m = n * hw.
KERNEL void batch_norm_backward_apply(const float* __restrict__ dy, const float* __restrict__ x,
                                      const float* __restrict__ mean,
                                      const float* __restrict__ inv_std,
                                      const float* __restrict__ gamma,
                                      const float* __restrict__ dgamma,
                                      const float* __restrict__ dbeta, float* __restrict__ dx,
                                      unsigned n, unsigned c, unsigned hw) {
    const unsigned total = n * c * hw;
    const float count = float(n * hw);
    for (unsigned i = global_thread(); i < total; i += grid_threads()) {
        const unsigned ch = (i / hw) % c;
        const float x_hat = (x[i] - mean[ch]) * inv_std[ch];
        const float k = gamma[ch] * inv_std[ch] / count;
        dx[i] = k * (count * dy[i] - dbeta[ch] - x_hat * dgamma[ch]);
    }
}
