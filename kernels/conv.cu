// Convolution glue around cuBLAS: im2col / col2im. The GEMMs themselves (forward, data gradient,
// per-image weight gradients) are cuBLAS calls issued by the Rust side; the per-image weight gradients
// are folded by `sum_rows` (reduce.cu).
//
// Layouts: x [n, c, h, w]; col [n, c * k * k, h_out * w_out] with row r = (ci * k + kh) * k + kw, so the
// rows of group g are the contiguous range [g * c_g * k * k, (g + 1) * c_g * k * k) and match the
// weight layout [c_out, c_in / groups, k, k].
#include "common.cuh"

// col [count, c * k * k, h_out * w_out] from images [first, first + count) of x. One thread per
// (image, channel, output position) writes that position's k * k column entries (as Caffe does):
// neighbouring threads read and write neighbouring addresses, and the index arithmetic is shared by
// the k * k entries.
KERNEL void im2col(const float* __restrict__ x, float* __restrict__ col, unsigned first,
                   unsigned count, unsigned c, unsigned h, unsigned w, unsigned k, unsigned stride,
                   unsigned pad, unsigned h_out, unsigned w_out) {
    const unsigned hw_out = h_out * w_out;
    const unsigned total = count * c * hw_out;
    for (unsigned i = global_thread(); i < total; i += grid_threads()) {
        const unsigned pos = i % hw_out;
        const unsigned ow = pos % w_out, oh = pos / w_out;
        const unsigned plane = i / hw_out;  // s * c + ci
        const float* xp = x + (size_t(first) * c + plane) * h * w;
        float* cp = col + size_t(plane) * k * k * hw_out + pos;
        const int h0 = int(oh * stride) - int(pad);
        const int w0 = int(ow * stride) - int(pad);
        for (unsigned kh = 0; kh < k; ++kh) {
            const int ih = h0 + int(kh);
            const bool row_in = ih >= 0 && ih < int(h);
            for (unsigned kw = 0; kw < k; ++kw) {
                const int iw = w0 + int(kw);
                cp[(kh * k + kw) * hw_out] =
                    row_in && iw >= 0 && iw < int(w) ? xp[unsigned(ih) * w + unsigned(iw)] : 0.0f;
            }
        }
    }
}

// Images [first, first + count) of dx [n, c, h, w] = sum of the col [count, c * k * k, h_out * w_out]
// entries that im2col copied from each input position (a gather, so no atomics and a fixed summation
// order: kh, then kw).
KERNEL void col2im(const float* __restrict__ col, float* __restrict__ x, unsigned first,
                   unsigned count, unsigned c, unsigned h, unsigned w, unsigned k, unsigned stride,
                   unsigned pad, unsigned h_out, unsigned w_out) {
    const unsigned hw_out = h_out * w_out;
    const unsigned rows = c * k * k;
    const unsigned total = count * c * h * w;
    for (unsigned i = global_thread(); i < total; i += grid_threads()) {
        const unsigned iw = i % w;
        const unsigned ih = (i / w) % h;
        const unsigned ci = (i / (w * h)) % c;
        const unsigned s = i / (w * h * c);
        const float* col_s = col + size_t(s) * rows * hw_out;
        float acc = 0.0f;
        for (unsigned kh = 0; kh < k; ++kh) {
            const int th = int(ih + pad) - int(kh);
            if (th < 0 || th % int(stride) != 0) continue;
            const unsigned oh = unsigned(th) / stride;
            if (oh >= h_out) continue;
            for (unsigned kw = 0; kw < k; ++kw) {
                const int tw = int(iw + pad) - int(kw);
                if (tw < 0 || tw % int(stride) != 0) continue;
                const unsigned ow = unsigned(tw) / stride;
                if (ow >= w_out) continue;
                acc += col_s[((ci * k + kh) * k + kw) * hw_out + oh * w_out + ow];
            }
        }
        x[size_t(first) * c * h * w + i] = acc;
    }
}
