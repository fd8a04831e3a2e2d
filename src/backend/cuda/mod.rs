//! CUDA backend: hand-written kernels (`kernels/*.cu`, compiled to sm_90 fatbins by build.rs) and
//! cuBLAS GEMMs, written once against a small device-runtime seam (`runtime::DeviceRuntime`) with
//! two implementations:
//! - the GPU ([`CudaBackend::new_gpu`]): cudarc 0.19 with dynamically loaded `libcuda` and `libcublas`,
//!   one stream, TF32 GEMMs by default ([`CudaOptions::tf32`]);
//! - the emulator ([`CudaBackend::new_emulated`]): the same kernel sources compiled for the CPU and run
//!   as a grid of blocks of fiber threads (barriers, warp shuffles and atomics emulated), launch limits
//!   checked with the H200's values, and a CPU GEMM with cuBLAS's exact argument convention. It makes
//!   the kernels and the backend's glue testable on a machine without a GPU.
//!
//! Parameters, gradients and activations stay on the device: no op reads device memory on the host.
//! Kernels that meet an out-of-range index (labels, permutations) or a malformed parameter row write
//! NaN instead of reading out of bounds and record the first such error (op, position, value) in a
//! device-side error record (`abi::KERNEL_ERRORS`); the emulator reports it from the op itself, the
//! GPU at the next [`Backend::synchronize`] or download, with the message the CPU backend gives.
//!
//! Profiler ranges: [`Backend::range_push`] / [`Backend::range_pop`] are NVTX ranges on the GPU (no-ops
//! unless a profiler such as nsys injects itself) and no-ops on the emulator.

mod augment;
mod conv;
mod device;
mod eltwise;
mod emulator;
mod gpu;
mod kernels;
pub mod libs;
mod linear;
mod loss;
pub mod nccl;
mod norm;
mod optim;
mod pool;
mod rows;
mod runtime;
pub mod selftest;
mod unfused;

use std::sync::{Mutex, MutexGuard};

use anyhow::{anyhow, bail, Result};

pub use augment::CudaBytes;
use runtime::StagingMem;
pub use runtime::{DeviceBuffer, DeviceLimits, Gemm, LaunchConfig};

use super::abi::{self, ERROR_RECORD_WORDS};
use super::{Backend, Buffers, HostStaging};
use crate::backend::counters::DeviceCounters;
use device::{byte_size, Device};
use runtime::DeviceRuntime;

/// A device buffer of `f32`.
pub type CudaBuf = DeviceBuffer<f32>;
/// A device buffer of `u32` (labels, indices, permutations).
pub type CudaIndex = DeviceBuffer<u32>;

/// Options of the CUDA backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaOptions {
    /// TF32 tensor cores for the products (about 10 mantissa bits in each operand): cuBLAS's fp32
    /// GEMMs (the emulator rounds their inputs to TF32 to mimic it) and the convolutions, which run
    /// the tensor-core kernels (kernels/conv_mma.cu) instead of the fp32 FMA ones (kernels/conv.cu).
    pub tf32: bool,
}

impl Default for CudaOptions {
    fn default() -> Self {
        Self { tf32: true }
    }
}

/// Whether this build can use a CUDA GPU here: GPU kernels embedded at build time (nvcc was found),
/// `libcuda` and `libcublas` loadable, at least one device. `Err` says why not, in one line; never
/// panics. `--device auto` uses it to fall back to the CPU.
pub fn cuda_available() -> std::result::Result<(), String> {
    gpu::probe()
}

/// What this process finds of CUDA, for `ltrain device`: the build's kernels, the driver, cuBLAS and
/// NCCL (version and file), then each GPU; `Err` says why a part is missing. Never panics.
pub fn installation() -> Vec<(String, std::result::Result<String, String>)> {
    let mut parts = vec![(
        "kernels".to_string(),
        kernels::FATBINS
            .map(|f| format!("{} fatbins (sm_90 code, compute_90 PTX)", f.len()))
            .map_err(str::to_string),
    )];
    parts.push(("cuBLAS".into(), gpu::cublas_library()));
    parts.push(("NCCL".into(), nccl::nccl_library()));
    parts.extend(gpu::driver_and_devices());
    parts
}

/// Host staging memory of the CUDA backend (page-locked on a GPU). Opaque outside the backend.
pub struct CudaStaging(StagingMem);

/// A captured CUDA graph (on the emulator: the recorded operations), with the memory it uses.
pub struct CudaGraph(device::Graph);

impl HostStaging for CudaStaging {
    fn capacity(&self) -> usize {
        self.0.capacity()
    }
    fn as_mut_slice(&mut self) -> Result<&mut [f32]> {
        self.0.as_mut_slice()
    }
}

/// The CUDA backend over one device runtime (GPU or emulator).
pub struct CudaBackend {
    dev: Device,
    /// Device-side error record `[code, position, value, detail]` (`abi::ERROR_RECORD_WORDS`):
    /// kernels that meet a bad index or parameter row write the first one there.
    error_record: Mutex<DeviceBuffer<u32>>,
    /// Counters of the last-block reductions (convolution weight gradients, batch-norm sums), zero
    /// between launches; grown when a launch needs more.
    block_counters: Mutex<DeviceBuffer<u32>>,
    /// Outgrown block counters, kept: a captured graph may still use them.
    retired_counters: Mutex<Vec<DeviceBuffer<u32>>>,
    options: CudaOptions,
}

impl CudaBackend {
    /// The GPU `ordinal` with default options (TF32 on).
    pub fn new_gpu(ordinal: usize) -> Result<Self> {
        Self::new_gpu_with(ordinal, CudaOptions::default())
    }

    pub fn new_gpu_with(ordinal: usize, options: CudaOptions) -> Result<Self> {
        let rt = gpu::GpuRuntime::new(ordinal, options.tf32)?;
        Self::with_runtime(Box::new(rt), options)
    }

    /// The CPU emulator with strict fp32 GEMMs (no TF32 rounding), for close comparisons with the CPU
    /// reference backend.
    pub fn new_emulated() -> Result<Self> {
        Self::new_emulated_with(CudaOptions { tf32: false })
    }

    pub fn new_emulated_with(options: CudaOptions) -> Result<Self> {
        let rt = emulator::EmulatorRuntime::new(options.tf32, true);
        Self::with_runtime(Box::new(rt), options)
    }

    /// An emulator that runs no kernel and holds no memory: it only counts the device work
    /// ([`Backend::device_counters`]) of shapes too large to emulate, with a GPU's default options
    /// (TF32 on). Results are meaningless.
    pub fn new_count_only() -> Result<Self> {
        Self::new_count_only_with(CudaOptions::default())
    }

    pub fn new_count_only_with(options: CudaOptions) -> Result<Self> {
        let rt = emulator::EmulatorRuntime::new(options.tf32, false);
        Self::with_runtime(Box::new(rt), options)
    }

    fn with_runtime(rt: Box<dyn DeviceRuntime>, options: CudaOptions) -> Result<Self> {
        let dev = Device::new(rt);
        let record = DeviceBuffer::from_mem(
            dev.alloc_zeroed(4 * ERROR_RECORD_WORDS)?,
            ERROR_RECORD_WORDS,
        );
        let dev_counters = dev.alloc_zeroed(0)?;
        Ok(Self {
            dev,
            error_record: Mutex::new(record),
            block_counters: Mutex::new(DeviceBuffer::from_mem(dev_counters, 0)),
            retired_counters: Mutex::new(Vec::new()),
            options,
        })
    }

    /// Whether this backend runs on the CPU emulator.
    pub fn is_emulated(&self) -> bool {
        self.dev.is_emulated()
    }

    /// The launch limits in force.
    pub fn limits(&self) -> DeviceLimits {
        self.dev.limits()
    }

    fn dev(&self) -> &Device {
        &self.dev
    }

    /// An uninitialised buffer of `len` elements (every op writes all of its outputs).
    fn alloc<T>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        Ok(DeviceBuffer::from_mem(
            self.dev.alloc(byte_size::<T>(len)?)?,
            len,
        ))
    }

    /// A zero-filled buffer of `len` elements.
    fn alloc_zeroed<T>(&self, len: usize) -> Result<DeviceBuffer<T>> {
        Ok(DeviceBuffer::from_mem(
            self.dev.alloc_zeroed(byte_size::<T>(len)?)?,
            len,
        ))
    }

    /// Zeroes a buffer (or view) in place: the outputs of an op with nothing to add up.
    fn fill_zero<T>(&self, buf: &mut DeviceBuffer<T>) -> Result<()> {
        self.dev
            .memset_zero(&buf.mem, buf.byte_offset(), byte_size::<T>(buf.len())?)
    }

    fn upload_typed<T: bytemuck::Pod>(&self, data: &[T]) -> Result<DeviceBuffer<T>> {
        Ok(DeviceBuffer::from_mem(
            self.dev.upload(bytemuck::cast_slice(data))?,
            data.len(),
        ))
    }

    fn download_typed<T: bytemuck::Pod + Default>(&self, buf: &DeviceBuffer<T>) -> Result<Vec<T>> {
        let mut out = vec![T::default(); buf.len()];
        self.dev.download(
            &buf.mem,
            buf.byte_offset(),
            bytemuck::cast_slice_mut(&mut out),
        )?;
        self.check_device_errors()?;
        Ok(out)
    }

    /// 1-D launch for `n` grid-stride work items with `threads` per block; `None` when `n == 0`.
    fn launch_1d(&self, n: usize, threads: u32) -> Option<LaunchConfig> {
        if n == 0 {
            return None;
        }
        let blocks = n
            .div_ceil(threads as usize)
            .min(self.dev.max_grid_blocks() as usize);
        Some(LaunchConfig::linear(blocks as u32, threads))
    }

    /// Element-wise launch over `n` elements.
    fn elementwise(&self, n: usize) -> Option<LaunchConfig> {
        self.launch_1d(n, 256)
    }

    /// One block per row (grid-stride over rows) with enough threads for `cols` columns.
    fn per_row(&self, rows: usize, cols: usize) -> Option<LaunchConfig> {
        if rows == 0 {
            return None;
        }
        let threads = cols.next_multiple_of(32).clamp(32, 256) as u32;
        let blocks = rows.min(self.dev.max_grid_blocks() as usize);
        Some(LaunchConfig::linear(blocks as u32, threads))
    }

    /// `len` counters of a last-block reduction (kernels/conv.cu, kernels/norm.cu), zero between
    /// launches: the last block to finish an output resets its counter.
    fn block_counters(&self, len: usize) -> Result<MutexGuard<'_, DeviceBuffer<u32>>> {
        let mut counters = self
            .block_counters
            .lock()
            .map_err(|_| anyhow!("CUDA backend: block counter lock poisoned"))?;
        if counters.len() < len {
            let grown = self.alloc_zeroed(len.next_power_of_two())?;
            let old = std::mem::replace(&mut *counters, grown);
            self.retired_counters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(old);
        }
        Ok(counters)
    }

    /// Validated GEMM on f32 buffers (offsets relative to each buffer, which may be a view).
    fn gemm(&self, g: &Gemm, a: &CudaBuf, b: &CudaBuf, c: &mut CudaBuf) -> Result<()> {
        g.validate(a.len(), b.len(), c.len())?;
        if c.overlaps(a) || c.overlaps(b) {
            bail!("gemm: C shares memory with an input");
        }
        let in_allocation = Gemm {
            a_offset: g.a_offset + a.byte_offset() / 4,
            b_offset: g.b_offset + b.byte_offset() / 4,
            c_offset: g.c_offset + c.byte_offset() / 4,
            ..*g
        };
        self.dev.gemm(&in_allocation, &a.mem, &b.mem, &c.mem)
    }

    /// The error record, locked for a launch of an error-raising kernel.
    fn error_record(&self) -> Result<MutexGuard<'_, DeviceBuffer<u32>>> {
        self.error_record
            .lock()
            .map_err(|_| anyhow!("CUDA backend: error record lock poisoned"))
    }

    /// After an error-raising kernel: on the emulator (synchronous) report a raised error now; on
    /// the GPU it is reported at the next synchronising call.
    /// The read is not counted: the GPU has no such read, and counts must match it.
    fn after_checked_kernel(&self) -> Result<()> {
        // While capturing nothing has run yet; a replay reports afterwards.
        if self.dev.is_emulated() && !self.dev.is_capturing() {
            self.report_device_errors(false)
        } else {
            Ok(())
        }
    }

    /// Reads (and clears) the device-side error record; a raised error becomes the op's message.
    fn check_device_errors(&self) -> Result<()> {
        self.report_device_errors(true)
    }

    /// [`Self::check_device_errors`], the read counted or not.
    fn report_device_errors(&self, counted: bool) -> Result<()> {
        let record = self.error_record()?;
        let mut words = [0u32; ERROR_RECORD_WORDS];
        let dst = bytemuck::cast_slice_mut(&mut words);
        if counted {
            self.dev.download(&record.mem, 0, dst)?;
        } else {
            self.dev.read_uncounted(&record.mem, 0, dst)?;
        }
        let [code, position, value, detail] = words;
        if code == 0 {
            return Ok(());
        }
        self.dev
            .memset_zero(&record.mem, 0, 4 * ERROR_RECORD_WORDS)?;
        bail!(
            "{}",
            abi::error_message(code, position.into(), value.into(), detail.into())
        )
    }
}

/// Errors unless a size fits the kernels' 32-bit indexing, with room for a grid-stride step
/// (`runtime::INDEX_LIMIT`).
fn to_u32(op: &str, what: &str, v: usize) -> Result<u32> {
    if v as u64 >= runtime::INDEX_LIMIT {
        bail!(
            "{op}: {what} = {v} exceeds the kernels' 32-bit indexing (below {}); split the work",
            runtime::INDEX_LIMIT
        );
    }
    Ok(v as u32)
}

impl Buffers for CudaBackend {
    type Buf = CudaBuf;
    type Index = CudaIndex;
    type Bytes = CudaBytes;
    type Staging = CudaStaging;
    type Graph = CudaGraph;
}

impl Backend for CudaBackend {
    fn name(&self) -> String {
        self.dev.describe()
    }

    fn zeros(&self, len: usize) -> Result<CudaBuf> {
        self.alloc_zeroed(len)
    }
    fn empty(&self, len: usize) -> Result<CudaBuf> {
        self.alloc(len)
    }
    fn upload(&self, data: &[f32]) -> Result<CudaBuf> {
        self.upload_typed(data)
    }
    fn download(&self, buf: &CudaBuf) -> Result<Vec<f32>> {
        self.download_typed(buf)
    }
    fn upload_index(&self, data: &[u32]) -> Result<CudaIndex> {
        self.upload_typed(data)
    }
    fn download_index(&self, buf: &CudaIndex) -> Result<Vec<u32>> {
        self.download_typed(buf)
    }
    fn upload_bytes(&self, data: &[u8]) -> Result<CudaBytes> {
        CudaBytes::upload(self.dev(), data)
    }
    fn alloc_staging(&self, len: usize) -> Result<CudaStaging> {
        Ok(CudaStaging(self.dev.alloc_staging(len)?))
    }
    fn len(&self, buf: &CudaBuf) -> usize {
        buf.len()
    }
    fn index_len(&self, buf: &CudaIndex) -> usize {
        buf.len()
    }
    fn bytes_len(&self, buf: &CudaBytes) -> usize {
        buf.len()
    }
    fn synchronize(&self) -> Result<()> {
        self.dev.synchronize()?;
        self.check_device_errors()
    }
    fn range_push(&self, name: &str) {
        self.dev.range_push(name)
    }
    fn range_pop(&self) {
        self.dev.range_pop()
    }
    fn device_counters(&self) -> Option<DeviceCounters> {
        Some(self.dev.counters())
    }
    fn supports_graphs(&self) -> bool {
        true
    }
    fn prefers_graphs(&self) -> bool {
        !self.dev.is_emulated()
    }
    fn begin_capture(&self) -> Result<()> {
        self.dev.begin_capture()
    }
    fn end_capture(&self) -> Result<CudaGraph> {
        Ok(CudaGraph(self.dev.end_capture()?))
    }
    fn replay(&self, graph: &CudaGraph) -> Result<()> {
        self.dev.launch_graph(&graph.0)?;
        self.after_checked_kernel()
    }
    fn copy_range_unchecked(
        &self,
        src: &CudaBuf,
        src_offset: usize,
        dst: &mut CudaBuf,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        self.dev.copy(
            &src.mem,
            src.byte_offset() + 4 * src_offset,
            &dst.mem,
            dst.byte_offset() + 4 * dst_offset,
            4 * len,
        )
    }
    fn view_unchecked(&self, buf: &CudaBuf, offset: usize, len: usize) -> Result<CudaBuf> {
        Ok(buf.view(offset, len))
    }
    fn write_unchecked(&self, dst: &mut CudaBuf, data: &[f32]) -> Result<()> {
        self.dev
            .write(&dst.mem, dst.byte_offset(), bytemuck::cast_slice(data))
    }
    fn index_view_unchecked(
        &self,
        buf: &CudaIndex,
        offset: usize,
        len: usize,
    ) -> Result<CudaIndex> {
        Ok(buf.view(offset, len))
    }
    fn write_index_unchecked(&self, dst: &mut CudaIndex, data: &[u32]) -> Result<()> {
        self.dev
            .write(&dst.mem, dst.byte_offset(), bytemuck::cast_slice(data))
    }
    fn shares_memory(&self, a: &CudaBuf, b: &CudaBuf) -> bool {
        a.overlaps(b)
    }
    fn write_staged_unchecked(
        &self,
        dst: &mut CudaBuf,
        staging: &CudaStaging,
        from: usize,
    ) -> Result<()> {
        self.dev
            .write_staged(&dst.mem, dst.byte_offset(), &staging.0, from, dst.len())
    }
    fn write_index_staged_unchecked(
        &self,
        dst: &mut CudaIndex,
        staging: &CudaStaging,
        from: usize,
    ) -> Result<()> {
        self.dev
            .write_staged(&dst.mem, dst.byte_offset(), &staging.0, from, dst.len())
    }
    fn upload_staged_unchecked(&self, staging: &CudaStaging, len: usize) -> Result<CudaBuf> {
        Ok(DeviceBuffer::from_mem(
            self.dev.upload_staged(&staging.0, len)?,
            len,
        ))
    }
}
