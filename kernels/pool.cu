// Max pooling (with argmax), global average pooling and the option-A ResNet shortcut.
#include "common.cuh"

// One thread per output of y [n, c, h_out, w_out]; argmax holds the flat index into x. Windows are
// clipped to the input (padding never wins) and scanned row-major; the first maximum wins.
KERNEL void max_pool_forward(const float* __restrict__ x, float* __restrict__ y,
                             unsigned* __restrict__ argmax, unsigned n, unsigned c, unsigned h,
                             unsigned w, unsigned k, unsigned stride, unsigned pad,
                             unsigned h_out, unsigned w_out) {
    const unsigned total = n * c * h_out * w_out;
    for (unsigned i = global_thread(); i < total; i += grid_threads()) {
        const unsigned ow = i % w_out;
        const unsigned oh = (i / w_out) % h_out;
        const unsigned plane = i / (w_out * h_out);
        const unsigned h0 = oh * stride > pad ? oh * stride - pad : 0;
        const unsigned h1 = min(oh * stride + k - pad, h);
        const unsigned w0 = ow * stride > pad ? ow * stride - pad : 0;
        const unsigned w1 = min(ow * stride + k - pad, w);
        const unsigned base = plane * h * w;
        unsigned best_idx = base + h0 * w + w0;
        float best = x[best_idx];
        for (unsigned ih = h0; ih < h1; ++ih)
            for (unsigned iw = w0; iw < w1; ++iw) {
                const float v = x[base + ih * w + iw];
                if (v > best) {
                    best = v;
                    best_idx = base + ih * w + iw;
                }
            }
        y[i] = best;
        argmax[i] = best_idx;
    }
}

// One thread per input of dx [n, c, h, w]: gathers dy from the windows that cover it and chose it
// (windows in row-major order, as a serial scatter would add them; no atomics).
KERNEL void max_pool_backward(const float* __restrict__ dy, const unsigned* __restrict__ argmax,
                              float* __restrict__ dx, unsigned n, unsigned c, unsigned h,
                              unsigned w, unsigned k, unsigned stride, unsigned pad,
                              unsigned h_out, unsigned w_out) {
    const unsigned total = n * c * h * w;
    for (unsigned i = global_thread(); i < total; i += grid_threads()) {
        const unsigned iw = i % w;
        const unsigned ih = (i / w) % h;
        const unsigned plane = i / (w * h);
        // Output rows whose window [oh * stride - pad, oh * stride - pad + k) holds ih.
        const unsigned oh_lo = ih + pad + 1 > k ? (ih + pad + 1 - k + stride - 1) / stride : 0;
        const unsigned oh_hi = min((ih + pad) / stride + 1, h_out);
        const unsigned ow_lo = iw + pad + 1 > k ? (iw + pad + 1 - k + stride - 1) / stride : 0;
        const unsigned ow_hi = min((iw + pad) / stride + 1, w_out);
        float acc = 0.0f;
        for (unsigned oh = oh_lo; oh < oh_hi; ++oh)
            for (unsigned ow = ow_lo; ow < ow_hi; ++ow) {
                const unsigned o = (plane * h_out + oh) * w_out + ow;
                if (argmax[o] == i) acc += dy[o];
            }
        dx[i] = acc;
    }
}

// y [rows] = mean of each row of x [rows, hw] (rows = n * c): one warp per row, summed in double.
KERNEL void global_avg_pool_forward(const float* __restrict__ x, float* __restrict__ y,
                                    unsigned rows, unsigned hw) {
    const unsigned lane = threadIdx.x & 31u;
    const unsigned warps_per_block = blockDim.x >> 5;
    for (unsigned row = blockIdx.x * warps_per_block + (threadIdx.x >> 5); row < rows;
         row += gridDim.x * warps_per_block) {
        double acc = 0.0;
        for (unsigned j = lane; j < hw; j += 32) acc += x[size_t(row) * hw + j];
        acc = warp_sum(acc);
        if (lane == 0) y[row] = float(acc / hw);
    }
}

// dx [rows, hw] = dy [rows] / hw
KERNEL void global_avg_pool_backward(const float* __restrict__ dy, float* __restrict__ dx,
                                     unsigned rows, unsigned hw) {
    const unsigned total = rows * hw;
    const float inv = 1.0f / float(hw);
    for (unsigned i = global_thread(); i < total; i += grid_threads()) dx[i] = dy[i / hw] * inv;
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
