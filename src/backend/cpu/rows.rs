//! Row-wise ops on `[n, c]` matrices (logits): softmax, log-softmax, bias, gather, max.

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::{check_indices, check_len};
use crate::backend::abi::{ERR_GATHER_INDEX, ERR_SLA_WEIGHTS_LABEL, ERR_XENT_LABEL};

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
    check_indices(ERR_GATHER_INDEX, idx, c)?;
    Ok(idx
        .iter()
        .enumerate()
        .map(|(i, &j)| x[i * c + j as usize])
        .collect())
}

/// SLA weights as their own pass: `w [n] = (1 - p_i)^gamma * exp(tau * cos_star[y_i] - tau * cos_y[i])`.
pub(super) fn sla_weights(
    prob: &[f32],
    cos_y: &[f32],
    cos_star: &[f32],
    labels: &[u32],
    gamma: f32,
    tau: f32,
) -> Result<Vec<f32>> {
    const OP: &str = "sla_weights";
    check_len(OP, "cos_y", cos_y.len(), prob.len())?;
    check_len(OP, "labels", labels.len(), prob.len())?;
    check_indices(ERR_SLA_WEIGHTS_LABEL, labels, cos_star.len())?;
    Ok((0..prob.len())
        .map(|i| {
            (1.0 - prob[i]).powf(gamma)
                * (tau * cos_star[labels[i] as usize] - tau * cos_y[i]).exp()
        })
        .collect())
}

/// `dlogits [n, c] = (probs - onehot(labels)) * row_scale[i]`.
pub(super) fn softmax_xent_backward(
    probs: &[f32],
    labels: &[u32],
    row_scale: &[f32],
    n: usize,
    c: usize,
) -> Result<Vec<f32>> {
    const OP: &str = "softmax_xent_backward";
    check_rows(OP, probs, n, c)?;
    check_len(OP, "labels", labels.len(), n)?;
    check_len(OP, "row_scale", row_scale.len(), n)?;
    check_indices(ERR_XENT_LABEL, labels, c)?;
    let mut g = probs.to_vec();
    for (i, row) in g.chunks_mut(c.max(1)).enumerate().take(n) {
        row[labels[i] as usize] -= 1.0;
        for v in row {
            *v *= row_scale[i];
        }
    }
    Ok(g)
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
