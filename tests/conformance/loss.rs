//! Checks of the fused logit-adjusted loss: every weighting, target kind, reduction and adjustment
//! against the f64 definitions and finite differences, hand-computed values, argument errors, and
//! agreement with the unfused composition of the row ops.

use anyhow::{ensure, Result};
use ltrain::backend::RowDims;
use ltrain::backend::UnfusedLoss;
use ltrain::backend::{LossArgs, LossReduction, LossTargets, LossWeighting};
use rand::rngs::StdRng;
use rand::Rng;

use super::reference::{self as r, LossCase, RefTargets, RefWeighting};
use super::{assert_close, down, expect_err, f64s, fd_check, labels, rng, uniform, up, up64};

/// Outputs of `fused_loss`, downloaded.
struct FusedOut {
    loss: Vec<f32>,
    prob: Vec<f32>,
    weight: Vec<f32>,
    dlogits: Vec<f32>,
}

/// Uploads a case, runs `fused_loss` and downloads its outputs.
fn run_fused<B: UnfusedLoss>(be: &B, case: &LossCase) -> Result<FusedOut> {
    let logits = up(be, &case.logits)?;
    let adjustment = case
        .adjustment
        .as_deref()
        .map(|a| up64(be, a))
        .transpose()?;
    let (ya, yb, lambda) = match &case.targets {
        RefTargets::Single(y) => (be.upload_index(y)?, None, 1.0),
        RefTargets::Mixed { a, b, lambda } => {
            (be.upload_index(a)?, Some(be.upload_index(b)?), *lambda)
        }
    };
    let lambda_dev = be.upload(&[lambda as f32])?;
    let targets = match &yb {
        None => LossTargets::Single(&ya),
        Some(yb) => LossTargets::Mixed {
            a: &ya,
            b: yb,
            lambda: &lambda_dev,
        },
    };
    // Buffers the weighting borrows.
    let bufs: Vec<B::Buf> = match &case.weighting {
        RefWeighting::PerClass(cw) => vec![up64(be, cw)?],
        RefWeighting::Sla {
            cos_y, cos_star, ..
        } => vec![up64(be, cos_y)?, up64(be, cos_star)?],
        _ => Vec::new(),
    };
    let weighting = match &case.weighting {
        RefWeighting::Unit => LossWeighting::Unit,
        RefWeighting::PerClass(_) => LossWeighting::PerClass(&bufs[0]),
        RefWeighting::Focal { gamma } => LossWeighting::Focal {
            gamma: *gamma as f32,
        },
        RefWeighting::Sla { gamma, tau, .. } => LossWeighting::Sla {
            cos_y: &bufs[0],
            cos_star: &bufs[1],
            gamma: *gamma as f32,
            tau: *tau as f32,
        },
    };
    let out = be.fused_loss(LossArgs {
        logits: &logits,
        n: case.n,
        c: case.c,
        targets,
        adjustment: adjustment.as_ref(),
        weighting,
        reduction: case.reduction,
    })?;
    Ok(FusedOut {
        loss: down(be, &out.loss)?,
        prob: down(be, &out.prob)?,
        weight: down(be, &out.weight)?,
        dlogits: down(be, &out.dlogits)?,
    })
}

/// An f32-representable random value, as f64 (so backend and reference see the same number).
fn value(g: &mut StdRng, lo: f32, hi: f32) -> f64 {
    g.random_range(lo..hi) as f64
}

fn values(g: &mut StdRng, len: usize, lo: f32, hi: f32) -> Vec<f64> {
    f64s(&uniform(g, len, lo, hi))
}

/// Every supported combination of targets, weighting, reduction and adjustment, on two shapes.
fn cases(seed: u64) -> Vec<LossCase> {
    let mut g = rng(seed);
    let mut out = Vec::new();
    for (n, c) in [(5usize, 4usize), (3, 7)] {
        for mixed in [false, true] {
            for kind in 0..6 {
                if mixed && kind >= 2 {
                    continue; // focal and SLA are single-target only
                }
                for reduction in [LossReduction::Mean, LossReduction::WeightNormalized] {
                    for adjusted in [false, true] {
                        let weighting = match kind {
                            0 => RefWeighting::Unit,
                            1 => RefWeighting::PerClass(values(&mut g, c, 0.2, 2.0)),
                            2 => RefWeighting::Focal { gamma: 0.0 },
                            3 => RefWeighting::Focal { gamma: 0.5 },
                            4 => RefWeighting::Focal { gamma: 2.0 },
                            _ => RefWeighting::Sla {
                                cos_y: values(&mut g, n, -1.0, 1.0),
                                cos_star: values(&mut g, c, -1.0, 1.0),
                                gamma: value(&mut g, 0.0, 2.0),
                                tau: 1.5,
                            },
                        };
                        let targets = if mixed {
                            RefTargets::Mixed {
                                a: labels(&mut g, n, c),
                                b: labels(&mut g, n, c),
                                lambda: value(&mut g, 0.0, 1.0),
                            }
                        } else {
                            RefTargets::Single(labels(&mut g, n, c))
                        };
                        // A log-prior-like adjustment: tau * log of a long-tailed distribution.
                        let adjustment = adjusted.then(|| {
                            let prior: Vec<f64> = (0..c).map(|k| 0.6f64.powi(k as i32)).collect();
                            let total: f64 = prior.iter().sum();
                            prior
                                .iter()
                                .map(|p| (1.2 * (p / total).ln()) as f32 as f64)
                                .collect()
                        });
                        out.push(LossCase {
                            n,
                            c,
                            logits: uniform(&mut g, n * c, -3.0, 3.0),
                            targets,
                            adjustment,
                            weighting,
                            reduction,
                        });
                    }
                }
            }
        }
    }
    out
}

fn describe(case: &LossCase) -> String {
    let targets = match case.targets {
        RefTargets::Single(_) => "single".to_string(),
        RefTargets::Mixed { lambda, .. } => format!("mixed (lambda {lambda:.3})"),
    };
    let weighting = match &case.weighting {
        RefWeighting::Unit => "unit".to_string(),
        RefWeighting::PerClass(_) => "per-class".to_string(),
        RefWeighting::Focal { gamma } => format!("focal (gamma {gamma})"),
        RefWeighting::Sla { gamma, tau, .. } => format!("sla (gamma {gamma:.3}, tau {tau})"),
    };
    format!(
        "fused_loss {}x{} {targets} {weighting} {:?} adjusted {}",
        case.n,
        case.c,
        case.reduction,
        case.adjustment.is_some()
    )
}

/// Per-sample loss, probability and weight against the f64 definitions (atol 1e-6 + rtol 1e-5);
/// dlogits against central differences (h 1e-4, truncation ~1e-8) of the reduced loss with the
/// weights the trait holds constant frozen (SLA's, the weight-normalised denominator) and focal's
/// true dependence on p (atol 2e-6 + rtol 1e-4).
pub fn reference_and_gradient<B: UnfusedLoss>(be: &B) -> Result<()> {
    let mut g = rng(21);
    for case in cases(20) {
        let what = describe(&case);
        let out = run_fused(be, &case)?;
        let logits = f64s(&case.logits);
        let rows = r::loss_rows(&case, &logits);
        let pick = |f: fn(&r::RefRow) -> f64| rows.iter().map(f).collect::<Vec<_>>();
        assert_close(
            &format!("{what}: loss"),
            &out.loss,
            &pick(|r| r.loss),
            1e-6,
            1e-5,
        )?;
        assert_close(
            &format!("{what}: prob"),
            &out.prob,
            &pick(|r| r.prob),
            1e-6,
            1e-5,
        )?;
        assert_close(
            &format!("{what}: weight"),
            &out.weight,
            &pick(|r| r.weight),
            1e-6,
            1e-5,
        )?;
        let objective = |z: &[f64]| r::loss_objective(&case, &rows, z);
        fd_check(
            &format!("{what}: dlogits"),
            &out.dlogits,
            objective,
            &logits,
            &mut g,
            100,
            1e-4,
            2e-6,
            1e-4,
        )?;
    }
    Ok(())
}

/// Two classes, logits [1, 0], label 0: p = e / (e + 1) = 0.7310585786, CE = 0.3132616875,
/// dlogits = [p - 1, 1 - p]. With adjustment [0, 1]: p = 1/2, CE = ln 2, dlogits = [-1/2, 1/2].
/// Focal gamma 2: q = 0.2689414214, loss q^2 CE = 0.0226580575, dlogits = (q^2 + 2 q p CE)(p - 1)
/// = -0.0525811300. Mixed a = 0, b = 1, lambda 1/4: loss 0.25 CE + 0.75 (CE + 1) = 1.0632616875,
/// dlogits = [p - 0.25, (1 - p) - 0.75]. Per-class weights [2, 1/2], weight-normalised, rows [1, 0] label 0
/// and [0, 1] label 1: losses [2 CE, CE / 2], denominator 5/2, dlogits [[-0.2151531371, 0.2151531371],
/// [0.0537882843, -0.0537882843]].
pub fn hand<B: UnfusedLoss>(be: &B) -> Result<()> {
    let p = 0.7310585786300049;
    let single = |weighting, adjustment| LossCase {
        n: 1,
        c: 2,
        logits: vec![1.0, 0.0],
        targets: RefTargets::Single(vec![0]),
        adjustment,
        weighting,
        reduction: LossReduction::Mean,
    };
    let out = run_fused(be, &single(RefWeighting::Unit, None))?;
    assert_close("hand CE loss", &out.loss, &[0.3132616875182228], 1e-7, 1e-6)?;
    assert_close("hand CE prob", &out.prob, &[p], 1e-7, 1e-6)?;
    assert_close("hand CE weight", &out.weight, &[1.0], 0.0, 0.0)?;
    assert_close(
        "hand CE dlogits",
        &out.dlogits,
        &[p - 1.0, 1.0 - p],
        1e-7,
        1e-6,
    )?;

    let out = run_fused(be, &single(RefWeighting::Unit, Some(vec![0.0, 1.0])))?;
    assert_close(
        "hand adjusted loss",
        &out.loss,
        &[std::f64::consts::LN_2],
        1e-7,
        1e-6,
    )?;
    assert_close("hand adjusted prob", &out.prob, &[0.5], 1e-7, 1e-6)?;
    assert_close(
        "hand adjusted dlogits",
        &out.dlogits,
        &[-0.5, 0.5],
        1e-7,
        1e-6,
    )?;

    let out = run_fused(be, &single(RefWeighting::Focal { gamma: 2.0 }, None))?;
    assert_close(
        "hand focal loss",
        &out.loss,
        &[0.022658057508467326],
        1e-8,
        1e-5,
    )?;
    assert_close(
        "hand focal weight",
        &out.weight,
        &[0.07232948812851325],
        1e-7,
        1e-5,
    )?;
    assert_close(
        "hand focal dlogits",
        &out.dlogits,
        &[-0.05258112997756061, 0.05258112997756061],
        1e-8,
        1e-5,
    )?;

    let mixed = LossCase {
        targets: RefTargets::Mixed {
            a: vec![0],
            b: vec![1],
            lambda: 0.25,
        },
        ..single(RefWeighting::Unit, None)
    };
    let out = run_fused(be, &mixed)?;
    assert_close(
        "hand mixed loss",
        &out.loss,
        &[1.0632616875182228],
        1e-7,
        1e-6,
    )?;
    assert_close("hand mixed prob", &out.prob, &[p], 1e-7, 1e-6)?;
    assert_close(
        "hand mixed dlogits",
        &out.dlogits,
        &[p - 0.25, (1.0 - p) - 0.75],
        1e-7,
        1e-6,
    )?;

    let per_class = LossCase {
        n: 2,
        c: 2,
        logits: vec![1.0, 0.0, 0.0, 1.0],
        targets: RefTargets::Single(vec![0, 1]),
        adjustment: None,
        weighting: RefWeighting::PerClass(vec![2.0, 0.5]),
        reduction: LossReduction::WeightNormalized,
    };
    let out = run_fused(be, &per_class)?;
    assert_close(
        "hand per-class loss",
        &out.loss,
        &[0.6265233750364456, 0.1566308437591114],
        1e-7,
        1e-6,
    )?;
    assert_close("hand per-class weight", &out.weight, &[2.0, 0.5], 0.0, 0.0)?;
    assert_close(
        "hand per-class dlogits",
        &out.dlogits,
        &[
            -0.2151531370959961,
            0.2151531370959961,
            0.053788284273999024,
            -0.053788284273999024,
        ],
        1e-7,
        1e-6,
    )
}

/// Focal/SLA with mixed targets, labels out of range and buffers of the wrong length are errors.
pub fn errors<B: UnfusedLoss>(be: &B) -> Result<()> {
    let base = LossCase {
        n: 2,
        c: 3,
        logits: vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        targets: RefTargets::Mixed {
            a: vec![0, 1],
            b: vec![2, 0],
            lambda: 0.5,
        },
        adjustment: None,
        weighting: RefWeighting::Focal { gamma: 2.0 },
        reduction: LossReduction::Mean,
    };
    expect_err("focal with mixed targets", run_fused(be, &base))?;
    let sla = RefWeighting::Sla {
        cos_y: vec![0.0; 2],
        cos_star: vec![0.0; 3],
        gamma: 1.0,
        tau: 1.0,
    };
    expect_err(
        "SLA with mixed targets",
        run_fused(
            be,
            &LossCase {
                weighting: sla.clone(),
                ..base.clone()
            },
        ),
    )?;
    let single = LossCase {
        targets: RefTargets::Single(vec![0, 3]),
        weighting: RefWeighting::Unit,
        ..base.clone()
    };
    expect_err("a label equal to the class count", run_fused(be, &single))?;
    let mixed_b = LossCase {
        targets: RefTargets::Mixed {
            a: vec![0, 1],
            b: vec![7, 0],
            lambda: 0.5,
        },
        weighting: RefWeighting::Unit,
        ..base.clone()
    };
    expect_err("a mixed label b out of range", run_fused(be, &mixed_b))?;
    let ok = LossCase {
        targets: RefTargets::Single(vec![0, 2]),
        weighting: RefWeighting::Unit,
        ..base.clone()
    };
    run_fused(be, &ok)?;
    expect_err(
        "short class weights",
        run_fused(
            be,
            &LossCase {
                weighting: RefWeighting::PerClass(vec![1.0; 2]),
                ..ok.clone()
            },
        ),
    )?;
    expect_err(
        "short adjustment",
        run_fused(
            be,
            &LossCase {
                adjustment: Some(vec![0.0; 2]),
                ..ok.clone()
            },
        ),
    )?;
    let short_cos = RefWeighting::Sla {
        cos_y: vec![0.0; 1],
        cos_star: vec![0.0; 3],
        gamma: 1.0,
        tau: 1.0,
    };
    expect_err(
        "short cos_y",
        run_fused(
            be,
            &LossCase {
                weighting: short_cos,
                ..ok.clone()
            },
        ),
    )?;
    expect_err(
        "short labels",
        run_fused(
            be,
            &LossCase {
                targets: RefTargets::Single(vec![0]),
                ..ok
            },
        ),
    )?;
    Ok(())
}

/// The composition `add_row_bias` → `log_softmax_rows` / `softmax_rows` → `gather_rows`, with the
/// weighting, reduction and gradient formed on the host from those outputs, agrees with `fused_loss`
/// (atol 1e-5 + rtol 1e-4: the host path rounds through f32 intermediates).
pub fn unfused_matches_fused<B: UnfusedLoss>(be: &B) -> Result<()> {
    for case in cases(30) {
        let what = format!("unfused vs {}", describe(&case));
        let (n, c) = (case.n, case.c);
        let fused = run_fused(be, &case)?;
        let logits = up(be, &case.logits)?;
        let z = match &case.adjustment {
            Some(adj) => be.add_row_bias(&logits, &up64(be, adj)?, RowDims { n, c })?,
            None => be.scale(&logits, 1.0)?,
        };
        let log_p = be.log_softmax_rows(&z, RowDims { n, c })?;
        let s = f64s(&down(be, &be.softmax_rows(&z, RowDims { n, c })?)?);
        let gather = |y: &[u32]| -> Result<Vec<f64>> {
            Ok(f64s(&down(
                be,
                &be.gather_rows(&log_p, &be.upload_index(y)?, RowDims { n, c })?,
            )?)
            .iter()
            .map(|v| -v)
            .collect())
        };
        let (ya, mix) = match &case.targets {
            RefTargets::Single(y) => (y.clone(), None),
            RefTargets::Mixed { a, b, lambda } => {
                (a.clone(), Some((b.clone(), gather(b)?, *lambda)))
            }
        };
        let ce_a = gather(&ya)?;
        let mut loss = vec![0.0; n];
        let mut prob = vec![0.0; n];
        let mut weight = vec![0.0; n];
        let mut grad = vec![0.0; n * c];
        for i in 0..n {
            let p = (-ce_a[i]).exp();
            let q = 1.0 - p;
            let a = ya[i] as usize;
            let row = &mut grad[i * c..(i + 1) * c];
            let class_weight = |k: usize| match &case.weighting {
                RefWeighting::PerClass(cw) => cw[k],
                _ => 1.0,
            };
            // (w, scale of s - e_a) per weighting, single targets.
            let (w, modulation) = match &case.weighting {
                RefWeighting::Unit | RefWeighting::PerClass(_) => {
                    (class_weight(a), class_weight(a))
                }
                RefWeighting::Focal { gamma } => {
                    let w = q.powf(*gamma);
                    (w, w + gamma * q.powf(gamma - 1.0) * p * ce_a[i])
                }
                RefWeighting::Sla {
                    cos_y,
                    cos_star,
                    gamma,
                    tau,
                } => {
                    let w = q.powf(*gamma) * (tau * cos_star[a] - tau * cos_y[i]).exp();
                    (w, w)
                }
            };
            match &mix {
                None => {
                    for (j, gj) in row.iter_mut().enumerate() {
                        *gj = modulation * (s[i * c + j] - if j == a { 1.0 } else { 0.0 });
                    }
                    loss[i] = w * ce_a[i];
                    weight[i] = w;
                }
                Some((yb, ce_b, lambda)) => {
                    let b = yb[i] as usize;
                    let (wa, wb) = (lambda * class_weight(a), (1.0 - lambda) * class_weight(b));
                    for (j, gj) in row.iter_mut().enumerate() {
                        *gj = (wa + wb) * s[i * c + j];
                    }
                    row[a] -= wa;
                    row[b] -= wb;
                    loss[i] = wa * ce_a[i] + wb * ce_b[i];
                    weight[i] = wa + wb;
                }
            }
            prob[i] = p;
        }
        let denominator = match case.reduction {
            LossReduction::Mean => n as f64,
            LossReduction::WeightNormalized => weight.iter().sum(),
        };
        ensure!(
            denominator > 0.0,
            "{what}: test setup has a zero denominator"
        );
        let grad: Vec<f64> = grad.iter().map(|v| v / denominator).collect();
        assert_close(&format!("{what}: loss"), &fused.loss, &loss, 1e-5, 1e-4)?;
        assert_close(&format!("{what}: prob"), &fused.prob, &prob, 1e-5, 1e-4)?;
        assert_close(
            &format!("{what}: weight"),
            &fused.weight,
            &weight,
            1e-5,
            1e-4,
        )?;
        assert_close(
            &format!("{what}: dlogits"),
            &fused.dlogits,
            &grad,
            1e-5,
            1e-4,
        )?;
    }
    Ok(())
}
