// Element-wise ops: one thread per element, grid-stride loops (the launcher caps the grid).
#include "common.cuh"

// y = a + b   [n]
KERNEL void add(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y,
                unsigned n) {
    for (unsigned i = global_thread(); i < n; i += grid_threads()) y[i] = a[i] + b[i];
}

// a += b   [n]
KERNEL void add_assign(float* __restrict__ a, const float* __restrict__ b, unsigned n) {
    for (unsigned i = global_thread(); i < n; i += grid_threads()) a[i] += b[i];
}

// y = a * b   [n]
KERNEL void mul(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y,
                unsigned n) {
    for (unsigned i = global_thread(); i < n; i += grid_threads()) y[i] = a[i] * b[i];
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

KERNEL void relu_forward(const float* __restrict__ x, float* __restrict__ y, unsigned n) {
    for (unsigned i = global_thread(); i < n; i += grid_threads()) y[i] = fmaxf(x[i], 0.0f);
}

// dx = dy * (y > 0), y the ReLU output
KERNEL void relu_backward(const float* __restrict__ dy, const float* __restrict__ y,
                          float* __restrict__ dx, unsigned n) {
    for (unsigned i = global_thread(); i < n; i += grid_threads()) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

// Option-A shortcut: x [n, c_in, h, w] -> y [n, c_out, h_out, w_out], subsampled by `stride`,
// channels zero-padded by `pad` on the low side (and c_out - c_in - pad on the high side).
KERNEL void shortcut_a_forward(const float* __restrict__ x, float* __restrict__ y, unsigned n,
                               unsigned c_in, unsigned h, unsigned w, unsigned c_out,
                               unsigned stride, unsigned h_out, unsigned w_out, unsigned pad) {
    const unsigned total = n * c_out * h_out * w_out;
    for (unsigned i = global_thread(); i < total; i += grid_threads()) {
        const unsigned ow = i % w_out;
        const unsigned oh = (i / w_out) % h_out;
        const unsigned co = (i / (w_out * h_out)) % c_out;
        const unsigned s = i / (w_out * h_out * c_out);
        float v = 0.0f;
        if (co >= pad && co < pad + c_in)
            v = x[((s * c_in + (co - pad)) * h + oh * stride) * w + ow * stride];
        y[i] = v;
    }
}

// dx [n, c_in, h, w] from dy [n, c_out, h_out, w_out]: the subsampled positions take their gradient,
// the others get zero.
KERNEL void shortcut_a_backward(const float* __restrict__ dy, float* __restrict__ dx, unsigned n,
                                unsigned c_in, unsigned h, unsigned w, unsigned c_out,
                                unsigned stride, unsigned h_out, unsigned w_out, unsigned pad) {
    const unsigned total = n * c_in * h * w;
    for (unsigned i = global_thread(); i < total; i += grid_threads()) {
        const unsigned iw = i % w;
        const unsigned ih = (i / w) % h;
        const unsigned ci = (i / (w * h)) % c_in;
        const unsigned s = i / (w * h * c_in);
        float v = 0.0f;
        if (ih % stride == 0 && iw % stride == 0)
            v = dy[((s * c_out + ci + pad) * h_out + ih / stride) * w_out + iw / stride];
        dx[i] = v;
    }
}

// y_i = lambda * x_i + (1 - lambda) * x_perm[i]   x, y [n, per_sample]
KERNEL void mixup(const float* __restrict__ x, const unsigned* __restrict__ perm,
                  float* __restrict__ y, unsigned* __restrict__ error_record, float lambda,
                  unsigned n, unsigned per_sample) {
    const unsigned total = n * per_sample;
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
