// The unfused loss composition (the benchmark baseline of fused_loss in loss.cu, and its cross-check):
// bias, gather, SLA weights, the cross-entropy backward and the element-wise product as separate passes.
#include "common.cuh"

// y = a * b   [n]
KERNEL void mul(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y,
                unsigned n) {
    for (unsigned i = global_thread(); i < n; i += grid_threads()) y[i] = a[i] * b[i];
}

// y [n, c] = x + bias [c] broadcast over rows.
KERNEL void add_row_bias(const float* __restrict__ x, const float* __restrict__ bias,
                         float* __restrict__ y, unsigned n, unsigned c) {
    const unsigned total = n * c;
    for (unsigned i = global_thread(); i < total; i += grid_threads()) y[i] = x[i] + bias[i % c];
}

// out[i] = x[i, idx[i]]
KERNEL void gather_rows(const float* __restrict__ x, const unsigned* __restrict__ idx,
                        float* __restrict__ out, unsigned* __restrict__ error_record, unsigned n,
                        unsigned c) {
    for (unsigned i = global_thread(); i < n; i += grid_threads()) {
        const unsigned j = idx[i];
        if (j >= c) {
            out[i] = NAN;
            raise_error(error_record, ERR_GATHER_INDEX, i, j, c);
        } else {
            out[i] = x[size_t(i) * c + j];
        }
    }
}

// SLA weights as their own pass: w [n] = (1 - p_i)^gamma * exp(tau * cos_star[y_i] - tau * cos_y[i]).
KERNEL void sla_weights(const float* __restrict__ prob, const float* __restrict__ cos_y,
                        const float* __restrict__ cos_star, const unsigned* __restrict__ labels,
                        float* __restrict__ w, unsigned* __restrict__ error_record, unsigned n,
                        unsigned c, float gamma, float tau) {
    for (unsigned i = global_thread(); i < n; i += grid_threads()) {
        const unsigned y = labels[i];
        if (y >= c) {
            w[i] = NAN;
            raise_error(error_record, ERR_SLA_WEIGHTS_LABEL, i, y, c);
        } else {
            w[i] = powf(1.0f - prob[i], gamma) * expf(tau * cos_star[y] - tau * cos_y[i]);
        }
    }
}

// Cross-entropy backward from probabilities: dlogits [n, c] = (probs - onehot(labels)) * row_scale[i].
KERNEL void softmax_xent_backward(const float* __restrict__ probs, const unsigned* __restrict__ labels,
                                  const float* __restrict__ row_scale, float* __restrict__ dlogits,
                                  unsigned* __restrict__ error_record, unsigned n, unsigned c) {
    const unsigned total = n * c;
    for (unsigned t = global_thread(); t < total; t += grid_threads()) {
        const unsigned i = t / c, j = t % c;
        const unsigned y = labels[i];
        if (y >= c) {
            dlogits[t] = NAN;
            if (j == 0) raise_error(error_record, ERR_XENT_LABEL, i, y, c);
        } else {
            dlogits[t] = (probs[t] - (j == y ? 1.0f : 0.0f)) * row_scale[i];
        }
    }
}
