//! How the ranks of a multi-process job find each other before NCCL exists: rank 0's unique id
//! handed to every rank ([`share_id`]), and torchrun's launch environment ([`LaunchEnv`]).
//!
//! NCCL's `ncclCommInitRank` needs the same opaque id (128 bytes, made by rank 0) on every rank and
//! leaves distributing it to the caller. Two ways are offered: TCP, where rank 0 listens on
//! MASTER_PORT as torchrun's own store does, and a file on a filesystem every rank shares, for
//! launchers that set no MASTER_ADDR (Slurm's `srun`). The id is only bytes here.

use super::World;
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// The longest id [`share_id`] carries; NCCL's is 128 bytes, the bound keeps a corrupt length
/// prefix from allocating without limit.
pub const MAX_ID_LEN: usize = 4096;

/// The port torchrun uses when MASTER_PORT is not given.
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// How much older than a rank's call to [`share_id`] an id file may be and still be read: ranks
/// start at slightly different times and shared filesystems' clocks differ a little; a file older
/// than this is taken to be left over from an earlier job and waited past.
pub const STALE_SLACK: Duration = Duration::from_secs(300);

/// What [`Rendezvous::parse`] accepts, for its errors.
const ACCEPTED: &str = "accepted: tcp://HOST:PORT, HOST:PORT or file:PATH";

/// The start of a peer's hello; a connection that sends anything else is not one of our ranks.
const HELLO_MAGIC: &[u8; 8] = b"LTRNRV01";
/// The start of an id file.
const FILE_MAGIC: &[u8; 8] = b"LTRNID01";
/// Rank 0's reply: the id follows.
const REPLY_ID: u8 = 0;
/// Rank 0's reply: the rendezvous failed, a message follows.
const REPLY_REFUSED: u8 = 1;
/// A peer's receipt for the id, so rank 0 returns only once every peer has it.
const ACK: u8 = 0x06;
/// A peer's wait between attempts to reach rank 0 (refused connections are normal while it
/// starts) and between looks for the id file.
const RETRY: Duration = Duration::from_millis(150);
/// Rank 0's wait between looks for a new connection.
const ACCEPT_POLL: Duration = Duration::from_millis(10);
/// How long rank 0 waits for the receipts once everyone has joined (they come at once).
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// The most one connection attempt may take, so a peer retries while its timeout lasts.
const CONNECT_ATTEMPT: Duration = Duration::from_secs(2);
/// The longest refusal message rank 0 sends.
const MAX_MESSAGE_LEN: usize = 4096;

/// Where the ranks meet.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Rendezvous {
    /// Rank 0 listens on `port` (all interfaces); the others connect to `host:port`.
    Tcp { host: String, port: u16 },
    /// Rank 0 writes the id to this path; the others read it. See [`share_id`] for why the path
    /// must be fresh per job.
    File(PathBuf),
}

impl Rendezvous {
    /// Reads `tcp://HOST:PORT`, `HOST:PORT` or `file:PATH` (IPv6 addresses in brackets:
    /// `tcp://[::1]:29500`).
    pub fn parse(spec: &str) -> Result<Self> {
        let s = spec.trim();
        if let Some(path) = s.strip_prefix("file:") {
            ensure!(
                !path.is_empty(),
                "rendezvous {spec:?}: no path after file: ({ACCEPTED})"
            );
            return Ok(Rendezvous::File(PathBuf::from(path)));
        }
        let host_port = match s.strip_prefix("tcp://") {
            Some(rest) => rest,
            None => {
                if let Some((scheme, _)) = s.split_once("://") {
                    bail!("rendezvous {spec:?}: unknown scheme {scheme}:// ({ACCEPTED})");
                }
                s
            }
        };
        let (host, port) = split_host_port(host_port)
            .map_err(|why| anyhow!("rendezvous {spec:?}: {why} ({ACCEPTED})"))?;
        Ok(Rendezvous::Tcp { host, port })
    }
}

impl fmt::Display for Rendezvous {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rendezvous::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp://[{host}]:{port}")
            }
            Rendezvous::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
            Rendezvous::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// `HOST:PORT` or `[IPV6]:PORT` into its parts, or why not.
fn split_host_port(s: &str) -> std::result::Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "no ] after the bracketed address".to_string())?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| "no :PORT after the bracketed address".to_string())?;
        (host, port)
    } else {
        let (host, port) = s.rsplit_once(':').ok_or_else(|| "no :PORT".to_string())?;
        if host.contains(':') {
            return Err("an IPv6 address needs brackets, e.g. [::1]:29500".into());
        }
        (host, port)
    };
    check_host(host)?;
    Ok((host.to_string(), parse_port(port)?))
}

/// A host name or address, or why not.
fn check_host(host: &str) -> std::result::Result<(), String> {
    if host.is_empty() {
        return Err("no host".into());
    }
    if host.contains(':') && host.parse::<Ipv6Addr>().is_err() {
        return Err(format!("{host:?} is not a host name or address"));
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c == '/' || c == '[' || c == ']')
    {
        return Err(format!("{host:?} is not a host name or address"));
    }
    Ok(())
}

/// A fixed, nonzero port (the peers must know it in advance, so 0, "any", cannot work).
fn parse_port(port: &str) -> std::result::Result<u16, String> {
    match port.parse::<u16>() {
        Ok(0) => Err("port 0 cannot be used: the other ranks must know the port".into()),
        Ok(p) => Ok(p),
        Err(_) if port.is_empty() => Err("no port after the :".into()),
        Err(_) => Err(format!("port {port:?} is not a number from 1 to 65535")),
    }
}

/// `30 s`, `0.5 s`: timeouts in messages.
fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// Hands rank 0's id to every rank: rank 0 passes `Some(id)` (at most [`MAX_ID_LEN`] bytes) and
/// gets it back, the others pass `None` and receive it. Every rank passes the same `rv` and world
/// size. Waits at most about `timeout` (plus, on rank 0, up to 10 s for the receipts once
/// everyone has joined); a world of one returns at once.
///
/// TCP: rank 0 listens on the port on every interface and returns once each of the other
/// `size - 1` ranks has joined (said which rank it is and the world size it expects), been given
/// the id and confirmed it. It rejects disagreeing world sizes and duplicate or out-of-range
/// ranks, and tells the connected peers why, so they fail too instead of waiting. The others
/// retry connecting until `timeout` (rank 0 may start later).
///
/// File: rank 0 deletes any existing file at the path, then writes the world size and the id to
/// `PATH.tmp-<pid>`, syncs it and renames it into place, so a reader sees all of it or nothing; it
/// returns without waiting for the readers and leaves the file behind. The others poll for the
/// file until `timeout`. **The path must be fresh for every job** (e.g. include `$SLURM_JOB_ID`):
/// a file left by an earlier job could be read before rank 0 replaces it. As a guard, readers skip
/// files last written more than [`STALE_SLACK`] before they called this, and a world-size mismatch
/// is an error; neither catches a recent leftover of a job of the same size.
pub fn share_id(
    rv: &Rendezvous,
    world: World,
    id: Option<&[u8]>,
    timeout: Duration,
) -> Result<Vec<u8>> {
    ensure!(
        world.size >= 1 && world.rank < world.size,
        "rendezvous {rv}: rank {} is not in a world of size {} (ranks are 0..{})",
        world.rank,
        world.size,
        world.size.saturating_sub(1)
    );
    match (world.rank, id) {
        (0, Some(id)) => {
            ensure!(
                id.len() <= MAX_ID_LEN,
                "rendezvous {rv}: the id is {} bytes, at most {MAX_ID_LEN} are supported",
                id.len()
            );
            if world.size > 1 {
                match rv {
                    Rendezvous::Tcp { host, port } => {
                        tcp_master(rv, host, *port, world.size, id, timeout)?
                    }
                    Rendezvous::File(path) => file_master(rv, path, world.size, id)?,
                }
            }
            Ok(id.to_vec())
        }
        (0, None) => bail!("rendezvous {rv}: rank 0 must pass the id it created, it passed none"),
        (rank, Some(_)) => bail!(
            "rendezvous {rv}: rank {rank} was given an id; only rank 0 has one, the others pass None"
        ),
        (_, None) => match rv {
            Rendezvous::Tcp { host, port } => tcp_peer(rv, host, *port, world, timeout),
            Rendezvous::File(path) => file_peer(rv, path, world, timeout),
        },
    }
}

/// A peer that has said hello: its connection and address.
type Joined = BTreeMap<usize, (TcpStream, SocketAddr)>;

fn tcp_master(
    rv: &Rendezvous,
    host: &str,
    port: u16,
    size: usize,
    id: &[u8],
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let any: IpAddr = if host.parse::<Ipv6Addr>().is_ok() {
        Ipv6Addr::UNSPECIFIED.into()
    } else {
        Ipv4Addr::UNSPECIFIED.into()
    };
    let bind = SocketAddr::new(any, port);
    let listener = TcpListener::bind(bind).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            anyhow!(
                "rendezvous {rv}: rank 0 cannot listen on port {port}, it is already in use \
                 (another job or an earlier run holds it); choose another MASTER_PORT"
            )
        } else {
            anyhow!("rendezvous {rv}: rank 0 cannot listen on {bind}: {e}")
        }
    })?;
    listener
        .set_nonblocking(true)
        .with_context(|| format!("rendezvous {rv}: rank 0 cannot poll its listener"))?;

    let peers = size - 1;
    let mut joined = Joined::new();
    while joined.len() < peers {
        let now = Instant::now();
        if now >= deadline {
            let missing: Vec<usize> = (1..size).filter(|r| !joined.contains_key(r)).collect();
            let why = format!(
                "only {} of {peers} peers joined within {} (world size {size}; \
                 missing ranks {}); are they all started, with the same MASTER_ADDR/MASTER_PORT?",
                joined.len(),
                secs(timeout),
                list(&missing)
            );
            return Err(refuse_all(rv, &mut joined, None, why));
        }
        let (mut stream, addr) = match listener.accept() {
            Ok(conn) => conn,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(ACCEPT_POLL.min(deadline - now));
                continue;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) =>
            {
                continue
            }
            Err(e) => {
                let why = format!("rank 0 could not accept a connection: {e}");
                return Err(refuse_all(rv, &mut joined, None, why));
            }
        };
        match check_hello(&mut stream, addr, port, size, &joined, deadline) {
            Ok(rank) => {
                joined.insert(rank, (stream, addr));
            }
            Err(why) => return Err(refuse_all(rv, &mut joined, Some(&mut stream), why)),
        }
    }

    let mut reply = Vec::with_capacity(5 + id.len());
    reply.push(REPLY_ID);
    reply.extend_from_slice(&(id.len() as u32).to_le_bytes());
    reply.extend_from_slice(id);
    for (rank, (stream, addr)) in joined.iter_mut() {
        stream
            .set_write_timeout(Some(ACK_TIMEOUT))
            .and_then(|()| stream.write_all(&reply))
            .map_err(|e| {
                anyhow!("rendezvous {rv}: could not send the id to rank {rank} ({addr}): {e}")
            })?;
    }
    let ack_deadline = Instant::now() + ACK_TIMEOUT;
    for (rank, (stream, addr)) in joined.iter_mut() {
        let mut ack = [0u8; 1];
        match read_exact_by(stream, &mut ack, ack_deadline) {
            Ok(()) if ack[0] == ACK => {}
            Ok(()) => bail!("rendezvous {rv}: rank {rank} ({addr}) sent a bad receipt for the id"),
            Err(e) => bail!(
                "rendezvous {rv}: rank {rank} ({addr}) did not confirm it received the id: {}",
                describe(&e, ACK_TIMEOUT)
            ),
        }
    }
    Ok(())
}

/// Reads a new connection's hello and checks it against the world so far: the peer's rank, or
/// why it cannot join.
fn check_hello(
    stream: &mut TcpStream,
    addr: SocketAddr,
    port: u16,
    size: usize,
    joined: &Joined,
    deadline: Instant,
) -> std::result::Result<usize, String> {
    let mut hello = [0u8; 24];
    stream
        .set_nonblocking(false)
        .map_err(|e| format!("rank 0 cannot use the connection from {addr}: {e}"))?;
    // A peer sends its hello as soon as it connects; leave it a moment even at the deadline.
    let hello_deadline = deadline.max(Instant::now() + Duration::from_secs(1));
    read_exact_by(stream, &mut hello, hello_deadline).map_err(|e| {
        format!(
            "the connection from {addr} did not say which rank it is ({}); is another program \
             using port {port}?",
            describe(&e, Duration::from_secs(1))
        )
    })?;
    if &hello[..8] != HELLO_MAGIC {
        return Err(format!(
            "the connection from {addr} is not an ltrain rank (unknown hello); is another program \
             using port {port}?"
        ));
    }
    let rank = u64::from_le_bytes(hello[8..16].try_into().expect("8 bytes"));
    let their_size = u64::from_le_bytes(hello[16..24].try_into().expect("8 bytes"));
    if their_size != size as u64 {
        return Err(format!(
            "rank {rank} ({addr}) says world size {their_size}, rank 0 has {size}; every rank \
             must be started with the same WORLD_SIZE"
        ));
    }
    let rank = match usize::try_from(rank) {
        Ok(r) if r >= 1 && r < size => r,
        _ if rank == 0 => {
            return Err(format!(
                "the process at {addr} also says it is rank 0; only one process can be rank 0"
            ))
        }
        _ => {
            return Err(format!(
                "the process at {addr} says it is rank {rank}, but world size {size} has ranks \
                 0..{}",
                size - 1
            ))
        }
    };
    if let Some((_, first)) = joined.get(&rank) {
        return Err(format!(
            "rank {rank} joined twice (from {first} and from {addr}); every process needs its \
             own RANK"
        ));
    }
    Ok(rank)
}

/// Tells every connected peer (and `extra`) that the rendezvous failed, so they fail now rather
/// than at their timeout; best effort. Returns the error for rank 0.
fn refuse_all(
    rv: &Rendezvous,
    joined: &mut Joined,
    extra: Option<&mut TcpStream>,
    why: String,
) -> anyhow::Error {
    let mut message = why.clone().into_bytes();
    message.truncate(MAX_MESSAGE_LEN);
    let mut reply = Vec::with_capacity(5 + message.len());
    reply.push(REPLY_REFUSED);
    reply.extend_from_slice(&(message.len() as u32).to_le_bytes());
    reply.extend_from_slice(&message);
    let streams = joined.values_mut().map(|(s, _)| s).chain(extra);
    for stream in streams {
        let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = stream.write_all(&reply);
        let _ = stream.shutdown(Shutdown::Write);
    }
    anyhow!("rendezvous {rv}: {why}")
}

/// `1, 2, 5` (the first eight, then how many more).
fn list(ranks: &[usize]) -> String {
    let mut s: Vec<String> = ranks.iter().take(8).map(|r| r.to_string()).collect();
    if ranks.len() > 8 {
        s.push(format!("and {} more", ranks.len() - 8));
    }
    s.join(", ")
}

/// `read_exact` that gives up at `deadline` (each read waits at most the time left).
fn read_exact_by(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A socket error in words: timeouts and closed connections said plainly.
fn describe(e: &io::Error, waited: Duration) -> String {
    if is_timeout(e) {
        format!("nothing came within {}", secs(waited))
    } else if e.kind() == io::ErrorKind::UnexpectedEof {
        "the connection closed".into()
    } else {
        e.to_string()
    }
}

/// One attempt at every address `host` resolves to, each bounded by the time left.
fn connect_once(host: &str, port: u16, deadline: Instant) -> io::Result<TcpStream> {
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{host} resolves to no address"),
    );
    for addr in (host, port).to_socket_addrs()? {
        let left = deadline.saturating_duration_since(Instant::now());
        let limit = left.clamp(Duration::from_millis(10), CONNECT_ATTEMPT);
        match TcpStream::connect_timeout(&addr, limit) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn tcp_peer(
    rv: &Rendezvous,
    host: &str,
    port: u16,
    world: World,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let rank = world.rank;
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        let last = match connect_once(host, port, deadline) {
            Ok(stream) => break stream,
            Err(e) => e,
        };
        let now = Instant::now();
        if now >= deadline {
            bail!(
                "rendezvous {rv}: rank {rank} could not reach the master within {} (last error: \
                 {last}); is rank 0 running and MASTER_ADDR/MASTER_PORT right?",
                secs(timeout)
            );
        }
        std::thread::sleep(RETRY.min(deadline - now));
    };

    let mut hello = Vec::with_capacity(24);
    hello.extend_from_slice(HELLO_MAGIC);
    hello.extend_from_slice(&(rank as u64).to_le_bytes());
    hello.extend_from_slice(&(world.size as u64).to_le_bytes());
    let _ = stream.set_nodelay(true);
    stream
        .set_write_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_secs(1)),
        ))
        .and_then(|()| stream.write_all(&hello))
        .map_err(|e| anyhow!("rendezvous {rv}: rank {rank} could not greet the master: {e}"))?;

    let no_reply = |e: io::Error| {
        if is_timeout(&e) {
            anyhow!(
                "rendezvous {rv}: rank {rank} reached the master but got no id within {}; rank 0 \
                 hands it out once all {} ranks have joined: are they all started?",
                secs(timeout),
                world.size
            )
        } else {
            anyhow!(
                "rendezvous {rv}: rank {rank} lost the connection to the master before it sent \
                 the id ({}); see rank 0's error",
                describe(&e, timeout)
            )
        }
    };
    // Rank 0 replies only once everyone has joined; its own timeout may have started a little
    // after ours, so allow a moment more than ours for its answer (which may be a refusal).
    let reply_deadline = deadline + Duration::from_secs(2);
    let mut head = [0u8; 5];
    read_exact_by(&mut stream, &mut head, reply_deadline).map_err(no_reply)?;
    let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
    let limit = if head[0] == REPLY_REFUSED {
        MAX_MESSAGE_LEN
    } else {
        MAX_ID_LEN
    };
    ensure!(
        (head[0] == REPLY_ID || head[0] == REPLY_REFUSED) && len <= limit,
        "rendezvous {rv}: rank {rank} got a malformed reply from the master (is {host}:{port} an \
         ltrain rank 0?)"
    );
    let mut body = vec![0u8; len];
    read_exact_by(&mut stream, &mut body, reply_deadline + ACK_TIMEOUT).map_err(no_reply)?;
    if head[0] == REPLY_REFUSED {
        bail!(
            "rendezvous {rv}: the master (rank 0) gave up, so rank {rank} does too: {}",
            String::from_utf8_lossy(&body)
        );
    }
    stream
        .set_write_timeout(Some(ACK_TIMEOUT))
        .and_then(|()| stream.write_all(&[ACK]))
        .map_err(|e| {
            anyhow!("rendezvous {rv}: rank {rank} could not confirm the id to the master: {e}")
        })?;
    Ok(body)
}

fn file_master(rv: &Rendezvous, path: &Path, size: usize, id: &[u8]) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => bail!("rendezvous {rv}: rank 0 cannot remove the old id file: {e}"),
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut bytes = Vec::with_capacity(24 + id.len());
    bytes.extend_from_slice(FILE_MAGIC);
    bytes.extend_from_slice(&(size as u64).to_le_bytes());
    bytes.extend_from_slice(&(id.len() as u64).to_le_bytes());
    bytes.extend_from_slice(id);
    let written = fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        bail!(
            "rendezvous {rv}: rank 0 cannot write the id file (via {}): {e}",
            tmp.display()
        );
    }
    // Make the rename itself durable where the platform allows syncing a directory.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// What a look at the id file found.
enum Look {
    Found {
        size: u64,
        id: Vec<u8>,
    },
    /// Not (yet) usable, and why: keep polling.
    Wait(String),
}

fn look(path: &Path, not_before: SystemTime, started: SystemTime) -> Result<Look> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Look::Wait("the file never appeared".into()))
        }
        Err(e) => return Ok(Look::Wait(format!("last error: {e}"))),
    };
    if let Ok(modified) = meta.modified() {
        if modified < not_before {
            let age = started.duration_since(modified).unwrap_or_default();
            return Ok(Look::Wait(format!(
                "the file there was written {} s before this rank started, so it is taken to be \
                 stale, from an earlier job; use a fresh path per job",
                age.as_secs()
            )));
        }
    }
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Look::Wait("the file never appeared".into()))
        }
        Err(e) => return Ok(Look::Wait(format!("last error: {e}"))),
    };
    if bytes.len() < 24 {
        // Written by rename, so this should not be seen; a filesystem may still show it briefly.
        return Ok(Look::Wait("the file there is incomplete".into()));
    }
    ensure!(
        &bytes[..8] == FILE_MAGIC,
        "{} is not an ltrain id file",
        path.display()
    );
    let size = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    ensure!(
        len <= MAX_ID_LEN as u64 && bytes.len() as u64 == 24 + len,
        "{} is corrupt (its id length does not match its size)",
        path.display()
    );
    Ok(Look::Found {
        size,
        id: bytes[24..].to_vec(),
    })
}

fn file_peer(rv: &Rendezvous, path: &Path, world: World, timeout: Duration) -> Result<Vec<u8>> {
    let rank = world.rank;
    let started = SystemTime::now();
    let not_before = started
        .checked_sub(STALE_SLACK)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let deadline = Instant::now() + timeout;
    loop {
        let why = match look(path, not_before, started)
            .with_context(|| format!("rendezvous {rv}: rank {rank}"))?
        {
            Look::Found { size, id } => {
                ensure!(
                    size == world.size as u64,
                    "rendezvous {rv}: the id file was written by a rank 0 with world size {size}, \
                     rank {rank} has {}; every rank must be started with the same WORLD_SIZE (or \
                     is the file left from another job?)",
                    world.size
                );
                return Ok(id);
            }
            Look::Wait(why) => why,
        };
        let now = Instant::now();
        if now >= deadline {
            bail!(
                "rendezvous {rv}: rank {rank} got no id within {} ({why}); is rank 0 running, and \
                 is the path on a filesystem every rank shares?",
                secs(timeout)
            );
        }
        std::thread::sleep(RETRY.min(deadline - now));
    }
}

/// What torchrun (or a launcher imitating it) tells each process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchEnv {
    /// RANK and WORLD_SIZE.
    pub world: World,
    /// LOCAL_RANK: which of this node's GPUs to use; 0 when not set.
    pub local_rank: usize,
    /// MASTER_ADDR:MASTER_PORT, or the rendezvous given explicitly.
    pub rendezvous: Rendezvous,
}

/// Why every variable is needed, for the errors about missing ones.
const TORCHRUN_SETS: &str =
    "torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT for every process";

impl LaunchEnv {
    /// Reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT through `get` (a variable
    /// set to an empty string counts as unset). `Ok(None)` when RANK and WORLD_SIZE are both unset:
    /// not a multi-process launch. LOCAL_RANK defaults to 0 and MASTER_PORT to 29500 (torchrun's
    /// defaults); MASTER_ADDR is required. Partial or malformed settings are errors naming the
    /// variable, its value and what was expected.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        Self::from_env_with(get, None)
    }

    /// [`LaunchEnv::from_env`], but with `rendezvous` given (e.g. `--rendezvous file:PATH`)
    /// MASTER_ADDR and MASTER_PORT are neither needed nor read.
    pub fn from_env_with(
        get: impl Fn(&str) -> Option<String>,
        rendezvous: Option<Rendezvous>,
    ) -> Result<Option<Self>> {
        let var = |name: &str| {
            get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let (rank, size) = match (var("RANK"), var("WORLD_SIZE")) {
            (None, None) => return Ok(None),
            (Some(rank), None) => {
                bail!("RANK={rank} is set but WORLD_SIZE is not ({TORCHRUN_SETS})")
            }
            (None, Some(size)) => {
                bail!("WORLD_SIZE={size} is set but RANK is not ({TORCHRUN_SETS})")
            }
            (Some(rank), Some(size)) => (rank, size),
        };
        let size: usize = size.parse().map_err(|_| {
            anyhow!("WORLD_SIZE={size} is not a number (expected how many processes, at least 1)")
        })?;
        ensure!(size >= 1, "WORLD_SIZE=0: expected at least 1 process");
        let rank: usize = rank.parse().map_err(|_| {
            anyhow!("RANK={rank} is not a number (expected this process's rank, 0 to WORLD_SIZE-1)")
        })?;
        ensure!(
            rank < size,
            "RANK={rank} but WORLD_SIZE={size}: ranks are 0..{}",
            size - 1
        );
        let local_rank = match var("LOCAL_RANK") {
            None => 0,
            Some(v) => {
                let local: usize = v.parse().map_err(|_| {
                    anyhow!("LOCAL_RANK={v} is not a number (expected this process's GPU on its node, from 0)")
                })?;
                ensure!(
                    local < size,
                    "LOCAL_RANK={local} but WORLD_SIZE={size}: a node cannot have more processes \
                     than the job"
                );
                local
            }
        };
        let rendezvous = match rendezvous {
            Some(rv) => rv,
            None => {
                let addr = var("MASTER_ADDR").ok_or_else(|| {
                    anyhow!(
                        "WORLD_SIZE is set but MASTER_ADDR is not (torchrun sets both; or pass \
                         --rendezvous file:PATH)"
                    )
                })?;
                let host = addr
                    .strip_prefix('[')
                    .and_then(|a| a.strip_suffix(']'))
                    .unwrap_or(&addr);
                if host.contains(':') && host.parse::<Ipv6Addr>().is_err() {
                    bail!(
                        "MASTER_ADDR={addr} should be a host name or address only; the port goes \
                         in MASTER_PORT"
                    );
                }
                check_host(host).map_err(|why| anyhow!("MASTER_ADDR={addr}: {why}"))?;
                let port = match var("MASTER_PORT") {
                    None => DEFAULT_MASTER_PORT,
                    Some(p) => p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(|| {
                        anyhow!("MASTER_PORT={p} is not a port number (expected 1 to 65535)")
                    })?,
                };
                Rendezvous::Tcp {
                    host: host.to_string(),
                    port,
                }
            }
        };
        Ok(Some(LaunchEnv {
            world: World { rank, size },
            local_rank,
            rendezvous,
        }))
    }

    /// [`LaunchEnv::from_env`] on this process's environment.
    pub fn from_process_env() -> Result<Option<Self>> {
        Self::from_env(process_var)
    }

    /// [`LaunchEnv::from_env_with`] on this process's environment.
    pub fn from_process_env_with(rendezvous: Option<Rendezvous>) -> Result<Option<Self>> {
        Self::from_env_with(process_var, rendezvous)
    }

    /// The same launch meeting at `rv` instead.
    pub fn with_rendezvous(self, rv: Rendezvous) -> Self {
        LaunchEnv {
            rendezvous: rv,
            ..self
        }
    }
}

/// A variable of this process (not valid Unicode: passed on lossily, so its parse error shows it).
fn process_var(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}
