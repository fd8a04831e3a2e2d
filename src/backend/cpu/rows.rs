//! Row-wise ops on `[n, c]` matrices (logits): softmax and max.

use anyhow::Result;
use rayon::prelude::*;

use super::{CpuBackend, CpuBuf, CpuIndex};
use crate::backend::{RowDims, RowOps};

/// `(max, log sum exp(row - max))` of one row, the sum accumulated in f64.
pub(super) fn row_max_and_log_sum(row: &[f32]) -> (f32, f64) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
    (max, sum.ln())
}

impl CpuBackend {
    /// Numerically stable softmax (or log-softmax) of every row.
    pub(super) fn softmax(&self, x: &CpuBuf, d: RowDims, log: bool) -> CpuBuf {
        let c = d.c;
        let mut y = vec![0.0f32; d.len()];
        if c == 0 {
            return CpuBuf::from_vec(y);
        }
        self.pool.install(|| {
            y.par_chunks_mut(c)
                .zip(x.as_slice().par_chunks(c))
                .for_each(|(y_r, x_r)| {
                    let (max, log_sum) = row_max_and_log_sum(x_r);
                    for (o, &v) in y_r.iter_mut().zip(x_r) {
                        let log_p = (v - max) as f64 - log_sum;
                        *o = if log {
                            log_p as f32
                        } else {
                            log_p.exp() as f32
                        };
                    }
                })
        });
        CpuBuf::from_vec(y)
    }
}

impl RowOps for CpuBackend {
    fn softmax_rows_unchecked(&self, x: &CpuBuf, d: RowDims) -> Result<CpuBuf> {
        Ok(self.softmax(x, d, false))
    }

    /// The first maximum wins.
    fn row_max_unchecked(&self, x: &CpuBuf, d: RowDims) -> Result<(CpuBuf, CpuIndex)> {
        if d.c == 0 {
            return Ok((CpuBuf::from_vec(Vec::new()), CpuIndex::from_vec(Vec::new())));
        }
        let (max, argmax) = self.pool.install(|| {
            x.as_slice()
                .par_chunks(d.c)
                .map(|r| {
                    let mut best = 0;
                    for (j, &v) in r.iter().enumerate().skip(1) {
                        if v > r[best] {
                            best = j;
                        }
                    }
                    (r[best], best as u32)
                })
                .unzip()
        });
        Ok((CpuBuf::from_vec(max), CpuIndex::from_vec(argmax)))
    }
}
