//! Checks of the CUDA backend shared by `emulator.rs`, `conformance_cuda_emu.rs` (the emulator) and
//! `cuda_gpu.rs` (a real GPU); each takes the CUDA backend to test and panics on a mismatch:
//! - the device runtime itself: barrier and warp-shuffle reductions, ballots, atomics, launch limits,
//!   and the raw GEMM against a naive column-major reference (cuBLAS's convention);
//! - every op against the CPU reference backend on the same random inputs, and whole training steps.
//!
//! GEMMs must be strict fp32 (no TF32) for the tolerances used here.

#![allow(dead_code)]

use anyhow::Result;
use ltrain::augment::Level;
use ltrain::backend::cpu::CpuBackend;
use ltrain::backend::cuda::{selftest, CudaBackend, Gemm, LaunchConfig};
use ltrain::backend::{
    Backend, BatchNormBackwardAct, BatchNormBackwardInputs, BatchNormConfig, BatchNormStats,
    ChannelDims, Conv2dDims, LossArgs, LossReduction, LossTargets, LossWeighting, ParamGrads,
    Pool2dDims, SgdConfig, ShortcutDims, UnfusedLoss,
};
use ltrain::backend::{BatchNormAffine, CosineDims, LinearDims, RowDims, SampleDims, WriteMode};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

fn cpu() -> CpuBackend {
    CpuBackend::new(Some(2)).expect("a 2-thread CPU backend")
}

fn random(rng: &mut StdRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(lo..hi)).collect()
}

fn random_labels(rng: &mut StdRng, n: usize, classes: usize) -> Vec<u32> {
    (0..n)
        .map(|_| rng.random_range(0..classes as u32))
        .collect()
}

/// `|cuda - cpu| <= atol + rtol * |cpu|` element-wise, naming the worst element.
fn assert_near(what: &str, cuda: &[f32], cpu: &[f32], atol: f32, rtol: f32) {
    assert_eq!(cuda.len(), cpu.len(), "{what}: lengths differ");
    let worst = cuda
        .iter()
        .zip(cpu)
        .enumerate()
        .map(|(i, (&g, &w))| (i, (g - w).abs() - (atol + rtol * w.abs())))
        .filter(|&(_, excess)| excess > 0.0 || excess.is_nan())
        .max_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((i, _)) = worst {
        panic!(
            "{what}: element {i}: cuda {} vs cpu {} (atol {atol:e}, rtol {rtol:e})",
            cuda[i], cpu[i]
        );
    }
}

/// Evaluates an expression once per backend, binding `$be`; yields `(cuda, cpu)`.
macro_rules! on {
    ($cuda:expr, |$be:ident| $body:expr) => {{
        let cuda = {
            let $be = $cuda;
            $body
        };
        let cpu = {
            let $be = &cpu();
            $body
        };
        (cuda, cpu)
    }};
}

fn down<B: Backend>(be: &B, buf: &B::Buf) -> Vec<f32> {
    be.download(buf).unwrap()
}

pub fn elementwise_ops_match_the_cpu(cuda: &CudaBackend) {
    let mut g = StdRng::seed_from_u64(1);
    let a = random(&mut g, 3001, -2.0, 2.0);
    let b = random(&mut g, 3001, -2.0, 2.0);
    let (cuda, cpu) = on!(cuda, |be| {
        let (ab, bb) = (be.upload(&a).unwrap(), be.upload(&b).unwrap());
        let mut acc = be.upload(&a).unwrap();
        be.add_assign(&mut acc, &bb).unwrap();
        vec![
            down(be, &acc),
            down(be, &be.scale(&ab, 0.3).unwrap()),
            down(be, &be.sum(&ab).unwrap()),
        ]
    });
    for (i, name) in ["add_assign", "scale", "sum"].iter().enumerate() {
        assert_near(name, &cuda[i], &cpu[i], 1e-4, 1e-6);
    }
}

fn conv_cases() -> Vec<Conv2dDims> {
    let d = |n, c_in, h, w, c_out, k, stride, pad, groups| Conv2dDims {
        n,
        c_in,
        h,
        w,
        c_out,
        k,
        stride,
        pad,
        groups,
    };
    vec![
        d(3, 3, 8, 8, 8, 3, 1, 1, 1),
        d(2, 4, 9, 7, 6, 3, 2, 1, 2),
        d(4, 6, 5, 5, 4, 1, 1, 0, 2), // 1x1: the input is the column matrix
        d(2, 4, 6, 6, 8, 1, 2, 0, 1),
        d(1, 2, 4, 4, 3, 5, 1, 2, 1),
    ]
}

/// Multiples of 1/256 in [-1, 1): 9 significant bits, exact in TF32, so a TF32 backend's products
/// are exact too and only its summation order differs from the CPU's.
fn random_tf32_exact(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| rng.random_range(-256i32..256) as f32 / 256.0)
        .collect()
}

fn conv_outputs<B: Backend>(be: &B, d: Conv2dDims, seed: u64) -> Vec<Vec<f32>> {
    let mut g = StdRng::seed_from_u64(seed);
    let x = be
        .upload(&random_tf32_exact(&mut g, d.input_len()))
        .unwrap();
    let w = be
        .upload(&random_tf32_exact(&mut g, d.weight_len()))
        .unwrap();
    let dy = be
        .upload(&random_tf32_exact(&mut g, d.output_len()))
        .unwrap();
    let mut dw = be.upload(&vec![f32::NAN; d.weight_len()]).unwrap();
    be.conv2d_backward_weight(&x, &dy, d, &mut dw).unwrap();
    // Added to what dx holds, as a residual block's shortcut gradient is.
    let mut dx_added = be.upload(&vec![0.5; d.input_len()]).unwrap();
    be.conv2d_backward_data_into(&dy, &w, d, &mut dx_added, WriteMode::Add)
        .unwrap();
    vec![
        down(be, &be.conv2d_forward(&x, &w, d).unwrap()),
        down(be, &be.conv2d_backward_data(&dy, &w, d).unwrap()),
        down(be, &dw),
        down(be, &dx_added),
    ]
}

const CONV_OUTPUTS: [&str; 4] = [
    "forward",
    "backward_data",
    "backward_weight",
    "backward_data added",
];

pub fn convolutions_match_the_cpu(cuda: &CudaBackend) {
    for (i, d) in conv_cases().into_iter().enumerate() {
        let (cuda, cpu) = on!(cuda, |be| conv_outputs(be, d, i as u64));
        for (j, name) in CONV_OUTPUTS.iter().enumerate() {
            assert_near(&format!("conv {name} {d:?}"), &cuda[j], &cpu[j], 1e-4, 1e-5);
        }
    }
}

/// Convolutions whose products span many tiles, and whose weight gradients are summed in many
/// splits across blocks (the last block of each tile adds the partials up).
pub fn convolutions_over_many_tiles_and_splits_match_the_cpu(cuda: &CudaBackend) {
    let d = |n, c_in, h, w, c_out, k, stride, pad, groups| Conv2dDims {
        n,
        c_in,
        h,
        w,
        c_out,
        k,
        stride,
        pad,
        groups,
    };
    // The FMA tiles (up to 128 channels), and the tensor-core ones: ResNet-32's 3x3 layers (16, 32,
    // 64 channels; stride 2 in phases), grouped, 1x1 of stride 2 (phases without a tap), two
    // channel tiles, and weight gradients split across blocks; 3x3 weight gradients whose steps run
    // along output rows of 16, 8 and 4 positions (the halo kernels), over several tiles of input
    // channels, the last one partial; 3x3 stride-1 forward and data gradients on tiles of whole
    // rows (32 x 32: 4 a tile, over 2 and 3 halo blocks of 16 channels) and whole images (8 x 8,
    // grouped, the last tile one image); 1x1 weight gradients on 16-byte pieces (partial tiles of
    // input and output channels, grouped, K steps across images and a last step past the sum).
    for (i, d) in [
        d(3, 80, 8, 8, 72, 1, 1, 0, 1),
        d(3, 48, 2, 6, 32, 1, 1, 0, 1),
        d(5, 24, 2, 6, 40, 1, 1, 0, 1),
        d(2, 32, 4, 4, 48, 1, 1, 0, 2),
        d(16, 4, 16, 16, 20, 3, 1, 1, 1),
        d(2, 32, 32, 32, 48, 3, 1, 1, 1),
        d(3, 32, 8, 8, 64, 3, 1, 1, 2),
        d(2, 8, 32, 32, 16, 3, 2, 1, 1),
        d(2, 40, 8, 8, 16, 3, 1, 1, 1),
        d(4, 16, 4, 4, 8, 3, 1, 1, 1),
        d(8, 8, 12, 12, 40, 3, 2, 1, 2),
        d(4, 96, 6, 6, 144, 1, 1, 0, 1),
        d(16, 16, 16, 16, 16, 3, 1, 1, 1),
        d(8, 16, 16, 16, 32, 3, 2, 1, 1),
        d(4, 48, 8, 8, 96, 3, 2, 1, 3),
        d(4, 16, 8, 8, 32, 1, 2, 0, 1),
        d(2, 8, 10, 10, 70, 3, 1, 1, 1),
    ]
    .into_iter()
    .enumerate()
    {
        let (cuda, cpu) = on!(cuda, |be| conv_outputs(be, d, 40 + i as u64));
        for (j, name) in CONV_OUTPUTS.iter().enumerate() {
            assert_near(&format!("conv {name} {d:?}"), &cuda[j], &cpu[j], 1e-4, 1e-5);
        }
    }
}

/// NaNs in x and dy (CUDA's canonical 0x7fffffff, and a negative one) make NaN every output they
/// reach, as on the CPU: the tensor-core kernels' tf32 rounding must not turn them into numbers.
/// One 3x3 layer of 16 channels (the compiled-filter kernels, the weight gradient on its halo path)
/// and one of 10 x 10 (the gathered weight gradient).
pub fn nan_inputs_stay_nan_like_on_the_cpu(cuda: &CudaBackend) {
    let d = |h, w| Conv2dDims {
        n: 2,
        c_in: 16,
        h,
        w,
        c_out: 16,
        k: 3,
        stride: 1,
        pad: 1,
        groups: 1,
    };
    for (i, d) in [d(8, 8), d(10, 10)].into_iter().enumerate() {
        let mut g = StdRng::seed_from_u64(70 + i as u64);
        let mut x = random_tf32_exact(&mut g, d.input_len());
        let w = random_tf32_exact(&mut g, d.weight_len());
        let mut dy = random_tf32_exact(&mut g, d.output_len());
        x[d.h * d.w + 3] = f32::from_bits(0x7fff_ffff);
        x[d.input_len() - 7] = f32::from_bits(0xffff_ffff);
        dy[5 * d.h * d.w + 2 * d.w + 4] = f32::from_bits(0x7fff_ffff);
        let (cuda, cpu) = on!(cuda, |be| {
            let (xb, wb, dyb) = (
                be.upload(&x).unwrap(),
                be.upload(&w).unwrap(),
                be.upload(&dy).unwrap(),
            );
            let mut dw = be.upload(&vec![0.0; d.weight_len()]).unwrap();
            be.conv2d_backward_weight(&xb, &dyb, d, &mut dw).unwrap();
            vec![
                down(be, &be.conv2d_forward(&xb, &wb, d).unwrap()),
                down(be, &be.conv2d_backward_data(&dyb, &wb, d).unwrap()),
                down(be, &dw),
            ]
        });
        for (j, name) in CONV_OUTPUTS.iter().take(3).enumerate() {
            let nan = |v: &[f32]| v.iter().map(|x| x.is_nan()).collect::<Vec<_>>();
            assert!(nan(&cpu[j]).contains(&true), "{name}: the case has NaNs");
            assert_eq!(
                nan(&cuda[j]),
                nan(&cpu[j]),
                "conv {name} {d:?}: NaN positions"
            );
        }
    }
}

pub fn batch_norm_matches_the_cpu(cuda: &CudaBackend) {
    let d = ChannelDims { n: 6, c: 5, hw: 13 };
    let mut g = StdRng::seed_from_u64(2);
    let x = random(&mut g, d.len(), -2.0, 3.0);
    let dy = random(&mut g, d.len(), -1.0, 1.0);
    let gamma = random(&mut g, d.c, 0.5, 1.5);
    let beta = random(&mut g, d.c, -0.5, 0.5);
    let cfg = BatchNormConfig {
        momentum: 0.2,
        eps: 1e-3,
    };
    let (cuda, cpu) = on!(cuda, |be| {
        let (xb, gb, bb) = (
            be.upload(&x).unwrap(),
            be.upload(&gamma).unwrap(),
            be.upload(&beta).unwrap(),
        );
        let mut rm = be.upload(&[0.1; 5]).unwrap();
        let mut rv = be.upload(&[0.9; 5]).unwrap();
        let (y, mean, inv_std) = be
            .batch_norm_train_forward(
                &xb,
                BatchNormAffine {
                    gamma: &gb,
                    beta: &bb,
                },
                &mut rm,
                &mut rv,
                d,
                cfg,
            )
            .unwrap();
        let eval = be
            .batch_norm_eval_forward(
                &xb,
                BatchNormAffine {
                    gamma: &gb,
                    beta: &bb,
                },
                &rm,
                &rv,
                d,
                cfg,
            )
            .unwrap();
        let dyb = be.upload(&dy).unwrap();
        let inputs = BatchNormBackwardInputs {
            dy: &dyb,
            x: &xb,
            gamma: &gb,
            saved: BatchNormStats {
                mean: &mean,
                var: &inv_std,
            },
        };
        let mut dgamma = be.upload(&vec![f32::NAN; d.c]).unwrap();
        let mut dbeta = be.upload(&vec![f32::NAN; d.c]).unwrap();
        let grads = ParamGrads {
            weight: &mut dgamma,
            bias: &mut dbeta,
        };
        let dx = be
            .batch_norm_backward(inputs, d, BatchNormBackwardAct::none(), grads)
            .unwrap();
        [&y, &mean, &inv_std, &rm, &rv, &eval, &dx, &dgamma, &dbeta]
            .iter()
            .map(|b| down(be, b))
            .collect::<Vec<_>>()
    });
    let names = [
        "y",
        "mean",
        "inv_std",
        "running_mean",
        "running_var",
        "eval",
        "dx",
        "dgamma",
        "dbeta",
    ];
    for (i, name) in names.iter().enumerate() {
        assert_near(&format!("batch norm {name}"), &cuda[i], &cpu[i], 1e-5, 1e-5);
    }
}

pub fn pooling_and_shortcut_match_the_cpu(cuda: &CudaBackend) {
    let pd = Pool2dDims {
        n: 2,
        c: 3,
        h: 7,
        w: 6,
        k: 3,
        stride: 2,
        pad: 1,
    };
    let cd = ChannelDims { n: 3, c: 4, hw: 10 };
    let sd = ShortcutDims {
        n: 2,
        c_in: 4,
        h: 5,
        w: 6,
        c_out: 8,
        stride: 2,
    };
    let mut g = StdRng::seed_from_u64(3);
    // Coarse values so windows hold ties: the first maximum must win on both backends.
    let x: Vec<f32> = (0..pd.n * pd.c * pd.h * pd.w)
        .map(|_| g.random_range(0..4) as f32)
        .collect();
    let dy_pool = random(&mut g, pd.n * pd.c * pd.h_out() * pd.w_out(), -1.0, 1.0);
    let xa = random(&mut g, cd.len(), -1.0, 1.0);
    let dya = random(&mut g, cd.n * cd.c, -1.0, 1.0);
    let xs = random(&mut g, sd.n * sd.c_in * sd.h * sd.w, -1.0, 1.0);
    let dys = random(&mut g, sd.n * sd.c_out * sd.h_out() * sd.w_out(), -1.0, 1.0);
    let (cuda, cpu) = on!(cuda, |be| {
        let (y, argmax) = be.max_pool_forward(&be.upload(&x).unwrap(), pd).unwrap();
        let dx = be
            .max_pool_backward(&be.upload(&dy_pool).unwrap(), &argmax, pd)
            .unwrap();
        let argmax: Vec<f32> = be
            .download_index(&argmax)
            .unwrap()
            .into_iter()
            .map(|i| i as f32)
            .collect();
        vec![
            down(be, &y),
            argmax,
            down(be, &dx),
            down(
                be,
                &be.global_avg_pool_forward(&be.upload(&xa).unwrap(), cd)
                    .unwrap(),
            ),
            down(
                be,
                &be.global_avg_pool_backward(&be.upload(&dya).unwrap(), cd)
                    .unwrap(),
            ),
            down(
                be,
                &be.shortcut_a_forward(&be.upload(&xs).unwrap(), sd).unwrap(),
            ),
            {
                let mut dx = be.upload(&vec![f32::NAN; sd.input_len()]).unwrap();
                be.shortcut_a_backward(&be.upload(&dys).unwrap(), sd, &mut dx)
                    .unwrap();
                down(be, &dx)
            },
        ]
    });
    let names = [
        "max_pool",
        "argmax",
        "max_pool_backward",
        "avg_pool",
        "avg_pool_backward",
        "shortcut",
        "shortcut_backward",
    ];
    for (i, name) in names.iter().enumerate() {
        assert_near(name, &cuda[i], &cpu[i], 1e-6, 1e-6);
    }
}

pub fn linear_and_rows_match_the_cpu(cuda: &CudaBackend) {
    let (n, d_in, d_out) = (7, 9, 5);
    let mut g = StdRng::seed_from_u64(4);
    let x = random(&mut g, n * d_in, -1.0, 1.0);
    let w = random(&mut g, d_out * d_in, -1.0, 1.0);
    let b = random(&mut g, d_out, -1.0, 1.0);
    let dy = random(&mut g, n * d_out, -1.0, 1.0);
    let rows: Vec<f32> = (0..n * d_out)
        .map(|_| g.random_range(0..3) as f32)
        .collect();
    let idx = random_labels(&mut g, n, d_out);
    let (cuda, cpu) = on!(cuda, |be| {
        let (xb, wb) = (be.upload(&x).unwrap(), be.upload(&w).unwrap());
        let y = be
            .linear_forward(
                &xb,
                &wb,
                &be.upload(&b).unwrap(),
                LinearDims { n, d_in, d_out },
            )
            .unwrap();
        let mut dw = be.upload(&vec![f32::NAN; d_out * d_in]).unwrap();
        let mut db = be.upload(&vec![f32::NAN; d_out]).unwrap();
        let grads = ParamGrads {
            weight: &mut dw,
            bias: &mut db,
        };
        let dx = be
            .linear_backward(
                &be.upload(&dy).unwrap(),
                &xb,
                &wb,
                LinearDims { n, d_in, d_out },
                grads,
            )
            .unwrap();
        let r = be.upload(&rows).unwrap();
        let (max, argmax) = be.row_max(&r, RowDims { n, c: d_out }).unwrap();
        vec![
            down(be, &y),
            down(be, &dx),
            down(be, &dw),
            down(be, &db),
            down(be, &be.softmax_rows(&y, RowDims { n, c: d_out }).unwrap()),
            down(
                be,
                &be.log_softmax_rows(&y, RowDims { n, c: d_out }).unwrap(),
            ),
            down(
                be,
                &be.add_row_bias(&y, &be.upload(&b).unwrap(), RowDims { n, c: d_out })
                    .unwrap(),
            ),
            down(
                be,
                &be.gather_rows(&y, &be.upload_index(&idx).unwrap(), RowDims { n, c: d_out })
                    .unwrap(),
            ),
            down(be, &max),
            be.download_index(&argmax)
                .unwrap()
                .into_iter()
                .map(|i| i as f32)
                .collect(),
        ]
    });
    let names = [
        "linear",
        "dx",
        "dw",
        "db",
        "softmax",
        "log_softmax",
        "add_row_bias",
        "gather",
        "row_max",
        "row_argmax",
    ];
    for (i, name) in names.iter().enumerate() {
        assert_near(name, &cuda[i], &cpu[i], 1e-5, 1e-5);
    }
}

/// Every weighting, both reductions, single and mixed targets, with and without adjustment.
pub fn fused_loss_matches_the_cpu(cuda: &CudaBackend) {
    let (n, c) = (9, 6);
    let mut g = StdRng::seed_from_u64(5);
    let logits = random(&mut g, n * c, -3.0, 3.0);
    let adj = random(&mut g, c, -2.0, 0.0);
    let ya = random_labels(&mut g, n, c);
    let yb = random_labels(&mut g, n, c);
    let cw = random(&mut g, c, 0.2, 2.0);
    let cos_y = random(&mut g, n, -1.0, 1.0);
    let cos_star = random(&mut g, c, -1.0, 1.0);
    for reduction in [LossReduction::Mean, LossReduction::WeightNormalized] {
        for with_adj in [false, true] {
            for case in 0..6 {
                let (cuda, cpu) = on!(cuda, |be| {
                    let l = be.upload(&logits).unwrap();
                    let a = be.upload_index(&ya).unwrap();
                    let b = be.upload_index(&yb).unwrap();
                    let adjb = be.upload(&adj).unwrap();
                    let cwb = be.upload(&cw).unwrap();
                    let (cyb, csb) = (be.upload(&cos_y).unwrap(), be.upload(&cos_star).unwrap());
                    let lambda = be.upload(&[0.3]).unwrap();
                    let single = LossTargets::Single(&a);
                    let mixed = LossTargets::Mixed {
                        a: &a,
                        b: &b,
                        lambda: &lambda,
                    };
                    let (targets, weighting) = match case {
                        0 => (single, LossWeighting::Unit),
                        1 => (single, LossWeighting::PerClass(&cwb)),
                        2 => (single, LossWeighting::Focal { gamma: 2.0 }),
                        3 => (
                            single,
                            LossWeighting::Sla {
                                cos_y: &cyb,
                                cos_star: &csb,
                                gamma: 0.5,
                                tau: 1.5,
                            },
                        ),
                        4 => (mixed, LossWeighting::Unit),
                        _ => (mixed, LossWeighting::PerClass(&cwb)),
                    };
                    let out = be
                        .fused_loss(LossArgs {
                            logits: &l,
                            n,
                            c,
                            targets,
                            adjustment: with_adj.then_some(&adjb),
                            weighting,
                            reduction,
                        })
                        .unwrap();
                    vec![
                        down(be, &out.loss),
                        down(be, &out.prob),
                        down(be, &out.weight),
                        down(be, &out.dlogits),
                    ]
                });
                for (i, name) in ["loss", "prob", "weight", "dlogits"].iter().enumerate() {
                    let what = format!(
                        "fused_loss {name} (case {case}, {reduction:?}, adjustment {with_adj})"
                    );
                    assert_near(&what, &cuda[i], &cpu[i], 2e-6, 2e-5);
                }
            }
        }
    }
}

pub fn cosine_cosmax_mixup_and_sgd_match_the_cpu(cuda: &CudaBackend) {
    let (n, d, c) = (12, 7, 4);
    let mut g = StdRng::seed_from_u64(6);
    let z = random(&mut g, n * d, -1.0, 1.0);
    let w = random(&mut g, c * d, -1.0, 1.0);
    let labels = random_labels(&mut g, n, c);
    // Coarse logits so classes hold ties (the earliest sample must win) and some beat the table.
    let logits: Vec<f32> = (0..n * c).map(|_| g.random_range(0..4) as f32).collect();
    let table = [1.5f32, 2.0, 5.0, -1.0];
    let mut perm: Vec<u32> = (0..n as u32).collect();
    perm.shuffle(&mut g);
    let p = random(&mut g, 500, -1.0, 1.0);
    let grad = random(&mut g, 500, -1.0, 1.0);
    let vel = random(&mut g, 500, -0.1, 0.1);
    let (cuda, cpu) = on!(cuda, |be| {
        let cos = be
            .row_cosine(
                &be.upload(&z).unwrap(),
                &be.upload(&w).unwrap(),
                &be.upload_index(&labels).unwrap(),
                CosineDims { n, d, c },
            )
            .unwrap();
        let (mut tl, mut tc) = (be.upload(&table).unwrap(), be.zeros(c).unwrap());
        be.cosmax_update(
            &be.upload(&logits).unwrap(),
            &cos,
            &be.upload_index(&labels).unwrap(),
            RowDims { n, c },
            &mut tl,
            &mut tc,
        )
        .unwrap();
        let mixed = be
            .mixup(
                &be.upload(&z).unwrap(),
                &be.upload_index(&perm).unwrap(),
                &be.upload(&[0.7]).unwrap(),
                SampleDims { n, per_sample: d },
            )
            .unwrap();
        let mut out = vec![
            down(be, &cos),
            down(be, &tl),
            down(be, &tc),
            down(be, &mixed),
        ];
        for nesterov in [false, true] {
            let (mut pb, mut vb) = (be.upload(&p).unwrap(), be.upload(&vel).unwrap());
            let cfg = SgdConfig {
                momentum: 0.9,
                weight_decay: 5e-4,
                nesterov,
            };
            let lr = be.upload(&[0.1]).unwrap();
            be.sgd_step(&mut pb, &be.upload(&grad).unwrap(), &mut vb, &lr, cfg)
                .unwrap();
            out.push(down(be, &pb));
            out.push(down(be, &vb));
        }
        out
    });
    let names = [
        "row_cosine",
        "table_logit",
        "table_cos",
        "mixup",
        "sgd param",
        "sgd velocity",
        "nesterov param",
        "nesterov velocity",
    ];
    for (i, name) in names.iter().enumerate() {
        assert_near(name, &cuda[i], &cpu[i], 1e-6, 1e-6);
    }
}

/// Out-of-range labels, indices and permutation entries are errors (reported by the op on the
/// emulator, by the next synchronisation on a GPU), once, and the backend stays usable.
pub fn out_of_range_indices_are_errors_like_on_the_cpu(cuda: &CudaBackend) -> Result<()> {
    let be = cuda;
    let x = be.upload(&[0.0; 6])?;
    let bad = be.upload_index(&[0, 3])?;
    let fails = |what: &str, r: Result<()>| {
        let r = r.and_then(|()| be.synchronize());
        assert!(r.is_err(), "{what}: expected an out-of-range error");
    };
    fails(
        "gather_rows",
        be.gather_rows(&x, &bad, RowDims { n: 2, c: 3 }).map(drop),
    );
    fails(
        "mixup",
        be.mixup(
            &x,
            &be.upload_index(&[0, 2])?,
            &be.upload(&[0.5])?,
            SampleDims {
                n: 2,
                per_sample: 3,
            },
        )
        .map(drop),
    );
    fails(
        "row_cosine",
        be.row_cosine(
            &x,
            &x,
            &be.upload_index(&[0, 2])?,
            CosineDims { n: 2, d: 3, c: 2 },
        )
        .map(drop),
    );
    let (mut tl, mut tc) = (be.zeros(3)?, be.zeros(3)?);
    fails(
        "cosmax_update",
        be.cosmax_update(
            &x,
            &be.zeros(2)?,
            &bad,
            RowDims { n: 2, c: 3 },
            &mut tl,
            &mut tc,
        ),
    );
    let ok = be.gather_rows(&x, &be.upload_index(&[0, 2])?, RowDims { n: 2, c: 3 })?;
    assert_eq!(be.download(&ok)?, vec![0.0, 0.0]);
    be.synchronize()
}

/// Whole training steps (three-expert ResNet-32 forward, fused losses, backward, SGD) run on the
/// CUDA backend give the CPU backend's loss and weights: a mixup step with logit adjustment,
/// then a class-weighted, weight-normalised step.
pub fn training_steps_match_the_cpu(cuda: &CudaBackend) {
    use ltrain::config::TrainConfig;
    use ltrain::method::{EpochPlan, LossSetup, Reweighting};
    use ltrain::model::MultiExpertNet;
    use ltrain::nn::TensorData;
    use ltrain::train::loader::BatchViews;
    use ltrain::train::step::{Mixup, StepBatch, StepContext, StepRunner};

    struct StepData {
        views: Vec<Vec<f32>>,
        labels: Vec<u32>,
        perm: Vec<u32>,
        adjustment: Vec<f32>,
        class_weights: Vec<f32>,
        classes: usize,
        side: usize,
    }
    let (classes, n, side) = (5, 6, 8);
    let mut g = StdRng::seed_from_u64(8);
    let views = (0..3)
        .map(|_| random(&mut g, n * 3 * side * side, -1.0, 1.0))
        .collect();
    let labels = random_labels(&mut g, n, classes);
    let mut perm: Vec<u32> = (0..n as u32).collect();
    perm.shuffle(&mut g);
    let data = StepData {
        views,
        labels,
        perm,
        adjustment: random(&mut g, classes, -2.0, 0.0),
        class_weights: random(&mut g, classes, 0.5, 1.5),
        classes,
        side,
    };
    let cfg = TrainConfig::default();

    fn steps<B: Backend>(be: &B, cfg: &TrainConfig, data: &StepData) -> Vec<Vec<f32>> {
        let StepData { classes, side, .. } = *data;
        let mut model = MultiExpertNet::resnet32(be, classes, 3, (24, 48), 3).unwrap();
        let x = be.upload(&data.views.concat()).unwrap();
        let sgd = SgdConfig {
            momentum: 0.9,
            weight_decay: 5e-4,
            nesterov: false,
        };
        let plan = |reweighting| EpochPlan {
            stage: 1,
            augment: false,
            mixup_alpha: 0.2,
            logit_adjusted: true,
            reweighting,
        };
        let (mixup_plan, weighted_plan) =
            (plan(Reweighting::None), plan(Reweighting::InverseFrequency));
        let mut out = Vec::new();
        let plain_losses = LossSetup {
            adjustment: be.upload(&data.adjustment).unwrap(),
            class_weights: None,
            reduction: LossReduction::Mean,
        };
        let first = StepContext {
            cfg,
            plan: &mixup_plan,
            losses: &plain_losses,
            sgd,
            reduce: None,
        };
        let samples: Vec<usize> = (0..data.labels.len()).collect();
        let batch = |mixup| StepBatch {
            views_from: BatchViews::Ready(be.view(&x, 0, be.len(&x)).unwrap()),
            views: data.views.len(),
            samples: &samples,
            labels: &data.labels,
            mixup,
            hw: (side, side),
            lr: 0.1,
            global_n: data.labels.len(),
        };
        let mut runner = StepRunner::new(be, false).unwrap();
        let mixup = Mixup {
            lambda: 0.6,
            perm: data.perm.clone(),
        };
        runner
            .run(be, &mut model, &first, batch(Some(mixup)), &mut [])
            .unwrap();
        out.push(be.download(runner.loss_sum()).unwrap());
        let weighted_losses = LossSetup {
            adjustment: be.upload(&data.adjustment).unwrap(),
            class_weights: Some(be.upload(&data.class_weights).unwrap()),
            reduction: LossReduction::WeightNormalized,
        };
        let second = StepContext {
            plan: &weighted_plan,
            losses: &weighted_losses,
            ..first
        };
        runner.set_loss_sum(be, 0.0).unwrap();
        runner
            .run(be, &mut model, &second, batch(None), &mut [])
            .unwrap();
        out.push(be.download(runner.loss_sum()).unwrap());
        for t in model.state_dict(be).unwrap() {
            if let TensorData::F32(v) = t.data {
                out.push(v);
            }
        }
        out
    }
    let cuda = steps(cuda, &cfg, &data);
    let cpu = steps(&cpu(), &cfg, &data);
    assert_eq!(cuda.len(), cpu.len());
    assert_near("step 1 loss", &cuda[0], &cpu[0], 1e-5, 1e-5);
    assert_near("step 2 loss", &cuda[1], &cpu[1], 1e-5, 1e-5);
    for (i, (a, b)) in cuda.iter().zip(&cpu).enumerate().skip(2) {
        assert_near(
            &format!("state tensor {i} after two steps"),
            a,
            b,
            1e-4,
            1e-4,
        );
    }
}

// ---- the device runtime itself ----

/// Small integers: every partial sum is exact in f32, so any summation order gives the same value.
fn integer_data(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-8..=8) as f32).collect()
}

pub fn barrier_dependent_tree_reduction_is_exact(be: &CudaBackend) {
    for (n, threads) in [(1000, 256), (37, 64), (4096, 1024), (5, 32)] {
        let x = integer_data(n, n as u64);
        let want: f32 = x.iter().sum();
        let got = selftest::block_tree_sum(be, &x, threads).unwrap();
        assert_eq!(got, want, "n = {n}, {threads} threads");
    }
}

pub fn warp_shuffle_reduction_matches_naive_sums(be: &CudaBackend) {
    let x = integer_data(32 * 12, 7);
    for threads in [32, 64, 128] {
        let got = selftest::warp_sums(be, &x, threads).unwrap();
        let want: Vec<f32> = x.chunks(32).map(|w| w.iter().sum()).collect();
        assert_eq!(got, want, "{threads} threads per block");
    }
}

pub fn ballot_collects_every_lane(be: &CudaBackend) {
    let x = integer_data(32 * 5, 11);
    let got = selftest::warp_ballots(be, &x, 64).unwrap();
    let want: Vec<u32> = x
        .chunks(32)
        .map(|w| {
            w.iter()
                .enumerate()
                .filter(|(_, &v)| v > 0.0)
                .fold(0u32, |acc, (lane, _)| acc | (1 << lane))
        })
        .collect();
    assert_eq!(got, want);
}

pub fn atomic_histogram_from_many_blocks(be: &CudaBackend) {
    let mut rng = StdRng::seed_from_u64(3);
    let values: Vec<u32> = (0..5000).map(|_| rng.random_range(0..1000)).collect();
    let bins = 17;
    let mut want = vec![0u32; bins as usize];
    for v in &values {
        want[(v % bins) as usize] += 1;
    }
    // 6 blocks x 96 threads, grid-stride: every thread adds into shared bins.
    let got = selftest::histogram(be, &values, bins, LaunchConfig::linear(6, 96)).unwrap();
    assert_eq!(got, want);
}

pub fn launches_outside_the_h200_limits_are_errors(be: &CudaBackend) {
    let cfg =
        |grid: (u32, u32, u32), block: (u32, u32, u32), smem: u32, large: bool| LaunchConfig {
            grid,
            block,
            shared_mem_bytes: smem,
            large_shared_mem: large,
        };
    let rejected = [
        (cfg((1, 1, 1), (1025, 1, 1), 0, false), "threads per block"),
        (cfg((1, 1, 1), (32, 32, 2), 0, false), "threads per block"),
        (cfg((1, 1, 1), (1, 1, 65), 0, false), "block.z"),
        (cfg((1, 65536, 1), (32, 1, 1), 0, false), "grid.y"),
        (cfg((1, 1, 65536), (32, 1, 1), 0, false), "grid.z"),
        (cfg((1 << 31, 1, 1), (32, 1, 1), 0, false), "grid.x"),
        (cfg((1, 1, 1), (32, 1, 1), 48 * 1024 + 1, false), "default"),
        (cfg((1, 1, 1), (32, 1, 1), 227 * 1024 + 1, true), "opt-in"),
        (cfg((0, 1, 1), (32, 1, 1), 0, false), "empty launch"),
    ];
    for (c, what) in rejected {
        let err = selftest::launch_noop(be, c)
            .expect_err(&format!("{c:?} must be rejected"))
            .to_string();
        assert!(err.contains(what), "{c:?}: {err}");
    }
    let accepted = [
        cfg((1, 1, 1), (1024, 1, 1), 0, false),
        cfg((1, 1, 1), (16, 16, 4), 0, false),
        cfg((1, 1, 1), (32, 1, 1), 48 * 1024, false),
        cfg((1, 1, 1), (32, 1, 1), 227 * 1024, true),
        cfg((2, 3, 2), (32, 2, 1), 0, false),
    ];
    for c in accepted {
        selftest::launch_noop(be, c).unwrap_or_else(|e| panic!("{c:?}: {e:#}"));
    }
    // More threads than a kernel is compiled for: the warp-sum kernel declares no
    // `__launch_bounds__`, so it takes at most 256.
    let err = selftest::warp_sums(be, &integer_data(32 * 16, 1), 512)
        .expect_err("512 threads exceed the default launch bound")
        .to_string();
    assert!(
        err.contains("selftest_warp_sum") && err.contains("more than the 256"),
        "{err}"
    );
}

/// Naive column-major reference: C_i = alpha op(A_i) op(B_i) + beta C_i, in f64.
fn reference_gemm(g: &Gemm, a: &[f32], b: &[f32], c: &[f32]) -> Vec<f32> {
    let mut out = c.to_vec();
    for batch in 0..g.batch {
        let (a0, b0, c0) = (
            g.a_offset + batch * g.stride_a,
            g.b_offset + batch * g.stride_b,
            g.c_offset + batch * g.stride_c,
        );
        for i in 0..g.m {
            for j in 0..g.n {
                let mut acc = 0.0f64;
                for p in 0..g.k {
                    let av = if g.transa {
                        a[a0 + p + i * g.lda]
                    } else {
                        a[a0 + i + p * g.lda]
                    };
                    let bv = if g.transb {
                        b[b0 + j + p * g.ldb]
                    } else {
                        b[b0 + p + j * g.ldb]
                    };
                    acc += av as f64 * bv as f64;
                }
                let dst = c0 + i + j * g.ldc;
                let prior = if g.beta == 0.0 {
                    0.0
                } else {
                    g.beta as f64 * c[dst] as f64
                };
                out[dst] = (g.alpha as f64 * acc + prior) as f32;
            }
        }
    }
    out
}

fn random_unit(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn max_diff(x: &[f32], y: &[f32]) -> f32 {
    x.iter()
        .zip(y)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

/// A strided-batched GEMM with padded leading dimensions, offsets, alpha and beta.
fn padded_case(transa: bool, transb: bool) -> Gemm {
    let (m, n, k) = (5, 3, 4);
    let (ra, _) = if transa { (k, m) } else { (m, k) };
    let (rb, _) = if transb { (n, k) } else { (k, n) };
    Gemm {
        alpha: 1.5,
        beta: -0.5,
        a_offset: 3,
        lda: ra + 2,
        stride_a: 40,
        b_offset: 1,
        ldb: rb + 1,
        stride_b: 30,
        c_offset: 2,
        ldc: m + 3,
        stride_c: 30,
        batch: 2,
        ..Gemm::new(transa, transb, m, n, k)
    }
}

pub fn gemm_follows_the_cublas_convention(be: &CudaBackend) {
    let mut rng = StdRng::seed_from_u64(5);
    for (transa, transb) in [(false, false), (true, false), (false, true), (true, true)] {
        let g = padded_case(transa, transb);
        let (a, b, c) = (
            random_unit(&mut rng, 90),
            random_unit(&mut rng, 70),
            random_unit(&mut rng, 70),
        );
        let got = selftest::gemm(be, &g, &a, &b, &c).unwrap();
        let want = reference_gemm(&g, &a, &b, &c);
        assert!(
            max_diff(&got, &want) < 1e-5,
            "transa {transa} transb {transb}: {got:?} vs {want:?}"
        );
        // Elements of C outside the m x n blocks are untouched.
        assert_eq!(got[0], c[0]);
        assert_eq!(
            got[2 + 5],
            c[2 + 5],
            "row padding (ldc > m) must not be written"
        );
    }
}

pub fn a_transposed_operand_mistake_gives_a_wrong_result(be: &CudaBackend) {
    let mut rng = StdRng::seed_from_u64(9);
    // Square shapes, so the mistaken call is valid and only the values can tell.
    let g = Gemm::new(false, true, 4, 4, 4);
    let (a, b, c) = (
        random_unit(&mut rng, 16),
        random_unit(&mut rng, 16),
        vec![0.0; 16],
    );
    let want = reference_gemm(&g, &a, &b, &c);
    let right = selftest::gemm(be, &g, &a, &b, &c).unwrap();
    assert!(max_diff(&right, &want) < 1e-5);
    for wrong in [Gemm { transb: false, ..g }, Gemm { transa: true, ..g }] {
        let got = selftest::gemm(be, &wrong, &a, &b, &c).unwrap();
        assert!(
            max_diff(&got, &want) > 1e-2,
            "{wrong:?} should not match the reference"
        );
    }
}

pub fn gemm_with_beta_zero_does_not_read_c(be: &CudaBackend) {
    let mut rng = StdRng::seed_from_u64(13);
    let g = Gemm::new(false, false, 3, 2, 5);
    let (a, b) = (random_unit(&mut rng, 15), random_unit(&mut rng, 10));
    let got = selftest::gemm(be, &g, &a, &b, &[f32::NAN; 6]).unwrap();
    let want = reference_gemm(&g, &a, &b, &[0.0; 6]);
    assert!(max_diff(&got, &want) < 1e-5, "{got:?}");
}

/// The training loader on the CUDA backend, both paths: every batch's views equal the source's
/// `load_views`. Each step queues heavy work without waiting for it, so the next batch's staged upload
/// sits behind it while the loader wants its staging set back: a loader that rewrote staging memory
/// before the copy out of it had run would corrupt the views. `busy_len`: elements of the busy buffer
/// (large on a GPU so the queued work outlasts the loader's wake-up; small on the emulator, which
/// runs synchronously anyway).
pub fn batch_loader_views_match_the_source(be: &CudaBackend, busy_len: usize) {
    use ltrain::data::ImageSet;
    use ltrain::train::loader::BatchLoader;
    use ltrain::train::ImageSource;

    let (h, w, n) = (32, 32, 96);
    let mut set = ImageSet::empty(h, w, 3);
    for s in 0..n {
        let pixels: Vec<u8> = (0..3 * h * w)
            .map(|i| ((i * 37 + s * 101 + (i / w) * 13) % 251) as u8)
            .collect();
        set.push(&pixels, (s % 3) as u32);
    }
    let order: Vec<usize> = (0..n).map(|i| (i * 41) % n).collect();
    let batches: Vec<&[usize]> = order.chunks(8).collect();
    let levels = Level::AUGMENTED;
    let mut busy = be.upload(&vec![1.0; busy_len]).unwrap();
    for on_device in [false, true] {
        let mut loader = BatchLoader::new(be, &set, 8, on_device).unwrap();
        loader
            .for_each(be, &batches, &levels, 5, 1, |i, batch, views| {
                let x = views.build(be, batch, levels.len())?;
                let want = set.load_views(batch, &levels, 5, 1)?;
                let got = be.download(&x)?;
                for (level, (got, want)) in got.chunks(want[0].len()).zip(&want).enumerate() {
                    assert_near(
                        &format!("batch {i} level {level} (on device: {on_device})"),
                        got,
                        want,
                        1e-6,
                        0.0,
                    );
                }
                for _ in 0..8 {
                    busy = be.scale(&busy, 2.0)?;
                    busy = be.scale(&busy, 0.5)?;
                }
                Ok(())
            })
            .unwrap();
    }
    assert!(be.download(&busy).unwrap().iter().all(|&v| v == 1.0));
}

// ---- CUDA graphs ----

/// A few ops captured once and replayed `steps` times leave the same state as `steps` eager runs
/// (bit for bit), and each replay is one host operation doing the captured device work.
pub fn graph_replays_equal_eager_runs(be: &CudaBackend) {
    let mut rng = StdRng::seed_from_u64(41);
    let x0 = random(&mut rng, 1000, -1.0, 1.0);
    let step = |acc: &mut <CudaBackend as ltrain::backend::Buffers>::Buf,
                x: &<CudaBackend as ltrain::backend::Buffers>::Buf| {
        let y = be.scale(x, 0.5).unwrap();
        be.add_assign(acc, &be.scale(&y, 1.0 + 1e-3).unwrap())
            .unwrap();
        be.add_assign(acc, &y).unwrap();
    };
    let steps = 4;
    let eager = {
        let x = be.upload(&x0).unwrap();
        let mut acc = be.zeros(1000).unwrap();
        for _ in 0..steps {
            step(&mut acc, &x);
        }
        be.download(&acc).unwrap()
    };
    let x = be.upload(&x0).unwrap();
    let mut acc = be.zeros(1000).unwrap();
    let before = be.device_counters().unwrap();
    step(&mut acc, &x); // warm-up: the cache then holds the step's memory
    let eager_step = be.device_counters().unwrap().since(&before);
    be.begin_capture().unwrap();
    step(&mut acc, &x);
    let graph = be.end_capture().unwrap();
    let before = be.device_counters().unwrap();
    for _ in 1..steps {
        be.replay(&graph).unwrap();
    }
    let work = be.device_counters().unwrap().since(&before);
    assert_eq!(
        be.download(&acc).unwrap(),
        eager,
        "replays differ from eager runs"
    );
    let replays = (steps - 1) as u64;
    assert_eq!(work.graph_launches, replays);
    assert_eq!(work.host_operations(), replays, "{}", work.table());
    assert_eq!(work.kernel_launches, 4 * replays, "{}", work.table());
    assert_eq!(work.kernel_launches, eager_step.kernel_launches * replays);
    assert_eq!(work.bytes_moved, eager_step.bytes_moved * replays);
    assert_eq!(work.allocations, 0);
}

/// Inside a capture, what CUDA forbids there is an error naming the operation, and the capture can
/// still be ended.
pub fn capture_rule_violations_are_errors(be: &CudaBackend) {
    let x = be.upload(&[1.0, 2.0, 3.0]).unwrap();
    let target = std::cell::RefCell::new(be.zeros(3).unwrap());
    let cases: [(&str, &dyn Fn() -> Result<()>); 4] = [
        ("device-to-host copy", &|| be.download(&x).map(drop)),
        ("pageable host memory", &|| {
            be.write(&mut target.borrow_mut(), &[4.0; 3])
        }),
        ("stream synchronisation", &|| be.synchronize()),
        (
            "fresh device allocation",
            &|| be.zeros(123_457).map(drop), // a size the cache does not hold
        ),
    ];
    for (what, op) in cases {
        be.begin_capture().unwrap();
        let err = op().expect_err(what);
        let _ = be.end_capture();
        let message = format!("{err:#}");
        assert!(
            message.contains(what) && message.contains("capturing a CUDA graph"),
            "{what}: {message}"
        );
    }
    // Still usable afterwards.
    assert_eq!(
        be.download(&be.scale(&x, 2.0).unwrap()).unwrap(),
        [2.0, 4.0, 6.0]
    );
}

/// Four bench steps of a tiny three-expert ResNet-32 (device augmentation, mixup) with the step
/// captured and replayed leave the model exactly as four eager steps do.
pub fn replayed_bench_steps_equal_eager_steps(be: &CudaBackend) {
    use ltrain::config::{ExpertWidth, ModelKind};
    use ltrain::nn::TensorData;
    use ltrain::train::bench_step::{BenchInput, BenchStep, BenchStepConfig};
    let state = |cuda_graphs: bool| {
        let cfg = BenchStepConfig {
            model: ModelKind::Resnet32,
            expert_width: ExpertWidth::Reduced,
            experts: 3,
            batch_size: 4,
            classes: 3,
            image_size: 8,
            stage2: false,
            mixup: true,
            input: BenchInput::DeviceAugment,
            cuda_graphs,
        };
        let mut step = BenchStep::new(be, cfg).unwrap();
        let before = be.device_counters().unwrap();
        for _ in 0..4 {
            step.run(be).unwrap();
        }
        let launched = be.device_counters().unwrap().since(&before).graph_launches;
        let tensors: Vec<Vec<f32>> = step
            .model()
            .state_dict(be)
            .unwrap()
            .into_iter()
            .filter_map(|t| match t.data {
                TensorData::F32(v) => Some(v),
                TensorData::I64(_) => None,
            })
            .collect();
        (tensors, launched)
    };
    let (eager, none) = state(false);
    let (replayed, launched) = state(true);
    assert_eq!(none, 0);
    assert_eq!(launched, 3, "steps 2-4 replay the graph captured at step 2");
    assert_eq!(eager.len(), replayed.len());
    for (i, (e, r)) in eager.iter().zip(&replayed).enumerate() {
        assert!(e == r, "state tensor {i} differs with graphs");
    }
}

/// A short run learns: 4 balanced synthetic classes (chance 25%), stage 1 with mixup and
/// augmentation, then stage 2 with SLA weights (seeds 0-2 reach 59-72% on the CPU).
pub fn a_run_learns_the_synthetic_set(be: &CudaBackend) {
    use ltrain::config::{ExpertWidth, Imbalance, LossKind, TrainConfig};
    use ltrain::train::{datasets, train, RunOptions, Start};

    let cfg = TrainConfig {
        synthetic_classes: 4,
        synthetic_max_per_class: 64,
        synthetic_test_per_class: 16,
        imbalance: Imbalance::Ratio(1.0),
        expert_width: ExpertWidth::Reduced,
        loss: LossKind::LaSla,
        epochs: 8,
        batch_size: 16,
        warmup_epochs: 1,
        milestones: vec![7],
        stage2_epoch: Some(6),
        lr: 0.05,
        ..TrainConfig::default()
    };
    let data = datasets::open(&cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = RunOptions {
        start: Start::Fresh,
        cuda_graphs: false,
        interrupt: None,
    };
    let result = train(
        be,
        &cfg,
        data.train.as_ref(),
        data.test.as_ref(),
        dir.path(),
        options,
        &mut |_| {},
    )
    .unwrap();
    let top1 = result.last.metrics.top1;
    assert!(top1 > 45.0, "top-1 {top1}");
}
