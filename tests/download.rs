//! Dataset download (`ltrain data download`, `--download`) against a tiny HTTP server on 127.0.0.1
//! started by each test: a good download lands atomically with the right bytes and is not fetched
//! again; corrupted, truncated, short, refused and unreachable downloads are clear errors that
//! leave no file behind; the real binary downloads a small CIFAR-10-like archive through
//! `LTRAIN_DOWNLOAD_BASE` and reads it.

use ltrain::data::cifar::{self, CifarVariant};
use ltrain::data::download::{
    self, fetch, verify, Mismatch, Options, Outcome, Source, BASE_URL_ENV, CIFAR100_BINARY,
    CIFAR10_BINARY, MD5_ENV,
};
use md5::{Digest, Md5};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const QUIET: Options = Options { quiet: true };
const ARCHIVE: &str = "cifar-10-binary.tar.gz";

/// What the server answers for a path.
enum Reply {
    /// 200 with the whole body.
    Full(Vec<u8>),
    /// 200 announcing the whole body's length, then only `sent` bytes and the connection closes.
    Truncated { body: Vec<u8>, sent: usize },
    /// 200 honestly announcing and sending only the first `sent` bytes.
    Short { body: Vec<u8>, sent: usize },
    /// 200: half the body, then waits for the test to say go, then the rest.
    Paused {
        body: Vec<u8>,
        go: Mutex<Receiver<()>>,
    },
    /// An HTTP error status.
    Status(u16),
}

struct Server {
    base: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// Serves `routes` (path -> reply; anything else is a 404), one connection at a time, on a thread
/// that lives as long as the test process.
fn serve(routes: Vec<(&str, Reply)>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let routes: HashMap<String, Reply> = routes
        .into_iter()
        .map(|(p, r)| (p.to_string(), r))
        .collect();
    let hits = Arc::new(Mutex::new(HashMap::new()));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let _ = answer(stream, &routes, &counter);
        }
    });
    Server { base, hits }
}

fn answer(
    mut stream: TcpStream,
    routes: &HashMap<String, Reply>,
    hits: &Mutex<HashMap<String, usize>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
    *hits.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
    let head = |len: usize| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\
             Connection: close\r\n\r\n"
        )
    };
    match routes.get(&path) {
        Some(Reply::Full(body)) => {
            stream.write_all(head(body.len()).as_bytes())?;
            stream.write_all(body)?;
        }
        Some(Reply::Truncated { body, sent }) => {
            stream.write_all(head(body.len()).as_bytes())?;
            stream.write_all(&body[..*sent])?;
        }
        Some(Reply::Short { body, sent }) => {
            stream.write_all(head(*sent).as_bytes())?;
            stream.write_all(&body[..*sent])?;
        }
        Some(Reply::Paused { body, go }) => {
            let half = body.len() / 2;
            stream.write_all(head(body.len()).as_bytes())?;
            stream.write_all(&body[..half])?;
            stream.flush()?;
            let _ = go.lock().unwrap().recv_timeout(Duration::from_secs(20));
            stream.write_all(&body[half..])?;
        }
        Some(Reply::Status(code)) => {
            let text = format!(
                "HTTP/1.1 {code} Oops\r\nContent-Length: 4\r\nConnection: close\r\n\r\noops"
            );
            stream.write_all(text.as_bytes())?;
        }
        None => {
            stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
            )?;
        }
    }
    stream.flush()?;
    let _ = stream.shutdown(Shutdown::Both);
    Ok(())
}

/// A base URL where nothing listens (a port just bound and released).
fn closed_base() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Training records per class (two in each of the five batches) and test records per class.
const TRAIN_PER_CLASS: usize = 10;
const TEST_PER_CLASS: usize = 1;

/// A CIFAR-10-like `cifar-10-binary.tar.gz`: the official member names, 10 classes, 10 training
/// and 1 test image per class.
fn tiny_cifar10_archive() -> Vec<u8> {
    let record = |label: u8, fill: u8| {
        let mut r = vec![label];
        r.extend(std::iter::repeat_n(fill, 3 * 32 * 32));
        r
    };
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut add = |name: &str, bytes: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, format!("cifar-10-batches-bin/{name}"), bytes)
            .unwrap();
    };
    add("batches.meta.txt", b"airplane\nautomobile\n");
    for k in 1..=5u8 {
        let bytes: Vec<u8> = (0..10u8)
            .flat_map(|c| [record(c, k * 10 + c), record(c, k * 20 + c)].concat())
            .collect();
        add(&format!("data_batch_{k}.bin"), &bytes);
    }
    let test: Vec<u8> = (0..10u8).flat_map(|c| record(c, 200 + c)).collect();
    add("test_batch.bin", &test);
    tar.into_inner().unwrap().finish().unwrap()
}

fn source(url: String, body: &[u8]) -> Source {
    Source {
        url,
        md5: md5_hex(body),
        size: Some(body.len() as u64),
    }
}

/// Every file name in `dir` (none if it does not exist).
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn official_constants_and_base_url() {
    assert_eq!(CIFAR10_BINARY.file_name, "cifar-10-binary.tar.gz");
    assert_eq!(CIFAR10_BINARY.md5, "c32a1d4ab5d03f1284b67883e8d87530");
    assert_eq!(CIFAR10_BINARY.size, 170_052_171);
    assert_eq!(CIFAR100_BINARY.file_name, "cifar-100-binary.tar.gz");
    assert_eq!(CIFAR100_BINARY.md5, "03b5dce01913d631647c71ecec9e9cb8");
    assert_eq!(CIFAR100_BINARY.size, 168_513_733);
    for (variant, official) in [
        (CifarVariant::Cifar10, CIFAR10_BINARY),
        (CifarVariant::Cifar100, CIFAR100_BINARY),
    ] {
        assert_eq!(official.file_name, variant.archive_name());
        let s = Source::cifar_from(variant, download::DEFAULT_BASE_URL);
        assert_eq!(
            s.url,
            format!("https://www.cs.toronto.edu/~kriz/{}", official.file_name)
        );
        assert_eq!(
            (s.md5.as_str(), s.size),
            (official.md5, Some(official.size))
        );
        // a mirror base, with or without a trailing slash
        let m = Source::cifar_from(variant, "http://127.0.0.1:9/mirror/");
        assert_eq!(
            m.url,
            format!("http://127.0.0.1:9/mirror/{}", official.file_name)
        );
        assert_eq!(m.md5, official.md5);
    }
}

#[test]
fn a_good_download_lands_atomically_and_is_not_fetched_twice() {
    let body = tiny_cifar10_archive();
    let (go, wait) = channel::<()>();
    let server = serve(vec![
        ("/a/cifar-10-binary.tar.gz", Reply::Full(body.clone())),
        (
            "/slow/cifar-10-binary.tar.gz",
            Reply::Paused {
                body: body.clone(),
                go: Mutex::new(wait),
            },
        ),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    // the directory is created
    let dir = tmp.path().join("cache").join("ltrain");
    let dest = dir.join(ARCHIVE);
    let src = source(server.url("/a/cifar-10-binary.tar.gz"), &body);
    let outcome = fetch(&src, &dest, &QUIET).unwrap();
    assert_eq!(
        outcome,
        Outcome::Downloaded {
            bytes: body.len() as u64
        }
    );
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(files_in(&dir), vec![ARCHIVE.to_string()]);
    assert_eq!(verify(&dest, &src).unwrap(), None);
    // and it is a readable CIFAR-10 archive
    let data = cifar::load_archive(CifarVariant::Cifar10, &dest).unwrap();
    assert_eq!(data.train.n, 10 * TRAIN_PER_CLASS);
    assert_eq!(data.test.n, 10 * TEST_PER_CLASS);

    // the second call finds it verified and makes no request
    assert_eq!(fetch(&src, &dest, &QUIET).unwrap(), Outcome::Present);
    assert_eq!(server.hits("/a/cifar-10-binary.tar.gz"), 1);
    // likewise with no size known (md5 only)
    let md5_only = Source {
        size: None,
        ..src.clone()
    };
    assert_eq!(fetch(&md5_only, &dest, &QUIET).unwrap(), Outcome::Present);
    assert_eq!(server.hits("/a/cifar-10-binary.tar.gz"), 1);

    // a damaged file in place is downloaded again and replaced
    std::fs::write(&dest, &body[..100]).unwrap();
    assert_eq!(
        verify(&dest, &src).unwrap(),
        Some(Mismatch::Size {
            expected: body.len() as u64,
            got: 100
        })
    );
    assert!(matches!(
        fetch(&md5_only, &dest, &QUIET).unwrap(),
        Outcome::Downloaded { .. }
    ));
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(server.hits("/a/cifar-10-binary.tar.gz"), 2);

    // mid-download: only DEST.part-<pid> exists, DEST appears whole at the end
    let dir2 = tmp.path().join("atomic");
    let dest2 = dir2.join(ARCHIVE);
    let slow = source(server.url("/slow/cifar-10-binary.tar.gz"), &body);
    let worker = {
        let dest2 = dest2.clone();
        std::thread::spawn(move || fetch(&slow, &dest2, &QUIET))
    };
    let part = format!("{ARCHIVE}.part-{}", std::process::id());
    // the server holds back the second half until told to go
    let started = Instant::now();
    while !dir2.join(&part).exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no partial file {part} in {}: {:?}",
            dir2.display(),
            files_in(&dir2)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(files_in(&dir2), vec![part.clone()]);
    assert!(!dest2.exists());
    go.send(()).unwrap();
    assert!(matches!(
        worker.join().unwrap().unwrap(),
        Outcome::Downloaded { .. }
    ));
    assert_eq!(std::fs::read(&dest2).unwrap(), body);
    assert_eq!(files_in(&dir2), vec![ARCHIVE.to_string()]);
}

/// The error of a failed fetch, after checking that it left nothing in `dir`.
fn failed(src: &Source, dir: &Path) -> String {
    let dest = dir.join(ARCHIVE);
    let err = fetch(src, &dest, &QUIET).expect_err("the download should fail");
    let msg = format!("{err:#}");
    assert_eq!(
        files_in(dir),
        Vec::<String>::new(),
        "a failed download left files behind ({msg})"
    );
    assert!(msg.contains(&src.url), "the error names the URL: {msg}");
    assert!(
        msg.contains("by hand") && msg.contains("--data-dir"),
        "the error says how to fix it: {msg}"
    );
    msg
}

#[test]
fn corrupted_truncated_and_short_downloads_are_rejected_and_leave_nothing() {
    let body = tiny_cifar10_archive();
    let mut corrupted = body.clone();
    let mid = corrupted.len() / 2;
    corrupted[mid] ^= 0xff;
    let half = body.len() / 2;
    let server = serve(vec![
        ("/corrupted", Reply::Full(corrupted.clone())),
        (
            "/truncated",
            Reply::Truncated {
                body: body.clone(),
                sent: half,
            },
        ),
        (
            "/short",
            Reply::Short {
                body: body.clone(),
                sent: half,
            },
        ),
    ]);
    let tmp = tempfile::tempdir().unwrap();

    // md5 mismatch: expected and got are both named
    let src = source(server.url("/corrupted"), &body);
    let msg = failed(&src, tmp.path());
    assert!(
        msg.contains(&md5_hex(&body)) && msg.contains(&md5_hex(&corrupted)),
        "{msg}"
    );
    assert!(msg.contains("corrupted"), "{msg}");
    // also without a known size
    let msg = failed(
        &Source {
            size: None,
            ..src.clone()
        },
        tmp.path(),
    );
    assert!(msg.contains(&md5_hex(&corrupted)), "{msg}");

    // the server closes the connection half-way through the announced length
    for size in [Some(body.len() as u64), None] {
        let src = Source {
            size,
            ..source(server.url("/truncated"), &body)
        };
        let msg = failed(&src, tmp.path());
        assert!(
            msg.contains("broke off") || msg.contains("truncated"),
            "{msg}"
        );
    }

    // a body shorter than expected, honestly announced
    let msg = failed(&source(server.url("/short"), &body), tmp.path());
    assert!(
        msg.contains(&format!("announces {half} bytes"))
            && msg.contains(&format!("expected {} bytes", body.len())),
        "{msg}"
    );
    // ... and with no size known, caught by the md5
    let msg = failed(
        &Source {
            size: None,
            ..source(server.url("/short"), &body)
        },
        tmp.path(),
    );
    assert!(msg.contains("md5"), "{msg}");
}

#[test]
fn http_errors_and_unreachable_servers_are_clear_errors() {
    let body = tiny_cifar10_archive();
    let server = serve(vec![("/busy", Reply::Status(503))]);
    let tmp = tempfile::tempdir().unwrap();

    let msg = failed(&source(server.url("/missing"), &body), tmp.path());
    assert!(msg.contains("HTTP 404"), "{msg}");
    let msg = failed(&source(server.url("/busy"), &body), tmp.path());
    assert!(msg.contains("HTTP 503"), "{msg}");

    let closed = format!("{}/{ARCHIVE}", closed_base());
    let started = Instant::now();
    let msg = failed(&source(closed, &body), tmp.path());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(msg.to_lowercase().contains("refused"), "{msg}");

    // a malformed checksum is refused before any request
    let bad = Source {
        md5: "not-an-md5".into(),
        ..source(server.url("/missing"), &body)
    };
    let err = fetch(&bad, &tmp.path().join(ARCHIVE), &QUIET).unwrap_err();
    assert!(format!("{err:#}").contains("32 hex digits"), "{err:#}");
    assert_eq!(server.hits("/missing"), 1);
}

// ---- through the real binary ----

/// `ltrain ARGS` with the download server, cache and checksum given by `env` (and no proxies).
fn ltrain(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ltrain"));
    cmd.args(args);
    for key in [
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        BASE_URL_ENV,
        MD5_ENV,
    ] {
        cmd.env_remove(key);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("cannot start the ltrain binary")
}

fn ok(out: Output, what: &str) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}");
    (stdout, stderr)
}

fn err(out: Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{what} should fail");
    assert!(
        !stderr.contains("panicked"),
        "{what} panicked instead of failing cleanly:\n{stderr}"
    );
    stderr
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

#[test]
fn cli_downloads_into_dir_and_cache_and_trains_on_it() {
    let body = tiny_cifar10_archive();
    let path = "/mirror/cifar-10-binary.tar.gz";
    let server = serve(vec![(path, Reply::Full(body.clone()))]);
    let tmp = tempfile::tempdir().unwrap();
    let xdg = tmp.path().join("xdg");
    let base = server.url("/mirror");
    let md5 = md5_hex(&body);
    let env = [
        (BASE_URL_ENV, base.as_str()),
        (MD5_ENV, md5.as_str()),
        ("XDG_CACHE_HOME", path_str(&xdg)),
    ];

    // data download --to DIR prints the archive's path
    let to = tmp.path().join("to");
    let (stdout, stderr) = ok(
        ltrain(
            &["data", "download", "cifar10", "--to", path_str(&to)],
            &env,
        ),
        "data download --to",
    );
    let archive = to.join(ARCHIVE);
    assert_eq!(stdout.trim(), path_str(&archive));
    assert!(stderr.contains(&server.url(path)), "{stderr}");
    assert_eq!(std::fs::read(&archive).unwrap(), body);
    assert_eq!(files_in(&to), vec![ARCHIVE.to_string()]);
    assert_eq!(server.hits(path), 1);
    // again: found, verified, not fetched
    let (stdout, stderr) = ok(
        ltrain(
            &["data", "download", "cifar10", "--to", path_str(&to)],
            &env,
        ),
        "second data download",
    );
    assert_eq!(stdout.trim(), path_str(&archive));
    assert!(stderr.contains("already present"), "{stderr}");
    assert_eq!(server.hits(path), 1);

    // what it downloaded is a dataset ltrain reads
    let (stdout, _) = ok(
        ltrain(
            &[
                "data",
                "info",
                "--json",
                "--dataset",
                "cifar10-lt",
                "--imbalance",
                "2",
                "--data-dir",
                path_str(&archive),
            ],
            &env,
        ),
        "data info --data-dir <downloaded>",
    );
    let info: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let counts: Vec<usize> = serde_json::from_value(info["class_counts"].clone()).unwrap();
    assert_eq!(counts.len(), 10);
    assert_eq!(counts[0], TRAIN_PER_CLASS);
    assert_eq!(info["test_total"], 10 * TEST_PER_CLASS);

    // data info --download with no --data-dir: into $XDG_CACHE_HOME/ltrain
    let (stdout, _) = ok(
        ltrain(
            &[
                "data",
                "info",
                "--json",
                "--download",
                "--dataset",
                "cifar10-lt",
                "--imbalance",
                "2",
            ],
            &env,
        ),
        "data info --download",
    );
    let cached = xdg.join("ltrain").join(ARCHIVE);
    assert_eq!(std::fs::read(&cached).unwrap(), body);
    assert_eq!(server.hits(path), 2);
    let again: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(again["class_counts"], info["class_counts"]);

    // train --download finds the cached archive (no request) and records it as data_dir
    let run = tmp.path().join("run");
    let (_, stderr) = ok(
        ltrain(
            &[
                "train",
                "--download",
                "--dataset",
                "cifar10-lt",
                "--imbalance",
                "2",
                "--expert-width",
                "reduced",
                "--epochs",
                "1",
                "--batch-size",
                "16",
                "--threads",
                "2",
                "--out",
                path_str(&run),
            ],
            &env,
        ),
        "train --download",
    );
    assert!(stderr.contains("already present"), "{stderr}");
    assert_eq!(server.hits(path), 2);
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        config.contains(path_str(&cached)),
        "config.toml names the archive:\n{config}"
    );

    // --download --data-dir DIR puts the archive in DIR
    let dir = tmp.path().join("given");
    ok(
        ltrain(
            &[
                "data",
                "info",
                "--download",
                "--dataset",
                "cifar10-lt",
                "--imbalance",
                "2",
                "--data-dir",
                path_str(&dir),
            ],
            &env,
        ),
        "data info --download --data-dir DIR",
    );
    assert_eq!(std::fs::read(dir.join(ARCHIVE)).unwrap(), body);
    assert_eq!(server.hits(path), 3);
}

#[test]
fn cli_download_failures_are_clear_and_leave_nothing() {
    let body = tiny_cifar10_archive();
    let path = "/mirror/cifar-10-binary.tar.gz";
    let server = serve(vec![(path, Reply::Full(body.clone()))]);
    let tmp = tempfile::tempdir().unwrap();
    let xdg = tmp.path().join("xdg");
    let base = server.url("/mirror");

    // checked against the official md5 and size: the small archive is refused
    let to = tmp.path().join("to");
    let env = [
        (BASE_URL_ENV, base.as_str()),
        ("XDG_CACHE_HOME", path_str(&xdg)),
    ];
    let stderr = err(
        ltrain(
            &["data", "download", "cifar10", "--to", path_str(&to)],
            &env,
        ),
        "data download of a non-official archive",
    );
    assert!(
        stderr.contains(&server.url(path)) && stderr.contains("170052171"),
        "{stderr}"
    );
    assert_eq!(files_in(&to), Vec::<String>::new());

    // unreachable server, through --download into the cache
    let closed = closed_base();
    let stderr = err(
        ltrain(
            &["data", "info", "--download", "--dataset", "cifar10-lt"],
            &[
                (BASE_URL_ENV, closed.as_str()),
                ("XDG_CACHE_HOME", path_str(&xdg)),
            ],
        ),
        "data info --download from a closed port",
    );
    assert!(
        stderr.contains(&format!("{closed}/{ARCHIVE}")) && stderr.contains("by hand"),
        "{stderr}"
    );
    assert_eq!(files_in(&xdg.join("ltrain")), Vec::<String>::new());

    // --download is for CIFAR only
    let stderr = err(
        ltrain(&["train", "--download", "--quiet"], &env),
        "train --download on the synthetic set",
    );
    assert!(stderr.contains("cifar10-lt"), "{stderr}");
    assert_eq!(server.hits(path), 1);
}

#[test]
fn a_folder_that_cannot_take_the_file_fails_before_the_network() {
    // /proc/self exists but takes no new files, even for root; nothing listens at the base URL, so
    // a download tried first would fail on the connection instead.
    let base = closed_base();
    let out = ltrain(
        &["data", "download", "cifar10", "--to", "/proc/self"],
        &[(BASE_URL_ENV, base.as_str())],
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("cannot write into the download directory /proc/self"),
        "{err}"
    );
    assert!(
        !err.contains("cannot download"),
        "it went to the network first: {err}"
    );
}
