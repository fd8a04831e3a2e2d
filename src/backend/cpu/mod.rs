//! CPU reference backend: plain `f32` vectors, ops parallelised with rayon inside a private thread pool,
//! convolutions and matrix products through the `gemm` crate. One file per op family (as in llm.c),
//! each implementing that family's trait of `backend::ops`; this file owns the buffer types, the
//! thread pool and memory.
//!
//! Results do not depend on the thread count: every reduction runs over a fixed partition of the data
//! (independent of the pool size) and partial results are combined in a fixed order.

mod augment;
mod conv;
mod eltwise;
mod linear;
mod loss;
mod matmul;
mod norm;
mod optim;
mod pool;
mod rows;
mod unfused;

use anyhow::{bail, Context, Result};
use rayon::{ThreadPool, ThreadPoolBuilder};

pub use augment::CpuBytes;

use super::{abi, Backend, Buffers, HostStaging};

/// A host buffer of `f32`. Code outside the backend sees it only through [`Backend`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CpuBuf(Vec<f32>);

/// A host buffer of `u32` (labels, indices, permutations).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuIndex(Vec<u32>);

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
        Ok(Self { pool })
    }

    /// Number of worker threads of the pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
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
        Ok(CpuBuf(vec![0.0; len]))
    }
    fn upload(&self, data: &[f32]) -> Result<CpuBuf> {
        Ok(CpuBuf(data.to_vec()))
    }
    fn download(&self, buf: &CpuBuf) -> Result<Vec<f32>> {
        Ok(buf.0.clone())
    }
    fn upload_index(&self, data: &[u32]) -> Result<CpuIndex> {
        Ok(CpuIndex(data.to_vec()))
    }
    fn download_index(&self, buf: &CpuIndex) -> Result<Vec<u32>> {
        Ok(buf.0.clone())
    }
    fn upload_bytes(&self, data: &[u8]) -> Result<CpuBytes> {
        Ok(CpuBytes(data.to_vec()))
    }
    fn alloc_staging(&self, len: usize) -> Result<CpuStaging> {
        Ok(CpuStaging(vec![0.0; len]))
    }
    fn len(&self, buf: &CpuBuf) -> usize {
        buf.0.len()
    }
    fn index_len(&self, buf: &CpuIndex) -> usize {
        buf.0.len()
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
        dst.0[dst_offset..dst_offset + len].copy_from_slice(&src.0[src_offset..src_offset + len]);
        Ok(())
    }
    fn upload_staged_unchecked(&self, staging: &CpuStaging, len: usize) -> Result<CpuBuf> {
        Ok(CpuBuf(staging.0[..len].to_vec()))
    }
}
