//! TensorBoard event files written without TensorFlow or protobuf tooling: scalars only.
//!
//! An event file (`events.out.tfevents.<seconds>.<host>.<pid>.<n>`) is a TFRecord file: records of
//! `[u64 length, little-endian][u32 masked CRC-32C of the length][data][u32 masked CRC-32C of the
//! data]`, each `data` one `tensorflow.Event` protobuf. The first event holds `file_version =
//! "brain.Event:2"`; every other one a wall time, a step and a `Summary` of `simple_value` scalars.
//! The few protobuf fields are encoded here by hand:
//!
//! ```text
//! Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//! Summary { repeated Value value = 1; }
//! Value   { string tag = 1; float simple_value = 2; }
//! ```
//!
//! TensorBoard reads every event file of a directory and merges them, so each writer (a run, a
//! resumed run) makes its own file.

use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The `file_version` of the first event of every file.
pub const FILE_VERSION: &str = "brain.Event:2";

/// Scalars appended to a new event file in a directory; the file is created at the first write
/// (a run that never trains leaves none). Writes are buffered until [`EventWriter::flush`] (or the
/// writer is dropped).
pub struct EventWriter {
    dir: PathBuf,
    file: Option<(BufWriter<File>, PathBuf)>,
}

impl EventWriter {
    /// A writer of a new event file in `dir` (created with its parents at the first write).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            file: None,
        }
    }

    /// The file written, once something was.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_ref().map(|(_, p)| p.as_path())
    }

    /// One event at `step` holding the `(tag, value)` scalars, stamped with the current time.
    pub fn scalars(&mut self, step: i64, values: &[(&str, f32)]) -> Result<()> {
        if self.file.is_none() {
            // Before the event's time stamp: the file's first event is not later than it.
            self.file = Some(self.create()?);
        }
        let event = scalar_event(wall_time(), step, values);
        let (w, path) = self.file.as_mut().expect("opened above");
        w.write_all(&record(&event))
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Hands what is buffered to the file.
    pub fn flush(&mut self) -> Result<()> {
        if let Some((w, path)) = &mut self.file {
            w.flush()
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }

    /// A file of a name no other writer has, with its `file_version` event.
    fn create(&self) -> Result<(BufWriter<File>, PathBuf)> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        let now = wall_time();
        let (host, pid) = (hostname(), std::process::id());
        for n in 0.. {
            let path = self.dir.join(format!(
                "events.out.tfevents.{}.{host}.{pid}.{n}",
                now as u64
            ));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => {
                    let mut w = BufWriter::with_capacity(64 << 10, f);
                    w.write_all(&record(&version_event(now)))
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    return Ok((w, path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create {}", path.display()))
                }
            }
        }
        unreachable!("some file name is free")
    }
}

/// Seconds since the Unix epoch.
fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The host's name as the kernel has it (a file name part: only `[A-Za-z0-9._-]` kept).
fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect();
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}

/// One TFRecord record of `data`.
pub fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// The first event of a file: its wall time and `file_version`.
pub fn version_event(wall_time: f64) -> Vec<u8> {
    let mut e = Vec::new();
    put_double(&mut e, 1, wall_time);
    put_bytes(&mut e, 3, FILE_VERSION.as_bytes());
    e
}

/// An event of `(tag, value)` scalars at `step`.
pub fn scalar_event(wall_time: f64, step: i64, values: &[(&str, f32)]) -> Vec<u8> {
    let mut summary = Vec::new();
    for (tag, v) in values {
        let mut value = Vec::new();
        put_bytes(&mut value, 1, tag.as_bytes());
        put_key(&mut value, 2, WIRE_FIXED32);
        value.extend_from_slice(&v.to_le_bytes());
        put_bytes(&mut summary, 1, &value);
    }
    let mut e = Vec::new();
    put_double(&mut e, 1, wall_time);
    put_key(&mut e, 2, WIRE_VARINT);
    // int64: two's complement as a 64-bit varint.
    put_varint(&mut e, step as u64);
    put_bytes(&mut e, 5, &summary);
    e
}

const WIRE_VARINT: u32 = 0;
const WIRE_FIXED64: u32 = 1;
const WIRE_BYTES: u32 = 2;
const WIRE_FIXED32: u32 = 5;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u32) {
    put_varint(out, u64::from(field << 3 | wire));
}

fn put_double(out: &mut Vec<u8>, field: u32, v: f64) {
    put_key(out, field, WIRE_FIXED64);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, WIRE_BYTES);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !data.iter().fold(!0u32, |crc, &b| {
        TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

/// TensorFlow's masked CRC-32C of a record's length and data.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}
