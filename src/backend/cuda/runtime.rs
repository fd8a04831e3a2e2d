//! The device-runtime seam under the CUDA backend: allocate, copy, launch kernel K with its arguments,
//! GEMM with cuBLAS's column-major contract, synchronise. Two implementations: [`super::gpu`] (cudarc +
//! cuBLAS on a real GPU) and [`super::emulator`] (the same kernels compiled for the CPU, a CPU GEMM).
//! The backend's ops are written once against [`DeviceRuntime`].

use std::ffi::{c_char, c_int, c_void};
use std::marker::PhantomData;
use std::sync::Arc;

use anyhow::{bail, ensure, Result};

use super::device::DeviceMem;
use super::emulator::{EmulatedGraph, HostMem};
use super::gpu::{GpuGraph, GpuMem, GpuRuntime, GpuStaging};

/// Launch description shared with the emulator's C++ side (`emu::Launch`).
#[repr(C)]
pub(crate) struct EmuLaunch {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_smem_bytes: u32,
}

/// Host entry point of an emulated kernel (`LTRAIN_EMU_EXPORT` in kernels/emu/cuda_emu.h):
/// cuLaunchKernel's argument contract, returns 0 or writes a message into `err`.
pub(crate) type EmulatedEntry =
    unsafe extern "C" fn(*const EmuLaunch, *mut *mut c_void, *mut c_char, usize) -> c_int;

/// A kernel as both runtimes know it: its module (kernel file) and name, its launch bound, and the
/// emulator's entry point.
#[derive(Clone, Copy)]
pub(crate) struct KernelRef {
    pub module: &'static str,
    pub name: &'static str,
    /// Threads per block it may be launched with: its `__launch_bounds__`, else
    /// `abi::DEFAULT_MAX_THREADS` (build.rs reads the declaration).
    pub max_threads: u32,
    pub emulated: EmulatedEntry,
}

/// Memory of one runtime. A buffer only works with the runtime that made it.
pub(crate) enum Mem {
    Host(HostMem),
    Gpu(GpuMem),
}

/// A captured graph of one runtime ([`DeviceRuntime::end_capture`]).
pub(crate) enum GraphExec {
    Emulated(EmulatedGraph),
    Gpu(GpuGraph),
}

/// Host staging memory of one runtime (`Backend::alloc_staging`).
pub(crate) enum StagingMem {
    /// The emulator's: ordinary host memory.
    Host(Vec<f32>),
    /// Page-locked memory and the event of its last copy to the device.
    Gpu(GpuStaging),
}

impl StagingMem {
    pub(crate) fn capacity(&self) -> usize {
        match self {
            StagingMem::Host(v) => v.len(),
            StagingMem::Gpu(g) => g.capacity(),
        }
    }

    pub(crate) fn as_mut_slice(&mut self) -> Result<&mut [f32]> {
        match self {
            StagingMem::Host(v) => Ok(v),
            StagingMem::Gpu(g) => g.as_mut_slice(),
        }
    }
}

/// A typed device buffer (`f32` for [`super::CudaBuf`], `u32` for [`super::CudaIndex`], `u64`/`f64`
/// for scratch), or a view of part of one (sharing its allocation). Opaque outside the backend.
pub struct DeviceBuffer<T> {
    pub(crate) mem: Arc<DeviceMem>,
    /// Offset into the allocation, in elements.
    offset: usize,
    len: usize,
    _element: PhantomData<T>,
}

impl<T> DeviceBuffer<T> {
    pub(crate) fn from_mem(mem: DeviceMem, len: usize) -> Self {
        Self {
            mem: Arc::new(mem),
            offset: 0,
            len,
            _element: PhantomData,
        }
    }
    pub(crate) fn len(&self) -> usize {
        self.len
    }
    /// Elements `offset..offset + len` of this buffer, sharing its memory (checked by the caller).
    pub(crate) fn view(&self, offset: usize, len: usize) -> Self {
        Self {
            mem: self.mem.clone(),
            offset: self.offset + offset,
            len,
            _element: PhantomData,
        }
    }
    /// Where the buffer starts in its allocation, in bytes.
    pub(crate) fn byte_offset(&self) -> usize {
        self.offset * std::mem::size_of::<T>()
    }
    pub(crate) fn bytes(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }
    /// Whether the two buffers share memory (the same allocation, overlapping ranges).
    pub(crate) fn overlaps<U>(&self, other: &DeviceBuffer<U>) -> bool {
        let (a0, b0) = (self.byte_offset(), other.byte_offset());
        Arc::ptr_eq(&self.mem, &other.mem)
            && a0 < b0 + other.bytes()
            && b0 < a0 + self.bytes()
            && self.len > 0
            && other.len > 0
    }
    pub(crate) fn arg(&self) -> KernelArg<'_> {
        KernelArg::Buffer {
            mem: &self.mem,
            offset: self.byte_offset(),
            bytes: self.bytes(),
        }
    }
    /// The same as [`Self::arg`]: `&mut` marks the kernels' outputs in the launchers' signatures.
    pub(crate) fn arg_mut(&mut self) -> KernelArg<'_> {
        self.arg()
    }
}

impl<T> std::fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match **self.mem {
            Mem::Host(_) => "emulated",
            Mem::Gpu(_) => "gpu",
        };
        write!(
            f,
            "DeviceBuffer<{}>[{}; offset {}; {place}]",
            std::any::type_name::<T>(),
            self.len,
            self.offset
        )
    }
}

/// One kernel argument, as cuLaunchKernel takes them (a pointer to each value).
pub(crate) enum KernelArg<'a> {
    /// Bytes `offset..offset + bytes` of an allocation.
    Buffer {
        mem: &'a Mem,
        offset: usize,
        bytes: usize,
    },
    /// A null pointer (an absent `_opt` buffer).
    Null,
    U32(u32),
    I32(i32),
    F32(f32),
    U64(u64),
}

impl From<u32> for KernelArg<'_> {
    fn from(v: u32) -> Self {
        KernelArg::U32(v)
    }
}
impl From<i32> for KernelArg<'_> {
    fn from(v: i32) -> Self {
        KernelArg::I32(v)
    }
}
impl From<f32> for KernelArg<'_> {
    fn from(v: f32) -> Self {
        KernelArg::F32(v)
    }
}
impl From<u64> for KernelArg<'_> {
    fn from(v: u64) -> Self {
        KernelArg::U64(v)
    }
}

/// Stores each argument's value in its own 8-byte slot (little-endian, so a 4-byte parameter reads
/// the low half) and returns the slots; `address_of` gives an allocation's device address.
pub(crate) fn pack_args(
    args: &[KernelArg<'_>],
    mut address_of: impl FnMut(&Mem) -> Result<u64>,
) -> Result<Vec<u64>> {
    args.iter()
        .map(|a| match *a {
            KernelArg::Buffer { mem, offset, .. } => Ok(address_of(mem)? + offset as u64),
            KernelArg::Null => Ok(0),
            KernelArg::U32(v) => Ok(u64::from(v)),
            KernelArg::I32(v) => Ok(u64::from(v as u32)),
            KernelArg::F32(v) => Ok(u64::from(v.to_bits())),
            KernelArg::U64(v) => Ok(v),
        })
        .collect()
}

/// Grid, block and dynamic shared memory of a launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_mem_bytes: u32,
    /// More than the default 48 KiB of dynamic shared memory (up to the opt-in limit); the GPU runtime
    /// sets the function attribute that permits it.
    pub large_shared_mem: bool,
}

impl LaunchConfig {
    /// A 1-D launch.
    pub fn linear(blocks: u32, threads: u32) -> Self {
        Self {
            grid: (blocks, 1, 1),
            block: (threads, 1, 1),
            shared_mem_bytes: 0,
            large_shared_mem: false,
        }
    }
}

/// Launch limits of a device (the H200's by default; the GPU runtime reads the real ones).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    pub max_threads_per_block: u32,
    pub max_block: [u32; 3],
    pub max_grid: [u32; 3],
    /// Shared memory per block without opting in.
    pub shared_per_block: u32,
    /// Shared memory per block with `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES` (opt-in).
    pub shared_per_block_optin: u32,
    /// Streaming multiprocessors (sizes grid-stride launches).
    pub sm_count: u32,
}

/// Blocks per SM a grid-stride launch gets at most: enough resident blocks to fill every SM several
/// times over; the grid-stride loops do the rest.
const BLOCKS_PER_SM: u32 = 16;
/// At most this many blocks in any grid-stride launch, so that a loop's step (at most
/// `MAX_GRID_BLOCKS * 1024` threads) stays below `2^32 - INDEX_LIMIT`: see `INDEX_LIMIT`.
pub(crate) const MAX_GRID_BLOCKS: u32 = 4096;
/// Sizes the kernels index (32-bit) are below this: a grid-stride index `i < n` advanced by at most
/// `MAX_GRID_BLOCKS * 1024` cannot wrap past `2^32` and start over.
pub(crate) const INDEX_LIMIT: u64 = (1 << 32) - MAX_GRID_BLOCKS as u64 * 1024;

impl DeviceLimits {
    /// NVIDIA H200 (compute capability 9.0).
    pub const H200: DeviceLimits = DeviceLimits {
        max_threads_per_block: 1024,
        max_block: [1024, 1024, 64],
        max_grid: [i32::MAX as u32, 65535, 65535],
        shared_per_block: 48 * 1024,
        shared_per_block_optin: 227 * 1024,
        sm_count: 132,
    };

    /// Errors (naming the kernel and the broken limit) unless `cfg` can launch; `static_smem` is the
    /// kernel's static shared memory where known (the GPU runtime reads it; the emulator cannot).
    pub fn check(&self, kernel: &str, cfg: &LaunchConfig, static_smem: u32) -> Result<()> {
        let (gx, gy, gz) = cfg.grid;
        let (bx, by, bz) = cfg.block;
        ensure!(
            gx > 0 && gy > 0 && gz > 0 && bx > 0 && by > 0 && bz > 0,
            "kernel `{kernel}`: empty launch (grid {:?}, block {:?})",
            cfg.grid,
            cfg.block
        );
        let threads = u64::from(bx) * u64::from(by) * u64::from(bz);
        ensure!(
            threads <= u64::from(self.max_threads_per_block),
            "kernel `{kernel}`: {threads} threads per block exceed the limit of {}",
            self.max_threads_per_block
        );
        for (axis, (&size, &max)) in ["x", "y", "z"]
            .iter()
            .zip([bx, by, bz].iter().zip(&self.max_block))
        {
            ensure!(
                size <= max,
                "kernel `{kernel}`: block.{axis} = {size} exceeds the limit of {max}"
            );
        }
        for (axis, (&size, &max)) in ["x", "y", "z"]
            .iter()
            .zip([gx, gy, gz].iter().zip(&self.max_grid))
        {
            ensure!(
                size <= max,
                "kernel `{kernel}`: grid.{axis} = {size} exceeds the limit of {max}"
            );
        }
        let shared = u64::from(cfg.shared_mem_bytes) + u64::from(static_smem);
        let limit = if cfg.large_shared_mem {
            self.shared_per_block_optin
        } else {
            self.shared_per_block
        };
        ensure!(
            shared <= u64::from(limit),
            "kernel `{kernel}`: {shared} bytes of shared memory per block ({} dynamic + {static_smem} \
             static) exceed the {} limit of {limit} bytes",
            cfg.shared_mem_bytes,
            if cfg.large_shared_mem {
                "opt-in"
            } else {
                "default (no opt-in)"
            }
        );
        Ok(())
    }
}

/// A (strided-batched) single-precision GEMM in cuBLAS's exact convention: column-major,
/// `C_i = alpha * op(A_i) * op(B_i) + beta * C_i` for `i < batch` with `op(A)` `m x k`, `op(B)` `k x n`,
/// `C` `m x n`, leading dimensions `lda`/`ldb`/`ldc`, operand `i` starting at `offset + i * stride`
/// (elements). With `beta == 0`, `C` is not read (NaN there does not propagate), as in cuBLAS.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub transa: bool,
    pub transb: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub beta: f32,
    pub a_offset: usize,
    pub lda: usize,
    pub stride_a: usize,
    pub b_offset: usize,
    pub ldb: usize,
    pub stride_b: usize,
    pub c_offset: usize,
    pub ldc: usize,
    pub stride_c: usize,
    pub batch: usize,
}

impl Gemm {
    /// `C = op(A) op(B)` with tight leading dimensions, no offsets, one batch.
    pub fn new(transa: bool, transb: bool, m: usize, n: usize, k: usize) -> Self {
        Self {
            transa,
            transb,
            m,
            n,
            k,
            alpha: 1.0,
            beta: 0.0,
            a_offset: 0,
            lda: if transa { k } else { m }.max(1),
            stride_a: 0,
            b_offset: 0,
            ldb: if transb { n } else { k }.max(1),
            stride_b: 0,
            c_offset: 0,
            ldc: m.max(1),
            stride_c: 0,
            batch: 1,
        }
    }

    /// Rows and columns of A and B as stored (before `op`).
    pub fn stored_a(&self) -> (usize, usize) {
        if self.transa {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        }
    }
    pub fn stored_b(&self) -> (usize, usize) {
        if self.transb {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        }
    }

    /// Checks the arguments as cuBLAS does (leading dimensions) and, beyond it, that every element
    /// touched lies inside its buffer and that the batches of C do not overlap: a wrong operand or
    /// stride is an error on both runtimes instead of a silent out-of-bounds access on the GPU.
    pub fn validate(&self, a_len: usize, b_len: usize, c_len: usize) -> Result<()> {
        let g = self;
        for (what, v) in [("m", g.m), ("n", g.n), ("k", g.k), ("batch", g.batch)] {
            ensure!(
                v <= i32::MAX as usize,
                "gemm: {what} = {v} exceeds cuBLAS's int range"
            );
        }
        for (what, v) in [("lda", g.lda), ("ldb", g.ldb), ("ldc", g.ldc)] {
            ensure!(
                v <= i32::MAX as usize,
                "gemm: {what} = {v} exceeds cuBLAS's int range"
            );
        }
        let (ra, ca) = g.stored_a();
        let (rb, cb) = g.stored_b();
        ensure!(
            g.lda >= ra.max(1),
            "gemm: lda = {} < {} rows of A as stored (transa = {})",
            g.lda,
            ra.max(1),
            g.transa
        );
        ensure!(
            g.ldb >= rb.max(1),
            "gemm: ldb = {} < {} rows of B as stored (transb = {})",
            g.ldb,
            rb.max(1),
            g.transb
        );
        ensure!(
            g.ldc >= g.m.max(1),
            "gemm: ldc = {} < m = {}",
            g.ldc,
            g.m.max(1)
        );
        if g.m == 0 || g.n == 0 || g.batch == 0 {
            return Ok(());
        }
        let end = |offset: usize, stride: usize, rows: usize, cols: usize, ld: usize| {
            offset + (g.batch - 1) * stride + (cols - 1) * ld + rows
        };
        if g.k > 0 {
            let a_end = end(g.a_offset, g.stride_a, ra, ca, g.lda);
            ensure!(
                a_end <= a_len,
                "gemm: A needs {a_end} elements (offset {}, stride {}, {ra}x{ca}, lda {}, batch {}) \
                 but has {a_len}",
                g.a_offset,
                g.stride_a,
                g.lda,
                g.batch
            );
            let b_end = end(g.b_offset, g.stride_b, rb, cb, g.ldb);
            ensure!(
                b_end <= b_len,
                "gemm: B needs {b_end} elements (offset {}, stride {}, {rb}x{cb}, ldb {}, batch {}) \
                 but has {b_len}",
                g.b_offset,
                g.stride_b,
                g.ldb,
                g.batch
            );
        }
        let c_end = end(g.c_offset, g.stride_c, g.m, g.n, g.ldc);
        ensure!(
            c_end <= c_len,
            "gemm: C needs {c_end} elements (offset {}, stride {}, {}x{}, ldc {}, batch {}) but has \
             {c_len}",
            g.c_offset,
            g.stride_c,
            g.m,
            g.n,
            g.ldc,
            g.batch
        );
        if g.batch > 1 && g.stride_c < (g.n - 1) * g.ldc + g.m {
            bail!(
                "gemm: batches of C overlap (stride_c {} < {} elements of one {}x{} matrix with ldc {})",
                g.stride_c,
                (g.n - 1) * g.ldc + g.m,
                g.m,
                g.n,
                g.ldc
            );
        }
        Ok(())
    }
}

/// What the backend needs from a device. Every operation is enqueued in order on one stream; errors of
/// asynchronous work may surface at the next synchronising call. The backend reaches it only through
/// [`super::device::Device`], which counts and caches.
pub(crate) trait DeviceRuntime: Send + Sync {
    /// E.g. `cuda: NVIDIA H200 (sm_90, TF32 on)` or `cuda emulator (CPU)`.
    fn describe(&self) -> String;
    /// Whether this is the CPU emulator (synchronous: results are ready when a call returns).
    fn is_emulated(&self) -> bool;
    /// The GPU runtime itself, for the NCCL collective (`super::nccl`), which orders its own
    /// stream against this one; `None` on the emulator.
    fn as_gpu(&self) -> Option<&GpuRuntime> {
        None
    }
    fn limits(&self) -> DeviceLimits;
    /// Largest useful 1-D grid for grid-stride kernels: the same on the emulator (with the H200's
    /// limits) as on an H200, so that both run the same launch configurations.
    fn max_grid_blocks(&self) -> u32 {
        (self.limits().sm_count.max(1) * BLOCKS_PER_SM).min(MAX_GRID_BLOCKS)
    }

    /// `bytes` of uninitialised memory.
    fn alloc(&self, bytes: usize) -> Result<Mem>;
    /// Marks memory handed out again as uninitialised (the emulator fills it with NaN bytes).
    fn poison(&self, _mem: &Mem) {}
    /// Copies `src` to `dst` from byte `offset` on (host to device). Device memory is written
    /// through shared references: the device, not Rust, orders its accesses (one stream).
    fn write(&self, dst: &Mem, offset: usize, src: &[u8]) -> Result<()>;
    /// Host staging memory of `len` zeroed `f32`.
    fn alloc_staging(&self, len: usize) -> Result<StagingMem>;
    /// Copies `staging[from..from + len]` (checked by the caller) to `dst` from byte `offset` on;
    /// asynchronous on a GPU.
    fn write_staged(
        &self,
        dst: &Mem,
        offset: usize,
        staging: &StagingMem,
        from: usize,
        len: usize,
    ) -> Result<()>;
    /// Copies `dst.len()` bytes of `src` from byte `offset` on to the host, after the queued work.
    fn read(&self, src: &Mem, offset: usize, dst: &mut [u8]) -> Result<()>;
    /// Copies `bytes` from `src[src_offset..]` to `dst[dst_offset..]` (byte offsets, checked by the
    /// caller; the ranges do not overlap).
    fn copy(
        &self,
        src: &Mem,
        src_offset: usize,
        dst: &Mem,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()>;
    fn memset_zero(&self, dst: &Mem, offset: usize, bytes: usize) -> Result<()>;
    fn launch(&self, kernel: &KernelRef, cfg: &LaunchConfig, args: &[KernelArg<'_>]) -> Result<()>;
    /// `g` was validated against the buffer lengths by the caller; its offsets are from the start
    /// of each allocation.
    fn gemm(&self, g: &Gemm, a: &Mem, b: &Mem, c: &Mem) -> Result<()>;
    fn synchronize(&self) -> Result<()>;
    fn range_push(&self, name: &str);
    fn range_pop(&self);
    /// From now on the stream's operations are recorded into a graph, not run. The capture rules
    /// (no synchronisation, read-back, pageable copy or fresh allocation) are enforced above, by
    /// [`super::device::Device`].
    fn begin_capture(&self) -> Result<()>;
    /// Stops recording: the graph of what was issued since `begin_capture`.
    fn end_capture(&self) -> Result<GraphExec>;
    /// Runs a captured graph in stream order, as if its operations were issued again.
    fn launch_graph(&self, graph: &GraphExec) -> Result<()>;
}
