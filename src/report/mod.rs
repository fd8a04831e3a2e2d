//! The files a run leaves for a person: `report.json` (every number), `summary.md` (a table to paste
//! into a paper), `reliability.png`, `per_class.png` and `curves.png`; and the per-epoch
//! [`EpochRecord`] that the training loop appends to `metrics.jsonl`.

mod plots;
pub mod run_record;
pub mod sweep;
pub mod tensorboard;

use crate::config::{DatasetKind, ExpertWidth, ModelKind, Schedule, TrainConfig};
use crate::method::policy;
use crate::metrics::{EvalMetrics, GroupSizes, ReliabilityBin, FEW_SHOT_BELOW, MANY_SHOT_ABOVE};
use crate::presets::PaperReference;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// One epoch of training, one line of `metrics.jsonl`. Test metrics are `None` on epochs that were not
/// evaluated (see `eval_every`); all percentages are in 0..=100.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based: the number of epochs completed (the configuration's 0-based `stage2_epoch` = s means
    /// the records with `epoch > s` are stage 2).
    pub epoch: usize,
    /// 1 or 2.
    pub stage: u8,
    pub lr: f32,
    pub train_loss: f32,
    pub top1: Option<f64>,
    pub many: Option<f64>,
    pub medium: Option<f64>,
    pub few: Option<f64>,
    pub ece: Option<f64>,
    /// Training wall time of the run so far (cumulative, evaluation excluded).
    pub seconds: f64,
    /// Of `seconds`, the time the training loop waited for the data loader (cumulative; absent in
    /// records written before it was measured).
    #[serde(default)]
    pub data_wait_seconds: f64,
}

impl EpochRecord {
    pub fn new(
        epoch: usize,
        stage: u8,
        lr: f32,
        train_loss: f32,
        seconds: f64,
        eval: Option<&EvalMetrics>,
    ) -> Self {
        Self {
            epoch,
            stage,
            lr,
            train_loss,
            top1: eval.map(|m| m.top1),
            many: eval.and_then(|m| m.many),
            medium: eval.and_then(|m| m.medium),
            few: eval.and_then(|m| m.few),
            ece: eval.map(|m| m.ece),
            seconds,
            data_wait_seconds: 0.0,
        }
    }
}

/// Appends one record as a JSON line.
pub fn append_epoch_record(path: &Path, record: &EpochRecord) -> Result<()> {
    let mut line = serde_json::to_string(record).context("serialising an epoch record")?;
    line.push('\n');
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(line.as_bytes()))
        .with_context(|| format!("cannot append to {}", path.display()))
}

/// Reads `metrics.jsonl` in epoch order. A resumed run logs again the epochs after its checkpoint, so
/// the last line of each epoch wins.
pub fn read_epoch_records(path: &Path) -> Result<Vec<EpochRecord>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the epoch history {}", path.display()))?;
    let mut by_epoch = BTreeMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let record: EpochRecord = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not an epoch record", path.display(), i + 1))?;
        by_epoch.insert(record.epoch, record);
    }
    Ok(by_epoch.into_values().collect())
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a reader
/// (or a crash) never sees a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = path.with_file_name(format!(
        ".{}.tmp{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::Error::new(e).context(format!("cannot write {}", path.display()))
    })
}

/// Everything a finished run reports.
pub struct RunSummary<'a> {
    /// Metrics of the final model on the test set.
    pub metrics: &'a EvalMetrics,
    pub history: &'a [EpochRecord],
    /// Training images per class.
    pub class_counts: &'a [usize],
    pub config: &'a TrainConfig,
    pub paper: Option<&'a PaperReference>,
    /// The device in words, e.g. "cpu (2 threads)" or "cuda: NVIDIA H200".
    pub device: &'a str,
    pub train_seconds: f64,
    /// Of `train_seconds`, the time spent waiting for the data loader.
    pub data_wait_seconds: f64,
    pub samples_per_second: f64,
}

impl RunSummary<'_> {
    /// Best test top-1 over the evaluated epochs and its epoch (the first on ties).
    fn best_top1(&self) -> Option<(f64, usize)> {
        self.history
            .iter()
            .filter_map(|r| r.top1.map(|t| (t, r.epoch)))
            .fold(None, |best, (t, e)| match best {
                Some((b, _)) if b >= t => best,
                _ => Some((t, e)),
            })
    }

    fn epochs(&self) -> usize {
        self.history.last().map_or(0, |r| r.epoch)
    }
}

#[derive(Serialize)]
struct ReportJson<'a> {
    top1: f64,
    many: Option<f64>,
    medium: Option<f64>,
    few: Option<f64>,
    ece: f64,
    per_class_top1: &'a [Option<f64>],
    class_counts: &'a [usize],
    group_sizes: GroupSizes,
    group_rule: String,
    test_samples: usize,
    reliability_bins: &'a [ReliabilityBin],
    epochs: usize,
    best_top1: Option<f64>,
    best_top1_epoch: Option<usize>,
    best_top1_note: &'static str,
    train_seconds: f64,
    data_wait_seconds: f64,
    samples_per_second: f64,
    device: &'a str,
    config: &'a TrainConfig,
    paper: Option<&'a PaperReference>,
    /// Each start and resume of the run: when, which ltrain and commit, the command, host, CPU and
    /// device (`run.json`).
    sessions: Vec<run_record::Session>,
}

/// Writes `report.json`, `summary.md` and the three plots into `dir`.
pub fn write_report(dir: &Path, run: &RunSummary) -> Result<()> {
    let m = run.metrics;
    let best = run.best_top1();
    let report = ReportJson {
        top1: m.top1,
        many: m.many,
        medium: m.medium,
        few: m.few,
        ece: m.ece,
        per_class_top1: &m.per_class_top1,
        class_counts: run.class_counts,
        group_sizes: m.group_sizes,
        group_rule: group_rule(),
        test_samples: m.samples,
        reliability_bins: &m.bins,
        epochs: run.epochs(),
        best_top1: best.map(|(t, _)| t),
        best_top1_epoch: best.map(|(_, e)| e),
        best_top1_note: "best test top-1 over the evaluated epochs (after best_top1_epoch epochs); chosen on the \
                         test set, so for reference only: the reported result is `top1`",
        train_seconds: run.train_seconds,
        data_wait_seconds: run.data_wait_seconds,
        samples_per_second: run.samples_per_second,
        device: run.device,
        config: run.config,
        paper: run.paper,
        sessions: run_record::sessions(dir)?,
    };
    let json = serde_json::to_string_pretty(&report).context("serialising report.json")?;
    write_atomic(&dir.join("report.json"), json.as_bytes())?;
    write_atomic(&dir.join("summary.md"), summary_markdown(run).as_bytes())?;
    write_atomic(
        &dir.join("reliability.png"),
        &plots::reliability_png(&m.bins, m.ece, m.samples)?,
    )?;
    write_atomic(
        &dir.join("per_class.png"),
        &plots::per_class_png(&m.per_class_top1, run.class_counts)?,
    )?;
    write_atomic(
        &dir.join("curves.png"),
        &plots::curves_png(run.history, run.config.stage2_epoch)?,
    )
}

fn group_rule() -> String {
    format!(
        "many: > {MANY_SHOT_ABOVE} training images, medium: {FEW_SHOT_BELOW}..={MANY_SHOT_ABOVE}, \
         few: < {FEW_SHOT_BELOW}; group accuracy is over the group's test samples"
    )
}

fn summary_markdown(run: &RunSummary) -> String {
    let m = run.metrics;
    let ours = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2}"));
    let theirs = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.1}"));
    let g = m.group_sizes;
    let rows = [
        (
            "Top-1 (%)".to_string(),
            Some(m.top1),
            run.paper.map(|p| p.top1),
        ),
        (
            format!("Many (%, {} classes)", g.many),
            m.many,
            run.paper.and_then(|p| p.many),
        ),
        (
            format!("Medium (%, {} classes)", g.medium),
            m.medium,
            run.paper.and_then(|p| p.medium),
        ),
        (
            format!("Few (%, {} classes)", g.few),
            m.few,
            run.paper.and_then(|p| p.few),
        ),
        (
            "ECE (%)".to_string(),
            Some(m.ece),
            run.paper.and_then(|p| p.ece),
        ),
    ];

    let title = run
        .config
        .preset
        .as_deref()
        .unwrap_or("custom configuration");
    let mut md = format!(
        "# ltrain: {title}\n\n**Setting:** {}.\n\n",
        setting_line(run.config)
    );
    if run.paper.is_some() {
        md.push_str("| Metric | ltrain | Paper |\n|---|---:|---:|\n");
    } else {
        md.push_str("| Metric | ltrain |\n|---|---:|\n");
    }
    for (name, value, paper) in rows {
        let _ = write!(md, "| {name} | {} |", ours(value));
        if run.paper.is_some() {
            let _ = write!(md, " {} |", theirs(paper));
        }
        md.push('\n');
    }
    md.push('\n');
    if let Some(p) = run.paper {
        let _ = writeln!(md, "Paper values: {}.", p.source);
    }
    let _ = writeln!(
        md,
        "Groups by training images per class: many > {MANY_SHOT_ABOVE}, medium \
         {FEW_SHOT_BELOW}–{MANY_SHOT_ABOVE}, few < {FEW_SHOT_BELOW}; accuracies over {} test \
         samples; ECE with {} equal-width bins.",
        m.samples,
        m.bins.len()
    );
    if let Some((top1, epoch)) = run.best_top1() {
        let _ = writeln!(
            md,
            "Best top-1 over epochs: {top1:.2} after {} epochs (chosen on the test set, for \
             reference only).",
            epoch
        );
    }
    let _ = writeln!(
        md,
        "Trained {} epochs in {:.0} s ({:.0} samples/s) on {}; waiting for data: {:.0} s ({:.1}%).",
        run.epochs(),
        run.train_seconds,
        run.samples_per_second,
        run.device,
        run.data_wait_seconds,
        100.0 * run.data_wait_seconds / run.train_seconds.max(1e-9)
    );
    md
}

/// The training data of a run in words, e.g. "CIFAR-100-LT (rho = 100)".
pub fn data_label(cfg: &TrainConfig) -> String {
    match cfg.dataset {
        DatasetKind::Synthetic => format!(
            "synthetic ({} classes, rho = {})",
            cfg.synthetic_classes, cfg.imbalance
        ),
        DatasetKind::Cifar10Lt | DatasetKind::Cifar100Lt => {
            let name = if cfg.dataset == DatasetKind::Cifar10Lt {
                "CIFAR-10-LT"
            } else {
                "CIFAR-100-LT"
            };
            match cfg.imbalance.ratio() {
                Some(rho) => format!("{name} (rho = {rho})"),
                None => format!("{name} (the training file as is)"),
            }
        }
        DatasetKind::ImagenetLt => "ImageNet-LT".to_string(),
    }
}

/// The network of a run in words, e.g. "ResNet-32 x 3 experts (experts 24/48 wide, reduced as in
/// RIDE, SADE and BalPoE)".
pub fn model_label(cfg: &TrainConfig) -> String {
    let experts = match cfg.experts {
        1 => "1 expert".to_string(),
        k => format!("{k} experts"),
    };
    match cfg.model {
        ModelKind::Resnet32 => match cfg.expert_width {
            ExpertWidth::Reduced => format!(
                "ResNet-32 x {experts} (experts 24/48 wide, reduced as in RIDE, SADE and BalPoE)"
            ),
            ExpertWidth::Full => format!("ResNet-32 x {experts} (experts 32/64 wide, full)"),
        },
        ModelKind::Resnet50 => format!("ResNet-50 x {experts}"),
        ModelKind::Resnext50_32x4d => format!("ResNeXt-50 (32x4d) x {experts}"),
    }
}

/// The setting of a run in one line, e.g. "CIFAR-100-LT (rho = 100), ResNet-32 x 3 experts, ...".
pub fn setting_line(cfg: &TrainConfig) -> String {
    let (data, model) = (data_label(cfg), model_label(cfg));
    let schedule = match cfg.schedule {
        Schedule::Multistep => format!("multistep x{} at {:?}", cfg.lr_decay, cfg.milestones),
        Schedule::Cosine => "cosine".to_string(),
    };
    let loss = policy(cfg.loss).label;
    let stages = match cfg.stage2_epoch {
        Some(s) => format!("stage 2 from epoch {s}"),
        None => "single stage".to_string(),
    };
    format!(
        "{data}, {model}, {} epochs, batch {}, SGD lr {} ({schedule}, {} warm-up), \
         wd {:e}, {loss} (tau {}), mixup alpha {}, {stages}",
        cfg.epochs,
        cfg.batch_size,
        cfg.lr,
        cfg.warmup_epochs,
        cfg.weight_decay,
        cfg.tau,
        cfg.mixup_alpha
    )
}
