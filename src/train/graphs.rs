//! Running a fixed sequence of ops as a CUDA graph: eagerly the first time (so that the caching
//! allocator holds its memory), captured the second time, replayed from then on. The ops must read
//! every value that changes between runs from buffers that stay in place (see
//! [`crate::backend::Backend::begin_capture`]).

use crate::backend::Backend;
use anyhow::{Context, Result};

/// How a run of the ops went, with what they returned (outputs that outlive them, host-side
/// effects): fresh when run eagerly, the capture's own when captured or replayed.
pub enum Ran<'a, T> {
    Eager(T),
    /// Captured now, then replayed: the ops' host side ran once more, their device work once.
    Captured(&'a T),
    /// Only replayed: nothing of the ops' host side ran.
    Replayed(&'a T),
}

impl<T> Ran<'_, T> {
    /// What the ops returned.
    pub fn value(&self) -> &T {
        match self {
            Ran::Eager(t) => t,
            Ran::Captured(t) | Ran::Replayed(t) => t,
        }
    }
}

/// One sequence of ops (one shape of a step) and, once captured, its graph.
pub struct Replay<B: Backend, T> {
    warm: bool,
    captured: Option<(B::Graph, T)>,
}

impl<B: Backend, T> Default for Replay<B, T> {
    fn default() -> Self {
        Self {
            warm: false,
            captured: None,
        }
    }
}

impl<B: Backend, T> Replay<B, T> {
    /// Runs `ops` eagerly, or captures and replays them, or replays the capture (as one NVTX range
    /// named `range`: a replay cannot mark the phases inside it).
    pub fn run(
        &mut self,
        be: &B,
        range: &str,
        ops: impl FnOnce() -> Result<T>,
    ) -> Result<Ran<'_, T>> {
        match &mut self.captured {
            Some((graph, value)) => {
                be.range_push(range);
                let replayed = be.replay(graph);
                be.range_pop();
                replayed?;
                Ok(Ran::Replayed(value))
            }
            None if !self.warm => {
                let value = ops()?;
                self.warm = true;
                Ok(Ran::Eager(value))
            }
            slot @ None => {
                be.begin_capture()?;
                let recorded = ops();
                let graph = be.end_capture();
                let value =
                    recorded.with_context(|| format!("capturing {range} as a CUDA graph"))?;
                let graph = graph?;
                be.replay(&graph)?;
                let (_, value) = slot.insert((graph, value));
                Ok(Ran::Captured(value))
            }
        }
    }
}
