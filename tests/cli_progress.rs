//! Issue 31 item 8, run as a user would, with stderr a pipe (not a terminal): a line per epoch with
//! samples/s and the run's ETA (evaluated or not), plain progress lines within an epoch (step k/N,
//! the running loss of the last read-back, samples/s, ETA), and the TensorBoard event files beside
//! metrics.jsonl, read back here by a TFRecord/protobuf reader of this file (both CRC-32Cs of each
//! record checked) and, where Python's `tensorboard` is installed, by TensorBoard's own reader.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod binary;
use binary::*;

/// 4 synthetic classes of 64, 40, 25, 16 training images in batches of 4: 36 steps an epoch, more
/// than one loss read-back each (every 20 steps and at the epoch's end). Epoch 1 is not evaluated.
const RUN: &[&str] = &[
    "--synthetic-classes",
    "4",
    "--synthetic-max-per-class",
    "64",
    "--synthetic-test-per-class",
    "4",
    "--imbalance",
    "4",
    "--expert-width",
    "reduced",
    "--batch-size",
    "4",
    "--threads",
    "2",
    "--eval-every",
    "2",
];
const METRICS: [&str; 5] = ["top1", "many", "medium", "few", "ece"];

/// `ltrain ARGS` (which must succeed) with stderr piped and `LTRAIN_PROGRESS_SECONDS` set (or
/// not): its stderr.
fn ltrain_logged(args: &[String], progress_seconds: Option<&str>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ltrain"));
    cmd.args(args);
    match progress_seconds {
        Some(s) => cmd.env("LTRAIN_PROGRESS_SECONDS", s),
        None => cmd.env_remove("LTRAIN_PROGRESS_SECONDS"),
    };
    let out = cmd.output().expect("cannot start the ltrain binary");
    let err = stderr(&out);
    assert!(
        out.status.success(),
        "ltrain {} failed ({}):\n{err}",
        args.join(" "),
        out.status
    );
    err
}

fn metrics_lines(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

/// The value of `key` of a metrics.jsonl line as the f32 TensorBoard holds, `None` for null.
fn metric(line: &Value, key: &str) -> Option<f32> {
    let v = &line[key];
    assert!(v.is_null() || v.is_number(), "{key} of {line}");
    v.as_f64().map(|v| v as f32)
}

/// `(rate, eta seconds)` of a line's `R samples/s, ETA T` (`T` as `42 s`, `3 min 05 s`, `2 h 07 min`).
fn rate_and_eta(line: &str) -> (f64, u64) {
    let (before, after) = line
        .split_once(" samples/s, ETA ")
        .unwrap_or_else(|| panic!("no samples/s and ETA in {line:?}"));
    let rate: f64 = before
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("rate of {line:?}: {e}"));
    let words: Vec<&str> = after.trim_end_matches(')').split(' ').collect();
    let unit = |w: &str| match w {
        "s" => 1,
        "min" => 60,
        "h" => 3600,
        _ => panic!("unit {w:?} in {line:?}"),
    };
    let eta = match words.as_slice() {
        [n, u] => n.parse::<u64>().unwrap() * unit(u),
        [n, u, m, v] => n.parse::<u64>().unwrap() * unit(u) + m.parse::<u64>().unwrap() * unit(v),
        _ => panic!("ETA of {line:?}"),
    };
    (rate, eta)
}

/// The per-epoch lines of stderr (`epoch    N stage ...`), by epoch.
fn epoch_lines(err: &str) -> BTreeMap<u64, Vec<&str>> {
    let mut lines: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for l in err.lines() {
        let Some(rest) = l.strip_prefix("epoch ") else {
            continue;
        };
        if let Some((n, _)) = rest.trim_start().split_once(" stage ") {
            lines.entry(n.parse().unwrap()).or_default().push(l);
        }
    }
    lines
}

/// A plain progress line: `epoch E/EPOCHS step K/N: loss L, R samples/s, ETA T`.
struct StepLine {
    epoch: u64,
    step: u64,
    steps: u64,
    loss: Option<f32>,
    eta: u64,
}

fn step_lines(err: &str) -> Vec<StepLine> {
    err.lines()
        .filter(|l| l.contains(" step ") && l.starts_with("epoch "))
        .map(|l| {
            let words: Vec<&str> = l.split(' ').collect();
            let ratio = |w: &str| {
                let (a, b) = w.trim_end_matches(':').split_once('/').unwrap();
                (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap())
            };
            let (epoch, _) = ratio(words[1]);
            assert_eq!(words[2], "step", "{l}");
            let (step, steps) = ratio(words[3]);
            assert_eq!(words[4], "loss", "{l}");
            let loss = match words[5].trim_end_matches(',') {
                "-" => None,
                v => Some(v.parse().unwrap()),
            };
            let (rate, eta) = rate_and_eta(l);
            assert!(rate > 0.0, "{l}");
            StepLine {
                epoch,
                step,
                steps,
                loss,
                eta,
            }
        })
        .collect()
}

/// CRC-32C, bit by bit (independent of the writer's table).
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0x82F6_3B78 & 0u32.wrapping_sub(crc & 1));
        }
    }
    !crc
}

/// TensorFlow's mask, spelled as TensorFlow spells it.
#[allow(clippy::manual_rotate)]
fn masked(data: &[u8]) -> u32 {
    let c = crc32c(data);
    ((c >> 15) | (c << 17)).wrapping_add(0xa282_ead8)
}

/// One decoded `Event`: its wall time, step, file_version and scalars.
#[derive(Debug, Default)]
struct Event {
    wall_time: f64,
    step: i64,
    file_version: Option<String>,
    values: Vec<(String, f32)>,
}

/// Protobuf fields of `buf`: (field number, wire type, varint value or the bytes of the field).
fn fields(mut buf: &[u8]) -> Vec<(u64, u64, u64, &[u8])> {
    fn varint(buf: &mut &[u8]) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = buf.split_first().expect("truncated varint");
            *buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return v;
            }
        }
        panic!("varint longer than 10 bytes")
    }
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf);
        let (field, wire) = (key >> 3, key & 7);
        let (v, bytes): (u64, &[u8]) = match wire {
            0 => (varint(&mut buf), &[]),
            1 => {
                let (b, rest) = buf.split_at(8);
                buf = rest;
                (0, b)
            }
            2 => {
                let n = varint(&mut buf) as usize;
                let (b, rest) = buf.split_at(n);
                buf = rest;
                (0, b)
            }
            5 => {
                let (b, rest) = buf.split_at(4);
                buf = rest;
                (0, b)
            }
            w => panic!("wire type {w} of field {field}"),
        };
        out.push((field, wire, v, bytes));
    }
    out
}

fn decode_event(data: &[u8]) -> Event {
    let mut e = Event::default();
    for (field, wire, v, bytes) in fields(data) {
        match (field, wire) {
            (1, 1) => e.wall_time = f64::from_le_bytes(bytes.try_into().unwrap()),
            (2, 0) => e.step = v as i64,
            (3, 2) => e.file_version = Some(String::from_utf8(bytes.to_vec()).unwrap()),
            (5, 2) => {
                for (f, w, _, value) in fields(bytes) {
                    assert_eq!((f, w), (1, 2), "Summary holds only values");
                    let (mut tag, mut simple) = (None, None);
                    for (f, w, _, b) in fields(value) {
                        match (f, w) {
                            (1, 2) => tag = Some(String::from_utf8(b.to_vec()).unwrap()),
                            (2, 5) => simple = Some(f32::from_le_bytes(b.try_into().unwrap())),
                            other => panic!("unexpected Summary.Value field {other:?}"),
                        }
                    }
                    e.values
                        .push((tag.expect("a tag"), simple.expect("a simple_value")));
                }
            }
            other => panic!("unexpected Event field {other:?}"),
        }
    }
    e
}

/// The events of one file, each record's length and data CRCs checked.
fn read_events(path: &Path) -> Vec<Event> {
    let bytes = std::fs::read(path).unwrap();
    let mut rest = bytes.as_slice();
    let mut events = Vec::new();
    while !rest.is_empty() {
        assert!(rest.len() >= 12, "{}: a truncated record", path.display());
        let (len, tail) = rest.split_at(8);
        let n = u64::from_le_bytes(len.try_into().unwrap()) as usize;
        let len_crc = u32::from_le_bytes(tail[..4].try_into().unwrap());
        assert_eq!(len_crc, masked(len), "{}: length CRC", path.display());
        let tail = &tail[4..];
        assert!(
            tail.len() >= n + 4,
            "{}: a truncated record",
            path.display()
        );
        let (data, tail) = tail.split_at(n);
        let data_crc = u32::from_le_bytes(tail[..4].try_into().unwrap());
        assert_eq!(data_crc, masked(data), "{}: data CRC", path.display());
        events.push(decode_event(data));
        rest = &tail[4..];
    }
    events
}

/// The event files of a run, oldest first (by their first event's wall time).
fn event_files(dir: &Path) -> Vec<PathBuf> {
    let board = dir.join("tensorboard");
    let mut files: Vec<(f64, PathBuf)> = std::fs::read_dir(&board)
        .unwrap_or_else(|e| panic!("{}: {e}", board.display()))
        .map(|e| e.unwrap().path())
        .inspect(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            assert!(name.starts_with("events.out.tfevents."), "{name}");
        })
        .map(|p| (read_events(&p)[0].wall_time, p))
        .collect();
    files.sort_by(|a, b| a.0.total_cmp(&b.0));
    files.into_iter().map(|(_, p)| p).collect()
}

/// Every scalar of `files`: tag -> [(step, value)], in file order.
type Scalars = BTreeMap<String, Vec<(i64, f32)>>;

fn scalars(files: &[PathBuf]) -> Scalars {
    let mut all = Scalars::new();
    for f in files {
        let events = read_events(f);
        let first = &events[0];
        assert_eq!(first.file_version.as_deref(), Some("brain.Event:2"));
        assert!(first.values.is_empty());
        assert!(events.len() > 1, "{}: no scalars", f.display());
        let mut wall = first.wall_time;
        for e in &events[1..] {
            assert!(e.file_version.is_none());
            assert!(e.wall_time >= wall && e.wall_time > 1.5e9, "{e:?}");
            wall = e.wall_time;
            assert!(!e.values.is_empty(), "{e:?}");
            for (tag, v) in &e.values {
                all.entry(tag.clone()).or_default().push((e.step, *v));
            }
        }
    }
    all
}

/// The points of `tag` (none if absent).
fn points<'a>(all: &'a Scalars, tag: &str) -> &'a [(i64, f32)] {
    all.get(tag).map_or(&[], |v| v.as_slice())
}

/// `epoch/<key>` against metrics.jsonl: a point at each evaluated epoch whose value is not null,
/// equal to it.
fn check_epoch_metrics(all: &Scalars, metrics: &[Value]) {
    for key in METRICS {
        let expected: Vec<(i64, f32)> = metrics
            .iter()
            .filter_map(|l| Some((l["epoch"].as_i64().unwrap(), metric(l, key)?)))
            .collect();
        assert_eq!(
            points(all, &format!("epoch/{key}")),
            expected,
            "epoch/{key}"
        );
    }
    assert!(!points(all, "epoch/top1").is_empty());
}

#[test]
fn crc32c_check_value() {
    // The CRC-32C check value (RFC 3720 / the CRC catalogue), for both implementations.
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(
        ltrain::report::tensorboard::crc32c(b"123456789"),
        0xE306_9283
    );
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 3) as u8).collect();
    assert_eq!(ltrain::report::tensorboard::crc32c(&data), crc32c(&data));
    assert_eq!(
        ltrain::report::tensorboard::masked_crc32c(&data),
        masked(&data)
    );
}

/// A run of 3 epochs (the first not evaluated) with stderr a pipe and a progress line at most every
/// tenth of an epoch; then resumed to a 4th epoch with the default interval (60 s: no step lines in
/// a run of seconds), which adds an event file.
#[test]
fn plain_progress_lines_and_tensorboard_events() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut args: Vec<String> = ["train", "--epochs", "3", "--out", &path_str(&dir)]
        .iter()
        .chain(RUN)
        .map(|s| s.to_string())
        .collect();
    let err = ltrain_logged(&args, Some("0"));
    let metrics = metrics_lines(&dir);
    let evaluated: Vec<u64> = metrics
        .iter()
        .map(|l| l["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(evaluated, [2, 3]);

    // One line per epoch, evaluated or not, each with samples/s and the run's ETA; the last's is 0.
    let lines = epoch_lines(&err);
    assert_eq!(
        lines.keys().copied().collect::<Vec<_>>(),
        [1, 2, 3],
        "{err}"
    );
    let mut epoch_rates = Vec::new();
    for (&epoch, l) in &lines {
        assert_eq!(l.len(), 1, "one line for epoch {epoch}:\n{err}");
        let l = l[0];
        let (rate, eta) = rate_and_eta(l);
        assert!(rate > 0.0, "{l}");
        if epoch == 3 {
            assert_eq!(eta, 0, "{l}");
        } else {
            assert!(eta > 0, "the run is not over: {l}");
        }
        match metrics.iter().find(|m| m["epoch"] == epoch) {
            Some(m) => {
                let loss = format!(
                    "loss {:.4} top-1 {:.2}% ",
                    metric(m, "train_loss").unwrap(),
                    m["top1"].as_f64().unwrap()
                );
                assert!(l.contains(&loss), "{l} should hold {loss:?}");
            }
            None => assert!(l.contains(" not evaluated ("), "{l}"),
        }
        epoch_rates.push(rate);
        // Printed as the epoch ends: after its step lines, before the next epoch's.
        let at = err.find(l).unwrap();
        assert!(
            !err[at..].contains(&format!("epoch {epoch}/3 step ")),
            "{err}"
        );
        assert!(
            !err[..at].contains(&format!("epoch {}/3 step ", epoch + 1)),
            "{err}"
        );
    }

    // Step lines: at most every tenth of an epoch (never at its last step: the epoch's line is
    // there), the loss from the epoch's first read-back on, the ETA counting down.
    let steps = step_lines(&err);
    let per_epoch = steps[0].steps;
    assert_eq!(
        per_epoch, 36,
        "145 images, the last one left out, in batches of 4"
    );
    for epoch in 1..=3 {
        let of: Vec<&StepLine> = steps.iter().filter(|s| s.epoch == epoch).collect();
        assert!(
            (5..=10).contains(&of.len()),
            "epoch {epoch}: {} step lines:\n{err}",
            of.len()
        );
        for pair in of.windows(2) {
            assert!(pair[1].step >= pair[0].step + per_epoch.div_ceil(10));
        }
        for s in &of {
            assert_eq!(s.steps, per_epoch);
            assert!(s.step < per_epoch);
            assert!(s.loss.is_none_or(|l| l.is_finite() && l > 0.0));
        }
        // None before the first read-back, then one on every line.
        assert!(of[0].loss.is_none(), "epoch {epoch} step {}", of[0].step);
        let known = of
            .iter()
            .position(|s| s.loss.is_some())
            .expect("a read-back");
        assert!(
            of[known..].iter().all(|s| s.loss.is_some()),
            "epoch {epoch}"
        );
    }
    let etas: Vec<u64> = steps.iter().map(|s| s.eta).collect();
    assert!(etas[0] > 0 && etas[0] > *etas.last().unwrap(), "{etas:?}");

    // TensorBoard: one file; the epoch metrics equal metrics.jsonl, train/loss at the read-backs,
    // the last of each epoch its mean (epoch/train_loss).
    let files = event_files(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let all = scalars(&files);
    check_epoch_metrics(&all, &metrics);
    let train_loss = points(&all, "epoch/train_loss");
    assert_eq!(
        train_loss.iter().map(|p| p.0).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    for m in &metrics {
        let epoch = m["epoch"].as_i64().unwrap();
        let tb = train_loss.iter().find(|p| p.0 == epoch).unwrap().1;
        assert_eq!(tb, metric(m, "train_loss").unwrap(), "epoch {epoch}");
    }
    let loss = points(&all, "train/loss");
    let lr = points(&all, "train/lr");
    assert!(loss.len() >= 6, "two read-backs an epoch: {loss:?}");
    assert!(loss.windows(2).all(|w| w[0].0 < w[1].0), "{loss:?}");
    assert_eq!(
        loss.iter().map(|p| p.0).collect::<Vec<_>>(),
        lr.iter().map(|p| p.0).collect::<Vec<_>>()
    );
    for (e, &(epoch, mean)) in train_loss.iter().enumerate() {
        let end = epoch * per_epoch as i64;
        let at_end = loss.iter().find(|p| p.0 == end);
        assert_eq!(
            at_end,
            Some(&(end, mean)),
            "the read-back of epoch {epoch}'s last step"
        );
        let inside = loss
            .iter()
            .filter(|p| p.0 > end - per_epoch as i64 && p.0 < end);
        assert!(inside.count() >= 1, "a read-back within epoch {}", e + 1);
    }
    for m in &metrics {
        let end = m["epoch"].as_i64().unwrap() * per_epoch as i64;
        let at_end = lr.iter().find(|p| p.0 == end).unwrap();
        assert_eq!(at_end.1, metric(m, "lr").unwrap());
    }
    let rates = points(&all, "epoch/samples_per_second");
    assert_eq!(rates.len(), 3);
    for (&(_, tb), printed) in rates.iter().zip(&epoch_rates) {
        assert!(
            (f64::from(tb) - printed).abs() <= 0.051 + 0.005 * printed,
            "TensorBoard {tb} vs printed {printed}"
        );
    }

    // Resumed to a 4th epoch: a second file continuing the step count; together they hold every
    // evaluated epoch of metrics.jsonl. The default interval prints no step lines here.
    args = [
        "train",
        "--resume",
        &path_str(&dir),
        "--epochs",
        "4",
        "--threads",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let err = ltrain_logged(&args, None);
    assert!(step_lines(&err).is_empty(), "{err}");
    let lines = epoch_lines(&err);
    assert_eq!(lines.keys().copied().collect::<Vec<_>>(), [4], "{err}");
    assert_eq!(rate_and_eta(lines[&4][0]).1, 0);
    let metrics = metrics_lines(&dir);
    assert_eq!(metrics.last().unwrap()["epoch"], 4);
    let files = event_files(&dir);
    assert_eq!(files.len(), 2, "{files:?}");
    let second = scalars(&files[1..]);
    let first_step = points(&second, "train/loss")[0].0;
    assert!(
        first_step > 3 * per_epoch as i64 && first_step <= 4 * per_epoch as i64,
        "{first_step}"
    );
    let all = scalars(&files);
    check_epoch_metrics(&all, &metrics);
    python_reads(&dir.join("tensorboard"), &all);
}

/// TensorBoard's own reader, where Python's `tensorboard` is installed ($LTRAIN_TEST_PYTHON or
/// python3): the same scalars.
fn python_reads(board: &Path, ours: &Scalars) {
    let python = std::env::var("LTRAIN_TEST_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let has = Command::new(&python)
        .args([
            "-c",
            "import tensorboard.backend.event_processing.event_accumulator",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        eprintln!("skipped: {python} has no tensorboard package");
        return;
    }
    let script = r#"
import json, sys
from tensorboard.backend.event_processing import event_accumulator as ea
acc = ea.EventAccumulator(sys.argv[1], size_guidance={ea.SCALARS: 0})
acc.Reload()
print(json.dumps({t: [[s.step, s.value] for s in acc.Scalars(t)] for t in acc.Tags()["scalars"]}))
"#;
    let out = Command::new(&python)
        .args(["-c", script, &path_str(board)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let theirs: BTreeMap<String, Vec<(i64, f64)>> =
        serde_json::from_slice(&out.stdout).expect("JSON from the script");
    let theirs: Scalars = theirs
        .into_iter()
        .map(|(t, v)| (t, v.into_iter().map(|(s, x)| (s, x as f32)).collect()))
        .collect();
    assert_eq!(&theirs, ours);
}
