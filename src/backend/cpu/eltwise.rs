//! Element-wise ops, the sum reduction and mixup.

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::{check_indices, check_len};
use crate::backend::abi::ERR_MIXUP_PERM;

/// Elements per parallel task: large enough that scheduling costs little next to the work.
const CHUNK: usize = 1 << 14;

fn check_same(op: &str, a: usize, b: usize) -> Result<()> {
    if a != b {
        bail!("{op}: operands differ in length ({a} vs {b})");
    }
    Ok(())
}

/// `a + b`.
pub(super) fn add(a: &[f32], b: &[f32]) -> Result<Vec<f32>> {
    check_same("add", a.len(), b.len())?;
    Ok(a.par_iter()
        .with_min_len(CHUNK)
        .zip(b)
        .map(|(x, y)| x + y)
        .collect())
}

/// `a * b`.
pub(super) fn mul(a: &[f32], b: &[f32]) -> Result<Vec<f32>> {
    check_same("mul", a.len(), b.len())?;
    Ok(a.par_iter()
        .with_min_len(CHUNK)
        .zip(b)
        .map(|(x, y)| x * y)
        .collect())
}

/// `a += b`.
pub(super) fn add_assign(a: &mut [f32], b: &[f32]) -> Result<()> {
    check_same("add_assign", a.len(), b.len())?;
    a.par_iter_mut()
        .with_min_len(CHUNK)
        .zip(b)
        .for_each(|(x, y)| *x += y);
    Ok(())
}

/// `alpha * a`.
pub(super) fn scale(a: &[f32], alpha: f32) -> Vec<f32> {
    a.par_iter()
        .with_min_len(CHUNK)
        .map(|x| alpha * x)
        .collect()
}

/// Sum of all elements, accumulated in f64 over fixed chunks combined in order.
pub(super) fn sum(a: &[f32]) -> f32 {
    let partials: Vec<f64> = a
        .par_chunks(CHUNK)
        .map(|c| c.iter().map(|&v| v as f64).sum())
        .collect();
    partials.iter().sum::<f64>() as f32
}

pub(super) fn relu_forward(x: &[f32]) -> Vec<f32> {
    x.par_iter()
        .with_min_len(CHUNK)
        .map(|&v| v.max(0.0))
        .collect()
}

/// `dx = dy * (y > 0)`.
pub(super) fn relu_backward(dy: &[f32], y: &[f32]) -> Result<Vec<f32>> {
    check_same("relu_backward", dy.len(), y.len())?;
    Ok(dy
        .par_iter()
        .with_min_len(CHUNK)
        .zip(y)
        .map(|(&g, &v)| if v > 0.0 { g } else { 0.0 })
        .collect())
}

/// `y_i = lambda * x_i + (1 - lambda) * x_perm[i]` over samples of `per_sample` elements.
pub(super) fn mixup(
    x: &[f32],
    perm: &[u32],
    lambda: f32,
    n: usize,
    per_sample: usize,
) -> Result<Vec<f32>> {
    const OP: &str = "mixup";
    check_len(OP, "x", x.len(), n * per_sample)?;
    check_len(OP, "perm", perm.len(), n)?;
    check_indices(ERR_MIXUP_PERM, perm, n)?;
    let mut y = vec![0.0f32; n * per_sample];
    if per_sample == 0 {
        return Ok(y);
    }
    let other = 1.0 - lambda;
    y.par_chunks_mut(per_sample)
        .zip(x.par_chunks(per_sample))
        .zip(perm.par_iter())
        .for_each(|((y_s, x_s), &j)| {
            let x_j = &x[j as usize * per_sample..(j as usize + 1) * per_sample];
            for ((o, &a), &b) in y_s.iter_mut().zip(x_s).zip(x_j) {
                *o = lambda * a + other * b;
            }
        });
    Ok(y)
}
