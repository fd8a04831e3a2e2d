//! The CPU emulator runtime: "device" memory is host memory, kernels are the very `kernels/*.cu`
//! sources compiled by the host C++ compiler through `kernels/emu/cuda_emu.h` (a grid of blocks whose
//! threads are fibers; `__syncthreads`, warp shuffles and atomics emulated), and GEMM is a CPU loop that
//! follows cuBLAS's column-major argument convention exactly, so an operand, transpose or
//! leading-dimension mistake in the backend fails here as it would on the GPU.
//!
//! Launches run synchronously on the calling thread and are checked against the H200's launch limits
//! first. What the emulator cannot show: timing, races that need real warp scheduling, and a kernel's
//! static shared memory (checked by ptxas, and by the GPU runtime at launch).

use std::alloc::{self, Layout};
use std::ffi::{c_char, c_void, CStr};
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard};

use anyhow::{bail, ensure, Result};

use super::runtime::{
    pack_args, DeviceLimits, DeviceRuntime, EmuLaunch, Gemm, GraphExec, KernelArg, KernelRef,
    LaunchConfig, Mem, StagingMem,
};

/// cudaMalloc's alignment.
const ALIGN: usize = 256;

/// One emulated device allocation: host memory accessed through raw pointers only (kernels write
/// through them), freed on drop. A count-only emulator hands out sizes without memory (`ptr` None).
pub(crate) struct HostMem {
    ptr: Option<NonNull<u8>>,
    bytes: usize,
}

// SAFETY: HostMem owns its allocation exclusively, like a Box<[u8]>; Rust code only reaches the
// memory through &HostMem / &mut HostMem, so the borrow rules order every access.
unsafe impl Send for HostMem {}
unsafe impl Sync for HostMem {}

impl HostMem {
    /// `bytes` of memory (none at all when not executing). Uninitialised: `Device::alloc` poisons
    /// it before any use.
    fn new(bytes: usize, execute: bool) -> Result<Self> {
        if !execute {
            return Ok(Self { ptr: None, bytes });
        }
        let layout = Self::layout(bytes)?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc(layout) };
        match NonNull::new(ptr) {
            Some(ptr) => Ok(Self {
                ptr: Some(ptr),
                bytes,
            }),
            None => bail!("emulator: out of host memory allocating {bytes} bytes"),
        }
    }

    fn layout(bytes: usize) -> Result<Layout> {
        Ok(Layout::from_size_align(bytes.max(1), ALIGN)?)
    }

    /// Fills the memory with NaN bytes: what an op reads without writing it first is NaN.
    fn poison(&self) {
        if let Some(ptr) = self.ptr {
            // SAFETY: the allocation holds `bytes.max(1)` bytes.
            unsafe { std::ptr::write_bytes(ptr.as_ptr(), POISON, self.bytes) };
        }
    }

    fn address(&self) -> u64 {
        self.ptr.map_or(0, |p| p.as_ptr() as u64)
    }

    /// The first `bytes` bytes (empty without memory).
    fn as_ptr(&self) -> *mut u8 {
        self.ptr.map_or(std::ptr::null_mut(), NonNull::as_ptr)
    }
}

impl Drop for HostMem {
    fn drop(&mut self) {
        if let Some(ptr) = self.ptr {
            let layout = Self::layout(self.bytes).expect("layout was valid at allocation");
            // SAFETY: allocated by `alloc` with this layout.
            unsafe { alloc::dealloc(ptr.as_ptr(), layout) };
        }
    }
}

/// The byte uninitialised emulator memory holds: `0xFFFFFFFF` is a NaN as `f32`.
const POISON: u8 = 0xFF;

fn host(mem: &Mem) -> Result<&HostMem> {
    match mem {
        Mem::Host(h) => Ok(h),
        Mem::Gpu(_) => bail!("a GPU buffer was passed to the CUDA emulator backend"),
    }
}

/// An operation recorded while capturing, its device addresses resolved: `Device` keeps the
/// graph's memory allocated for as long as the graph lives, as the driver does for a CUDA graph.
enum Recorded {
    Launch {
        kernel: KernelRef,
        cfg: LaunchConfig,
        slots: Vec<u64>,
    },
    Gemm {
        g: Gemm,
        /// (address, f32 elements) of A and B; the address of C.
        a: (usize, usize),
        b: (usize, usize),
        c: usize,
    },
    Memset {
        dst: usize,
        bytes: usize,
    },
    /// Device-to-device, or from page-locked (here: staging) host memory, read at replay.
    Copy {
        src: usize,
        dst: usize,
        bytes: usize,
    },
}

/// The emulator's graph: the recorded operations, replayed in order.
pub(crate) struct EmulatedGraph {
    ops: Vec<Recorded>,
}

/// The emulator runtime.
pub(crate) struct EmulatorRuntime {
    /// Round GEMM inputs to TF32 (10-bit mantissa), as cuBLAS does with TF32 tensor-op math.
    tf32: bool,
    /// Run kernels and copies; `false` only goes through the motions (sizes, launch checks) so that
    /// the device work of shapes too large to emulate can be counted.
    execute: bool,
    /// The operations recorded since `begin_capture`, while capturing.
    recording: Mutex<Option<Vec<Recorded>>>,
}

// SAFETY: the recorded addresses are plain integers; the memory behind them is owned elsewhere.
unsafe impl Send for EmulatorRuntime {}
unsafe impl Sync for EmulatorRuntime {}

impl EmulatorRuntime {
    pub(crate) fn new(tf32: bool, execute: bool) -> Self {
        Self {
            tf32,
            execute,
            recording: Mutex::new(None),
        }
    }

    fn recording(&self) -> MutexGuard<'_, Option<Vec<Recorded>>> {
        self.recording.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `op` while capturing, else runs it now.
    fn issue(&self, op: Recorded) -> Result<()> {
        if let Some(ops) = self.recording().as_mut() {
            if self.execute {
                ops.push(op);
            }
            return Ok(());
        }
        self.run(&op)
    }

    fn run(&self, op: &Recorded) -> Result<()> {
        if !self.execute {
            return Ok(());
        }
        match op {
            Recorded::Launch { kernel, cfg, slots } => run_kernel(kernel, cfg, slots.clone()),
            Recorded::Gemm { g, a, b, c } => {
                // SAFETY: the addresses are of live allocations of these lengths (the caller's
                // buffers, or a graph's memory, kept while the graph lives); C overlaps neither
                // input (checked by the backend).
                unsafe {
                    host_gemm(
                        g,
                        (a.0 as *const f32, a.1),
                        (b.0 as *const f32, b.1),
                        *c as *mut f32,
                        self.tf32,
                    )
                };
                Ok(())
            }
            Recorded::Memset { dst, bytes } => {
                // SAFETY: in bounds of a live allocation (checked when issued).
                unsafe { std::ptr::write_bytes(*dst as *mut u8, 0, *bytes) };
                Ok(())
            }
            Recorded::Copy { src, dst, bytes } => {
                // SAFETY: both ranges in bounds of live memory and disjoint (checked when issued).
                unsafe {
                    std::ptr::copy_nonoverlapping(*src as *const u8, *dst as *mut u8, *bytes)
                };
                Ok(())
            }
        }
    }
}

/// Runs one emulated kernel on the calling thread; `slots` hold its argument values.
fn run_kernel(kernel: &KernelRef, cfg: &LaunchConfig, mut slots: Vec<u64>) -> Result<()> {
    let mut pointers: Vec<*mut c_void> = slots
        .iter_mut()
        .map(|slot| (slot as *mut u64).cast::<c_void>())
        .collect();
    let launch = EmuLaunch {
        grid: [cfg.grid.0, cfg.grid.1, cfg.grid.2],
        block: [cfg.block.0, cfg.block.1, cfg.block.2],
        dynamic_smem_bytes: cfg.shared_mem_bytes,
    };
    let mut err = [0 as c_char; 1024];
    // SAFETY: `pointers[i]` points at the i-th argument value, as the kernel's signature (from which
    // its launcher was generated) expects; buffers outlive the synchronous launch.
    let status =
        unsafe { (kernel.emulated)(&launch, pointers.as_mut_ptr(), err.as_mut_ptr(), err.len()) };
    if status != 0 {
        // SAFETY: the C++ side NUL-terminates the message within the buffer.
        let message = unsafe { CStr::from_ptr(err.as_ptr()) };
        bail!(
            "emulator (kernels/{}.cu): {}",
            kernel.module,
            message.to_string_lossy()
        );
    }
    Ok(())
}

impl DeviceRuntime for EmulatorRuntime {
    fn describe(&self) -> String {
        format!(
            "cuda emulator (CPU, H200 launch limits, TF32 {}{})",
            if self.tf32 { "emulated" } else { "off" },
            if self.execute { "" } else { ", count only" }
        )
    }
    fn is_emulated(&self) -> bool {
        true
    }
    fn limits(&self) -> DeviceLimits {
        DeviceLimits::H200
    }

    fn alloc(&self, bytes: usize) -> Result<Mem> {
        Ok(Mem::Host(HostMem::new(bytes, self.execute)?))
    }

    fn poison(&self, mem: &Mem) {
        if let Mem::Host(h) = mem {
            h.poison();
        }
    }

    fn write(&self, dst: &Mem, offset: usize, src: &[u8]) -> Result<()> {
        let dst = host(dst)?;
        assert!(offset + src.len() <= dst.bytes);
        if self.execute {
            // SAFETY: in bounds; the destination is device memory, not the host slice.
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_ptr().add(offset), src.len())
            };
        }
        Ok(())
    }

    fn alloc_staging(&self, len: usize) -> Result<StagingMem> {
        Ok(StagingMem::Host(vec![0.0; len]))
    }

    fn write_staged(
        &self,
        dst: &Mem,
        offset: usize,
        staging: &StagingMem,
        from: usize,
        len: usize,
    ) -> Result<()> {
        let StagingMem::Host(v) = staging else {
            bail!("GPU staging memory was passed to the CUDA emulator");
        };
        let src: &[u8] = bytemuck::cast_slice(&v[from..from + len]);
        let dst_mem = host(dst)?;
        assert!(offset + src.len() <= dst_mem.bytes);
        // Page-locked memory on a GPU: a graph reads it when replayed.
        self.issue(Recorded::Copy {
            src: src.as_ptr() as usize,
            dst: dst_mem.address() as usize + offset,
            bytes: src.len(),
        })
    }

    fn read(&self, src: &Mem, offset: usize, dst: &mut [u8]) -> Result<()> {
        let src = host(src)?;
        assert!(offset + dst.len() <= src.bytes);
        if self.execute {
            // SAFETY: in bounds; dst is a distinct Rust slice.
            unsafe {
                std::ptr::copy_nonoverlapping(src.as_ptr().add(offset), dst.as_mut_ptr(), dst.len())
            };
        } else {
            dst.fill(0);
        }
        Ok(())
    }

    fn copy(
        &self,
        src: &Mem,
        src_offset: usize,
        dst: &Mem,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        let (src, dst) = (host(src)?, host(dst)?);
        assert!(src_offset + bytes <= src.bytes && dst_offset + bytes <= dst.bytes);
        self.issue(Recorded::Copy {
            src: src.address() as usize + src_offset,
            dst: dst.address() as usize + dst_offset,
            bytes,
        })
    }

    fn memset_zero(&self, dst: &Mem, offset: usize, bytes: usize) -> Result<()> {
        let dst = host(dst)?;
        assert!(offset + bytes <= dst.bytes);
        self.issue(Recorded::Memset {
            dst: dst.address() as usize + offset,
            bytes,
        })
    }

    fn launch(&self, kernel: &KernelRef, cfg: &LaunchConfig, args: &[KernelArg<'_>]) -> Result<()> {
        self.limits().check(kernel.name, cfg, 0)?;
        if !self.execute {
            return Ok(());
        }
        self.issue(Recorded::Launch {
            kernel: *kernel,
            cfg: *cfg,
            slots: pack_args(args, |mem| Ok(host(mem)?.address()))?,
        })
    }

    fn gemm(&self, g: &Gemm, a: &Mem, b: &Mem, c: &Mem) -> Result<()> {
        let (a, b, c) = (host(a)?, host(b)?, host(c)?);
        let operand = |m: &HostMem| (m.address() as usize, m.bytes / 4);
        self.issue(Recorded::Gemm {
            g: *g,
            a: operand(a),
            b: operand(b),
            c: c.address() as usize,
        })
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn range_push(&self, _name: &str) {}
    fn range_pop(&self) {}

    fn begin_capture(&self) -> Result<()> {
        let mut recording = self.recording();
        ensure!(
            recording.is_none(),
            "emulator: a capture is already under way"
        );
        *recording = Some(Vec::new());
        Ok(())
    }

    fn end_capture(&self) -> Result<GraphExec> {
        let ops = self.recording().take();
        match ops {
            Some(ops) => Ok(GraphExec::Emulated(EmulatedGraph { ops })),
            None => bail!("emulator: end of a capture that was not begun"),
        }
    }

    fn launch_graph(&self, graph: &GraphExec) -> Result<()> {
        let GraphExec::Emulated(graph) = graph else {
            bail!("a GPU graph was passed to the CUDA emulator");
        };
        ensure!(
            self.recording().is_none(),
            "emulator: a graph launched while capturing"
        );
        graph.ops.iter().try_for_each(|op| self.run(op))
    }
}

/// TF32: round to nearest even at 10 mantissa bits.
fn to_tf32(x: f32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    let bits = x.to_bits();
    let round = 0x0fff + ((bits >> 13) & 1);
    f32::from_bits(bits.wrapping_add(round) & !0x1fff)
}

/// cuBLAS's `sgemmStridedBatched` (column-major) on the CPU through the `gemm` crate, whose arbitrary
/// row/column strides express each operand exactly as cuBLAS reads it. `g` is validated against the
/// operands' lengths; A and B are `(pointer, elements)`, C a pointer (its length checked by `g`).
///
/// # Safety
/// The pointers must be live for the given lengths, and the elements of C the GEMM writes must not
/// overlap A or B.
unsafe fn host_gemm(
    g: &Gemm,
    (a, a_len): (*const f32, usize),
    (b, b_len): (*const f32, usize),
    c: *mut f32,
    tf32: bool,
) {
    let (m, n, k) = (g.m, g.n, g.k);
    if m == 0 || n == 0 {
        return;
    }
    let rounded;
    let (a, b) = if tf32 {
        // SAFETY: live for these lengths (the caller).
        let (a, b) = unsafe {
            (
                std::slice::from_raw_parts(a, a_len),
                std::slice::from_raw_parts(b, b_len),
            )
        };
        rounded = (
            a.iter().map(|&x| to_tf32(x)).collect::<Vec<_>>(),
            b.iter().map(|&x| to_tf32(x)).collect::<Vec<_>>(),
        );
        (rounded.0.as_ptr(), rounded.1.as_ptr())
    } else {
        (a, b)
    };
    // (row stride, column stride) of op(X) for a column-major X with leading dimension ld.
    let strides = |transposed: bool, ld: usize| {
        if transposed {
            (ld as isize, 1)
        } else {
            (1, ld as isize)
        }
    };
    let (a_rs, a_cs) = strides(g.transa, g.lda);
    let (b_rs, b_cs) = strides(g.transb, g.ldb);
    for batch in 0..g.batch {
        let a0 = g.a_offset + batch * g.stride_a;
        let b0 = g.b_offset + batch * g.stride_b;
        let c0 = g.c_offset + batch * g.stride_c;
        if k == 0 {
            for j in 0..n {
                for i in 0..m {
                    // SAFETY: inside C (validated).
                    let v = unsafe { &mut *c.add(c0 + j * g.ldc + i) };
                    *v = if g.beta == 0.0 { 0.0 } else { g.beta * *v };
                }
            }
            continue;
        }
        // SAFETY: `g.validate` checked that every element op(A), op(B) and C address lies inside
        // its operand; what is written of C overlaps neither input (the caller).
        unsafe {
            ::gemm::gemm(
                m,
                n,
                k,
                c.add(c0),
                g.ldc as isize,
                1,
                g.beta != 0.0, // C is not read when beta is 0, as in cuBLAS
                a.add(a0),
                a_cs,
                a_rs,
                b.add(b0),
                b_cs,
                b_rs,
                g.beta,
                g.alpha,
                false,
                false,
                false,
                ::gemm::Parallelism::Rayon(0),
            );
        }
    }
}
