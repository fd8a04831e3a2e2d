//! Entry points that exercise the device runtime itself rather than a `Backend` op: the emulator's
//! barriers, warp collectives, atomics and launch-limit checks, and the raw cuBLAS-convention GEMM.
//! Used by `tests/emulator.rs` and, on a real GPU, `tests/cuda_gpu.rs` (the same calls run on both
//! runtimes; the deliberately broken kernels only on the emulator).

use anyhow::{bail, Result};

use super::{kernels, to_u32, CudaBackend, Gemm, LaunchConfig};
use crate::backend::Backend;

fn emulator_only(be: &CudaBackend, what: &str) -> Result<()> {
    if !be.is_emulated() {
        bail!("{what} is a deliberately broken kernel; it only runs on the emulator");
    }
    Ok(())
}

/// Sum of `x` by one block of `threads` (a power of two, at most 1024) with a shared-memory tree
/// whose every level needs `__syncthreads()`.
pub fn block_tree_sum(be: &CudaBackend, x: &[f32], threads: u32) -> Result<f32> {
    let input = be.upload_typed(x)?;
    let mut out = be.alloc::<f32>(1)?;
    let n = to_u32("block_tree_sum", "length", x.len())?;
    kernels::selftest_block_tree_sum(
        be.dev(),
        LaunchConfig::linear(1, threads),
        &input,
        &mut out,
        n,
    )?;
    Ok(be.download_typed(&out)?[0])
}

/// The same tree with its barriers removed (a data race); emulator only.
pub fn block_tree_sum_without_barriers(be: &CudaBackend, x: &[f32], threads: u32) -> Result<f32> {
    emulator_only(be, "block_tree_sum_without_barriers")?;
    let input = be.upload_typed(x)?;
    let mut out = be.alloc::<f32>(1)?;
    let n = to_u32("block_tree_sum_without_barriers", "length", x.len())?;
    kernels::selftest_block_tree_sum_racy(
        be.dev(),
        LaunchConfig::linear(1, threads),
        &input,
        &mut out,
        n,
    )?;
    Ok(be.download_typed(&out)?[0])
}

/// Sum of every 32 consecutive values of `x` by `__shfl_down_sync`, `threads` per block.
pub fn warp_sums(be: &CudaBackend, x: &[f32], threads: u32) -> Result<Vec<f32>> {
    let input = be.upload_typed(x)?;
    let mut out = be.alloc::<f32>(x.len().div_ceil(32))?;
    let n = to_u32("warp_sums", "length", x.len())?;
    let blocks = x.len().div_ceil(threads as usize).max(1) as u32;
    kernels::selftest_warp_sum(
        be.dev(),
        LaunchConfig::linear(blocks, threads),
        &input,
        &mut out,
        n,
    )?;
    be.download_typed(&out)
}

/// `__ballot_sync(x > 0)` for every 32 consecutive values of `x`, `threads` per block.
pub fn warp_ballots(be: &CudaBackend, x: &[f32], threads: u32) -> Result<Vec<u32>> {
    let input = be.upload_typed(x)?;
    let mut out = be.alloc::<u32>(x.len().div_ceil(32))?;
    let n = to_u32("warp_ballots", "length", x.len())?;
    let blocks = x.len().div_ceil(threads as usize).max(1) as u32;
    kernels::selftest_ballot(
        be.dev(),
        LaunchConfig::linear(blocks, threads),
        &input,
        &mut out,
        n,
    )?;
    be.download_typed(&out)
}

/// Histogram of `values % bins` with `atomicAdd` from every thread of the given launch.
pub fn histogram(
    be: &CudaBackend,
    values: &[u32],
    bins: u32,
    cfg: LaunchConfig,
) -> Result<Vec<u32>> {
    let input = be.upload_typed(values)?;
    let mut counts = be.alloc_zeroed::<u32>(bins as usize)?;
    let n = to_u32("histogram", "length", values.len())?;
    kernels::selftest_histogram(be.dev(), cfg, &input, &mut counts, n, bins)?;
    be.download_typed(&counts)
}

/// A kernel in which thread 0 exits before a barrier the others wait at; emulator only (it must
/// return an error rather than hang).
pub fn barrier_deadlock(be: &CudaBackend, threads: u32) -> Result<()> {
    emulator_only(be, "barrier_deadlock")?;
    let mut out = be.alloc::<f32>(threads as usize)?;
    kernels::selftest_barrier_deadlock(be.dev(), LaunchConfig::linear(1, threads), &mut out)
}

/// A kernel whose block 0 alone writes its static shared memory before every block reads it back;
/// emulator only (the other blocks' values show what unwritten shared memory reads as).
pub fn unwritten_shared(be: &CudaBackend, blocks: u32, threads: u32) -> Result<Vec<u32>> {
    emulator_only(be, "unwritten_shared")?;
    let mut out = be.alloc::<u32>((blocks * threads) as usize)?;
    kernels::selftest_unwritten_shared(be.dev(), LaunchConfig::linear(blocks, threads), &mut out)?;
    be.download_typed(&out)
}

/// Launches a kernel that does nothing with `cfg` (to probe the launch-limit checks).
pub fn launch_noop(be: &CudaBackend, cfg: LaunchConfig) -> Result<()> {
    let mut out = be.alloc::<f32>(1)?;
    kernels::selftest_noop(be.dev(), cfg, &mut out)?;
    be.synchronize()
}

/// Runs `g` on the device runtime (cuBLAS on a GPU, the emulator's CPU GEMM) with host operands;
/// returns the new C.
pub fn gemm(be: &CudaBackend, g: &Gemm, a: &[f32], b: &[f32], c: &[f32]) -> Result<Vec<f32>> {
    let a = be.upload_typed(a)?;
    let b = be.upload_typed(b)?;
    let mut c = be.upload_typed(c)?;
    be.gemm(g, &a, &b, &mut c)?;
    be.download_typed(&c)
}
