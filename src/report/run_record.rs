//! Who trained a run, with what and where: one [`Session`] per start or resume, appended to the run
//! directory's `run.json` when the session starts (so a killed run keeps it) and copied into
//! `report.json`.

use super::write_atomic;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The file of a run directory holding its sessions.
pub const RUN_FILE: &str = "run.json";

/// One start or resume of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// UTC, e.g. `2026-12-07T20:17:11Z`.
    pub started: String,
    /// The ltrain version (Cargo.toml).
    pub ltrain: String,
    /// The commit of the checkout the binary was built in, when it runs from one (`target/...`
    /// inside a git checkout; read at run time from `.git`).
    pub commit: Option<String>,
    /// The command line, one argument per entry.
    pub command: Vec<String>,
    pub host: String,
    pub cpu: String,
    /// The device in words, e.g. "cpu (2 threads)" or "cuda: NVIDIA H100 ...".
    pub device: String,
}

impl Session {
    /// This process, starting now on `device`.
    pub fn now(device: &str) -> Self {
        Self {
            started: utc_timestamp(),
            ltrain: env!("CARGO_PKG_VERSION").to_string(),
            commit: std::env::current_exe()
                .ok()
                .and_then(|exe| checkout_commit(&exe)),
            command: std::env::args().collect(),
            host: first_line("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown".into()),
            cpu: cpu_name().unwrap_or_else(|| std::env::consts::ARCH.to_string()),
            device: device.to_string(),
        }
    }
}

/// The sessions recorded in `dir` (none for a run directory written before they were).
pub fn sessions(dir: &Path) -> Result<Vec<Session>> {
    let path = dir.join(RUN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{}: not a list of ltrain sessions", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Appends `session` to `dir`'s sessions (atomically).
pub fn record(dir: &Path, session: Session) -> Result<()> {
    let mut all = sessions(dir)?;
    all.push(session);
    let json = serde_json::to_string_pretty(&all)?;
    write_atomic(&dir.join(RUN_FILE), json.as_bytes())
}

/// `YYYY-MM-DDTHH:MM:SSZ` now.
pub fn utc_timestamp() -> String {
    let (y, mo, d, h, mi, s) = utc_now();
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// The UTC date and time now: (year, month, day, hour, minute, second).
pub fn utc_now() -> (i64, u32, u32, u64, u64, u64) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    (y, m, d, rem / 3600, rem / 60 % 60, rem % 60)
}

/// Days since 1970-01-01 to a (year, month, day) date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn first_line(path: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_string())
}

fn cpu_name() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

/// The commit checked out in the git checkout that holds `file` (its `.git` directory found by
/// walking up), from `.git/HEAD` and the ref it names (loose or packed); None outside a checkout.
pub fn checkout_commit(file: &Path) -> Option<String> {
    let git: PathBuf = file
        .ancestors()
        .map(|d| d.join(".git"))
        .find(|g| g.is_dir())?;
    let head = std::fs::read_to_string(git.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(name) = head.strip_prefix("ref: ") else {
        return is_hash(head).then(|| head.to_string());
    };
    if let Some(hash) = first_line(&git.join(name).display().to_string()) {
        return is_hash(&hash).then_some(hash);
    }
    let packed = std::fs::read_to_string(git.join("packed-refs")).ok()?;
    packed
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(_, r)| *r == name)
        .map(|(hash, _)| hash.to_string())
        .filter(|h| is_hash(h))
}

fn is_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_785), (2026, 11, 28));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn the_commit_of_a_checkout_from_a_loose_or_packed_ref_or_a_detached_head() {
        let root = tempfile::tempdir().unwrap();
        let git = root.path().join(".git");
        let exe = root.path().join("target/release/ltrain");
        std::fs::create_dir_all(git.join("refs/heads")).unwrap();
        std::fs::create_dir_all(exe.parent().unwrap()).unwrap();
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        std::fs::write(git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(
            git.join("packed-refs"),
            format!("# pack-refs\n{a} refs/heads/main\n"),
        )
        .unwrap();
        assert_eq!(checkout_commit(&exe), Some(a.clone()));
        std::fs::write(git.join("refs/heads/main"), format!("{b}\n")).unwrap();
        assert_eq!(checkout_commit(&exe), Some(b));
        std::fs::write(git.join("HEAD"), format!("{a}\n")).unwrap();
        assert_eq!(checkout_commit(&exe), Some(a));
        assert_eq!(checkout_commit(Path::new("/")), None);
    }
}
