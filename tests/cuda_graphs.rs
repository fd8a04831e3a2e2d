//! CUDA graphs on the emulator: replays equal eager runs bit for bit, and CUDA's capture rules are
//! errors naming the operation (the same checks run on a GPU in `cuda_gpu.rs`).

mod cuda_checks;

use ltrain::backend::cuda::{CudaBackend, CudaOptions};
use ltrain::backend::Backend;

fn emulator() -> CudaBackend {
    CudaBackend::new_emulated().expect("the emulator needs no device")
}

/// TF32 on, as on a GPU by default: the tensor-core convolutions.
fn emulator_tf32() -> CudaBackend {
    CudaBackend::new_emulated_with(CudaOptions { tf32: true }).unwrap()
}

#[test]
fn graph_replays_equal_eager_runs() {
    cuda_checks::graph_replays_equal_eager_runs(&emulator());
}

#[test]
fn capture_rule_violations_are_errors() {
    cuda_checks::capture_rule_violations_are_errors(&emulator());
}

/// A short run on the emulator (three epochs of a tiny long-tailed set: stage 1 with mixup and
/// augmentation, the stage switch with the SLA table's fill, stage 2 with SLA weights; full and
/// short batches, so several step shapes) trained with every step captured and replayed equals the
/// eager run bit for bit: weights, batch-norm statistics and counters, SLA tables (the checkpoint),
/// the per-epoch losses and metrics, and the last evaluation's per-sample predictions (its
/// batches replayed too). (The tensor-core convolutions' replays: the bench step below.)
#[test]
fn a_run_with_replayed_steps_equals_the_eager_run() {
    use ltrain::config::{ExpertWidth, Imbalance, LossKind, TrainConfig};
    use ltrain::report::read_epoch_records;
    use ltrain::train::checkpoint::load_checkpoint;
    use ltrain::train::{datasets, train, RunOptions, Start};

    let cfg = TrainConfig {
        synthetic_classes: 2,
        synthetic_max_per_class: 5,
        synthetic_test_per_class: 6,
        imbalance: Imbalance::Ratio(1.5),
        expert_width: ExpertWidth::Reduced,
        loss: LossKind::LaSla,
        epochs: 3,
        batch_size: 3,
        warmup_epochs: 1,
        milestones: vec![2],
        stage2_epoch: Some(2),
        ..TrainConfig::default()
    };
    let data = datasets::open(&cfg).unwrap();
    assert!(
        data.train.len() % cfg.batch_size >= 2,
        "a short last batch too"
    );
    let be = emulator();
    let run = |cuda_graphs: bool| {
        let dir = tempfile::tempdir().unwrap();
        let before = be.device_counters().unwrap();
        let options = RunOptions {
            start: Start::Fresh,
            cuda_graphs,
            interrupt: None,
        };
        let result = train(
            &be,
            &cfg,
            data.train.as_ref(),
            data.test.as_ref(),
            dir.path(),
            options,
            &mut |_| {},
        )
        .unwrap();
        let work = be.device_counters().unwrap().since(&before);
        let (tensors, _) = load_checkpoint(&dir.path().join("checkpoint.safetensors")).unwrap();
        let records = read_epoch_records(&dir.path().join("metrics.jsonl")).unwrap();
        let metrics: Vec<_> = records
            .iter()
            .map(|r| (r.epoch, r.stage, r.train_loss, r.top1, r.ece))
            .collect();
        (tensors, (metrics, result.last.predictions), work)
    };
    let (eager, eager_metrics, eager_work) = run(false);
    let (replayed, replayed_metrics, replayed_work) = run(true);
    assert_eq!(eager_metrics.1.len(), data.test.len());
    assert_eq!(eager_work.graph_launches, 0);
    assert!(
        replayed_work.graph_launches > 0,
        "no step was replayed: {}",
        replayed_work.table()
    );
    assert_eq!(eager_metrics, replayed_metrics);
    assert_eq!(eager.len(), replayed.len());
    for (e, r) in eager.iter().zip(&replayed) {
        assert_eq!(e.name, r.name);
        assert!(e.data == r.data, "{} differs with graphs", e.name);
    }
}

#[test]
fn replayed_bench_steps_equal_eager_steps() {
    cuda_checks::replayed_bench_steps_equal_eager_steps(&emulator());
}

#[test]
fn replayed_tensor_core_bench_steps_equal_eager_steps() {
    cuda_checks::replayed_bench_steps_equal_eager_steps(&emulator_tf32());
}
