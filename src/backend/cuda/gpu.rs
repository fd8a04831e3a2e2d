//! The real runtime: cudarc 0.19 (driver API, dynamically loaded) + cuBLAS, one stream. Kernels come
//! from the fatbins that build.rs embedded (sm_90 machine code, so no PTX JIT, plus PTX for newer
//! GPUs); they are loaded once at start-up, and launched through
//! `cuLaunchKernel` with the argument array the generated launchers build (the same one the emulator
//! gets). Nothing here is visible outside `backend::cuda`.
//!
//! cudarc panics when a library is missing, so [`probe`] checks `libcuda` and `libcublas` (opened
//! by [`super::libs`] where cudarc would not look) before anything else touches them.
//!
//! Errors name their operation: each call says what it was doing, a kernel fault found at a
//! synchronisation names the kernels launched since the previous one, and a release that failed
//! (cudarc keeps such errors in the context for whichever call comes next, on any thread) is taken
//! where it happens and reported, named, by the runtime's next call ([`LateErrors`]).

use std::collections::HashMap;
use std::ffi::c_void;
use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};

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
use super::libs;
use super::runtime::{
    pack_args, DeviceLimits, DeviceRuntime, Gemm, GraphExec, KernelArg, KernelRef, LaunchConfig,
    Mem, StagingMem,
};

/// cuBLAS's workspace: the size its documentation recommends for Hopper (32 MiB; 4 MiB before).
/// Set once on the handle, so that a GEMM inside a captured graph uses it instead of allocating its
/// own stream-ordered (and possibly choosing another algorithm than the eager warm-up did).
const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// Kernel names kept for a synchronisation's error (the last ones launched before it).
const NAMED_LAUNCHES: usize = 8;

/// Errors the driver reports late, kept with what caused them.
#[derive(Default)]
pub(crate) struct LateErrors(Mutex<LateState>);

#[derive(Default)]
struct LateState {
    /// The first release that failed since the runtime's last call.
    release: Option<String>,
    /// The last kernels launched since the last synchronisation, and how many in all.
    launched: Vec<&'static str>,
    launches: u64,
}

impl LateErrors {
    fn lock(&self) -> MutexGuard<'_, LateState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the error of a failed release (the first one until it is reported).
    fn released_with_error(&self, what: &str, error: impl std::fmt::Display) {
        self.lock()
            .release
            .get_or_insert_with(|| format!("{what} failed: {error}"));
    }

    /// Reports a kept release error as an error of `op` (once).
    fn check(&self, op: &str) -> Result<()> {
        match self.lock().release.take() {
            Some(release) => bail!(
                "{op}: not started, an earlier asynchronous CUDA release failed ({release}); the \
                 device may be in an error state"
            ),
            None => Ok(()),
        }
    }

    fn launched(&self, name: &'static str) {
        let mut state = self.lock();
        if state.launched.len() == NAMED_LAUNCHES {
            state.launched.remove(0);
        }
        state.launched.push(name);
        state.launches += 1;
    }

    fn synchronised(&self) {
        let mut state = self.lock();
        state.launched.clear();
        state.launches = 0;
    }

    /// What the work checked by a synchronisation launched, for its error.
    fn since_synchronisation(&self) -> String {
        let state = self.lock();
        if state.launches == 0 {
            return "no kernel was launched since the previous synchronisation".into();
        }
        let earlier = state.launches - state.launched.len() as u64;
        format!(
            "{} kernel launches since the previous synchronisation, the fault is in one of them \
             (the last: {}{}); CUDA_LAUNCH_BLOCKING=1 makes each launch report its own",
            state.launches,
            state.launched.join(", "),
            if earlier > 0 {
                format!(", after {earlier} more")
            } else {
                String::new()
            }
        )
    }
}

/// A CUDA resource whose release is checked where it happens: cudarc records a failed free or
/// destruction in the context, for the next call on any thread to trip over; this takes it at once
/// and keeps it, named, in [`LateErrors`].
pub(crate) struct Checked<T> {
    value: ManuallyDrop<T>,
    ctx: Arc<CudaContext>,
    late: Arc<LateErrors>,
    what: &'static str,
}

impl<T> Checked<T> {
    fn new(value: T, rt: &GpuRuntime, what: &'static str) -> Self {
        Self {
            value: ManuallyDrop::new(value),
            ctx: rt.ctx.clone(),
            late: rt.late.clone(),
            what,
        }
    }
}

impl<T> Deref for Checked<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> Drop for Checked<T> {
    fn drop(&mut self) {
        // SAFETY: taken once, here; never used again.
        drop(unsafe { ManuallyDrop::take(&mut self.value) });
        if let Err(e) = self.ctx.check_err() {
            self.late.released_with_error(self.what, e);
        }
    }
}

/// One device allocation (bytes).
pub(crate) struct GpuMem(Checked<CudaSlice<u8>>);

/// An instantiated CUDA graph of the stream's work.
pub(crate) struct GpuGraph(Checked<CudaGraph>);

/// Page-locked host memory for batches built on the host. Its copies to the device are asynchronous,
/// so the host must not write it again before the last one has completed: `copied` is recorded after
/// each copy and waited on before the memory is lent out for writing. (cudarc's own tracking of
/// pinned memory is off with event tracking disabled, see [`GpuRuntime::new`].)
pub(crate) struct GpuStaging {
    pinned: Checked<PinnedHostSlice<f32>>,
    copied: Checked<CudaEvent>,
}

impl GpuStaging {
    pub(crate) fn capacity(&self) -> usize {
        self.pinned.len()
    }

    pub(crate) fn as_mut_slice(&mut self) -> Result<&mut [f32]> {
        self.copied
            .late
            .check("waiting for an upload out of staging memory")?;
        self.copied
            .synchronize()
            .context("waiting for an upload out of staging memory")?;
        self.pinned
            .value
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
    cublas_library().map_err(|e| format!("cuBLAS: {e}"))?;
    match CudaContext::device_count() {
        Ok(0) => Err("the CUDA driver reports no device".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("the CUDA driver failed to initialise: {e}")),
    }
}

/// cuBLAS, `13.0.2 (/path/to/libcublas.so.13)`: opened by its full path first, so that cudarc's
/// open by bare name finds this same library (a loaded library answers to its soname).
pub(crate) fn cublas_library() -> std::result::Result<String, String> {
    let lib = libs::cublas()?;
    // SAFETY: only tries to dlopen the library.
    if !unsafe { cublas::sys::is_culib_present() } {
        return Err(format!(
            "{} was loaded but cudarc cannot open it by name (its soname is not one of \
             libcublas.so, .so.13, .so.12)",
            lib.path.display()
        ));
    }
    Ok(format!(
        "{} ({})",
        libs::cublas_version(lib),
        lib.path.display()
    ))
}

/// The driver (version and file) and each GPU it reports (name, architecture, SMs, memory), for
/// [`super::installation`].
pub(crate) fn driver_and_devices() -> Vec<(String, std::result::Result<String, String>)> {
    use cudarc::driver::result::{device, init};
    // SAFETY: only tries to dlopen the library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        let why = "no libcuda.so.1: no NVIDIA driver on this machine (or a container started \
                   without the GPU's driver mounted)";
        return vec![("driver".into(), Err(why.into()))];
    }
    if let Err(e) = init() {
        return vec![("driver".into(), Err(format!("cuInit failed: {e}")))];
    }
    let path = libs::loaded_path("libcuda.so")
        .map_or_else(|| "path unknown".into(), |p| p.display().to_string());
    let mut parts = vec![(
        "driver".to_string(),
        Ok(format!("{} ({path})", driver_version())),
    )];
    let count = match device::get_count() {
        Ok(n) => n,
        Err(e) => return [parts, vec![("GPUs".into(), Err(format!("{e}")))]].concat(),
    };
    if count == 0 {
        parts.push(("GPUs".into(), Err("the driver reports no device".into())));
    }
    for ordinal in 0..count {
        let describe = || -> std::result::Result<String, cudarc::driver::DriverError> {
            use CUdevice_attribute::*;
            let dev = device::get(ordinal)?;
            // SAFETY: a valid device handle; each call writes one value.
            let attr = |a| unsafe { device::get_attribute(dev, a) };
            let memory = unsafe { device::total_mem(dev) }?;
            Ok(format!(
                "{} (sm_{}{}, {} SMs, {:.1} GiB)",
                device::get_name(dev)?,
                attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
                attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
                memory as f64 / (1u64 << 30) as f64
            ))
        };
        parts.push((
            format!("GPU {ordinal}"),
            describe().map_err(|e| e.to_string()),
        ));
    }
    parts
}

/// The driver's version (`13.0`), once it is loaded.
pub(crate) fn driver_version() -> String {
    let mut driver = 0;
    // SAFETY: writes one int.
    match unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) }.result() {
        Ok(()) => format!("{}.{}", driver / 1000, driver % 1000 / 10),
        Err(_) => "unknown".into(),
    }
}

/// The driver and cuBLAS this process loaded, with their versions and paths, e.g. `driver 13.0
/// (/usr/lib/x86_64-linux-gnu/libcuda.so.580.65.06), cuBLAS 13.0.2 (/…/libcublas.so.13)`: which
/// library a run used, for its report.
fn loaded_libraries() -> String {
    let driver_path = libs::loaded_path("libcuda.so")
        .map_or_else(|| "path unknown".into(), |p| p.display().to_string());
    let cublas = cublas_library().unwrap_or_else(|e| format!("not loaded ({e})"));
    format!(
        "driver {} ({driver_path}), cuBLAS {cublas}",
        driver_version()
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
    late: Arc<LateErrors>,
    blas: CudaBlas,
    /// Lent to cuBLAS for the handle's life (declared after it, so dropped after it).
    _blas_workspace: CudaSlice<u8>,
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
        // SAFETY: only cuBLAS uses it, on this stream.
        let workspace = unsafe { stream.alloc::<u8>(CUBLAS_WORKSPACE_BYTES) }
            .context("cannot allocate cuBLAS's workspace")?;
        // Event tracking is off, so the guard records nothing.
        let address = workspace.device_ptr(&stream).0;
        // SAFETY: a valid handle and a live allocation of that size, kept as long as the handle.
        unsafe {
            cublas::sys::cublasSetWorkspace_v2(
                *blas.handle(),
                address as *mut c_void,
                CUBLAS_WORKSPACE_BYTES,
            )
        }
        .result()
        .context("cublasSetWorkspace")?;

        let description = format!(
            "cuda: {} (sm_{major}{minor}, {sm_count} SMs, TF32 {}; {})",
            ctx.name()?,
            if tf32 { "on" } else { "off" },
            loaded_libraries()
        );
        Ok(Self {
            ctx,
            stream,
            late: Arc::default(),
            blas,
            _blas_workspace: workspace,
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

    /// Makes the context current for `op`, first reporting a release that failed since the last
    /// call (as an error of `op` that says so).
    fn bind(&self, op: &str) -> Result<()> {
        self.late.check(op)?;
        self.ctx
            .bind_to_thread()
            .with_context(|| format!("{op}: binding the CUDA context"))
    }

    /// Waits for the stream; an error there is a fault of the work since the last synchronisation.
    fn sync_stream(&self, after: &str) -> Result<()> {
        self.late.check(after)?;
        match self.stream.synchronize() {
            Ok(()) => {
                self.late.synchronised();
                Ok(())
            }
            Err(e) => Err(anyhow!(e)).context(format!(
                "CUDA stream synchronisation {after}: {}",
                self.late.since_synchronisation()
            )),
        }
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
        self.late.check("a device allocation")?;
        let slice = unsafe { self.stream.alloc::<u8>(bytes.max(4)) }
            .with_context(|| format!("cannot allocate {bytes} bytes on the GPU"))?;
        Ok(Mem::Gpu(GpuMem(Checked::new(
            slice,
            self,
            "freeing a device buffer",
        ))))
    }

    fn write(&self, dst: &Mem, offset: usize, src: &[u8]) -> Result<()> {
        let dst = self.device_address(gpu(dst)?) + offset as u64;
        self.bind("host-to-device copy")?;
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
        Ok(StagingMem::Gpu(GpuStaging {
            pinned: Checked::new(pinned, self, "freeing page-locked host memory"),
            copied: Checked::new(copied, self, "destroying a staging event"),
        }))
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
            self.bind("device-to-host copy")?;
            // SAFETY: the caller checked that `offset + dst.len()` lies inside the allocation; the
            // synchronisation below completes the copy before `dst` is used.
            unsafe { driver_result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
                .context("device-to-host copy")?;
        }
        self.sync_stream("after a device-to-host copy")
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
        self.bind("device-to-device copy")?;
        // SAFETY: both ranges lie inside their allocations and do not overlap (the caller).
        unsafe { driver_result::memcpy_dtod_async(dst, src, bytes, self.stream.cu_stream()) }
            .context("device-to-device copy")
    }

    fn memset_zero(&self, dst: &Mem, offset: usize, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let dst = self.device_address(gpu(dst)?) + offset as u64;
        self.bind("device memset")?;
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
        self.bind(&format!(
            "launching kernel `{}` (kernels/{}.cu)",
            kernel.name, kernel.module
        ))?;
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
        })?;
        self.late.launched(kernel.name);
        Ok(())
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
        self.bind("cuBLAS sgemm_strided_batched")?;
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
        .map_err(|e| anyhow!("cuBLAS sgemm_strided_batched {g:?}: {e:?}"))?;
        self.late.launched("cuBLAS sgemm_strided_batched");
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.sync_stream("(Backend::synchronize)")
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
        self.late.check("cuStreamBeginCapture")?;
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
        Ok(GraphExec::Gpu(GpuGraph(Checked::new(
            graph,
            self,
            "destroying a CUDA graph",
        ))))
    }

    fn launch_graph(&self, graph: &GraphExec) -> Result<()> {
        match graph {
            GraphExec::Gpu(g) => {
                self.late.check("cuGraphLaunch")?;
                g.0.launch().context("cuGraphLaunch")?;
                self.late.launched("a CUDA graph replay");
                Ok(())
            }
            GraphExec::Emulated(_) => bail!("an emulated graph was passed to the GPU runtime"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LateErrors;

    #[test]
    fn a_failed_release_is_reported_once_by_the_next_call_naming_both() {
        let late = LateErrors::default();
        assert!(late.check("a device allocation").is_ok());
        late.released_with_error("freeing a device buffer", "CUDA_ERROR_ILLEGAL_ADDRESS");
        late.released_with_error("destroying a CUDA graph", "CUDA_ERROR_LAUNCH_FAILED");
        let err = late
            .check("launching kernel `sgd_step` (kernels/optim.cu)")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("launching kernel `sgd_step`"), "{err}");
        // The first failure is the one that matters; it is reported where it happened.
        assert!(
            err.contains("freeing a device buffer failed: CUDA_ERROR_ILLEGAL_ADDRESS"),
            "{err}"
        );
        assert!(!err.contains("graph"), "{err}");
        assert!(late.check("device-to-host copy").is_ok());
    }

    #[test]
    fn a_synchronisation_names_the_kernels_launched_since_the_previous_one() {
        let late = LateErrors::default();
        assert!(late.since_synchronisation().starts_with("no kernel"));
        let names = ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "a9"];
        for name in names {
            late.launched(name);
        }
        let text = late.since_synchronisation();
        assert!(text.starts_with("10 kernel launches"), "{text}");
        assert!(
            text.contains("the last: a2, a3, a4, a5, a6, a7, a8, a9, after 2 more"),
            "{text}"
        );
        late.synchronised();
        late.launched("conv_forward_m32");
        let text = late.since_synchronisation();
        assert!(
            text.contains("1 kernel launches") && text.contains("the last: conv_forward_m32)"),
            "{text}"
        );
    }
}
