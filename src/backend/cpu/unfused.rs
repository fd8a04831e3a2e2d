//! The unfused loss composition's ops (the benchmark baseline of the fused loss).

use anyhow::Result;
use rayon::prelude::*;

use super::{check_indices, CpuBackend, CpuBuf, CpuIndex};
use crate::backend::abi::{ERR_GATHER_INDEX, ERR_SLA_WEIGHTS_LABEL, ERR_XENT_LABEL};
use crate::backend::unfused::UnfusedLossOps;
use crate::backend::RowDims;

impl UnfusedLossOps for CpuBackend {
    fn add_row_bias_unchecked(&self, x: &CpuBuf, bias: &CpuBuf, d: RowDims) -> Result<CpuBuf> {
        let mut y = x.as_slice().to_vec();
        if d.c > 0 {
            self.pool.install(|| {
                y.par_chunks_mut(d.c).for_each(|r| {
                    for (v, &b) in r.iter_mut().zip(bias.as_slice()) {
                        *v += b;
                    }
                })
            });
        }
        Ok(CpuBuf::from_vec(y))
    }

    fn log_softmax_rows_unchecked(&self, x: &CpuBuf, d: RowDims) -> Result<CpuBuf> {
        Ok(self.softmax(x, d, true))
    }

    fn gather_rows_unchecked(&self, x: &CpuBuf, idx: &CpuIndex, d: RowDims) -> Result<CpuBuf> {
        check_indices(ERR_GATHER_INDEX, idx.as_slice(), d.c)?;
        Ok(CpuBuf::from_vec(
            idx.as_slice()
                .iter()
                .enumerate()
                .map(|(i, &j)| x.as_slice()[i * d.c + j as usize])
                .collect(),
        ))
    }

    fn sla_weights_unchecked(
        &self,
        prob: &CpuBuf,
        cos_y: &CpuBuf,
        cos_star: &CpuBuf,
        labels: &CpuIndex,
        gamma: f32,
        tau: f32,
    ) -> Result<CpuBuf> {
        let (prob, cos_y, cos_star, labels) = (
            prob.as_slice(),
            cos_y.as_slice(),
            cos_star.as_slice(),
            labels.as_slice(),
        );
        check_indices(ERR_SLA_WEIGHTS_LABEL, labels, cos_star.len())?;
        Ok(CpuBuf::from_vec(
            (0..prob.len())
                .map(|i| {
                    (1.0 - prob[i]).powf(gamma)
                        * (tau * cos_star[labels[i] as usize] - tau * cos_y[i]).exp()
                })
                .collect(),
        ))
    }

    fn softmax_xent_backward_unchecked(
        &self,
        probs: &CpuBuf,
        labels: &CpuIndex,
        row_scale: &CpuBuf,
        d: RowDims,
    ) -> Result<CpuBuf> {
        check_indices(ERR_XENT_LABEL, labels.as_slice(), d.c)?;
        let mut g = probs.as_slice().to_vec();
        for (i, row) in g.chunks_mut(d.c.max(1)).enumerate().take(d.n) {
            row[labels.as_slice()[i] as usize] -= 1.0;
            for v in row {
                *v *= row_scale.as_slice()[i];
            }
        }
        Ok(CpuBuf::from_vec(g))
    }

    fn mul_unchecked(&self, a: &CpuBuf, b: &CpuBuf) -> Result<CpuBuf> {
        Ok(self.zip_map(a, b, |x, y| x * y))
    }
}
