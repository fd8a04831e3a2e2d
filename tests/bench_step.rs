//! The benchmark step (`ltrain bench`, benches/step.rs) under each input mode, on the CPU backend and
//! the emulated CUDA backend: two steps train the model (weights move and stay finite), host-staged
//! uploads feed exactly the views the pre-augmented mode uploads directly, mixup can be switched
//! off in stage 1, and the command line names the input mode it timed.

use ltrain::backend::cpu::CpuBackend;
use ltrain::backend::cuda::CudaBackend;
use ltrain::backend::Backend;
use ltrain::config::{ExpertWidth, ModelKind};
use ltrain::train::bench_step::{BenchInput, BenchStep, BenchStepConfig};
use std::process::Command;

const INPUTS: [BenchInput; 3] = [
    BenchInput::PreAugmented,
    BenchInput::DeviceAugment,
    BenchInput::HostUpload,
];

fn tiny(input: BenchInput, stage2: bool) -> BenchStepConfig {
    BenchStepConfig {
        model: ModelKind::Resnet32,
        expert_width: ExpertWidth::Reduced,
        experts: 3,
        batch_size: 4,
        classes: 3,
        image_size: 8,
        stage2,
        mixup: true,
        input,
        cuda_graphs: false,
    }
}

/// Every parameter of the model, in order, on the host.
fn weights<B: Backend>(be: &B, step: &BenchStep<B>) -> Vec<Vec<f32>> {
    step.model()
        .params()
        .iter()
        .map(|p| be.download(&p.value).unwrap())
        .collect()
}

/// The weights after two steps of `cfg`, checked to have moved from the initial ones and to be finite.
fn two_steps<B: Backend>(be: &B, cfg: BenchStepConfig) -> Vec<Vec<f32>> {
    let mut step = BenchStep::new(be, cfg).unwrap();
    let before = weights(be, &step);
    for _ in 0..2 {
        step.run(be).unwrap();
    }
    be.synchronize().unwrap();
    let after = weights(be, &step);
    let changed = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    // Every parameter has a gradient and weight decay, so each tensor moves.
    assert_eq!(
        changed,
        after.len(),
        "{cfg:?} on {}: only {changed} of {} tensors changed",
        be.name(),
        after.len()
    );
    for (i, w) in after.iter().enumerate() {
        assert!(
            w.iter().all(|v| v.is_finite()),
            "{cfg:?} on {}: tensor {i} not finite",
            be.name()
        );
    }
    after
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check_backend<B: Backend>(be: &B) {
    for stage2 in [false, true] {
        let trained: Vec<_> = INPUTS
            .iter()
            .map(|&input| two_steps(be, tiny(input, stage2)))
            .collect();
        // Host upload stages the same random views pre-augmented uploads directly: same training.
        let staged_vs_direct = max_abs_diff(&trained[0], &trained[2]);
        assert!(
            staged_vs_direct <= 1e-6,
            "stage2 {stage2} on {}: host-upload trains differently from pre-augmented (max diff {staged_vs_direct})",
            be.name()
        );
        // Device augmentation feeds other images (augmented u8 ones): a different training.
        let augmented_vs_direct = max_abs_diff(&trained[0], &trained[1]);
        assert!(
            augmented_vs_direct > 1e-4,
            "stage2 {stage2} on {}: device-augment trains like pre-augmented (max diff {augmented_vs_direct})",
            be.name()
        );
    }
}

#[test]
fn every_input_mode_trains_on_the_cpu() {
    check_backend(&CpuBackend::new(Some(2)).unwrap());
}

#[test]
fn no_mixup_changes_stage_1_only() {
    let be = CpuBackend::new(Some(2)).unwrap();
    for stage2 in [false, true] {
        let mixed = two_steps(&be, tiny(BenchInput::PreAugmented, stage2));
        let unmixed = BenchStepConfig {
            mixup: false,
            ..tiny(BenchInput::PreAugmented, stage2)
        };
        assert_eq!(
            BenchStep::new(&be, unmixed).unwrap().plan().mixup_alpha,
            0.0
        );
        let diff = max_abs_diff(&mixed, &two_steps(&be, unmixed));
        if stage2 {
            assert_eq!(diff, 0.0, "stage 2 never mixes");
        } else {
            assert!(
                diff > 1e-4,
                "stage 1 without mixup trains like with it ({diff})"
            );
        }
    }
}

#[test]
fn every_input_mode_trains_on_the_emulated_gpu() {
    check_backend(&CudaBackend::new_emulated().unwrap());
}

#[test]
fn bench_command_names_the_input_mode() {
    let out = Command::new(env!("CARGO_BIN_EXE_ltrain"))
        .args([
            "bench",
            "--device",
            "cpu",
            "--threads",
            "2",
            "--input",
            "device-augment",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--batch-size",
            "4",
            "--classes",
            "3",
            "--image-size",
            "8",
        ])
        .output()
        .expect("cannot start the ltrain binary");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ltrain bench failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.contains("samples/s"))
        .unwrap_or_else(|| panic!("no samples/s line:\n{text}"));
    assert!(line.contains("device-augment input"), "{line}");

    let bad = Command::new(env!("CARGO_BIN_EXE_ltrain"))
        .args(["bench", "--device", "cpu", "--input", "augmented"])
        .output()
        .expect("cannot start the ltrain binary");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        err.contains("host-upload"),
        "the error should list the modes:\n{err}"
    );
}
