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
use ltrain::train::{train, Interrupted, Progress, RunOptions, Start};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

/// One epoch of stage 1 (LA, mixup).
fn single_stage() -> TrainConfig {
    TrainConfig {
        epochs: 1,
        milestones: Vec::new(),
        stage2_epoch: None,
        loss: LossKind::La,
        ..tiny_config()
    }
}

/// Trains `cfg` into `out` with `options`, calling `on` with each progress event.
fn train_with(
    cfg: &TrainConfig,
    out: &Path,
    options: RunOptions,
    on: &mut dyn FnMut(&Progress<'_>),
) -> anyhow::Result<()> {
    let be = CpuBackend::new(Some(2)).unwrap();
    let data = datasets::open(cfg).unwrap();
    let on_progress = &mut |p: Progress<'_>| on(&p);
    train(
        &be,
        cfg,
        data.train.as_ref(),
        data.test.as_ref(),
        out,
        options,
        on_progress,
    )
    .map(|_| ())
}

/// The checkpoint's tensors and the metrics of two runs are the same.
fn assert_same_run(a: &Path, b: &Path) {
    let (ta, tb) = (
        f32_tensors(&a.join("checkpoint.safetensors")),
        f32_tensors(&b.join("checkpoint.safetensors")),
    );
    assert_eq!(ta.len(), tb.len());
    for ((na, va), (nb, vb)) in ta.iter().zip(&tb) {
        assert_eq!(na, nb);
        assert_eq!(va, vb, "{na} differs");
    }
    let ra = read_epoch_records(&a.join("metrics.jsonl")).unwrap();
    let rb = read_epoch_records(&b.join("metrics.jsonl")).unwrap();
    assert_eq!(ra.len(), rb.len());
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!(
            (x.epoch, x.top1, x.ece, x.train_loss),
            (y.epoch, y.top1, y.ece, y.train_loss)
        );
    }
}

#[test]
fn interrupted_runs_resume_to_the_uninterrupted_result() {
    let cfg = TrainConfig {
        loss: LossKind::LaSla,
        ..tiny_config()
    };
    let straight = tempfile::tempdir().unwrap();
    run(&cfg, straight.path(), Start::Fresh);
    // Stopped after the first step of stage 1 (mixup), after the last step of an epoch, and in
    // the middle of stage 2 (SLA weights), each time resumed.
    let stops = [(0, 0), (1, usize::MAX), (2, 1)];
    let split = tempfile::tempdir().unwrap();
    for (i, &(stop_epoch, stop_step)) in stops.iter().enumerate() {
        let flag = Arc::new(AtomicBool::new(false));
        let (mut epoch_now, mut steps_now) = (0, 0);
        let options = RunOptions {
            start: if i == 0 { Start::Fresh } else { Start::Resume },
            cuda_graphs: false,
            interrupt: Some(flag.clone()),
        };
        let err = train_with(&cfg, split.path(), options, &mut |p| match *p {
            Progress::EpochStart { epoch, steps, .. } => {
                (epoch_now, steps_now) = (epoch, steps);
                assert!(steps >= 3, "the set is too small to stop mid-epoch");
            }
            // usize::MAX: the epoch's last step.
            Progress::Step { step, .. }
                if epoch_now == stop_epoch && step == stop_step.min(steps_now - 1) =>
            {
                flag.store(true, Ordering::Relaxed);
            }
            _ => {}
        })
        .expect_err("the run stops");
        let stopped = err
            .downcast_ref::<Interrupted>()
            .unwrap_or_else(|| panic!("not an interruption: {err:#}"));
        assert_eq!(stopped.epoch, stop_epoch + 1);
        if stop_step == usize::MAX {
            assert_eq!(stopped.step, stopped.steps);
        } else {
            assert_eq!(stopped.step, stop_step + 1);
        }
        assert!(err.to_string().contains("--resume"), "{err}");
    }
    run(&cfg, split.path(), Start::Resume);
    assert_same_run(straight.path(), split.path());
}

#[test]
fn a_diverging_run_stops_at_the_step_and_keeps_its_checkpoint() {
    // The learning rate jumps by 1e20 at epoch 2: the loss is no longer finite within its steps.
    let cfg = TrainConfig {
        epochs: 2,
        milestones: vec![1],
        lr_decay: 1e20,
        ..single_stage()
    };
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("checkpoint.safetensors");
    let mut saved = None;
    let err = train_with(&cfg, dir.path(), Start::Fresh.into(), &mut |p| {
        if let Progress::EpochStart { epoch: 1, .. } = p {
            saved = Some(std::fs::read(&checkpoint).unwrap());
        }
    })
    .expect_err("the run diverges");
    let message = format!("{err:#}");
    assert!(message.contains("epoch 2 step"), "{message}");
    assert!(message.contains("diverged"), "{message}");
    assert!(message.contains("--lr"), "{message}");
    assert_eq!(
        std::fs::read(&checkpoint).unwrap(),
        saved.expect("epoch 1 finished"),
        "the checkpoint of epoch 1 was rewritten"
    );
    assert_eq!(
        read_epoch_records(&dir.path().join("metrics.jsonl"))
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_failed_write_keeps_the_previous_checkpoint_and_the_run_resumable() {
    let cfg = TrainConfig {
        epochs: 2,
        ..tiny_config()
    };
    let straight = tempfile::tempdir().unwrap();
    run(&cfg, straight.path(), Start::Fresh);
    // The disk is full (/dev/full) for epoch 2's checkpoint, then for its metrics line: the files
    // are written through a temporary file beside them (checkpoint.rs) or appended. A read-only
    // directory would not do: the tests may run as root.
    let pid = std::process::id();
    for full in [
        format!(".checkpoint.safetensors.tmp-{pid}"),
        "metrics.jsonl".into(),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (checkpoint, target) = (
            dir.path().join("checkpoint.safetensors"),
            dir.path().join(&full),
        );
        let mut saved = None;
        let err = train_with(&cfg, dir.path(), Start::Fresh.into(), &mut |p| {
            if let Progress::EpochStart { epoch: 1, .. } = p {
                saved = Some(std::fs::read(&checkpoint).unwrap());
                let _ = std::fs::rename(&target, target.with_extension("kept"));
                std::os::unix::fs::symlink("/dev/full", &target).unwrap();
            }
        })
        .expect_err("the write fails");
        let message = format!("{err:#}");
        assert!(message.contains("still holds epoch 1"), "{full}: {message}");
        assert!(message.contains("--resume"), "{full}: {message}");
        // The cause once, not repeated by each layer that reports it.
        assert_eq!(
            message.matches("No space left on device").count(),
            1,
            "{full}: {message}"
        );
        assert_eq!(
            std::fs::read(&checkpoint).unwrap(),
            saved.unwrap(),
            "{full}"
        );
        // Room again: the run resumes and ends as if nothing had happened.
        let _ = std::fs::remove_file(&target);
        let _ = std::fs::rename(target.with_extension("kept"), &target);
        run(&cfg, dir.path(), Start::Resume);
        assert_same_run(straight.path(), dir.path());
    }
}

#[test]
fn resuming_with_another_model_or_data_is_refused() {
    let cfg = single_stage();
    let dir = tempfile::tempdir().unwrap();
    run(&cfg, dir.path(), Start::Fresh);
    let longer = TrainConfig {
        epochs: 2,
        ..cfg.clone()
    };
    for (changed, key) in [
        (
            TrainConfig {
                expert_width: ExpertWidth::Full,
                ..longer.clone()
            },
            "expert_width",
        ),
        (
            TrainConfig {
                synthetic_classes: 5,
                ..longer.clone()
            },
            "synthetic_classes",
        ),
        (
            TrainConfig {
                loss: LossKind::Ce,
                ..longer.clone()
            },
            "loss",
        ),
    ] {
        let err = train_with(&changed, dir.path(), Start::Resume.into(), &mut |_| {})
            .expect_err("another run");
        let message = format!("{err:#}");
        assert!(
            message.contains(&format!("trained with {key} = ")),
            "{message}"
        );
    }
    // Only how long it runs changed: it resumes.
    train_with(&longer, dir.path(), Start::Resume.into(), &mut |_| {}).unwrap();
}

#[test]
fn init_from_another_architecture_names_the_first_mismatching_tensor() {
    let dir = tempfile::tempdir().unwrap();
    run(&single_stage(), dir.path(), Start::Fresh);
    let full = TrainConfig {
        expert_width: ExpertWidth::Full,
        ..single_stage()
    };
    let init = Start::Init(dir.path().join("model.safetensors"));
    let other = tempfile::tempdir().unwrap();
    let err = train_with(&full, other.path(), init.into(), &mut |_| {}).expect_err("mismatch");
    let message = format!("{err:#}");
    // Widths 24/48 against 32/64: layer2's first convolution is the first tensor that differs.
    assert!(
        message
            .contains("`experts.0.layer2.0.conv1.weight` is F32 [24, 16, 3, 3] in the checkpoint"),
        "{message}"
    );
}
