//! CPU reference backend: plain `f32` vectors, ops parallelised with rayon inside a private thread pool,
//! convolutions through the register-blocked products of `gemm.rs` (compiled for AVX-512, AVX2 and
//! plain code; the widest the CPU has runs, so results are deterministic per machine, not across
//! machines), the classifier's small products through the `gemm` crate. One file per op family (as in llm.c),
//! each implementing that family's trait of `backend::ops`; this file owns the buffer types, the
//! thread pool and memory.
//!
//! Results do not depend on the thread count: every reduction runs over a fixed partition of the data
//! (independent of the pool size) and partial results are combined in a fixed order.

mod augment;
mod conv;
mod eltwise;
mod gemm;
mod linear;
mod loss;
mod matmul;
mod norm;
mod optim;
mod pool;
mod rows;
mod unfused;

use std::cell::UnsafeCell;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rayon::{ThreadPool, ThreadPoolBuilder};

pub use augment::CpuBytes;

use super::{abi, Backend, Buffers, HostStaging};

/// Host memory shared by a buffer and its views ([`Backend::view`]).
struct CpuStorage<T>(UnsafeCell<Vec<T>>);

// SAFETY: the memory is reached only through `CpuBuffer::as_slice` / `as_mut_slice`, whose ranges the
// op contracts keep apart whenever one of them is written (`Backend::shares_memory`), like disjoint
// `split_at_mut` halves; ops write their outputs from one thread at a time or over disjoint chunks.
unsafe impl<T: Send> Sync for CpuStorage<T> {}
unsafe impl<T: Send> Send for CpuStorage<T> {}

/// A host buffer, or a view of part of one (sharing its memory). Code outside the backend sees it
/// only through [`Backend`].
pub struct CpuBuffer<T> {
    storage: Arc<CpuStorage<T>>,
    offset: usize,
    len: usize,
}

/// A buffer of `f32`.
pub type CpuBuf = CpuBuffer<f32>;
/// A buffer of `u32` (labels, indices, permutations).
pub type CpuIndex = CpuBuffer<u32>;

impl<T> CpuBuffer<T> {
    fn from_vec(v: Vec<T>) -> Self {
        let len = v.len();
        Self {
            storage: Arc::new(CpuStorage(UnsafeCell::new(v))),
            offset: 0,
            len,
        }
    }

    fn as_slice(&self) -> &[T] {
        // SAFETY: `offset + len` lies inside the vector (checked when the view was made); the vector
        // is never resized; no `&mut` slice of an overlapping range lives while this one does (the
        // op contracts, see `CpuStorage`).
        unsafe {
            std::slice::from_raw_parts((*self.storage.0.get()).as_ptr().add(self.offset), self.len)
        }
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`, and no other slice of an overlapping range lives meanwhile.
        unsafe {
            std::slice::from_raw_parts_mut(
                (*self.storage.0.get()).as_mut_ptr().add(self.offset),
                self.len,
            )
        }
    }

    /// Elements `offset..offset + len`, sharing this buffer's memory (bounds checked by the caller).
    fn view(&self, offset: usize, len: usize) -> Self {
        Self {
            storage: self.storage.clone(),
            offset: self.offset + offset,
            len,
        }
    }
}

impl<T> std::fmt::Debug for CpuBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CpuBuffer<{}>[{}; offset {}]",
            std::any::type_name::<T>(),
            self.len,
            self.offset
        )
    }
}

/// Staging memory of the CPU backend: plain host memory (its "upload" is a copy).
#[derive(Debug)]
pub struct CpuStaging(Vec<f32>);

impl HostStaging for CpuStaging {
    fn capacity(&self) -> usize {
        self.0.len()
    }
    fn as_mut_slice(&mut self) -> Result<&mut [f32]> {
        Ok(&mut self.0)
    }
}

/// The CPU reference backend.
pub struct CpuBackend {
    pool: ThreadPool,
    /// The instruction set of the convolution kernels (the widest this CPU has).
    isa: gemm::Isa,
}

impl CpuBackend {
    /// A backend running its ops on `threads` worker threads (`None`: one per available core).
    pub fn new(threads: Option<usize>) -> Result<Self> {
        let mut builder = ThreadPoolBuilder::new().thread_name(|i| format!("ltrain-cpu-{i}"));
        if let Some(threads) = threads {
            if threads == 0 {
                bail!("CpuBackend: the thread count must be at least 1 (got 0)");
            }
            builder = builder.num_threads(threads);
        }
        let pool = builder
            .build()
            .context("CpuBackend: could not build the rayon thread pool")?;
        keep_freed_memory();
        Ok(Self {
            pool,
            isa: gemm::Isa::detected(),
        })
    }

    /// Number of worker threads of the pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }
}

/// Every op returns fresh buffers, tens of MB each for a ResNet-32 step. glibc's allocator maps such
/// blocks from the OS and unmaps them when freed, so each step would fault every page in again (about
/// 15% of a step); told to keep them, it reuses the same memory every step.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // glibc's <malloc.h>: M_TRIM_THRESHOLD -1, M_MMAP_THRESHOLD -3.
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_TRIM_THRESHOLD: std::ffi::c_int = -1;
        const M_MMAP_THRESHOLD: std::ffi::c_int = -3;
        // SAFETY: mallopt only sets allocator parameters; both values are within glibc's limits
        // (the mmap threshold at most HEAP_MAX / 2 = 32 MiB on 64-bit).
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, std::ffi::c_int::MAX);
        }
    }
}

/// Errors unless every index is below `bound`, with the message of the CUDA kernels' error `code`
/// (`abi::ERR_*`), so both backends report a bad index alike.
pub(crate) fn check_indices(code: u32, idx: &[u32], bound: usize) -> Result<()> {
    if let Some((i, &v)) = idx.iter().enumerate().find(|(_, &v)| v as usize >= bound) {
        bail!(
            "{}",
            abi::error_message(code, i as u64, v.into(), bound as u64)
        );
    }
    Ok(())
}

impl Buffers for CpuBackend {
    type Buf = CpuBuf;
    type Index = CpuIndex;
    type Bytes = CpuBytes;
    type Staging = CpuStaging;
    /// The CPU captures no graphs.
    type Graph = std::convert::Infallible;
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        let threads = self.threads();
        format!(
            "cpu ({threads} thread{})",
            if threads == 1 { "" } else { "s" }
        )
    }

    fn zeros(&self, len: usize) -> Result<CpuBuf> {
        Ok(CpuBuf::from_vec(vec![0.0; len]))
    }
    fn empty(&self, len: usize) -> Result<CpuBuf> {
        Ok(CpuBuf::from_vec(vec![f32::NAN; len]))
    }
    fn upload(&self, data: &[f32]) -> Result<CpuBuf> {
        Ok(CpuBuf::from_vec(data.to_vec()))
    }
    fn download(&self, buf: &CpuBuf) -> Result<Vec<f32>> {
        Ok(buf.as_slice().to_vec())
    }
    fn upload_index(&self, data: &[u32]) -> Result<CpuIndex> {
        Ok(CpuIndex::from_vec(data.to_vec()))
    }
    fn download_index(&self, buf: &CpuIndex) -> Result<Vec<u32>> {
        Ok(buf.as_slice().to_vec())
    }
    fn upload_bytes(&self, data: &[u8]) -> Result<CpuBytes> {
        Ok(CpuBytes(data.to_vec()))
    }
    fn alloc_staging(&self, len: usize) -> Result<CpuStaging> {
        Ok(CpuStaging(vec![0.0; len]))
    }
    fn len(&self, buf: &CpuBuf) -> usize {
        buf.len
    }
    fn index_len(&self, buf: &CpuIndex) -> usize {
        buf.len
    }
    fn bytes_len(&self, buf: &CpuBytes) -> usize {
        buf.0.len()
    }
    fn copy_range_unchecked(
        &self,
        src: &CpuBuf,
        src_offset: usize,
        dst: &mut CpuBuf,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        dst.as_mut_slice()[dst_offset..dst_offset + len]
            .copy_from_slice(&src.as_slice()[src_offset..src_offset + len]);
        Ok(())
    }
    fn view_unchecked(&self, buf: &CpuBuf, offset: usize, len: usize) -> Result<CpuBuf> {
        Ok(buf.view(offset, len))
    }
    fn write_unchecked(&self, dst: &mut CpuBuf, data: &[f32]) -> Result<()> {
        dst.as_mut_slice().copy_from_slice(data);
        Ok(())
    }
    fn index_view_unchecked(&self, buf: &CpuIndex, offset: usize, len: usize) -> Result<CpuIndex> {
        Ok(buf.view(offset, len))
    }
    fn write_index_unchecked(&self, dst: &mut CpuIndex, data: &[u32]) -> Result<()> {
        dst.as_mut_slice().copy_from_slice(data);
        Ok(())
    }
    fn shares_memory(&self, a: &CpuBuf, b: &CpuBuf) -> bool {
        Arc::ptr_eq(&a.storage, &b.storage)
            && a.offset < b.offset + b.len
            && b.offset < a.offset + a.len
            && a.len > 0
            && b.len > 0
    }
    fn write_staged_unchecked(
        &self,
        dst: &mut CpuBuf,
        staging: &CpuStaging,
        from: usize,
    ) -> Result<()> {
        let len = dst.len;
        dst.as_mut_slice()
            .copy_from_slice(&staging.0[from..from + len]);
        Ok(())
    }
    fn write_index_staged_unchecked(
        &self,
        dst: &mut CpuIndex,
        staging: &CpuStaging,
        from: usize,
    ) -> Result<()> {
        let len = dst.len;
        dst.as_mut_slice()
            .copy_from_slice(bytemuck::cast_slice(&staging.0[from..from + len]));
        Ok(())
    }
    fn upload_staged_unchecked(&self, staging: &CpuStaging, len: usize) -> Result<CpuBuf> {
        Ok(CpuBuf::from_vec(staging.0[..len].to_vec()))
    }
}
