//! The two-stage schedule of Algorithm 1: what an epoch does (augmentation, mixup, which weights).

use super::loss_kinds::{policy, Reweighting};
use crate::augment::Level;
use crate::config::TrainConfig;

/// Expert `k`'s augmentation level in stage 1: weak, medium, strong (paper Sec. 4.2.1), then round
/// again for more experts.
pub fn expert_level(k: usize) -> Level {
    Level::AUGMENTED[k % Level::AUGMENTED.len()]
}

/// What one epoch does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochPlan {
    /// 1 or 2 (paper's stages).
    pub stage: u8,
    /// Each expert sees its own augmentation level (stage 1), or the plain image (stage 2).
    pub augment: bool,
    /// Beta(alpha, alpha) mixup; 0 = no mixup.
    pub mixup_alpha: f32,
    /// Logit adjustment on (every loss but plain CE).
    pub logit_adjusted: bool,
    pub reweighting: Reweighting,
}

impl EpochPlan {
    pub fn for_epoch(cfg: &TrainConfig, epoch: usize) -> Self {
        let stage2 = cfg.in_stage2(epoch);
        let loss = policy(cfg.loss);
        let reweighting_on = cfg.reweight_start().is_some_and(|start| epoch >= start);
        Self {
            stage: if stage2 { 2 } else { 1 },
            augment: cfg.augment && !stage2,
            mixup_alpha: if stage2 { 0.0 } else { cfg.mixup_alpha },
            logit_adjusted: loss.logit_adjusted,
            reweighting: if reweighting_on {
                loss.reweighting
            } else {
                Reweighting::None
            },
        }
    }

    /// The views a step of this epoch trains on: one per expert at [`expert_level`] while the
    /// experts see their own augmentation, otherwise one plain view that all experts share.
    pub fn view_levels(&self, experts: usize) -> Vec<Level> {
        if self.augment {
            (0..experts).map(expert_level).collect()
        } else {
            vec![Level::Plain]
        }
    }

    /// Whether this epoch's weights read the SLA cos-max table (filled before its first epoch).
    pub fn needs_sla_table(&self) -> bool {
        self.reweighting.rules().sla_table
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LossKind;

    fn paper_cifar() -> TrainConfig {
        TrainConfig {
            epochs: 200,
            stage2_epoch: Some(160),
            ..TrainConfig::default()
        }
    }

    #[test]
    fn stage_switch_turns_augmentation_and_mixup_off_and_sla_on() {
        let cfg = paper_cifar();
        let before = EpochPlan::for_epoch(&cfg, 159);
        assert_eq!(before.stage, 1);
        assert!(before.augment);
        assert_eq!(before.mixup_alpha, 0.2);
        assert_eq!(before.reweighting, Reweighting::None);
        let after = EpochPlan::for_epoch(&cfg, 160);
        assert_eq!(after.stage, 2);
        assert!(!after.augment);
        assert_eq!(after.mixup_alpha, 0.0);
        assert_eq!(after.reweighting, Reweighting::Sla);
        assert!(after.logit_adjusted);
    }

    #[test]
    fn reweighting_can_start_later_than_the_switch() {
        // Table 1: reweighting introduced at epoch 180 of 200.
        let cfg = TrainConfig {
            loss: LossKind::LaCb,
            reweight_epoch: Some(180),
            ..paper_cifar()
        };
        assert_eq!(
            EpochPlan::for_epoch(&cfg, 170).reweighting,
            Reweighting::None
        );
        assert_eq!(
            EpochPlan::for_epoch(&cfg, 180).reweighting,
            Reweighting::ClassBalanced
        );
    }

    #[test]
    fn single_stage_and_plain_losses() {
        let cfg = TrainConfig {
            stage2_epoch: None,
            loss: LossKind::La,
            ..paper_cifar()
        };
        let p = EpochPlan::for_epoch(&cfg, 199);
        assert_eq!(p.stage, 1);
        assert!(p.augment);
        assert_eq!(p.reweighting, Reweighting::None);
        let ce = TrainConfig {
            loss: LossKind::Ce,
            ..paper_cifar()
        };
        assert!(!EpochPlan::for_epoch(&ce, 0).logit_adjusted);
    }
}
