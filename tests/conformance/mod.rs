//! Backend-generic op conformance suite. Every op of [`Backend`] is checked on random inputs of several
//! small shapes against naive f64 references ([`reference`]), every backward op against central finite
//! differences of the naive f64 forward, and a few small cases against values computed by hand.
//!
//! A backend's test file runs it with `mod conformance;` and `conformance::run_all(&backend)`; each
//! check is a plain function of `&B` (see [`checks`]) so failures are reported by name, all at once.
//!
//! Tolerances are stated per check as `|got - want| <= atol + rtol * |want|`; they budget f32 rounding
//! of the backend against an f64 reference on O(1) data, with headroom for a different summation order.
//! A backend whose products take TF32 operands ([`Products::Tf32`], [`run_all_with`]) is held to the
//! same tolerances: the references then take the operands as the tensor cores do, rounded to TF32's
//! 10 mantissa bits (convolutions to nearest with ties away from zero, as `cvt.rna.tf32.f32`; the
//! emulated cuBLAS GEMMs to nearest even), so that only the f32 accumulation differs.

#![allow(dead_code)]

mod errors;
mod loss;
mod ops;
pub mod reference;

use std::cell::Cell;

use anyhow::{ensure, Result};
use ltrain::backend::UnfusedLoss;
use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};

/// A named conformance check.
pub type Check<B> = (&'static str, fn(&B) -> Result<()>);

/// Every check of the suite, in a stable order.
pub fn checks<B: UnfusedLoss>() -> Vec<Check<B>> {
    vec![
        ("memory", ops::memory::<B>),
        ("staging", ops::staging::<B>),
        ("views", ops::views::<B>),
        ("elementwise", ops::elementwise::<B>),
        ("mixup", ops::mixup::<B>),
        ("conv2d_forward", ops::conv_forward::<B>),
        ("conv2d_backward", ops::conv_backward::<B>),
        ("conv2d_errors", ops::conv_errors::<B>),
        ("batch_norm", ops::batch_norm::<B>),
        ("batch_norm_backward", ops::batch_norm_backward::<B>),
        ("batch_norm_hand", ops::batch_norm_hand::<B>),
        ("batch_norm_act", ops::batch_norm_act::<B>),
        ("conv2d_batch_norm_train", ops::conv_batch_norm_train::<B>),
        ("max_pool", ops::max_pool::<B>),
        ("max_pool_backward", ops::max_pool_backward::<B>),
        ("global_avg_pool", ops::global_avg_pool::<B>),
        ("shortcut_a", ops::shortcut_a::<B>),
        ("shortcut_a_hand", ops::shortcut_a_hand::<B>),
        ("linear", ops::linear::<B>),
        ("rows", ops::rows::<B>),
        ("row_cosine", ops::row_cosine::<B>),
        ("cosmax_update_hand", ops::cosmax_update_hand::<B>),
        ("sgd_step", ops::sgd_step::<B>),
        ("sgd_step_hand", ops::sgd_step_hand::<B>),
        ("fused_loss_reference", loss::reference_and_gradient::<B>),
        ("fused_loss_hand", loss::hand::<B>),
        ("fused_loss_errors", loss::errors::<B>),
        ("fused_loss_unfused", loss::unfused_matches_fused::<B>),
        ("kernel_errors", errors::kernel_errors::<B>),
    ]
}

/// How a backend's matrix products take their operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Products {
    Fp32,
    Tf32,
}

thread_local! {
    /// The products of the backend under test ([`run_all_with`]).
    static PRODUCTS: Cell<Products> = const { Cell::new(Products::Fp32) };
}

/// Runs every check and panics with the list of failures (all checks run even when one fails).
pub fn run_all<B: UnfusedLoss>(be: &B) {
    run_all_with(be, Products::Fp32);
}

/// [`run_all`] for a backend whose products take `products` operands.
pub fn run_all_with<B: UnfusedLoss>(be: &B, products: Products) {
    run_checks_with(be, products, checks::<B>());
}

/// The checks in `all` (a subset of [`checks`]), as [`run_all_with`] runs them.
pub fn run_checks_with<B: UnfusedLoss>(be: &B, products: Products, all: Vec<Check<B>>) {
    PRODUCTS.with(|p| p.set(products));
    let mut failures = Vec::new();
    for (name, check) in &all {
        match check(be) {
            Ok(()) => println!("ok    {name}"),
            Err(e) => {
                println!("FAIL  {name}: {e:#}");
                failures.push(format!("{name}: {e:#}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} conformance checks failed on {}:\n{}",
        failures.len(),
        all.len(),
        be.name(),
        failures.join("\n")
    );
}

// ---- helpers shared by the checks ----

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub fn uniform(rng: &mut StdRng, len: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

pub fn labels(rng: &mut StdRng, len: usize, classes: usize) -> Vec<u32> {
    (0..len)
        .map(|_| rng.random_range(0..classes as u32))
        .collect()
}

pub fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// A convolution operand as the backend's products see it: with TF32, rounded to 10 mantissa bits,
/// to nearest with ties away from zero (`cvt.rna.tf32.f32`: add half of the dropped 13 bits' range to
/// the magnitude, then drop them).
pub fn conv_operand(x: &[f32]) -> Vec<f64> {
    match PRODUCTS.with(Cell::get) {
        Products::Fp32 => f64s(x),
        Products::Tf32 => x
            .iter()
            .map(|&v| f32::from_bits(v.to_bits().wrapping_add(0x1000) & !0x1fff) as f64)
            .collect(),
    }
}

/// A GEMM operand as the backend's products see it: with TF32, rounded to 10 mantissa bits to nearest
/// even (how the emulator stands in for cuBLAS).
pub fn gemm_operand(x: &[f32]) -> Vec<f64> {
    match PRODUCTS.with(Cell::get) {
        Products::Fp32 => f64s(x),
        Products::Tf32 => x
            .iter()
            .map(|&v| {
                let bits = v.to_bits();
                let round = 0x0fff + ((bits >> 13) & 1);
                f32::from_bits(bits.wrapping_add(round) & !0x1fff) as f64
            })
            .collect(),
    }
}

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn up<B: UnfusedLoss>(be: &B, data: &[f32]) -> Result<B::Buf> {
    be.upload(data)
}

pub fn up64<B: UnfusedLoss>(be: &B, data: &[f64]) -> Result<B::Buf> {
    be.upload(&data.iter().map(|&v| v as f32).collect::<Vec<_>>())
}

/// An output buffer filled with NaN: an op that leaves part of its output unwritten fails.
pub fn nan_filled<B: UnfusedLoss>(be: &B, len: usize) -> Result<B::Buf> {
    be.upload(&vec![f32::NAN; len])
}

pub fn down<B: UnfusedLoss>(be: &B, buf: &B::Buf) -> Result<Vec<f32>> {
    be.download(buf)
}

/// `|got - want| <= atol + rtol * |want|` element-wise, reporting the worst element.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) -> Result<()> {
    ensure!(
        got.len() == want.len(),
        "{what}: length {} but expected {}",
        got.len(),
        want.len()
    );
    let mut worst: Option<(usize, f64)> = None;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g as f64 - w).abs() - (atol + rtol * w.abs());
        let fails = excess > 0.0 || excess.is_nan();
        if fails && worst.is_none_or(|(_, e)| excess > e || excess.is_nan()) {
            worst = Some((i, excess));
        }
    }
    if let Some((i, _)) = worst {
        anyhow::bail!(
            "{what}: element {i} is {} but expected {} (atol {atol:e}, rtol {rtol:e})",
            got[i],
            want[i]
        );
    }
    Ok(())
}

/// Exact equality for values that involve no arithmetic (copies, selections).
pub fn assert_exact(what: &str, got: &[f32], want: &[f64]) -> Result<()> {
    assert_close(what, got, want, 0.0, 0.0)
}

/// Checks an analytic gradient against central differences of `f` at `x`, on at most `max_coords`
/// random coordinates.
#[allow(clippy::too_many_arguments)]
pub fn fd_check(
    what: &str,
    analytic: &[f32],
    f: impl Fn(&[f64]) -> f64,
    x: &[f64],
    rng: &mut StdRng,
    max_coords: usize,
    h: f64,
    atol: f64,
    rtol: f64,
) -> Result<()> {
    ensure!(
        analytic.len() == x.len(),
        "{what}: gradient has {} elements, the input {}",
        analytic.len(),
        x.len()
    );
    let coords: Vec<usize> = if x.len() <= max_coords {
        (0..x.len()).collect()
    } else {
        sample(rng, x.len(), max_coords).into_vec()
    };
    let mut xp = x.to_vec();
    let mut got = Vec::new();
    let mut want = Vec::new();
    for &j in &coords {
        xp[j] = x[j] + h;
        let plus = f(&xp);
        xp[j] = x[j] - h;
        let minus = f(&xp);
        xp[j] = x[j];
        got.push(analytic[j]);
        want.push((plus - minus) / (2.0 * h));
    }
    assert_close(
        &format!("{what} (finite differences)"),
        &got,
        &want,
        atol,
        rtol,
    )
}

/// Checks that an op rejected its arguments with an error (rather than panicking or accepting them).
pub fn expect_err<T>(what: &str, r: Result<T>) -> Result<()> {
    ensure!(r.is_err(), "{what}: expected an error, got Ok");
    Ok(())
}
