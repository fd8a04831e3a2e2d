//! Row-wise ops on `[n, c]` matrices (logits): softmax, log-softmax, bias, gather, max.

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::{check_indices, check_len};

fn check_rows(op: &str, x: &[f32], n: usize, c: usize) -> Result<()> {
    check_len(op, "x", x.len(), n * c)?;
    if c == 0 && n > 0 {
        bail!("{op}: rows must have at least one column");
    }
    Ok(())
}

/// `(max, log sum exp(row - max))` of one row, the sum accumulated in f64.
pub(super) fn row_max_and_log_sum(row: &[f32]) -> (f32, f64) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
    (max, sum.ln())
}

/// Numerically stable softmax of every row.
pub(super) fn softmax(x: &[f32], n: usize, c: usize) -> Result<Vec<f32>> {
    check_rows("softmax_rows", x, n, c)?;
    let mut y = vec![0.0f32; n * c];
    if c == 0 {
        return Ok(y);
    }
    y.par_chunks_mut(c)
        .zip(x.par_chunks(c))
        .for_each(|(y_r, x_r)| {
            let (max, log_sum) = row_max_and_log_sum(x_r);
            for (o, &v) in y_r.iter_mut().zip(x_r) {
                *o = ((v - max) as f64 - log_sum).exp() as f32;
            }
        });
    Ok(y)
}

/// Numerically stable log-softmax of every row.
pub(super) fn log_softmax(x: &[f32], n: usize, c: usize) -> Result<Vec<f32>> {
    check_rows("log_softmax_rows", x, n, c)?;
    let mut y = vec![0.0f32; n * c];
    if c == 0 {
        return Ok(y);
    }
    y.par_chunks_mut(c)
        .zip(x.par_chunks(c))
        .for_each(|(y_r, x_r)| {
            let (max, log_sum) = row_max_and_log_sum(x_r);
            for (o, &v) in y_r.iter_mut().zip(x_r) {
                *o = ((v - max) as f64 - log_sum) as f32;
            }
        });
    Ok(y)
}

/// `x [n, c] + bias [c]` broadcast over rows.
pub(super) fn add_row_bias(x: &[f32], bias: &[f32], n: usize, c: usize) -> Result<Vec<f32>> {
    const OP: &str = "add_row_bias";
    check_len(OP, "x", x.len(), n * c)?;
    check_len(OP, "bias", bias.len(), c)?;
    let mut y = x.to_vec();
    if c > 0 {
        y.par_chunks_mut(c).for_each(|r| {
            for (v, &b) in r.iter_mut().zip(bias) {
                *v += b;
            }
        });
    }
    Ok(y)
}

/// `out[i] = x[i, idx[i]]`.
pub(super) fn gather(x: &[f32], idx: &[u32], n: usize, c: usize) -> Result<Vec<f32>> {
    const OP: &str = "gather_rows";
    check_len(OP, "x", x.len(), n * c)?;
    check_len(OP, "idx", idx.len(), n)?;
    check_indices(OP, "idx", idx, c)?;
    Ok(idx
        .iter()
        .enumerate()
        .map(|(i, &j)| x[i * c + j as usize])
        .collect())
}

/// Per row: `(max value [n], argmax [n])`, the first maximum winning.
pub(super) fn row_max(x: &[f32], n: usize, c: usize) -> Result<(Vec<f32>, Vec<u32>)> {
    check_rows("row_max", x, n, c)?;
    if c == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    Ok(x.par_chunks(c)
        .map(|r| {
            let mut best = 0;
            for (j, &v) in r.iter().enumerate().skip(1) {
                if v > r[best] {
                    best = j;
                }
            }
            (r[best], best as u32)
        })
        .unzip())
}
