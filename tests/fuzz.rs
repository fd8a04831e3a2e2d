//! Fuzz targets for every parser a user's file reaches: CIFAR record files and `.tar.gz`
//! archives, ImageNet-LT list files, JPEGs, TOML configurations, safetensors checkpoints (and
//! loading them into a model). Whatever the bytes, the outcome must be `Ok` or an error naming the
//! file, never a panic, a hang or an allocation sized by an unchecked length field.
//!
//! Inputs are the seeds of `tests/fuzz-corpus/<target>/` (written by the ignored `write_corpus`
//! test) under truncations, bit flips, overwrites, insertions, deletions and splices, plus fully
//! random bytes; `LTRAIN_FUZZ_CASES` sets the cases per fuzz test. Every seed and every file in
//! `tests/fuzz-corpus/<target>/regressions/` (each a crash once found) also runs as a plain test.
//! A failing case is saved to `$CARGO_TARGET_TMPDIR/fuzz-failures/<target>` (the last one saved
//! is proptest's shrunk input) to be committed under `regressions/` with the fix.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ltrain::backend::cpu::CpuBackend;
use ltrain::config::TrainConfig;
use ltrain::data::cifar::{self, CifarVariant};
use ltrain::data::imagenet::{self, BadImagePolicy, ImageNetSet, MAX_JPEG_SIDE};
use ltrain::model::MultiExpertNet;
use ltrain::nn::NamedTensor;
use ltrain::train::checkpoint::{load_checkpoint, load_model, save_checkpoint};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz-corpus");
const PRESETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/presets");

/// Far above any case on valid-sized inputs: a case this slow is a (near-)hang.
const CASE_TIME_LIMIT: Duration = Duration::from_secs(10);

/// Cases per fuzz test; the default keeps the whole file near 45 s in a `cargo test` build.
fn cases() -> u32 {
    std::env::var("LTRAIN_FUZZ_CASES")
        .map(|v| v.parse().expect("LTRAIN_FUZZ_CASES must be a number"))
        .unwrap_or(16_000)
}

// ---------------------------------------------------------------------------------------------
// Mutations

#[derive(Clone, Debug)]
enum Mutation {
    Truncate(u64),
    FlipBit(u64, u8),
    Overwrite(u64, Vec<u8>),
    Insert(u64, Vec<u8>),
    Delete(u64, u16),
    /// The input up to the first position, then seed `.0` from the second.
    Splice(usize, u64, u64),
}

/// Positions favour the first bytes, where the headers and length fields are.
fn position() -> impl Strategy<Value = u64> {
    prop_oneof![0..600u64, any::<u64>()]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        position().prop_map(Mutation::Truncate),
        (position(), 0..8u8).prop_map(|(p, b)| Mutation::FlipBit(p, b)),
        (position(), vec(any::<u8>(), 1..9)).prop_map(|(p, b)| Mutation::Overwrite(p, b)),
        (position(), vec(any::<u8>(), 1..17)).prop_map(|(p, b)| Mutation::Insert(p, b)),
        (position(), 1..600u16).prop_map(|(p, n)| Mutation::Delete(p, n)),
        (any::<usize>(), position(), position()).prop_map(|(s, a, b)| Mutation::Splice(s, a, b)),
    ]
}

fn at(pos: u64, len: usize) -> usize {
    (pos % (len as u64 + 1)) as usize
}

fn apply(seeds: &[Vec<u8>], seed: usize, mutations: &[Mutation]) -> Vec<u8> {
    let mut b = seeds[seed].clone();
    for m in mutations {
        match m {
            Mutation::Truncate(p) => b.truncate(at(*p, b.len())),
            Mutation::FlipBit(p, bit) if !b.is_empty() => {
                let i = *p as usize % b.len();
                b[i] ^= 1 << bit;
            }
            Mutation::FlipBit(..) => {}
            Mutation::Overwrite(p, bytes) => {
                let i = at(*p, b.len());
                let end = (i + bytes.len()).min(b.len());
                b[i..end].copy_from_slice(&bytes[..end - i]);
            }
            Mutation::Insert(p, bytes) => {
                let i = at(*p, b.len());
                b.splice(i..i, bytes.iter().copied());
            }
            Mutation::Delete(p, n) => {
                let i = at(*p, b.len());
                b.drain(i..(i + *n as usize).min(b.len()));
            }
            Mutation::Splice(s, p, q) => {
                let other = &seeds[s % seeds.len()];
                b.truncate(at(*p, b.len()));
                b.extend_from_slice(&other[at(*q, other.len())..]);
            }
        }
    }
    b
}

/// A fuzz input; its `Debug` (what proptest prints) is a summary, the bytes are saved to a file.
#[derive(Clone)]
struct Input(Vec<u8>);

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let head = &self.0[..self.0.len().min(32)];
        write!(f, "{} bytes starting {head:02x?}", self.0.len())
    }
}

/// Mostly a seed under 1-8 mutations, sometimes fully random bytes.
fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Input> {
    assert!(!seeds.is_empty(), "a fuzz target needs seeds");
    let seeds = Arc::new(seeds);
    let n = seeds.len();
    prop_oneof![
        9 => (0..n, vec(mutation(), 1..9))
            .prop_map(move |(s, m)| Input(apply(&seeds, s, &m))),
        1 => vec(any::<u8>(), 0..4096).prop_map(Input),
    ]
}

// ---------------------------------------------------------------------------------------------
// Running targets

/// What a target made of an input: accepted, or rejected with an error naming the source.
type Outcome = Result<bool, String>;

/// `Ok(true)` for `Ok`, `Ok(false)` for an error that names `source`, `Err` otherwise.
fn named<T>(result: anyhow::Result<T>, source: &str) -> Outcome {
    match result {
        Ok(_) => Ok(true),
        Err(e) => {
            let message = format!("{e:#}");
            if message.contains(source) {
                Ok(false)
            } else {
                Err(format!("the error does not name {source}: {message}"))
            }
        }
    }
}

/// Runs one case, catching panics and timing it; a failing input is saved for the report.
fn run_case(target: &str, bytes: &[u8], check: &dyn Fn(&[u8]) -> Outcome) -> Outcome {
    let start = Instant::now();
    let outcome = match catch_unwind(AssertUnwindSafe(|| check(bytes))) {
        Ok(outcome) => outcome,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panicked: {message}"))
        }
    };
    let outcome = match outcome {
        Ok(_) if start.elapsed() > CASE_TIME_LIMIT => Err(format!("took {:?}", start.elapsed())),
        other => other,
    };
    if let Err(e) = &outcome {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(target);
        std::fs::write(&file, bytes).unwrap();
        return Err(format!("{e} (input saved to {})", file.display()));
    }
    outcome
}

fn fuzz(target: &str, seeds: Vec<Vec<u8>>, check: impl Fn(&[u8]) -> Outcome) {
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&inputs(seeds), |input| {
        run_case(target, &input.0, &check)
            .map(|_| ())
            .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("fuzz target {target}: {e}");
    }
}

/// The files directly in `dir`, sorted, with their names.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let seeds = files(&Path::new(CORPUS).join(target));
    assert!(!seeds.is_empty(), "no seeds in {CORPUS}/{target}");
    seeds
}

fn seed_bytes(target: &str) -> Vec<Vec<u8>> {
    seeds(target).into_iter().map(|(_, b)| b).collect()
}

/// Seeds must be accepted (they are valid files); regressions must not fail the contract.
fn replay(target: &str, seeds: &[(String, Vec<u8>)], check: impl Fn(&[u8]) -> Outcome) {
    for (name, bytes) in seeds {
        let accepted = run_case(target, bytes, &check).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(accepted, "seed {name} was rejected");
    }
    for (name, bytes) in files(&Path::new(CORPUS).join(target).join("regressions")) {
        run_case(target, &bytes, &check).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

// ---------------------------------------------------------------------------------------------
// CIFAR record files

fn check_cifar_records(dir: &Path, bytes: &[u8]) -> Outcome {
    let file = dir.join("records.bin");
    write(&file, bytes);
    let source = file.display().to_string();
    let mut accepted = false;
    for variant in [CifarVariant::Cifar10, CifarVariant::Cifar100] {
        let parsed = cifar::parse_records(variant, bytes, "fuzz input");
        if let Ok(set) = &parsed {
            if set.n * variant.record_len() != bytes.len() || set.images.len() != set.n * 3072 {
                return Err(format!("{} records from {} bytes", set.n, bytes.len()));
            }
        }
        accepted |= named(parsed, "fuzz input")?;
        named(cifar::load_record_file(variant, &file), &source)?;
    }
    // The official folder layout, every member holding the input.
    let official = dir.join("official");
    std::fs::create_dir_all(&official).unwrap();
    for variant in [CifarVariant::Cifar10, CifarVariant::Cifar100] {
        for name in variant.train_files().iter().chain([&variant.test_file()]) {
            write(&official.join(name), bytes);
        }
    }
    let source = official.display().to_string();
    for variant in [CifarVariant::Cifar10, CifarVariant::Cifar100] {
        named(cifar::load_official(variant, &official), &source)?;
    }
    Ok(accepted)
}

#[test]
fn cifar_records_corpus() {
    let dir = tempdir();
    replay("cifar-records", &seeds("cifar-records"), |b| {
        check_cifar_records(dir.path(), b)
    });
}

#[test]
fn fuzz_cifar_records() {
    let dir = tempdir();
    fuzz("cifar-records", seed_bytes("cifar-records"), |b| {
        check_cifar_records(dir.path(), b)
    });
}

// ---------------------------------------------------------------------------------------------
// CIFAR archives

fn check_cifar_archive(dir: &Path, bytes: &[u8]) -> Outcome {
    let file = dir.join("archive.tar.gz");
    write(&file, bytes);
    let source = file.display().to_string();
    let mut accepted = false;
    for variant in [CifarVariant::Cifar10, CifarVariant::Cifar100] {
        accepted |= named(cifar::load_archive(variant, &file), &source)?;
        named(cifar::load_official(variant, &file), &source)?;
    }
    Ok(accepted)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[test]
fn cifar_archive_corpus() {
    let dir = tempdir();
    replay("cifar-archive", &seeds("cifar-archive"), |b| {
        check_cifar_archive(dir.path(), b)
    });
}

#[test]
fn fuzz_cifar_archive_gz() {
    let dir = tempdir();
    fuzz("cifar-archive", seed_bytes("cifar-archive"), |b| {
        check_cifar_archive(dir.path(), b)
    });
}

/// Mutates the tar stream inside the gzip, so that tar headers (sizes, types, names) are fuzzed.
#[test]
fn fuzz_cifar_archive_tar() {
    let dir = tempdir();
    let tars = seed_bytes("cifar-archive")
        .iter()
        .map(|b| gunzip(b))
        .collect();
    fuzz("cifar-archive-tar", tars, |b| {
        check_cifar_archive(dir.path(), &gzip(b))
    });
}

#[test]
fn an_archive_member_claiming_terabytes_is_refused_by_name() {
    let file = Path::new(CORPUS).join("cifar-archive/regressions/sparse-8gib-test-member.tar.gz");
    let e = cifar::load_archive(CifarVariant::Cifar10, &file).unwrap_err();
    let message = format!("{e:#}");
    assert!(message.contains(&file.display().to_string()), "{message}");
    assert!(message.contains("test_batch.bin claims"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// ImageNet-LT list files

fn check_imagenet_list(dir: &Path, bytes: &[u8]) -> Outcome {
    let list = dir.join("list.txt");
    write(&list, bytes);
    let good = dir.join("good.txt");
    write(&good, b"train/n01440764/n01440764_10026.JPEG 0\n");
    let source = list.display().to_string();
    let parsed = imagenet::read_list(dir, &list);
    if let Ok(list) = &parsed {
        // Sizes per-class tables by the class count, which must therefore be bounded.
        ImageNetSet::new(list.clone(), 32, BadImagePolicy::Fail);
    }
    let accepted = named(parsed, &source)?;
    named(imagenet::load_lists(dir, &list, &good), &source)?;
    named(imagenet::load_lists(dir, &good, &list), &source)?;
    Ok(accepted)
}

#[test]
fn imagenet_list_corpus() {
    let dir = tempdir();
    replay("imagenet-list", &seeds("imagenet-list"), |b| {
        check_imagenet_list(dir.path(), b)
    });
}

#[test]
fn fuzz_imagenet_list() {
    let dir = tempdir();
    fuzz("imagenet-list", seed_bytes("imagenet-list"), |b| {
        check_imagenet_list(dir.path(), b)
    });
}

#[test]
fn a_huge_label_is_refused_naming_the_line() {
    let dir = tempdir();
    let list = dir.path().join("list.txt");
    write(&list, b"a.JPEG 0\nb.JPEG 4294967295\n");
    let e = imagenet::read_list(dir.path(), &list).unwrap_err();
    let message = format!("{e:#}");
    assert!(
        message.contains(&format!("{}:2", list.display())),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------------------
// JPEGs

fn check_jpeg(dir: &Path, bytes: &[u8]) -> Outcome {
    let file = dir.join("image.JPEG");
    write(&file, bytes);
    let decoded = imagenet::decode_jpeg(&file);
    if let Ok(image) = &decoded {
        if image.c != 3 || image.h > MAX_JPEG_SIDE || image.w > MAX_JPEG_SIDE {
            return Err(format!(
                "decoded a {}x{}x{} image",
                image.c, image.h, image.w
            ));
        }
        if image.data.len() != 3 * image.h * image.w {
            return Err(format!(
                "{} bytes for {}x{}",
                image.data.len(),
                image.h,
                image.w
            ));
        }
    }
    named(decoded, &file.display().to_string())
}

#[test]
fn jpeg_corpus() {
    let dir = tempdir();
    replay("jpeg", &seeds("jpeg"), |b| check_jpeg(dir.path(), b));
}

#[test]
fn fuzz_jpeg() {
    let dir = tempdir();
    fuzz("jpeg", seed_bytes("jpeg"), |b| check_jpeg(dir.path(), b));
}

#[test]
fn huge_declared_jpeg_dimensions_are_refused_before_decoding() {
    for name in ["side-12000.jpg", "9000x9000-in-545-bytes.jpg"] {
        let file = Path::new(CORPUS).join("jpeg/regressions").join(name);
        let e = imagenet::decode_jpeg(&file).unwrap_err();
        let message = format!("{e:#}");
        assert!(message.contains(&file.display().to_string()), "{message}");
        assert!(
            message.contains("12000") || message.contains("9000x9000"),
            "{message}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// TOML configurations

fn check_config(dir: &Path, bytes: &[u8]) -> Outcome {
    let file = dir.join("config.toml");
    write(&file, bytes);
    let text = String::from_utf8_lossy(bytes);
    let parsed = TrainConfig::from_toml_str(&text, "fuzz.toml");
    if let Ok(cfg) = &parsed {
        // Only that it returns: an invalid configuration is the user's to fix.
        let _ = cfg.validate();
    }
    named(parsed, "fuzz.toml")?;
    let overlaid = TrainConfig::default().overlay_toml(&text, "fuzz.toml");
    if let Ok(cfg) = &overlaid {
        let _ = cfg.validate();
    }
    // Presets are overlays: this, not a whole configuration, is what they must pass.
    let accepted = named(overlaid, "fuzz.toml")?;
    named(TrainConfig::load(&file), &file.display().to_string())?;
    Ok(accepted)
}

#[test]
fn config_corpus() {
    let dir = tempdir();
    replay("config", &seeds("config"), |b| check_config(dir.path(), b));
    // Preset files carry a `[paper]` table, which a user's configuration may not: seeds only.
    for (name, bytes) in files(Path::new(PRESETS)) {
        run_case("config", &bytes, &|b| check_config(dir.path(), b))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn fuzz_config() {
    let dir = tempdir();
    let mut seeds = seed_bytes("config");
    seeds.extend(files(Path::new(PRESETS)).into_iter().map(|(_, b)| b));
    fuzz("config", seeds, |b| check_config(dir.path(), b));
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

type Net = MultiExpertNet<CpuBackend>;

/// The smallest network: ResNet-32 with one expert of the trunk's width and two classes.
fn small_model(be: &CpuBackend) -> Net {
    MultiExpertNet::resnet32(be, 2, 1, (16, 16), 0).unwrap()
}

fn checkpoint_metadata() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("epoch".to_string(), "3".to_string()),
        (
            "config".to_string(),
            "epochs = 4\nexperts = 1\n".to_string(),
        ),
    ])
}

/// A whole small model's checkpoint (too large to commit), written by `save_checkpoint`.
fn full_checkpoint(be: &CpuBackend, dir: &Path) -> Vec<u8> {
    let mut tensors = small_model(be).state_dict(be).unwrap();
    let momentum = NamedTensor {
        name: "optimizer.experts.0.fc.bias.momentum_buffer".to_string(),
        ..tensors.last().unwrap().clone()
    };
    tensors.push(momentum);
    let file = dir.join("full.safetensors");
    save_checkpoint(&file, &tensors, &checkpoint_metadata()).unwrap();
    std::fs::read(&file).unwrap()
}

fn check_checkpoint(be: &CpuBackend, model: &RefCell<Net>, dir: &Path, bytes: &[u8]) -> Outcome {
    let file = dir.join("checkpoint.safetensors");
    write(&file, bytes);
    let source = file.display().to_string();
    let accepted = named(load_checkpoint(&file), &source)?;
    named(load_model(be, &mut model.borrow_mut(), &file), &source)?;
    Ok(accepted)
}

fn checkpoint_seeds(be: &CpuBackend, dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut all = seeds("checkpoint");
    all.push(("full small model".to_string(), full_checkpoint(be, dir)));
    all
}

#[test]
fn checkpoint_corpus() {
    let be = CpuBackend::new(Some(1)).unwrap();
    let model = RefCell::new(small_model(&be));
    let dir = tempdir();
    let seeds = checkpoint_seeds(&be, dir.path());
    replay("checkpoint", &seeds, |b| {
        check_checkpoint(&be, &model, dir.path(), b)
    });
}

#[test]
fn fuzz_checkpoint() {
    let be = CpuBackend::new(Some(1)).unwrap();
    let model = RefCell::new(small_model(&be));
    let dir = tempdir();
    let seeds = checkpoint_seeds(&be, dir.path());
    fuzz(
        "checkpoint",
        seeds.into_iter().map(|(_, b)| b).collect(),
        |b| check_checkpoint(&be, &model, dir.path(), b),
    );
}

// ---------------------------------------------------------------------------------------------
// The corpus generator: `cargo test --test fuzz -- --ignored write_corpus`

/// `n` records with varied pixels and labels valid for `variant`.
fn records(variant: CifarVariant, n: usize) -> Vec<u8> {
    let mut set = ltrain::data::ImageSet::empty(32, 32, variant.classes());
    for i in 0..n {
        let pixels: Vec<u8> = (0..3072).map(|p| ((p * (i + 3) / 7) % 256) as u8).collect();
        set.push(&pixels, (i * 7 % variant.classes()) as u32);
    }
    cifar::encode_records(variant, &set).unwrap()
}

fn archive(variant: CifarVariant, records_per_member: usize) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for name in variant.train_files().iter().chain([&variant.test_file()]) {
        let data = records(variant, records_per_member);
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        let path = format!("{}/{name}", variant.official_dir());
        tar.append_data(&mut header, path, &data[..]).unwrap();
    }
    gzip(&tar.into_inner().unwrap())
}

/// A GNU sparse `test_batch.bin` of 8 GiB (all hole but its last 512 bytes) in a 1 KiB archive.
fn sparse_archive() -> Vec<u8> {
    let octal = |v: u64| -> [u8; 12] {
        let mut field = [0u8; 12];
        field[..11].copy_from_slice(format!("{v:011o}").as_bytes());
        field
    };
    let real_size = 0o77777777777;
    let mut header = tar::Header::new_gnu();
    header
        .set_path("cifar-10-batches-bin/test_batch.bin")
        .unwrap();
    header.set_entry_type(tar::EntryType::GNUSparse);
    header.set_size(512);
    header.set_mode(0o644);
    let gnu = header.as_gnu_mut().unwrap();
    gnu.sparse[0].offset = octal(real_size - 512);
    gnu.sparse[0].numbytes = octal(512);
    gnu.realsize = octal(real_size);
    header.set_cksum();
    let mut tar = tar::Builder::new(Vec::new());
    tar.append(&header, &[0u8; 512][..]).unwrap();
    gzip(&tar.into_inner().unwrap())
}

fn jpeg(
    w: u16,
    h: u16,
    colour: jpeg_encoder::ColorType,
    setup: impl Fn(&mut jpeg_encoder::Encoder<&mut Vec<u8>>),
) -> Vec<u8> {
    let channels = if colour == jpeg_encoder::ColorType::Luma {
        1
    } else {
        3
    };
    let pixels: Vec<u8> = (0..w as usize * h as usize * channels)
        .map(|i| ((i * 37) % 251) as u8)
        .collect();
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, 80);
    setup(&mut encoder);
    encoder.encode(&pixels, w, h, colour).unwrap();
    out
}

/// `jpeg` with the frame header's height and width replaced.
fn with_dimensions(mut jpeg: Vec<u8>, w: u16, h: u16) -> Vec<u8> {
    let sof = jpeg
        .windows(2)
        .position(|m| m[0] == 0xFF && (m[1] == 0xC0 || m[1] == 0xC2))
        .unwrap();
    jpeg[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    jpeg
}

#[test]
#[ignore = "writes tests/fuzz-corpus; run by hand when the seeds change"]
fn write_corpus() {
    use jpeg_encoder::{ColorType, SamplingFactor};
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let path = Path::new(CORPUS).join(target).join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        write(&path, bytes);
    };
    put(
        "cifar-records",
        "cifar10-3.bin",
        &records(CifarVariant::Cifar10, 3),
    );
    put(
        "cifar-records",
        "cifar100-3.bin",
        &records(CifarVariant::Cifar100, 3),
    );
    put(
        "cifar-archive",
        "cifar-10-binary.tar.gz",
        &archive(CifarVariant::Cifar10, 1),
    );
    put(
        "cifar-archive",
        "cifar-100-binary.tar.gz",
        &archive(CifarVariant::Cifar100, 2),
    );
    put(
        "cifar-archive",
        "regressions/sparse-8gib-test-member.tar.gz",
        &sparse_archive(),
    );

    put(
        "imagenet-list",
        "ImageNet_LT_train.txt",
        b"train/n01440764/n01440764_10026.JPEG 0\ntrain/n01440764/n01440764_10027.JPEG 0\n\
          train/n01443537/n01443537_10007.JPEG 1\n\ntrain/n01484850/n01484850_10016.JPEG 2\n",
    );
    put(
        "imagenet-list",
        "ImageNet_LT_test.txt",
        b"val/n01440764/ILSVRC2012_val_00000293.JPEG 0\r\nval/n01443537/ILSVRC2012_val_00000236.JPEG\t1\r\n",
    );
    put(
        "imagenet-list",
        "regressions/label-u32-max.txt",
        b"a.JPEG 0\nb.JPEG 4294967295\n",
    );

    let grey = jpeg(16, 16, ColorType::Luma, |_| {});
    put("jpeg", "grey-16x16.jpg", &grey);
    put(
        "jpeg",
        "colour-420-24x16.jpg",
        &jpeg(24, 16, ColorType::Rgb, |e| {
            e.set_sampling_factor(SamplingFactor::R_4_2_0)
        }),
    );
    put(
        "jpeg",
        "progressive-20x12.jpg",
        &jpeg(20, 12, ColorType::Rgb, |e| e.set_progressive(true)),
    );
    put(
        "jpeg",
        "restarts-32x8.jpg",
        &jpeg(32, 8, ColorType::Rgb, |e| e.set_restart_interval(1)),
    );
    put(
        "jpeg",
        "regressions/side-12000.jpg",
        &with_dimensions(grey.clone(), 12000, 16),
    );
    put(
        "jpeg",
        "regressions/9000x9000-in-545-bytes.jpg",
        &with_dimensions(grey, 9000, 9000),
    );

    put(
        "config",
        "defaults.toml",
        TrainConfig::default().to_toml().unwrap().as_bytes(),
    );

    // A few tensors of each kind: F32 weights, an I64 counter, an optimizer buffer, metadata.
    let be = CpuBackend::new(Some(1)).unwrap();
    let state = small_model(&be).state_dict(&be).unwrap();
    let mut tensors: Vec<NamedTensor> = state.iter().take(6).cloned().collect();
    tensors.extend(state.iter().rev().take(2).cloned());
    tensors.push(NamedTensor {
        name: "optimizer.experts.0.fc.bias.momentum_buffer".to_string(),
        ..state.last().unwrap().clone()
    });
    let path = Path::new(CORPUS).join("checkpoint/partial.safetensors");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    save_checkpoint(&path, &tensors, &checkpoint_metadata()).unwrap();
}
