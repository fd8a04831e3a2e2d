//! Naive f64 reference implementations: direct loops written for clarity, not speed, independent of
//! any backend code. Shapes use the `*Dims` structs of the op interface.

use ltrain::backend::{ChannelDims, Conv2dDims, LossReduction, Pool2dDims, ShortcutDims};

/// Input coordinate `o * stride + k - pad` when it lies inside `0..size`.
fn tap(o: usize, k: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    let i = (o * stride + k) as isize - pad as isize;
    (0..size as isize).contains(&i).then_some(i as usize)
}

/// Direct-loop grouped convolution: `x [n, c_in, h, w]`, `w [c_out, c_in/groups, k, k]`.
pub fn conv2d(x: &[f64], w: &[f64], d: Conv2dDims) -> Vec<f64> {
    let (ho, wo) = (d.h_out(), d.w_out());
    let (cig, cog) = (d.c_in / d.groups, d.c_out / d.groups);
    let mut y = vec![0.0; d.output_len()];
    for s in 0..d.n {
        for co in 0..d.c_out {
            let g = co / cog;
            for oh in 0..ho {
                for ow in 0..wo {
                    let mut acc = 0.0;
                    for j in 0..cig {
                        let ci = g * cig + j;
                        for kh in 0..d.k {
                            for kw in 0..d.k {
                                if let (Some(ih), Some(iw)) = (
                                    tap(oh, kh, d.stride, d.pad, d.h),
                                    tap(ow, kw, d.stride, d.pad, d.w),
                                ) {
                                    acc += x[((s * d.c_in + ci) * d.h + ih) * d.w + iw]
                                        * w[((co * cig + j) * d.k + kh) * d.k + kw];
                                }
                            }
                        }
                    }
                    y[((s * d.c_out + co) * ho + oh) * wo + ow] = acc;
                }
            }
        }
    }
    y
}

/// The adjoints of [`conv2d`] with respect to `x` and `w`, by scattering the same loops.
pub fn conv2d_backward(x: &[f64], w: &[f64], dy: &[f64], d: Conv2dDims) -> (Vec<f64>, Vec<f64>) {
    let (ho, wo) = (d.h_out(), d.w_out());
    let (cig, cog) = (d.c_in / d.groups, d.c_out / d.groups);
    let mut dx = vec![0.0; d.input_len()];
    let mut dw = vec![0.0; d.weight_len()];
    for s in 0..d.n {
        for co in 0..d.c_out {
            let g = co / cog;
            for oh in 0..ho {
                for ow in 0..wo {
                    let gy = dy[((s * d.c_out + co) * ho + oh) * wo + ow];
                    for j in 0..cig {
                        let ci = g * cig + j;
                        for kh in 0..d.k {
                            for kw in 0..d.k {
                                if let (Some(ih), Some(iw)) = (
                                    tap(oh, kh, d.stride, d.pad, d.h),
                                    tap(ow, kw, d.stride, d.pad, d.w),
                                ) {
                                    let xi = ((s * d.c_in + ci) * d.h + ih) * d.w + iw;
                                    let wi = ((co * cig + j) * d.k + kh) * d.k + kw;
                                    dx[xi] += gy * w[wi];
                                    dw[wi] += gy * x[xi];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    (dx, dw)
}

/// Values of channel `ch` of `x [n, c, hw]`.
fn channel(x: &[f64], d: ChannelDims, ch: usize) -> Vec<f64> {
    (0..d.n)
        .flat_map(|s| (0..d.hw).map(move |i| (s, i)))
        .map(|(s, i)| x[(s * d.c + ch) * d.hw + i])
        .collect()
}

/// Per channel `(mean, biased variance)`.
pub fn channel_stats(x: &[f64], d: ChannelDims) -> Vec<(f64, f64)> {
    (0..d.c)
        .map(|ch| {
            let v = channel(x, d, ch);
            let m = v.iter().sum::<f64>() / v.len() as f64;
            let var = v.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / v.len() as f64;
            (m, var)
        })
        .collect()
}

/// Training-mode batch norm output (biased batch variance).
pub fn batch_norm_train(
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    d: ChannelDims,
    eps: f64,
) -> Vec<f64> {
    let stats = channel_stats(x, d);
    batch_norm_with(x, gamma, beta, d, |ch| (stats[ch].0, stats[ch].1 + eps))
}

/// Batch norm with given per-channel `(mean, variance + eps)`.
pub fn batch_norm_with(
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    d: ChannelDims,
    stats: impl Fn(usize) -> (f64, f64),
) -> Vec<f64> {
    let mut y = vec![0.0; d.len()];
    for s in 0..d.n {
        for ch in 0..d.c {
            let (m, v) = stats(ch);
            for i in 0..d.hw {
                let k = (s * d.c + ch) * d.hw + i;
                y[k] = gamma[ch] * (x[k] - m) / v.sqrt() + beta[ch];
            }
        }
    }
    y
}

/// Textbook batch-norm backward: `(dx, dgamma, dbeta)`.
pub fn batch_norm_backward(
    dy: &[f64],
    x: &[f64],
    gamma: &[f64],
    d: ChannelDims,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let stats = channel_stats(x, d);
    let m = (d.n * d.hw) as f64;
    let mut dx = vec![0.0; d.len()];
    let mut dgamma = vec![0.0; d.c];
    let mut dbeta = vec![0.0; d.c];
    for ch in 0..d.c {
        let (mean, var) = stats[ch];
        let inv = 1.0 / (var + eps).sqrt();
        let idx: Vec<usize> = (0..d.n)
            .flat_map(|s| (0..d.hw).map(move |i| (s * d.c + ch) * d.hw + i))
            .collect();
        for &k in &idx {
            dbeta[ch] += dy[k];
            dgamma[ch] += dy[k] * (x[k] - mean) * inv;
        }
        for &k in &idx {
            let xhat = (x[k] - mean) * inv;
            dx[k] = gamma[ch] * inv / m * (m * dy[k] - dbeta[ch] - xhat * dgamma[ch]);
        }
    }
    (dx, dgamma, dbeta)
}

/// Max pooling: `(y, argmax as flat input index)`, first maximum in row-major window order, padded
/// positions skipped.
pub fn max_pool(x: &[f64], d: Pool2dDims) -> (Vec<f64>, Vec<u32>) {
    let (ho, wo) = (d.h_out(), d.w_out());
    let mut y = Vec::new();
    let mut arg = Vec::new();
    for s in 0..d.n {
        for ch in 0..d.c {
            for oh in 0..ho {
                for ow in 0..wo {
                    let mut best: Option<(f64, usize)> = None;
                    for kh in 0..d.k {
                        for kw in 0..d.k {
                            if let (Some(ih), Some(iw)) = (
                                tap(oh, kh, d.stride, d.pad, d.h),
                                tap(ow, kw, d.stride, d.pad, d.w),
                            ) {
                                let i = ((s * d.c + ch) * d.h + ih) * d.w + iw;
                                if best.is_none_or(|(b, _)| x[i] > b) {
                                    best = Some((x[i], i));
                                }
                            }
                        }
                    }
                    let (v, i) = best.expect("every window holds an input element");
                    y.push(v);
                    arg.push(i as u32);
                }
            }
        }
    }
    (y, arg)
}

/// Mean over `hw`: `[n, c, hw]` → `[n, c]`.
pub fn global_avg_pool(x: &[f64], d: ChannelDims) -> Vec<f64> {
    x.chunks(d.hw)
        .map(|p| p.iter().sum::<f64>() / d.hw as f64)
        .collect()
}

/// Option-A shortcut: `y[s, co, oh, ow] = x[s, co - pad, oh * stride, ow * stride]` inside the copied
/// channel band, 0 outside.
pub fn shortcut_a(x: &[f64], d: ShortcutDims) -> Vec<f64> {
    let pad = (d.c_out - d.c_in) / 2;
    let (ho, wo) = (d.h_out(), d.w_out());
    let mut y = vec![0.0; d.n * d.c_out * ho * wo];
    for s in 0..d.n {
        for co in pad..pad + d.c_in {
            for oh in 0..ho {
                for ow in 0..wo {
                    y[((s * d.c_out + co) * ho + oh) * wo + ow] =
                        x[((s * d.c_in + co - pad) * d.h + oh * d.stride) * d.w + ow * d.stride];
                }
            }
        }
    }
    y
}

/// `y [n, out] = x [n, in] · wᵀ + b`.
pub fn linear(x: &[f64], w: &[f64], b: &[f64], n: usize, d_in: usize, d_out: usize) -> Vec<f64> {
    let mut y = vec![0.0; n * d_out];
    for i in 0..n {
        for o in 0..d_out {
            y[i * d_out + o] = b[o]
                + (0..d_in)
                    .map(|k| x[i * d_in + k] * w[o * d_in + k])
                    .sum::<f64>();
        }
    }
    y
}

/// Log-softmax of each row.
pub fn log_softmax(x: &[f64], c: usize) -> Vec<f64> {
    x.chunks(c)
        .flat_map(|r| {
            let m = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + r.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            r.iter().map(move |v| v - lse).collect::<Vec<_>>()
        })
        .collect()
}

/// Targets of a reference loss case.
#[derive(Clone, Debug)]
pub enum RefTargets {
    Single(Vec<u32>),
    Mixed {
        a: Vec<u32>,
        b: Vec<u32>,
        lambda: f64,
    },
}

/// Weighting of a reference loss case (mirrors `LossWeighting`).
#[derive(Clone, Debug)]
pub enum RefWeighting {
    Unit,
    PerClass(Vec<f64>),
    Focal {
        gamma: f64,
    },
    Sla {
        cos_y: Vec<f64>,
        cos_star: Vec<f64>,
        gamma: f64,
        tau: f64,
    },
}

/// A complete fused-loss problem, in f64 except the logits handed to the backend.
#[derive(Clone, Debug)]
pub struct LossCase {
    pub n: usize,
    pub c: usize,
    pub logits: Vec<f32>,
    pub targets: RefTargets,
    pub adjustment: Option<Vec<f64>>,
    pub weighting: RefWeighting,
    pub reduction: LossReduction,
}

/// Per-sample reference values.
#[derive(Clone, Copy, Debug)]
pub struct RefRow {
    /// Weighted loss `w_i l_i`.
    pub loss: f64,
    /// Adjusted softmax probability of target `a`.
    pub prob: f64,
    pub weight: f64,
    /// Cross-entropy `-log p_a` of target `a`.
    pub ce_a: f64,
}

/// Rows of the loss at `logits` (f64), straight from the definitions in the trait docs.
pub fn loss_rows(case: &LossCase, logits: &[f64]) -> Vec<RefRow> {
    let c = case.c;
    (0..case.n)
        .map(|i| {
            let z: Vec<f64> = (0..c)
                .map(|j| logits[i * c + j] + case.adjustment.as_ref().map_or(0.0, |a| a[j]))
                .collect();
            let logp = log_softmax(&z, c);
            let ce = |t: u32| -logp[t as usize];
            let (a, mix) = match &case.targets {
                RefTargets::Single(y) => (y[i], None),
                RefTargets::Mixed { a, b, lambda } => (a[i], Some((b[i], *lambda))),
            };
            let p = (-ce(a)).exp();
            let class_weight = |t: u32| match &case.weighting {
                RefWeighting::PerClass(cw) => cw[t as usize],
                _ => 1.0,
            };
            let (loss, weight) = match (&case.weighting, mix) {
                (RefWeighting::Unit | RefWeighting::PerClass(_), None) => {
                    (class_weight(a) * ce(a), class_weight(a))
                }
                (RefWeighting::Unit | RefWeighting::PerClass(_), Some((b, lambda))) => {
                    let (wa, wb) = (lambda * class_weight(a), (1.0 - lambda) * class_weight(b));
                    (wa * ce(a) + wb * ce(b), wa + wb)
                }
                (RefWeighting::Focal { gamma }, None) => {
                    let w = (1.0 - p).powf(*gamma);
                    (w * ce(a), w)
                }
                (
                    RefWeighting::Sla {
                        cos_y,
                        cos_star,
                        gamma,
                        tau,
                    },
                    None,
                ) => {
                    let w = (1.0 - p).powf(*gamma)
                        * (tau * cos_star[a as usize] - tau * cos_y[i]).exp();
                    (w * ce(a), w)
                }
                _ => panic!("focal/SLA with mixed targets has no reference"),
            };
            RefRow {
                loss,
                prob: p,
                weight,
                ce_a: ce(a),
            }
        })
        .collect()
}

/// Reduction denominator of the rows.
pub fn loss_denominator(case: &LossCase, rows: &[RefRow]) -> f64 {
    match case.reduction {
        LossReduction::Mean => case.n as f64,
        LossReduction::WeightNormalized => rows.iter().map(|r| r.weight).sum(),
    }
}

/// The scalar whose gradient `fused_loss` returns, as a function of the logits: weights that the trait
/// holds constant (SLA's, and the weight-normalised denominator) are frozen at `base`; focal's are not.
pub fn loss_objective(case: &LossCase, base: &[RefRow], logits: &[f64]) -> f64 {
    let denominator = loss_denominator(case, base);
    let rows = loss_rows(case, logits);
    let total: f64 = match case.weighting {
        RefWeighting::Sla { .. } => rows.iter().zip(base).map(|(r, b)| b.weight * r.ce_a).sum(),
        _ => rows.iter().map(|r| r.loss).sum(),
    };
    total / denominator
}
