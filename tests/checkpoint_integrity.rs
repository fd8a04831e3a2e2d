//! Checkpoint integrity: every file `ltrain train` writes (checkpoint.safetensors and
//! model.safetensors) carries the CRC-32 of each tensor in its metadata (`ltrain.checksums`), and
//! every way a file is read (`train --resume`, `train --init`, `eval --checkpoint`, the library's
//! `load_checkpoint`) refuses a damaged one, naming the file, the tensor and both checksums. A file
//! without the key (written by an older ltrain) still loads.

use ltrain::nn::{NamedTensor, TensorData};
use ltrain::train::checkpoint::{load_checkpoint, save_checkpoint, CHECKSUMS_KEY};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

mod binary;
use binary::*;

/// A synthetic set of 4 classes and a reduced-width three-expert ResNet-32 on 2 threads: one
/// epoch takes about a second.
const TINY: &[&str] = &[
    "--synthetic-classes",
    "4",
    "--synthetic-max-per-class",
    "16",
    "--synthetic-test-per-class",
    "4",
    "--imbalance",
    "4",
    "--expert-width",
    "reduced",
    "--batch-size",
    "8",
    "--threads",
    "2",
    "--quiet",
];

const CHECKPOINT: &str = "checkpoint.safetensors";
const MODEL: &str = "model.safetensors";
/// A model tensor (random, so never all zero) and an optimizer tensor (SGD momentum after an
/// epoch); the latter is in checkpoint.safetensors only.
const WEIGHT: &str = "shared.conv1.weight";
const MOMENTUM: &str = "optimizer.shared.conv1.weight.momentum_buffer";

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// `ltrain train` of the tiny settings for `epochs` epochs into `<parent>/<name>`.
fn train_run(parent: &Path, name: &str, epochs: usize) -> PathBuf {
    let dir = parent.join(name);
    let mut a = args(&["train", "--epochs", &epochs.to_string(), "--out"]);
    a.push(path_str(&dir));
    a.extend(args(TINY));
    run_ok(&a);
    dir
}

/// `train --resume DIR --epochs 2`.
fn resume_args(dir: &Path) -> Vec<String> {
    vec![
        "train".into(),
        "--resume".into(),
        path_str(dir),
        "--epochs".into(),
        "2".into(),
        "--quiet".into(),
    ]
}

/// `train --init FILE --out OUT` with the tiny settings (the same architecture).
fn init_args(file: &Path, out: &Path) -> Vec<String> {
    let mut a = vec![
        "train".into(),
        "--init".into(),
        path_str(file),
        "--out".into(),
        path_str(out),
        "--epochs".into(),
        "1".into(),
    ];
    a.extend(args(TINY));
    a
}

/// `eval --checkpoint FILE`.
fn eval_args(file: &Path) -> Vec<String> {
    vec![
        "eval".into(),
        "--checkpoint".into(),
        path_str(file),
        "--threads".into(),
        "2".into(),
    ]
}

/// A safetensors file split into its JSON header and its data section.
struct Parsed {
    header: Map<String, Value>,
    data: Vec<u8>,
}

fn parse(bytes: &[u8]) -> Parsed {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).expect("a JSON header");
    Parsed {
        header: header.as_object().unwrap().clone(),
        data: bytes[8 + n..].to_vec(),
    }
}

fn read(path: &Path) -> Parsed {
    parse(&std::fs::read(path).unwrap())
}

/// Writes a header and data section back as a safetensors file (the header padded with spaces to
/// 8 bytes, as safetensors writes it).
fn write(path: &Path, header: &Map<String, Value>, data: &[u8]) {
    let mut json = serde_json::to_vec(header).unwrap();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend(json);
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

impl Parsed {
    fn metadata(&self) -> &Map<String, Value> {
        self.header["__metadata__"].as_object().unwrap()
    }

    fn metadata_mut(&mut self) -> &mut Map<String, Value> {
        self.header
            .get_mut("__metadata__")
            .unwrap()
            .as_object_mut()
            .unwrap()
    }

    /// The stored checksums, name -> "crc32:xxxxxxxx".
    fn checksums(&self) -> BTreeMap<String, String> {
        let text = self.metadata()[CHECKSUMS_KEY]
            .as_str()
            .expect("the checksums are a string");
        serde_json::from_str(text).expect("the checksums are a JSON object of strings")
    }

    fn tensor_names(&self) -> Vec<String> {
        self.header
            .keys()
            .filter(|k| *k != "__metadata__")
            .cloned()
            .collect()
    }

    /// Where the data of tensor `name` lies in the data section.
    fn range(&self, name: &str) -> Range<usize> {
        let offsets = &self.header[name]["data_offsets"];
        offsets[0].as_u64().unwrap() as usize..offsets[1].as_u64().unwrap() as usize
    }
}

fn crc(bytes: &[u8]) -> String {
    format!("crc32:{:08x}", crc32fast::hash(bytes))
}

/// Zeroes 4 bytes in the middle of the data of tensor `name` of `path`, in place, and returns the
/// checksum stored for it and the checksum its damaged bytes have.
fn zero_four_bytes(path: &Path, name: &str) -> (String, String) {
    let mut bytes = std::fs::read(path).unwrap();
    let parsed = parse(&bytes);
    let range = parsed.range(name);
    let start = bytes.len() - parsed.data.len();
    let mid = start + range.start + (range.len() / 2) / 4 * 4;
    assert!(
        bytes[mid..mid + 4] != [0; 4],
        "{name}: the bytes to zero are zero already, the test would prove nothing"
    );
    bytes[mid..mid + 4].fill(0);
    std::fs::write(path, &bytes).unwrap();
    let damaged = parse(&bytes);
    let stored = damaged.checksums()[name].clone();
    let now = crc(&damaged.data[range]);
    assert_ne!(stored, now);
    (stored, now)
}

/// Rewrites `path` without the checksum key, as an ltrain from before checksums wrote it.
fn strip_checksums(path: &Path) {
    let mut parsed = read(path);
    assert!(parsed.metadata_mut().remove(CHECKSUMS_KEY).is_some());
    write(path, &parsed.header, &parsed.data);
    assert!(!read(path).metadata().contains_key(CHECKSUMS_KEY));
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Every tensor of a file ltrain wrote has its checksum, and it is the CRC-32 of its bytes (as
/// Python's `zlib.crc32(tensor.numpy().tobytes())` computes it).
fn assert_checksums_complete(path: &Path) {
    let parsed = read(path);
    let checksums = parsed.checksums();
    let names = parsed.tensor_names();
    assert_eq!(
        checksums.keys().cloned().collect::<Vec<_>>(),
        {
            let mut sorted = names.clone();
            sorted.sort();
            sorted
        },
        "{}: one checksum per tensor",
        path.display()
    );
    for name in &names {
        assert_eq!(
            checksums[name],
            crc(&parsed.data[parsed.range(name)]),
            "{}: {name}",
            path.display()
        );
    }
}

/// (a) A checkpoint with 4 zeroed bytes in a model tensor or an optimizer tensor is refused by
/// `--resume`, `--init` and `eval`, each naming the file, the tensor and both checksums; the
/// damaged checkpoint is left as it was.
#[test]
fn damaged_checkpoint_is_refused_by_resume_init_and_eval() {
    let tmp = tempdir();
    let pristine = train_run(tmp.path(), "pristine", 1);
    for (i, tensor) in [WEIGHT, MOMENTUM].into_iter().enumerate() {
        let dir = tmp.path().join(format!("run{i}"));
        std::fs::create_dir(&dir).unwrap();
        // The run's files (its tensorboard/ folder is not needed here).
        for entry in std::fs::read_dir(&pristine).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
            }
        }
        let file = dir.join(CHECKPOINT);
        let (stored, now) = zero_four_bytes(&file, tensor);
        let damaged = std::fs::read(&file).unwrap();
        let file_str = path_str(&file);
        let mentions = [
            file_str.as_str(),
            tensor,
            "damaged",
            stored.as_str(),
            now.as_str(),
        ];

        run_err(&resume_args(&dir), &mentions);
        assert_eq!(
            std::fs::read(&file).unwrap(),
            damaged,
            "a refused resume must not rewrite the checkpoint"
        );
        let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        assert_eq!(
            metrics.lines().count(),
            1,
            "no epoch trained after the refusal"
        );

        let out = tmp.path().join(format!("init{i}"));
        run_err(&init_args(&file, &out), &mentions);
        assert!(!out.join(CHECKPOINT).exists());

        run_err(&eval_args(&file), &mentions);

        // The library reports the same.
        let err = format!("{:#}", load_checkpoint(&file).unwrap_err());
        for m in mentions {
            assert!(
                err.contains(m),
                "load_checkpoint should mention {m:?}: {err}"
            );
        }
    }
}

/// (b) Intact files carry a checksum for every tensor; they evaluate, resume (the resumed
/// checkpoint carries checksums of its own new tensors) and initialise a new run.
#[test]
fn intact_checkpoint_has_checksums_and_resumes() {
    let tmp = tempdir();
    let dir = train_run(tmp.path(), "run", 1);
    for file in [CHECKPOINT, MODEL] {
        assert_checksums_complete(&dir.join(file));
    }
    assert!(read(&dir.join(CHECKPOINT))
        .tensor_names()
        .contains(&MOMENTUM.to_string()));
    let before = read(&dir.join(CHECKPOINT)).checksums();

    // The library verifies and hides the key from the metadata it returns.
    let (tensors, meta) = load_checkpoint(&dir.join(CHECKPOINT)).unwrap();
    assert_eq!(tensors.len(), before.len());
    assert!(!meta.contains_key(CHECKSUMS_KEY));
    assert_eq!(meta["ltrain.epochs_completed"], "1");

    run_ok(&eval_args(&dir.join(CHECKPOINT)));
    run_ok(&init_args(&dir.join(MODEL), &tmp.path().join("init")));
    run_ok(&init_args(&dir.join(CHECKPOINT), &tmp.path().join("init2")));
    run_ok(&resume_args(&dir));

    let (_, meta) = load_checkpoint(&dir.join(CHECKPOINT)).unwrap();
    assert_eq!(meta["ltrain.epochs_completed"], "2");
    for file in [CHECKPOINT, MODEL] {
        assert_checksums_complete(&dir.join(file));
    }
    assert_ne!(
        read(&dir.join(CHECKPOINT)).checksums()[WEIGHT],
        before[WEIGHT],
        "a second epoch changes the weights and so their checksum"
    );
}

/// (c) Files without the checksum key, as older ltrain versions wrote them, still resume,
/// evaluate and initialise; the files the resume writes have checksums again.
#[test]
fn checkpoint_without_checksums_still_loads() {
    let tmp = tempdir();
    let dir = train_run(tmp.path(), "run", 1);
    strip_checksums(&dir.join(CHECKPOINT));
    strip_checksums(&dir.join(MODEL));

    let (_, meta) = load_checkpoint(&dir.join(CHECKPOINT)).unwrap();
    assert_eq!(meta["ltrain.epochs_completed"], "1");
    run_ok(&eval_args(&dir.join(CHECKPOINT)));
    run_ok(&init_args(&dir.join(MODEL), &tmp.path().join("init")));
    run_ok(&resume_args(&dir));
    let (_, meta) = load_checkpoint(&dir.join(CHECKPOINT)).unwrap();
    assert_eq!(meta["ltrain.epochs_completed"], "2");
    for file in [CHECKPOINT, MODEL] {
        assert_checksums_complete(&dir.join(file));
    }
}

/// (d) The same damage in model.safetensors is refused by `eval --checkpoint` and `--init`.
#[test]
fn damaged_model_file_is_refused() {
    let tmp = tempdir();
    let dir = train_run(tmp.path(), "run", 1);
    let file = dir.join(MODEL);
    let (stored, now) = zero_four_bytes(&file, WEIGHT);
    let file_str = path_str(&file);
    let mentions = [
        file_str.as_str(),
        WEIGHT,
        "damaged",
        stored.as_str(),
        now.as_str(),
    ];
    run_err(&eval_args(&file), &mentions);
    run_err(&init_args(&file, &tmp.path().join("init")), &mentions);
    // The run itself resumes from checkpoint.safetensors, and rewrites the weights file intact.
    run_ok(&resume_args(&dir));
    assert_checksums_complete(&file);
}

/// A few tensors of each dtype, saved by the library.
fn small_file(dir: &Path) -> PathBuf {
    let path = dir.join("small.safetensors");
    let tensors = vec![
        NamedTensor {
            name: "a.weight".to_string(),
            shape: vec![2, 3],
            data: TensorData::F32(vec![1.0, -2.0, 3.5, 0.25, 8.0, -0.5]),
        },
        NamedTensor {
            name: "a.count".to_string(),
            shape: vec![],
            data: TensorData::I64(vec![41]),
        },
        NamedTensor {
            name: "b.bias".to_string(),
            shape: vec![3],
            data: TensorData::F32(vec![0.5, 0.75, -1.0]),
        },
    ];
    let meta = BTreeMap::from([("epoch".to_string(), "3".to_string())]);
    save_checkpoint(&path, &tensors, &meta).unwrap();
    let (loaded, loaded_meta) = load_checkpoint(&path).unwrap();
    assert_eq!(loaded_meta, meta);
    assert_eq!(loaded.len(), 3);
    assert_checksums_complete(&path);
    path
}

/// Rewrites the checksum key of `path` with `edit`, then loads it: the error message.
fn load_with_checksums(path: &Path, edit: impl Fn(&mut BTreeMap<String, String>)) -> String {
    let mut parsed = read(path);
    let mut checksums = parsed.checksums();
    edit(&mut checksums);
    parsed.metadata_mut().insert(
        CHECKSUMS_KEY.to_string(),
        Value::String(serde_json::to_string(&checksums).unwrap()),
    );
    let edited = path.with_file_name("edited.safetensors");
    write(&edited, &parsed.header, &parsed.data);
    let err = load_checkpoint(&edited).expect_err("an edited checksum key must be refused");
    let err = format!("{err:#}");
    assert!(err.contains("edited.safetensors"), "{err}");
    err
}

/// Where the key is present it must be complete and well-formed: a tensor without a checksum, a
/// checksum of a tensor the file lacks, a malformed or foreign checksum and a key that is not a
/// JSON object are each refused with the file's name.
#[test]
fn checksum_key_must_be_complete_and_well_formed() {
    let tmp = tempdir();
    let path = small_file(tmp.path());

    let err = load_with_checksums(&path, |c| {
        c.remove("b.bias");
    });
    assert!(
        err.contains("b.bias") && err.contains("no checksum"),
        "{err}"
    );

    let err = load_with_checksums(&path, |c| {
        c.insert("c.gone".to_string(), "crc32:00000000".to_string());
    });
    assert!(err.contains("c.gone") && err.contains("damaged"), "{err}");

    for bad in [
        "crc32:1234",
        "crc32:+1234567",
        "crc32:xyzxyzxy",
        "sha256:00000000",
        "",
    ] {
        let err = load_with_checksums(&path, |c| {
            c.insert("a.count".to_string(), bad.to_string());
        });
        assert!(err.contains("a.count") && err.contains(bad), "{bad}: {err}");
    }

    // A wrong but well-formed checksum: named with both values.
    let err = load_with_checksums(&path, |c| {
        c.insert("a.weight".to_string(), "crc32:00000000".to_string());
    });
    let actual = read(&path).checksums()["a.weight"].clone();
    assert!(
        err.contains("a.weight") && err.contains("crc32:00000000") && err.contains(&actual),
        "{err}"
    );

    let mut parsed = read(&path);
    parsed.metadata_mut().insert(
        CHECKSUMS_KEY.to_string(),
        Value::String("[1, 2".to_string()),
    );
    let edited = tmp.path().join("not-json.safetensors");
    write(&edited, &parsed.header, &parsed.data);
    let err = format!("{:#}", load_checkpoint(&edited).unwrap_err());
    assert!(
        err.contains("not-json.safetensors") && err.contains(CHECKSUMS_KEY),
        "{err}"
    );

    // The key is ltrain's own: a caller's metadata cannot hold it.
    let meta = BTreeMap::from([(CHECKSUMS_KEY.to_string(), "{}".to_string())]);
    let err = save_checkpoint(&tmp.path().join("x.safetensors"), &[], &meta).unwrap_err();
    assert!(format!("{err:#}").contains(CHECKSUMS_KEY));
    assert!(!tmp.path().join("x.safetensors").exists());
}

/// Every single 4-byte zeroing of the data section of a small file that changes its bytes is
/// caught (CRC-32 detects every burst error of up to 32 bits).
#[test]
fn every_zeroed_word_of_the_data_is_caught() {
    let tmp = tempdir();
    let path = small_file(tmp.path());
    let bytes = std::fs::read(&path).unwrap();
    let data_start = bytes.len() - read(&path).data.len();
    let damaged = tmp.path().join("damaged.safetensors");
    let mut caught = 0;
    for at in data_start..bytes.len() - 3 {
        if bytes[at..at + 4] == [0; 4] {
            continue;
        }
        let mut b = bytes.clone();
        b[at..at + 4].fill(0);
        std::fs::write(&damaged, &b).unwrap();
        let err = format!("{:#}", load_checkpoint(&damaged).unwrap_err());
        assert!(
            err.contains("damaged.safetensors") && err.contains("is damaged"),
            "zeroed at {at}: {err}"
        );
        caught += 1;
    }
    assert!(caught > 20, "only {caught} positions tried");
}
