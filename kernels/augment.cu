// The GPU-side data path: normalised augmented views of a batch of CIFAR-family images, built from
// the u8 dataset resident on the device and one packed parameter row per sample (layout:
// src/backend/augment_params.rs). One block per image; the image lives in shared memory between
// ops (two u8 buffers swapped after each op, one f32 plane set for separable passes).
//
// Every op mirrors its Rust twin in src/augment/ops.rs with the same arithmetic in the same order:
// float products and sums go through the `*_rn` helpers so that nvcc cannot fuse them into FMAs
// (Rust never does), divisions are IEEE (nvcc's default -prec-div), and the transcendental values
// (blur taps, rotation sin/cos) come precomputed from the host. The result is therefore the host's
// bit for bit, which tests/device_augment.rs checks op by op and level by level.
#include "common.cuh"

#if !defined(__CUDACC__)
// The emulator's host compiler must not contract a * b + c either (GCC does by default where the
// target has FMA).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#endif

// The packed row layout (`P_*`, `GEOMETRY_*`, `JITTER_*`, `AUTO_*`, `PARAM_WORDS`) and the scratch size
// come from the generated ltrain_abi.cuh (src/backend/abi.rs).

typedef unsigned char u8;

__device__ __forceinline__ float mul_rn(float a, float b) {
#if defined(__CUDACC__)
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}
__device__ __forceinline__ float add_rn(float a, float b) {
#if defined(__CUDACC__)
    return __fadd_rn(a, b);
#else
    return a + b;
#endif
}
__device__ __forceinline__ float sub_rn(float a, float b) {
#if defined(__CUDACC__)
    return __fsub_rn(a, b);
#else
    return a - b;
#endif
}

// ops.rs `truncate_u8` and `round_u8`.
__device__ __forceinline__ u8 truncate_u8(float v) {
    return static_cast<u8>(static_cast<int>(fminf(fmaxf(v, 0.0f), 255.0f)));
}
__device__ __forceinline__ u8 round_u8(float v) {
    return static_cast<u8>(static_cast<int>(fminf(fmaxf(floorf(add_rn(v, 0.5f)), 0.0f), 255.0f)));
}

// ops.rs `luma`: ITU-R 601-2, exact integer rounding.
__device__ __forceinline__ unsigned luma(unsigned r, unsigned g, unsigned b) {
    return (r * 19595u + g * 38470u + b * 7471u + 0x8000u) >> 16;
}

// ops.rs `blend`: factor * v + (1 - factor) * degenerate, clamped and truncated.
__device__ __forceinline__ u8 blend(float factor, unsigned v, float degenerate) {
    return truncate_u8(add_rn(mul_rn(factor, static_cast<float>(v)), mul_rn(sub_rn(1.0f, factor), degenerate)));
}

// ops.rs `reflect` (torch "reflect" padding).
__device__ __forceinline__ int reflect(int i, int len) {
    if (len == 1) return 0;
    const int period = 2 * (len - 1);
    int m = i % period;
    if (m < 0) m += period;
    return m < len ? m : period - m;
}

// One 1-D bilinear tap set of ops.rs `bilinear_taps` for output sample `o`: first index and count;
// `bilinear_weight` then gives tap `j`'s normalised weight (f64 arithmetic as on the host).
struct Taps {
    int lo, hi;
    double center, support, total;
};

__device__ Taps bilinear_taps(int in_len, int out_len, int o) {
    Taps t;
    const double scale = static_cast<double>(in_len) / static_cast<double>(out_len);
    t.support = fmax(scale, 1.0);
    t.center = (static_cast<double>(o) + 0.5) * scale;
    t.lo = static_cast<int>(fmax(floor(t.center - t.support + 0.5), 0.0));
    t.hi = min(static_cast<int>(floor(t.center + t.support + 0.5)), in_len);
    t.total = 0.0;
    for (int j = t.lo; j < t.hi; ++j)
        t.total += fmax(1.0 - fabs((static_cast<double>(j) + 0.5 - t.center) / t.support), 0.0);
    return t;
}

__device__ __forceinline__ float bilinear_weight(const Taps& t, int j) {
    const double raw = fmax(1.0 - fabs((static_cast<double>(j) + 0.5 - t.center) / t.support), 0.0);
    return static_cast<float>(raw / t.total);
}

// Per-block working state: two u8 images [3, h, w] (`src` is current), the f32 planes, small
// integer scratch (histograms, reductions).
struct Work {
    u8* src;
    u8* dst;
    float* planes;      // [3, h, w]
    unsigned* scratch;  // [AUGMENT_SCRATCH_WORDS]
    int h, w, hw;
};

__device__ __forceinline__ void swap_buffers(Work& k) {
    __syncthreads();
    u8* t = k.src;
    k.src = k.dst;
    k.dst = t;
}

// ---- geometry (fused with the flip) ------------------------------------------------------------

// Pad-crop (identity when pad = top = left = 0) and flip, from the dataset image into `dst`.
__device__ void load_pad_crop(Work& k, const u8* image, int pad, int top, int left, bool flip) {
    for (int i = threadIdx.x; i < 3 * k.hw; i += blockDim.x) {
        const int x = i % k.w, y = (i / k.w) % k.h, ch = i / k.hw;
        const int xs = flip ? k.w - 1 - x : x;
        const int sy = y + top - pad, sx = xs + left - pad;
        u8 v = 0;
        if (sy >= 0 && sy < k.h && sx >= 0 && sx < k.w) v = image[(ch * k.h + sy) * k.w + sx];
        k.dst[i] = v;
    }
    swap_buffers(k);
}

// ops.rs `resized_crop` (crop, bilinear resize to h x w with the host's taps) and flip.
__device__ void load_resized_crop(Work& k, const u8* image, int top, int left, int ch_, int cw_,
                                  bool flip) {
    if (ch_ == k.h && cw_ == k.w) {  // resize_bilinear returns the crop itself
        load_pad_crop(k, image, 0, top, left, flip);
        return;
    }
    // Horizontal pass: planes[c][y][x] for the crop's rows y < ch_.
    for (int i = threadIdx.x; i < 3 * ch_ * k.w; i += blockDim.x) {
        const int x = i % k.w, y = (i / k.w) % ch_, c = i / (k.w * ch_);
        const Taps t = bilinear_taps(cw_, k.w, x);
        const u8* row = image + (c * k.h + top + y) * k.w + left;
        float acc = 0.0f;
        for (int j = t.lo; j < t.hi; ++j)
            acc = add_rn(acc, mul_rn(bilinear_weight(t, j), static_cast<float>(row[j])));
        k.planes[(c * ch_ + y) * k.w + x] = acc;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 3 * k.hw; i += blockDim.x) {
        const int x = i % k.w, y = (i / k.w) % k.h, c = i / k.hw;
        const Taps t = bilinear_taps(ch_, k.h, y);
        float acc = 0.0f;
        for (int j = t.lo; j < t.hi; ++j)
            acc = add_rn(acc, mul_rn(bilinear_weight(t, j), k.planes[(c * ch_ + j) * k.w + x]));
        k.dst[(c * k.h + y) * k.w + (flip ? k.w - 1 - x : x)] = round_u8(acc);
    }
    swap_buffers(k);
}

// ---- colour ------------------------------------------------------------------------------------

__device__ void brightness(Work& k, float factor) {
    for (int i = threadIdx.x; i < 3 * k.hw; i += blockDim.x) k.dst[i] = blend(factor, k.src[i], 0.0f);
    swap_buffers(k);
}

// Blend with the image's mean luma (ops.rs `contrast`: integer sum, one f32 division).
__device__ void contrast(Work& k, float factor) {
    unsigned* sum = k.scratch;
    if (threadIdx.x == 0) *sum = 0;
    __syncthreads();
    unsigned local = 0;
    for (int p = threadIdx.x; p < k.hw; p += blockDim.x)
        local += luma(k.src[p], k.src[k.hw + p], k.src[2 * k.hw + p]);
    atomicAdd(sum, local);
    __syncthreads();
    const float mean = static_cast<float>(*sum) / static_cast<float>(k.hw);
    for (int i = threadIdx.x; i < 3 * k.hw; i += blockDim.x) k.dst[i] = blend(factor, k.src[i], mean);
    swap_buffers(k);
}

// Blend with each pixel's luma (ops.rs `saturation`, AutoAugment Color).
__device__ void saturation(Work& k, float factor) {
    for (int p = threadIdx.x; p < k.hw; p += blockDim.x) {
        const unsigned r = k.src[p], g = k.src[k.hw + p], b = k.src[2 * k.hw + p];
        const float gray = static_cast<float>(luma(r, g, b));
        k.dst[p] = blend(factor, r, gray);
        k.dst[k.hw + p] = blend(factor, g, gray);
        k.dst[2 * k.hw + p] = blend(factor, b, gray);
    }
    swap_buffers(k);
}

// f32 `rem_euclid(1.0)` as Rust computes it.
__device__ __forceinline__ float rem_euclid_1(float x) {
    const float r = fmodf(x, 1.0f);
    return r < 0.0f ? add_rn(r, 1.0f) : r;
}

// ops.rs `hue`: RGB -> HSV, rotate, HSV -> RGB (torchvision's formulas), rounded.
__device__ void hue(Work& k, float shift) {
    for (int p = threadIdx.x; p < k.hw; p += blockDim.x) {
        const float r = static_cast<float>(k.src[p]) / 255.0f;
        const float g = static_cast<float>(k.src[k.hw + p]) / 255.0f;
        const float b = static_cast<float>(k.src[2 * k.hw + p]) / 255.0f;
        const float maxc = fmaxf(fmaxf(r, g), b);
        const float minc = fminf(fminf(r, g), b);
        const bool equal = maxc == minc;
        const float cr = sub_rn(maxc, minc);
        const float s = cr / (equal ? 1.0f : maxc);
        const float cr_divisor = equal ? 1.0f : cr;
        const float rc = sub_rn(maxc, r) / cr_divisor;
        const float gc = sub_rn(maxc, g) / cr_divisor;
        const float bc = sub_rn(maxc, b) / cr_divisor;
        float h6;
        if (maxc == r)
            h6 = sub_rn(bc, gc);
        else if (maxc == g)
            h6 = sub_rn(add_rn(2.0f, rc), bc);
        else
            h6 = sub_rn(add_rn(4.0f, gc), rc);
        float h = rem_euclid_1(add_rn(h6 / 6.0f, 1.0f));
        h = rem_euclid_1(add_rn(h, shift));
        const float v = maxc;
        const float h6b = mul_rn(h, 6.0f);
        const float sector_f = floorf(h6b);
        const float f = sub_rn(h6b, sector_f);
        int sector = static_cast<int>(sector_f) % 6;
        if (sector < 0) sector += 6;
        const float pp = fminf(fmaxf(mul_rn(v, sub_rn(1.0f, s)), 0.0f), 1.0f);
        const float q = fminf(fmaxf(mul_rn(v, sub_rn(1.0f, mul_rn(s, f))), 0.0f), 1.0f);
        const float t = fminf(fmaxf(mul_rn(v, sub_rn(1.0f, mul_rn(s, sub_rn(1.0f, f)))), 0.0f), 1.0f);
        float r2, g2, b2;
        switch (sector) {
            case 0: r2 = v; g2 = t; b2 = pp; break;
            case 1: r2 = q; g2 = v; b2 = pp; break;
            case 2: r2 = pp; g2 = v; b2 = t; break;
            case 3: r2 = pp; g2 = q; b2 = v; break;
            case 4: r2 = t; g2 = pp; b2 = v; break;
            default: r2 = v; g2 = pp; b2 = q; break;
        }
        k.dst[p] = round_u8(mul_rn(r2, 255.0f));
        k.dst[k.hw + p] = round_u8(mul_rn(g2, 255.0f));
        k.dst[2 * k.hw + p] = round_u8(mul_rn(b2, 255.0f));
    }
    swap_buffers(k);
}

__device__ void grayscale(Work& k) {
    for (int p = threadIdx.x; p < k.hw; p += blockDim.x) {
        const u8 gray = static_cast<u8>(luma(k.src[p], k.src[k.hw + p], k.src[2 * k.hw + p]));
        k.dst[p] = gray;
        k.dst[k.hw + p] = gray;
        k.dst[2 * k.hw + p] = gray;
    }
    swap_buffers(k);
}

// ops.rs `gaussian_blur`: separable with the host's taps, reflect padding, rounded.
__device__ void gaussian_blur(Work& k, int size, const float* taps) {
    const int half = size / 2;
    for (int i = threadIdx.x; i < 3 * k.hw; i += blockDim.x) {
        const int x = i % k.w, row = i / k.w;  // row = c * h + y
        float acc = 0.0f;
        for (int t = 0; t < size; ++t)
            acc = add_rn(acc, mul_rn(taps[t], static_cast<float>(k.src[row * k.w + reflect(x + t - half, k.w)])));
        k.planes[i] = acc;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 3 * k.hw; i += blockDim.x) {
        const int x = i % k.w, y = (i / k.w) % k.h, c = i / k.hw;
        float acc = 0.0f;
        for (int t = 0; t < size; ++t)
            acc = add_rn(acc, mul_rn(taps[t], k.planes[(c * k.h + reflect(y + t - half, k.h)) * k.w + x]));
        k.dst[i] = round_u8(acc);
    }
    swap_buffers(k);
}

// ---- AutoAugment -------------------------------------------------------------------------------

// ops.rs `affine_nearest`: output (x, y) samples floor(inverse * (p - origin) + origin), fill 0.
__device__ void affine_nearest(Work& k, float a, float b, float c, float d, float e, float f,
                               float ox, float oy) {
    for (int p = threadIdx.x; p < k.hw; p += blockDim.x) {
        const int x = p % k.w, y = p / k.w;
        const float px = sub_rn(add_rn(static_cast<float>(x), 0.5f), ox);
        const float py = sub_rn(add_rn(static_cast<float>(y), 0.5f), oy);
        const float sx = floorf(add_rn(add_rn(add_rn(mul_rn(a, px), mul_rn(b, py)), c), ox));
        const float sy = floorf(add_rn(add_rn(add_rn(mul_rn(d, px), mul_rn(e, py)), f), oy));
        const bool inside = !(sx < 0.0f || sy < 0.0f || sx >= static_cast<float>(k.w) ||
                              sy >= static_cast<float>(k.h));
        const int src = inside ? static_cast<int>(sy) * k.w + static_cast<int>(sx) : 0;
        for (int ch = 0; ch < 3; ++ch) k.dst[ch * k.hw + p] = inside ? k.src[ch * k.hw + src] : 0;
    }
    swap_buffers(k);
}

// ops.rs `sharpness`: blend with the 3x3 [1 1 1; 1 5 1; 1 1 1] / 13 smoothing (borders kept).
__device__ void sharpness(Work& k, float factor) {
    for (int i = threadIdx.x; i < 3 * k.hw; i += blockDim.x) {
        const int x = i % k.w, y = (i / k.w) % k.h, c = i / k.hw;
        const u8* plane = k.src + c * k.hw;
        u8 smooth = k.src[i];
        if (k.h > 2 && k.w > 2 && y > 0 && y < k.h - 1 && x > 0 && x < k.w - 1) {
            unsigned sum = 4u * plane[y * k.w + x];
            for (int dy = -1; dy <= 1; ++dy)
                for (int dx = -1; dx <= 1; ++dx) sum += plane[(y + dy) * k.w + x + dx];
            smooth = round_u8(static_cast<float>(sum) / 13.0f);
        }
        k.dst[i] = blend(factor, k.src[i], static_cast<float>(smooth));
    }
    swap_buffers(k);
}

__device__ void posterize(Work& k, unsigned bits) {
    const unsigned mask = bits == 0 ? 0u : (0xFFu << (8 - min(bits, 8u))) & 0xFFu;
    for (int i = threadIdx.x; i < 3 * k.hw; i += blockDim.x) k.dst[i] = static_cast<u8>(k.src[i] & mask);
    swap_buffers(k);
}

__device__ void solarize(Work& k, float threshold) {
    for (int i = threadIdx.x; i < 3 * k.hw; i += blockDim.x) {
        const u8 v = k.src[i];
        k.dst[i] = static_cast<float>(v) >= threshold ? static_cast<u8>(255 - v) : v;
    }
    swap_buffers(k);
}

__device__ void invert(Work& k) {
    for (int i = threadIdx.x; i < 3 * k.hw; i += blockDim.x) k.dst[i] = static_cast<u8>(255 - k.src[i]);
    swap_buffers(k);
}

// ops.rs `autocontrast`: per channel (v - min) * 255 / (max - min); constant channels unchanged.
__device__ void autocontrast(Work& k) {
    unsigned* lo = k.scratch;      // [3]
    unsigned* hi = k.scratch + 3;  // [3]
    if (threadIdx.x < 3) {
        lo[threadIdx.x] = 255;
        hi[threadIdx.x] = 0;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 3 * k.hw; i += blockDim.x) {
        atomicMin(&lo[i / k.hw], static_cast<unsigned>(k.src[i]));
        atomicMax(&hi[i / k.hw], static_cast<unsigned>(k.src[i]));
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 3 * k.hw; i += blockDim.x) {
        const int c = i / k.hw;
        const unsigned v = k.src[i];
        k.dst[i] = hi[c] == lo[c] ? static_cast<u8>(v)
                                  : static_cast<u8>((v - lo[c]) * 255u / (hi[c] - lo[c]));
    }
    swap_buffers(k);
}

// ops.rs `equalize` (PIL's ImageOps.equalize): per-channel histogram in shared memory, then the LUT.
__device__ void equalize(Work& k) {
    unsigned* hist = k.scratch;  // [3, 256], becomes the LUT
    for (int i = threadIdx.x; i < 3 * 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < 3 * k.hw; i += blockDim.x)
        atomicAdd(&hist[(i / k.hw) * 256 + k.src[i]], 1u);
    __syncthreads();
    if (threadIdx.x < 3) {
        unsigned* h = hist + threadIdx.x * 256;
        int last = 0;
        for (int i = 255; i >= 0; --i)
            if (h[i] > 0) {
                last = i;
                break;
            }
        const unsigned step = (static_cast<unsigned>(k.hw) - h[last]) / 255u;
        unsigned acc = step / 2;
        for (int i = 0; i < 256; ++i) {
            const unsigned count = h[i];
            h[i] = step == 0 ? static_cast<unsigned>(i) : min(acc / step, 255u);
            acc += count;
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 3 * k.hw; i += blockDim.x)
        k.dst[i] = static_cast<u8>(hist[(i / k.hw) * 256 + k.src[i]]);
    swap_buffers(k);
}

// autoaugment.rs `apply_auto_op` for one packed op (kind, signed magnitude, sin, cos).
__device__ void auto_op(Work& k, const float* op) {
    const int kind = static_cast<int>(op[0]);
    const float m = op[1];
    switch (kind) {
        case AUTO_SHEAR_X: affine_nearest(k, 1.0f, m, 0.0f, 0.0f, 1.0f, 0.0f, 0.0f, 0.0f); break;
        case AUTO_SHEAR_Y: affine_nearest(k, 1.0f, 0.0f, 0.0f, m, 1.0f, 0.0f, 0.0f, 0.0f); break;
        case AUTO_TRANSLATE_X:
            affine_nearest(k, 1.0f, 0.0f, static_cast<float>(-static_cast<int>(truncf(m))), 0.0f, 1.0f,
                           0.0f, 0.0f, 0.0f);
            break;
        case AUTO_TRANSLATE_Y:
            affine_nearest(k, 1.0f, 0.0f, 0.0f, 0.0f, 1.0f,
                           static_cast<float>(-static_cast<int>(truncf(m))), 0.0f, 0.0f);
            break;
        case AUTO_ROTATE: {
            const float sin_a = op[2], cos_a = op[3];
            affine_nearest(k, cos_a, -sin_a, 0.0f, sin_a, cos_a, 0.0f, mul_rn(static_cast<float>(k.w), 0.5f),
                           mul_rn(static_cast<float>(k.h), 0.5f));
            break;
        }
        case AUTO_COLOR: saturation(k, add_rn(1.0f, m)); break;
        case AUTO_POSTERIZE: posterize(k, m <= 0.0f ? 0u : static_cast<unsigned>(m)); break;
        case AUTO_SOLARIZE: solarize(k, m); break;
        case AUTO_CONTRAST: contrast(k, add_rn(1.0f, m)); break;
        case AUTO_SHARPNESS: sharpness(k, add_rn(1.0f, m)); break;
        case AUTO_BRIGHTNESS: brightness(k, add_rn(1.0f, m)); break;
        case AUTO_AUTOCONTRAST: autocontrast(k); break;
        case AUTO_EQUALIZE: equalize(k); break;
        case AUTO_INVERT: invert(k); break;
        default: break;  // validated by the caller
    }
}

// The first word of a packed row that this kernel cannot apply safely (bounds of every read), or -1.
__device__ int malformed_word(const float* p, int h, int w) {
    const int geometry = static_cast<int>(p[P_GEOMETRY]);
    if (geometry == GEOMETRY_RESIZED_CROP) {
        const float top = p[1], left = p[2], ch = p[3], cw = p[4];
        if (!(top >= 0.0f)) return 1;
        if (!(left >= 0.0f)) return 2;
        if (!(ch >= 1.0f && top + ch <= static_cast<float>(h))) return 3;
        if (!(cw >= 1.0f && left + cw <= static_cast<float>(w))) return 4;
    } else if (geometry != GEOMETRY_IDENTITY && geometry != GEOMETRY_PAD_CROP) {
        return P_GEOMETRY;
    }
    const float blur = p[P_BLUR_SIZE];
    if (!(blur >= 0.0f && blur <= MAX_BLUR_TAPS)) return P_BLUR_SIZE;
    for (int slot = P_AUTO0; slot <= P_AUTO1; slot += P_AUTO1 - P_AUTO0)
        if (!(p[slot] < 0.0f || p[slot] <= AUTO_INVERT)) return slot;
    return -1;
}

// views [n, 3, h, w] f32 = normalise(augment(images[indices[s]], params[s])).
// `images` is the u8 dataset [dataset_len, 3, h, w] packed four bytes per word; `params_opt`
// [n, param_words] (null: the plain transform). Dynamic shared memory: see `augment_smem_bytes` in
// src/backend/cuda/augment.rs. Grid-stride over samples, one block per sample.
KERNEL void augment_batch(const unsigned* __restrict__ images, const unsigned* __restrict__ indices,
                          const float* __restrict__ params_opt, float* __restrict__ out,
                          unsigned* __restrict__ error_record, unsigned n, unsigned h, unsigned w,
                          unsigned dataset_len, unsigned param_words, float scale_r, float scale_g,
                          float scale_b, float shift_r, float shift_g, float shift_b) {
    DYNAMIC_SMEM(float, smem);
    const int hw = static_cast<int>(h * w);
    Work k;
    k.h = static_cast<int>(h);
    k.w = static_cast<int>(w);
    k.hw = hw;
    k.planes = smem;
    k.scratch = reinterpret_cast<unsigned*>(smem + 3 * hw);
    k.src = reinterpret_cast<u8*>(k.scratch + AUGMENT_SCRATCH_WORDS);
    k.dst = k.src + 3 * hw;
    const u8* dataset = reinterpret_cast<const u8*>(images);
    const float scale[3] = {scale_r, scale_g, scale_b};
    const float shift[3] = {shift_r, shift_g, shift_b};

    for (unsigned s = blockIdx.x; s < n; s += gridDim.x) {
        const unsigned index = indices[s];
        float row[PARAM_WORDS];
        for (int i = 0; i < PARAM_WORDS; ++i) row[i] = 0.0f;
        row[P_AUTO0] = -1.0f;
        row[P_AUTO1] = -1.0f;
        if (params_opt != nullptr)
            for (unsigned i = 0; i < param_words && i < PARAM_WORDS; ++i) row[i] = params_opt[size_t(s) * param_words + i];
        const int bad_word = malformed_word(row, k.h, k.w);
        const bool ok = index < dataset_len && bad_word < 0;
        // Block-uniform control flow from here: every branch depends on `row` and `ok` only.
        if (ok) {
            const u8* image = dataset + size_t(index) * 3 * hw;
            const bool flip = row[P_FLIP] != 0.0f;
            if (static_cast<int>(row[P_GEOMETRY]) == GEOMETRY_RESIZED_CROP)
                load_resized_crop(k, image, static_cast<int>(row[1]), static_cast<int>(row[2]),
                                  static_cast<int>(row[3]), static_cast<int>(row[4]), flip);
            else if (static_cast<int>(row[P_GEOMETRY]) == GEOMETRY_PAD_CROP)
                load_pad_crop(k, image, static_cast<int>(row[1]), static_cast<int>(row[2]),
                              static_cast<int>(row[3]), flip);
            else
                load_pad_crop(k, image, 0, 0, 0, flip);
            if (row[P_JITTER_ON] != 0.0f) {
                for (int j = 0; j < 4; ++j) {
                    switch (static_cast<int>(row[P_JITTER_ORDER + j])) {
                        case JITTER_BRIGHTNESS: brightness(k, row[P_BRIGHTNESS]); break;
                        case JITTER_CONTRAST: contrast(k, row[P_CONTRAST]); break;
                        case JITTER_SATURATION: saturation(k, row[P_SATURATION]); break;
                        default:  // JITTER_HUE (the host reads any larger code as hue too)
                            if (row[P_HUE_ON] != 0.0f) hue(k, row[P_HUE]);
                            break;
                    }
                }
            }
            if (row[P_GRAYSCALE] != 0.0f) grayscale(k);
            const int blur = static_cast<int>(row[P_BLUR_SIZE]);
            if (blur > 0) gaussian_blur(k, blur, row + P_BLUR_TAPS);
            if (row[P_AUTO0] >= 0.0f) auto_op(k, row + P_AUTO0);
            if (row[P_AUTO1] >= 0.0f) auto_op(k, row + P_AUTO1);
        } else if (threadIdx.x == 0) {
            if (index >= dataset_len)
                raise_error(error_record, ERR_AUGMENT_INDEX, s, index, dataset_len);
            else
                raise_error(error_record, ERR_AUGMENT_PARAMS, s, static_cast<unsigned>(bad_word),
                            __float_as_uint(row[bad_word]));
        }
        float* view = out + size_t(s) * 3 * hw;
        for (int i = threadIdx.x; i < 3 * hw; i += blockDim.x) {
            const int c = i / hw;
            view[i] = ok ? sub_rn(mul_rn(static_cast<float>(k.src[i]), scale[c]), shift[c]) : NAN;
        }
        __syncthreads();  // `src` is rewritten by the next sample
    }
}
