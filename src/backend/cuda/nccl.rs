//! [`Collective`] on NCCL (`libnccl` loaded at run time): one process per GPU, ranks joined by a
//! 128-byte id that rank 0 makes ([`nccl_unique_id`]) and ships to the others.
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
//! The library: NCCL's own names (`libnccl.so.2`, from system packages or the PyPI wheel) in the
//! folders [`super::libs`] searches, bound here function by function. cudarc's bindings open only
//! `libnccl.so` and a few versioned names, never `.so.2`; its types are used, not its functions.
//!
//! CUDA graphs: a collective issued (or waited for) during a capture is an error; the trainer
//! captures only with one rank.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use anyhow::{anyhow, bail, ensure, Context, Result};
use cudarc::driver::{CudaEvent, CudaStream};
use cudarc::nccl::sys::{self, ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclUniqueId};

use super::device::DeviceMem;
use super::gpu::GpuRuntime;
use super::libs::{self, Loaded, SearchPath};
use super::{CudaBackend, CudaBuf};
use crate::dist::{Collective, World};

const EMULATED: &str =
    "NCCL needs a GPU; the emulator runs ranks with the in-process thread collective \
     (dist::thread_group, `--ranks N`)";

/// `ncclResult_t`: 0 is success.
type Status = c_int;
type Stream = sys::cudaStream_t;

/// The NCCL functions ltrain calls, from the library [`libs`] found.
struct Nccl {
    lib: Loaded,
    version: String,
    get_unique_id: unsafe extern "C" fn(*mut ncclUniqueId) -> Status,
    comm_init_rank: unsafe extern "C" fn(*mut ncclComm_t, c_int, ncclUniqueId, c_int) -> Status,
    comm_destroy: unsafe extern "C" fn(ncclComm_t) -> Status,
    all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        ncclDataType_t,
        ncclRedOp_t,
        ncclComm_t,
        Stream,
    ) -> Status,
    all_gather: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        ncclDataType_t,
        ncclComm_t,
        Stream,
    ) -> Status,
    broadcast: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        ncclDataType_t,
        c_int,
        ncclComm_t,
        Stream,
    ) -> Status,
    get_error_string: unsafe extern "C" fn(Status) -> *const c_char,
    get_last_error: unsafe extern "C" fn(ncclComm_t) -> *const c_char,
}

impl Nccl {
    fn load(lib: Loaded) -> Result<Self, String> {
        let path = lib.path.display().to_string();
        macro_rules! function {
            ($name:literal) => {
                // SAFETY: the field's type is the function's signature in nccl.h (2.x).
                *unsafe { lib.library.get(concat!($name, "\0").as_bytes()) }
                    .map_err(|e| format!("{path} has no {}: {e}", $name))?
            };
        }
        let get_version: unsafe extern "C" fn(*mut c_int) -> Status = function!("ncclGetVersion");
        let mut code = 0;
        // SAFETY: writes one int.
        let version = match unsafe { get_version(&mut code) } {
            0 => libs::nccl_version_text(code),
            _ => "unknown".into(),
        };
        Ok(Self {
            version,
            get_unique_id: function!("ncclGetUniqueId"),
            comm_init_rank: function!("ncclCommInitRank"),
            comm_destroy: function!("ncclCommDestroy"),
            all_reduce: function!("ncclAllReduce"),
            all_gather: function!("ncclAllGather"),
            broadcast: function!("ncclBroadcast"),
            get_error_string: function!("ncclGetErrorString"),
            get_last_error: function!("ncclGetLastError"),
            lib,
        })
    }

    /// `Err` for a failed call, with NCCL's own description of it.
    fn check(&self, what: &str, status: Status) -> Result<()> {
        if status == 0 {
            return Ok(());
        }
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
                describe((self.get_error_string)(status)),
                describe((self.get_last_error)(std::ptr::null_mut())),
            )
        };
        bail!("{what} failed: error {status} ({kind}) {last}")
    }
}

/// NCCL, loaded once per process; the error says where it was looked for and how to get it.
fn nccl() -> Result<&'static Nccl, String> {
    static NCCL: OnceLock<Result<Nccl, String>> = OnceLock::new();
    NCCL.get_or_init(|| {
        let lib = libs::open(libs::NCCL_NAMES, SearchPath::from_env()).map_err(|e| {
            format!(
                "{e}; install it (`pip install nvidia-nccl-cu13` in the active environment, or \
                 the system package libnccl2), or add its lib folder to LD_LIBRARY_PATH"
            )
        })?;
        Nccl::load(lib)
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Whether NCCL can be loaded; `Err` says where it was looked for and how to get it.
pub fn nccl_available() -> std::result::Result<(), String> {
    nccl().map(|_| ()).map_err(|e| format!("NCCL: {e}"))
}

/// The NCCL library in use, `2.27.3 (/path/to/libnccl.so.2)`, or why there is none.
pub fn nccl_library() -> std::result::Result<String, String> {
    nccl().map(|n| format!("{} ({})", n.version, n.lib.path.display()))
}

/// A new NCCL unique id (128 bytes): rank 0 makes it, every rank passes it to
/// [`NcclCollective::new`].
pub fn nccl_unique_id() -> Result<Vec<u8>> {
    let n = nccl().map_err(|reason| anyhow!("NCCL: {reason}"))?;
    let mut id = MaybeUninit::<ncclUniqueId>::uninit();
    // SAFETY: NCCL fills the id.
    n.check("ncclGetUniqueId", unsafe {
        (n.get_unique_id)(id.as_mut_ptr())
    })?;
    // SAFETY: initialised by the successful call above.
    let id = unsafe { id.assume_init() };
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

/// An NCCL communicator handle, destroyed with the collective.
struct RawComm(ncclComm_t);

// SAFETY: a communicator may be used from any thread, one call at a time (it lives in a `Mutex`).
unsafe impl Send for RawComm {}

impl Drop for RawComm {
    fn drop(&mut self) {
        // SAFETY: a live communicator, not used again. An error here has nobody to report to.
        if let Ok(n) = nccl() {
            let _ = unsafe { (n.comm_destroy)(self.0) };
        }
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
        let n = nccl().map_err(|reason| anyhow!("NCCL: {reason}"))?;
        let mut internal: [c_char; std::mem::size_of::<ncclUniqueId>()] =
            [0; std::mem::size_of::<ncclUniqueId>()];
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
        let status = unsafe {
            (n.comm_init_rank)(
                comm.as_mut_ptr(),
                world.size as i32,
                ncclUniqueId { internal },
                world.rank as i32,
            )
        };
        n.check("ncclCommInitRank", status).with_context(|| {
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
        call: impl FnOnce(&Nccl, ncclComm_t, Stream) -> Status,
    ) -> Result<MutexGuard<'_, State>> {
        let n = nccl().map_err(|reason| anyhow!("NCCL: {reason}"))?;
        let state = self.lock()?;
        self.issued
            .record(rt.stream())
            .and_then(|()| self.comm_stream.wait(&self.issued))
            .context("ordering an NCCL collective after the backend's work")?;
        rt.context().bind_to_thread()?;
        let stream = self.comm_stream.cu_stream() as Stream;
        n.check(what, call(n, state.comm.0, stream))?;
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

const F32: ncclDataType_t = ncclDataType_t::ncclFloat32;

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
        let mut state = self.issue(rt, "ncclAllReduce", |n, comm, stream| {
            // SAFETY: `buf.len()` floats at `ptr`, kept alive below until the backend waits.
            unsafe { (n.all_reduce)(ptr, ptr, buf.len(), F32, ncclRedOp_t::ncclSum, comm, stream) }
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
        let mut state = self.issue(rt, "ncclAllGather", |n, comm, stream| {
            // SAFETY: `len` floats at `src`, `size * len` at `dst` (both alive until the join).
            unsafe { (n.all_gather)(src, dst, len, F32, comm, stream) }
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
        let mut state = self.issue(rt, "ncclBroadcast", |n, comm, stream| {
            // SAFETY: `buf.len()` floats at `ptr`, alive until the join.
            unsafe { (n.broadcast)(ptr, ptr, buf.len(), F32, root as i32, comm, stream) }
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
