//! The one door to the device: every operation of the CUDA backend (and of the generated kernel
//! launchers) goes through [`Device`], which
//! - counts it ([`DeviceCounters`]; the same counts on the GPU and the emulator, since both run
//!   behind this layer), with the bytes and FLOPs involved;
//! - serves allocations from memory freed earlier (a caching allocator keyed by exact size): a
//!   training step that repeats the shapes of the previous one allocates nothing, and freeing is a
//!   push onto a free list. Memory is handed back to the driver only when an allocation fails (then
//!   the cache is emptied and the allocation retried) or when the backend goes away. Single stream:
//!   a block freed by one op and handed to a later one is used in stream order, so no event is needed.
//!
//! It also captures CUDA graphs ([`Device::begin_capture`]) and enforces CUDA's capture rules the
//! same way on both runtimes: while capturing, no synchronisation, no read-back, no copy from
//! pageable host memory and no fresh device allocation (each an error naming the operation). The
//! memory a capture uses is the graph's while the graph lives: what is freed during a capture goes
//! to the graph's pool, not back to the cache, so nothing else can be handed memory a replay writes.
//!
//! Fresh memory is uninitialised; the emulator fills every block it hands out with NaN bytes, so an
//! op that relied on zeros fails its tests (on the GPU, [`Device::alloc_zeroed`] is the only way to
//! get zeros).

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::gpu::GpuRuntime;
use super::runtime::{
    DeviceLimits, DeviceRuntime, Gemm, GraphExec, KernelArg, KernelRef, LaunchConfig, Mem,
    StagingMem,
};
use crate::backend::counters::DeviceCounters;

type FreeLists = HashMap<usize, Vec<Mem>>;

/// The memory of one captured graph: what its capture allocated or freed.
#[derive(Default)]
struct GraphPool {
    /// Freed blocks by size: reused by later allocations of the same capture, kept while the graph
    /// lives.
    free: Mutex<FreeLists>,
    /// Set when the graph is dropped: its blocks go back to the cache from then on.
    released: AtomicBool,
}

impl GraphPool {
    fn free(&self) -> MutexGuard<'_, FreeLists> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A capture under way.
struct Capture {
    pool: Arc<GraphPool>,
    /// The counters when it began: the captured work is moved out of them into the graph.
    before: DeviceCounters,
}

/// What the memory handles share with the device: the counters, the free lists and the capture.
struct Shared {
    counters: Mutex<DeviceCounters>,
    /// FLOPs announced by [`Device::count_kernel_flops`] for the next launch.
    pending_flops: AtomicU64,
    /// Freed allocations by size in bytes.
    cache: Mutex<FreeLists>,
    capture: Mutex<Option<Capture>>,
}

impl Shared {
    fn capture(&self) -> MutexGuard<'_, Option<Capture>> {
        self.capture.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// The pool of the capture under way.
    fn capture_pool(&self) -> Option<Arc<GraphPool>> {
        self.capture().as_ref().map(|c| c.pool.clone())
    }
    fn counters(&self) -> MutexGuard<'_, DeviceCounters> {
        // Counting must not fail an op: a poisoned lock still holds valid counts.
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn cache(&self) -> MutexGuard<'_, HashMap<usize, Vec<Mem>>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A device allocation on loan from the cache; it goes back there when dropped (to its graph's pool
/// instead while a graph it was allocated for lives, or while a capture is under way).
pub(crate) struct DeviceMem {
    mem: Option<Mem>,
    bytes: usize,
    shared: Arc<Shared>,
    graph: Option<Arc<GraphPool>>,
}

impl Deref for DeviceMem {
    type Target = Mem;
    fn deref(&self) -> &Mem {
        self.mem.as_ref().expect("present until dropped")
    }
}

impl Drop for DeviceMem {
    fn drop(&mut self) {
        let Some(mem) = self.mem.take() else { return };
        let pool = self.shared.capture_pool().or_else(|| {
            self.graph
                .take()
                .filter(|g| !g.released.load(Ordering::Acquire))
        });
        match pool {
            Some(pool) => pool.free().entry(self.bytes).or_default().push(mem),
            None => self.shared.cache().entry(self.bytes).or_default().push(mem),
        }
    }
}

/// A captured graph: its runtime form, the device work one replay does, and its memory.
pub(crate) struct Graph {
    exec: GraphExec,
    work: DeviceCounters,
    pool: Arc<GraphPool>,
    shared: Arc<Shared>,
}

impl Drop for Graph {
    fn drop(&mut self) {
        self.pool.released.store(true, Ordering::Release);
        let blocks = std::mem::take(&mut *self.pool.free());
        let mut cache = self.shared.cache();
        for (bytes, mut mems) in blocks {
            cache.entry(bytes).or_default().append(&mut mems);
        }
    }
}

/// The runtime behind the counters and the cache.
pub(crate) struct Device {
    rt: Box<dyn DeviceRuntime>,
    shared: Arc<Shared>,
}

impl Drop for Device {
    fn drop(&mut self) {
        // Memory still on loan returns to the cache and is freed with the last handle.
        self.shared.cache().clear();
    }
}

impl Device {
    pub(crate) fn new(rt: Box<dyn DeviceRuntime>) -> Self {
        Self {
            rt,
            shared: Arc::new(Shared {
                counters: Mutex::new(DeviceCounters::default()),
                pending_flops: AtomicU64::new(0),
                cache: Mutex::new(HashMap::new()),
                capture: Mutex::new(None),
            }),
        }
    }

    pub(crate) fn counters(&self) -> DeviceCounters {
        self.shared.counters().clone()
    }

    /// Counts `flops` of the backend's own matrix-product kernels (a launch does not know them),
    /// for the kernel launched next: call it just before that launch.
    pub(crate) fn count_kernel_flops(&self, flops: u64) {
        self.shared
            .pending_flops
            .fetch_add(flops, Ordering::Relaxed);
    }

    pub(crate) fn describe(&self) -> String {
        self.rt.describe()
    }
    pub(crate) fn is_emulated(&self) -> bool {
        self.rt.is_emulated()
    }
    /// The GPU runtime (`None` on the emulator), for the NCCL collective's own stream.
    pub(crate) fn gpu(&self) -> Option<&GpuRuntime> {
        self.rt.as_gpu()
    }
    pub(crate) fn limits(&self) -> DeviceLimits {
        self.rt.limits()
    }
    pub(crate) fn max_grid_blocks(&self) -> u32 {
        self.rt.max_grid_blocks()
    }

    /// `bytes` of uninitialised device memory (NaN bytes on the emulator).
    pub(crate) fn alloc(&self, bytes: usize) -> Result<DeviceMem> {
        let graph = self.shared.capture_pool();
        let recycled = graph
            .as_ref()
            .and_then(|pool| pool.free().get_mut(&bytes).and_then(Vec::pop));
        let cached = recycled.or_else(|| self.shared.cache().get_mut(&bytes).and_then(Vec::pop));
        let mem = match cached {
            Some(mem) => mem,
            None => self.alloc_fresh(bytes)?,
        };
        self.rt.poison(&mem);
        Ok(DeviceMem {
            mem: Some(mem),
            bytes,
            shared: self.shared.clone(),
            graph,
        })
    }

    fn alloc_fresh(&self, bytes: usize) -> Result<Mem> {
        self.outside_capture(|| {
            format!(
                "a fresh device allocation of {bytes} bytes (run the step once without capture \
                 first, so that the cache holds its memory)"
            )
        })?;
        let mem = match self.rt.alloc(bytes) {
            Ok(mem) => mem,
            Err(first) => {
                // Out of memory, perhaps only because the cache holds it: hand it back and retry.
                let freed: usize = self.shared.cache().drain().map(|(_, v)| v.len()).sum();
                if freed == 0 {
                    return Err(first);
                }
                self.shared.counters().frees += freed as u64;
                self.rt.alloc(bytes)?
            }
        };
        let mut c = self.shared.counters();
        c.allocations += 1;
        c.allocation_bytes += bytes as u64;
        Ok(mem)
    }

    /// `bytes` of zeros.
    pub(crate) fn alloc_zeroed(&self, bytes: usize) -> Result<DeviceMem> {
        let mem = self.alloc(bytes)?;
        self.memset_zero(&mem, 0, bytes)?;
        Ok(mem)
    }

    /// `data` in fresh device memory.
    pub(crate) fn upload(&self, data: &[u8]) -> Result<DeviceMem> {
        let mem = self.alloc(data.len())?;
        self.write(&mem, 0, data)?;
        Ok(mem)
    }

    /// Copies `data` into `dst` from byte `offset` on.
    pub(crate) fn write(&self, dst: &Mem, offset: usize, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.outside_capture(|| {
            format!(
                "a copy of {} bytes from pageable host memory (upload before the capture, or \
                 from staging memory)",
                data.len()
            )
        })?;
        self.rt.write(dst, offset, data)?;
        let mut c = self.shared.counters();
        c.h2d_copies += 1;
        c.h2d_bytes += data.len() as u64;
        c.bytes_moved += data.len() as u64;
        Ok(())
    }

    /// `staging[..len]` (f32) in fresh device memory, copied asynchronously on a GPU.
    pub(crate) fn upload_staged(&self, staging: &StagingMem, len: usize) -> Result<DeviceMem> {
        let mem = self.alloc(4 * len)?;
        self.write_staged(&mem, 0, staging, 0, len)?;
        Ok(mem)
    }

    /// Copies `staging[from..from + len]` (4-byte words, checked by the caller) into `dst` from
    /// byte `offset` on, asynchronously on a GPU.
    pub(crate) fn write_staged(
        &self,
        dst: &Mem,
        offset: usize,
        staging: &StagingMem,
        from: usize,
        len: usize,
    ) -> Result<()> {
        let bytes = 4 * len;
        self.rt.write_staged(dst, offset, staging, from, len)?;
        let mut c = self.shared.counters();
        c.h2d_copies += 1;
        c.h2d_bytes += bytes as u64;
        c.bytes_moved += bytes as u64;
        Ok(())
    }

    pub(crate) fn alloc_staging(&self, len: usize) -> Result<StagingMem> {
        self.rt.alloc_staging(len)
    }

    /// Copies `dst.len()` bytes of `src` from byte `offset` on to the host; waits for the device.
    pub(crate) fn download(&self, src: &Mem, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.outside_capture(|| {
            format!(
                "a device-to-host copy of {} bytes (read back after the graph's launch)",
                dst.len()
            )
        })?;
        self.rt.read(src, offset, dst)?;
        let mut c = self.shared.counters();
        c.d2h_copies += 1;
        c.d2h_bytes += dst.len() as u64;
        c.bytes_moved += dst.len() as u64;
        c.synchronizations += 1;
        Ok(())
    }

    /// [`Device::download`] without counting it: the emulator's immediate error report, which the
    /// GPU does not make.
    pub(crate) fn read_uncounted(&self, src: &Mem, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.rt.read(src, offset, dst)
    }

    /// Copies `bytes` from `src[src_offset..]` to `dst[dst_offset..]` (checked by the caller).
    pub(crate) fn copy(
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
        self.rt.copy(src, src_offset, dst, dst_offset, bytes)?;
        let mut c = self.shared.counters();
        c.d2d_copies += 1;
        c.d2d_bytes += bytes as u64;
        c.bytes_moved += 2 * bytes as u64;
        Ok(())
    }

    pub(crate) fn memset_zero(&self, dst: &Mem, offset: usize, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.rt.memset_zero(dst, offset, bytes)?;
        let mut c = self.shared.counters();
        c.memsets += 1;
        c.memset_bytes += bytes as u64;
        c.bytes_moved += bytes as u64;
        Ok(())
    }

    pub(crate) fn launch(
        &self,
        kernel: &KernelRef,
        cfg: &LaunchConfig,
        args: &[KernelArg<'_>],
    ) -> Result<()> {
        let bytes: u64 = args
            .iter()
            .map(|a| match a {
                KernelArg::Buffer { bytes, .. } => *bytes as u64,
                _ => 0,
            })
            .sum();
        let (bx, by, bz) = cfg.block;
        let threads = u64::from(bx) * u64::from(by) * u64::from(bz);
        ensure!(
            threads <= u64::from(kernel.max_threads),
            "kernel `{}` (kernels/{}.cu): {threads} threads per block, more than the {} it is \
             compiled for (declare `KERNEL void __launch_bounds__({threads}) {}(...)`)",
            kernel.name,
            kernel.module,
            kernel.max_threads,
            kernel.name
        );
        self.rt.launch(kernel, cfg, args)?;
        let flops = self.shared.pending_flops.swap(0, Ordering::Relaxed);
        let mut c = self.shared.counters();
        c.kernel_launches += 1;
        c.bytes_moved += bytes;
        c.kernel_flops += flops;
        let k = c.kernels.entry(kernel.name.to_string()).or_default();
        k.launches += 1;
        k.bytes += bytes;
        k.flops += flops;
        k.blocks += u64::from(cfg.grid.0) * u64::from(cfg.grid.1) * u64::from(cfg.grid.2);
        k.threads += threads;
        Ok(())
    }

    /// `g` was validated against the buffer lengths by the caller.
    pub(crate) fn gemm(&self, g: &Gemm, a: &Mem, b: &Mem, c: &Mem) -> Result<()> {
        if g.m == 0 || g.n == 0 || g.batch == 0 {
            return Ok(());
        }
        self.rt.gemm(g, a, b, c)?;
        let (m, n, k, batch) = (g.m as u64, g.n as u64, g.k as u64, g.batch as u64);
        let read_c = if g.beta != 0.0 { m * n } else { 0 };
        let mut counts = self.shared.counters();
        counts.blas_calls += 1;
        counts.blas_flops += 2 * m * n * k * batch;
        counts.bytes_moved += 4 * batch * (m * k + k * n + m * n + read_c);
        Ok(())
    }

    pub(crate) fn synchronize(&self) -> Result<()> {
        self.outside_capture(|| "a stream synchronisation".to_string())?;
        self.rt.synchronize()?;
        self.shared.counters().synchronizations += 1;
        Ok(())
    }

    pub(crate) fn range_push(&self, name: &str) {
        self.rt.range_push(name)
    }
    pub(crate) fn range_pop(&self) {
        self.rt.range_pop()
    }
}

impl Device {
    pub(crate) fn is_capturing(&self) -> bool {
        self.shared.capture().is_some()
    }

    /// Errors, naming the operation `what` describes, while a capture is under way.
    fn outside_capture(&self, what: impl FnOnce() -> String) -> Result<()> {
        if self.is_capturing() {
            bail!(
                "{} while capturing a CUDA graph: CUDA does not permit it in a capture",
                what()
            );
        }
        Ok(())
    }

    /// From now on operations are recorded into a graph instead of run (the capture rules in the
    /// module docs hold until [`Device::end_capture`]).
    pub(crate) fn begin_capture(&self) -> Result<()> {
        self.outside_capture(|| "a capture's start".to_string())?;
        self.rt.begin_capture()?;
        *self.shared.capture() = Some(Capture {
            pool: Arc::new(GraphPool::default()),
            before: self.counters(),
        });
        Ok(())
    }

    /// The graph of what was issued since [`Device::begin_capture`]. Its work leaves the counters
    /// (nothing ran) and is counted at each replay instead.
    pub(crate) fn end_capture(&self) -> Result<Graph> {
        let capture = self
            .shared
            .capture()
            .take()
            .ok_or_else(|| anyhow!("end of a CUDA graph capture that was not begun"))?;
        let exec = self.rt.end_capture()?;
        let mut counters = self.shared.counters();
        let work = counters.since(&capture.before);
        *counters = capture.before;
        Ok(Graph {
            exec,
            work,
            pool: capture.pool,
            shared: self.shared.clone(),
        })
    }

    /// Runs `graph` in stream order: one host operation, the graph's device work.
    pub(crate) fn launch_graph(&self, graph: &Graph) -> Result<()> {
        self.outside_capture(|| "a graph launch".to_string())?;
        self.rt.launch_graph(&graph.exec)?;
        let mut c = self.shared.counters();
        c.add(&graph.work);
        c.replayed_operations += graph.work.stream_operations();
        c.graph_launches += 1;
        Ok(())
    }
}

/// Errors unless an element count fits in bytes.
pub(crate) fn byte_size<T>(len: usize) -> Result<usize> {
    len.checked_mul(std::mem::size_of::<T>())
        .ok_or_else(|| anyhow!("a buffer of {len} elements is too large"))
        .context("device allocation")
}

#[cfg(test)]
mod tests {
    use crate::backend::cost;

    #[test]
    fn every_kernel_has_a_row_in_the_cost_table() {
        let code = cost::kernel_code();
        let missing: Vec<&str> = super::super::kernels::KERNELS
            .iter()
            .map(|&(_, name)| name)
            .filter(|name| !code.contains_key(*name))
            .collect();
        assert!(
            missing.is_empty(),
            "{} has no row for {missing:?}: run `python3 scripts/sass-costs.py --write` (after \
             scripts/install-nvcc.sh and scripts/install-sass-tools.sh) and commit the table",
            cost::TABLE_FILE
        );
    }
}
