//! The CUDA backend on the CPU emulator: the shared op conformance suite, every op against the CPU
//! reference backend on the same random inputs, and whole training steps against the CPU.

mod conformance;
mod cuda_checks;

use conformance::Products;
use ltrain::backend::cuda::{CudaBackend, CudaOptions};

fn emulated() -> CudaBackend {
    CudaBackend::new_emulated().expect("the emulator needs no device")
}

#[test]
fn emulated_cuda_backend_passes_the_conformance_suite() {
    conformance::run_all(&emulated());
}

/// TF32 on: the convolutions on the tensor-core kernels (kernels/conv_mma.cu), the GEMMs rounded as
/// the emulator stands in for cuBLAS's TF32.
#[test]
fn emulated_tf32_backend_passes_the_conformance_suite() {
    conformance::run_all_with(&emulated_tf32(), Products::Tf32);
}

#[test]
fn elementwise_ops_match_the_cpu() {
    cuda_checks::elementwise_ops_match_the_cpu(&emulated());
}

#[test]
fn convolutions_match_the_cpu() {
    cuda_checks::convolutions_match_the_cpu(&emulated());
}

#[test]
fn convolutions_over_many_tiles_and_splits_match_the_cpu() {
    cuda_checks::convolutions_over_many_tiles_and_splits_match_the_cpu(&emulated());
}

fn emulated_tf32() -> CudaBackend {
    CudaBackend::new_emulated_with(CudaOptions { tf32: true }).unwrap()
}

#[test]
fn tensor_core_convolutions_match_the_cpu() {
    cuda_checks::convolutions_match_the_cpu(&emulated_tf32());
}

#[test]
fn tensor_core_convolutions_over_many_tiles_and_splits_match_the_cpu() {
    cuda_checks::convolutions_over_many_tiles_and_splits_match_the_cpu(&emulated_tf32());
}

#[test]
fn tensor_core_convolutions_keep_nans() {
    cuda_checks::nan_inputs_stay_nan_like_on_the_cpu(&emulated_tf32());
}

#[test]
fn batch_norm_matches_the_cpu() {
    cuda_checks::batch_norm_matches_the_cpu(&emulated());
}

#[test]
fn pooling_and_shortcut_match_the_cpu() {
    cuda_checks::pooling_and_shortcut_match_the_cpu(&emulated());
}

#[test]
fn linear_and_rows_match_the_cpu() {
    cuda_checks::linear_and_rows_match_the_cpu(&emulated());
}

#[test]
fn fused_loss_matches_the_cpu() {
    cuda_checks::fused_loss_matches_the_cpu(&emulated());
}

#[test]
fn cosine_cosmax_mixup_and_sgd_match_the_cpu() {
    cuda_checks::cosine_cosmax_mixup_and_sgd_match_the_cpu(&emulated());
}

#[test]
fn out_of_range_indices_are_errors_like_on_the_cpu() {
    cuda_checks::out_of_range_indices_are_errors_like_on_the_cpu(&emulated()).unwrap();
}

#[test]
fn training_steps_match_the_cpu() {
    cuda_checks::training_steps_match_the_cpu(&emulated());
}

#[test]
fn batch_loader_views_match_the_source() {
    cuda_checks::batch_loader_views_match_the_source(&emulated(), 1024);
}
