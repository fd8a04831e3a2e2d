//! One resolved training configuration. A run is described completely by a [`TrainConfig`]: presets and
//! `--config FILE.toml` give a base, command-line flags override single fields, and the resolved value is
//! written to `DIR/config.toml` and into every checkpoint's metadata.

use crate::method::{policy, Reweighting};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// Built-in procedurally generated long-tailed set (no files needed).
    Synthetic,
    #[serde(rename = "cifar10-lt")]
    #[value(name = "cifar10-lt")]
    Cifar10Lt,
    #[serde(rename = "cifar100-lt")]
    #[value(name = "cifar100-lt")]
    Cifar100Lt,
    ImagenetLt,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Resnet32,
    Resnet50,
    #[serde(rename = "resnext50_32x4d")]
    #[value(name = "resnext50_32x4d")]
    Resnext50_32x4d,
}

/// Expert widths of ResNet-32: full (32/64 channels in layer2/layer3) or reduced (24/48, as RIDE/SADE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ExpertWidth {
    Full,
    Reduced,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// Linear warm-up, then x`lr_decay` at each milestone.
    Multistep,
    /// Linear warm-up, then cosine annealing to 0 at the last epoch.
    Cosine,
}

/// The loss family (paper Tables 1, 6, 8). All but `ce` use the logit-adjusted loss (Eq. 7); the
/// reweighting of `la-*` starts at `reweight_epoch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// Plain softmax cross-entropy.
    Ce,
    /// Logit adjustment only.
    La,
    /// LA + inverse class frequency weights.
    LaRw,
    /// LA + class-balanced weights (effective number, `cb_beta`).
    LaCb,
    /// LA + focal loss (`gamma`).
    LaFl,
    /// LA + sample logit-aware reweighting (the paper's method).
    LaSla,
}

impl LossKind {
    /// The `--loss` spelling.
    pub fn cli_name(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }
}

/// How the per-class cos-max table S of SLA is refreshed (the paper leaves it open).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SlaTableRule {
    /// Weights use the table of the previous epoch while the next one is accumulated.
    Epoch,
    /// The table is updated in place, batch by batch, within the epoch.
    Running,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceKind {
    Cpu,
    Cuda,
    /// CUDA when a usable GPU is found, otherwise the CPU (with a one-line notice).
    Auto,
    /// The CUDA backend on its CPU emulator: the GPU's kernels and device work without a GPU (slow;
    /// for checking and counting, not for training).
    CudaEmulated,
}

/// Whether training steps run as captured CUDA graphs (`--cuda-graphs`). The results are the same
/// either way; graphs only cut the host's work per step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CudaGraphs {
    /// On a GPU, off elsewhere (on the emulator a replay saves nothing).
    #[default]
    Auto,
    On,
    Off,
}

impl CudaGraphs {
    /// Whether steps on `be` use graphs; `On` where the backend has none is an error naming the
    /// flag.
    pub fn enabled<B: crate::backend::Backend>(self, be: &B) -> anyhow::Result<bool> {
        match self {
            CudaGraphs::Auto => Ok(be.prefers_graphs()),
            CudaGraphs::On if !be.supports_graphs() => anyhow::bail!(
                "--cuda-graphs on: the {} backend has no CUDA graphs (use --device cuda or \
                 cuda-emulated, or --cuda-graphs off)",
                be.name()
            ),
            CudaGraphs::On => Ok(true),
            CudaGraphs::Off => Ok(false),
        }
    }
}

/// An optional epoch whose default is not `None`, in TOML: a number, or `"none"` (TOML has no null,
/// and an absent key takes the default).
mod epoch_or_none {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<usize>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(e) => s.serialize_u64(*e as u64),
            None => s.serialize_str("none"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Epoch(usize),
            Word(String),
        }
        match Raw::deserialize(d)? {
            Raw::Epoch(e) => Ok(Some(e)),
            Raw::Word(w) if w == "none" => Ok(None),
            Raw::Word(w) => Err(serde::de::Error::custom(format!(
                "`{w}`: give an epoch number or \"none\" (single stage)"
            ))),
        }
    }
}

/// How the long-tailed training set is made from the training data.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Imbalance {
    /// Cut to the profile `n_c = n_max * rho^(-c / (C - 1))` (the LDAM-DRW protocol).
    Ratio(f64),
    /// The training data as it is (`"none"` in TOML and on the command line).
    AsIs,
}

impl Imbalance {
    /// The ratio to cut to, if any.
    pub fn ratio(self) -> Option<f64> {
        match self {
            Imbalance::Ratio(rho) => Some(rho),
            Imbalance::AsIs => None,
        }
    }
}

impl std::fmt::Display for Imbalance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Imbalance::Ratio(rho) => write!(f, "{rho}"),
            Imbalance::AsIs => write!(f, "none"),
        }
    }
}

impl std::str::FromStr for Imbalance {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" | "as-is" => Ok(Imbalance::AsIs),
            _ => s.parse().map(Imbalance::Ratio).map_err(|_| {
                format!("`{s}` is neither a ratio (e.g. 100) nor `none` (the file as it is)")
            }),
        }
    }
}

/// A number in TOML, or the string `"none"`.
impl Serialize for Imbalance {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Imbalance::Ratio(rho) => s.serialize_f64(*rho),
            Imbalance::AsIs => s.serialize_str("none"),
        }
    }
}

impl<'de> Deserialize<'de> for Imbalance {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Imbalance;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a ratio (e.g. 100) or \"none\" (the training file as it is)")
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<Imbalance, E> {
                Ok(Imbalance::Ratio(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Imbalance, E> {
                Ok(Imbalance::Ratio(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Imbalance, E> {
                Ok(Imbalance::Ratio(v as f64))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Imbalance, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Name of the preset this configuration started from, if any.
    pub preset: Option<String>,

    // ---- data ----
    pub dataset: DatasetKind,
    /// CIFAR: a `cifar-10-batches-bin` / `cifar-100-binary` directory or the official `.tar.gz`;
    /// ImageNet-LT: the image root.
    pub data_dir: Option<PathBuf>,
    /// CIFAR record file for training (e.g. `train_lt_r10.bin`); overrides `data_dir` for training.
    pub train_file: Option<PathBuf>,
    /// CIFAR record file for testing (e.g. `test.bin`).
    pub test_file: Option<PathBuf>,
    /// ImageNet-LT list files (`relative/path.JPEG label` per line).
    pub train_list: Option<PathBuf>,
    pub test_list: Option<PathBuf>,
    /// Imbalance ratio rho = n_max / n_min of the long-tailed training set, or `"none"`: the
    /// training file as it is (an LT subset made elsewhere, with its own profile).
    pub imbalance: Imbalance,
    /// Synthetic set: images of the most frequent class, test images per class, classes.
    pub synthetic_max_per_class: usize,
    pub synthetic_test_per_class: usize,
    pub synthetic_classes: usize,
    /// ImageNet-LT training / evaluation resolution (224 in the paper).
    pub image_size: usize,
    /// ImageNet-LT: skip unreadable images with a warning instead of failing.
    pub skip_bad_images: bool,

    // ---- model ----
    pub model: ModelKind,
    pub experts: usize,
    pub expert_width: ExpertWidth,

    // ---- optimisation ----
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub momentum: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
    pub warmup_epochs: usize,
    pub schedule: Schedule,
    /// Multistep milestones (epochs) and factor.
    pub milestones: Vec<usize>,
    pub lr_decay: f32,
    pub seed: u64,

    // ---- method ----
    pub loss: LossKind,
    /// Logit-adjustment scale (Menon et al.'s tau; the paper's Eq. 7 uses 1).
    pub la_tau: f32,
    /// SLA temperature tau of paper Eq. 12 (Table 7 varies 1/tau).
    pub tau: f32,
    /// Exponent gamma of (1 - p)^gamma in SLA (Eq. 12) and in the focal loss.
    pub gamma: f32,
    /// Class-balanced loss beta (effective number of samples).
    pub cb_beta: f64,
    /// First epoch (0-based) of stage 2: no augmentation, no mixup. `None` = single stage
    /// (`"none"` in TOML: an absent key means the default).
    #[serde(with = "epoch_or_none")]
    pub stage2_epoch: Option<usize>,
    /// First epoch (0-based) at which the reweighting of `la-*` losses applies (default: stage 2).
    pub reweight_epoch: Option<usize>,
    /// Mixup Beta(alpha, alpha) in stage 1; 0 disables mixup.
    pub mixup_alpha: f32,
    /// Per-expert augmentation levels in stage 1 (off: every expert sees the plain image).
    pub augment: bool,
    pub sla_table_rule: SlaTableRule,
    /// Divide the weighted loss by the batch's summed weight instead of the batch size.
    pub normalize_weights: bool,
    /// Expert loss weights eps_k of Eq. 18 (empty = all 1).
    pub expert_loss_weights: Vec<f32>,

    // ---- running ----
    pub device: DeviceKind,
    /// CPU threads (0 = all cores).
    pub threads: usize,
    /// Evaluate every k epochs (the last epoch is always evaluated).
    pub eval_every: usize,
    /// cuBLAS may use TF32 tensor cores for fp32 GEMMs.
    pub tf32: bool,
    /// Data-parallel runs: batch-norm statistics over every rank's batch (PyTorch's
    /// `SyncBatchNorm`) instead of each rank's own (DistributedDataParallel's default).
    pub sync_bn: bool,
}

impl Default for TrainConfig {
    /// The built-in default: a three-expert ResNet-32 (reduced-width experts) on the synthetic set
    /// (740 training images, rho 100), sized to finish in under five minutes on two CPU cores, with
    /// the paper's method (two stages, LA, SLA, mixup) and its schedule shape (switch and first decay
    /// at 80%, second decay at 90% of the epochs). The paper's own settings are the presets.
    fn default() -> Self {
        Self {
            preset: None,
            dataset: DatasetKind::Synthetic,
            data_dir: None,
            train_file: None,
            test_file: None,
            train_list: None,
            test_list: None,
            imbalance: Imbalance::Ratio(100.0),
            synthetic_max_per_class: 300,
            synthetic_test_per_class: 50,
            synthetic_classes: 10,
            image_size: 224,
            skip_bad_images: false,
            model: ModelKind::Resnet32,
            experts: 3,
            expert_width: ExpertWidth::Reduced,
            epochs: 10,
            batch_size: 32,
            lr: 0.05,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
            warmup_epochs: 1,
            schedule: Schedule::Multistep,
            milestones: vec![8, 9],
            lr_decay: 0.1,
            seed: 0,
            loss: LossKind::LaSla,
            la_tau: 1.0,
            tau: 1.0,
            gamma: 1.0,
            cb_beta: 0.9999,
            stage2_epoch: Some(8),
            reweight_epoch: None,
            mixup_alpha: 0.2,
            augment: true,
            sla_table_rule: SlaTableRule::Epoch,
            normalize_weights: false,
            expert_loss_weights: Vec::new(),
            device: DeviceKind::Cpu,
            threads: 0,
            eval_every: 1,
            tf32: true,
            sync_bn: false,
        }
    }
}

/// Images a batch needs on every rank: batch norm normalises over them (a batch of one has no
/// variance). Smaller batches are refused; an epoch's last batch with fewer is left out.
pub const MIN_SAMPLES_PER_RANK: usize = 2;

/// How [`TrainConfig::change_length`] changed a resumed run's schedule.
#[derive(Debug, PartialEq)]
pub enum LengthChange {
    /// The length is the run's own.
    Same,
    /// The schedule holds for the new length as it is.
    Kept,
    /// The schedule could not be kept (`why`); the events still ahead moved (`moved`: `key a -> b`).
    Rederived { moved: Vec<String>, why: String },
}

/// Epoch `e` of a schedule for `from` epochs, moved to one for `to` (rounded to the nearest).
fn rescaled_epoch(e: usize, from: usize, to: usize) -> usize {
    let from = from.max(1);
    (e * to + from / 2) / from
}

fn show_epoch(e: Option<usize>) -> String {
    e.map_or("none".to_string(), |e| e.to_string())
}

impl TrainConfig {
    /// Parses a TOML configuration; unknown keys are errors (a typo must not be silently ignored).
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self> {
        let cfg: TrainConfig = toml::from_str(text).with_context(|| {
            format!("{origin}: not a valid ltrain configuration (see `ltrain train --help` for the keys)")
        })?;
        Ok(cfg)
    }

    /// Applies the keys of a TOML document over `self` (keys it does not name keep their value), so
    /// defaults, a preset and a config file layer in that order.
    pub fn overlay_toml(&self, text: &str, origin: &str) -> Result<Self> {
        let overrides: toml::Table =
            toml::from_str(text).with_context(|| format!("{origin}: not valid TOML"))?;
        let base = toml::Table::try_from(self).context("serialising the configuration")?;
        let mut merged = base.clone();
        merged.extend(overrides.clone());
        merged.try_into().map_err(|e: toml::de::Error| {
            // The merged table has no positions: find the key that fails on its own, and its line.
            let culprit = overrides.keys().find(|key| {
                let mut one = base.clone();
                one.insert((*key).clone(), overrides[*key].clone());
                one.try_into::<TrainConfig>().is_err()
            });
            let at = culprit.map_or(String::new(), |key| {
                let line = text.lines().position(|l| {
                    l.trim_start()
                        .strip_prefix(key.as_str())
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
                });
                match line {
                    Some(i) => format!(":{}: key `{key}`", i + 1),
                    None => format!(": key `{key}`"),
                }
            });
            anyhow::anyhow!(
                "{origin}{at}: not a valid ltrain configuration: {} (see `ltrain train --help` and \
                 the README for the keys)",
                e.message().trim_end()
            )
        })
    }

    /// Loads a configuration file over the built-in defaults.
    pub fn load(path: &Path) -> Result<Self> {
        Self::default().overlay_file(path)
    }

    /// Applies a configuration file over `self`.
    pub fn overlay_file(&self, path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read config file {}: check the path given to --config",
                path.display()
            )
        })?;
        self.overlay_toml(&text, &path.display().to_string())
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("serialising the configuration to TOML")
    }

    /// The epoch from which stage-2 reweighting applies, if the loss reweights at all.
    pub fn reweight_start(&self) -> Option<usize> {
        if policy(self.loss).reweighting == Reweighting::None {
            return None;
        }
        self.reweight_epoch.or(self.stage2_epoch).or(Some(0))
    }

    /// Whether `epoch` (0-based) belongs to stage 2 (no augmentation, no mixup).
    pub fn in_stage2(&self, epoch: usize) -> bool {
        self.stage2_epoch.is_some_and(|s| epoch >= s)
    }

    /// eps_k of Eq. 18 for expert k.
    pub fn expert_loss_weight(&self, k: usize) -> f32 {
        self.expert_loss_weights.get(k).copied().unwrap_or(1.0)
    }

    /// Checks ranges and combinations; every message names the offending key/flag.
    /// Sets the run length to `epochs`, moving the epoch-valued schedule keys with it in proportion,
    /// rounded to the nearest epoch, so that a shorter run keeps the shape of the longer one: the
    /// stage switch stays within the run with at least one epoch of stage 1 (a one-epoch run drops
    /// it and is stage 1 only, its reweighting past the end) and the reweighting does not start
    /// before it; no milestone lands on epoch 0 (a decay before the first step). Returns what moved, as `key: from -> to`.
    pub fn rescale_epochs(&mut self, epochs: usize) -> Vec<(&'static str, String, String)> {
        let old = self.epochs;
        let scale = |e: usize| rescaled_epoch(e, old, epochs);
        let mut moved = Vec::new();
        let mut note = |key, from: String, to: String| {
            if from != to {
                moved.push((key, from, to));
            }
        };
        let shown = |e: Option<usize>| e.map_or("none".to_string(), |e| e.to_string());
        let warmup = scale(self.warmup_epochs);
        note(
            "warmup_epochs",
            self.warmup_epochs.to_string(),
            warmup.to_string(),
        );
        let stage2 = match self.stage2_epoch {
            Some(_) if epochs < 2 => None,
            s => s.map(|s| scale(s).clamp(1, epochs - 1)),
        };
        note("stage2_epoch", shown(self.stage2_epoch), shown(stage2));
        let reweight = match (self.reweight_epoch, stage2) {
            (Some(r), Some(s2)) if self.stage2_epoch.is_some_and(|s| r >= s) => {
                Some(scale(r).max(s2))
            }
            // No stage 2 in a run this short: a reweighting meant for it would start at once
            // (with stage 1's mixup); it is put past the run's end instead.
            (_, None) if self.stage2_epoch.is_some() => Some(epochs),
            (r, _) => r.map(|r| scale(r).max(1)),
        };
        note(
            "reweight_epoch",
            shown(self.reweight_epoch),
            shown(reweight),
        );
        let mut milestones: Vec<usize> = self.milestones.iter().map(|&m| scale(m).max(1)).collect();
        milestones.dedup();
        note(
            "milestones",
            format!("{:?}", self.milestones),
            format!("{milestones:?}"),
        );
        self.warmup_epochs = warmup;
        self.stage2_epoch = stage2;
        self.reweight_epoch = reweight;
        self.milestones = milestones;
        self.epochs = epochs;
        moved
    }

    /// Gives a run that has trained `done` epochs a new length, `epochs` (`--resume DIR --epochs N`).
    /// The schedule is kept when it is still valid: the added epochs continue at the last learning
    /// rate and stage, as the run left them. Otherwise the events still ahead of the run (the stage
    /// switch, the reweighting's start, milestones after `done`) are rescaled as `--epochs` rescales a
    /// new run's, and those passed stay, so the trained epochs keep the schedule they had. One rule
    /// for the command line and for the resume check.
    pub fn change_length(&mut self, epochs: usize, done: usize) -> Result<LengthChange> {
        if epochs == self.epochs {
            return Ok(LengthChange::Same);
        }
        if epochs < done {
            bail!(
                "--epochs {epochs}: the run has already trained {done} epochs (a resumed run can be \
                 extended, not shortened; evaluate an earlier checkpoint instead)"
            );
        }
        let mut kept = self.clone();
        kept.epochs = epochs;
        let Err(why) = kept.validate() else {
            *self = kept;
            return Ok(LengthChange::Kept);
        };
        let mut scaled = self.clone();
        scaled.rescale_epochs(epochs);
        let ahead = |old: Option<usize>, new: Option<usize>| match old {
            Some(e) if e < done => old,
            _ => new.map(|n| n.max(done)),
        };
        let mut next = self.clone();
        next.epochs = epochs;
        next.stage2_epoch = ahead(self.stage2_epoch, scaled.stage2_epoch);
        next.reweight_epoch = ahead(self.reweight_epoch, scaled.reweight_epoch);
        // Milestone m lowers the rate from epoch m (0-based) on: passed once m < done. Paired by
        // position with its rescaled self (rescaling keeps the order).
        next.milestones = self
            .milestones
            .iter()
            .map(|&m| match m < done {
                true => m,
                false => rescaled_epoch(m, self.epochs, epochs).max(done),
            })
            .collect();
        next.milestones.dedup();
        next.validate().with_context(|| {
            format!("--epochs {epochs}: the schedule cannot be kept ({why:#}) nor re-derived")
        })?;
        let moved = [
            (
                "stage2_epoch",
                show_epoch(self.stage2_epoch),
                show_epoch(next.stage2_epoch),
            ),
            (
                "reweight_epoch",
                show_epoch(self.reweight_epoch),
                show_epoch(next.reweight_epoch),
            ),
            (
                "milestones",
                format!("{:?}", self.milestones),
                format!("{:?}", next.milestones),
            ),
        ]
        .into_iter()
        .filter(|(_, from, to)| from != to)
        .map(|(key, from, to)| format!("{key} {from} -> {to}"))
        .collect();
        *self = next;
        Ok(LengthChange::Rederived {
            moved,
            why: format!("{why:#}"),
        })
    }

    pub fn validate(&self) -> Result<()> {
        if self.experts == 0 {
            bail!("experts must be at least 1 (--experts)");
        }
        if self.epochs == 0 {
            bail!("epochs must be at least 1 (--epochs)");
        }
        if self.batch_size < MIN_SAMPLES_PER_RANK {
            bail!(
                "batch_size must be at least {MIN_SAMPLES_PER_RANK} (--batch-size {}): batch norm \
                 normalises over the batch, and one image has no variance to train with",
                self.batch_size
            );
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("lr must be a positive number (--lr), got {}", self.lr);
        }
        if !(0.0..1.0).contains(&self.momentum) {
            bail!(
                "momentum must be in [0, 1) (--momentum), got {}",
                self.momentum
            );
        }
        if self.nesterov && self.momentum == 0.0 {
            bail!("nesterov needs a non-zero momentum (--nesterov with --momentum > 0)");
        }
        if self.weight_decay < 0.0 {
            bail!("weight_decay must be >= 0 (--weight-decay)");
        }
        match self.imbalance {
            Imbalance::Ratio(rho) if !(rho >= 1.0 && rho.is_finite()) => {
                bail!("imbalance must be a ratio >= 1 or none (--imbalance), got {rho}")
            }
            Imbalance::AsIs if self.dataset == DatasetKind::Synthetic => bail!(
                "--imbalance none keeps a training file's own profile; the synthetic set is drawn \
                 with a ratio (give one, e.g. --imbalance 100)"
            ),
            _ => {}
        }
        if self.mixup_alpha < 0.0 {
            bail!("mixup_alpha must be >= 0 (--mixup-alpha; 0 disables mixup)");
        }
        if self.eval_every == 0 {
            bail!("eval_every must be at least 1 (--eval-every)");
        }
        if !(0.0..1.0).contains(&self.cb_beta) {
            bail!("cb_beta must be in [0, 1) (--cb-beta)");
        }
        if self.lr_decay <= 0.0 {
            bail!("lr_decay must be positive (--lr-decay)");
        }
        if let Some(s) = self.stage2_epoch {
            if s > self.epochs {
                bail!(
                    "stage2_epoch {s} is after the last epoch {} (--stage2-epoch)",
                    self.epochs
                );
            }
        }
        if policy(self.loss).reweighting.rules().single_targets_only && self.mixup_alpha > 0.0 {
            let start = self.reweight_start().unwrap_or(0);
            // (A reweighting that starts after the last epoch never meets mixup.)
            if start < self.epochs && self.stage2_epoch.is_none_or(|s| start < s) {
                bail!(
                    "--loss {} weights each sample by its own probability, which mixed (mixup) targets do \
                     not have: the reweighting starts at epoch {start} while mixup is still on; use \
                     --no-mixup, or a --reweight-epoch at or after --stage2-epoch",
                    self.loss.cli_name()
                );
            }
        }
        if !self.expert_loss_weights.is_empty() && self.expert_loss_weights.len() != self.experts {
            bail!(
                "expert_loss_weights has {} values for {} experts",
                self.expert_loss_weights.len(),
                self.experts
            );
        }
        if self.dataset == DatasetKind::Synthetic && self.synthetic_classes < 2 {
            bail!("synthetic_classes must be at least 2");
        }
        if self.model == ModelKind::Resnet32 && self.dataset == DatasetKind::ImagenetLt {
            bail!("--model resnet32 is a CIFAR network; use resnet50 or resnext50_32x4d for imagenet-lt");
        }
        if self.dataset == DatasetKind::ImagenetLt {
            for (name, v) in [
                ("--data-dir", &self.data_dir),
                ("--train-list", &self.train_list),
                ("--test-list", &self.test_list),
            ] {
                if v.is_none() {
                    bail!("--dataset imagenet-lt needs {name}");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_is_identity() {
        let cfg = TrainConfig {
            dataset: DatasetKind::Cifar100Lt,
            loss: LossKind::LaCb,
            milestones: vec![320, 360],
            ..TrainConfig::default()
        };
        let text = cfg.to_toml().unwrap();
        assert_eq!(TrainConfig::from_toml_str(&text, "t").unwrap(), cfg);
        // Keys whose value is "unset" but whose default is not: single stage, the file as it is.
        let cfg = TrainConfig {
            stage2_epoch: None,
            imbalance: Imbalance::AsIs,
            dataset: DatasetKind::Cifar10Lt,
            ..TrainConfig::default()
        };
        let text = cfg.to_toml().unwrap();
        assert!(text.contains("stage2_epoch = \"none\""), "{text}");
        assert_eq!(TrainConfig::from_toml_str(&text, "t").unwrap(), cfg);
    }

    #[test]
    fn shorter_runs_keep_their_shape() {
        let mut cfg = TrainConfig {
            epochs: 200,
            warmup_epochs: 5,
            stage2_epoch: Some(160),
            milestones: vec![160, 180],
            ..TrainConfig::default()
        };
        let moved = cfg.clone().rescale_epochs(10);
        assert!(moved
            .iter()
            .any(|(k, from, to)| (*k, from.as_str(), to.as_str())
                == ("milestones", "[160, 180]", "[8, 9]")));
        let mut ten = cfg.clone();
        ten.rescale_epochs(10);
        assert_eq!(
            (ten.warmup_epochs, ten.stage2_epoch, ten.milestones.clone()),
            (0, Some(8), vec![8, 9])
        );
        // 2 epochs: the switch stays inside the run after one epoch of stage 1, no milestone at 0.
        let mut two = cfg.clone();
        two.rescale_epochs(2);
        assert_eq!(
            (two.stage2_epoch, two.milestones.clone()),
            (Some(1), vec![2])
        );
        // 1 epoch: stage 1 only, the reweighting past the end, so the run is valid.
        cfg.rescale_epochs(1);
        assert_eq!(
            (cfg.stage2_epoch, cfg.reweight_epoch, cfg.milestones.clone()),
            (None, Some(1), vec![1])
        );
        cfg.validate().unwrap();
    }

    #[test]
    fn overlay_changes_only_named_keys() {
        let base = TrainConfig {
            epochs: 200,
            lr: 0.05,
            ..TrainConfig::default()
        };
        let cfg = base
            .overlay_toml("epochs = 400\nloss = \"la-fl\"\n", "x.toml")
            .unwrap();
        assert_eq!(cfg.epochs, 400);
        assert_eq!(cfg.loss, LossKind::LaFl);
        assert_eq!(cfg.lr, 0.05);
    }

    #[test]
    fn unknown_or_mistyped_keys_are_errors_naming_the_origin() {
        let err = TrainConfig::default()
            .overlay_toml("epoch = 3\n", "my.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("my.toml") && err.contains("epoch"), "{err}");
        let err = TrainConfig::default()
            .overlay_toml("loss = \"bogus\"\n", "my.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("my.toml"), "{err}");
    }

    #[test]
    fn validation_names_the_flag() {
        let cfg = TrainConfig {
            stage2_epoch: Some(50),
            epochs: 10,
            ..TrainConfig::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--stage2-epoch"));
        let cfg = TrainConfig {
            batch_size: 0,
            ..TrainConfig::default()
        };
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--batch-size"));
        TrainConfig::default().validate().unwrap();
    }

    #[test]
    fn sample_weights_cannot_meet_mixup() {
        let single = TrainConfig {
            stage2_epoch: None,
            ..TrainConfig::default()
        };
        let err = single.validate().unwrap_err().to_string();
        assert!(err.contains("--no-mixup"), "{err}");
        TrainConfig {
            mixup_alpha: 0.0,
            ..single.clone()
        }
        .validate()
        .unwrap();
        TrainConfig {
            loss: LossKind::LaCb,
            ..single
        }
        .validate()
        .unwrap();
        let early = TrainConfig {
            reweight_epoch: Some(3),
            ..TrainConfig::default()
        };
        assert!(early.validate().is_err());
    }

    fn paper_run() -> TrainConfig {
        TrainConfig {
            epochs: 200,
            stage2_epoch: Some(160),
            reweight_epoch: None,
            milestones: vec![160, 180],
            warmup_epochs: 5,
            ..TrainConfig::default()
        }
    }

    #[test]
    fn a_finished_run_extended_keeps_its_schedule() {
        let mut cfg = paper_run();
        assert_eq!(cfg.change_length(400, 200).unwrap(), LengthChange::Kept);
        assert_eq!(cfg.epochs, 400);
        assert_eq!(cfg.stage2_epoch, Some(160));
        assert_eq!(cfg.milestones, vec![160, 180]);
        let mut same = paper_run();
        assert_eq!(same.change_length(200, 120).unwrap(), LengthChange::Same);
        assert_eq!(same, paper_run());
    }

    #[test]
    fn a_schedule_that_cannot_be_kept_moves_only_what_is_still_ahead() {
        // Single stage, the reweighting put past the end: longer, it would start under mixup.
        let mut cfg = TrainConfig {
            epochs: 10,
            stage2_epoch: None,
            reweight_epoch: Some(10),
            milestones: vec![3, 8],
            warmup_epochs: 1,
            mixup_alpha: 0.2,
            loss: LossKind::LaSla,
            ..TrainConfig::default()
        };
        cfg.validate().unwrap();
        let LengthChange::Rederived { moved, why } = cfg.change_length(20, 5).unwrap() else {
            panic!("the schedule cannot be kept");
        };
        assert!(why.contains("mixup"), "{why}");
        // Milestone 3 was passed (epochs 3 and 4 trained at its rate); 8 is ahead and moves to 16.
        assert_eq!(cfg.milestones, vec![3, 16]);
        assert_eq!(cfg.reweight_epoch, Some(20));
        assert_eq!(cfg.warmup_epochs, 1);
        assert_eq!(
            moved,
            vec![
                "reweight_epoch 10 -> 20".to_string(),
                "milestones [3, 8] -> [3, 16]".to_string()
            ]
        );
        cfg.validate().unwrap();
    }

    #[test]
    fn a_resumed_run_is_not_shortened_below_what_it_trained() {
        let err = paper_run().change_length(100, 150).unwrap_err().to_string();
        assert!(
            err.contains("--epochs 100") && err.contains("150 epochs"),
            "{err}"
        );
    }
}
