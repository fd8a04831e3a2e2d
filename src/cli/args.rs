//! Command-line flags that describe a run. Every flag is optional: it overrides the single
//! configuration key it names, over `--preset` and `--config`.

use clap::Args;
use ltrain::config::{
    DatasetKind, DeviceKind, ExpertWidth, Imbalance, LossKind, ModelKind, Schedule, SlaTableRule,
    TrainConfig,
};
use std::path::PathBuf;

/// Where the data comes from (shared by `train`, `eval` and `data`).
#[derive(Args, Debug, Clone, Default)]
pub struct DataArgs {
    /// Dataset: the built-in synthetic long-tailed set, CIFAR-10/100-LT or ImageNet-LT.
    #[arg(long, value_enum)]
    pub dataset: Option<DatasetKind>,
    /// CIFAR: `cifar-10-batches-bin` / `cifar-100-binary` directory or official `.tar.gz`;
    /// ImageNet-LT: image root.
    #[arg(long, value_name = "PATH")]
    pub data_dir: Option<PathBuf>,
    /// CIFAR: fetch the official binary archive unless already there and verified (md5), into
    /// --data-dir (a directory or FILE.tar.gz) or else $XDG_CACHE_HOME/ltrain (~/.cache/ltrain),
    /// and use it as --data-dir.
    #[arg(long)]
    pub download: bool,
    /// CIFAR record file for training (e.g. train_lt_r10.bin), instead of --data-dir.
    #[arg(long, value_name = "FILE")]
    pub train_file: Option<PathBuf>,
    /// CIFAR record file for testing (e.g. test.bin), instead of --data-dir.
    #[arg(long, value_name = "FILE")]
    pub test_file: Option<PathBuf>,
    /// ImageNet-LT training list (`relative/path.JPEG label` per line).
    #[arg(long, value_name = "FILE")]
    pub train_list: Option<PathBuf>,
    /// ImageNet-LT test list.
    #[arg(long, value_name = "FILE")]
    pub test_list: Option<PathBuf>,
    /// Imbalance ratio rho = n_max / n_min of the long-tailed training set, or `none`: train on the
    /// training file as it is (its own profile and counts are reported).
    #[arg(long, value_name = "RHO|none")]
    pub imbalance: Option<Imbalance>,
    /// ImageNet-LT training/evaluation resolution.
    #[arg(long, value_name = "PX")]
    pub image_size: Option<usize>,
    /// ImageNet-LT: skip unreadable images with a warning instead of failing.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub skip_bad_images: Option<bool>,
    /// Synthetic set: training images of the most frequent class.
    #[arg(long, value_name = "N")]
    pub synthetic_max_per_class: Option<usize>,
    /// Synthetic set: test images per class.
    #[arg(long, value_name = "N")]
    pub synthetic_test_per_class: Option<usize>,
    /// Synthetic set: number of classes.
    #[arg(long, value_name = "N")]
    pub synthetic_classes: Option<usize>,
}

/// Everything else a training run can set.
#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// Network.
    #[arg(long, value_enum)]
    pub model: Option<ModelKind>,
    /// Number of experts (the paper uses 3).
    #[arg(long, value_name = "K")]
    pub experts: Option<usize>,
    /// ResNet-32 expert widths: full (32/64) or reduced (24/48).
    #[arg(long, value_enum)]
    pub expert_width: Option<ExpertWidth>,
    /// Epochs. Unless also given, the warm-up, the stage switch, the reweighting start and the
    /// milestones scale with it (e.g. 160/180 of 200 become 8/9 of 10).
    #[arg(long, value_name = "N")]
    pub epochs: Option<usize>,
    /// Images per step (per rank with several ranks; at least 2: batch norm normalises over them).
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long, value_name = "LR")]
    pub lr: Option<f32>,
    /// SGD momentum, in [0, 1) (PyTorch's SGD semantics).
    #[arg(long, value_name = "M")]
    pub momentum: Option<f32>,
    /// Nesterov momentum.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub nesterov: Option<bool>,
    /// L2 weight decay on every parameter (as `SGD(model.parameters(), weight_decay=WD)`).
    #[arg(long, value_name = "WD")]
    pub weight_decay: Option<f32>,
    /// Linear warm-up epochs.
    #[arg(long, value_name = "N")]
    pub warmup_epochs: Option<usize>,
    #[arg(long, value_enum)]
    pub schedule: Option<Schedule>,
    /// Multistep milestones (epochs), comma separated, e.g. 160,180.
    #[arg(long, value_delimiter = ',', value_name = "E,E")]
    pub milestones: Option<Vec<usize>>,
    /// Multistep decay factor.
    #[arg(long, value_name = "F")]
    pub lr_decay: Option<f32>,
    /// Seed of everything random (initialisation, shuffling, augmentation, mixup): the same seed on
    /// the same machine gives the same run, bit for bit.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Loss: ce, la, la-rw, la-cb, la-fl or la-sla (the paper's method).
    #[arg(long, value_enum)]
    pub loss: Option<LossKind>,
    /// Logit-adjustment scale (Eq. 7 uses 1).
    #[arg(long, value_name = "T")]
    pub la_tau: Option<f32>,
    /// SLA temperature tau of Eq. 12 (Table 7 varies 1/tau).
    #[arg(long, value_name = "T")]
    pub tau: Option<f32>,
    /// Exponent gamma of (1 - p)^gamma in SLA and in the focal loss.
    #[arg(long, value_name = "G")]
    pub gamma: Option<f32>,
    /// Class-balanced loss beta.
    #[arg(long, value_name = "B")]
    pub cb_beta: Option<f64>,
    /// First epoch (0-based) of stage 2 (no augmentation, no mixup, reweighting on).
    #[arg(long, value_name = "E")]
    pub stage2_epoch: Option<usize>,
    /// One stage only: augmentation and mixup throughout, no stage switch.
    #[arg(long)]
    pub single_stage: bool,
    /// First epoch (0-based) of the reweighting (default: the stage switch).
    #[arg(long, value_name = "E")]
    pub reweight_epoch: Option<usize>,
    /// Mixup Beta(alpha, alpha) in stage 1; 0 disables.
    #[arg(long, value_name = "A")]
    pub mixup_alpha: Option<f32>,
    /// Disable mixup (same as --mixup-alpha 0).
    #[arg(long)]
    pub no_mixup: bool,
    /// Disable the per-expert augmentation levels.
    #[arg(long)]
    pub no_augment: bool,
    /// How SLA's cos-max table is refreshed.
    #[arg(long, value_enum)]
    pub sla_table_rule: Option<SlaTableRule>,
    /// Divide the weighted loss by the summed weights instead of the batch size.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub normalize_weights: Option<bool>,
    /// Several ranks: batch-norm statistics over the global batch (SyncBatchNorm) instead of each
    /// rank's own.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub sync_bn: Option<bool>,
    /// Expert loss weights eps_k of Eq. 18, comma separated.
    #[arg(long, value_delimiter = ',', value_name = "W,W,W")]
    pub expert_loss_weights: Option<Vec<f32>>,
    /// Where to train: the CPU, a CUDA GPU, or auto (a GPU when one is usable).
    #[arg(long, value_enum)]
    pub device: Option<DeviceKind>,
    // Not a configuration key: which GPU this process runs on (see `super::device::choose_gpu`).
    #[arg(long, value_name = "N", help = super::device::GPU_HELP)]
    pub gpu: Option<usize>,
    /// CPU threads (0 = all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Evaluate every k epochs (the last epoch always).
    #[arg(long, value_name = "K")]
    pub eval_every: Option<usize>,
    /// Strict fp32 products on a CUDA device: cuBLAS without TF32, the convolutions on the fp32 FMA
    /// kernels instead of the TF32 tensor cores.
    #[arg(long)]
    pub no_tf32: bool,
}

macro_rules! overlay {
    ($cfg:ident, $args:ident, $($field:ident),* $(,)?) => {
        $( if let Some(v) = $args.$field.clone() { $cfg.$field = v; } )*
    };
}

impl DataArgs {
    pub fn apply(&self, cfg: &mut TrainConfig) {
        let a = self;
        overlay!(cfg, a, dataset, imbalance, image_size, skip_bad_images);
        overlay!(
            cfg,
            a,
            synthetic_max_per_class,
            synthetic_test_per_class,
            synthetic_classes
        );
        for (dst, src) in [
            (&mut cfg.data_dir, &a.data_dir),
            (&mut cfg.train_file, &a.train_file),
            (&mut cfg.test_file, &a.test_file),
            (&mut cfg.train_list, &a.train_list),
            (&mut cfg.test_list, &a.test_list),
        ] {
            if src.is_some() {
                dst.clone_from(src);
            }
        }
    }
}

impl RunArgs {
    /// Overlays the flags; returns one line saying how `--epochs` moved the schedule keys no flag
    /// sets, if it moved any.
    pub fn apply(&self, cfg: &mut TrainConfig) -> Option<String> {
        let a = self;
        let from = cfg.epochs;
        let moved = a.epochs.map(|e| cfg.rescale_epochs(e)).unwrap_or_default();
        overlay!(
            cfg,
            a,
            model,
            experts,
            expert_width,
            epochs,
            batch_size,
            lr,
            momentum,
            nesterov
        );
        overlay!(
            cfg,
            a,
            weight_decay,
            warmup_epochs,
            schedule,
            milestones,
            lr_decay,
            seed,
            loss
        );
        overlay!(
            cfg,
            a,
            la_tau,
            tau,
            gamma,
            cb_beta,
            mixup_alpha,
            sla_table_rule
        );
        overlay!(
            cfg,
            a,
            normalize_weights,
            sync_bn,
            expert_loss_weights,
            device,
            threads,
            eval_every
        );
        if let Some(e) = a.stage2_epoch {
            cfg.stage2_epoch = Some(e);
        }
        if let Some(e) = a.reweight_epoch {
            cfg.reweight_epoch = Some(e);
        }
        if a.single_stage {
            cfg.stage2_epoch = None;
        }
        if a.no_mixup {
            cfg.mixup_alpha = 0.0;
        }
        if a.no_augment {
            cfg.augment = false;
        }
        if a.no_tf32 {
            cfg.tf32 = false;
        }
        let given = |key: &str| match key {
            "warmup_epochs" => a.warmup_epochs.is_some(),
            "milestones" => a.milestones.is_some(),
            "stage2_epoch" => a.stage2_epoch.is_some() || a.single_stage,
            _ => a.reweight_epoch.is_some(),
        };
        let shown: Vec<String> = moved
            .iter()
            .filter(|(key, ..)| !given(key))
            .map(|(key, old, new)| format!("{key} {old} -> {new}"))
            .collect();
        (!shown.is_empty()).then(|| {
            let mut line = format!(
                "--epochs {} (the schedule was for {from}) moves {}",
                cfg.epochs,
                shown.join(", ")
            );
            if cfg.epochs < 2 && moved.iter().any(|(k, ..)| *k == "stage2_epoch") {
                line.push_str(" (one epoch is too short for two stages: stage 1 only)");
            }
            line
        })
    }
}
