//! Threads as ranks: the in-process [`Collective`] for any backend (CPU ranks in CI, emulated GPUs).
//! Each collective moves the buffers through the host: every rank deposits its copy, waits for the
//! others, and computes the result from all copies in rank order, so every rank gets the same bits.
//! A rank that fails aborts the group, so its peers return an error instead of waiting for it.

use super::{Collective, World};
use crate::backend::Backend;
use anyhow::{bail, Result};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The shared state of one group of thread ranks.
struct Shared {
    size: usize,
    timeout: Duration,
    state: Mutex<Exchange>,
    changed: Condvar,
}

struct Exchange {
    /// Each rank's deposit for the current collective.
    slots: Vec<Arc<Vec<f32>>>,
    /// Ranks that have deposited (phase 0) or read (phase 1) in the current round.
    arrived: usize,
    /// Rounds completed; waiting ranks wake when it moves on.
    round: u64,
    /// Why the group was aborted, if it was, and the rank that did.
    aborted: Option<String>,
    first_failure: Option<usize>,
}

/// The members of a new group of `size` thread ranks, in rank order (hand one to each thread); a
/// collective waits at most `timeout` for its peers.
pub fn thread_group(size: usize, timeout: Duration) -> Vec<ThreadCollective> {
    let shared = Arc::new(Shared {
        size,
        timeout,
        state: Mutex::new(Exchange {
            slots: (0..size).map(|_| Arc::new(Vec::new())).collect(),
            arrived: 0,
            round: 0,
            aborted: None,
            first_failure: None,
        }),
        changed: Condvar::new(),
    });
    (0..size)
        .map(|rank| ThreadCollective {
            shared: shared.clone(),
            rank,
        })
        .collect()
}

/// Runs `work` on `size` thread ranks of a new group and returns their results in rank order. A
/// rank that fails aborts the group; the error returned is the first failure's, not its peers'.
pub fn run_ranks<T: Send>(
    size: usize,
    timeout: Duration,
    work: impl Fn(ThreadCollective) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let members = thread_group(size, timeout);
    let shared = members[0].shared.clone();
    let work = &work;
    let results: Vec<Result<T>> = std::thread::scope(|scope| {
        let handles: Vec<_> = members
            .into_iter()
            .map(|member| {
                scope.spawn(move || {
                    let keep = ThreadCollective {
                        shared: member.shared.clone(),
                        rank: member.rank,
                    };
                    let result = work(member);
                    if let Err(e) = &result {
                        keep.abort(&format!("{e:#}"));
                    }
                    result
                })
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(rank, h)| h.join().unwrap_or_else(|_| bail!("rank {rank} panicked")))
            .collect()
    });
    let first = shared
        .state
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .first_failure;
    let mut out = Vec::with_capacity(size);
    let mut errors: Vec<(usize, anyhow::Error)> = Vec::new();
    for (rank, r) in results.into_iter().enumerate() {
        match r {
            Ok(v) => out.push(v),
            Err(e) => errors.push((rank, e)),
        }
    }
    if errors.is_empty() {
        return Ok(out);
    }
    let at = errors
        .iter()
        .position(|(rank, _)| Some(*rank) == first)
        .unwrap_or(0);
    let (rank, e) = errors.swap_remove(at);
    Err(e.context(format!("rank {rank} of {size}")))
}

/// One rank of a [`thread_group`].
pub struct ThreadCollective {
    shared: Arc<Shared>,
    rank: usize,
}

impl ThreadCollective {
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Makes every pending and later collective of the group fail with `why` (call it when this
    /// rank's work fails, so that its peers stop).
    pub fn abort(&self, why: &str) {
        let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.aborted.is_none() {
            s.aborted = Some(format!("rank {} failed: {why}", self.rank));
            s.first_failure = Some(self.rank);
        }
        self.shared.changed.notify_all();
    }

    /// Waits until every rank has arrived in this round.
    fn barrier<'a>(&'a self, mut s: MutexGuard<'a, Exchange>) -> Result<MutexGuard<'a, Exchange>> {
        let shared = &*self.shared;
        let round = s.round;
        s.arrived += 1;
        if s.arrived == shared.size {
            s.arrived = 0;
            s.round += 1;
            shared.changed.notify_all();
            return Ok(s);
        }
        let deadline = Instant::now() + shared.timeout;
        while s.round == round {
            if let Some(why) = &s.aborted {
                bail!("collective of rank {}: {why}", self.rank);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let why = format!(
                    "rank {} waited {} s for its peers in a collective (only {} of {} arrived)",
                    self.rank,
                    shared.timeout.as_secs(),
                    s.arrived,
                    shared.size
                );
                s.aborted = Some(why.clone());
                shared.changed.notify_all();
                bail!("{why}");
            }
            s = shared
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(s)
    }

    /// Every rank's `data`, in rank order.
    fn exchange(&self, data: Vec<f32>) -> Result<Vec<Arc<Vec<f32>>>> {
        let mut s = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(why) = &s.aborted {
            bail!("collective of rank {}: {why}", self.rank);
        }
        s.slots[self.rank] = Arc::new(data);
        let s = self.barrier(s)?;
        let all = s.slots.clone();
        // Nobody deposits again before everyone has read this round's slots.
        drop(self.barrier(s)?);
        let len = all[self.rank].len();
        if let Some((r, d)) = all.iter().enumerate().find(|(_, d)| d.len() != len) {
            bail!(
                "collective: rank {} gave {len} values, rank {r} {} (every rank must call the same \
                 collectives on buffers of one length)",
                self.rank,
                d.len()
            );
        }
        Ok(all)
    }
}

impl<B: Backend> Collective<B> for ThreadCollective {
    fn world(&self) -> World {
        World {
            rank: self.rank,
            size: self.shared.size,
        }
    }

    fn all_reduce_sum(&self, be: &B, buf: &mut B::Buf) -> Result<()> {
        let all = self.exchange(be.download(buf)?)?;
        let mut sum = all[0].to_vec();
        for other in &all[1..] {
            for (s, v) in sum.iter_mut().zip(other.iter()) {
                *s += v;
            }
        }
        be.write(buf, &sum)
    }

    fn all_gather(&self, be: &B, buf: &B::Buf) -> Result<B::Buf> {
        let all = self.exchange(be.download(buf)?)?;
        let joined: Vec<f32> = all.iter().flat_map(|d| d.iter().copied()).collect();
        be.upload(&joined)
    }

    fn broadcast(&self, be: &B, buf: &mut B::Buf, root: usize) -> Result<()> {
        if root >= self.shared.size {
            bail!(
                "broadcast from rank {root} in a group of {}",
                self.shared.size
            );
        }
        let all = self.exchange(be.download(buf)?)?;
        be.write(buf, &all[root])
    }
}
