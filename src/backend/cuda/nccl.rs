//! [`Collective`] on NCCL (cudarc's `nccl` feature, `libnccl` loaded at run time): one process per
//! GPU, ranks joined by a 128-byte id that rank 0 makes ([`nccl_unique_id`]) and ships to the others.
//!
//! Streams: the collectives run on a communication stream of their own, which first waits (an event)
//! for everything issued so far on the backend's stream. An all-reduce is left running there, so a
//! gradient bucket is summed while the backward goes on; [`Collective::wait`] makes the backend's
//! stream wait for it. An all-gather or a broadcast makes the backend's stream wait at once: their
//! results are read right away (rare calls, nothing to overlap).
//!
//! Memory: the backend's caching allocator reuses freed blocks in the order of its one stream, so a
//! buffer still being reduced on the other stream must not go back to the cache: each collective
//! keeps its buffer's allocation alive until the backend's stream waits for it.
//!
//! The communicator is made with `ncclCommInitRank` through cudarc's `result` layer, not its `Comm`:
//! `Comm` hides the handle that the raw-pointer collectives need (the backend's buffers are views into
//! allocations, not `CudaSlice`s), and its drop panics on an error.
//!
//! CUDA graphs: a collective issued (or waited for) during a capture is an error; the trainer
//! captures only with one rank.
//!
//! cudarc panics when `libnccl` is missing, so [`nccl_available`] probes it before any NCCL call.

use std::ffi::{c_char, c_void, CStr};
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{anyhow, bail, ensure, Context, Result};
use cudarc::driver::{CudaEvent, CudaStream};
use cudarc::nccl::result::{self as nccl, NcclError, NcclStatus};
use cudarc::nccl::sys;

use super::device::DeviceMem;
use super::gpu::GpuRuntime;
use super::{CudaBackend, CudaBuf};
use crate::dist::{Collective, World};

const EMULATED: &str =
    "NCCL needs a GPU; the emulator runs ranks with the in-process thread collective \
     (dist::thread_group, `--ranks N`)";

/// Whether `libnccl` can be loaded; `Err` says how to get it. Never panics.
pub fn nccl_available() -> std::result::Result<(), String> {
    // SAFETY: only tries to dlopen the library.
    if unsafe { sys::is_culib_present() } {
        return Ok(());
    }
    Err(
        "NCCL was not found: cudarc opens `libnccl.so` (or `libnccl.so.13`, `.12`, `.11`, `.10`, \
         `.9`, `.1`), not `libnccl.so.2`, the name the PyPI wheel nvidia-nccl-cu13 ships; install \
         nvidia-nccl-cu13 and put a `libnccl.so` link to its `libnccl.so.2` in a folder on \
         LD_LIBRARY_PATH"
            .into(),
    )
}

/// A new NCCL unique id (128 bytes): rank 0 makes it, every rank passes it to
/// [`NcclCollective::new`].
pub fn nccl_unique_id() -> Result<Vec<u8>> {
    nccl_available().map_err(|reason| anyhow!("{reason}"))?;
    let id = nccl::get_uniqueid().map_err(|e| nccl_error("ncclGetUniqueId", e))?;
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

/// An NCCL failure with NCCL's own description of it.
fn nccl_error(what: &str, e: NcclError) -> anyhow::Error {
    let describe = |text: *const c_char| {
        if text.is_null() {
            String::new()
        } else {
            // SAFETY: NCCL returns a NUL-terminated string it owns.
            unsafe { CStr::from_ptr(text) }
                .to_string_lossy()
                .into_owned()
        }
    };
    // SAFETY: both only read NCCL's static or thread-local strings; the last-error query ignores
    // its communicator argument.
    let (kind, last) = unsafe {
        (
            describe(sys::ncclGetErrorString(e.0)),
            describe(sys::ncclGetLastError(std::ptr::null_mut())),
        )
    };
    anyhow!("{what} failed: {:?} ({kind}) {last}", e.0)
}

/// An NCCL communicator handle, destroyed with the collective.
struct RawComm(sys::ncclComm_t);

// SAFETY: a communicator may be used from any thread, one call at a time (it lives in a `Mutex`).
unsafe impl Send for RawComm {}

impl Drop for RawComm {
    fn drop(&mut self) {
        // SAFETY: a live communicator, not used again. An error here has nobody to report to.
        let _ = unsafe { nccl::comm_destroy(self.0) };
    }
}

struct State {
    comm: RawComm,
    /// Allocations used by collectives the backend's stream does not wait for yet.
    in_flight: Vec<Arc<DeviceMem>>,
}

/// One rank of an NCCL group, on the GPU of a [`CudaBackend`].
pub struct NcclCollective {
    state: Mutex<State>,
    world: World,
    /// The stream of the backend this was made for (collectives check they are given that one).
    compute: Arc<CudaStream>,
    comm_stream: Arc<CudaStream>,
    /// The backend's stream, recorded before each collective; the communication stream waits on it.
    issued: CudaEvent,
    /// The communication stream, recorded when the backend's stream waits for it.
    done: CudaEvent,
}

impl NcclCollective {
    /// Joins the group of `world.size` ranks named by `id` (from [`nccl_unique_id`]) as
    /// `world.rank`, on `be`'s GPU; blocks until every rank has joined.
    pub fn new(be: &CudaBackend, world: World, id: &[u8]) -> Result<Self> {
        let Some(rt) = be.dev().gpu() else {
            bail!("{EMULATED}");
        };
        nccl_available().map_err(|reason| anyhow!("{reason}"))?;
        let mut internal: [c_char; std::mem::size_of::<sys::ncclUniqueId>()] =
            [0; std::mem::size_of::<sys::ncclUniqueId>()];
        ensure!(
            id.len() == internal.len(),
            "an NCCL unique id has {} bytes, this one {}",
            internal.len(),
            id.len()
        );
        ensure!(
            world.rank < world.size && i32::try_from(world.size).is_ok(),
            "NCCL: rank {} of a world of {}",
            world.rank,
            world.size
        );
        for (to, &from) in internal.iter_mut().zip(id) {
            *to = from as c_char;
        }
        let ctx = rt.context();
        let comm_stream = ctx.new_stream().context("cannot create the NCCL stream")?;
        let issued = ctx.new_event(None).context("cannot create a CUDA event")?;
        let done = ctx.new_event(None).context("cannot create a CUDA event")?;
        // NCCL takes the device from the thread's current context.
        ctx.bind_to_thread()?;
        let mut comm = MaybeUninit::uninit();
        // SAFETY: `comm` receives the handle; the id is the 128 bytes NCCL made.
        unsafe {
            nccl::comm_init_rank(
                comm.as_mut_ptr(),
                world.size as i32,
                sys::ncclUniqueId { internal },
                world.rank as i32,
            )
        }
        .map_err(|e| nccl_error("ncclCommInitRank", e))
        .with_context(|| {
            format!(
                "rank {} of {} joining the NCCL group",
                world.rank, world.size
            )
        })?;
        // SAFETY: initialised by the successful call above.
        let comm = RawComm(unsafe { comm.assume_init() });
        Ok(Self {
            state: Mutex::new(State {
                comm,
                in_flight: Vec::new(),
            }),
            world,
            compute: rt.stream().clone(),
            comm_stream,
            issued,
            done,
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>> {
        self.state
            .lock()
            .map_err(|_| anyhow!("NCCL collective: lock poisoned"))
    }

    /// `be`'s GPU runtime, checked to be the one this collective was made for, outside a capture.
    fn runtime<'a>(&self, be: &'a CudaBackend) -> Result<&'a GpuRuntime> {
        let rt = be.dev().gpu().ok_or_else(|| anyhow!("{EMULATED}"))?;
        ensure!(
            Arc::ptr_eq(rt.stream(), &self.compute),
            "NCCL collective: given another backend than the one it was made for"
        );
        ensure!(
            !be.dev().is_capturing(),
            "NCCL collectives are not part of CUDA graphs: issue and wait for them outside a \
             capture (capture only with one rank)"
        );
        Ok(rt)
    }

    /// Runs `call` (an NCCL collective on the communicator and stream it gets) on the
    /// communication stream, after the work issued so far on the backend's stream.
    fn issue(
        &self,
        rt: &GpuRuntime,
        what: &str,
        call: impl FnOnce(sys::ncclComm_t, sys::cudaStream_t) -> Result<NcclStatus, NcclError>,
    ) -> Result<MutexGuard<'_, State>> {
        let state = self.lock()?;
        self.issued
            .record(rt.stream())
            .and_then(|()| self.comm_stream.wait(&self.issued))
            .context("ordering an NCCL collective after the backend's work")?;
        rt.context().bind_to_thread()?;
        call(
            state.comm.0,
            self.comm_stream.cu_stream() as sys::cudaStream_t,
        )
        .map_err(|e| nccl_error(what, e))?;
        Ok(state)
    }

    /// Makes the backend's stream wait for every collective issued so far.
    fn join(&self, rt: &GpuRuntime, state: &mut State) -> Result<()> {
        self.done
            .record(&self.comm_stream)
            .and_then(|()| rt.stream().wait(&self.done))
            .context("ordering the backend's work after the NCCL collectives")?;
        // Later uses of these allocations are ordered after the collectives now.
        state.in_flight.clear();
        Ok(())
    }
}

impl Drop for NcclCollective {
    fn drop(&mut self) {
        // The communicator and the allocations in flight go away next: let the collectives end.
        let _ = self.comm_stream.synchronize();
    }
}

/// The device address of a buffer (or view).
fn device_ptr(rt: &GpuRuntime, buf: &CudaBuf) -> Result<*mut c_void> {
    Ok((rt.address(&buf.mem)? + buf.byte_offset() as u64) as usize as *mut c_void)
}

const F32: sys::ncclDataType_t = sys::ncclDataType_t::ncclFloat32;

impl Collective<CudaBackend> for NcclCollective {
    fn world(&self) -> World {
        self.world
    }

    /// Left running on the communication stream: [`Collective::wait`] orders later work after it.
    fn all_reduce_sum(&self, be: &CudaBackend, buf: &mut CudaBuf) -> Result<()> {
        if buf.len() == 0 {
            return Ok(());
        }
        let rt = self.runtime(be)?;
        let ptr = device_ptr(rt, buf)?;
        let mut state = self.issue(rt, "ncclAllReduce", |comm, stream| {
            // SAFETY: `buf.len()` floats at `ptr`, kept alive below until the backend waits.
            unsafe {
                nccl::all_reduce(
                    ptr,
                    ptr,
                    buf.len(),
                    F32,
                    sys::ncclRedOp_t::ncclSum,
                    comm,
                    stream,
                )
            }
        })?;
        state.in_flight.push(buf.mem.clone());
        Ok(())
    }

    /// The backend's stream waits for it before this returns (its result is read right away).
    fn all_gather(&self, be: &CudaBackend, buf: &CudaBuf) -> Result<CudaBuf> {
        let rt = self.runtime(be)?;
        let len = buf.len();
        let total = len
            .checked_mul(self.world.size)
            .context("all-gather: the gathered buffer is too large")?;
        let out = be.alloc::<f32>(total)?;
        if len == 0 {
            return Ok(out);
        }
        let (src, dst) = (device_ptr(rt, buf)?, device_ptr(rt, &out)?);
        let mut state = self.issue(rt, "ncclAllGather", |comm, stream| {
            // SAFETY: `len` floats at `src`, `size * len` at `dst` (both alive until the join).
            unsafe { nccl::all_gather(src, dst, len, F32, comm, stream) }
        })?;
        self.join(rt, &mut state)?;
        Ok(out)
    }

    /// The backend's stream waits for it before this returns.
    fn broadcast(&self, be: &CudaBackend, buf: &mut CudaBuf, root: usize) -> Result<()> {
        ensure!(
            root < self.world.size,
            "broadcast from rank {root} in a world of {}",
            self.world.size
        );
        if buf.len() == 0 {
            return Ok(());
        }
        let rt = self.runtime(be)?;
        let ptr = device_ptr(rt, buf)?;
        let mut state = self.issue(rt, "ncclBroadcast", |comm, stream| {
            // SAFETY: `buf.len()` floats at `ptr`, alive until the join.
            unsafe { nccl::broadcast(ptr, ptr, buf.len(), F32, root as i32, comm, stream) }
        })?;
        self.join(rt, &mut state)
    }

    fn wait(&self, be: &CudaBackend) -> Result<()> {
        let mut state = self.lock()?;
        if state.in_flight.is_empty() {
            return Ok(());
        }
        let rt = self.runtime(be)?;
        self.join(rt, &mut state)
    }
}
