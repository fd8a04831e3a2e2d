//! Checks of the tensor-core and cp.async wrappers of kernels/mma.cuh, shared by `emulator_mma.rs` (the
//! emulator) and `cuda_gpu.rs` (a real GPU); each takes the CUDA backend to test and panics on a
//! mismatch.
//!
//! The fragment layouts below are this file's own transcription of the PTX ISA (sections "Matrix
//! Fragments for mma.m16n8k8" (.tf32), "Matrix Fragments for mma.m16n8k16 with floating point type"
//! (.bf16), "Warp-level matrix load instruction: ldmatrix"), not the emulator's code: every lane gets
//! distinct values in every register and every lane's result is checked against the table. The data
//! are small integers, exact in tf32 and bf16, so every product and sum is exact in f32 whatever the
//! hardware's summation order, and results compare bit for bit.

#![allow(dead_code)]

use ltrain::backend::cuda::selftest::{self, MmaRegisters};
use ltrain::backend::cuda::CudaBackend;

/// groupID and threadID_in_group of a lane.
fn group(lane: usize) -> (usize, usize) {
    (lane >> 2, lane % 4)
}

/// (row, column) of A element `i` (= register `i`) of a lane, m16n8k8 .tf32.
fn tf32_a(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = group(lane);
    let row = if i == 0 || i == 2 { g } else { g + 8 };
    let col = if i < 2 { t } else { t + 4 };
    (row, col)
}

/// (row, column) of B element `i` (= register `i`) of a lane, m16n8k8 .tf32.
fn tf32_b(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = group(lane);
    (if i == 0 { t } else { t + 4 }, g)
}

/// (row, column) of A element `i` (0..8; register i / 2, the low half for even i) of a lane,
/// m16n8k16 .bf16.
fn bf16_a(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = group(lane);
    let row = if i < 2 || (4..6).contains(&i) {
        g
    } else {
        g + 8
    };
    let col = t * 2 + (i & 1) + if i >= 4 { 8 } else { 0 };
    (row, col)
}

/// (row, column) of B element `i` (0..4; register i / 2, the low half for even i) of a lane,
/// m16n8k16 .bf16.
fn bf16_b(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = group(lane);
    (t * 2 + (i & 1) + if i >= 2 { 8 } else { 0 }, g)
}

/// (row, column) of C/D element `i` (= register `i`) of a lane, both shapes.
fn accumulator(lane: usize, i: usize) -> (usize, usize) {
    let (g, t) = group(lane);
    (if i < 2 { g } else { g + 8 }, t * 2 + (i & 1))
}

/// `len` distinct integers, `lo..lo + len` in a scrambled order (an odd step modulo a power of two).
fn distinct(len: usize, step: usize, lo: i32) -> Vec<i32> {
    assert!(len.is_power_of_two() && step % 2 == 1);
    (0..len)
        .map(|i| ((i * step + 7) % len) as i32 + lo)
        .collect()
}

/// A rows x cols matrix (row-major) from values.
fn matrix(values: &[i32], cols: usize) -> Vec<Vec<f64>> {
    values
        .chunks(cols)
        .map(|r| r.iter().map(|&v| f64::from(v)).collect())
        .collect()
}

/// D = A B + C (16 x 8) in f64.
fn product(a: &[Vec<f64>], b: &[Vec<f64>], c: &[Vec<f64>]) -> Vec<Vec<f64>> {
    (0..16)
        .map(|r| {
            (0..8)
                .map(|n| c[r][n] + (0..b.len()).map(|k| a[r][k] * b[k][n]).sum::<f64>())
                .collect()
        })
        .collect()
}

/// C's registers and the expected D's, lane-major, by the accumulator table.
fn accumulator_registers(m: &[Vec<f64>]) -> Vec<f32> {
    (0..32)
        .flat_map(|lane| {
            (0..4).map(move |i| {
                let (r, c) = accumulator(lane, i);
                m[r][c] as f32
            })
        })
        .collect()
}

/// Every d register equal to the expected (exact) value; lane-major, 4 a lane.
fn assert_registers(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: register count");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            g == w,
            "{what}: lane {} d[{}] = {g}, the PTX layout gives {w}",
            k / 4,
            k % 4
        );
    }
}

/// The three tf32 matrices: A 16x8, B 8x8, C 16x8 (distinct integers, exact in tf32 and f32).
fn tf32_operands() -> [Vec<Vec<f64>>; 3] {
    [
        matrix(&distinct(128, 77, -64), 8),
        matrix(&distinct(64, 29, -32), 8),
        matrix(&distinct(128, 45, -50), 8),
    ]
}

/// A's and B's registers of one m16n8k8 .tf32 mma, lane-major, placed by `a_of`/`b_of`.
fn tf32_registers(
    a: &[Vec<f64>],
    b: &[Vec<f64>],
    a_of: fn(usize, usize) -> (usize, usize),
    b_of: fn(usize, usize) -> (usize, usize),
) -> (Vec<u32>, Vec<u32>) {
    let bits = |v: f64| (v as f32).to_bits();
    let a_regs = (0..32)
        .flat_map(|lane| {
            (0..4).map(move |i| {
                let (r, c) = a_of(lane, i);
                bits(a[r][c])
            })
        })
        .collect();
    let b_regs = (0..32)
        .flat_map(|lane| {
            (0..2).map(move |i| {
                let (r, c) = b_of(lane, i);
                bits(b[r][c])
            })
        })
        .collect();
    (a_regs, b_regs)
}

/// Every lane's d of an m16n8k8 .tf32 mma equals A B + C placed by the PTX tables.
pub fn mma_tf32_follows_the_ptx_layout(be: &CudaBackend) {
    let [a, b, c] = tf32_operands();
    let (a_regs, b_regs) = tf32_registers(&a, &b, tf32_a, tf32_b);
    let c_regs = accumulator_registers(&c);
    let d = selftest::mma_tf32(
        be,
        &MmaRegisters {
            a: &a_regs,
            b: &b_regs,
            c: &c_regs,
        },
    )
    .unwrap();
    let want = accumulator_registers(&product(&a, &b, &c));
    assert_registers("mma.m16n8k8.tf32", &d, &want);
}

/// A fragment packed with the f16 layout of m16n8k8 (a1 and a2 swapped: rows g+8 and columns t+4
/// exchanged) gives a wrong result: the check above can tell the layouts apart.
pub fn a_tf32_fragment_in_the_wrong_layout_is_caught(be: &CudaBackend) {
    let [a, b, c] = tf32_operands();
    let swapped = |lane, i| tf32_a(lane, [0, 2, 1, 3][i]);
    let (a_regs, b_regs) = tf32_registers(&a, &b, swapped, tf32_b);
    let c_regs = accumulator_registers(&c);
    let d = selftest::mma_tf32(
        be,
        &MmaRegisters {
            a: &a_regs,
            b: &b_regs,
            c: &c_regs,
        },
    )
    .unwrap();
    let want = accumulator_registers(&product(&a, &b, &c));
    let wrong = d.iter().zip(&want).filter(|(g, w)| g != w).count();
    assert!(wrong >= 64, "only {wrong} of 128 results differ");
}

/// bf16 bits of an integer exact in bf16 (|v| <= 256).
fn bf16(v: f64) -> u32 {
    let bits = (v as f32).to_bits();
    assert_eq!(bits & 0xffff, 0, "{v} is exact in bf16");
    bits >> 16
}

/// Every lane's d of an m16n8k16 .bf16 mma equals A B + C placed by the PTX tables, the even-indexed
/// element of each register in its low half.
pub fn mma_bf16_follows_the_ptx_layout(be: &CudaBackend) {
    let a = matrix(&distinct(256, 167, -128), 16);
    let b = matrix(&distinct(128, 89, -64), 8);
    let c = matrix(&distinct(128, 53, -70), 8);
    let a_regs: Vec<u32> = (0..32)
        .flat_map(|lane| {
            let a = &a;
            (0..4).map(move |reg| {
                let (lo, hi) = (bf16_a(lane, 2 * reg), bf16_a(lane, 2 * reg + 1));
                bf16(a[lo.0][lo.1]) | bf16(a[hi.0][hi.1]) << 16
            })
        })
        .collect();
    let b_regs: Vec<u32> = (0..32)
        .flat_map(|lane| {
            let b = &b;
            (0..2).map(move |reg| {
                let (lo, hi) = (bf16_b(lane, 2 * reg), bf16_b(lane, 2 * reg + 1));
                bf16(b[lo.0][lo.1]) | bf16(b[hi.0][hi.1]) << 16
            })
        })
        .collect();
    let c_regs = accumulator_registers(&c);
    let d = selftest::mma_bf16(
        be,
        &MmaRegisters {
            a: &a_regs,
            b: &b_regs,
            c: &c_regs,
        },
    )
    .unwrap();
    let want = accumulator_registers(&product(&a, &b, &c));
    assert_registers("mma.m16n8k16.bf16", &d, &want);
}

/// `cvt.rna.tf32.f32`: to nearest, ties away from zero, 10 mantissa bits kept, the 13 low bits zero.
pub fn to_tf32_rounds_to_nearest_ties_away_from_zero(be: &CudaBackend) {
    // (input bits, tf32 bits) worked out by hand: the 13 dropped bits just below half an ulp (0xfff),
    // at half (0x1000: a tie, away from zero even where the kept mantissa is even, which
    // round-to-even would keep), just above; a tie that carries into the exponent; negative values.
    let cases: [(u32, u32); 12] = [
        (0x3f80_0000, 0x3f80_0000), // 1.0, exact
        (0x3f80_0fff, 0x3f80_0000), // below half: down
        (0x3f80_1000, 0x3f80_2000), // tie, even kept mantissa: away from zero (not to even)
        (0x3f80_1001, 0x3f80_2000), // above half: up
        (0x3f80_3000, 0x3f80_4000), // tie, odd kept mantissa: up
        (0x3fff_f000, 0x4000_0000), // tie at 2 - 2^-11: carries into the exponent, 2.0
        (0xbf80_0fff, 0xbf80_0000), // -1 - tiny: toward zero
        (0xbf80_1000, 0xbf80_2000), // negative tie: away from zero
        (0xc2f6_e979, 0xc2f6_e000), // -123.456: below half
        (0x4049_0fdb, 0x4049_0000), // pi: 0x0fdb below half
        (0x0000_0000, 0x0000_0000), // +0
        (0x8000_0000, 0x8000_0000), // -0 keeps its sign
    ];
    let x: Vec<f32> = cases.iter().map(|&(i, _)| f32::from_bits(i)).collect();
    let got = selftest::to_tf32(be, &x).unwrap();
    for ((input, want), got) in cases.iter().zip(&got) {
        assert_eq!(
            *got, *want,
            "to_tf32({input:#010x}) = {got:#010x}, want {want:#010x}"
        );
    }
    // Infinities stay; a NaN stays a NaN once its 13 low bits are dropped.
    let special = selftest::to_tf32(be, &[f32::INFINITY, f32::NEG_INFINITY, f32::NAN]).unwrap();
    assert_eq!(special[..2], [0x7f80_0000, 0xff80_0000], "{special:x?}");
    assert!(
        f32::from_bits(special[2] & !0x1fff).is_nan(),
        "{special:x?}"
    );
}

/// A .tf32 operand whose 13 low bits are not zero (not rounded by to_tf32) counts as if they were zero:
/// the tensor cores truncate it. Each operand is set to an integer plus 0.75 of a tf32 ulp in turn, the
/// other made an identity, so that d shows the operand as the tensor cores read it.
pub fn unrounded_tf32_operands_are_truncated(be: &CudaBackend) {
    // 0.75 of an ulp above the integer: rounding would go up, truncation down.
    let above = |v: f64| (v as f32).to_bits() | 0x1800;
    // `rows` x 8 with ones at (r, r % 8): the identity, or two stacked.
    let identity = |rows: usize| -> Vec<Vec<f64>> {
        (0..rows)
            .map(|r| (0..8).map(|k| f64::from(u8::from(r % 8 == k))).collect())
            .collect()
    };
    let zero_c = vec![0.0f32; 128];
    let values = |rows: usize| matrix(&distinct(rows * 8, 37, 1), 8);
    // A unrounded, B the identity: d = A.
    let a = values(16);
    let (mut a_regs, b_regs) = tf32_registers(&a, &identity(8), tf32_a, tf32_b);
    for (k, r) in a_regs.iter_mut().enumerate() {
        let (row, col) = tf32_a(k / 4, k % 4);
        *r = above(a[row][col]);
    }
    let d = selftest::mma_tf32(
        be,
        &MmaRegisters {
            a: &a_regs,
            b: &b_regs,
            c: &zero_c,
        },
    )
    .unwrap();
    assert_registers("unrounded A (truncated)", &d, &accumulator_registers(&a));
    // A two stacked identities, B unrounded: d = B in both halves.
    let b = values(8);
    let (a_regs, mut b_regs) = tf32_registers(&identity(16), &b, tf32_a, tf32_b);
    for (k, r) in b_regs.iter_mut().enumerate() {
        let (row, col) = tf32_b(k / 2, k % 2);
        *r = above(b[row][col]);
    }
    let d = selftest::mma_tf32(
        be,
        &MmaRegisters {
            a: &a_regs,
            b: &b_regs,
            c: &zero_c,
        },
    )
    .unwrap();
    let stacked: Vec<Vec<f64>> = (0..16).map(|r| b[r % 8].clone()).collect();
    assert_registers(
        "unrounded B (truncated)",
        &d,
        &accumulator_registers(&stacked),
    );
}

/// ldmatrix x1, x2 and x4, with and without .trans: lanes 8i..8i+7 give the rows of matrix i (in a
/// scrambled order of the tile's rows); register i of lane l holds row l/4, columns 2(l%4) and
/// 2(l%4)+1 of matrix i, the first in the low half (.trans: of the transposed matrix).
pub fn ldmatrix_follows_the_ptx_layout(be: &CudaBackend) {
    // Tile element (row, col) = 0xa000 + 8 row + col: distinct, with both bytes telling.
    let element = |row: u32, col: u32| 0xa000 + 8 * row + col;
    let tile: Vec<u32> = (0..32)
        .flat_map(|row| (0..4).map(move |w| element(row, 2 * w) | element(row, 2 * w + 1) << 16))
        .collect();
    let row_of_lane: Vec<u32> = (0..32).map(|l| (l * 13 + 5) % 32).collect();
    for matrices in [1u32, 2, 4] {
        for trans in [false, true] {
            let got = selftest::ldmatrix(be, &tile, &row_of_lane, matrices, trans).unwrap();
            let m = matrices as usize;
            for lane in 0..32 {
                for i in 0..m {
                    // Element (r, c) of matrix i: column c of the row lane 8i + r points at.
                    let at = |r: usize, c: usize| element(row_of_lane[8 * i + r], c as u32);
                    let (g, t) = group(lane);
                    let want = if trans {
                        at(2 * t, g) | at(2 * t + 1, g) << 16
                    } else {
                        at(g, 2 * t) | at(g, 2 * t + 1) << 16
                    };
                    assert_eq!(
                        got[lane * m + i],
                        want,
                        "ldmatrix x{matrices}{}: lane {lane} register {i}",
                        if trans { ".trans" } else { "" }
                    );
                }
            }
        }
    }
}

fn cp_async_source() -> Vec<f32> {
    (0..256).map(|i| i as f32 * 0.5 - 17.0).collect()
}

/// cp.async in two commit groups of 16-, 8- and 4-byte copies, each read after its wait and a barrier
/// by another lane: the data arrive, and zero-filling copies write zeros.
pub fn cp_async_copies_after_its_wait(be: &CudaBackend) {
    let src = cp_async_source();
    // Lanes 3, 7, .. copy their 16 bytes with src-size 0, and the odd lanes their last 4-byte copy:
    // zeros.
    let mut want = src.clone();
    for lane in (3..32).step_by(4) {
        want[4 * lane..4 * lane + 4].fill(0.0);
    }
    for lane in (1..32).step_by(2) {
        want[128 + 4 * lane + 3] = 0.0;
    }
    assert_eq!(selftest::cp_async(be, &src).unwrap(), want);
}
