// Kernels that exercise the emulator itself (and, on a GPU, the same paths for comparison): a
// barrier-dependent reduction, a warp-shuffle reduction, a ballot, an atomic histogram, and three
// deliberately broken kernels that only the emulator runs (it must expose them, not hide them).
#include "common.cuh"

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
