//! The loss kinds' policies (paper Tables 1, 6, 8), one row each in [`LOSS_POLICIES`], and the rules
//! of each reweighting in [`Reweighting::rules`]; the configuration check, the epoch plan and the
//! training step read them here. A new baseline is a `LossKind`, its row, and, for a new weighting,
//! a `Reweighting` with its rules and the backend weighting it maps to (`backend::LossWeighting`).

use super::class_weights::{class_balanced_weights, inverse_frequency_weights, log_prior};
use crate::backend::{Backend, LossReduction};
use crate::config::{LossKind, TrainConfig};
use anyhow::Result;

/// The per-sample weighting an epoch uses (Eq. 17 and the baselines of Tables 1 and 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reweighting {
    None,
    InverseFrequency,
    ClassBalanced,
    Focal,
    Sla,
}

/// One loss kind.
pub struct LossPolicy {
    pub kind: LossKind,
    /// How reports and tables name it.
    pub label: &'static str,
    /// Logit adjustment (Eq. 7) in every epoch.
    pub logit_adjusted: bool,
    /// The weighting from the reweighting epoch on (`Reweighting::None`: the loss never reweights).
    pub reweighting: Reweighting,
}

/// Every loss kind.
pub const LOSS_POLICIES: [LossPolicy; 6] = [
    LossPolicy {
        kind: LossKind::Ce,
        label: "CE",
        logit_adjusted: false,
        reweighting: Reweighting::None,
    },
    LossPolicy {
        kind: LossKind::La,
        label: "LA",
        logit_adjusted: true,
        reweighting: Reweighting::None,
    },
    LossPolicy {
        kind: LossKind::LaRw,
        label: "LA + RW",
        logit_adjusted: true,
        reweighting: Reweighting::InverseFrequency,
    },
    LossPolicy {
        kind: LossKind::LaCb,
        label: "LA + CB",
        logit_adjusted: true,
        reweighting: Reweighting::ClassBalanced,
    },
    LossPolicy {
        kind: LossKind::LaFl,
        label: "LA + focal",
        logit_adjusted: true,
        reweighting: Reweighting::Focal,
    },
    LossPolicy {
        kind: LossKind::LaSla,
        label: "LA + SLA",
        logit_adjusted: true,
        reweighting: Reweighting::Sla,
    },
];

/// The row of `kind`.
pub fn policy(kind: LossKind) -> &'static LossPolicy {
    LOSS_POLICIES
        .iter()
        .find(|p| p.kind == kind)
        .expect("LOSS_POLICIES has a row for every LossKind")
}

/// Class weights `[c]` from the training class counts and the configuration.
type ClassWeightsFn = fn(&[usize], &TrainConfig) -> Vec<f32>;

/// What a reweighting needs and allows.
pub struct ReweightingRules {
    /// `[c]` class weights (`backend::LossWeighting::PerClass`), computed once per run.
    pub class_weights: Option<ClassWeightsFn>,
    /// The weight comes from each sample's own probability, which mixed (mixup) targets do not have.
    pub single_targets_only: bool,
    /// Needs the SLA cos-max table, filled before the first epoch that uses it.
    pub sla_table: bool,
}

impl Reweighting {
    /// The rules of this reweighting.
    pub fn rules(self) -> ReweightingRules {
        let (class_weights, single_targets_only, sla_table): (Option<ClassWeightsFn>, _, _) =
            match self {
                Reweighting::None => (None, false, false),
                Reweighting::InverseFrequency => (
                    Some(|counts, _| inverse_frequency_weights(counts)),
                    false,
                    false,
                ),
                Reweighting::ClassBalanced => (
                    Some(|counts, cfg| class_balanced_weights(counts, cfg.cb_beta)),
                    false,
                    false,
                ),
                Reweighting::Focal => (None, true, false),
                Reweighting::Sla => (None, true, true),
            };
        ReweightingRules {
            class_weights,
            single_targets_only,
            sla_table,
        }
    }
}

/// What a run's losses need on the device, built once from the configuration and the training class
/// counts.
pub struct LossSetup<B: Backend> {
    /// `[c]` `la_tau * log prior` (Eq. 7).
    pub adjustment: B::Buf,
    /// `[c]` class weights of the loss's class-level reweighting (RW, CB), if it has one.
    pub class_weights: Option<B::Buf>,
    pub reduction: LossReduction,
}

impl<B: Backend> LossSetup<B> {
    pub fn new(be: &B, cfg: &TrainConfig, class_counts: &[usize]) -> Result<Self> {
        let adjustment: Vec<f32> = log_prior(class_counts)
            .iter()
            .map(|l| l * cfg.la_tau)
            .collect();
        let class_weights = match policy(cfg.loss).reweighting.rules().class_weights {
            Some(weights) => Some(be.upload(&weights(class_counts, cfg))?),
            None => None,
        };
        Ok(Self {
            adjustment: be.upload(&adjustment)?,
            class_weights,
            reduction: if cfg.normalize_weights {
                LossReduction::WeightNormalized
            } else {
                LossReduction::Mean
            },
        })
    }
}
