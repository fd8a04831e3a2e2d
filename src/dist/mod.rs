//! Data-parallel training (DistributedDataParallel semantics): ranks, the collective seam the
//! training loop is written against, and how a global batch and the test set are sharded.
//!
//! The seam is [`Collective`]: a sum, a gather and a broadcast of device buffers, implemented by
//! in-process threads as ranks ([`thread_group`], any backend, what CI runs) and by NCCL on GPUs
//! (`backend::cuda::nccl`). Everything above it (gradient buckets, synchronised batch norm, the SLA
//! table merge, the sharded evaluation) is written once in [`Dist`].

pub mod rendezvous;
mod threads;

pub use threads::{run_ranks, thread_group, ThreadCollective};

use crate::backend::Backend;
use anyhow::{ensure, Result};
use std::sync::Arc;

/// This rank and how many there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub size: usize,
}

impl World {
    /// One process, no peers.
    pub const SINGLE: World = World { rank: 0, size: 1 };

    /// Rank 0 writes the metrics, reports and checkpoints.
    pub fn is_lead(&self) -> bool {
        self.rank == 0
    }
}

/// Collectives over device buffers. Every rank calls the same collectives in the same order with
/// buffers of the same length; every rank receives the same values. An implementation may run
/// them asynchronously (NCCL on its own stream): ops issued later that read the result are ordered
/// after it by [`Collective::wait`].
pub trait Collective<B: Backend>: Send + Sync {
    fn world(&self) -> World;
    /// `buf <- sum over the ranks of buf`, in place.
    fn all_reduce_sum(&self, be: &B, buf: &mut B::Buf) -> Result<()>;
    /// `[size * len]` every rank's `buf`, in rank order.
    fn all_gather(&self, be: &B, buf: &B::Buf) -> Result<B::Buf>;
    /// `buf <- buf of rank root`, in place.
    fn broadcast(&self, be: &B, buf: &mut B::Buf, root: usize) -> Result<()>;
    /// Orders the backend's later ops after every collective issued so far.
    fn wait(&self, _be: &B) -> Result<()> {
        Ok(())
    }
}

/// The training loop's view of the ranks: no collective in a single process (every call a no-op),
/// else the helpers written once over [`Collective`].
pub struct Dist<B: Backend> {
    comm: Option<Arc<dyn Collective<B>>>,
}

impl<B: Backend> Clone for Dist<B> {
    fn clone(&self) -> Self {
        Self {
            comm: self.comm.clone(),
        }
    }
}

impl<B: Backend> Dist<B> {
    pub fn single() -> Self {
        Self { comm: None }
    }

    /// A rank of a data-parallel run.
    pub fn new(comm: Arc<dyn Collective<B>>) -> Self {
        Self { comm: Some(comm) }
    }

    pub fn world(&self) -> World {
        self.comm.as_ref().map_or(World::SINGLE, |c| c.world())
    }

    /// The collective when there are peers.
    pub fn peers(&self) -> Option<&Arc<dyn Collective<B>>> {
        self.comm.as_ref().filter(|c| c.world().size > 1)
    }

    /// `buf <- sum over the ranks`.
    pub fn all_reduce_sum(&self, be: &B, buf: &mut B::Buf) -> Result<()> {
        match self.peers() {
            Some(c) => {
                c.all_reduce_sum(be, buf)?;
                c.wait(be)
            }
            None => Ok(()),
        }
    }

    /// `buf <- rank 0's buf`.
    pub fn broadcast_from_lead(&self, be: &B, buf: &mut B::Buf) -> Result<()> {
        match self.peers() {
            Some(c) => {
                c.broadcast(be, buf, 0)?;
                c.wait(be)
            }
            None => Ok(()),
        }
    }

    /// Every rank's host `data` (lengths may differ), in rank order.
    pub fn gather_host(&self, be: &B, data: &[f32]) -> Result<Vec<Vec<f32>>> {
        let Some(c) = self.peers() else {
            return Ok(vec![data.to_vec()]);
        };
        let size = c.world().size;
        let lens = be.download(&c.all_gather(be, &be.upload(&[data.len() as f32])?)?)?;
        let lens: Vec<usize> = lens.iter().map(|&l| l as usize).collect();
        ensure!(
            lens.iter().all(|&l| l < 1 << 24),
            "gather: a rank holds {} values, more than one collective carries",
            lens.iter().max().copied().unwrap_or(0)
        );
        let longest = lens.iter().copied().max().unwrap_or(0).max(1);
        let mut padded = data.to_vec();
        padded.resize(longest, 0.0);
        let all = be.download(&c.all_gather(be, &be.upload(&padded)?)?)?;
        c.wait(be)?;
        Ok((0..size)
            .map(|r| all[r * longest..r * longest + lens[r]].to_vec())
            .collect())
    }
}

/// Rank `world.rank`'s part of a global batch of `n`: contiguous, the first `n % size` ranks one
/// sample more than the others.
pub fn shard(n: usize, world: World) -> std::ops::Range<usize> {
    let (base, extra) = (n / world.size, n % world.size);
    let start = world.rank * base + world.rank.min(extra);
    start..start + base + usize::from(world.rank < extra)
}
