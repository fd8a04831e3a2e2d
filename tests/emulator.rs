//! Tests of the CUDA emulator itself (no GPU needed): that `__syncthreads` really orders a block's
//! threads, that warp shuffles and ballots exchange the right lanes, that atomics from many blocks
//! add up, that launches outside the H200's limits are errors (not crashes), that a barrier not every
//! thread reaches is reported, and that the GEMM follows cuBLAS's column-major convention exactly.

use ltrain::backend::cuda::{selftest, CudaBackend, CudaOptions, Gemm, LaunchConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn emulator() -> CudaBackend {
    CudaBackend::new_emulated().expect("the emulator needs no device")
}

/// Small integers: every partial sum is exact in f32, so any summation order gives the same value.
fn integer_data(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-8..=8) as f32).collect()
}

#[test]
fn barrier_dependent_tree_reduction_is_exact() {
    let be = emulator();
    for (n, threads) in [(1000, 256), (37, 64), (4096, 1024), (5, 32)] {
        let x = integer_data(n, n as u64);
        let want: f32 = x.iter().sum();
        let got = selftest::block_tree_sum(&be, &x, threads).unwrap();
        assert_eq!(got, want, "n = {n}, {threads} threads");
    }
}

#[test]
fn a_missing_barrier_changes_the_result() {
    // On a fresh OS thread the block's shared memory starts zeroed and the emulator runs thread 0 to
    // completion before the others store their partial sums: without barriers it sums only its own.
    let result = std::thread::spawn(|| {
        let be = emulator();
        let x = vec![1.0f32; 256];
        let with = selftest::block_tree_sum(&be, &x, 256).unwrap();
        let without = selftest::block_tree_sum_without_barriers(&be, &x, 256).unwrap();
        (with, without)
    })
    .join()
    .unwrap();
    assert_eq!(result.0, 256.0);
    assert_eq!(result.1, 1.0, "thread 0 alone, before any other thread ran");
}

#[test]
fn warp_shuffle_reduction_matches_naive_sums() {
    let be = emulator();
    let x = integer_data(32 * 12, 7);
    for threads in [32, 64, 128] {
        let got = selftest::warp_sums(&be, &x, threads).unwrap();
        let want: Vec<f32> = x.chunks(32).map(|w| w.iter().sum()).collect();
        assert_eq!(got, want, "{threads} threads per block");
    }
}

#[test]
fn ballot_collects_every_lane() {
    let be = emulator();
    let x = integer_data(32 * 5, 11);
    let got = selftest::warp_ballots(&be, &x, 64).unwrap();
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

#[test]
fn atomic_histogram_from_many_blocks() {
    let be = emulator();
    let mut rng = StdRng::seed_from_u64(3);
    let values: Vec<u32> = (0..5000).map(|_| rng.random_range(0..1000)).collect();
    let bins = 17;
    let mut want = vec![0u32; bins as usize];
    for v in &values {
        want[(v % bins) as usize] += 1;
    }
    // 6 blocks x 96 threads, grid-stride: every thread adds into shared bins.
    let got = selftest::histogram(&be, &values, bins, LaunchConfig::linear(6, 96)).unwrap();
    assert_eq!(got, want);
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
fn launches_outside_the_h200_limits_are_errors() {
    let be = emulator();
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
        let err = selftest::launch_noop(&be, c)
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
        selftest::launch_noop(&be, c).unwrap_or_else(|e| panic!("{c:?}: {e:#}"));
    }
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

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
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

#[test]
fn gemm_follows_the_cublas_convention() {
    let be = emulator();
    let mut rng = StdRng::seed_from_u64(5);
    for (transa, transb) in [(false, false), (true, false), (false, true), (true, true)] {
        let g = padded_case(transa, transb);
        let (a, b, c) = (
            random(&mut rng, 90),
            random(&mut rng, 70),
            random(&mut rng, 70),
        );
        let got = selftest::gemm(&be, &g, &a, &b, &c).unwrap();
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

#[test]
fn a_transposed_operand_mistake_gives_a_wrong_result() {
    let be = emulator();
    let mut rng = StdRng::seed_from_u64(9);
    // Square shapes, so the mistaken call is valid and only the values can tell.
    let g = Gemm::new(false, true, 4, 4, 4);
    let (a, b, c) = (random(&mut rng, 16), random(&mut rng, 16), vec![0.0; 16]);
    let want = reference_gemm(&g, &a, &b, &c);
    let right = selftest::gemm(&be, &g, &a, &b, &c).unwrap();
    assert!(max_diff(&right, &want) < 1e-5);
    for wrong in [Gemm { transb: false, ..g }, Gemm { transa: true, ..g }] {
        let got = selftest::gemm(&be, &wrong, &a, &b, &c).unwrap();
        assert!(
            max_diff(&got, &want) > 1e-2,
            "{wrong:?} should not match the reference"
        );
    }
}

#[test]
fn gemm_with_beta_zero_does_not_read_c() {
    let be = emulator();
    let mut rng = StdRng::seed_from_u64(13);
    let g = Gemm::new(false, false, 3, 2, 5);
    let (a, b) = (random(&mut rng, 15), random(&mut rng, 10));
    let got = selftest::gemm(&be, &g, &a, &b, &[f32::NAN; 6]).unwrap();
    let want = reference_gemm(&g, &a, &b, &[0.0; 6]);
    assert!(max_diff(&got, &want) < 1e-5, "{got:?}");
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
