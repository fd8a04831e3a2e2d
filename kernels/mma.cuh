// Tensor-core and asynchronous-copy instructions (sm_80 and later): the one place kernels may use
// inline PTX. Under nvcc each wrapper is the PTX instruction; on the emulator (emu/cuda_emu.h) it
// is a warp collective that follows the PTX ISA's fragment layouts exactly, so a kernel that puts
// an element in the wrong lane or register gets a wrong result on the CPU too
// (tests/emulator_mma.rs; tests/cuda_gpu.rs pins the same tables on hardware).
//
// Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k8" (.tf32) and "... for mma.m16n8k16 with
// floating point type" (.bf16)); lane = 0..31, g = lane >> 2, t = lane & 3, (row, column):
// - m16n8k8 .tf32, A 16x8 row-major: a[0] (g, t), a[1] (g+8, t), a[2] (g, t+4), a[3] (g+8, t+4);
//   B 8x8 column-major: b[0] (t, g), b[1] (t+4, g);
// - m16n8k16 .bf16, two elements a register, the lower column (B: row) in the low half:
//   A 16x16: a[0] (g, 2t..2t+1), a[1] (g+8, 2t..2t+1), a[2] (g, 2t+8..+9), a[3] (g+8, 2t+8..+9);
//   B 16x8: b[0] (2t..2t+1, g), b[1] (2t+8..2t+9, g);
// - C and D 16x8 f32 (both shapes): c[0] (g, 2t), c[1] (g, 2t+1), c[2] (g+8, 2t), c[3] (g+8, 2t+1).
// ldmatrix (.m8n8 .b16): lanes 8i..8i+7 pass the shared-memory addresses of the 8 rows (16 bytes
// each) of matrix i (x1: lanes 0-7 only, x2: 0-15; the other lanes' addresses are ignored);
// register i of lane L gets row L >> 2, columns 2(L & 3) and 2(L & 3)+1 of matrix i (the lower
// column in the low half): one 8x8 piece of the bf16 A fragment above. .trans gives the same of the
// transposed matrix (a bf16 B stored row-major, K x N, loads with .trans). Rows and 16-byte
// cp.async destinations need 16-byte alignment (dynamic shared memory has it).
//
// Rules: mma and ldmatrix are `.sync.aligned`: all 32 lanes of the warp call them together, with
// the same shape and qualifiers (the emulator reports a partial warp or a mix as an error, and a
// lane that never arrives as a deadlock). tf32 operands are f32 bits rounded by to_tf32 first: the
// tensor cores do not round (the emulator truncates an unrounded operand, as the hardware is taken
// to; tests/cuda_gpu.rs checks it). The summation order inside an mma is unspecified: compare
// results with tolerances unless the data make every partial sum exact.
// cp.async: the destination is shared memory, the source global memory, both aligned to the copy's
// size; a copy's data is there only after the cp_async_wait that covers its group, and for other
// threads only after a barrier that follows that wait (the emulator fills the destination with 0xFF
// bytes at issue and copies at the wait; a thread that ends with copies it never waited for is an
// error).
#pragma once

#include "common.cuh"

#if defined(__CUDACC__)

__device__ __forceinline__ unsigned shared_address(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// cvt.rna.tf32.f32: to nearest, ties away from zero, 10 mantissa bits kept (the 13 low bits zero).
__device__ __forceinline__ unsigned to_tf32(float x) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return r;
}

// d = a b + c, m16n8k8, tf32 operands, f32 accumulate.
__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const unsigned (&a)[4],
                                                 const unsigned (&b)[2], const float (&c)[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
          "f"(c[2]), "f"(c[3]));
}

// d = a b + c, m16n8k16, bf16 operands (two per register), f32 accumulate.
__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const unsigned (&a)[4],
                                                  const unsigned (&b)[2], const float (&c)[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
          "f"(c[2]), "f"(c[3]));
}

// The "memory" clobbers keep the compiler from moving shared-memory accesses across these.
__device__ __forceinline__ void ldmatrix_x1(unsigned (&r)[1], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0])
                 : "r"(shared_address(row))
                 : "memory");
}
__device__ __forceinline__ void ldmatrix_x2(unsigned (&r)[2], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(shared_address(row))
                 : "memory");
}
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(row))
                 : "memory");
}
__device__ __forceinline__ void ldmatrix_x1_trans(unsigned (&r)[1], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0])
                 : "r"(shared_address(row))
                 : "memory");
}
__device__ __forceinline__ void ldmatrix_x2_trans(unsigned (&r)[2], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(shared_address(row))
                 : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const void* row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(row))
                 : "memory");
}

// .ca (through L1) is the only form of the 4- and 8-byte copies; 16 bytes go .cg (L2 only).
__device__ __forceinline__ void cp_async_4(void* smem_dst, const void* gmem_src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(shared_address(smem_dst)),
                 "l"(__cvta_generic_to_global(gmem_src))
                 : "memory");
}
__device__ __forceinline__ void cp_async_8(void* smem_dst, const void* gmem_src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(shared_address(smem_dst)),
                 "l"(__cvta_generic_to_global(gmem_src))
                 : "memory");
}
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(shared_address(smem_dst)),
                 "l"(__cvta_generic_to_global(gmem_src))
                 : "memory");
}
// A 4-byte cp.async that copies when `copy` and otherwise writes zeros (its src-size operand 0: no
// byte of `gmem_src` is read, though it must still be a global address): padding without a branch.
__device__ __forceinline__ void cp_async_4_zfill(void* smem_dst, const void* gmem_src, bool copy) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(shared_address(smem_dst)),
                 "l"(__cvta_generic_to_global(gmem_src)), "r"(copy ? 4u : 0u)
                 : "memory");
}
// The same for 16 bytes (through L2, as cp_async_16).
__device__ __forceinline__ void cp_async_16_zfill(void* smem_dst, const void* gmem_src, bool copy) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(shared_address(smem_dst)),
                 "l"(__cvta_generic_to_global(gmem_src)), "r"(copy ? 16u : 0u)
                 : "memory");
}
// Closes the calling thread's group of copies issued since the last commit.
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most the newest `Pending` of the calling thread's committed groups are in flight.
template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
}

// Hands `v` to the hot loop as computed: without it nvcc may recompute a value from its inputs in
// every iteration to save a register (an empty asm it cannot see through).
__device__ __forceinline__ void keep_in_register(int& v) { asm volatile("" : "+r"(v)); }

#else  // the emulator (emu/cuda_emu.h, emu/cuda_emu.cpp)

__device__ __forceinline__ void keep_in_register(int&) {}

__device__ __forceinline__ unsigned to_tf32(float x) { return ::emu::cvt_rna_tf32(x); }

__device__ __forceinline__ void mma_m16n8k8_tf32(float (&d)[4], const unsigned (&a)[4],
                                                 const unsigned (&b)[2], const float (&c)[4]) {
    ::emu::mma_m16n8k8_tf32(d, a, b, c);
}
__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const unsigned (&a)[4],
                                                  const unsigned (&b)[2], const float (&c)[4]) {
    ::emu::mma_m16n8k16_bf16(d, a, b, c);
}

__device__ __forceinline__ void ldmatrix_x1(unsigned (&r)[1], const void* row) {
    ::emu::ldmatrix(r, 1, false, row);
}
__device__ __forceinline__ void ldmatrix_x2(unsigned (&r)[2], const void* row) {
    ::emu::ldmatrix(r, 2, false, row);
}
__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* row) {
    ::emu::ldmatrix(r, 4, false, row);
}
__device__ __forceinline__ void ldmatrix_x1_trans(unsigned (&r)[1], const void* row) {
    ::emu::ldmatrix(r, 1, true, row);
}
__device__ __forceinline__ void ldmatrix_x2_trans(unsigned (&r)[2], const void* row) {
    ::emu::ldmatrix(r, 2, true, row);
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], const void* row) {
    ::emu::ldmatrix(r, 4, true, row);
}

__device__ __forceinline__ void cp_async_4(void* smem_dst, const void* gmem_src) {
    ::emu::cp_async(smem_dst, gmem_src, 4);
}
__device__ __forceinline__ void cp_async_8(void* smem_dst, const void* gmem_src) {
    ::emu::cp_async(smem_dst, gmem_src, 8);
}
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src) {
    ::emu::cp_async(smem_dst, gmem_src, 16);
}
__device__ __forceinline__ void cp_async_4_zfill(void* smem_dst, const void* gmem_src, bool copy) {
    ::emu::cp_async_zfill(smem_dst, gmem_src, 4, copy ? 4 : 0);
}
__device__ __forceinline__ void cp_async_16_zfill(void* smem_dst, const void* gmem_src, bool copy) {
    ::emu::cp_async_zfill(smem_dst, gmem_src, 16, copy ? 16 : 0);
}
__device__ __forceinline__ void cp_async_commit() { ::emu::cp_async_commit(); }
template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
    static_assert(Pending >= 0, "cp.async.wait_group takes a non-negative count");
    ::emu::cp_async_wait(static_cast<unsigned>(Pending));
}

#endif

// An f32 as a tf32 operand, rounded to nearest with ties away from zero (as cvt.rna.tf32.f32): half
// of the dropped 13 bits' range added to the magnitude of a finite value; the tensor cores then drop
// those bits (they truncate an unrounded operand: tests/mma_checks
// `unrounded_tf32_operands_are_truncated`, on the emulator and the GPU). Infinities and NaNs pass as
// they are, so a NaN stays a NaN (adding to CUDA's canonical 0x7fffffff would carry into the sign).
// Two instructions (a compare and a predicated add) where cvt.rna takes three.
__device__ __forceinline__ unsigned tf32_round_bits(float x) {
    const unsigned bits = __float_as_uint(x);
    return fabsf(x) < INFINITY ? bits + 0x1000u : bits;
}
