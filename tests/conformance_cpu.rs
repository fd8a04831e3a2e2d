//! The op conformance suite on the CPU reference backend, plus thread-count independence.

mod conformance;

use conformance::{rng, uniform};
use ltrain::backend::cpu::CpuBackend;
use ltrain::backend::BatchNormAffine;
use ltrain::backend::{Backend, ChannelDims, Conv2dDims};

#[test]
fn cpu_backend_passes_the_conformance_suite() {
    let be = CpuBackend::new(Some(2)).expect("a 2-thread CPU backend");
    assert_eq!(be.name(), "cpu (2 threads)");
    conformance::run_all(&be);
}

/// Bit-identical results with 1 and 2 threads: the conv weight gradient (reduced over fixed batch
/// chunks), the sum and the batch-norm statistics.
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let one = CpuBackend::new(Some(1)).expect("a 1-thread CPU backend");
    let two = CpuBackend::new(Some(2)).expect("a 2-thread CPU backend");
    let d = Conv2dDims {
        n: 37,
        c_in: 8,
        h: 9,
        w: 9,
        c_out: 12,
        k: 3,
        stride: 2,
        pad: 1,
        groups: 2,
    };
    let mut g = rng(99);
    let x = uniform(&mut g, d.input_len(), -1.0, 1.0);
    let dy = uniform(&mut g, d.output_len(), -1.0, 1.0);
    let dw = |be: &CpuBackend| {
        let mut dw = be.zeros(d.weight_len()).unwrap();
        be.conv2d_backward_weight(
            &be.upload(&x).unwrap(),
            &be.upload(&dy).unwrap(),
            d,
            &mut dw,
        )
        .unwrap();
        be.download(&dw).unwrap()
    };
    let (dw1, dw2) = (dw(&one), dw(&two));
    assert!(dw1.iter().any(|&v| v != 0.0));
    assert_eq!(
        dw1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        dw2.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        "conv2d_backward_weight differs between 1 and 2 threads"
    );

    let big = uniform(&mut g, 200_003, -1.0, 1.0);
    let sum = |be: &CpuBackend| {
        be.download(&be.sum(&be.upload(&big).unwrap()).unwrap())
            .unwrap()
    };
    assert_eq!(
        sum(&one)[0].to_bits(),
        sum(&two)[0].to_bits(),
        "sum differs"
    );

    let cd = ChannelDims {
        n: 16,
        c: 4,
        hw: 49,
    };
    let bx = uniform(&mut g, cd.len(), -1.0, 1.0);
    let bn = |be: &CpuBackend| {
        let ones = be.upload(&[1.0; 4]).unwrap();
        let (mut rm, mut rv) = (be.zeros(4).unwrap(), be.upload(&[1.0; 4]).unwrap());
        let (y, _, _) = be
            .batch_norm_train_forward(
                &be.upload(&bx).unwrap(),
                BatchNormAffine {
                    gamma: &ones,
                    beta: &be.zeros(4).unwrap(),
                },
                &mut rm,
                &mut rv,
                cd,
                Default::default(),
            )
            .unwrap();
        (be.download(&y).unwrap(), be.download(&rv).unwrap())
    };
    assert_eq!(
        bn(&one),
        bn(&two),
        "batch norm differs between 1 and 2 threads"
    );
}

#[test]
fn zero_threads_is_an_error() {
    assert!(CpuBackend::new(Some(0)).is_err());
}
