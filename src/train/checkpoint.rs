//! Checkpoints as safetensors files with PyTorch state-dict names and layouts.
//!
//! Model tensors carry the names and layouts of the equivalent PyTorch module (`shared.*`,
//! `experts.{k}.*`; conv `[out, in / groups, kh, kw]`, linear `[out, in]`, batch norm
//! `weight`/`bias`/`running_mean`/`running_var` as `F32 [c]` and `num_batches_tracked` as an
//! `I64` scalar of shape `[]`), so PyTorch loads the model with
//!
//! ```python
//! from safetensors.torch import load_file
//! state = load_file("checkpoint.safetensors")
//! model.load_state_dict({k: v for k, v in state.items() if k.startswith(("shared.", "experts."))})
//! # or: model.load_state_dict(state, strict=False)
//! ```
//!
//! A checkpoint may hold other tensors under their own prefixes (the training loop stores the
//! optimizer's momentum buffers as `optimizer.{param}.momentum_buffer`) and string metadata
//! (epoch, RNG state, the configuration as TOML); both are carried generically here.
//!
//! Every file [`save_checkpoint`] writes also holds, in the metadata key [`CHECKSUMS_KEY`]
//! (`ltrain.checksums`), a JSON object naming each tensor with the CRC-32 of its data bytes
//! (`{"shared.conv1.weight": "crc32:1a2b3c4d", ...}`: CRC-32/ISO-HDLC, the checksum of zlib's
//! `crc32` and gzip, over the tensor's little-endian bytes as stored). [`load_checkpoint`] checks
//! every tensor against it, so a file damaged on disk or in a copy is an error naming the file and
//! the tensor, not a model with a few wrong weights. A file without the key (written by an older
//! ltrain, or by PyTorch) loads unchecked; PyTorch ignores the key.

use crate::backend::Backend;
use crate::model::{is_model_tensor, MultiExpertNet};
use crate::nn::{NamedTensor, TensorData};
use anyhow::{bail, ensure, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The metadata key of the per-tensor checksums (see the module documentation). It is reserved:
/// [`save_checkpoint`] writes it and [`load_checkpoint`] removes it from the metadata it returns.
pub const CHECKSUMS_KEY: &str = "ltrain.checksums";

/// How a checksum in [`CHECKSUMS_KEY`] starts: it names the algorithm.
const CRC32_PREFIX: &str = "crc32:";

/// A tensor's checksum as stored in [`CHECKSUMS_KEY`]: `crc32:` and 8 lowercase hex digits.
fn checksum(data: &[u8]) -> String {
    format!("{CRC32_PREFIX}{:08x}", crc32fast::hash(data))
}

/// The CRC-32 of a stored checksum, or `None` where it is not `crc32:` and 8 hex digits.
fn parse_checksum(text: &str) -> Option<u32> {
    let hex = text.strip_prefix(CRC32_PREFIX)?;
    if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// A borrowed tensor in safetensors' little-endian byte layout.
struct TensorBytes<'a> {
    tensor: &'a NamedTensor,
}

impl View for TensorBytes<'_> {
    fn dtype(&self) -> Dtype {
        match self.tensor.data {
            TensorData::F32(_) => Dtype::F32,
            TensorData::I64(_) => Dtype::I64,
        }
    }
    fn shape(&self) -> &[usize] {
        &self.tensor.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        // safetensors is little-endian: borrow the values as they are on little-endian hosts.
        match &self.tensor.data {
            TensorData::F32(v) if cfg!(target_endian = "little") => {
                Cow::Borrowed(bytemuck::cast_slice(v))
            }
            TensorData::I64(v) if cfg!(target_endian = "little") => {
                Cow::Borrowed(bytemuck::cast_slice(v))
            }
            TensorData::F32(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            TensorData::I64(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        }
    }
    fn data_len(&self) -> usize {
        self.tensor.data.len() * self.dtype().bitsize() / 8
    }
}

/// Writes `tensors` and `metadata` to `path` atomically: into a temporary file in the same
/// directory, synced to disk, then renamed over `path` (and the directory synced), so a crash
/// leaves either the previous checkpoint or the new one, never a partial file. The metadata gains
/// [`CHECKSUMS_KEY`], the CRC-32 of every tensor's data, which `metadata` must not hold itself.
pub fn save_checkpoint(
    path: &Path,
    tensors: &[NamedTensor],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut seen = std::collections::HashSet::with_capacity(tensors.len());
    for t in tensors {
        if !seen.insert(t.name.as_str()) {
            bail!("{}: tensor `{}` given twice", path.display(), t.name);
        }
        if t.data.len() != t.numel() {
            bail!(
                "{}: tensor `{}` has {} values for shape {:?}",
                path.display(),
                t.name,
                t.data.len(),
                t.shape
            );
        }
    }
    if metadata.contains_key(CHECKSUMS_KEY) {
        bail!(
            "{}: metadata key {CHECKSUMS_KEY} is reserved for the checksums ltrain writes",
            path.display()
        );
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .with_context(|| format!("{}: a checkpoint path must name a file", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let views = tensors
        .iter()
        .map(|t| (t.name.as_str(), TensorBytes { tensor: t }));
    let checksums: BTreeMap<&str, String> = tensors
        .iter()
        .map(|t| (t.name.as_str(), checksum(&TensorBytes { tensor: t }.data())))
        .collect();
    let mut info: HashMap<String, String> = metadata.clone().into_iter().collect();
    info.insert(
        CHECKSUMS_KEY.to_string(),
        serde_json::to_string(&checksums)?,
    );
    let written = safetensors::serialize_to_file(views, Some(info), &tmp)
        .map_err(|e| match e {
            // Its text already ends with the I/O error's, which is also its source: keep one.
            safetensors::SafeTensorError::IoError(io) => anyhow::Error::new(io),
            e => anyhow::Error::new(e),
        })
        .with_context(|| format!("writing checkpoint {}", tmp.display()))
        .and_then(|()| {
            sort_header(&tmp).with_context(|| format!("writing checkpoint {}", tmp.display()))
        })
        .and_then(|()| {
            File::open(&tmp)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", tmp.display()))
        })
        .and_then(|()| {
            std::fs::rename(&tmp, path)
                .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
        });
    if let Err(e) = written {
        // Best effort: the error that matters is `e`.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // Persist the rename itself; not every platform can open a directory, so failures to open
    // it are not errors.
    if let Ok(d) = File::open(&dir) {
        d.sync_all()
            .with_context(|| format!("syncing directory {}", dir.display()))?;
    }
    Ok(())
}

/// safetensors writes the metadata from a `HashMap`, in an order that changes from process to
/// process; the same run must give the same bytes (a resumed run is compared with an uninterrupted
/// one byte for byte), so the header is rewritten in place with its keys sorted (the same keys and
/// values: the same length, the same padding).
fn sort_header(path: &Path) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let len = usize::try_from(u64::from_le_bytes(len))?;
    let mut header = vec![0u8; len];
    file.read_exact(&mut header)?;
    let mut parsed: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header)?;
    if let Some(meta) = parsed.get_mut("__metadata__") {
        let sorted: BTreeMap<String, String> = serde_json::from_value(meta.take())?;
        *meta = serde_json::to_value(sorted)?;
    }
    let mut sorted = serde_json::to_vec(&parsed)?;
    ensure!(
        sorted.len() <= len,
        "the sorted header is longer than safetensors' ({} > {len} bytes)",
        sorted.len()
    );
    sorted.resize(len, b' ');
    file.seek(SeekFrom::Start(8))?;
    file.write_all(&sorted)?;
    Ok(())
}

/// Reads every tensor (in file order of names) and the metadata of the safetensors file `path`.
/// Accepts `F32` and `I64` tensors; other dtypes are an error naming the tensor.
///
/// Where the metadata holds [`CHECKSUMS_KEY`], every tensor's data must have the checksum stored
/// for it (and every checksum must name a tensor of the file): a mismatch is an error naming the
/// file, the tensor and both checksums. The metadata returned leaves the key out. A file without
/// the key (written before ltrain stored checksums, or by other tools) loads unchecked.
pub fn load_checkpoint(path: &Path) -> Result<(Vec<NamedTensor>, BTreeMap<String, String>)> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read checkpoint {}", path.display()))?;
    let file = SafeTensors::deserialize(&bytes).with_context(|| {
        format!(
            "{} is not a safetensors checkpoint (or it is truncated)",
            path.display()
        )
    })?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("{}: unreadable safetensors header", path.display()))?;
    let mut metadata: BTreeMap<String, String> = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut checksums = metadata
        .remove(CHECKSUMS_KEY)
        .map(|text| {
            serde_json::from_str::<BTreeMap<String, String>>(&text).with_context(|| {
                format!(
                    "{} is damaged: its metadata {CHECKSUMS_KEY} is not a JSON object of tensor \
                     checksums; restore the file from an intact copy",
                    path.display()
                )
            })
        })
        .transpose()?;
    let mut names: Vec<&str> = file.names();
    names.sort_unstable();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let view = file
            .tensor(name)
            .with_context(|| format!("{}: tensor `{name}`", path.display()))?;
        let raw = view.data();
        if let Some(checksums) = checksums.as_mut() {
            verify(path, name, raw, checksums.remove(name))?;
        }
        let data = match view.dtype() {
            Dtype::F32 => TensorData::F32(
                raw.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            ),
            Dtype::I64 => TensorData::I64(
                raw.chunks_exact(8)
                    .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                    .collect(),
            ),
            other => bail!(
                "{}: tensor `{name}` has dtype {other:?}; ltrain reads F32 and I64 \
                 (convert with `tensor.float()` in PyTorch before saving)",
                path.display()
            ),
        };
        tensors.push(NamedTensor {
            name: name.to_string(),
            shape: view.shape().to_vec(),
            data,
        });
    }
    if let Some(name) = checksums.as_ref().and_then(|c| c.keys().next()) {
        bail!(
            "{} is damaged: its metadata {CHECKSUMS_KEY} has a checksum for tensor `{name}`, which \
             the file does not hold; restore the file from an intact copy",
            path.display()
        );
    }
    Ok((tensors, metadata))
}

/// Checks the data `raw` of tensor `name` of the file `path` against its stored checksum.
fn verify(path: &Path, name: &str, raw: &[u8], stored: Option<String>) -> Result<()> {
    let Some(stored) = stored else {
        bail!(
            "{} is damaged: tensor `{name}` has no checksum in the metadata {CHECKSUMS_KEY}, which \
             ltrain writes for every tensor; restore the file from an intact copy",
            path.display()
        );
    };
    let Some(expected) = parse_checksum(&stored) else {
        bail!(
            "{}: tensor `{name}` has checksum {stored:?} in the metadata {CHECKSUMS_KEY}; this \
             ltrain reads `crc32:` and 8 hex digits (the file is damaged, or was written by a newer \
             ltrain)",
            path.display()
        );
    };
    let actual = crc32fast::hash(raw);
    if actual != expected {
        bail!(
            "{} is damaged: tensor `{name}` has checksum {CRC32_PREFIX}{actual:08x}, but it was \
             written with {CRC32_PREFIX}{expected:08x}, so its bytes changed after ltrain saved \
             them (a disk, copy or transfer error). ltrain does not load a damaged file: restore \
             it from an intact copy, or retrain the epochs it held (--init from the run's \
             model.safetensors, if intact, keeps that epoch's weights but not the optimizer \
             state)",
            path.display()
        );
    }
    Ok(())
}

/// Loads the model tensors of the checkpoint `path` into `model`, strictly (see
/// [`MultiExpertNet::load_state_dict`]; errors name the file and the tensors). Returns the
/// checkpoint's other tensors (e.g. `optimizer.*`) and its metadata.
pub fn load_model<B: Backend>(
    be: &B,
    model: &mut MultiExpertNet<B>,
    path: &Path,
) -> Result<(Vec<NamedTensor>, BTreeMap<String, String>)> {
    let (tensors, metadata) = load_checkpoint(path)?;
    model
        .load_state_dict(be, &tensors)
        .with_context(|| format!("cannot load the model from {}", path.display()))?;
    let rest = tensors
        .into_iter()
        .filter(|t| !is_model_tensor(&t.name))
        .collect();
    Ok((rest, metadata))
}
