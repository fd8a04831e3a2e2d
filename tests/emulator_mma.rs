//! The tensor-core and cp.async wrappers of kernels/mma.cuh on the CUDA emulator (no GPU needed): every
//! lane's mma and ldmatrix registers against the PTX ISA's fragment tables (tests/mma_checks, which
//! `cuda_gpu.rs` runs on hardware too), cvt.rna.tf32 rounding, and the misuse the emulator must report
//! rather than hide: a read of a cp.async destination before its wait, a thread ending with copies
//! pending, a warp instruction on a partial warp.

mod mma_checks;

use ltrain::backend::cuda::{selftest, CudaBackend};

fn emulator() -> CudaBackend {
    CudaBackend::new_emulated().expect("the emulator needs no device")
}

#[test]
fn mma_m16n8k8_tf32_follows_the_ptx_fragment_layout() {
    mma_checks::mma_tf32_follows_the_ptx_layout(&emulator());
}

#[test]
fn a_tf32_fragment_in_the_wrong_layout_gives_a_wrong_result() {
    mma_checks::a_tf32_fragment_in_the_wrong_layout_is_caught(&emulator());
}

#[test]
fn mma_m16n8k16_bf16_follows_the_ptx_fragment_layout() {
    mma_checks::mma_bf16_follows_the_ptx_layout(&emulator());
}

#[test]
fn unrounded_tf32_operands_are_truncated() {
    mma_checks::unrounded_tf32_operands_are_truncated(&emulator());
}

#[test]
fn to_tf32_rounds_to_nearest_ties_away_from_zero() {
    mma_checks::to_tf32_rounds_to_nearest_ties_away_from_zero(&emulator());
}

#[test]
fn ldmatrix_follows_the_ptx_fragment_layout() {
    mma_checks::ldmatrix_follows_the_ptx_layout(&emulator());
}

#[test]
fn cp_async_data_arrive_at_the_wait() {
    mma_checks::cp_async_copies_after_its_wait(&emulator());
}

#[test]
fn a_cp_async_destination_read_before_its_wait_is_poison() {
    let be = emulator();
    let src: Vec<f32> = (0..256).map(|i| i as f32).collect();
    let out = selftest::cp_async_read_early(&be, &src, true).unwrap();
    // The first group was waited for, the second not yet when it was read.
    assert_eq!(out[..128], src[..128]);
    assert!(
        out[128..].iter().all(|v| v.to_bits() == u32::MAX),
        "{:?}",
        &out[128..]
    );
}

#[test]
fn a_thread_ending_with_cp_async_copies_pending_is_an_error() {
    let be = emulator();
    let src = vec![1.0f32; 256];
    let err = selftest::cp_async_read_early(&be, &src, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ended before waiting for 1 of its cp.async copies"),
        "{err}"
    );
    // The emulator stays usable afterwards.
    mma_checks::cp_async_copies_after_its_wait(&be);
}

#[test]
fn a_warp_instruction_on_a_partial_warp_is_an_error() {
    let be = emulator();
    let err = selftest::mma_tf32_on_a_partial_warp(&be, 48)
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs all 32 lanes"), "{err}");
    assert!(err.contains("0x0000ffff"), "{err}");
    mma_checks::mma_tf32_follows_the_ptx_layout(&be);
}
