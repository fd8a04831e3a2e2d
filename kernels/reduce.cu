// Reductions with a fixed summation order (reproducible run to run on a given launch shape).
#include "common.cuh"

// out[blockIdx.x] = sum of the elements this block visits (grid-stride over x [n]). Launched twice by
// the `sum` op: many blocks into partial sums, then one block over the partials.
KERNEL void reduce_sum(const float* __restrict__ x, float* __restrict__ out, unsigned n) {
    float acc = 0.0f;
    for (unsigned i = global_thread(); i < n; i += grid_threads()) acc += x[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) out[blockIdx.x] = acc;
}

// y [cols] (+)= sum over rows of x [rows, cols], rows in order (accumulate = 1 adds to y). Folds the
// per-image weight gradients of a convolution and gives the linear bias gradient.
KERNEL void sum_rows(const float* __restrict__ x, float* __restrict__ y, unsigned rows,
                     unsigned cols, int accumulate) {
    for (unsigned j = global_thread(); j < cols; j += grid_threads()) {
        float acc = accumulate ? y[j] : 0.0f;
        for (unsigned r = 0; r < rows; ++r) acc += x[size_t(r) * cols + j];
        y[j] = acc;
    }
}
