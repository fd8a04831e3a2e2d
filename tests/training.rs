//! The training loop end to end on the CPU backend with a tiny synthetic set: the stage switch,
//! the SLA table, metrics lines, and resume equivalence (a run split in two by a checkpoint gives
//! bit-identical weights to an uninterrupted one).

use ltrain::backend::cpu::CpuBackend;
use ltrain::config::{ExpertWidth, Imbalance, LossKind, TrainConfig};
use ltrain::method::Reweighting;
use ltrain::nn::TensorData;
use ltrain::report::read_epoch_records;
use ltrain::train::checkpoint::load_checkpoint;
use ltrain::train::datasets;
use ltrain::train::{train, Progress, Start};
use std::path::Path;

fn tiny_config() -> TrainConfig {
    TrainConfig {
        synthetic_classes: 4,
        synthetic_max_per_class: 24,
        synthetic_test_per_class: 6,
        imbalance: Imbalance::Ratio(4.0),
        expert_width: ExpertWidth::Reduced,
        epochs: 3,
        batch_size: 16,
        warmup_epochs: 1,
        milestones: vec![2],
        stage2_epoch: Some(2),
        lr: 0.05,
        threads: 2,
        ..TrainConfig::default()
    }
}

fn run(cfg: &TrainConfig, out: &Path, start: Start) -> Vec<(usize, u8, bool, f32, Reweighting)> {
    let be = CpuBackend::new(Some(2)).unwrap();
    let data = datasets::open(cfg).unwrap();
    let mut plans = Vec::new();
    train(
        &be,
        cfg,
        data.train.as_ref(),
        data.test.as_ref(),
        out,
        start.into(),
        &mut |p| {
            if let Progress::EpochStart { epoch, plan, .. } = p {
                plans.push((
                    epoch,
                    plan.stage,
                    plan.augment,
                    plan.mixup_alpha,
                    plan.reweighting,
                ));
            }
        },
    )
    .unwrap();
    plans
}

fn f32_tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let (tensors, _) = load_checkpoint(path).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = tensors
        .into_iter()
        .filter_map(|t| match t.data {
            TensorData::F32(v) => Some((t.name, v)),
            TensorData::I64(_) => None,
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn stage_switch_fills_the_sla_table_and_logs_both_stages() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config();
    let plans = run(&cfg, dir.path(), Start::Fresh);
    assert_eq!(plans.len(), 3);
    for &(epoch, stage, augment, alpha, rw) in &plans {
        if epoch < 2 {
            assert_eq!(
                (stage, augment, alpha, rw),
                (1, true, 0.2, Reweighting::None)
            );
        } else {
            assert_eq!(
                (stage, augment, alpha, rw),
                (2, false, 0.0, Reweighting::Sla)
            );
        }
    }
    let records = read_epoch_records(&dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(
        records.iter().map(|r| r.epoch).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(
        records.iter().map(|r| r.stage).collect::<Vec<_>>(),
        [1, 1, 2]
    );
    for r in &records {
        assert!(r.train_loss.is_finite() && r.train_loss > 0.0);
        let top1 = r.top1.unwrap();
        assert!((0.0..=100.0).contains(&top1));
    }
    // Every class has training samples, so the filled table has a finite winner and a cosine in [-1, 1].
    let tensors = f32_tensors(&dir.path().join("checkpoint.safetensors"));
    for k in 0..cfg.experts {
        let get = |name: &str| {
            tensors
                .iter()
                .find(|(n, _)| n == name)
                .unwrap_or_else(|| panic!("{name} missing"))
                .1
                .clone()
        };
        let logit = get(&format!("sla.{k}.current_logit"));
        let cos = get(&format!("sla.{k}.current_cos"));
        assert_eq!(logit.len(), 4);
        assert!(logit.iter().all(|l| l.is_finite()), "{logit:?}");
        assert!(
            cos.iter().all(|c| (-1.0001..=1.0001).contains(c)),
            "{cos:?}"
        );
    }
}

#[test]
fn resume_gives_the_same_weights_as_an_uninterrupted_run() {
    let straight = tempfile::tempdir().unwrap();
    let split = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        loss: LossKind::LaSla,
        ..tiny_config()
    };
    run(&cfg, straight.path(), Start::Fresh);
    // The same run stopped after two epochs (identical schedule), then resumed to three.
    let first_part = TrainConfig {
        epochs: 2,
        ..cfg.clone()
    };
    run(&first_part, split.path(), Start::Fresh);
    run(&cfg, split.path(), Start::Resume);
    let a = f32_tensors(&straight.path().join("checkpoint.safetensors"));
    let b = f32_tensors(&split.path().join("checkpoint.safetensors"));
    assert_eq!(a.len(), b.len());
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert_eq!(va, vb, "{na} differs after resume");
    }
    let ra = read_epoch_records(&straight.path().join("metrics.jsonl")).unwrap();
    let rb = read_epoch_records(&split.path().join("metrics.jsonl")).unwrap();
    assert_eq!(ra.len(), rb.len());
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!(
            (x.epoch, x.top1, x.ece, x.train_loss),
            (y.epoch, y.top1, y.ece, y.train_loss)
        );
    }
}
