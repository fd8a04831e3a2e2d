//! NCCL where there may be no GPU and no `libnccl` (CI): the probe and the emulator answer with an
//! error, never a panic. The collectives themselves are checked on a GPU (tests/cuda_gpu.rs).

use ltrain::backend::cuda::nccl::{nccl_available, nccl_unique_id, NcclCollective};
use ltrain::backend::cuda::CudaBackend;
use ltrain::dist::World;

#[test]
fn the_probe_answers_and_says_how_to_get_nccl() {
    match nccl_available() {
        Ok(()) => {}
        Err(reason) => {
            assert!(reason.contains("libnccl.so"), "{reason}");
            assert!(reason.contains("LD_LIBRARY_PATH"), "{reason}");
        }
    }
}

#[test]
fn a_unique_id_is_128_bytes_or_an_error() {
    match nccl_unique_id() {
        Ok(id) => assert_eq!(id.len(), 128),
        Err(e) => {
            if nccl_available().is_err() {
                assert!(format!("{e:#}").contains("libnccl.so"), "{e:#}");
            }
        }
    }
}

#[test]
fn the_emulator_refuses_nccl() {
    for be in [
        CudaBackend::new_emulated().unwrap(),
        CudaBackend::new_count_only().unwrap(),
    ] {
        let Err(e) = NcclCollective::new(&be, World::SINGLE, &[0; 128]) else {
            panic!("an NCCL communicator on the emulator");
        };
        assert!(format!("{e:#}").contains("NCCL needs a GPU"), "{e:#}");
    }
}
