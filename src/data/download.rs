//! Downloading the official CIFAR *binary* archives, as torchvision's `download=True`: the URLs,
//! published md5 sums and byte sizes live here, in one place.
//!
//! A download streams into `DEST.part-<pid>` next to `DEST`, checking the byte count and the md5 as
//! it goes; the file is fsynced and renamed into place only when both match, so `DEST` is either
//! absent or verified. On any failure (offline, HTTP error, truncated or corrupted body) the partial
//! file is deleted and the error names the URL, what was expected and what came, and the fix. An
//! archive already at `DEST` that passes the check is used as is (no request is made).
//!
//! The server can be replaced for mirrors and tests by the environment variable
//! [`BASE_URL_ENV`] (`LTRAIN_DOWNLOAD_BASE`, e.g. `http://127.0.0.1:8000/cifar`): the archive is then
//! fetched from `$LTRAIN_DOWNLOAD_BASE/<archive name>`, still checked against the official md5.
//! [`fetch`] takes any [`Source`], so callers can pass their own checksum.
//!
//! ```no_run
//! use ltrain::data::{cifar::CifarVariant, download};
//! # fn main() -> anyhow::Result<()> {
//! let dir = download::cache_dir()?; // $XDG_CACHE_HOME/ltrain or ~/.cache/ltrain
//! let archive = download::ensure_cifar(CifarVariant::Cifar10, &dir, &download::Options::default())?;
//! let data = ltrain::data::cifar::load_archive(CifarVariant::Cifar10, &archive)?;
//! # let _ = data; Ok(()) }
//! ```

use std::fs::{self, File};
use std::io::{BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use md5::{Digest, Md5};

use super::cifar::CifarVariant;

/// Where the official archives are served (the CIFAR page, cs.toronto.edu/~kriz/cifar.html).
pub const DEFAULT_BASE_URL: &str = "https://www.cs.toronto.edu/~kriz";

/// Environment variable replacing [`DEFAULT_BASE_URL`] (for mirrors and tests).
pub const BASE_URL_ENV: &str = "LTRAIN_DOWNLOAD_BASE";

/// Environment variable replacing the official md5 of [`Source::cifar`] (the size is then not
/// checked against the official one): for tests and mirrors serving a repacked archive.
pub const MD5_ENV: &str = "LTRAIN_DOWNLOAD_MD5";

/// One official archive: its file name under the base URL, published md5 and size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfficialArchive {
    pub file_name: &'static str,
    pub md5: &'static str,
    pub size: u64,
}

/// `cifar-10-binary.tar.gz` ("CIFAR-10 binary version (suitable for C programs)", 162 MB).
pub const CIFAR10_BINARY: OfficialArchive = OfficialArchive {
    file_name: "cifar-10-binary.tar.gz",
    md5: "c32a1d4ab5d03f1284b67883e8d87530",
    size: 170_052_171,
};

/// `cifar-100-binary.tar.gz` ("CIFAR-100 binary version (suitable for C programs)", 161 MB).
pub const CIFAR100_BINARY: OfficialArchive = OfficialArchive {
    file_name: "cifar-100-binary.tar.gz",
    md5: "03b5dce01913d631647c71ecec9e9cb8",
    size: 168_513_733,
};

/// The official binary archive of a CIFAR variant.
pub fn official_archive(variant: CifarVariant) -> OfficialArchive {
    match variant {
        CifarVariant::Cifar10 => CIFAR10_BINARY,
        CifarVariant::Cifar100 => CIFAR100_BINARY,
    }
}

/// What to fetch and how to check it: `md5` as 32 hex digits; `size` in bytes, if known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub url: String,
    pub md5: String,
    pub size: Option<u64>,
}

impl Source {
    /// The official archive of `variant`, under `$LTRAIN_DOWNLOAD_BASE` if set, else the official
    /// server; checked against `$LTRAIN_DOWNLOAD_MD5` (and no size) if set, else the official md5
    /// and size.
    pub fn cifar(variant: CifarVariant) -> Source {
        let env = |key: &str| {
            std::env::var(key)
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let base = env(BASE_URL_ENV).unwrap_or_else(|| DEFAULT_BASE_URL.to_string());
        let mut source = Source::cifar_from(variant, &base);
        if let Some(md5) = env(MD5_ENV) {
            source.md5 = md5;
            source.size = None;
        }
        source
    }

    /// The official archive of `variant` (official md5 and size) under the base URL `base`.
    pub fn cifar_from(variant: CifarVariant, base: &str) -> Source {
        let official = official_archive(variant);
        Source {
            url: format!(
                "{}/{}",
                base.trim().trim_end_matches('/'),
                official.file_name
            ),
            md5: official.md5.to_string(),
            size: Some(official.size),
        }
    }

    /// How to get the file without ltrain, for error messages.
    fn by_hand(&self) -> String {
        let size = self.size.map_or(String::new(), |s| format!(", {s} bytes"));
        format!(
            "download it by hand from {} (md5 {}{size}) and pass --data-dir FILE, or set {BASE_URL_ENV} \
             to a mirror",
            self.url, self.md5
        )
    }
}

/// The download cache: `$XDG_CACHE_HOME/ltrain`, else `~/.cache/ltrain`.
pub fn cache_dir() -> Result<PathBuf> {
    let non_empty = |key: &str| std::env::var_os(key).filter(|v| !v.is_empty());
    if let Some(xdg) = non_empty("XDG_CACHE_HOME").map(PathBuf::from) {
        // The XDG spec ignores relative paths.
        if xdg.is_absolute() {
            return Ok(xdg.join("ltrain"));
        }
    }
    match non_empty("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("ltrain")),
        None => bail!(
            "no cache directory for downloads: neither XDG_CACHE_HOME nor HOME is set (set one, or \
             choose the directory with --data-dir DIR / --to DIR)"
        ),
    }
}

/// How a download reports itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// No progress bar or messages on stderr.
    pub quiet: bool,
}

/// What [`fetch`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The file was already there and verified; nothing was downloaded.
    Present,
    /// The file was downloaded (this many bytes) and verified.
    Downloaded { bytes: u64 },
}

/// Why a file does not match its [`Source`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    Size { expected: u64, got: u64 },
    Md5 { expected: String, got: String },
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::Size { expected, got } => {
                write!(f, "{got} bytes, expected {expected} bytes")
            }
            Mismatch::Md5 { expected, got } => write!(f, "md5 {got}, expected md5 {expected}"),
        }
    }
}

fn expected_md5(source: &Source) -> Result<String> {
    let md5 = source.md5.trim().to_ascii_lowercase();
    if md5.len() != 32 || !md5.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "bad md5 {:?} for {}: expected 32 hex digits",
            source.md5,
            source.url
        );
    }
    Ok(md5)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks the file at `path` against `source` (size first, then md5): `Ok(None)` when it matches.
pub fn verify(path: &Path, source: &Source) -> Result<Option<Mismatch>> {
    let expected = expected_md5(source)?;
    let len = fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if let Some(size) = source.size {
        if len != size {
            return Ok(Some(Mismatch::Size {
                expected: size,
                got: len,
            }));
        }
    }
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let got = hex(&hasher.finalize());
    Ok((got != expected).then_some(Mismatch::Md5 { expected, got }))
}

/// Makes `dest` hold the file of `source`: nothing to do if it is there and verified, otherwise
/// download it (replacing a file that fails the check), as described in the module documentation.
pub fn fetch(source: &Source, dest: &Path, opts: &Options) -> Result<Outcome> {
    let expected = expected_md5(source)?;
    if dest.is_file() {
        match verify(dest, source)? {
            None => return Ok(Outcome::Present),
            Some(why) => {
                if !opts.quiet {
                    eprintln!(
                        "ltrain: {} does not match {} ({why}); downloading it again",
                        dest.display(),
                        source.url
                    );
                }
            }
        }
    } else if dest.exists() {
        bail!(
            "{} exists and is not a file; cannot download {} there",
            dest.display(),
            source.url
        );
    }
    let Some(name) = dest.file_name() else {
        bail!("{}: not a file path to download to", dest.display());
    };
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the download directory {}", dir.display()))?;
    let part = dir.join(format!(
        "{}.part-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let guard = PartGuard(Some(part.clone()));
    // Checked before the network: a folder that cannot take the file fails at once.
    File::create(&part).with_context(|| {
        format!(
            "cannot write into the download directory {} (choose another with --to / --data-dir)",
            dir.display()
        )
    })?;
    let bytes = download_to(source, &expected, &part, dest, opts)?;
    fs::rename(&part, dest)
        .with_context(|| format!("cannot move {} to {}", part.display(), dest.display()))?;
    guard.disarm();
    // Make the rename itself durable (best effort: not every file system lets a directory be
    // opened and synced).
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(Outcome::Downloaded { bytes })
}

/// The official archive of `variant` in `dir` (`dir/cifar-10-binary.tar.gz`, ...), downloaded from
/// [`Source::cifar`] unless already there and verified. Returns the archive's path.
pub fn ensure_cifar(variant: CifarVariant, dir: &Path, opts: &Options) -> Result<PathBuf> {
    let official = official_archive(variant);
    let dest = dir.join(official.file_name);
    let source = Source::cifar(variant);
    if !opts.quiet && !source.md5.eq_ignore_ascii_case(official.md5) {
        eprintln!(
            "ltrain: checking {} against {MD5_ENV}={} instead of the official md5 {}",
            official.file_name, source.md5, official.md5
        );
    }
    report(fetch(&source, &dest, opts)?, &source, &dest, opts);
    Ok(dest)
}

/// One stderr line saying what [`fetch`] did (nothing with `quiet`).
pub fn report(outcome: Outcome, source: &Source, dest: &Path, opts: &Options) {
    if opts.quiet {
        return;
    }
    match outcome {
        Outcome::Present => eprintln!(
            "ltrain: {} already present (md5 {} verified), not downloading",
            dest.display(),
            source.md5
        ),
        Outcome::Downloaded { bytes } => eprintln!(
            "ltrain: downloaded {} ({bytes} bytes, md5 {} verified) to {}",
            source.url,
            source.md5,
            dest.display()
        ),
    }
}

/// Removes the partial file unless disarmed (every early return and panic of a download).
struct PartGuard(Option<PathBuf>);

impl PartGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for PartGuard {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .user_agent(format!("ltrain/{}", env!("CARGO_PKG_VERSION")))
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        // a stalled connection fails instead of hanging
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// Streams `source` into `part`, checking length and md5, fsyncs it; returns the byte count.
fn download_to(
    source: &Source,
    expected_md5: &str,
    part: &Path,
    dest: &Path,
    opts: &Options,
) -> Result<u64> {
    let url = &source.url;
    let fail = |what: String| -> anyhow::Error {
        anyhow::anyhow!(
            "cannot download {url} to {}: {what}; {}",
            dest.display(),
            source.by_hand()
        )
    };
    let response = agent().get(url.as_str()).call().map_err(|e| match e {
        ureq::Error::StatusCode(code) => fail(format!("the server answered HTTP {code}")),
        e => fail(format!("{e} (offline, or the server is unreachable?)")),
    })?;
    let announced = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let (Some(size), Some(len)) = (source.size, announced) {
        if size != len {
            return Err(fail(format!(
                "the server announces {len} bytes, expected {size} bytes (a different file?)"
            )));
        }
    }
    let total = source.size.or(announced);
    let mut body = response.into_body().into_reader();
    let file = File::create(part).with_context(|| format!("cannot create {}", part.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut done = 0u64;
    let mut meter = Meter::new(opts.quiet, total, url, dest);
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                meter.finish();
                let of = total.map_or(String::new(), |t| format!(" of {t}"));
                return Err(fail(format!(
                    "the transfer broke off after {done}{of} bytes: {e}"
                )));
            }
        };
        done += n as u64;
        if let Some(size) = source.size {
            if done > size {
                meter.finish();
                return Err(fail(format!(
                    "the server sent more than the expected {size} bytes (a different file?)"
                )));
            }
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", part.display()))?;
        meter.advance(done);
    }
    meter.finish();
    let file = out
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {}", part.display()))?;
    if let Some(size) = source.size.or(announced) {
        if done != size {
            return Err(fail(format!(
                "got {done} bytes, expected {size} bytes (the download was truncated; try again)"
            )));
        }
    }
    let got = hex(&hasher.finalize());
    if got != expected_md5 {
        return Err(fail(format!(
            "got {done} bytes with md5 {got}, expected md5 {expected_md5} (the download is \
             corrupted, or the server sent another file)"
        )));
    }
    file.sync_all()
        .with_context(|| format!("cannot sync {}", part.display()))?;
    Ok(done)
}

/// Download progress on stderr: a bar on a terminal, otherwise a percentage line at most every
/// five seconds; nothing when quiet.
struct Meter {
    quiet: bool,
    bar: Option<indicatif::ProgressBar>,
    total: Option<u64>,
    last: Instant,
}

impl Meter {
    fn new(quiet: bool, total: Option<u64>, url: &str, dest: &Path) -> Self {
        let mut bar = None;
        if !quiet {
            let size = total.map_or(String::new(), |t| format!(", {:.1} MB", t as f64 / 1e6));
            eprintln!("ltrain: downloading {url} -> {}{size}", dest.display());
            if std::io::stderr().is_terminal() {
                let b = match total {
                    Some(t) => indicatif::ProgressBar::new(t),
                    None => indicatif::ProgressBar::no_length(),
                };
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "[{bar:30.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .expect("static template")
                    .progress_chars("=> "),
                );
                bar = Some(b);
            }
        }
        Self {
            quiet,
            bar,
            total,
            last: Instant::now(),
        }
    }

    fn advance(&mut self, done: u64) {
        if self.quiet {
            return;
        }
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        } else if self.last.elapsed() >= Duration::from_secs(5) {
            self.last = Instant::now();
            match self.total {
                Some(t) if t > 0 => eprintln!(
                    "ltrain: {:.0}% ({:.1} of {:.1} MB)",
                    100.0 * done as f64 / t as f64,
                    done as f64 / 1e6,
                    t as f64 / 1e6
                ),
                _ => eprintln!("ltrain: {:.1} MB", done as f64 / 1e6),
            }
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
