// Shared by every kernel file; compiled by nvcc for the GPU and by the host C++ compiler (through
// emu/cuda_emu.h) for the emulator.
//
// Rules that keep a kernel inside the emulatable subset and bindable from Rust:
// - declare kernels as `KERNEL void name(params)`: build.rs parses these signatures and generates the
//   typed Rust launcher (GPU and emulator) from them, so each signature is written exactly once;
// - parameter types: `const float*`, `float*`, `const unsigned*`, `unsigned*`,
//   `const unsigned long long*`, `unsigned long long*` (optionally `__restrict__`), `float`, `int`,
//   `unsigned`, `unsigned long long`; a pointer whose name ends in `_opt` may be null (Rust: `Option`);
// - blocks are a multiple of 32 threads when warp collectives are used (full-mask shuffles);
// - no early `return` before a `__syncthreads()` (the emulator reports it as a deadlock);
// - no tensor-core, inline-PTX, texture or cooperative-groups features.
#pragma once

#if defined(__CUDACC__)
#define KERNEL extern "C" __global__
#define DYNAMIC_SMEM(type, name) extern __shared__ type name[]
#else
#define KERNEL static
#define DYNAMIC_SMEM(type, name) type* name = static_cast<type*>(::emu::dynamic_smem())
#endif

#define FULL_MASK 0xffffffffu

// Bits of the backend's device-side error word, set by kernels that meet an out-of-range index (they
// write NaN / skip instead of reading out of bounds). Keep in sync with `INDEX_ERRORS` in
// src/backend/cuda/mod.rs.
#define ERR_LOSS_TARGET 1u
#define ERR_COSINE_LABEL 2u
#define ERR_COSMAX_LABEL 4u
#define ERR_GATHER_INDEX 8u
#define ERR_MIXUP_PERM 16u

__device__ __forceinline__ void raise_error(unsigned* error_word, unsigned bit) {
    atomicOr(error_word, bit);
}

// Index of this thread in a 1-D grid, and the grid-stride step.
__device__ __forceinline__ unsigned global_thread() { return blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ unsigned grid_threads() { return gridDim.x * blockDim.x; }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1)
        v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    return v;
}

// Sum over a 1-D block (blockDim.x a multiple of 32, at most 1024); every thread gets the result. The
// order of additions is fixed by the block size, so results are reproducible run to run.
template <typename T>
__device__ T block_sum(T v) {
    __shared__ T partial[32];
    __shared__ T total;
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        T t = lane < (blockDim.x >> 5) ? partial[lane] : T(0);
        t = warp_sum(t);
        if (lane == 0) total = t;
    }
    __syncthreads();
    const T result = total;
    __syncthreads();  // `partial` and `total` may be reused by the next call
    return result;
}

__device__ float block_max(float v) {
    __shared__ float partial[32];
    __shared__ float total;
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    v = warp_max(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float t = lane < (blockDim.x >> 5) ? partial[lane] : -INFINITY;
        t = warp_max(t);
        if (lane == 0) total = t;
    }
    __syncthreads();
    const float result = total;
    __syncthreads();
    return result;
}

// (value, index) maximum over a 1-D block: the largest value, the smallest index among equals. Each
// thread passes its own candidate (index 0xffffffff for none); every thread gets the result.
__device__ void block_argmax(float& value, unsigned& index) {
    __shared__ float part_v[32];
    __shared__ unsigned part_i[32];
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float v = __shfl_xor_sync(FULL_MASK, value, offset);
        const unsigned i = __shfl_xor_sync(FULL_MASK, index, offset);
        if (v > value || (v == value && i < index)) {
            value = v;
            index = i;
        }
    }
    if (lane == 0) {
        part_v[warp] = value;
        part_i[warp] = index;
    }
    __syncthreads();
    if (warp == 0) {
        float v = lane < (blockDim.x >> 5) ? part_v[lane] : -INFINITY;
        unsigned i = lane < (blockDim.x >> 5) ? part_i[lane] : 0xffffffffu;
        for (int offset = 16; offset > 0; offset >>= 1) {
            const float ov = __shfl_xor_sync(FULL_MASK, v, offset);
            const unsigned oi = __shfl_xor_sync(FULL_MASK, i, offset);
            if (ov > v || (ov == v && oi < i)) {
                v = ov;
                i = oi;
            }
        }
        if (lane == 0) {
            part_v[0] = v;
            part_i[0] = i;
        }
    }
    __syncthreads();
    value = part_v[0];
    index = part_i[0];
    __syncthreads();
}
