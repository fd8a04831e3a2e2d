//! CUDA graphs on the emulator: replays equal eager runs bit for bit, and CUDA's capture rules are
//! errors naming the operation (the same checks run on a GPU in `cuda_gpu.rs`).

mod cuda_checks;

use ltrain::backend::cuda::CudaBackend;

fn emulator() -> CudaBackend {
    CudaBackend::new_emulated().expect("the emulator needs no device")
}

#[test]
fn graph_replays_equal_eager_runs() {
    cuda_checks::graph_replays_equal_eager_runs(&emulator());
}

#[test]
fn capture_rule_violations_are_errors() {
    cuda_checks::capture_rule_violations_are_errors(&emulator());
}
