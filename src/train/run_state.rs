//! The run directory's format and what carries a run across a kill: the files of a run, the
//! checkpoint (model tensors under PyTorch's names, momentum buffers under `optimizer.`, the SLA
//! tables under `sla.`, the progress as metadata) and the resume that restores all of it, so that a
//! resumed run gives the result of an uninterrupted one.

use super::checkpoint::{load_checkpoint, save_checkpoint};
use crate::backend::Backend;
use crate::config::TrainConfig;
use crate::method::SlaTable;
use crate::model::MultiExpertNet;
use crate::nn::{NamedTensor, Param, TensorData};
use crate::report::EpochRecord;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// File names inside a run directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The weights alone (PyTorch's `state_dict()`, no optimizer or SLA state), beside the checkpoint.
pub const MODEL_FILE: &str = "model.safetensors";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CONFIG_FILE: &str = "config.toml";

/// Checkpoint metadata keys.
const META_CONFIG: &str = "ltrain.config";
const META_EPOCHS_DONE: &str = "ltrain.epochs_completed";
const META_HISTORY: &str = "ltrain.history";
const META_SLA_FILLED: &str = "ltrain.sla_filled";
const META_TRAIN_SECONDS: &str = "ltrain.train_seconds";
const META_DATA_WAIT_SECONDS: &str = "ltrain.data_wait_seconds";
const META_SAMPLES_SEEN: &str = "ltrain.samples_seen";
const META_CLASS_COUNTS: &str = "ltrain.class_counts";
const META_WORLD_SIZE: &str = "ltrain.world_size";
const META_STEPS_DONE: &str = "ltrain.steps_done";
const META_EPOCH_LOSS_SUM: &str = "ltrain.epoch_loss_sum";

/// Configuration keys a resumed run may change: how and how long it runs, not what it trains.
pub const RESUMABLE_CHANGES: [&str; 4] = ["epochs", "device", "threads", "eval_every"];

/// Training progress carried across a resume.
pub struct RunState {
    /// Epochs completed.
    pub epochs_done: usize,
    /// The evaluated epochs so far.
    pub history: Vec<EpochRecord>,
    /// Whether the SLA tables have had their filling pass.
    pub sla_filled: bool,
    pub train_seconds: f64,
    /// Of `train_seconds`, the time the loop waited for the data loader.
    pub data_wait_seconds: f64,
    pub samples_seen: u64,
    /// Ranks the run trains on (a resumed run needs as many).
    pub world_size: usize,
    /// Steps of epoch `epochs_done` already trained: 0 at an epoch boundary, more in the
    /// checkpoint of a run stopped between two steps.
    pub steps_done: usize,
    /// The summed loss of those steps (the epoch's mean training loss goes on from it).
    pub epoch_loss_sum: f32,
}

impl Default for RunState {
    fn default() -> Self {
        Self {
            epochs_done: 0,
            history: Vec::new(),
            sla_filled: false,
            train_seconds: 0.0,
            data_wait_seconds: 0.0,
            samples_seen: 0,
            world_size: 1,
            steps_done: 0,
            epoch_loss_sum: 0.0,
        }
    }
}

/// Writes the checkpoint of the run so far and, beside it, the weights alone ([`MODEL_FILE`]),
/// each atomically.
pub fn persist<B: Backend>(
    be: &B,
    cfg: &TrainConfig,
    path: &Path,
    model: &MultiExpertNet<B>,
    sla_tables: &[SlaTable<B>],
    state: &RunState,
    class_counts: &[usize],
) -> Result<()> {
    let mut tensors = model.state_dict(be)?;
    // The configuration and class counts let `ltrain eval` evaluate the weights alone (the many /
    // medium / few split follows from the counts).
    let weights_meta = BTreeMap::from([
        (META_CONFIG.to_string(), cfg.to_toml()?),
        (
            META_CLASS_COUNTS.to_string(),
            serde_json::to_string(class_counts)?,
        ),
    ]);
    save_checkpoint(&path.with_file_name(MODEL_FILE), &tensors, &weights_meta)?;
    for p in model.params() {
        if let Some(v) = &p.velocity {
            tensors.push(NamedTensor {
                name: format!("optimizer.{}.momentum_buffer", p.name),
                shape: p.shape.clone(),
                data: TensorData::F32(be.download(v)?),
            });
        }
    }
    for (k, t) in sla_tables.iter().enumerate() {
        let (cl, cc) = t.current(be)?;
        let (nl, nc) = t.pending(be)?;
        for (part, values) in [
            ("current_logit", cl),
            ("current_cos", cc),
            ("pending_logit", nl),
            ("pending_cos", nc),
        ] {
            tensors.push(NamedTensor {
                name: format!("sla.{k}.{part}"),
                shape: vec![values.len()],
                data: TensorData::F32(values),
            });
        }
    }
    let mut meta = BTreeMap::new();
    meta.insert(META_CONFIG.to_string(), cfg.to_toml()?);
    meta.insert(META_EPOCHS_DONE.to_string(), state.epochs_done.to_string());
    meta.insert(
        META_HISTORY.to_string(),
        serde_json::to_string(&state.history)?,
    );
    meta.insert(META_SLA_FILLED.to_string(), state.sla_filled.to_string());
    meta.insert(
        META_TRAIN_SECONDS.to_string(),
        state.train_seconds.to_string(),
    );
    meta.insert(
        META_DATA_WAIT_SECONDS.to_string(),
        state.data_wait_seconds.to_string(),
    );
    meta.insert(
        META_SAMPLES_SEEN.to_string(),
        state.samples_seen.to_string(),
    );
    meta.insert(
        META_CLASS_COUNTS.to_string(),
        serde_json::to_string(class_counts)?,
    );
    meta.insert(META_WORLD_SIZE.to_string(), state.world_size.to_string());
    meta.insert(META_STEPS_DONE.to_string(), state.steps_done.to_string());
    // Rust prints the shortest decimal that reads back as the same f32: the resume is bit-exact.
    meta.insert(
        META_EPOCH_LOSS_SUM.to_string(),
        state.epoch_loss_sum.to_string(),
    );
    save_checkpoint(path, &tensors, &meta)
}

/// Restores the model, momentum buffers and SLA tables from `path` and returns the progress, once
/// [`check_same_run`] has found `cfg` and `class_counts` to be the checkpoint's.
pub fn restore<B: Backend>(
    be: &B,
    path: &Path,
    cfg: &TrainConfig,
    class_counts: &[usize],
    model: &mut MultiExpertNet<B>,
    sla_tables: &mut [SlaTable<B>],
) -> Result<RunState> {
    let (tensors, meta) = load_checkpoint(path)?;
    check_same_run(path, &meta, cfg, class_counts)?;
    let (model_tensors, extra): (Vec<NamedTensor>, Vec<NamedTensor>) = tensors
        .into_iter()
        .partition(|t| !t.name.starts_with("optimizer.") && !t.name.starts_with("sla."));
    model
        .load_state_dict(be, &model_tensors)
        .with_context(|| format!("resuming from {}", path.display()))?;
    let extra: BTreeMap<String, NamedTensor> =
        extra.into_iter().map(|t| (t.name.clone(), t)).collect();
    let f32_of = |name: &str| -> Result<Vec<f32>> {
        match extra.get(name).map(|t| &t.data) {
            Some(TensorData::F32(v)) => Ok(v.clone()),
            _ => bail!(
                "{}: the checkpoint has no f32 tensor {name}; it was not written by `ltrain train`, \
                 use --init to start from its weights instead",
                path.display()
            ),
        }
    };
    let momentum_name = |p: &Param<B>| format!("optimizer.{}.momentum_buffer", p.name);
    let (mut params, store) = model.params_and_store_mut();
    if params.iter().any(|p| extra.contains_key(&momentum_name(p))) {
        store.ensure_velocity(be, &mut params)?;
        for p in params {
            let name = momentum_name(p);
            if extra.contains_key(&name) {
                let velocity = p.velocity.as_mut().expect("created above");
                be.write(velocity, &f32_of(&name)?)
                    .with_context(|| format!("{}: tensor {name}", path.display()))?;
            }
        }
    }
    for (k, t) in sla_tables.iter_mut().enumerate() {
        let part = |p: &str| f32_of(&format!("sla.{k}.{p}"));
        let (cl, cc, nl, nc) = (
            part("current_logit")?,
            part("current_cos")?,
            part("pending_logit")?,
            part("pending_cos")?,
        );
        t.restore(be, (&cl, &cc), (&nl, &nc))?;
    }
    let get = |key: &str| -> Result<&String> {
        meta.get(key).with_context(|| {
            format!(
                "{}: checkpoint metadata lacks {key}; it was not written by `ltrain train`",
                path.display()
            )
        })
    };
    Ok(RunState {
        epochs_done: get(META_EPOCHS_DONE)?.parse()?,
        history: serde_json::from_str(get(META_HISTORY)?)?,
        sla_filled: get(META_SLA_FILLED)? == "true",
        train_seconds: get(META_TRAIN_SECONDS)?.parse()?,
        // Absent in checkpoints written before it was measured.
        data_wait_seconds: meta
            .get(META_DATA_WAIT_SECONDS)
            .map_or(Ok(0.0), |v| v.parse())?,
        samples_seen: get(META_SAMPLES_SEEN)?.parse()?,
        // Absent in checkpoints written before data-parallel runs.
        world_size: meta.get(META_WORLD_SIZE).map_or(Ok(1), |v| v.parse())?,
        // Absent in checkpoints written only at epoch boundaries.
        steps_done: meta.get(META_STEPS_DONE).map_or(Ok(0), |v| v.parse())?,
        epoch_loss_sum: meta
            .get(META_EPOCH_LOSS_SUM)
            .map_or(Ok(0.0), |v| v.parse())?,
    })
}

/// Refuses to resume the checkpoint at `path` (metadata `meta`) with another dataset, model or
/// method than it was trained with: the first configuration key that differs (other than
/// [`RESUMABLE_CHANGES`]), or training class counts other than the checkpoint's, named with both
/// values.
fn check_same_run(
    path: &Path,
    meta: &BTreeMap<String, String>,
    cfg: &TrainConfig,
    class_counts: &[usize],
) -> Result<()> {
    let origin = format!("{} (metadata)", path.display());
    let Some(saved) = meta.get(META_CONFIG) else {
        bail!(
            "{}: checkpoint metadata lacks {META_CONFIG}; it was not written by `ltrain train` \
             (use --init to start from its weights)",
            path.display()
        );
    };
    let mut saved = TrainConfig::from_toml_str(saved, &origin)?;
    // A run given another length has its schedule changed by the one rule for it.
    if let Some(done) = meta.get(META_EPOCHS_DONE) {
        let done: usize = done
            .parse()
            .with_context(|| format!("{origin}: malformed {META_EPOCHS_DONE}"))?;
        saved.change_length(cfg.epochs, done)?;
    }
    let table = |c: &TrainConfig| -> Result<toml::Table> { Ok(toml::from_str(&c.to_toml()?)?) };
    let (was, now) = (table(&saved)?, table(cfg)?);
    let keys: std::collections::BTreeSet<&String> = was.keys().chain(now.keys()).collect();
    let show = |v: Option<&toml::Value>| v.map_or("(unset)".to_string(), |v| v.to_string());
    if let Some(key) = keys
        .into_iter()
        .filter(|k| !RESUMABLE_CHANGES.contains(&k.as_str()))
        .find(|k| was.get(*k) != now.get(*k))
    {
        bail!(
            "{}: the checkpoint was trained with {key} = {} but this run has {key} = {}; a run \
             resumes with its own dataset, model and method (only {} may change): resume with \
             its config.toml, or start a new run (--init {} keeps the weights)",
            path.display(),
            show(was.get(key)),
            show(now.get(key)),
            RESUMABLE_CHANGES.join(", "),
            path.display()
        );
    }
    if let Some(text) = meta.get(META_CLASS_COUNTS) {
        let saved: Vec<usize> = serde_json::from_str(text)
            .with_context(|| format!("{}: malformed {META_CLASS_COUNTS}", path.display()))?;
        if saved != class_counts {
            bail!(
                "{}: the checkpoint was trained on {} classes of {saved:?} images; the training \
                 set now has {} classes of {class_counts:?}: resume with the checkpoint's data, \
                 or start a new run (--init {} keeps the weights)",
                path.display(),
                saved.len(),
                class_counts.len(),
                path.display()
            );
        }
    }
    Ok(())
}

/// The resolved configuration stored in a checkpoint written by `ltrain train`.
pub fn checkpoint_config(path: &Path) -> Result<TrainConfig> {
    let (_, meta) = load_checkpoint(path)?;
    let text = meta.get(META_CONFIG).with_context(|| {
        format!(
            "{}: no ltrain configuration in the checkpoint metadata",
            path.display()
        )
    })?;
    TrainConfig::from_toml_str(text, &format!("{} (metadata)", path.display()))
}

/// The epochs the checkpoint at `path` has trained, read from its header alone (what `--resume`
/// needs before it loads the run).
pub fn checkpoint_epochs_done(path: &Path) -> Result<usize> {
    use std::io::Read;
    let origin = format!("{} (metadata)", path.display());
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("cannot open the checkpoint {}", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let len = usize::try_from(u64::from_le_bytes(len)).unwrap_or(usize::MAX);
    let size = file.metadata()?.len();
    if len as u64 > size.saturating_sub(8) {
        bail!(
            "{}: not a safetensors file (header of {len} bytes)",
            path.display()
        );
    }
    let mut header = vec![0u8; len];
    file.read_exact(&mut header)?;
    let header: serde_json::Value = serde_json::from_slice(&header)
        .with_context(|| format!("{}: malformed safetensors header", path.display()))?;
    let meta = |key: &str| -> Result<&str> {
        header["__metadata__"][key].as_str().with_context(|| {
            format!(
                "{}: checkpoint metadata lacks {key}; it was not written by `ltrain train`",
                path.display()
            )
        })
    };
    meta(META_EPOCHS_DONE)?
        .parse()
        .with_context(|| format!("{origin}: malformed {META_EPOCHS_DONE}"))
}

/// The training class counts stored in a checkpoint written by `ltrain train` (the many / medium /
/// few split of an evaluation follows from them).
pub fn checkpoint_class_counts(path: &Path) -> Result<Vec<usize>> {
    let (_, meta) = load_checkpoint(path)?;
    let text = meta.get(META_CLASS_COUNTS).with_context(|| {
        format!(
            "{}: no training class counts in the checkpoint metadata (needed for the many / medium / \
             few split; a model.safetensors written before ltrain stored them): evaluate the run's \
             checkpoint.safetensors instead",
            path.display()
        )
    })?;
    serde_json::from_str(text)
        .with_context(|| format!("{}: malformed {META_CLASS_COUNTS}", path.display()))
}

/// Drops `metrics.jsonl` lines of epochs after the checkpoint (a run killed between the two writes).
pub fn truncate_metrics(path: &Path, epochs_done: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<EpochRecord>(line).is_ok_and(|r| r.epoch <= epochs_done)
        })
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    std::fs::write(path, body).with_context(|| format!("cannot rewrite {}", path.display()))
}
