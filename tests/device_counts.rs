//! The exact device work of one training step of a small three-expert ResNet-32 on the CUDA
//! emulator, against counts derived from the architecture, so that any change in what a step
//! launches, copies, sets or allocates shows here. The count-only emulator (which sizes the work of
//! shapes too large to run) must count exactly what the executing one does.

use ltrain::backend::counters::DeviceCounters;
use ltrain::backend::cuda::{CudaBackend, CudaOptions};
use ltrain::backend::Backend;
use ltrain::config::{ExpertWidth, ModelKind};
use ltrain::train::bench_step::{BenchInput, BenchStep, BenchStepConfig};

const EXPERTS: u64 = 3;
/// ResNet-32: the stem, the trunk's layer1 (5 blocks of 2), each expert's layer2 and layer3 (10
/// blocks of 2): every convolution is followed by a batch norm.
const CONVS: u64 = 1 + 5 * 2 + EXPERTS * 10 * 2;
/// Option-A shortcuts: the first block of each expert's layer2 and layer3.
const SHORTCUTS: u64 = EXPERTS * 2;

fn config(stage2: bool, input: BenchInput) -> BenchStepConfig {
    BenchStepConfig {
        model: ModelKind::Resnet32,
        expert_width: ExpertWidth::Reduced,
        experts: EXPERTS as usize,
        batch_size: 4,
        classes: 3,
        image_size: 8,
        stage2,
        mixup: true,
        input,
        cuda_graphs: false,
    }
}

/// The work of the second step (the first fills the caching allocator).
fn one_step(be: &CudaBackend, cfg: BenchStepConfig) -> DeviceCounters {
    steady_step(be, cfg, 1)
}

/// The work of the step after `earlier` steps.
fn steady_step(be: &CudaBackend, cfg: BenchStepConfig, earlier: usize) -> DeviceCounters {
    let mut step = BenchStep::new(be, cfg).unwrap();
    for _ in 0..earlier {
        step.run(be).unwrap();
    }
    let before = be.device_counters().unwrap();
    step.run(be).unwrap();
    be.device_counters().unwrap().since(&before)
}

fn launches(c: &DeviceCounters, kernel: &str) -> u64 {
    c.kernels.get(kernel).map_or(0, |k| k.launches)
}

/// Launches of a convolution pass, in either family: `conv2d_{pass}_*` (FMA) or
/// `conv2d_mma_{pass}_*` (tensor cores).
fn conv_launches(c: &DeviceCounters, pass: &str) -> u64 {
    let (fma, mma) = (format!("conv2d_{pass}_"), format!("conv2d_mma_{pass}_"));
    c.kernels
        .iter()
        .filter(|(name, _)| {
            // `forward_` would also match `forward_stats_`: the tile suffix has no underscore.
            let tile = |prefix: &str| {
                name.strip_prefix(prefix)
                    .is_some_and(|rest| !rest.contains("stats"))
            };
            tile(&fma) || tile(&mma)
        })
        .map(|(_, k)| k.launches)
        .sum()
}

/// Launches of the layers every step runs, whatever the stage.
fn layer_launches(c: &DeviceCounters) -> u64 {
    // Forward: the convolution with its batch statistics, then the normalisation.
    let conv_bn = conv_launches(c, "forward_stats");
    assert_eq!(
        conv_bn, CONVS,
        "one statistics-computing convolution per conv"
    );
    assert_eq!(launches(c, "batch_norm_apply"), CONVS);
    assert_eq!(
        launches(c, "batch_norm_stats"),
        0,
        "no separate statistics pass"
    );
    // Backward: the data gradient of every convolution but the stem's, every weight gradient, and
    // the batch norm's two passes.
    assert_eq!(launches(c, "batch_norm_backward_reduce"), CONVS);
    assert_eq!(launches(c, "batch_norm_backward_apply"), CONVS);
    assert_eq!(
        conv_launches(c, "backward_data"),
        CONVS - 1,
        "no data gradient for the image"
    );
    assert_eq!(conv_launches(c, "backward_weight"), CONVS);
    assert_eq!(
        conv_launches(c, "forward"),
        0,
        "every forward computes statistics"
    );
    assert_eq!(launches(c, "shortcut_a_forward"), SHORTCUTS);
    assert_eq!(launches(c, "shortcut_a_backward"), SHORTCUTS);
    // Per expert: pooling forward and backward, the classifier's bias broadcast and bias gradient,
    // the fused loss, and its share of the loss total (sum, scale, add: to the total, the last to
    // the run's sum).
    for k in [
        "global_avg_pool_forward",
        "global_avg_pool_backward",
        "broadcast_rows",
        "sum_rows",
        "fused_loss_rows",
        "reduce_sum",
        "scale",
    ] {
        assert_eq!(launches(c, k), EXPERTS, "{k}");
    }
    assert_eq!(
        launches(c, "sgd_step"),
        1,
        "one SGD launch for every parameter"
    );
    // conv_bn 2 per conv, conv backward 2 per conv but one, BN backward 2 per conv, shortcuts 2
    // each, 7 per expert above plus the total's add (counted by the caller), SGD.
    2 * CONVS + (2 * CONVS - 1) + 2 * CONVS + 2 * SHORTCUTS + 7 * EXPERTS + 1
}

/// What no steady-state step may do, in either stage.
fn assert_steady(c: &DeviceCounters) {
    assert_eq!(
        c.allocations, 0,
        "device allocations in a steady-state step"
    );
    assert_eq!(c.frees, 0);
    assert_eq!(c.d2d_copies, 0, "no copies around the shared trunk");
    assert_eq!(c.d2h_copies, 0, "the step reads nothing back");
    assert_eq!(c.synchronizations, 0, "the step never waits for the device");
    // The classifier: forward, data and weight gradients, per expert.
    assert_eq!(c.blas_calls, 3 * EXPERTS);
}

#[test]
fn a_stage_1_step_does_exactly_the_work_its_layers_need() {
    for tf32 in [false, true] {
        let be = CudaBackend::new_emulated_with(CudaOptions { tf32 }).unwrap();
        let c = one_step(&be, config(false, BenchInput::PreAugmented));
        stage_1_work(&c);
        // The convolutions of one family only: the tensor cores with TF32, else the FMA units.
        let mma = c
            .kernels
            .keys()
            .filter(|k| k.starts_with("conv2d_mma_"))
            .count();
        let fma = c
            .kernels
            .keys()
            .filter(|k| k.starts_with("conv2d_"))
            .count()
            - mma;
        assert_eq!(
            (mma > 0, fma > 0),
            (tf32, !tf32),
            "tf32 {tf32}: {:?}",
            c.kernels.keys()
        );
    }
}

fn stage_1_work(c: &DeviceCounters) {
    assert_steady(c);
    // One mixup launch for every view; the loss total's add per expert.
    assert_eq!(launches(c, "mixup"), 1);
    assert_eq!(launches(c, "add_assign"), EXPERTS);
    assert_eq!(c.kernel_launches, layer_launches(c) + 1 + EXPERTS);
    assert_eq!(
        c.kernel_launches, 463,
        "the total (printed by `ltrain bench --counters`)"
    );
    // No memset: the loss total starts from the first expert's share.
    assert_eq!((c.memsets, c.memset_bytes), (0, 0));
    // The step's two input blocks (learning rate and lambda; labels, partners' labels, partners).
    assert_eq!(c.h2d_copies, 2);
    assert_eq!(c.h2d_bytes, 4 * (2 + 4 + 4 + 3 * 4));
}

#[test]
fn a_stage_2_step_adds_the_sla_weights_and_sums_the_shared_trunk_gradient() {
    let be = CudaBackend::new_emulated().unwrap();
    let c = one_step(&be, config(true, BenchInput::PreAugmented));
    assert_steady(&c);
    assert_eq!(launches(&c, "mixup"), 0);
    for k in ["row_cosine", "cosmax_batch_best", "cosmax_merge"] {
        assert_eq!(launches(&c, k), EXPERTS, "{k}");
    }
    // The loss total per expert, and the experts' gradients of the one shared view summed.
    assert_eq!(launches(&c, "add_assign"), EXPERTS + EXPERTS - 1);
    assert_eq!(
        c.kernel_launches,
        layer_launches(&c) + 3 * EXPERTS + EXPERTS + EXPERTS - 1
    );
    // Each expert's cos-max keys.
    assert_eq!(c.memsets, EXPERTS);
    // The two input blocks: learning rate and lambda; the labels.
    assert_eq!((c.h2d_copies, c.h2d_bytes), (2, 4 * (2 + 4)));
}

#[test]
fn a_replayed_step_is_the_eager_steps_device_work_in_at_most_five_host_operations() {
    for stage2 in [false, true] {
        for input in [BenchInput::PreAugmented, BenchInput::DeviceAugment] {
            let what = format!("stage 2: {stage2}, {input:?}");
            let eager = one_step(&CudaBackend::new_emulated().unwrap(), config(stage2, input));
            // Step 1 runs eagerly, step 2 is captured and replayed, step 3 only replayed.
            let graphed = BenchStepConfig {
                cuda_graphs: true,
                ..config(stage2, input)
            };
            let replayed = steady_step(&CudaBackend::new_emulated().unwrap(), graphed, 2);
            assert_eq!(replayed.graph_launches, 1, "{what}");
            // The two input blocks, the graph; ready views are also copied into the graph's place.
            let copied = u64::from(input == BenchInput::PreAugmented);
            assert_eq!(replayed.host_operations(), 3 + copied, "{what}");
            assert!(replayed.host_operations() <= 5, "{what}");
            assert_eq!(replayed.kernels, eager.kernels, "{what}");
            assert_eq!(replayed.blas_calls, eager.blas_calls, "{what}");
            assert_eq!(replayed.memsets, eager.memsets, "{what}");
            assert_eq!(replayed.d2d_copies, copied, "{what}");
            assert_eq!(replayed.allocations, 0, "{what}");
            assert_eq!(replayed.synchronizations, 0, "{what}");
        }
    }
}

#[test]
fn device_augmentation_is_one_launch_for_every_view() {
    let be = CudaBackend::new_emulated().unwrap();
    let c = one_step(&be, config(false, BenchInput::DeviceAugment));
    assert_steady(&c);
    assert_eq!(launches(&c, "augment_batch"), 1);
}

#[test]
fn the_count_only_emulator_counts_what_the_executing_one_does() {
    for tf32 in [false, true] {
        let options = CudaOptions { tf32 };
        for stage2 in [false, true] {
            for input in [BenchInput::PreAugmented, BenchInput::DeviceAugment] {
                let run = one_step(
                    &CudaBackend::new_emulated_with(options).unwrap(),
                    config(stage2, input),
                );
                let counted = one_step(
                    &CudaBackend::new_count_only_with(options).unwrap(),
                    config(stage2, input),
                );
                assert_eq!(run, counted, "{options:?}, stage 2: {stage2}, {input:?}");
            }
        }
    }
}
