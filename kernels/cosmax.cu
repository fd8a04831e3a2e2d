// The method's cosine ops: per-sample feature/classifier cosine, and the per-class cos-max table
// (paper Eq. 13-15) updated from a batch.
#include "common.cuh"

// cos [n]: cosine between features [n, d] row i and w [c, d] row labels[i]; 0 when either norm is 0.
// One warp per row, accumulated in double.
KERNEL void row_cosine(const float* __restrict__ features, const float* __restrict__ w,
                       const unsigned* __restrict__ labels, float* __restrict__ cos,
                       unsigned* __restrict__ error_record, unsigned n, unsigned d, unsigned c) {
    const unsigned lane = threadIdx.x & 31u;
    const unsigned warps_per_block = blockDim.x >> 5;
    for (unsigned row = blockIdx.x * warps_per_block + (threadIdx.x >> 5); row < n;
         row += gridDim.x * warps_per_block) {
        const unsigned k = labels[row];
        if (k >= c) {  // uniform over the warp
            if (lane == 0) {
                cos[row] = NAN;
                raise_error(error_record, ERR_COSINE_LABEL, row, k, c);
            }
            continue;
        }
        const float* z = features + size_t(row) * d;
        const float* wk = w + size_t(k) * d;
        double dot = 0.0, zz = 0.0, ww = 0.0;
        for (unsigned j = lane; j < d; j += 32) {
            const double a = z[j], b = wk[j];
            dot += a * b;
            zz += a * a;
            ww += b * b;
        }
        dot = warp_sum(dot);
        zz = warp_sum(zz);
        ww = warp_sum(ww);
        if (lane == 0) cos[row] = (zz == 0.0 || ww == 0.0) ? 0.0f : float(dot / (sqrt(zz) * sqrt(ww)));
    }
}

// Orders floats as unsigned integers (larger float -> larger key), so an atomicMax on
// (ordered logit << 32 | ~sample) picks the largest logit and, among equal logits, the earliest sample.
__device__ __forceinline__ unsigned ordered_bits(float v) {
    const unsigned u = __float_as_uint(v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// keys [c] (zeroed by the caller): per class, the best (true-class logit, earliest sample) of the batch.
KERNEL void cosmax_batch_best(const float* __restrict__ logits, const unsigned* __restrict__ labels,
                              unsigned long long* __restrict__ keys,
                              unsigned* __restrict__ error_record, unsigned n, unsigned c) {
    for (unsigned i = global_thread(); i < n; i += grid_threads()) {
        const unsigned y = labels[i];
        if (y >= c) {
            raise_error(error_record, ERR_COSMAX_LABEL, i, y, c);
            continue;
        }
        const unsigned long long key =
            (static_cast<unsigned long long>(ordered_bits(logits[size_t(i) * c + y])) << 32) |
            static_cast<unsigned long long>(~i);
        atomicMax(&keys[y], key);
    }
}

// Per class with a batch candidate: the table takes the candidate's logit and cosine when the logit is
// strictly larger than the table's (ties keep the earlier entry).
KERNEL void cosmax_merge(const unsigned long long* __restrict__ keys,
                         const float* __restrict__ logits, const float* __restrict__ cos,
                         float* __restrict__ table_logit, float* __restrict__ table_cos,
                         unsigned c) {
    for (unsigned k = global_thread(); k < c; k += grid_threads()) {
        const unsigned long long key = keys[k];
        if (key == 0) continue;  // no sample of this class in the batch
        const unsigned i = ~static_cast<unsigned>(key & 0xffffffffull);
        const float v = logits[size_t(i) * c + k];
        if (v > table_logit[k]) {
            table_logit[k] = v;
            table_cos[k] = cos[i];
        }
    }
}
