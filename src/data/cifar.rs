//! CIFAR-10 / CIFAR-100 in the official "binary version" record format: the official directory
//! layouts, the official `.tar.gz` archives read directly, and explicit record files (such as the
//! shared `train_lt_r10.bin` / `test.bin`). Every malformed input is an error naming the file (and
//! the record), never a panic.
//!
//! Record layouts: CIFAR-10 `[label u8][3072 pixel bytes]`; CIFAR-100 `[coarse u8][fine u8][3072
//! pixel bytes]` (the fine label is the class). Pixels: 1024 R, 1024 G, 1024 B, row-major 32x32.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::ImageSet;

const SIDE: usize = 32;
const PIXELS: usize = 3 * SIDE * SIDE;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CifarVariant {
    Cifar10,
    Cifar100,
}

/// The standard CIFAR-100 fine → coarse (superclass) map, used when writing CIFAR-100 records.
pub const CIFAR100_COARSE_OF_FINE: [u8; 100] = [
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15,
    3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4,
    2, 0, 17, 4, 18, 17, 10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
];

impl CifarVariant {
    pub fn classes(self) -> usize {
        match self {
            CifarVariant::Cifar10 => 10,
            CifarVariant::Cifar100 => 100,
        }
    }

    /// Bytes per record.
    pub fn record_len(self) -> usize {
        match self {
            CifarVariant::Cifar10 => 1 + PIXELS,
            CifarVariant::Cifar100 => 2 + PIXELS,
        }
    }

    /// Label bytes before the pixels.
    fn header_len(self) -> usize {
        self.record_len() - PIXELS
    }

    pub fn name(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "cifar10",
            CifarVariant::Cifar100 => "cifar100",
        }
    }

    /// The folder inside the official archive.
    pub fn official_dir(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "cifar-10-batches-bin",
            CifarVariant::Cifar100 => "cifar-100-binary",
        }
    }

    /// The official archive's file name.
    pub fn archive_name(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "cifar-10-binary.tar.gz",
            CifarVariant::Cifar100 => "cifar-100-binary.tar.gz",
        }
    }

    /// The official training files, in the order that defines the train indices.
    pub fn train_files(self) -> &'static [&'static str] {
        match self {
            CifarVariant::Cifar10 => &[
                "data_batch_1.bin",
                "data_batch_2.bin",
                "data_batch_3.bin",
                "data_batch_4.bin",
                "data_batch_5.bin",
            ],
            CifarVariant::Cifar100 => &["train.bin"],
        }
    }

    /// Records in the largest official file (a CIFAR-10 batch; CIFAR-100's `train.bin`).
    pub fn max_records_per_file(self) -> usize {
        match self {
            CifarVariant::Cifar10 => 10_000,
            CifarVariant::Cifar100 => 50_000,
        }
    }

    pub fn test_file(self) -> &'static str {
        match self {
            CifarVariant::Cifar10 => "test_batch.bin",
            CifarVariant::Cifar100 => "test.bin",
        }
    }
}

/// The official training and test sets.
#[derive(Clone, Debug)]
pub struct CifarData {
    pub train: ImageSet,
    pub test: ImageSet,
}

/// Parse records from `bytes`; `source` names the file in errors.
pub fn parse_records(variant: CifarVariant, bytes: &[u8], source: &str) -> Result<ImageSet> {
    let record = variant.record_len();
    if !bytes.len().is_multiple_of(record) {
        bail!(
            "{source}: {} bytes is not a whole number of {} records ({record} bytes each; {} \
             records and {} bytes left over) — the file is truncated or not {} data",
            bytes.len(),
            variant.name(),
            bytes.len() / record,
            bytes.len() % record,
            variant.name()
        );
    }
    let n = bytes.len() / record;
    let mut set = ImageSet::empty(SIDE, SIDE, variant.classes());
    set.images.reserve(n * PIXELS);
    set.labels.reserve(n);
    for (k, rec) in bytes.chunks_exact(record).enumerate() {
        let label = rec[variant.header_len() - 1] as usize;
        if label >= variant.classes() {
            bail!(
                "{source}: record {k} has label {label}, out of range for {} ({} classes)",
                variant.name(),
                variant.classes()
            );
        }
        if variant == CifarVariant::Cifar100 && rec[0] >= 20 {
            bail!(
                "{source}: record {k} has coarse label {}, out of range (20 superclasses)",
                rec[0]
            );
        }
        set.push(&rec[variant.header_len()..], label as u32);
    }
    Ok(set)
}

/// Read one record file (e.g. `train_lt_r10.bin`, `test.bin`, `data_batch_1.bin`).
pub fn load_record_file(variant: CifarVariant, path: &Path) -> Result<ImageSet> {
    let bytes = std::fs::read(path).with_context(|| {
        format!(
            "cannot read {} record file {}",
            variant.name(),
            path.display()
        )
    })?;
    parse_records(variant, &bytes, &path.display().to_string())
}

fn concat(parts: Vec<ImageSet>, classes: usize) -> ImageSet {
    let mut out = ImageSet::empty(SIDE, SIDE, classes);
    for part in parts {
        out.images.extend(part.images);
        out.labels.extend(part.labels);
        out.n += part.n;
    }
    out
}

/// Load the official train and test sets from `path`: the official archive
/// (`cifar-10-binary.tar.gz` / `cifar-100-binary.tar.gz`, any `.tar.gz` / `.tgz` with the official
/// member names), the extracted folder (`cifar-10-batches-bin` / `cifar-100-binary`), or a folder
/// containing either.
pub fn load_official(variant: CifarVariant, path: &Path) -> Result<CifarData> {
    if path.is_file() {
        return load_archive(variant, path);
    }
    if !path.exists() {
        bail!(
            "{}: no such file or directory (expected the {} folder `{}` or the archive `{}`)",
            path.display(),
            variant.name(),
            variant.official_dir(),
            variant.archive_name()
        );
    }
    let candidates = [path.to_path_buf(), path.join(variant.official_dir())];
    for dir in &candidates {
        if dir.join(variant.test_file()).is_file() {
            return load_official_dir(variant, dir);
        }
    }
    let archive = path.join(variant.archive_name());
    if archive.is_file() {
        return load_archive(variant, &archive);
    }
    bail!(
        "{}: found neither {} nor {} nor {} — pass the official {} folder or archive",
        path.display(),
        path.join(variant.test_file()).display(),
        path.join(variant.official_dir())
            .join(variant.test_file())
            .display(),
        archive.display(),
        variant.name()
    )
}

fn load_official_dir(variant: CifarVariant, dir: &Path) -> Result<CifarData> {
    let read = |name: &str| -> Result<ImageSet> {
        let file: PathBuf = dir.join(name);
        if !file.is_file() {
            bail!("missing {} file {}", variant.name(), file.display());
        }
        load_record_file(variant, &file)
    };
    let parts = variant
        .train_files()
        .iter()
        .map(|name| read(name))
        .collect::<Result<Vec<_>>>()?;
    Ok(CifarData {
        train: concat(parts, variant.classes()),
        test: read(variant.test_file())?,
    })
}

/// Read the official `.tar.gz` archive directly (flate2 + tar), matching members by file name.
pub fn load_archive(variant: CifarVariant, path: &Path) -> Result<CifarData> {
    let file = File::open(path)
        .with_context(|| format!("cannot open {} archive {}", variant.name(), path.display()))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let wanted: Vec<&str> = variant
        .train_files()
        .iter()
        .copied()
        .chain(std::iter::once(variant.test_file()))
        .collect();
    let mut found: Vec<Option<Vec<u8>>> = vec![None; wanted.len()];
    let entries = archive
        .entries()
        .with_context(|| format!("{}: not a readable tar.gz archive", path.display()))?;
    for entry in entries {
        let mut entry =
            entry.with_context(|| format!("{}: corrupt tar.gz archive", path.display()))?;
        let member = entry
            .path()
            .with_context(|| format!("{}: bad member name", path.display()))?
            .into_owned();
        let Some(name) = member.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(slot) = wanted.iter().position(|w| *w == name) {
            // A tar header's size (a GNU sparse entry's zero-filled holes included) can claim
            // terabytes in a few bytes of archive: refuse what no CIFAR file can be.
            let limit = variant.max_records_per_file() * variant.record_len();
            if entry.size() > limit as u64 {
                bail!(
                    "{}: member {} claims {} bytes, more than the {limit} of the largest {} \
                     record file ({} records)",
                    path.display(),
                    member.display(),
                    entry.size(),
                    variant.name(),
                    variant.max_records_per_file()
                );
            }
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).with_context(|| {
                format!(
                    "{}: cannot read member {}",
                    path.display(),
                    member.display()
                )
            })?;
            found[slot] = Some(bytes);
        }
    }
    let mut sets = Vec::with_capacity(wanted.len());
    for (name, bytes) in wanted.iter().zip(found) {
        let Some(bytes) = bytes else {
            bail!("{}: archive has no member {name}", path.display());
        };
        sets.push(parse_records(
            variant,
            &bytes,
            &format!("{}:{name}", path.display()),
        )?);
    }
    let test = sets.pop().expect("the test member is always wanted");
    Ok(CifarData {
        train: concat(sets, variant.classes()),
        test,
    })
}

/// Encode a set as records (CIFAR-100 coarse labels from the standard fine → coarse map).
pub fn encode_records(variant: CifarVariant, set: &ImageSet) -> Result<Vec<u8>> {
    if set.h != SIDE || set.w != SIDE {
        bail!(
            "CIFAR records hold 32x32 images, this set has {}x{}",
            set.h,
            set.w
        );
    }
    if set.classes > variant.classes() {
        bail!(
            "a {}-class set cannot be written as {} records",
            set.classes,
            variant.name()
        );
    }
    let mut out = Vec::with_capacity(set.n * variant.record_len());
    for i in 0..set.n {
        let label = set.labels[i] as u8;
        if variant == CifarVariant::Cifar100 {
            out.push(CIFAR100_COARSE_OF_FINE[label as usize]);
        }
        out.push(label);
        out.extend_from_slice(set.pixels(i));
    }
    Ok(out)
}

/// Write a set as a record file (`ltrain data cut`).
pub fn write_record_file(variant: CifarVariant, set: &ImageSet, path: &Path) -> Result<()> {
    let bytes = encode_records(variant, set)?;
    let mut file =
        File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(&bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}
