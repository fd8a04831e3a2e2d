// Row-wise ops on [n, c] logits and the fused logit-adjusted softmax cross-entropy. One block per row
// (grid-stride over rows): shuffle + shared-memory reductions for the row max and sums.
#include "common.cuh"

// Fused loss (weighting codes `WEIGHT_*`; per-class without `class_weight_opt`: unit weights), per
// row i with z = logits_i + adjustment, s = softmax(z), ce(t) = logsumexp(z) - z_t:
// - per-class, single target a: w = cw[a] (1 without weights), loss = w ce(a), dz = w (s - e_a);
// - mixed (a, b, lambda): wa = lambda cw[a], wb = (1 - lambda) cw[b], w = wa + wb,
//   loss = wa ce(a) + wb ce(b), dz = w s - wa e_a - wb e_b;
// - focal: q = 1 - p_a, w = q^gamma, loss = w ce(a), dz = (w + gamma q^(gamma-1) p_a ce(a)) (s - e_a);
// - SLA: w = q^gamma exp(tau cos_star[a] - tau cos_y[i]) held constant, dz = w (s - e_a).
// dlogits = grad_scale * dz (1/n for the mean; 1 for the weight-normalised reduction, which divides
// afterwards). q is summed from the other classes so it stays exact when p_a rounds to 1.
KERNEL void fused_loss_rows(const float* __restrict__ logits,
                            const float* __restrict__ adjustment_opt,
                            const unsigned* __restrict__ target_a,
                            const unsigned* __restrict__ target_b_opt,
                            const float* __restrict__ lambda_opt,
                            int weighting, const float* __restrict__ class_weight_opt,
                            const float* __restrict__ cos_y_opt,
                            const float* __restrict__ cos_star_opt, float gamma, float tau,
                            float grad_scale, float* __restrict__ loss, float* __restrict__ prob,
                            float* __restrict__ weight, float* __restrict__ dlogits,
                            unsigned* __restrict__ error_record, unsigned n, unsigned c) {
    for (unsigned row = blockIdx.x; row < n; row += gridDim.x) {
        const float* x = logits + size_t(row) * c;
        float* g = dlogits + size_t(row) * c;
        const unsigned a = target_a[row];
        const unsigned b = target_b_opt != nullptr ? target_b_opt[row] : a;
        if (a >= c || b >= c) {  // uniform over the block: no barrier is skipped by a subset
            for (unsigned j = threadIdx.x; j < c; j += blockDim.x) g[j] = NAN;
            if (threadIdx.x == 0) {
                loss[row] = prob[row] = weight[row] = NAN;
                if (a >= c)
                    raise_error(error_record, ERR_LOSS_TARGET, row, a, c);
                else
                    raise_error(error_record, ERR_LOSS_TARGET_B, row, b, c);
            }
            continue;
        }
        float m = -INFINITY;
        for (unsigned j = threadIdx.x; j < c; j += blockDim.x) {
            const float z = x[j] + (adjustment_opt != nullptr ? adjustment_opt[j] : 0.0f);
            m = fmaxf(m, z);
        }
        m = block_max(m);
        float acc = 0.0f;
        for (unsigned j = threadIdx.x; j < c; j += blockDim.x) {
            const float z = x[j] + (adjustment_opt != nullptr ? adjustment_opt[j] : 0.0f);
            acc += expf(z - m);
        }
        const float lse = m + logf(block_sum(acc));
        // s_j staged in dlogits (each thread rereads only its own entries below).
        float others = 0.0f;
        for (unsigned j = threadIdx.x; j < c; j += blockDim.x) {
            const float z = x[j] + (adjustment_opt != nullptr ? adjustment_opt[j] : 0.0f);
            const float s = expf(z - lse);
            g[j] = s;
            if (j != a) others += s;
        }
        const float q = block_sum(others);
        const float za = x[a] + (adjustment_opt != nullptr ? adjustment_opt[a] : 0.0f);
        const float zb = x[b] + (adjustment_opt != nullptr ? adjustment_opt[b] : 0.0f);
        const float ce_a = lse - za;
        const float p_a = expf(-ce_a);
        float w, row_loss, coef_all, coef_a, coef_b = 0.0f;
        if (weighting == WEIGHT_FOCAL) {
            w = powf(q, gamma);
            coef_all = q > 0.0f ? w + gamma * powf(q, gamma - 1.0f) * p_a * ce_a : w;
            coef_a = coef_all;
            row_loss = w * ce_a;
        } else if (weighting == WEIGHT_SLA) {
            w = powf(q, gamma) * expf(tau * cos_star_opt[a] - tau * cos_y_opt[row]);
            coef_all = coef_a = w;
            row_loss = w * ce_a;
        } else if (target_b_opt != nullptr) {
            const float ca = class_weight_opt != nullptr ? class_weight_opt[a] : 1.0f;
            const float cb = class_weight_opt != nullptr ? class_weight_opt[b] : 1.0f;
            const float lambda = lambda_opt[0];  // given with target_b (a device value: per step)
            coef_a = lambda * ca;
            coef_b = (1.0f - lambda) * cb;
            w = coef_all = coef_a + coef_b;
            row_loss = coef_a * ce_a + coef_b * (lse - zb);
        } else {
            w = class_weight_opt != nullptr ? class_weight_opt[a] : 1.0f;
            coef_all = coef_a = w;
            row_loss = w * ce_a;
        }
        for (unsigned j = threadIdx.x; j < c; j += blockDim.x) {
            float d = coef_all * g[j];
            if (j == a) d -= coef_a;
            if (j == b && target_b_opt != nullptr) d -= coef_b;
            g[j] = grad_scale * d;
        }
        if (threadIdx.x == 0) {
            loss[row] = row_loss;
            prob[row] = p_a;
            weight[row] = w;
        }
    }
}

// y *= 1 / denominator[0] (0 when the denominator is 0: a zero total weight gives a zero gradient).
KERNEL void scale_by_inverse(float* __restrict__ y, const float* __restrict__ denominator,
                             unsigned n) {
    const float d = denominator[0];
    const float inv = d != 0.0f ? 1.0f / d : 0.0f;
    for (unsigned i = global_thread(); i < n; i += grid_threads()) y[i] *= inv;
}

// Softmax (log_output = 0) or log-softmax (log_output = 1) of every row of x [n, c].
KERNEL void softmax_rows(const float* __restrict__ x, float* __restrict__ y, int log_output, unsigned n,
                         unsigned c) {
    for (unsigned row = blockIdx.x; row < n; row += gridDim.x) {
        const float* xr = x + size_t(row) * c;
        float* yr = y + size_t(row) * c;
        float m = -INFINITY;
        for (unsigned j = threadIdx.x; j < c; j += blockDim.x) m = fmaxf(m, xr[j]);
        m = block_max(m);
        float acc = 0.0f;
        for (unsigned j = threadIdx.x; j < c; j += blockDim.x) acc += expf(xr[j] - m);
        const float log_sum = logf(block_sum(acc));
        for (unsigned j = threadIdx.x; j < c; j += blockDim.x) {
            const float t = xr[j] - m - log_sum;
            yr[j] = log_output ? t : expf(t);
        }
    }
}

// Per row of x [n, c]: the maximum and its index (the first maximum wins).
KERNEL void row_max(const float* __restrict__ x, float* __restrict__ value,
                    unsigned* __restrict__ index, unsigned n, unsigned c) {
    for (unsigned row = blockIdx.x; row < n; row += gridDim.x) {
        const float* xr = x + size_t(row) * c;
        float best = -INFINITY;
        unsigned best_j = 0xffffffffu;
        for (unsigned j = threadIdx.x; j < c; j += blockDim.x)
            if (best_j == 0xffffffffu || xr[j] > best) {
                best = xr[j];
                best_j = j;
            }
        block_argmax(best, best_j);
        if (threadIdx.x == 0) {
            value[row] = best;
            index[row] = best_j;
        }
    }
}
