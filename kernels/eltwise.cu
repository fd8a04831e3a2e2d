// Element-wise ops and mixup: one thread per element, grid-stride loops (the launcher caps the grid).
#include "common.cuh"

// a += b   [n]
KERNEL void add_assign(float* __restrict__ a, const float* __restrict__ b, unsigned n) {
    for (unsigned i = global_thread(); i < n; i += grid_threads()) a[i] += b[i];
}

// y = alpha * a   [n]
KERNEL void scale(const float* __restrict__ a, float* __restrict__ y, float alpha, unsigned n) {
    for (unsigned i = global_thread(); i < n; i += grid_threads()) y[i] = alpha * a[i];
}

// y [n, c] = row [c] repeated (the bias that the linear layer's GEMM then accumulates onto).
KERNEL void broadcast_rows(const float* __restrict__ row, float* __restrict__ y, unsigned n,
                           unsigned c) {
    const unsigned total = n * c;
    for (unsigned i = global_thread(); i < total; i += grid_threads()) y[i] = row[i % c];
}

// y_i = lambda * x_i + (1 - lambda) * x_perm[i]   x, y [n, per_sample]; lambda [1] on the device (a
// per-step value: a captured step reads the replay's).
KERNEL void mixup(const float* __restrict__ x, const unsigned* __restrict__ perm,
                  const float* __restrict__ lambda_dev, float* __restrict__ y,
                  unsigned* __restrict__ error_record, unsigned n, unsigned per_sample) {
    const unsigned total = n * per_sample;
    const float lambda = lambda_dev[0];
    for (unsigned i = global_thread(); i < total; i += grid_threads()) {
        const unsigned row = i / per_sample, col = i % per_sample;
        const unsigned partner = perm[row];
        if (partner >= n) {
            y[i] = NAN;
            raise_error(error_record, ERR_MIXUP_PERM, row, partner, n);
        } else {
            y[i] = lambda * x[i] + (1.0f - lambda) * x[size_t(partner) * per_sample + col];
        }
    }
}
