//! The real runtime: cudarc 0.19 (driver API, dynamically loaded) + cuBLAS, one stream. Kernels come
//! from the fatbins that build.rs embedded (sm_90 machine code, so no PTX JIT, plus PTX for newer
//! GPUs); they are loaded once at start-up, and launched through
//! `cuLaunchKernel` with the argument array the generated launchers build (the same one the emulator
//! gets). Nothing here is visible outside `backend::cuda`.
//!
//! cudarc panics when a library is missing, so [`probe`] checks `libcuda` and `libcublas` with
//! `is_culib_present()` before anything else touches them.

use std::collections::HashMap;
use std::ffi::c_void;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use cudarc::cublas::{self, CudaBlas};
use cudarc::driver::sys::{
    CUdevice_attribute, CUevent_flags, CUfunction_attribute_enum, CUgraphInstantiate_flags,
    CUstreamCaptureMode,
};
use cudarc::driver::{
    result as driver_result, CudaContext, CudaEvent, CudaFunction, CudaGraph, CudaSlice,
    CudaStream, DevicePtr, PinnedHostSlice,
};
use cudarc::nvrtc::Ptx;

use super::kernels;
use super::runtime::{
    pack_args, DeviceLimits, DeviceRuntime, Gemm, GraphExec, KernelArg, KernelRef, LaunchConfig,
    Mem, StagingMem,
};

/// One device allocation (bytes).
pub(crate) struct GpuMem(CudaSlice<u8>);

/// An instantiated CUDA graph of the stream's work.
pub(crate) struct GpuGraph(CudaGraph);

/// Page-locked host memory for batches built on the host. Its copies to the device are asynchronous,
/// so the host must not write it again before the last one has completed: `copied` is recorded after
/// each copy and waited on before the memory is lent out for writing. (cudarc's own tracking of
/// pinned memory is off with event tracking disabled, see [`GpuRuntime::new`].)
pub(crate) struct GpuStaging {
    pinned: PinnedHostSlice<f32>,
    copied: CudaEvent,
}

impl GpuStaging {
    pub(crate) fn capacity(&self) -> usize {
        self.pinned.len()
    }

    pub(crate) fn as_mut_slice(&mut self) -> Result<&mut [f32]> {
        self.copied
            .synchronize()
            .context("waiting for an upload out of staging memory")?;
        self.pinned
            .as_mut_slice()
            .context("page-locked staging memory")
    }
}

impl Drop for GpuStaging {
    fn drop(&mut self) {
        // The memory is freed right after; a copy may still be reading it. An error here was a
        // failed copy, which the stream reports at its next synchronisation.
        let _ = self.copied.synchronize();
    }
}

fn gpu(mem: &Mem) -> Result<&GpuMem> {
    match mem {
        Mem::Gpu(g) => Ok(g),
        Mem::Host(_) => bail!("an emulator buffer was passed to the GPU backend"),
    }
}

/// Whether a CUDA GPU can be used by this build: kernels embedded, driver and cuBLAS libraries
/// present, at least one device. Never panics.
pub(crate) fn probe() -> std::result::Result<(), String> {
    if let Err(reason) = kernels::FATBINS {
        return Err(format!("this build has no GPU kernels ({reason})"));
    }
    // SAFETY: only tries to dlopen the library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("the NVIDIA driver library (libcuda.so.1) was not found".into());
    }
    // SAFETY: as above.
    if !unsafe { cublas::sys::is_culib_present() } {
        return Err(
            "cuBLAS (libcublas.so.13, or .12) was not found; install CUDA 13's cuBLAS (e.g. `pip \
             install nvidia-cublas`) and add its lib directory to LD_LIBRARY_PATH"
                .into(),
        );
    }
    match CudaContext::device_count() {
        Ok(0) => Err("the CUDA driver reports no device".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("the CUDA driver failed to initialise: {e}")),
    }
}

/// The driver and cuBLAS this process loaded, with their versions and paths, e.g. `driver 13.0
/// (/usr/lib/x86_64-linux-gnu/libcuda.so.580.65.06), cuBLAS 13.0.2 (/…/libcublas.so.13)`: which
/// library a run used, for its report.
fn loaded_libraries(blas: &CudaBlas) -> String {
    let mut driver = 0;
    // SAFETY: writes one int.
    let driver = match unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) }.result() {
        Ok(()) => format!("{}.{}", driver / 1000, driver % 1000 / 10),
        Err(_) => "unknown".into(),
    };
    let mut version = 0;
    // SAFETY: a valid handle; writes one int.
    let cublas =
        match unsafe { cublas::sys::cublasGetVersion_v2(*blas.handle(), &mut version) }.result() {
            Ok(()) => format!(
                "{}.{}.{}",
                version / 10000,
                version % 10000 / 100,
                version % 100
            ),
            Err(_) => "unknown".into(),
        };
    // Mapped files of this process: where the dynamic loader found each library.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let path = |name: &str| -> String {
        maps.lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| {
                Path::new(p)
                    .file_name()
                    .is_some_and(|f| f.to_string_lossy().starts_with(name))
            })
            .unwrap_or("path unknown")
            .to_string()
    };
    format!(
        "driver {driver} ({}), cuBLAS {cublas} ({})",
        path("libcuda.so"),
        path("libcublas.so")
    )
}

/// Every op allocates its outputs stream-ordered (cuMemAllocAsync) from the device's default pool,
/// whose release threshold of 0 would hand freed memory back to the driver at every synchronisation
/// (once per training step) and map it again on the next allocations. Keep it instead, as a caching
/// allocator does.
fn keep_pool_memory(ctx: &CudaContext) -> Result<()> {
    use cudarc::driver::sys;
    if !ctx.has_async_alloc() {
        return Ok(());
    }
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut threshold = u64::MAX;
    ctx.bind_to_thread()?;
    // SAFETY: plain driver calls on a live device, with pointers to local values.
    unsafe {
        sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()).result()?;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
        .result()?;
    }
    Ok(())
}

struct LoadedKernel {
    function: CudaFunction,
    static_smem: u32,
    /// The most threads per block it can be launched with (its registers and launch bounds).
    max_threads: u32,
}

pub(crate) struct GpuRuntime {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    /// cuBLAS handles must not be used by two host threads at once.
    blas_lock: Mutex<()>,
    functions: HashMap<&'static str, LoadedKernel>,
    limits: DeviceLimits,
    description: String,
}

impl GpuRuntime {
    pub(crate) fn new(ordinal: usize, tf32: bool) -> Result<Self> {
        probe().map_err(|reason| anyhow!("CUDA is not available: {reason}"))?;
        let fatbins = kernels::FATBINS.map_err(|reason| anyhow!("no GPU kernels: {reason}"))?;
        let ctx = CudaContext::new(ordinal)
            .with_context(|| format!("cannot open CUDA device {ordinal}"))?;
        // One stream, in-order: cudarc's per-buffer event tracking would only add overhead.
        // SAFETY: no buffer is ever used on another stream.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().context("cannot create a CUDA stream")?;
        keep_pool_memory(&ctx).context("configuring the CUDA memory pool")?;

        let mut modules = HashMap::new();
        for &(module, fatbin) in fatbins {
            // An owned copy: the driver wants the image aligned, `include_bytes!` is not.
            let loaded = ctx
                .load_module(Ptx::from_binary(fatbin.to_vec()))
                .with_context(|| {
                    format!(
                        "cannot load the code of kernels/{module}.cu (built for sm_90 with its \
                         compute_90 PTX; a GPU older than compute capability 9.0 cannot run it)"
                    )
                })?;
            modules.insert(module, loaded);
        }
        let mut functions = HashMap::new();
        for &(module, name) in kernels::KERNELS {
            let function = modules[module].load_function(name).with_context(|| {
                format!("kernel `{name}` missing from kernels/{module}.cu's fatbin")
            })?;
            let static_smem = u32::try_from(function.shared_size_bytes()?).unwrap_or(0);
            let max_threads = u32::try_from(function.max_threads_per_block()?).unwrap_or(0);
            functions.insert(
                name,
                LoadedKernel {
                    function,
                    static_smem,
                    max_threads,
                },
            );
        }

        let attr = |a: CUdevice_attribute| -> Result<u32> {
            let v = ctx.attribute(a)?;
            Ok(u32::try_from(v).unwrap_or(0))
        };
        use CUdevice_attribute::*;
        let limits = DeviceLimits {
            max_threads_per_block: attr(CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
            max_block: [
                attr(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X)?,
                attr(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y)?,
                attr(CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z)?,
            ],
            max_grid: [
                attr(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X)?,
                attr(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y)?,
                attr(CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z)?,
            ],
            shared_per_block: attr(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK)?,
            shared_per_block_optin: attr(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?,
            sm_count: attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
        };
        let sm_count = limits.sm_count;
        let (major, minor) = ctx.compute_capability()?;

        let blas = CudaBlas::new(stream.clone()).context("cannot create a cuBLAS handle")?;
        let math = if tf32 {
            cublas::sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH
        } else {
            cublas::sys::cublasMath_t::CUBLAS_DEFAULT_MATH
        };
        // SAFETY: a valid handle; cudarc has no safe wrapper for the math mode.
        unsafe { cublas::sys::cublasSetMathMode(*blas.handle(), math) }
            .result()
            .context("cublasSetMathMode")?;

        let description = format!(
            "cuda: {} (sm_{major}{minor}, {sm_count} SMs, TF32 {}; {})",
            ctx.name()?,
            if tf32 { "on" } else { "off" },
            loaded_libraries(&blas)
        );
        Ok(Self {
            ctx,
            stream,
            blas,
            blas_lock: Mutex::new(()),
            functions,
            limits,
            description,
        })
    }

    /// The device's context (the NCCL collective makes its stream and events there).
    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every op of the backend runs on.
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The device address where `mem` starts.
    pub(crate) fn address(&self, mem: &Mem) -> Result<u64> {
        Ok(self.device_address(gpu(mem)?))
    }

    fn device_address(&self, mem: &GpuMem) -> u64 {
        // Event tracking is off, so the guard records nothing.
        let (ptr, _guard) = mem.0.device_ptr(&self.stream);
        ptr
    }
}

impl DeviceRuntime for GpuRuntime {
    fn describe(&self) -> String {
        self.description.clone()
    }
    fn is_emulated(&self) -> bool {
        false
    }
    fn as_gpu(&self) -> Option<&GpuRuntime> {
        Some(self)
    }
    fn limits(&self) -> DeviceLimits {
        self.limits
    }

    fn alloc(&self, bytes: usize) -> Result<Mem> {
        // Stream-ordered (cuMemAllocAsync); a zero-byte request gets a small block so every buffer
        // has a valid address.
        // SAFETY: the memory is uninitialised; the backend writes it before reading (`Device`).
        let slice = unsafe { self.stream.alloc::<u8>(bytes.max(4)) }
            .with_context(|| format!("cannot allocate {bytes} bytes on the GPU"))?;
        Ok(Mem::Gpu(GpuMem(slice)))
    }

    fn write(&self, dst: &Mem, offset: usize, src: &[u8]) -> Result<()> {
        let dst = self.device_address(gpu(dst)?) + offset as u64;
        self.ctx.bind_to_thread()?;
        // SAFETY: the caller checked that `offset + src.len()` lies inside the allocation.
        unsafe { driver_result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .context("host-to-device copy")
    }

    fn alloc_staging(&self, len: usize) -> Result<StagingMem> {
        // Plain page-locked memory (not write-combined: the loader writes it pixel by pixel).
        // SAFETY: the memory is zero-filled below before anything reads it.
        let mut pinned = unsafe { self.ctx.alloc_pinned_with_flags::<f32>(len.max(1), 0) }
            .with_context(|| {
                format!(
                    "cannot allocate {} MB of page-locked host memory",
                    (len * 4) >> 20
                )
            })?;
        pinned.as_mut_slice()?.fill(0.0);
        let copied = self
            .ctx
            .new_event(Some(CUevent_flags::CU_EVENT_BLOCKING_SYNC))
            .context("cannot create a CUDA event")?;
        Ok(StagingMem::Gpu(GpuStaging { pinned, copied }))
    }

    fn write_staged(
        &self,
        dst: &Mem,
        offset: usize,
        staging: &StagingMem,
        from: usize,
        len: usize,
    ) -> Result<()> {
        let StagingMem::Gpu(staging) = staging else {
            bail!("emulator staging memory was passed to the GPU backend");
        };
        // Page-locked source: the driver copies by DMA, asynchronously, in stream order.
        let src = staging.pinned.as_slice()?;
        self.write(dst, offset, bytemuck::cast_slice(&src[from..from + len]))?;
        staging
            .copied
            .record(&self.stream)
            .context("recording the staging upload")
    }

    fn read(&self, src: &Mem, offset: usize, dst: &mut [u8]) -> Result<()> {
        let src = self.device_address(gpu(src)?) + offset as u64;
        if !dst.is_empty() {
            self.ctx.bind_to_thread()?;
            // SAFETY: the caller checked that `offset + dst.len()` lies inside the allocation; the
            // synchronisation below completes the copy before `dst` is used.
            unsafe { driver_result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
                .context("device-to-host copy")?;
        }
        self.stream
            .synchronize()
            .context("CUDA stream synchronisation after a device-to-host copy")
    }

    fn copy(
        &self,
        src: &Mem,
        src_offset: usize,
        dst: &Mem,
        dst_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let src = self.device_address(gpu(src)?) + src_offset as u64;
        let dst = self.device_address(gpu(dst)?) + dst_offset as u64;
        self.ctx.bind_to_thread()?;
        // SAFETY: both ranges lie inside their allocations and do not overlap (the caller).
        unsafe { driver_result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .context("device-to-device copy")
    }

    fn memset_zero(&self, dst: &Mem, offset: usize, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let dst = self.device_address(gpu(dst)?) + offset as u64;
        self.ctx.bind_to_thread()?;
        // SAFETY: the range lies inside the allocation (the caller).
        unsafe { driver_result::memset_d8_async(dst, 0, bytes, self.stream.cu_stream()) }
            .context("device memset")
    }

    fn launch(&self, kernel: &KernelRef, cfg: &LaunchConfig, args: &[KernelArg<'_>]) -> Result<()> {
        let loaded = self.functions.get(kernel.name).ok_or_else(|| {
            anyhow!(
                "kernel `{}` (kernels/{}.cu) was not loaded",
                kernel.name,
                kernel.module
            )
        })?;
        self.limits.check(kernel.name, cfg, loaded.static_smem)?;
        let (bx, by, bz) = cfg.block;
        if bx * by * bz > loaded.max_threads {
            bail!(
                "kernel `{}` (kernels/{}.cu): {} threads per block, more than the {} its compiled \
                 code allows on this GPU",
                kernel.name,
                kernel.module,
                bx * by * bz,
                loaded.max_threads
            );
        }
        if cfg.large_shared_mem {
            loaded
                .function
                .set_attribute(
                    CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    cfg.shared_mem_bytes as i32,
                )
                .with_context(|| format!("kernel `{}`: opting in to shared memory", kernel.name))?;
        }
        let mut slots = pack_args(args, |mem| Ok(self.device_address(gpu(mem)?)))?;
        let mut params: Vec<*mut c_void> = slots
            .iter_mut()
            .map(|slot| (slot as *mut u64).cast::<c_void>())
            .collect();
        self.ctx.bind_to_thread()?;
        // SAFETY: `params[i]` points at the i-th argument as the kernel's signature declares it (the
        // launcher was generated from that signature); buffers stay alive until the stream is
        // synchronised because their frees are stream-ordered after this launch.
        unsafe {
            driver_result::launch_kernel(
                loaded.function.cu_function(),
                cfg.grid,
                cfg.block,
                cfg.shared_mem_bytes,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .with_context(|| {
            format!(
                "launching kernel `{}` (kernels/{}.cu) with {cfg:?}",
                kernel.name, kernel.module
            )
        })
    }

    fn gemm(&self, g: &Gemm, a: &Mem, b: &Mem, c: &Mem) -> Result<()> {
        if g.m == 0 || g.n == 0 || g.batch == 0 {
            return Ok(());
        }
        let a = self.device_address(gpu(a)?) + 4 * g.a_offset as u64;
        let b = self.device_address(gpu(b)?) + 4 * g.b_offset as u64;
        let c = self.device_address(gpu(c)?) + 4 * g.c_offset as u64;
        let op = |t: bool| {
            if t {
                cublas::sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                cublas::sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let _serialised = self
            .blas_lock
            .lock()
            .map_err(|_| anyhow!("cuBLAS lock poisoned"))?;
        self.ctx.bind_to_thread()?;
        // SAFETY: the caller validated the descriptor against the buffer lengths; the pointers are
        // device addresses of live allocations on the handle's stream.
        unsafe {
            cublas::result::sgemm_strided_batched(
                *self.blas.handle(),
                op(g.transa),
                op(g.transb),
                g.m as i32,
                g.n as i32,
                g.k as i32,
                &g.alpha,
                a as *const f32,
                g.lda as i32,
                g.stride_a as i64,
                b as *const f32,
                g.ldb as i32,
                g.stride_b as i64,
                &g.beta,
                c as *mut f32,
                g.ldc as i32,
                g.stride_c as i64,
                g.batch as i32,
            )
        }
        .map_err(|e| anyhow!("cuBLAS sgemm_strided_batched {g:?}: {e:?}"))
    }

    fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .context("CUDA stream synchronisation")
    }

    // NVTX 3 (the `nvtx` crate bundles its headers; cudarc's own feature needs libnvToolsExt, which
    // CUDA 13 no longer ships) is header-only: these are no-ops unless a profiler (nsys) injects itself.
    fn range_push(&self, name: &str) {
        nvtx::range_push!("{name}");
    }
    fn range_pop(&self) {
        nvtx::range_pop!();
    }

    fn begin_capture(&self) -> Result<()> {
        // Thread-local: the loader threads' own CUDA calls (staging events) stay legal meanwhile.
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .context("cuStreamBeginCapture")
    }

    fn end_capture(&self) -> Result<GraphExec> {
        let graph = self
            .stream
            .end_capture(CUgraphInstantiate_flags(0))
            .context("cuStreamEndCapture / cuGraphInstantiate")?
            .ok_or_else(|| anyhow!("CUDA graph capture recorded nothing"))?;
        // Uploaded now, so that the first replay does not pay for it.
        graph.upload().context("cuGraphUpload")?;
        Ok(GraphExec::Gpu(GpuGraph(graph)))
    }

    fn launch_graph(&self, graph: &GraphExec) -> Result<()> {
        match graph {
            GraphExec::Gpu(g) => g.0.launch().context("cuGraphLaunch"),
            GraphExec::Emulated(_) => bail!("an emulated graph was passed to the GPU runtime"),
        }
    }
}
