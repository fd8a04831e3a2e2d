//! Learning-rate schedules, per epoch as in LDAM-DRW / RIDE: linear warm-up over the first
//! `warmup_epochs` (lr * (epoch + 1) / warmup), then multistep decay or cosine annealing.

use crate::config::{Schedule, TrainConfig};

/// Learning rate of 0-based `epoch`.
pub fn learning_rate(cfg: &TrainConfig, epoch: usize) -> f32 {
    if epoch < cfg.warmup_epochs {
        return cfg.lr * (epoch + 1) as f32 / cfg.warmup_epochs as f32;
    }
    match cfg.schedule {
        Schedule::Multistep => {
            let passed = cfg.milestones.iter().filter(|&&m| epoch >= m).count();
            cfg.lr * cfg.lr_decay.powi(passed as i32)
        }
        Schedule::Cosine => {
            let span = cfg.epochs.saturating_sub(cfg.warmup_epochs).max(1) as f32;
            let t = (epoch - cfg.warmup_epochs) as f32 / span;
            0.5 * cfg.lr * (1.0 + (std::f32::consts::PI * t).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_cifar_multistep() {
        let cfg = TrainConfig {
            lr: 0.1,
            epochs: 200,
            warmup_epochs: 5,
            milestones: vec![160, 180],
            ..TrainConfig::default()
        };
        let close = |a: f32, b: f32| (a - b).abs() < 1e-7;
        assert!(close(learning_rate(&cfg, 0), 0.02));
        assert!(close(learning_rate(&cfg, 4), 0.1));
        assert!(close(learning_rate(&cfg, 159), 0.1));
        assert!(close(learning_rate(&cfg, 160), 0.01));
        assert!(close(learning_rate(&cfg, 180), 0.001));
        assert!(close(learning_rate(&cfg, 199), 0.001));
    }

    #[test]
    fn cosine_reaches_half_at_the_middle() {
        let cfg = TrainConfig {
            lr: 0.025,
            epochs: 180,
            warmup_epochs: 0,
            schedule: Schedule::Cosine,
            ..TrainConfig::default()
        };
        assert!((learning_rate(&cfg, 0) - 0.025).abs() < 1e-7);
        assert!((learning_rate(&cfg, 90) - 0.0125).abs() < 1e-6);
        assert!(learning_rate(&cfg, 179) < 0.025 * 0.001);
    }
}
