// CPU runtime of the CUDA emulator (see cuda_emu.h for the model).
//
// A block's threads are fibers on the launching OS thread. A fiber runs until it finishes or waits at a
// barrier (`__syncthreads`, a warp collective); the scheduler then resumes the next runnable fiber in
// thread order. When no fiber can run and some have not finished, the block is deadlocked (a barrier
// that not every thread reaches): the launch fails with a description instead of hanging.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <memory>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include "cuda_emu.h"

namespace emu {

thread_local dim3 t_thread_idx;
thread_local dim3 t_block_idx;
thread_local dim3 t_block_dim;
thread_local dim3 t_grid_dim;

namespace {

constexpr unsigned kMaxThreadsPerBlock = 1024;
// Stack of one emulated thread. Kernels keep little state per thread; a guard page below each stack
// turns an overflow into a fault rather than silent corruption.
constexpr size_t kStackBytes = 64 * 1024;

// ---- execution contexts --------------------------------------------------------------------------
#if defined(__x86_64__)
// Callee-saved registers, MXCSR and the x87 control word are all a System V switch must keep.
extern "C" void ltrain_emu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .p2align 4
    .globl ltrain_emu_switch
    .hidden ltrain_emu_switch
    .type ltrain_emu_switch,@function
ltrain_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size ltrain_emu_switch,.-ltrain_emu_switch
)");

struct Context {
    void* sp = nullptr;
};

void context_init(Context& ctx, char* stack_lo, size_t bytes, void (*entry)()) {
    auto top = reinterpret_cast<uintptr_t>(stack_lo + bytes) & ~uintptr_t(15);
    auto* slot = reinterpret_cast<uint64_t*>(top);
    // Entered by `ret`, so `entry` sees the stack alignment of a called function.
    slot[-1] = 0;                                    // fake return address of `entry`
    slot[-2] = reinterpret_cast<uint64_t>(entry);    // popped by `ret`
    for (int r = 3; r <= 8; ++r) slot[-r] = 0;       // rbp, rbx, r12..r15
    uint32_t mxcsr;
    uint16_t fpucw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpucw));
    uint64_t control = mxcsr | (uint64_t(fpucw) << 32);
    slot[-9] = control;
    ctx.sp = &slot[-9];
}

inline void context_switch(Context& from, Context& to) { ltrain_emu_switch(&from.sp, to.sp); }
#else
struct Context {
    ucontext_t uc;
};

void context_init(Context& ctx, char* stack_lo, size_t bytes, void (*entry)()) {
    getcontext(&ctx.uc);
    ctx.uc.uc_stack.ss_sp = stack_lo;
    ctx.uc.uc_stack.ss_size = bytes;
    ctx.uc.uc_link = nullptr;
    makecontext(&ctx.uc, entry, 0);
}

inline void context_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

// One region per OS thread: kMaxThreadsPerBlock stacks, each above a guard page. Pages are only
// committed when touched.
class StackPool {
   public:
    ~StackPool() {
        if (base_ != nullptr) munmap(base_, total_);
    }
    char* stack(unsigned i) {
        if (base_ == nullptr) reserve();
        return base_ + size_t(i) * stride_ + page_;
    }

   private:
    void reserve() {
        page_ = static_cast<size_t>(sysconf(_SC_PAGESIZE));
        stride_ = kStackBytes + page_;
        total_ = stride_ * kMaxThreadsPerBlock;
        void* p = mmap(nullptr, total_, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) {
            std::fprintf(stderr, "cuda_emu: cannot reserve fiber stacks\n");
            std::abort();
        }
        base_ = static_cast<char*>(p);
        for (unsigned i = 0; i < kMaxThreadsPerBlock; ++i)
            mprotect(base_ + size_t(i) * stride_, page_, PROT_NONE);
    }
    char* base_ = nullptr;
    size_t page_ = 0, stride_ = 0, total_ = 0;
};

thread_local StackPool t_stacks;

// ---- blocks --------------------------------------------------------------------------------------
enum class State : uint8_t { Runnable, WaitingBlock, WaitingWarp, Done };

// A cp.async issued and not yet performed.
struct AsyncCopy {
    void* dst;
    const void* src;
    unsigned bytes;
    unsigned src_bytes;  // copied of `bytes`; the rest is zero-filled
    unsigned group;      // the thread's commit count when it was issued
};

struct Fiber {
    Context ctx;
    State state = State::Runnable;
    dim3 tid;
    unsigned linear = 0;  // x + y * bx + z * bx * by, as CUDA orders threads into warps
    std::vector<AsyncCopy> async_copies;  // in issue order
    unsigned async_commits = 0;
};

// Bytes a lane publishes with a warp instruction's operands (an mma's ten registers, an ldmatrix
// row address).
constexpr size_t kPayloadBytes = 48;

struct Warp {
    unsigned lanes_present = 0;  // lanes that exist (the block's last warp may be partial)
    unsigned arrived = 0;        // lanes waiting at the current exchange
    unsigned participants = 0;   // lanes of the current exchange
    unsigned generation = 0;     // exchanges completed; selects the value buffer
    uint64_t values[2][32] = {};
    unsigned char payload[2][32][kPayloadBytes] = {};  // buffered as `values`
    // An mma's results for every lane, worked out by the first lane to read the exchange (`claimed`
    // holds the generation it completed), buffered as `values`.
    float results[2][32][4] = {};
    unsigned claimed[2] = {};
};

struct Block {
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    unsigned threads = 0;
    unsigned done = 0;
    unsigned block_arrived = 0;
    Context scheduler;
    Fiber* current = nullptr;
    Thunk thunk = nullptr;
    void** args = nullptr;
    std::vector<unsigned char> dynamic_smem;
    // The static shared variables the running block has poisoned (`poison_static_smem`).
    std::vector<const void*> static_smem_poisoned;
    bool failed = false;
    char error[512] = {};
};

thread_local Block* t_block = nullptr;

Block& running_block() {
    // Only kernels call the intrinsics, and only while a launch runs on this OS thread.
    if (t_block == nullptr || t_block->current == nullptr) {
        std::fprintf(stderr, "cuda_emu: a device intrinsic was called outside a kernel launch\n");
        std::abort();
    }
    return *t_block;
}

// Parks the running fiber until another one makes it runnable again.
void park(Block& b, State why) {
    Fiber* f = b.current;
    f->state = why;
    context_switch(f->ctx, b.scheduler);
}

void set_error(Block& b, const char* fmt, ...) {
    if (b.failed) return;
    b.failed = true;
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(b.error, sizeof b.error, fmt, ap);
    va_end(ap);
}

[[noreturn]] void fiber_entry() {
    Block& b = *t_block;
    b.thunk(b.args);
    Fiber* f = b.current;
    if (!f->async_copies.empty())
        set_error(b,
                  "thread %u ended before waiting for %zu of its cp.async copies (cp_async_wait): "
                  "their data never reached shared memory",
                  f->linear, f->async_copies.size());
    f->state = State::Done;
    ++b.done;
    context_switch(f->ctx, b.scheduler);
    std::abort();  // a finished fiber is never resumed
}

// Runs one block to completion; false (with b.error set) on failure.
bool run_block(Block& b) {
    for (auto& w : b.warps) {
        w.arrived = 0;
        w.participants = 0;
        w.generation = 0;
        w.claimed[0] = w.claimed[1] = 0;
    }
    for (unsigned i = 0; i < b.threads; ++i) {
        Fiber& f = b.fibers[i];
        f.state = State::Runnable;
        f.async_copies.clear();
        f.async_commits = 0;
        context_init(f.ctx, t_stacks.stack(i), kStackBytes, fiber_entry);
    }
    b.done = 0;
    b.block_arrived = 0;
    if (!b.dynamic_smem.empty()) std::memset(b.dynamic_smem.data(), 0xFF, b.dynamic_smem.size());
    b.static_smem_poisoned.clear();

    while (b.done < b.threads) {
        bool progressed = false;
        for (Fiber& f : b.fibers) {
            if (f.state != State::Runnable) continue;
            progressed = true;
            b.current = &f;
            t_thread_idx = f.tid;
            context_switch(b.scheduler, f.ctx);
            b.current = nullptr;
            if (b.failed) return false;
        }
        if (!progressed) {
            unsigned at_block = 0, at_warp = 0;
            for (const Fiber& f : b.fibers) {
                at_block += f.state == State::WaitingBlock;
                at_warp += f.state == State::WaitingWarp;
            }
            set_error(b,
                      "deadlock: %u of %u threads wait at __syncthreads, %u at a warp collective, "
                      "%u have exited (a barrier that not every thread reaches)",
                      at_block, b.threads, at_warp, b.done);
            return false;
        }
    }
    return true;
}

}  // namespace

// ---- intrinsics ----------------------------------------------------------------------------------
void sync_threads() {
    Block& b = running_block();
    if (++b.block_arrived == b.threads) {
        b.block_arrived = 0;
        for (Fiber& f : b.fibers)
            if (f.state == State::WaitingBlock) f.state = State::Runnable;
        return;
    }
    park(b, State::WaitingBlock);
}

unsigned warp_exchange(unsigned mask, uint64_t value, uint64_t* out) {
    Block& b = running_block();
    Fiber* f = b.current;
    const unsigned lane = f->linear % 32;
    const unsigned warp_index = f->linear / 32;
    Warp& w = b.warps[warp_index];
    if (((mask >> lane) & 1u) == 0) {
        set_error(b, "warp collective: lane %u of warp %u is not in its own mask 0x%08x", lane,
                  warp_index, mask);
        fail(b.error);
    }
    const unsigned participants = mask & w.lanes_present;
    if (w.arrived == 0) {
        w.participants = participants;
    } else if (w.participants != participants) {
        set_error(b,
                  "warp collective: lanes of warp %u use different masks (0x%08x vs 0x%08x)",
                  warp_index, w.participants, participants);
        fail(b.error);
    }
    const unsigned buffer = w.generation & 1u;
    w.values[buffer][lane] = value;
    w.arrived |= 1u << lane;
    if (w.arrived == participants) {
        w.arrived = 0;
        ++w.generation;
        for (unsigned l = 0; l < 32; ++l) {
            if (l == lane || ((participants >> l) & 1u) == 0) continue;
            Fiber& other = b.fibers[warp_index * 32 + l];
            if (other.state == State::WaitingWarp) other.state = State::Runnable;
        }
    } else {
        park(b, State::WaitingWarp);
    }
    // Safe to read after resuming: the buffer is only rewritten two exchanges later, which needs
    // every participant (this lane included) to have arrived at the exchange in between.
    for (unsigned l = 0; l < 32; ++l)
        out[l] = ((participants >> l) & 1u) ? w.values[buffer][l] : value;
    return participants;
}

unsigned lane_id() { return running_block().current->linear % 32; }

void* dynamic_smem() {
    Block& b = running_block();
    return b.dynamic_smem.empty() ? nullptr : b.dynamic_smem.data();
}

void poison_static_smem(void* variable, size_t bytes) {
    Block& b = running_block();
    for (const void* p : b.static_smem_poisoned)
        if (p == variable) return;
    std::memset(variable, 0xFF, bytes);
    b.static_smem_poisoned.push_back(variable);
}

[[noreturn]] void fail(const char* msg) {
    Block& b = running_block();
    if (!b.failed) set_error(b, "%s", msg);
    Fiber* f = b.current;
    context_switch(f->ctx, b.scheduler);
    std::abort();  // a failed block is never resumed
}

// ---- tensor-core and asynchronous-copy instructions ----------------------------------------------
namespace {

[[noreturn]] void fail_with(const char* fmt, ...) {
    char message[512];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    fail(message);
}

// Which `.sync.aligned` instruction (and qualifiers) a lane is at: every lane of the warp must
// agree.
enum Instruction : uint64_t { kMmaTf32 = 1, kMmaBf16 = 2, kLdmatrix = 3 };

// What a warp instruction's lanes published: lane l's bytes at `all + l * kPayloadBytes`; `first`
// for the one lane that reads them first (it may work out every lane's results into `results`
// before any other lane resumes: fibers run one at a time). Valid until the warp's next exchange but
// one (the double buffering of warp_exchange), so the caller reads it at once.
struct Gathered {
    const unsigned char* all;
    float (*results)[4];
    bool first;
};

// Publishes `bytes` at `mine` (at most kPayloadBytes) to every lane of the running warp, with one
// exchange that also checks that every lane is at the same instruction.
Gathered warp_gather(const char* what, uint64_t instruction, const void* mine, size_t bytes) {
    Block& b = running_block();
    const unsigned lane = b.current->linear % 32;
    Warp& w = b.warps[b.current->linear / 32];
    // Every lane of this exchange sees the same generation: it advances once all have arrived.
    const unsigned done = w.generation + 1, buffer = w.generation & 1u;
    std::memcpy(w.payload[buffer][lane], mine, bytes);
    uint64_t posted[32];
    const unsigned lanes = warp_exchange(0xffffffffu, instruction, posted);
    if (lanes != 0xffffffffu)
        fail_with("%s needs all 32 lanes of a warp; this warp has lanes 0x%08x (a block of a "
                  "multiple of 32 threads)",
                  what, lanes);
    for (unsigned l = 0; l < 32; ++l)
        if (posted[l] != instruction)
            fail_with("%s: lane %u of the warp is at another warp instruction or shape (all 32 "
                      "lanes must execute the same one)",
                      what, l);
    const bool first = w.claimed[buffer] != done;
    w.claimed[buffer] = done;
    return Gathered{&w.payload[buffer][0][0], w.results[buffer], first};
}

struct MmaOperands {
    unsigned a[4];
    unsigned b[2];
    float c[4];
};
static_assert(sizeof(MmaOperands) <= kPayloadBytes, "an mma's registers fit a lane's payload");

const MmaOperands& lane_operands(const unsigned char* all, unsigned lane) {
    return *reinterpret_cast<const MmaOperands*>(all + lane * kPayloadBytes);
}

// d = c + A B for every lane's four accumulator elements (C and D share a layout: c[0] (g, 2t),
// c[1] (g, 2t + 1), c[2] (g + 8, 2t), c[3] (g + 8, 2t + 1)), A 16xK and B Kx8 rebuilt from the lanes.
// Products and sum in double, k ascending, rounded once: exact where the data make every partial sum
// exact; otherwise the hardware (its summation order and internal rounding unspecified) can differ
// in the last bits.
template <int K>
void mma_all_lanes(const float (&a)[16][K], const float (&b)[K][8], const unsigned char* all,
                   float (*results)[4]) {
    for (unsigned lane = 0; lane < 32; ++lane) {
        const unsigned g = lane >> 2, t = lane & 3u;
        const float* c = lane_operands(all, lane).c;
        for (unsigned i = 0; i < 4; ++i) {
            const unsigned row = g + 8 * (i >> 1), col = 2 * t + (i & 1u);
            double sum = c[i];
            for (int k = 0; k < K; ++k) sum += double(a[row][k]) * double(b[k][col]);
            results[lane][i] = static_cast<float>(sum);
        }
    }
}

// One mma's operands from this lane, the results to it.
Gathered publish_mma(const char* what, Instruction instruction, const unsigned* a,
                     const unsigned* b, const float* c) {
    MmaOperands mine;
    std::memcpy(mine.a, a, sizeof mine.a);
    std::memcpy(mine.b, b, sizeof mine.b);
    std::memcpy(mine.c, c, sizeof mine.c);
    return warp_gather(what, instruction, &mine, sizeof mine);
}

// A .tf32 operand counts with 10 mantissa bits: the 13 low bits of one that cvt.rna.tf32.f32 did
// not round are dropped (truncation). The PTX ISA leaves the tf32 layout implementation-defined;
// truncation is what the tensor cores are taken to do, and tests/cuda_gpu.rs checks it on hardware.
float tf32_operand(unsigned bits) { return __uint_as_float(bits & ~0x1fffu); }
float bf16_low(unsigned pair) { return __uint_as_float(pair << 16); }
float bf16_high(unsigned pair) { return __uint_as_float(pair & 0xffff0000u); }

}  // namespace

void mma_m16n8k8_tf32(float* d, const unsigned* a, const unsigned* b, const float* c) {
    const Gathered got = publish_mma("mma.m16n8k8.tf32", kMmaTf32, a, b, c);
    if (got.first) {
        float am[16][8], bm[8][8];
        for (unsigned lane = 0; lane < 32; ++lane) {
            const unsigned g = lane >> 2, t = lane & 3u;
            const MmaOperands& o = lane_operands(got.all, lane);
            am[g][t] = tf32_operand(o.a[0]);
            am[g + 8][t] = tf32_operand(o.a[1]);
            am[g][t + 4] = tf32_operand(o.a[2]);
            am[g + 8][t + 4] = tf32_operand(o.a[3]);
            bm[t][g] = tf32_operand(o.b[0]);
            bm[t + 4][g] = tf32_operand(o.b[1]);
        }
        mma_all_lanes(am, bm, got.all, got.results);
    }
    std::memcpy(d, got.results[lane_id()], 4 * sizeof(float));
}

void mma_m16n8k16_bf16(float* d, const unsigned* a, const unsigned* b, const float* c) {
    const Gathered got = publish_mma("mma.m16n8k16.bf16", kMmaBf16, a, b, c);
    if (got.first) {
        float am[16][16], bm[16][8];
        for (unsigned lane = 0; lane < 32; ++lane) {
            const unsigned g = lane >> 2, t = lane & 3u;
            const MmaOperands& o = lane_operands(got.all, lane);
            for (unsigned r = 0; r < 4; ++r) {
                const unsigned row = g + 8 * (r & 1u), col = 2 * t + 8 * (r >> 1);
                am[row][col] = bf16_low(o.a[r]);
                am[row][col + 1] = bf16_high(o.a[r]);
            }
            for (unsigned r = 0; r < 2; ++r) {
                const unsigned k = 2 * t + 8 * r;
                bm[k][g] = bf16_low(o.b[r]);
                bm[k + 1][g] = bf16_high(o.b[r]);
            }
        }
        mma_all_lanes(am, bm, got.all, got.results);
    }
    std::memcpy(d, got.results[lane_id()], 4 * sizeof(float));
}

void ldmatrix(unsigned* r, unsigned count, bool trans, const void* row) {
    // The qualifiers are part of the instruction every lane must agree on.
    const uint64_t instruction = kLdmatrix | uint64_t(count) << 2 | uint64_t(trans) << 5;
    const unsigned char* all = warp_gather("ldmatrix", instruction, &row, sizeof row).all;
    uintptr_t rows[32];
    for (unsigned l = 0; l < 32; ++l) std::memcpy(&rows[l], all + l * kPayloadBytes, sizeof rows[l]);
    for (unsigned l = 0; l < 8 * count; ++l)
        if (rows[l] % 16 != 0)
            fail_with("ldmatrix: lane %u's row address %p is not 16-byte aligned", l,
                      reinterpret_cast<void*>(rows[l]));
    auto element = [&](unsigned matrix, unsigned i, unsigned j) {
        uint16_t v;
        std::memcpy(&v, reinterpret_cast<const char*>(rows[8 * matrix + i]) + 2 * j, sizeof v);
        return unsigned(v);
    };
    const unsigned lane = lane_id(), g = lane >> 2, t = lane & 3u;
    for (unsigned m = 0; m < count; ++m)
        r[m] = trans ? element(m, 2 * t, g) | element(m, 2 * t + 1, g) << 16
                     : element(m, g, 2 * t) | element(m, g, 2 * t + 1) << 16;
}

void cp_async_zfill(void* dst, const void* src, unsigned bytes, unsigned src_bytes) {
    Fiber& f = *running_block().current;
    if (bytes != 4 && bytes != 8 && bytes != 16)
        fail_with("cp.async copies 4, 8 or 16 bytes, not %u", bytes);
    if (src_bytes > bytes)
        fail_with("cp.async's src-size %u exceeds its copy size %u", src_bytes, bytes);
    if (reinterpret_cast<uintptr_t>(dst) % bytes != 0 ||
        reinterpret_cast<uintptr_t>(src) % bytes != 0)
        fail_with("cp.async of %u bytes needs %u-byte aligned addresses (shared %p, global %p)",
                  bytes, bytes, dst, src);
    std::memset(dst, 0xFF, bytes);
    f.async_copies.push_back({dst, src, bytes, src_bytes, f.async_commits});
}

void cp_async(void* dst, const void* src, unsigned bytes) { cp_async_zfill(dst, src, bytes, bytes); }

void cp_async_commit() { ++running_block().current->async_commits; }

void cp_async_wait(unsigned pending) {
    Fiber& f = *running_block().current;
    // Groups numbered below `complete` must have landed; copies not yet committed are not waited
    // for.
    const unsigned complete = f.async_commits > pending ? f.async_commits - pending : 0;
    auto& copies = f.async_copies;
    for (const AsyncCopy& c : copies)
        if (c.group < complete) {
            std::memcpy(c.dst, c.src, c.src_bytes);
            std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
        }
    copies.erase(std::remove_if(copies.begin(), copies.end(),
                                [&](const AsyncCopy& c) { return c.group < complete; }),
                 copies.end());
}

int run_grid(const Launch* launch, Thunk thunk, void** args, const char* kernel_name, char* err,
             size_t err_len) {
    auto report = [&](const char* fmt, auto... xs) {
        if (err != nullptr && err_len > 0) {
            int used = std::snprintf(err, err_len, "kernel `%s`: ", kernel_name);
            if (used >= 0 && size_t(used) < err_len)
                std::snprintf(err + used, err_len - size_t(used), fmt, xs...);
        }
        return 1;
    };
    if (t_block != nullptr) return report("%s", "launched from inside a kernel");
    const unsigned bx = launch->block[0], by = launch->block[1], bz = launch->block[2];
    const unsigned gx = launch->grid[0], gy = launch->grid[1], gz = launch->grid[2];
    if (bx == 0 || by == 0 || bz == 0 || gx == 0 || gy == 0 || gz == 0)
        return report("empty launch (grid %ux%ux%u, block %ux%ux%u)", gx, gy, gz, bx, by, bz);
    const unsigned long long threads = 1ull * bx * by * bz;
    if (threads > kMaxThreadsPerBlock)
        return report("%llu threads per block exceed %u", threads, kMaxThreadsPerBlock);

    auto block = std::make_unique<Block>();
    Block& b = *block;
    b.threads = static_cast<unsigned>(threads);
    b.fibers.resize(b.threads);
    for (unsigned z = 0, i = 0; z < bz; ++z)
        for (unsigned y = 0; y < by; ++y)
            for (unsigned x = 0; x < bx; ++x, ++i) {
                b.fibers[i].tid = dim3{x, y, z};
                b.fibers[i].linear = i;
            }
    b.warps.resize((b.threads + 31) / 32);
    for (unsigned w = 0; w < b.warps.size(); ++w) {
        const unsigned lanes = std::min(32u, b.threads - w * 32);
        b.warps[w].lanes_present = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
    }
    b.thunk = thunk;
    b.args = args;
    b.dynamic_smem.resize(launch->dynamic_smem_bytes);

    t_block = &b;
    t_block_dim = dim3{bx, by, bz};
    t_grid_dim = dim3{gx, gy, gz};
    int status = 0;
    for (unsigned z = 0; z < gz && status == 0; ++z)
        for (unsigned y = 0; y < gy && status == 0; ++y)
            for (unsigned x = 0; x < gx && status == 0; ++x) {
                t_block_idx = dim3{x, y, z};
                if (!run_block(b)) status = report("block (%u,%u,%u): %s", x, y, z, b.error);
            }
    t_block = nullptr;
    return status;
}

}  // namespace emu
