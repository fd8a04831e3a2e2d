//! Entry points that exercise the device runtime itself rather than a `Backend` op: the emulator's
//! barriers, warp collectives, atomics and launch-limit checks, the tensor-core and cp.async wrappers
//! of kernels/mma.cuh, and the raw cuBLAS-convention GEMM.
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

// ---- tensor cores and cp.async (kernels/mma.cuh) ----

/// Registers of one warp for one `mma.sync`, lane-major in register order: lane `l` holds `a[4l..4l+4]`,
/// `b[2l..2l+2]` and `c[4l..4l+4]`.
pub struct MmaRegisters<'a> {
    pub a: &'a [u32],
    pub b: &'a [u32],
    pub c: &'a [f32],
}

impl MmaRegisters<'_> {
    fn check(&self, what: &str) -> Result<()> {
        if self.a.len() != 128 || self.b.len() != 64 || self.c.len() != 128 {
            bail!(
                "{what}: one warp's registers are 128 a, 64 b and 128 c values, not {}, {} and {}",
                self.a.len(),
                self.b.len(),
                self.c.len()
            );
        }
        Ok(())
    }
}

/// One `mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32` by one warp (operand bits as given, not
/// rounded); returns every lane's `d`, lane-major (`d[4l..4l+4]` is lane `l`'s).
pub fn mma_tf32(be: &CudaBackend, regs: &MmaRegisters) -> Result<Vec<f32>> {
    regs.check("mma_tf32")?;
    let (a, b, c) = (
        be.upload_typed(regs.a)?,
        be.upload_typed(regs.b)?,
        be.upload_typed(regs.c)?,
    );
    let mut d = be.alloc::<f32>(128)?;
    kernels::selftest_mma_tf32(be.dev(), LaunchConfig::linear(1, 32), &a, &b, &c, &mut d)?;
    be.download_typed(&d)
}

/// One `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32` by one warp (two bf16 per `a` and `b`
/// register, the even-indexed element in the low half); returns every lane's `d` as [`mma_tf32`] does.
pub fn mma_bf16(be: &CudaBackend, regs: &MmaRegisters) -> Result<Vec<f32>> {
    regs.check("mma_bf16")?;
    let (a, b, c) = (
        be.upload_typed(regs.a)?,
        be.upload_typed(regs.b)?,
        be.upload_typed(regs.c)?,
    );
    let mut d = be.alloc::<f32>(128)?;
    kernels::selftest_mma_bf16(be.dev(), LaunchConfig::linear(1, 32), &a, &b, &c, &mut d)?;
    be.download_typed(&d)
}

/// The tf32 mma launched with `threads` threads (not a multiple of 32: a partial warp); emulator only
/// (it must refuse a warp instruction some lanes of the warp cannot take part in).
pub fn mma_tf32_on_a_partial_warp(be: &CudaBackend, threads: u32) -> Result<()> {
    emulator_only(be, "mma_tf32_on_a_partial_warp")?;
    let a = be.upload_typed(&[0u32; 128])?;
    let b = be.upload_typed(&[0u32; 64])?;
    let c = be.upload_typed(&[0f32; 128])?;
    let mut d = be.alloc::<f32>(128)?;
    kernels::selftest_mma_tf32(
        be.dev(),
        LaunchConfig::linear(1, threads),
        &a,
        &b,
        &c,
        &mut d,
    )
}

/// `cvt.rna.tf32.f32` of every value: the tf32 bits (in a 32-bit word).
pub fn to_tf32(be: &CudaBackend, x: &[f32]) -> Result<Vec<u32>> {
    let input = be.upload_typed(x)?;
    let mut out = be.alloc::<u32>(x.len())?;
    let n = to_u32("to_tf32", "length", x.len())?;
    let blocks = x.len().div_ceil(256).max(1) as u32;
    kernels::selftest_to_tf32(
        be.dev(),
        LaunchConfig::linear(blocks, 256),
        &input,
        &mut out,
        n,
    )?;
    be.download_typed(&out)
}

/// `ldmatrix.sync.aligned.m8n8.x{matrices}[.trans].shared.b16` by one warp from a shared copy of
/// `tile` (32 rows of 8 b16 values, 4 words a row), lane `l` passing the address of row
/// `row_of_lane[l]`; returns `matrices` registers a lane, lane-major.
pub fn ldmatrix(
    be: &CudaBackend,
    tile: &[u32],
    row_of_lane: &[u32],
    matrices: u32,
    trans: bool,
) -> Result<Vec<u32>> {
    if tile.len() != 128 || row_of_lane.len() != 32 || row_of_lane.iter().any(|&r| r >= 32) {
        bail!("ldmatrix: a tile of 32 rows of 4 words, and a row below 32 for each of 32 lanes");
    }
    if ![1, 2, 4].contains(&matrices) {
        bail!("ldmatrix loads 1, 2 or 4 matrices, not {matrices}");
    }
    let tile = be.upload_typed(tile)?;
    let rows = be.upload_typed(row_of_lane)?;
    let mut out = be.alloc::<u32>(128)?;
    let cfg = LaunchConfig {
        shared_mem_bytes: 512,
        ..LaunchConfig::linear(1, 32)
    };
    kernels::selftest_ldmatrix(
        be.dev(),
        cfg,
        &tile,
        &rows,
        &mut out,
        matrices,
        u32::from(trans),
    )?;
    let out = be.download_typed(&out)?;
    Ok(out
        .chunks(4)
        .flat_map(|lane| lane[..matrices as usize].iter().copied())
        .collect())
}

fn cp_async_source(be: &CudaBackend, what: &str, src: &[f32]) -> Result<super::DeviceBuffer<f32>> {
    if src.len() != 256 {
        bail!("{what}: 256 values, not {}", src.len());
    }
    be.upload_typed(src)
}

/// `src` (256 values) copied to shared memory by one warp's `cp.async` in two commit groups, each read
/// back after `cp.async.wait_group` and a barrier.
pub fn cp_async(be: &CudaBackend, src: &[f32]) -> Result<Vec<f32>> {
    let input = cp_async_source(be, "cp_async", src)?;
    let mut out = be.alloc::<f32>(256)?;
    let cfg = LaunchConfig {
        shared_mem_bytes: 1024,
        ..LaunchConfig::linear(1, 32)
    };
    kernels::selftest_cp_async(be.dev(), cfg, &input, &mut out)?;
    be.download_typed(&out)
}

/// The same two groups with both read after waiting for the first only; `wait_at_exit` waits for the
/// second before the threads end. Emulator only: the second half reads as poison, and without the final
/// wait the launch fails (copies pending at thread exit).
pub fn cp_async_read_early(be: &CudaBackend, src: &[f32], wait_at_exit: bool) -> Result<Vec<f32>> {
    emulator_only(be, "cp_async_read_early")?;
    let input = cp_async_source(be, "cp_async_read_early", src)?;
    let mut out = be.alloc::<f32>(256)?;
    let cfg = LaunchConfig {
        shared_mem_bytes: 1024,
        ..LaunchConfig::linear(1, 32)
    };
    kernels::selftest_cp_async_early_read(
        be.dev(),
        cfg,
        &input,
        &mut out,
        u32::from(wait_at_exit),
    )?;
    be.download_typed(&out)
}
