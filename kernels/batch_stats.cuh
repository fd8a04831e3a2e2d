// A batch norm's statistics from the per-channel sums over its `count` values, written where the
// backward and evaluation read them (PyTorch semantics: the biased variance normalises, the unbiased
// one enters the running variance). Shared by the standalone statistics pass (norm.cu) and the
// convolution that computes them in its epilogue (conv.cu).
#pragma once

__device__ __forceinline__ void write_batch_stats(unsigned ch, double mean, double var,
                                                  unsigned count, float eps, float momentum,
                                                  float* saved_mean, float* saved_inv_std,
                                                  float* running_mean, float* running_var) {
    const double m = momentum;
    saved_mean[ch] = float(mean);
    saved_inv_std[ch] = float(1.0 / sqrt(var + double(eps)));
    running_mean[ch] = float((1.0 - m) * running_mean[ch] + m * mean);
    running_var[ch] = float((1.0 - m) * running_var[ch] + m * var * count / (count - 1));
}
