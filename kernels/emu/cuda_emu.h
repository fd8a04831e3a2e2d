// CUDA emulation header: lets the very same kernels/*.cu sources that nvcc compiles for the GPU be
// compiled by the host C++ compiler (C++20) and run on the CPU, so kernel logic is testable on a
// machine without a GPU.
//
// Model (see cuda_emu.cpp):
// - a launch runs its blocks one after another on the calling OS thread;
// - the threads of a block are fibers (user-mode coroutines with their own stacks) that run
//   interleaved; a fiber only gives way at a barrier, so `__syncthreads()` really orders the block's
//   threads (a missing barrier shows as a wrong result, deterministically), and a barrier that not
//   every thread of the block reaches is reported as an error instead of hanging;
// - warp collectives (`__shfl*_sync`, `__ballot_sync`, `__syncwarp`) go through a per-warp exchange
//   buffer between warp barriers;
// - static shared memory (`STATIC_SMEM`) is `static thread_local`: one copy per OS thread, i.e. per
//   block in flight, poisoned with 0xFF by the first thread of each block to reach its declaration
//   (a read of shared memory nobody wrote shows as NaN / 0xFFFFFFFF, as dynamic shared memory does);
//   a bare `__shared__` does not compile here, so no declaration escapes the poisoning;
// - atomics are real atomics (`std::atomic_ref`), so concurrent launches from different host threads
//   on distinct buffers are fine.
// - the tensor-core and cp.async instructions of kernels/mma.cuh are warp collectives and per-thread
//   copy queues here (`mma_*`, `ldmatrix`, `cp_async*` below) with the PTX ISA's fragment layouts.
// Limits: no other inline PTX, no wgmma/TMA, textures, cooperative groups or clusters; timing
// means nothing; races that only show under real warp scheduling can hide (compute-sanitizer on a
// GPU is the judge).
#pragma once

#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};
using uint3 = dim3;

#define __global__
#define __host__
#define __device__ static inline
#define __forceinline__ __attribute__((always_inline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static_assert(false, "declare shared memory with STATIC_SMEM (common.cuh)");
#define STATIC_SMEM(type, name, ...)   \
    static thread_local type name __VA_ARGS__; \
    ::emu::poison_static_smem(&name, sizeof(name))
#define __constant__ static const

namespace emu {

// Per OS thread: the coordinates of the fiber that is running (set by the scheduler on every resume).
extern thread_local dim3 t_thread_idx;
extern thread_local dim3 t_block_idx;
extern thread_local dim3 t_block_dim;
extern thread_local dim3 t_grid_dim;

// Block-wide barrier among all threads of the block.
void sync_threads();
// Warp-wide exchange among the lanes of `mask` that exist (the caller must be one of them): each
// deposits `value` and waits for the others; `out` (32 entries) receives every lane's value (lanes
// outside the exchange read as the caller's own). Returns the mask of the lanes that took part.
unsigned warp_exchange(unsigned mask, uint64_t value, uint64_t* out);
unsigned lane_id();
// Dynamic shared memory of the running block (the launch's `shared_mem_bytes`, poisoned with 0xFF).
void* dynamic_smem();
// Fills a static shared variable with 0xFF unless the running block already did (its first thread
// to pass the declaration does, before any thread can use it).
void poison_static_smem(void* variable, size_t bytes);
// Aborts the running block with a message; the launch returns it as an error.
[[noreturn]] void fail(const char* msg);

// Kernel entry in the form the scheduler runs: unpacks the cuLaunchKernel-style argument array.
using Thunk = void (*)(void** args);

struct Launch {
    unsigned grid[3];
    unsigned block[3];
    unsigned dynamic_smem_bytes;
};

// Runs the whole grid. Returns 0 on success; otherwise writes a message to `err` (NUL-terminated).
int run_grid(const Launch* launch, Thunk thunk, void** args, const char* kernel_name, char* err,
             size_t err_len);

template <typename... A, size_t... I>
inline void call_with_args(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

template <typename... A>
inline void call_with_args(void (*kernel)(A...), void** args) {
    call_with_args(kernel, args, std::index_sequence_for<A...>{});
}

template <typename T>
inline T bits_to(uint64_t b) {
    static_assert(sizeof(T) <= sizeof(uint64_t), "warp exchange of a type wider than 64 bits");
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}

template <typename T>
inline uint64_t to_bits(T v) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= sizeof(uint64_t),
                  "warp exchange of an unsupported type");
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}

}  // namespace emu

// The host-side symbol the Rust emulator runtime calls for kernel `name` (generated by build.rs for
// every `KERNEL` it finds): cuLaunchKernel's contract, `args[i]` points at the i-th argument.
#define LTRAIN_EMU_EXPORT(name)                                                                      \
    extern "C" int ltrain_emu_##name(const emu::Launch* launch, void** args, char* err,            \
                                     size_t err_len) {                                              \
        return emu::run_grid(                                                                        \
            launch, [](void** a) { emu::call_with_args(name, a); }, args, #name, err, err_len);     \
    }

#define threadIdx (::emu::t_thread_idx)
#define blockIdx (::emu::t_block_idx)
#define blockDim (::emu::t_block_dim)
#define gridDim (::emu::t_grid_dim)
#define warpSize 32

inline void __syncthreads() { emu::sync_threads(); }

inline void __syncwarp(unsigned mask = 0xffffffffu) {
    uint64_t ignored[32];
    emu::warp_exchange(mask, 0, ignored);
}

template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = 32) {
    uint64_t all[32];
    emu::warp_exchange(mask, emu::to_bits(var), all);
    const int lane = static_cast<int>(emu::lane_id());
    const int src = (lane & ~(width - 1)) + (src_lane & (width - 1));
    return emu::bits_to<T>(all[src]);
}

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = 32) {
    uint64_t all[32];
    emu::warp_exchange(mask, emu::to_bits(var), all);
    const int lane = static_cast<int>(emu::lane_id());
    int src = lane ^ lane_mask;
    // A source outside the caller's `width` segment reads the caller's own value (as on the GPU).
    if ((src & ~(width - 1)) != (lane & ~(width - 1))) src = lane;
    return emu::bits_to<T>(all[src]);
}

template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    uint64_t all[32];
    emu::warp_exchange(mask, emu::to_bits(var), all);
    const int lane = static_cast<int>(emu::lane_id());
    const int in_segment = (lane & (width - 1)) + static_cast<int>(delta);
    const int src = in_segment < width ? lane + static_cast<int>(delta) : lane;
    return emu::bits_to<T>(all[src]);
}

template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32) {
    uint64_t all[32];
    emu::warp_exchange(mask, emu::to_bits(var), all);
    const int lane = static_cast<int>(emu::lane_id());
    const int in_segment = (lane & (width - 1)) - static_cast<int>(delta);
    const int src = in_segment >= 0 ? lane - static_cast<int>(delta) : lane;
    return emu::bits_to<T>(all[src]);
}

namespace emu {
// (ballot of the participating lanes, mask of the participating lanes)
inline std::pair<unsigned, unsigned> warp_vote(unsigned mask, int predicate) {
    uint64_t all[32];
    const unsigned participants = warp_exchange(mask, predicate ? 1u : 0u, all);
    unsigned ballot = 0;
    for (int lane = 0; lane < 32; ++lane)
        if (((participants >> lane) & 1u) && all[lane] == 1u) ballot |= 1u << lane;
    return {ballot, participants};
}
}  // namespace emu

inline unsigned __ballot_sync(unsigned mask, int predicate) {
    return emu::warp_vote(mask, predicate).first;
}
inline int __any_sync(unsigned mask, int predicate) {
    return emu::warp_vote(mask, predicate).first != 0;
}
inline int __all_sync(unsigned mask, int predicate) {
    const auto [ballot, participants] = emu::warp_vote(mask, predicate);
    return ballot == participants;
}

// ---- tensor-core and asynchronous-copy instructions (wrapped by kernels/mma.cuh) ----
namespace emu {
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 and m16n8k16 .bf16: collectives of all 32
// lanes of the warp, in the PTX ISA's fragment layouts (kernels/mma.cuh); each lane gets its own 4
// d registers.
void mma_m16n8k8_tf32(float* d, const unsigned* a, const unsigned* b, const float* c);
void mma_m16n8k16_bf16(float* d, const unsigned* a, const unsigned* b, const float* c);
// ldmatrix.sync.aligned.m8n8.x{count}{.trans}.shared.b16 into r[0..count).
void ldmatrix(unsigned* r, unsigned count, bool trans, const void* row);
// cp.async of `bytes` (4, 8 or 16): fills `dst` with 0xFF now and copies when a cp_async_wait
// covers its group, so a read before the wait sees the poison.
void cp_async(void* dst, const void* src, unsigned bytes);
// cp.async with a src-size: copies `src_bytes` (0 or `bytes`) of `src` and zero-fills the rest.
void cp_async_zfill(void* dst, const void* src, unsigned bytes, unsigned src_bytes);
void cp_async_commit();
// Performs the calling thread's committed groups but the newest `pending`.
void cp_async_wait(unsigned pending);

// cvt.rna.tf32.f32: half an ulp of the 10-bit mantissa added to the magnitude, then the 13 low bits
// cleared (ties away from zero; a carry reaches the exponent, the largest values become infinity).
inline unsigned cvt_rna_tf32(float x) {
    uint32_t u;
    std::memcpy(&u, &x, sizeof u);
    if ((u & 0x7f800000u) == 0x7f800000u) return (u & 0x007fffffu) != 0 ? 0x7fffffffu : u;
    return (u + 0x1000u) & ~0x1fffu;
}
}  // namespace emu

// ---- atomics (return the old value, like CUDA's) ----
template <typename T>
inline T __emu_atomic_add(T* address, T value) {
    return std::atomic_ref<T>(*address).fetch_add(value, std::memory_order_relaxed);
}
inline float atomicAdd(float* a, float v) { return __emu_atomic_add(a, v); }
inline double atomicAdd(double* a, double v) { return __emu_atomic_add(a, v); }
inline int atomicAdd(int* a, int v) { return __emu_atomic_add(a, v); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return __emu_atomic_add(a, v); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
    return __emu_atomic_add(a, v);
}

template <typename T>
inline T __emu_atomic_max(T* address, T value) {
    std::atomic_ref<T> ref(*address);
    T old = ref.load(std::memory_order_relaxed);
    while (old < value && !ref.compare_exchange_weak(old, value, std::memory_order_relaxed)) {
    }
    return old;
}
template <typename T>
inline T __emu_atomic_min(T* address, T value) {
    std::atomic_ref<T> ref(*address);
    T old = ref.load(std::memory_order_relaxed);
    while (value < old && !ref.compare_exchange_weak(old, value, std::memory_order_relaxed)) {
    }
    return old;
}
inline int atomicMax(int* a, int v) { return __emu_atomic_max(a, v); }
inline unsigned atomicMax(unsigned* a, unsigned v) { return __emu_atomic_max(a, v); }
inline unsigned long long atomicMax(unsigned long long* a, unsigned long long v) {
    return __emu_atomic_max(a, v);
}
inline int atomicMin(int* a, int v) { return __emu_atomic_min(a, v); }
inline unsigned atomicMin(unsigned* a, unsigned v) { return __emu_atomic_min(a, v); }
inline unsigned long long atomicMin(unsigned long long* a, unsigned long long v) {
    return __emu_atomic_min(a, v);
}
template <typename T>
inline T __emu_atomic_cas(T* address, T compare, T value) {
    std::atomic_ref<T>(*address).compare_exchange_strong(compare, value,
                                                         std::memory_order_relaxed);
    return compare;  // holds the old value whether or not the exchange happened
}
inline int atomicCAS(int* a, int c, int v) { return __emu_atomic_cas(a, c, v); }
inline unsigned atomicCAS(unsigned* a, unsigned c, unsigned v) { return __emu_atomic_cas(a, c, v); }
inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long c,
                                    unsigned long long v) {
    return __emu_atomic_cas(a, c, v);
}
inline float atomicExch(float* a, float v) {
    return std::atomic_ref<float>(*a).exchange(v, std::memory_order_relaxed);
}
inline unsigned atomicExch(unsigned* a, unsigned v) {
    return std::atomic_ref<unsigned>(*a).exchange(v, std::memory_order_relaxed);
}
inline unsigned atomicOr(unsigned* a, unsigned v) {
    return std::atomic_ref<unsigned>(*a).fetch_or(v, std::memory_order_relaxed);
}
inline unsigned atomicAnd(unsigned* a, unsigned v) {
    return std::atomic_ref<unsigned>(*a).fetch_and(v, std::memory_order_relaxed);
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// ---- math and bit intrinsics (exact host versions of the fast device ones) ----
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline unsigned __float_as_uint(float x) {
    unsigned u;
    std::memcpy(&u, &x, sizeof u);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float x;
    std::memcpy(&x, &u, sizeof x);
    return x;
}
inline int __float_as_int(float x) {
    int i;
    std::memcpy(&i, &x, sizeof i);
    return i;
}
inline float __int_as_float(int i) {
    float x;
    std::memcpy(&x, &i, sizeof x);
    return x;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
template <typename T>
inline T __ldg(const T* p) {
    return *p;
}
// CUDA's device code has overloaded min/max for integers.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
using std::exp;
using std::expm1;
using std::fabs;
using std::floor;
using std::fmax;
using std::fmin;
using std::isfinite;
using std::isinf;
using std::isnan;
using std::log;
using std::log1p;
using std::pow;
using std::sqrt;
