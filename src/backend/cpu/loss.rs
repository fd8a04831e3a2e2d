//! The method's fused ops: logit-adjusted softmax cross-entropy with per-sample weighting, the
//! feature/classifier cosine and the per-class cos-max table update.
//!
//! Fused loss, per row `i` with adjusted logits `z = logits_i + adjustment`, `s = softmax(z)` and
//! `ce(t) = logsumexp(z) - z_t`:
//! - `Unit` / `PerClass`, single target `a`: `w = cw[a]` (1 for `Unit`), `loss = w ce(a)`,
//!   `dz = w (s - e_a)`;
//! - mixed targets `(a, b, lambda)`: `wa = lambda cw[a]`, `wb = (1 - lambda) cw[b]`, `w = wa + wb`,
//!   `loss = wa ce(a) + wb ce(b)`, `dz = w s - wa e_a - wb e_b`;
//! - `Focal`: `q = 1 - p_a`, `w = q^gamma`, `loss = w ce(a)`, and the true gradient
//!   `dz = (q^gamma + gamma q^(gamma-1) p_a ce(a)) (s - e_a)`;
//! - `Sla`: `w = q^gamma exp(tau cos_star[a] - tau cos_y[i])` held constant, `dz = w (s - e_a)`.
//!
//! The reduction divides by `n` (`Mean`) or by `sum_i w_i` (`WeightNormalized`; the normaliser is held
//! constant for the gradient, and a zero sum gives a zero gradient instead of NaN). Since the logits
//! adjustment is additive, the gradient with respect to the raw logits equals the one for `z`.

use anyhow::Result;
use rayon::prelude::*;

use super::rows::row_max_and_log_sum;
use super::{check_indices, CpuBackend, CpuBuf, CpuIndex};
use crate::backend::abi::{ERR_COSINE_LABEL, ERR_COSMAX_LABEL, ERR_LOSS_TARGET, ERR_LOSS_TARGET_B};
use crate::backend::{
    CosineDims, LossArgs, LossOps, LossOutput, LossReduction, LossTargets, LossWeighting, RowDims,
};

/// Per-sample weighting with the buffers unwrapped.
#[derive(Clone, Copy)]
enum Weighting<'a> {
    /// `None`: unit weights.
    PerClass(Option<&'a [f32]>),
    Focal {
        gamma: f64,
    },
    Sla {
        cos_y: &'a [f32],
        cos_star: &'a [f32],
        gamma: f64,
        tau: f64,
    },
}

/// Results of one row before the reduction.
struct RowOut {
    loss: f64,
    prob: f64,
    weight: f64,
}

/// Fills `grad` (one row, unreduced) and returns the row's loss, probability and weight.
fn loss_row(
    logits: &[f32],
    adjustment: Option<&[f32]>,
    i: usize,
    a: usize,
    mixed: Option<(usize, f64)>,
    weighting: Weighting<'_>,
    grad: &mut [f32],
) -> RowOut {
    // z = logits + adjustment, staged in grad so the row needs no allocation.
    for (j, (g, &v)) in grad.iter_mut().zip(logits).enumerate() {
        *g = v + adjustment.map_or(0.0, |adj| adj[j]);
    }
    let (max, log_sum) = row_max_and_log_sum(grad);
    let lse = max as f64 + log_sum;
    // grad <- s (softmax), in place.
    for g in grad.iter_mut() {
        *g = ((*g - max) as f64 - log_sum).exp() as f32;
    }
    let ce_a = lse - (logits[a] + adjustment.map_or(0.0, |adj| adj[a])) as f64;
    let p_a = (-ce_a).exp();
    // 1 - p_a summed from the other classes: exact even when p_a rounds to 1.
    let q: f64 = grad
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != a)
        .map(|(_, &s)| s as f64)
        .sum();
    match (weighting, mixed) {
        (Weighting::PerClass(cw), None) => {
            let w = cw.map_or(1.0, |cw| cw[a] as f64);
            grad[a] -= 1.0;
            scale_row(grad, w);
            RowOut {
                loss: w * ce_a,
                prob: p_a,
                weight: w,
            }
        }
        (Weighting::PerClass(cw), Some((b, lambda))) => {
            let class_weight = |t: usize| cw.map_or(1.0, |cw| cw[t] as f64);
            let wa = lambda * class_weight(a);
            let wb = (1.0 - lambda) * class_weight(b);
            let w = wa + wb;
            let ce_b = lse - (logits[b] + adjustment.map_or(0.0, |adj| adj[b])) as f64;
            for g in grad.iter_mut() {
                *g = (w * *g as f64) as f32;
            }
            grad[a] = (grad[a] as f64 - wa) as f32;
            grad[b] = (grad[b] as f64 - wb) as f32;
            RowOut {
                loss: wa * ce_a + wb * ce_b,
                prob: p_a,
                weight: w,
            }
        }
        (Weighting::Focal { gamma }, None) => {
            let w = q.powf(gamma);
            // d/dz of -(1-p)^gamma log p; the second term vanishes as q -> 0 for every gamma >= 0.
            let modulation = if q > 0.0 {
                w + gamma * q.powf(gamma - 1.0) * p_a * ce_a
            } else {
                w
            };
            grad[a] -= 1.0;
            scale_row(grad, modulation);
            RowOut {
                loss: w * ce_a,
                prob: p_a,
                weight: w,
            }
        }
        (
            Weighting::Sla {
                cos_y,
                cos_star,
                gamma,
                tau,
            },
            None,
        ) => {
            let w = q.powf(gamma) * (tau * cos_star[a] as f64 - tau * cos_y[i] as f64).exp();
            grad[a] -= 1.0;
            scale_row(grad, w);
            RowOut {
                loss: w * ce_a,
                prob: p_a,
                weight: w,
            }
        }
        (Weighting::Focal { .. } | Weighting::Sla { .. }, Some(_)) => {
            unreachable!("mixed targets with focal/SLA weighting are rejected before the row loop")
        }
    }
}

fn scale_row(row: &mut [f32], alpha: f64) {
    for v in row {
        *v = (alpha * *v as f64) as f32;
    }
}

impl LossOps for CpuBackend {
    fn fused_loss_unchecked(&self, args: LossArgs<'_, Self>) -> Result<LossOutput<Self>> {
        let LossArgs {
            logits,
            n,
            c,
            targets,
            adjustment,
            weighting,
            reduction,
        } = args;
        let logits = logits.as_slice();
        let adjustment = adjustment.map(|adj| adj.as_slice());
        let (labels_a, mixed): (&[u32], Option<(&[u32], f64)>) = match targets {
            LossTargets::Single(y) => (y.as_slice(), None),
            LossTargets::Mixed { a, b, lambda } => (
                a.as_slice(),
                Some((b.as_slice(), lambda.as_slice()[0] as f64)),
            ),
        };
        check_indices(ERR_LOSS_TARGET, labels_a, c)?;
        if let Some((labels_b, _)) = mixed {
            check_indices(ERR_LOSS_TARGET_B, labels_b, c)?;
        }
        let weighting = match weighting {
            LossWeighting::Unit => Weighting::PerClass(None),
            LossWeighting::PerClass(cw) => Weighting::PerClass(Some(cw.as_slice())),
            LossWeighting::Focal { gamma } => Weighting::Focal {
                gamma: gamma as f64,
            },
            LossWeighting::Sla {
                cos_y,
                cos_star,
                gamma,
                tau,
            } => Weighting::Sla {
                cos_y: cos_y.as_slice(),
                cos_star: cos_star.as_slice(),
                gamma: gamma as f64,
                tau: tau as f64,
            },
        };

        self.pool.install(|| {
            let mut dlogits = vec![0.0f32; n * c];
            let rows: Vec<RowOut> = if c == 0 {
                Vec::new()
            } else {
                dlogits
                    .par_chunks_mut(c)
                    .zip(logits.par_chunks(c))
                    .enumerate()
                    .map(|(i, (grad, row))| {
                        let mix = mixed.map(|(labels_b, lambda)| (labels_b[i] as usize, lambda));
                        loss_row(
                            row,
                            adjustment,
                            i,
                            labels_a[i] as usize,
                            mix,
                            weighting,
                            grad,
                        )
                    })
                    .collect()
            };
            let denominator = match reduction {
                LossReduction::Mean => n as f64,
                LossReduction::WeightNormalized => rows.iter().map(|r| r.weight).sum(),
            };
            let inv = if denominator != 0.0 {
                1.0 / denominator
            } else {
                0.0
            };
            dlogits
                .par_iter_mut()
                .with_min_len(1 << 14)
                .for_each(|g| *g = (inv * *g as f64) as f32);
            Ok(LossOutput {
                loss: CpuBuf::from_vec(rows.iter().map(|r| r.loss as f32).collect()),
                prob: CpuBuf::from_vec(rows.iter().map(|r| r.prob as f32).collect()),
                weight: CpuBuf::from_vec(rows.iter().map(|r| r.weight as f32).collect()),
                dlogits: CpuBuf::from_vec(dlogits),
            })
        })
    }

    /// `cos [n]`: cosine between `features[i] [d]` and `w[labels[i]] [d]`, 0 when either norm is 0.
    fn row_cosine_unchecked(
        &self,
        features: &CpuBuf,
        w: &CpuBuf,
        labels: &CpuIndex,
        dims: CosineDims,
    ) -> Result<CpuBuf> {
        let CosineDims { n, d, c } = dims;
        let (features, w, labels) = (features.as_slice(), w.as_slice(), labels.as_slice());
        check_indices(ERR_COSINE_LABEL, labels, c)?;
        Ok(CpuBuf::from_vec(self.pool.install(|| {
            (0..n)
                .into_par_iter()
                .map(|i| {
                    let z = &features[i * d..(i + 1) * d];
                    let k = labels[i] as usize;
                    let wk = &w[k * d..(k + 1) * d];
                    let (mut dot, mut zz, mut ww) = (0.0f64, 0.0f64, 0.0f64);
                    for (&a, &b) in z.iter().zip(wk) {
                        dot += a as f64 * b as f64;
                        zz += a as f64 * a as f64;
                        ww += b as f64 * b as f64;
                    }
                    if zz == 0.0 || ww == 0.0 {
                        0.0
                    } else {
                        (dot / (zz.sqrt() * ww.sqrt())) as f32
                    }
                })
                .collect()
        })))
    }

    /// Per class, the batch sample with the largest true-class logit (the earliest on ties) replaces the
    /// table entry when its logit is strictly larger.
    fn cosmax_update_unchecked(
        &self,
        logits: &CpuBuf,
        cos: &CpuBuf,
        labels: &CpuIndex,
        d: RowDims,
        table_logit: &mut CpuBuf,
        table_cos: &mut CpuBuf,
    ) -> Result<()> {
        let c = d.c;
        let (logits, cos, labels) = (logits.as_slice(), cos.as_slice(), labels.as_slice());
        let (table_logit, table_cos) = (table_logit.as_mut_slice(), table_cos.as_mut_slice());
        check_indices(ERR_COSMAX_LABEL, labels, c)?;
        // Best batch sample per class: (logit, index).
        let mut best: Vec<Option<(f32, usize)>> = vec![None; c];
        for (i, &y) in labels.iter().enumerate() {
            let y = y as usize;
            let v = logits[i * c + y];
            if best[y].is_none_or(|(b, _)| v > b) {
                best[y] = Some((v, i));
            }
        }
        for (k, entry) in best.into_iter().enumerate() {
            if let Some((v, i)) = entry {
                if v > table_logit[k] {
                    table_logit[k] = v;
                    table_cos[k] = cos[i];
                }
            }
        }
        Ok(())
    }
}
