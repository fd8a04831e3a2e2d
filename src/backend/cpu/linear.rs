//! Fully connected layer: `y [n, out] = x [n, in] · w [out, in]ᵀ + b [out]`.
//!
//! The matrices are small next to the convolutions (the classifier head), so each product is one
//! single-threaded gemm; that also keeps the result independent of the thread count.

use anyhow::Result;

use super::check_len;
use super::matmul::{matmul, Layout};

pub(super) fn forward(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    n: usize,
    d_in: usize,
    d_out: usize,
) -> Result<Vec<f32>> {
    const OP: &str = "linear_forward";
    check_len(OP, "x", x.len(), n * d_in)?;
    check_len(OP, "w", w.len(), d_out * d_in)?;
    check_len(OP, "b", b.len(), d_out)?;
    let mut y: Vec<f32> = (0..n).flat_map(|_| b.iter().copied()).collect();
    matmul(
        n,
        d_out,
        d_in,
        &mut y,
        x,
        Layout::Plain,
        w,
        Layout::Transposed,
        true,
    );
    Ok(y)
}

/// `(dx [n, in] = dy · w, dw [out, in] = dyᵀ · x, db [out] = column sums of dy)`.
pub(super) fn backward(
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    n: usize,
    d_in: usize,
    d_out: usize,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    const OP: &str = "linear_backward";
    check_len(OP, "dy", dy.len(), n * d_out)?;
    check_len(OP, "x", x.len(), n * d_in)?;
    check_len(OP, "w", w.len(), d_out * d_in)?;
    let mut dx = vec![0.0f32; n * d_in];
    matmul(
        n,
        d_in,
        d_out,
        &mut dx,
        dy,
        Layout::Plain,
        w,
        Layout::Plain,
        false,
    );
    let mut dw = vec![0.0f32; d_out * d_in];
    matmul(
        d_out,
        d_in,
        n,
        &mut dw,
        dy,
        Layout::Transposed,
        x,
        Layout::Plain,
        false,
    );
    let mut db = vec![0.0f64; d_out];
    for row in dy.chunks_exact(d_out.max(1)) {
        for (acc, &g) in db.iter_mut().zip(row) {
            *acc += g as f64;
        }
    }
    Ok((dx, dw, db.into_iter().map(|v| v as f32).collect()))
}
