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

struct Fiber {
    Context ctx;
    State state = State::Runnable;
    dim3 tid;
    unsigned linear = 0;  // x + y * bx + z * bx * by, as CUDA orders threads into warps
};

struct Warp {
    unsigned lanes_present = 0;  // lanes that exist (the block's last warp may be partial)
    unsigned arrived = 0;        // lanes waiting at the current exchange
    unsigned participants = 0;   // lanes of the current exchange
    unsigned generation = 0;     // exchanges completed; selects the value buffer
    uint64_t values[2][32] = {};
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

[[noreturn]] void fiber_entry() {
    Block& b = *t_block;
    b.thunk(b.args);
    Fiber* f = b.current;
    f->state = State::Done;
    ++b.done;
    context_switch(f->ctx, b.scheduler);
    std::abort();  // a finished fiber is never resumed
}

void set_error(Block& b, const char* fmt, ...) {
    if (b.failed) return;
    b.failed = true;
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(b.error, sizeof b.error, fmt, ap);
    va_end(ap);
}

// Runs one block to completion; false (with b.error set) on failure.
bool run_block(Block& b) {
    for (auto& w : b.warps) {
        w.arrived = 0;
        w.participants = 0;
        w.generation = 0;
    }
    for (unsigned i = 0; i < b.threads; ++i) {
        Fiber& f = b.fibers[i];
        f.state = State::Runnable;
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
