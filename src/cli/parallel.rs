//! How `ltrain train` runs on several ranks: threads in this process (`--ranks N` on the CPU or
//! the emulator, `--gpus N` on one node's GPUs with NCCL), or one process per rank started by
//! torchrun, srun or by hand (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`,
//! or the same as flags), the NCCL id shared through a TCP or file rendezvous.

use anyhow::{bail, Context, Result};
use clap::Args;
use ltrain::backend::cpu::CpuBackend;
use ltrain::backend::cuda::nccl::{nccl_library, nccl_unique_id, NcclCollective};
use ltrain::backend::cuda::{CudaBackend, CudaOptions};
use ltrain::backend::Backend;
use ltrain::config::{DeviceKind, TrainConfig};
use ltrain::dist::rendezvous::{share_id, LaunchEnv, Rendezvous};
use ltrain::dist::{run_ranks, Collective, Dist, World};
use std::sync::Arc;
use std::time::Duration;

#[derive(Args, Debug, Default)]
pub struct ParallelArgs {
    /// Data-parallel ranks in this process: threads on the CPU or the emulator, GPUs 0..N-1 with
    /// --device cuda. Each trains --batch-size samples of every global batch.
    #[arg(long, value_name = "N")]
    pub ranks: Option<usize>,
    /// Train on this node's first N GPUs (--device cuda --ranks N).
    #[arg(long, value_name = "N", conflicts_with = "ranks")]
    pub gpus: Option<usize>,
    /// One process per rank: this process's rank (else RANK from torchrun or srun).
    #[arg(long, value_name = "R", requires = "world_size")]
    pub rank: Option<usize>,
    /// One process per rank: how many (else WORLD_SIZE).
    #[arg(long, value_name = "W", requires = "rank")]
    pub world_size: Option<usize>,
    /// One process per rank: the GPU of this process (else LOCAL_RANK, or 0).
    #[arg(long, value_name = "G")]
    pub local_rank: Option<usize>,
    /// Where the processes meet: tcp://HOST:PORT (rank 0 listens; default MASTER_ADDR and
    /// MASTER_PORT) or file:PATH on a shared file system (fresh per job).
    #[arg(long, value_name = "SPEC")]
    pub rendezvous: Option<String>,
    /// Seconds to wait for the other ranks (rendezvous, and each collective between threads).
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub rank_timeout: u64,
}

/// How this run is spread.
pub enum Launch {
    Single,
    /// Ranks as threads of this process.
    Threads(usize),
    /// This process is one rank of several.
    Process(LaunchEnv),
}

impl ParallelArgs {
    /// The launch the flags and the environment ask for; the device is adjusted for `--gpus`.
    pub fn launch(&self, cfg: &mut TrainConfig) -> Result<Launch> {
        if let Some(g) = self.gpus {
            cfg.device = DeviceKind::Cuda;
            return threads(g, "--gpus");
        }
        let rendezvous = self
            .rendezvous
            .as_deref()
            .map(Rendezvous::parse)
            .transpose()?;
        let env = match (self.rank, self.world_size) {
            (Some(rank), Some(size)) => {
                let get = |k: &str| match k {
                    "RANK" => Some(rank.to_string()),
                    "WORLD_SIZE" => Some(size.to_string()),
                    "LOCAL_RANK" => self.local_rank.map(|l| l.to_string()),
                    _ => std::env::var(k).ok(),
                };
                LaunchEnv::from_env_with(get, rendezvous.clone())
                    .context("--rank / --world-size")?
            }
            _ => LaunchEnv::from_process_env_with(rendezvous.clone())?,
        };
        match (env, self.ranks) {
            (Some(env), None | Some(1)) if env.world.size > 1 => {
                let local_rank = self.local_rank.unwrap_or(env.local_rank);
                Ok(Launch::Process(LaunchEnv { local_rank, ..env }))
            }
            (Some(env), Some(n)) if env.world.size > 1 => bail!(
                "--ranks {n} with WORLD_SIZE={} (rank {}): run one rank per process under \
                 torchrun or srun, or --ranks N in a single process, not both",
                env.world.size,
                env.world.rank
            ),
            (_, Some(n)) => threads(n, "--ranks"),
            _ => Ok(Launch::Single),
        }
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.rank_timeout)
    }
}

fn threads(n: usize, flag: &str) -> Result<Launch> {
    match n {
        0 => bail!("{flag} 0: a run needs at least one rank"),
        1 => Ok(Launch::Single),
        n => Ok(Launch::Threads(n)),
    }
}

/// What one rank runs, on whichever backend the launch gives it.
pub trait RankJob: Sync {
    fn run<B: Backend>(&self, be: &B, dist: Dist<B>) -> Result<()>;
}

/// Runs `job` on every rank of `launch` (several only: [`Launch::Single`] is the caller's).
pub fn run_parallel<J: RankJob>(
    launch: Launch,
    cfg: &TrainConfig,
    timeout: Duration,
    job: &J,
) -> Result<()> {
    let options = CudaOptions { tf32: cfg.tf32 };
    match launch {
        Launch::Single => bail!("run_parallel: a single rank runs without it"),
        Launch::Threads(n) => {
            let device = match cfg.device {
                DeviceKind::Auto if ltrain::backend::cuda::cuda_available().is_ok() => {
                    DeviceKind::Cuda
                }
                DeviceKind::Auto => DeviceKind::Cpu,
                d => d,
            };
            match device {
                DeviceKind::Cuda => gpu_threads(n, options, timeout, job),
                DeviceKind::CudaEmulated => run_ranks(n, timeout, |comm| {
                    let be = CudaBackend::new_emulated_with(options)?;
                    job.run(&be, Dist::new(Arc::new(comm)))
                })
                .map(drop),
                _ => {
                    // The cores shared out among the ranks.
                    let cores = match cfg.threads {
                        0 => std::thread::available_parallelism().map_or(1, |c| c.get()),
                        t => t,
                    };
                    let per_rank = (cores / n).max(1);
                    run_ranks(n, timeout, |comm| {
                        let be = CpuBackend::new(Some(per_rank))?;
                        job.run(&be, Dist::new(Arc::new(comm)))
                    })
                    .map(drop)
                }
            }
        }
        Launch::Process(env) => {
            if !matches!(cfg.device, DeviceKind::Cuda | DeviceKind::Auto) {
                bail!(
                    "rank {} of {}: processes as ranks communicate through NCCL, which needs \
                     --device cuda; on the CPU run the ranks as threads of one process (--ranks N)",
                    env.world.rank,
                    env.world.size
                );
            }
            load_nccl()?;
            let be = CudaBackend::new_gpu_with(env.local_rank, options).with_context(|| {
                format!(
                    "rank {}: GPU {} (LOCAL_RANK / --local-rank) is not usable",
                    env.world.rank, env.local_rank
                )
            })?;
            let id = match env.world.rank {
                0 => Some(nccl_unique_id()?),
                _ => None,
            };
            let id = share_id(&env.rendezvous, env.world, id.as_deref(), timeout)?;
            let comm = NcclCollective::new(&be, env.world, &id)?;
            job.run(&be, Dist::new(Arc::new(comm)))
        }
    }
}

/// Loads NCCL and says which file, of which version (once per process).
fn load_nccl() -> Result<()> {
    let lib = nccl_library().map_err(|e| anyhow::anyhow!("NCCL: {e}"))?;
    eprintln!("ltrain: NCCL {lib}");
    Ok(())
}

/// `n` GPUs of this node, one thread each (started and joined by [`run_ranks`], which reports the
/// first failure), NCCL between them.
fn gpu_threads<J: RankJob>(
    n: usize,
    options: CudaOptions,
    timeout: Duration,
    job: &J,
) -> Result<()> {
    load_nccl()?;
    let id = nccl_unique_id()?;
    run_ranks(n, timeout, |member| {
        let rank = member.rank();
        let be = CudaBackend::new_gpu_with(rank, options)
            .with_context(|| format!("--gpus {n}: GPU {rank} is not usable"))?;
        let world = World { rank, size: n };
        let comm: Arc<dyn Collective<CudaBackend>> =
            Arc::new(NcclCollective::new(&be, world, &id)?);
        job.run(&be, Dist::new(comm))
    })
    .map(drop)
}
