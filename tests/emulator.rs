//! Tests of the CUDA emulator itself (no GPU needed): that `__syncthreads` really orders a block's
//! threads, that warp shuffles and ballots exchange the right lanes, that atomics from many blocks
//! add up, that launches outside the H200's limits are errors (not crashes), that a barrier not every
//! thread reaches is reported, that the GEMM follows cuBLAS's column-major convention exactly, and
//! that no size a 32-bit grid-stride index could wrap on reaches a kernel.

mod cuda_checks;

use ltrain::backend::cuda::{selftest, CudaBackend, CudaOptions, Gemm};

fn emulator() -> CudaBackend {
    CudaBackend::new_emulated().expect("the emulator needs no device")
}

#[test]
fn barrier_dependent_tree_reduction_is_exact() {
    cuda_checks::barrier_dependent_tree_reduction_is_exact(&emulator());
}

#[test]
fn a_missing_barrier_changes_the_result() {
    // The emulator runs thread 0 to its end before the others store their partial sums, and a
    // block's shared memory starts poisoned (NaN): without barriers thread 0 adds NaNs.
    let be = emulator();
    let x = vec![1.0f32; 256];
    assert_eq!(selftest::block_tree_sum(&be, &x, 256).unwrap(), 256.0);
    let without = selftest::block_tree_sum_without_barriers(&be, &x, 256).unwrap();
    assert!(without.is_nan(), "{without}");
}

#[test]
fn warp_shuffle_reduction_matches_naive_sums() {
    cuda_checks::warp_shuffle_reduction_matches_naive_sums(&emulator());
}

#[test]
fn ballot_collects_every_lane() {
    cuda_checks::ballot_collects_every_lane(&emulator());
}

#[test]
fn atomic_histogram_from_many_blocks() {
    cuda_checks::atomic_histogram_from_many_blocks(&emulator());
}

#[test]
fn a_barrier_not_every_thread_reaches_is_an_error() {
    let be = emulator();
    let err = selftest::barrier_deadlock(&be, 64).unwrap_err().to_string();
    assert!(err.contains("deadlock"), "{err}");
    assert!(
        err.contains("63 of 64 threads wait at __syncthreads"),
        "{err}"
    );
    // The emulator stays usable afterwards.
    assert_eq!(selftest::block_tree_sum(&be, &[1.0, 2.0], 32).unwrap(), 3.0);
}

#[test]
fn static_shared_memory_nobody_wrote_reads_as_poison_in_every_block() {
    let be = emulator();
    let threads = 64;
    for _ in 0..2 {
        let out = selftest::unwritten_shared(&be, 3, threads).unwrap();
        let (first, rest) = out.split_at(threads as usize);
        // Block 0 wrote its own values; blocks 1 and 2 wrote nothing, and must not see block 0's
        // (on the emulator they share one copy of the variable), nor the previous launch's.
        assert!(
            first.iter().enumerate().all(|(i, &v)| v == i as u32),
            "{first:?}"
        );
        assert!(rest.iter().all(|&v| v == u32::MAX), "{rest:?}");
    }
}

#[test]
fn launches_outside_the_h200_limits_are_errors() {
    cuda_checks::launches_outside_the_h200_limits_are_errors(&emulator());
}

#[test]
fn gemm_follows_the_cublas_convention() {
    cuda_checks::gemm_follows_the_cublas_convention(&emulator());
}

#[test]
fn a_transposed_operand_mistake_gives_a_wrong_result() {
    cuda_checks::a_transposed_operand_mistake_gives_a_wrong_result(&emulator());
}

#[test]
fn gemm_with_beta_zero_does_not_read_c() {
    cuda_checks::gemm_with_beta_zero_does_not_read_c(&emulator());
}

#[test]
fn gemm_argument_errors_are_reported() {
    let be = emulator();
    let g = Gemm::new(false, false, 4, 3, 2);
    let (a, b, c) = (vec![0.0; 8], vec![0.0; 6], vec![0.0; 24]);
    let bad = [
        (Gemm { lda: 3, ..g }, "lda"),
        (Gemm { ldc: 3, ..g }, "ldc"),
        (Gemm { b_offset: 1, ..g }, "B needs"),
        (
            Gemm {
                batch: 2,
                stride_a: 8,
                stride_b: 6,
                stride_c: 12,
                ..g
            },
            "A needs",
        ),
        (
            Gemm {
                batch: 2,
                stride_c: 4,
                ..g
            },
            "overlap",
        ),
    ];
    for (wrong, what) in bad {
        let err = selftest::gemm(&be, &wrong, &a, &b, &c)
            .unwrap_err()
            .to_string();
        assert!(err.contains(what), "{wrong:?}: {err}");
    }
}

#[test]
fn tf32_emulation_rounds_gemm_inputs() {
    let strict = emulator();
    let tf32 = CudaBackend::new_emulated_with(CudaOptions { tf32: true }).unwrap();
    // 1 + 2^-12 is not representable in TF32 (10 mantissa bits): it rounds to 1.
    let g = Gemm::new(false, false, 1, 1, 1);
    let a = [1.0 + f32::EPSILON * 2048.0];
    let b = [1.0];
    assert_eq!(
        selftest::gemm(&strict, &g, &a, &b, &[0.0]).unwrap(),
        vec![a[0]]
    );
    assert_eq!(
        selftest::gemm(&tf32, &g, &a, &b, &[0.0]).unwrap(),
        vec![1.0]
    );
}

#[test]
fn sizes_a_grid_stride_index_could_wrap_on_are_refused() {
    use ltrain::backend::Backend;
    // Count-only: the sizes are real, the memory is not.
    let be = CudaBackend::new_count_only().unwrap();
    // The largest size the kernels index: 2^32 minus the largest grid-stride step (4096 blocks of
    // 1024 threads), so `i + step` stays below 2^32.
    let largest = (1usize << 32) - 4096 * 1024 - 1;
    be.scale(&be.empty(largest).unwrap(), 2.0)
        .expect("the largest indexable size runs");
    let err = be
        .scale(&be.empty(largest + 1).unwrap(), 2.0)
        .expect_err("a size a grid-stride index could wrap on")
        .to_string();
    assert!(err.contains("32-bit indexing"), "{err}");
}
