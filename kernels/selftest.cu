// Kernels that exercise the emulator itself (and, on a GPU, the same paths for comparison): a
// barrier-dependent reduction, a warp-shuffle reduction, a ballot, an atomic histogram, the
// tensor-core and cp.async wrappers of mma.cuh, and four deliberately broken kernels that only the
// emulator runs (it must expose them, not hide them).
#include "common.cuh"
#include "mma.cuh"

// out[0] = sum of x [n]: one block, classic shared-memory tree (blockDim.x a power of two <= 1024).
KERNEL void __launch_bounds__(1024)
    selftest_block_tree_sum(const float* __restrict__ x, float* __restrict__ out, unsigned n) {
    STATIC_SMEM(float, s, [1024]);
    float acc = 0.0f;
    for (unsigned i = threadIdx.x; i < n; i += blockDim.x) acc += x[i];
    s[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[0] = s[0];
}

// The same tree without its barriers: a data race. On the emulator thread 0 runs to completion before
// the others write their partial sums, so the result is wrong; never launched on a GPU.
KERNEL void __launch_bounds__(1024)
    selftest_block_tree_sum_racy(const float* __restrict__ x, float* __restrict__ out, unsigned n) {
    STATIC_SMEM(float, s, [1024]);
    float acc = 0.0f;
    for (unsigned i = threadIdx.x; i < n; i += blockDim.x) acc += x[i];
    s[threadIdx.x] = acc;
    for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2)
        if (threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
    if (threadIdx.x == 0) out[0] = s[0];
}

// out[w] = sum of the 32 values of global warp w (x [32 * warps]) by __shfl_down_sync.
KERNEL void selftest_warp_sum(const float* __restrict__ x, float* __restrict__ out, unsigned n) {
    const unsigned i = global_thread();
    float v = i < n ? x[i] : 0.0f;
    for (unsigned offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(FULL_MASK, v, offset);
    if ((threadIdx.x & 31u) == 0 && i < n) out[i / 32] = v;
}

// out[w] = ballot of (x > 0) over global warp w.
KERNEL void selftest_ballot(const float* __restrict__ x, unsigned* __restrict__ out, unsigned n) {
    const unsigned i = global_thread();
    const unsigned ballot = __ballot_sync(FULL_MASK, i < n && x[i] > 0.0f);
    if ((threadIdx.x & 31u) == 0 && i < n) out[i / 32] = ballot;
}

// bins[v % n_bins] += 1 for every v of values [n], with atomics from many blocks.
KERNEL void selftest_histogram(const unsigned* __restrict__ values, unsigned* __restrict__ bins,
                               unsigned n, unsigned n_bins) {
    for (unsigned i = global_thread(); i < n; i += grid_threads()) atomicAdd(&bins[values[i] % n_bins], 1u);
}

// Thread 0 leaves before a barrier the others wait at: a deadlock the emulator must report. Never
// launched on a GPU.
KERNEL void selftest_barrier_deadlock(float* __restrict__ out) {
    if (threadIdx.x == 0) return;
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}

// Only block 0 writes its shared memory; every block then reads it back into out [grid * block]:
// the other blocks read shared memory nobody wrote, which the emulator's poisoning must expose
// (blocks share one copy on the emulator, so without it they would read block 0's values). Never
// launched on a GPU.
KERNEL void selftest_unwritten_shared(unsigned* __restrict__ out) {
    STATIC_SMEM(unsigned, s, [256]);
    if (blockIdx.x == 0) s[threadIdx.x] = threadIdx.x;
    __syncthreads();
    out[global_thread()] = s[threadIdx.x];
}

// Does nothing; probes launch configurations (limits).
KERNEL void __launch_bounds__(1024) selftest_noop(float* __restrict__ out) {
    if (global_thread() == 0 && blockIdx.y == 0 && blockIdx.z == 0) out[0] = 1.0f;
}

// ---- tensor cores and cp.async (mma.cuh): one warp, registers in and out in register order ----

// One m16n8k8 tf32 mma: lane l's registers are a_regs[4l..4l+3], b_regs[2l..2l+1], c_regs[4l..4l+3]
// (raw bits: no rounding here); its d goes to d_regs[4l..4l+3].
KERNEL void selftest_mma_tf32(const unsigned* __restrict__ a_regs,
                              const unsigned* __restrict__ b_regs, const float* __restrict__ c_regs,
                              float* __restrict__ d_regs) {
    const unsigned lane = threadIdx.x & 31u;
    unsigned a[4], b[2];
    float c[4], d[4];
    for (unsigned i = 0; i < 4; ++i) a[i] = a_regs[lane * 4 + i];
    for (unsigned i = 0; i < 2; ++i) b[i] = b_regs[lane * 2 + i];
    for (unsigned i = 0; i < 4; ++i) c[i] = c_regs[lane * 4 + i];
    mma_m16n8k8_tf32(d, a, b, c);
    for (unsigned i = 0; i < 4; ++i) d_regs[lane * 4 + i] = d[i];
}

// The same for one m16n8k16 bf16 mma (two bf16 per a and b register).
KERNEL void selftest_mma_bf16(const unsigned* __restrict__ a_regs,
                              const unsigned* __restrict__ b_regs, const float* __restrict__ c_regs,
                              float* __restrict__ d_regs) {
    const unsigned lane = threadIdx.x & 31u;
    unsigned a[4], b[2];
    float c[4], d[4];
    for (unsigned i = 0; i < 4; ++i) a[i] = a_regs[lane * 4 + i];
    for (unsigned i = 0; i < 2; ++i) b[i] = b_regs[lane * 2 + i];
    for (unsigned i = 0; i < 4; ++i) c[i] = c_regs[lane * 4 + i];
    mma_m16n8k16_bf16(d, a, b, c);
    for (unsigned i = 0; i < 4; ++i) d_regs[lane * 4 + i] = d[i];
}

// out[i] = to_tf32(x[i]) (cvt.rna.tf32.f32).
KERNEL void selftest_to_tf32(const float* __restrict__ x, unsigned* __restrict__ out, unsigned n) {
    for (unsigned i = global_thread(); i < n; i += grid_threads()) out[i] = to_tf32(x[i]);
}

// ldmatrix of `matrices` (1, 2 or 4) 8x8 b16 matrices, `.trans` if `trans`, from a shared copy of
// tile [32 rows of 16 bytes] (dynamic shared memory, 512 bytes): lane l passes the address of row
// row_of_lane[l]; its registers go to out[4l..4l+matrices-1] (the rest of out[4l..4l+3] is zero).
KERNEL void selftest_ldmatrix(const unsigned* __restrict__ tile,
                              const unsigned* __restrict__ row_of_lane, unsigned* __restrict__ out,
                              unsigned matrices, unsigned trans) {
    DYNAMIC_SMEM(unsigned, rows);
    const unsigned lane = threadIdx.x & 31u;
    for (unsigned i = lane; i < 32 * 4; i += 32) rows[i] = tile[i];
    __syncthreads();
    const void* row = &rows[row_of_lane[lane] * 4];
    unsigned r[4] = {0, 0, 0, 0};
    if (matrices == 1) {
        unsigned x[1];
        if (trans)
            ldmatrix_x1_trans(x, row);
        else
            ldmatrix_x1(x, row);
        r[0] = x[0];
    } else if (matrices == 2) {
        unsigned x[2];
        if (trans)
            ldmatrix_x2_trans(x, row);
        else
            ldmatrix_x2(x, row);
        r[0] = x[0];
        r[1] = x[1];
    } else {
        unsigned x[4];
        if (trans)
            ldmatrix_x4_trans(x, row);
        else
            ldmatrix_x4(x, row);
        for (unsigned i = 0; i < 4; ++i) r[i] = x[i];
    }
    for (unsigned i = 0; i < 4; ++i) out[lane * 4 + i] = r[i];
}

// out [256] = src [256] staged through shared memory (dynamic, 1024 bytes) by one warp's cp.async
// in two groups: group 0 the first 128 floats in 16-byte copies, zero-filling instead on lanes 3, 7,
// .. (out[4 lane + 0..3] = 0), group 1 the rest in 8- and 4-byte copies, the last 4-byte one
// zero-filling instead on odd lanes (out[128 + 4 lane + 3] = 0). Each stage is read after the wait
// that covers it and a barrier, by another lane than the one that copied it.
KERNEL void selftest_cp_async(const float* __restrict__ src, float* __restrict__ out) {
    DYNAMIC_SMEM(float, stage);
    const unsigned lane = threadIdx.x & 31u, other = (lane + 1) & 31u;
    cp_async_16_zfill(&stage[lane * 4], &src[lane * 4], lane % 4 != 3);
    cp_async_commit();
    cp_async_8(&stage[128 + lane * 4], &src[128 + lane * 4]);
    cp_async_4(&stage[128 + lane * 4 + 2], &src[128 + lane * 4 + 2]);
    cp_async_4_zfill(&stage[128 + lane * 4 + 3], &src[128 + lane * 4 + 3], lane % 2 == 0);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    for (unsigned i = 0; i < 4; ++i) out[other * 4 + i] = stage[other * 4 + i];
    cp_async_wait<0>();
    __syncthreads();
    for (unsigned i = 0; i < 4; ++i) out[128 + other * 4 + i] = stage[128 + other * 4 + i];
}

// The same two groups, but both stages are read after waiting for the first only: on the emulator
// the second reads as poison (0xFFFFFFFF). With `wait_at_exit` the thread then waits for the rest;
// without, it ends with copies pending, which the emulator reports. Never launched on a GPU.
KERNEL void selftest_cp_async_early_read(const float* __restrict__ src, float* __restrict__ out,
                                         unsigned wait_at_exit) {
    DYNAMIC_SMEM(float, stage);
    const unsigned lane = threadIdx.x & 31u;
    cp_async_16(&stage[lane * 4], &src[lane * 4]);
    cp_async_commit();
    cp_async_16(&stage[128 + lane * 4], &src[128 + lane * 4]);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    for (unsigned i = 0; i < 4; ++i) {
        out[lane * 4 + i] = stage[lane * 4 + i];
        out[128 + lane * 4 + i] = stage[128 + lane * 4 + i];
    }
    if (wait_at_exit) cp_async_wait<0>();
}
