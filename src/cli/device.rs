//! Picks the backend a command runs on and hands it to generic library code.

use super::parallel::ParallelArgs;
use anyhow::{bail, Context, Result};
use ltrain::backend::cpu::CpuBackend;
use ltrain::backend::cuda::{installation, CudaBackend, CudaOptions};
use ltrain::backend::Backend;
use ltrain::config::DeviceKind;
use std::sync::OnceLock;

/// The help of `--gpu` (train, sweep, eval, bench).
pub const GPU_HELP: &str = "Run on GPU N (numbered from 0 as `ltrain device` lists them); implies \
    --device cuda unless --device is given (auto: GPU N, else the CPU). CUDA_VISIBLE_DEVICES works \
    as CUDA documents it: the driver shows only the GPUs it lists, renumbered from 0 in its order \
    (CUDA_VISIBLE_DEVICES=2 runs on physical GPU 2, which is then GPU 0), and ltrain never sets it. \
    For one process only: data-parallel runs use GPUs 0..N-1 (--gpus N, --ranks N) or each \
    process's LOCAL_RANK (--local-rank) [default: GPU 0]";

/// The GPU that `--gpu N` chose for this process's runs (GPU 0 when not given).
static CHOSEN_GPU: OnceLock<usize> = OnceLock::new();

/// Applies `--gpu N` before anything runs: refused with `--device cpu` or `--device cuda-emulated`
/// (naming both flags) and with data-parallel flags (`data_parallel` names those given, see
/// [`data_parallel_flags`]); it makes `device` `cuda` when `--device` was not given, and
/// [`dispatch`] use GPU N.
pub fn choose_gpu(
    gpu: Option<usize>,
    device: &mut Option<DeviceKind>,
    data_parallel: Option<String>,
) -> Result<()> {
    let Some(n) = gpu else {
        return Ok(());
    };
    match *device {
        Some(d @ (DeviceKind::Cpu | DeviceKind::CudaEmulated)) => {
            let name = match d {
                DeviceKind::Cpu => "cpu",
                _ => "cuda-emulated",
            };
            bail!(
                "--gpu {n} picks a GPU but --device {name} runs without one: give --device cuda \
                 (or leave --device out) with --gpu, or drop --gpu"
            )
        }
        Some(DeviceKind::Cuda | DeviceKind::Auto) => {}
        None => *device = Some(DeviceKind::Cuda),
    }
    if let Some(flags) = data_parallel {
        bail!(
            "--gpu {n} picks the GPU of a single-process run, but {flags} makes a data-parallel \
             run, whose ranks use GPUs 0..N-1 (--gpus N, --ranks N) or each process's LOCAL_RANK \
             (--local-rank): drop --gpu, and choose the GPUs with CUDA_VISIBLE_DEVICES"
        );
    }
    if CHOSEN_GPU.set(n).is_err() && CHOSEN_GPU.get() != Some(&n) {
        bail!(
            "--gpu {n}: this process already runs on GPU {:?}",
            CHOSEN_GPU.get()
        );
    }
    Ok(())
}

/// The data-parallel flags of `ltrain train` that are given (`--gpus 2`, `--ranks 2`, `--rank`,
/// `--local-rank`), and `WORLD_SIZE` above 1 (a process of torchrun or srun), for [`choose_gpu`].
pub fn data_parallel_flags(p: &ParallelArgs) -> Option<String> {
    let mut given = Vec::new();
    if let Some(g) = p.gpus {
        given.push(format!("--gpus {g}"));
    }
    if let Some(r) = p.ranks {
        given.push(format!("--ranks {r}"));
    }
    if let Some(r) = p.rank {
        given.push(format!("--rank {r}"));
    }
    if let Some(l) = p.local_rank {
        given.push(format!("--local-rank {l}"));
    }
    if let Ok(w) = std::env::var("WORLD_SIZE") {
        if w.trim().parse::<usize>().is_ok_and(|w| w > 1) {
            given.push(format!("WORLD_SIZE={w}"));
        }
    }
    (!given.is_empty()).then(|| given.join(" and "))
}

/// Work that runs on whichever backend was chosen.
pub trait OnBackend {
    type Output;
    fn run<B: Backend>(self, be: &B) -> Result<Self::Output>;
}

/// Runs `job` on the requested device: GPU 0, or the GPU `--gpu N` chose (see [`choose_gpu`]).
/// `auto` uses CUDA when that GPU is usable, otherwise the CPU with a one-line notice on stderr.
pub fn dispatch<J: OnBackend>(
    device: DeviceKind,
    threads: usize,
    tf32: bool,
    job: J,
) -> Result<J::Output> {
    let chosen = CHOSEN_GPU.get().copied();
    let cpu = || CpuBackend::new((threads > 0).then_some(threads));
    let gpu = || CudaBackend::new_gpu_with(chosen.unwrap_or(0), CudaOptions { tf32 });
    match device {
        DeviceKind::Cpu => job.run(&cpu()?),
        DeviceKind::CudaEmulated => job.run(&CudaBackend::new_emulated_with(CudaOptions { tf32 })?),
        DeviceKind::Cuda => job.run(&gpu().with_context(|| {
            match chosen {
                Some(n) => format!(
                    "--gpu {n}: no usable CUDA GPU {n} (`ltrain device` lists the GPUs CUDA shows \
                 this process, numbered from 0 after CUDA_VISIBLE_DEVICES; use --device cpu \
                 without a GPU)"
                ),
                None => "--device cuda: no usable CUDA GPU (use --device cpu, or --device auto to \
                     fall back)"
                    .to_string(),
            }
        })?),
        DeviceKind::Auto => match gpu() {
            Ok(be) => job.run(&be),
            Err(e) => {
                let which = chosen.map_or(String::new(), |n| format!(" {n} (--gpu {n})"));
                eprintln!("note: no usable CUDA GPU{which} ({e:#}); running on the CPU");
                job.run(&cpu()?)
            }
        },
    }
}

/// `ltrain device`: one line per part of the CUDA installation, found or not.
pub fn report() -> Result<()> {
    let parts = installation();
    let width = parts.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    for (name, found) in &parts {
        match found {
            Ok(what) => println!("{name:<width$}  {what}"),
            Err(why) => println!("{name:<width$}  missing: {why}"),
        }
    }
    if let Err(why) = ltrain::backend::cuda::cuda_available() {
        println!(
            "--device cuda is not available here ({why}); the CPU and --device cuda-emulated are"
        );
    }
    Ok(())
}
