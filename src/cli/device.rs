//! Picks the backend a command runs on and hands it to generic library code.

use anyhow::{Context, Result};
use ltrain::backend::cpu::CpuBackend;
use ltrain::backend::cuda::{installation, CudaBackend, CudaOptions};
use ltrain::backend::Backend;
use ltrain::config::DeviceKind;

/// Work that runs on whichever backend was chosen.
pub trait OnBackend {
    type Output;
    fn run<B: Backend>(self, be: &B) -> Result<Self::Output>;
}

/// Runs `job` on the requested device. `auto` uses CUDA when a usable GPU is present, otherwise the
/// CPU with a one-line notice on stderr.
pub fn dispatch<J: OnBackend>(
    device: DeviceKind,
    threads: usize,
    tf32: bool,
    job: J,
) -> Result<J::Output> {
    let cpu = || CpuBackend::new((threads > 0).then_some(threads));
    let gpu = || CudaBackend::new_gpu_with(0, CudaOptions { tf32 });
    match device {
        DeviceKind::Cpu => job.run(&cpu()?),
        DeviceKind::CudaEmulated => job.run(&CudaBackend::new_emulated_with(CudaOptions { tf32 })?),
        DeviceKind::Cuda => job.run(&gpu().context(
            "--device cuda: no usable CUDA GPU (use --device cpu, or --device auto to fall back)",
        )?),
        DeviceKind::Auto => match gpu() {
            Ok(be) => job.run(&be),
            Err(e) => {
                eprintln!("note: no usable CUDA GPU ({e:#}); running on the CPU");
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
