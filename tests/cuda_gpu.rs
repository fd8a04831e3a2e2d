//! The CUDA backend on a real GPU: the same checks as on the emulator (the device runtime itself, the
//! shared conformance suite, every op and whole training steps against the CPU backend), plus TF32.
//! Every test needs a CUDA GPU and is ignored by default; run them with
//! `cargo test --release --test cuda_gpu -- --ignored` (scripts/device-check.sh does, from a pack).
//! The checks compare with strict-fp32 GEMMs (TF32 off); the TF32 default (the tensor-core
//! convolutions and cuBLAS's TF32 GEMMs) has its own tests below.

mod conformance;
mod cuda_checks;
mod mma_checks;

use ltrain::backend::cpu::CpuBackend;
use ltrain::backend::cuda::{cuda_available, selftest, CudaBackend, CudaOptions, LaunchConfig};
use ltrain::backend::{Backend, Conv2dDims};

/// GPU 0 with strict fp32 GEMMs; a failure names why CUDA is unavailable.
fn gpu() -> CudaBackend {
    gpu_with(CudaOptions { tf32: false })
}

/// GPU 0 with its defaults: TF32 on, the tensor-core convolutions.
fn gpu_tf32() -> CudaBackend {
    gpu_with(CudaOptions { tf32: true })
}

fn gpu_with(options: CudaOptions) -> CudaBackend {
    if let Err(reason) = cuda_available() {
        panic!("CUDA is not available: {reason}");
    }
    CudaBackend::new_gpu_with(0, options).expect("CUDA backend on GPU 0")
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn the_gpu_backend_starts_and_describes_itself() {
    let be = gpu();
    println!("{}", be.name());
    assert!(be.name().starts_with("cuda: "), "{}", be.name());
    assert!(!be.is_emulated());
    let limits = be.limits();
    assert!(limits.max_threads_per_block >= 1024, "{limits:?}");
}

// ---- the device runtime itself ----

#[test]
#[ignore = "needs a CUDA GPU"]
fn barrier_dependent_tree_reduction_is_exact() {
    cuda_checks::barrier_dependent_tree_reduction_is_exact(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn warp_shuffle_reduction_matches_naive_sums() {
    cuda_checks::warp_shuffle_reduction_matches_naive_sums(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn ballot_collects_every_lane() {
    cuda_checks::ballot_collects_every_lane(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn atomic_histogram_from_many_blocks() {
    cuda_checks::atomic_histogram_from_many_blocks(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn launches_outside_the_h200_limits_are_errors() {
    cuda_checks::launches_outside_the_h200_limits_are_errors(&gpu());
}

/// The tensor-core and cp.async wrappers of kernels/mma.cuh against the PTX ISA's fragment tables, as
/// the emulator is checked (tests/emulator_mma.rs): every lane's mma (tf32, bf16) and ldmatrix
/// registers, cvt.rna.tf32 rounding, cp.async with its wait, and what the tensor cores make of a tf32
/// operand that was not rounded (the emulator truncates it; this pins that on hardware).
#[test]
#[ignore = "needs a CUDA GPU"]
fn tensor_core_fragments_follow_the_ptx_layouts() {
    let be = gpu();
    mma_checks::mma_tf32_follows_the_ptx_layout(&be);
    mma_checks::mma_bf16_follows_the_ptx_layout(&be);
    mma_checks::ldmatrix_follows_the_ptx_layout(&be);
    mma_checks::to_tf32_rounds_to_nearest_ties_away_from_zero(&be);
    mma_checks::cp_async_copies_after_its_wait(&be);
    mma_checks::unrounded_tf32_operands_are_truncated(&be);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn a_large_grid_launches() {
    // The largest grid.y, and many blocks in x: the driver accepts what our limit check lets through.
    let be = gpu();
    selftest::launch_noop(
        &be,
        LaunchConfig {
            grid: (4, 65535, 1),
            block: (32, 1, 1),
            shared_mem_bytes: 0,
            large_shared_mem: false,
        },
    )
    .unwrap();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cublas_follows_the_convention_the_emulator_implements() {
    let be = gpu();
    cuda_checks::gemm_follows_the_cublas_convention(&be);
    cuda_checks::a_transposed_operand_mistake_gives_a_wrong_result(&be);
    cuda_checks::gemm_with_beta_zero_does_not_read_c(&be);
}

// ---- ops ----

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_backend_passes_the_conformance_suite() {
    conformance::run_all(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn elementwise_ops_match_the_cpu() {
    cuda_checks::elementwise_ops_match_the_cpu(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn convolutions_match_the_cpu() {
    cuda_checks::convolutions_match_the_cpu(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn convolutions_over_many_tiles_and_splits_match_the_cpu() {
    cuda_checks::convolutions_over_many_tiles_and_splits_match_the_cpu(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn batch_norm_matches_the_cpu() {
    cuda_checks::batch_norm_matches_the_cpu(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn pooling_and_shortcut_match_the_cpu() {
    cuda_checks::pooling_and_shortcut_match_the_cpu(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn linear_and_rows_match_the_cpu() {
    cuda_checks::linear_and_rows_match_the_cpu(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn fused_loss_matches_the_cpu() {
    cuda_checks::fused_loss_matches_the_cpu(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cosine_cosmax_mixup_and_sgd_match_the_cpu() {
    cuda_checks::cosine_cosmax_mixup_and_sgd_match_the_cpu(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn out_of_range_indices_are_errors_like_on_the_cpu() {
    cuda_checks::out_of_range_indices_are_errors_like_on_the_cpu(&gpu()).unwrap();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn training_steps_match_the_cpu() {
    cuda_checks::training_steps_match_the_cpu(&gpu());
}

/// Page-locked staging memory and the loader's asynchronous uploads, on the real copy engine.
#[test]
#[ignore = "needs a CUDA GPU"]
fn batch_loader_views_match_the_source() {
    cuda_checks::batch_loader_views_match_the_source(&gpu(), 1 << 24);
}

/// The tensor-core convolutions against references that take TF32-rounded operands, at the fp32
/// tolerances (the conformance suite's convolution checks; cuBLAS's own TF32 GEMMs round in a way
/// the emulator only stands in for, so the linear check stays with the strict suite above).
#[test]
#[ignore = "needs a CUDA GPU"]
fn tensor_core_convolutions_pass_the_conformance_checks() {
    let convs = conformance::checks::<CudaBackend>()
        .into_iter()
        .filter(|(name, _)| name.starts_with("conv2d"))
        .collect();
    conformance::run_checks_with(&gpu_tf32(), conformance::Products::Tf32, convs);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn tensor_core_convolutions_keep_nans() {
    cuda_checks::nan_inputs_stay_nan_like_on_the_cpu(&gpu_tf32());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn tensor_core_convolutions_match_the_cpu() {
    cuda_checks::convolutions_match_the_cpu(&gpu_tf32());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn tensor_core_convolutions_over_many_tiles_and_splits_match_the_cpu() {
    cuda_checks::convolutions_over_many_tiles_and_splits_match_the_cpu(&gpu_tf32());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn replayed_tensor_core_bench_steps_equal_eager_steps() {
    cuda_checks::replayed_bench_steps_equal_eager_steps(&gpu_tf32());
}

/// A short run with the GPU's defaults learns (on the emulator the tensor-core path costs about 5 s
/// a step at this size, so this one runs here only).
#[test]
#[ignore = "needs a CUDA GPU"]
fn a_tensor_core_run_learns_the_synthetic_set() {
    cuda_checks::a_run_learns_the_synthetic_set(&gpu_tf32());
}

/// With the TF32 default, a ResNet-sized convolution stays within TF32's precision of the CPU.
#[test]
#[ignore = "needs a CUDA GPU"]
fn tf32_convolutions_stay_close_to_the_cpu() {
    let tf32 = CudaBackend::new_gpu(0).expect("CUDA backend on GPU 0");
    let cpu = CpuBackend::new(Some(2)).unwrap();
    let d = Conv2dDims {
        n: 8,
        c_in: 16,
        h: 32,
        w: 32,
        c_out: 16,
        k: 3,
        stride: 1,
        pad: 1,
        groups: 1,
    };
    let x: Vec<f32> = (0..d.input_len())
        .map(|i| ((i * 7919) % 997) as f32 / 498.5 - 1.0)
        .collect();
    let w: Vec<f32> = (0..d.weight_len())
        .map(|i| ((i * 104729) % 991) as f32 / 495.5 - 1.0)
        .collect();
    fn forward<B: Backend>(be: &B, x: &[f32], w: &[f32], d: Conv2dDims) -> Vec<f32> {
        let y = be
            .conv2d_forward(&be.upload(x).unwrap(), &be.upload(w).unwrap(), d)
            .unwrap();
        be.download(&y).unwrap()
    }
    let got = forward(&tf32, &x, &w, d);
    let want = forward(&cpu, &x, &w, d);
    // 144 products per output of O(1) values, each input rounded to 10 mantissa bits.
    let scale = want.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
    let worst = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        worst <= 1e-2 * scale,
        "worst |tf32 - cpu| = {worst}, max |y| = {scale}"
    );
}

// ---- CUDA graphs ----

#[test]
#[ignore = "needs a CUDA GPU"]
fn graph_replays_equal_eager_runs() {
    cuda_checks::graph_replays_equal_eager_runs(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn replayed_bench_steps_equal_eager_steps() {
    cuda_checks::replayed_bench_steps_equal_eager_steps(&gpu());
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn capture_rule_violations_are_errors() {
    cuda_checks::capture_rule_violations_are_errors(&gpu());
}

// ---- NCCL (one rank: a world of one GPU) ----

mod nccl {
    use super::gpu;
    use ltrain::backend::cuda::nccl::{nccl_available, nccl_unique_id, NcclCollective};
    use ltrain::backend::cuda::CudaBackend;
    use ltrain::backend::Backend;
    use ltrain::dist::{Collective, World};

    /// Rank 0 of a world of one, with a fresh id; a failure names why NCCL is unavailable.
    fn single(be: &CudaBackend) -> NcclCollective {
        if let Err(reason) = nccl_available() {
            panic!("NCCL is not available: {reason}");
        }
        let id = nccl_unique_id().expect("NCCL unique id");
        assert_eq!(id.len(), 128);
        NcclCollective::new(be, World::SINGLE, &id).expect("NCCL communicator of one rank")
    }

    /// With one rank every collective gives the buffer back: on a whole buffer and on a view at an
    /// offset, and nothing outside the view is touched.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn collectives_of_one_rank_keep_the_values() {
        let be = gpu();
        let nccl = single(&be);
        assert_eq!(nccl.world(), World::SINGLE);
        let data: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5 - 7.0).collect();
        let whole = be.upload(&data).unwrap();
        for (offset, len) in [(0, data.len()), (37, 501)] {
            let want = &data[offset..offset + len];
            let mut buf = be.view(&whole, offset, len).unwrap();
            nccl.all_reduce_sum(&be, &mut buf).unwrap();
            nccl.wait(&be).unwrap();
            assert_eq!(be.download(&buf).unwrap(), want, "all-reduce at {offset}");
            // Read right away, without a wait (as the callers do).
            let gathered = nccl.all_gather(&be, &buf).unwrap();
            assert_eq!(be.len(&gathered), len);
            assert_eq!(
                be.download(&gathered).unwrap(),
                want,
                "all-gather at {offset}"
            );
            nccl.broadcast(&be, &mut buf, 0).unwrap();
            assert_eq!(be.download(&buf).unwrap(), want, "broadcast at {offset}");
        }
        assert_eq!(be.download(&whole).unwrap(), data);
    }

    /// An all-reduce left running while the backend works on, its view dropped before the wait;
    /// the backend's op after the wait reads the reduced values.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn work_after_the_wait_reads_the_reduced_buffer() {
        let be = gpu();
        let nccl = single(&be);
        let data: Vec<f32> = (0..(1 << 20)).map(|i| (i % 97) as f32).collect();
        let whole = be.upload(&data).unwrap();
        for bucket in 0..4 {
            let len = data.len() / 4;
            nccl.all_reduce_sum(&be, &mut be.view(&whole, bucket * len, len).unwrap())
                .unwrap();
            // Unrelated work on the backend's stream meanwhile.
            let other = be.upload(&data[..len]).unwrap();
            be.scale(&other, 3.0).unwrap();
        }
        nccl.wait(&be).unwrap();
        let doubled = be.scale(&whole, 2.0).unwrap();
        let want: Vec<f32> = data.iter().map(|v| 2.0 * v).collect();
        assert_eq!(be.download(&doubled).unwrap(), want);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn misuse_is_an_error() {
        let be = gpu();
        assert!(NcclCollective::new(&be, World::SINGLE, &[0; 100]).is_err());
        assert!(NcclCollective::new(&be, World { rank: 1, size: 1 }, &[0; 128]).is_err());
        let nccl = single(&be);
        let mut buf = be.upload(&[1.0, 2.0]).unwrap();
        assert!(nccl.broadcast(&be, &mut buf, 1).is_err());
        // Another backend's buffers and stream.
        let other = gpu();
        let mut theirs = other.upload(&[1.0]).unwrap();
        assert!(nccl.all_reduce_sum(&other, &mut theirs).is_err());
        // Not inside a CUDA graph capture.
        let mut acc = be.zeros(2).unwrap();
        be.begin_capture().unwrap();
        be.add_assign(&mut acc, &buf).unwrap();
        let err = nccl.all_reduce_sum(&be, &mut buf).unwrap_err();
        be.end_capture().unwrap();
        assert!(format!("{err:#}").contains("CUDA graphs"), "{err:#}");
        // Still usable afterwards.
        nccl.all_reduce_sum(&be, &mut buf).unwrap();
        nccl.wait(&be).unwrap();
        assert_eq!(be.download(&buf).unwrap(), [1.0, 2.0]);
    }
}
