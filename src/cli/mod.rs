//! The `ltrain` command line: parse, then call the library.

pub mod args;
pub mod bench;
pub mod data;
pub mod device;
pub mod eval;
pub mod parallel;
pub mod presets;
pub mod progress;
pub mod sweep;
pub mod train;

use clap::{Parser, Subcommand};

/// Long-tailed image classification with a multi-expert ResNet: per-expert augmentation and mixup
/// (stage 1), logit-adjusted loss, sample logit-aware reweighting (SLA, stage 2) and softmax
/// averaging at test time, on the CPU or an NVIDIA GPU.
#[derive(Parser, Debug)]
#[command(name = "ltrain", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model (with no flags: the built-in synthetic long-tailed set on the CPU, ~5 minutes).
    // Negative values reach the value checks (`--lr -0.1`: "lr must be positive"), not clap's
    // "unexpected argument".
    #[command(allow_negative_numbers = true)]
    Train(Box<train::TrainCmd>),
    /// Train a grid of configurations (--set KEY=V1,V2) over seeds (--seeds 0,1,2), one run after
    /// another; summarise mean ± std per configuration. Re-run to continue after a kill.
    #[command(allow_negative_numbers = true)]
    Sweep(Box<sweep::SweepCmd>),
    /// Evaluate a checkpoint: top-1, many/medium/few, ECE; optionally per-image predictions.
    #[command(allow_negative_numbers = true)]
    Eval(Box<eval::EvalCmd>),
    /// Inspect, cut and preview datasets.
    #[command(subcommand)]
    Data(data::DataCmd),
    /// List the presets of the paper's settings, with the paper's reported results.
    Presets,
    /// Measure training throughput (samples/s) of a model on a device.
    #[command(allow_negative_numbers = true)]
    Bench(bench::BenchCmd),
    /// Show what ltrain finds of CUDA here: its kernels, the driver, cuBLAS and NCCL (version and
    /// file) and the GPUs, or why each is missing and how to get it.
    Device,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train(mut cmd) => {
            let parallel = device::data_parallel_flags(&cmd.parallel);
            device::choose_gpu(cmd.run.gpu, &mut cmd.run.device, parallel)?;
            train::run(*cmd)
        }
        Command::Sweep(cmd) => sweep::run(*cmd),
        Command::Eval(cmd) => eval::run(*cmd),
        Command::Data(cmd) => data::run(cmd),
        Command::Presets => presets::run(),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Device => device::report(),
    }
}
