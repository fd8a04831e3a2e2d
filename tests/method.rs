//! The method layer over the CPU backend: the SLA table's refresh rules, SLA weights against
//! paper Eq. 12 computed by hand, and the unfused composition against the fused op.

use ltrain::backend::cpu::CpuBackend;
use ltrain::backend::RowDims;
use ltrain::backend::UnfusedLoss;
use ltrain::backend::{Backend, LossReduction, LossTargets};
use ltrain::config::{LossKind, SlaTableRule, TrainConfig};
use ltrain::method::{expert_loss, unfused_loss, EpochPlan, ExpertLossInputs, SlaTable};

fn be() -> CpuBackend {
    CpuBackend::new(Some(1)).unwrap()
}

#[test]
fn epoch_rule_uses_last_epochs_table_and_swaps_at_the_end() {
    let be = be();
    let mut table = SlaTable::new(&be, 3, SlaTableRule::Epoch).unwrap();
    let labels = be.upload_index(&[0, 0, 1]).unwrap();
    // true-class logits: sample0 f_0 = 2.0, sample1 f_0 = 3.0 (wins class 0), sample2 f_1 = 1.0
    let logits = be
        .upload(&[2.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 1.0, 0.0])
        .unwrap();
    let cos = be.upload(&[0.1, 0.7, -0.2]).unwrap();
    table.observe(&be, &logits, &cos, &labels, 3).unwrap();
    // Still the empty table for this epoch's weights.
    assert_eq!(be.download(table.cos_star()).unwrap(), [0.0, 0.0, 0.0]);
    table.end_epoch(&be).unwrap();
    let (l, c) = table.current(&be).unwrap();
    assert_eq!(l[..2], [3.0, 1.0]);
    assert_eq!(l[2], f32::NEG_INFINITY); // class 2 unseen
    assert_eq!(c, [0.7, -0.2, 0.0]);
    // The next epoch accumulates from scratch: a lower logit now wins class 0.
    let logits2 = be.upload(&[1.5, 0.0, 0.0]).unwrap();
    let cos2 = be.upload(&[0.3]).unwrap();
    let labels2 = be.upload_index(&[0]).unwrap();
    table.observe(&be, &logits2, &cos2, &labels2, 1).unwrap();
    assert_eq!(be.download(table.cos_star()).unwrap(), [0.7, -0.2, 0.0]);
    table.end_epoch(&be).unwrap();
    assert_eq!(table.current(&be).unwrap().1, [0.3, 0.0, 0.0]);
}

#[test]
fn running_rule_updates_in_place_and_only_upwards() {
    let be = be();
    let mut table = SlaTable::new(&be, 2, SlaTableRule::Running).unwrap();
    let labels = be.upload_index(&[1]).unwrap();
    let step = |table: &mut SlaTable<CpuBackend>, logit: f32, cos: f32| {
        let l = be.upload(&[0.0, logit]).unwrap();
        let c = be.upload(&[cos]).unwrap();
        table.observe(&be, &l, &c, &labels, 1).unwrap();
    };
    step(&mut table, 2.0, 0.5);
    assert_eq!(be.download(table.cos_star()).unwrap(), [0.0, 0.5]);
    step(&mut table, 1.0, 0.9); // lower logit: no change
    assert_eq!(be.download(table.cos_star()).unwrap(), [0.0, 0.5]);
    step(&mut table, 4.0, -0.1);
    assert_eq!(be.download(table.cos_star()).unwrap(), [0.0, -0.1]);
}

/// Eq. 9-12 by hand for two samples, 2 classes, d = 2, gamma = 2, tau = 0.5, no adjustment (equal prior).
#[test]
fn sla_weights_match_the_paper_formula_by_hand() {
    let be = be();
    let cfg = TrainConfig {
        loss: LossKind::LaSla,
        stage2_epoch: Some(0),
        gamma: 2.0,
        tau: 0.5,
        ..TrainConfig::default()
    };
    let plan = EpochPlan::for_epoch(&cfg, 0);
    // classifier rows W_0 = (1, 0), W_1 = (0, 2); features z_0 = (3, 4), z_1 = (1, 1)
    let w = [1.0f32, 0.0, 0.0, 2.0];
    let z = [3.0f32, 4.0, 1.0, 1.0];
    let logits = [3.0f32, 8.0, 1.0, 2.0]; // z · W^T
    let labels = [0u32, 1];
    let mut table = SlaTable::new(&be, 2, SlaTableRule::Epoch).unwrap();
    // S from a previous pass: cos* = 0.9 for class 0, 0.8 for class 1.
    let inf = f32::NEG_INFINITY;
    table
        .restore(&be, (&[5.0, 5.0], &[0.9, 0.8]), (&[inf, inf], &[0.0, 0.0]))
        .unwrap();
    let (wb, zb, lb) = (
        be.upload(&w).unwrap(),
        be.upload(&z).unwrap(),
        be.upload(&logits).unwrap(),
    );
    let yb = be.upload_index(&labels).unwrap();
    let adjustment = be.upload(&[0.0, 0.0]).unwrap();
    let out = expert_loss(
        &be,
        &plan,
        ExpertLossInputs {
            logits: &lb,
            features: &zb,
            classifier: &wb,
            n: 2,
            c: 2,
            d: 2,
            targets: LossTargets::Single(&yb),
            adjustment: &adjustment,
            class_weights: None,
            gamma: 2.0,
            tau: 0.5,
            reduction: LossReduction::Mean,
        },
        Some(&mut table),
    )
    .unwrap();
    // sample 0: p = e^3/(e^3+e^8), cos_y = 3/5; sample 1: p = e^2/(e^1+e^2), cos_y = 2/(sqrt2*2) = 1/sqrt2
    let p0 = 3f64.exp() / (3f64.exp() + 8f64.exp());
    let p1 = 2f64.exp() / (1f64.exp() + 2f64.exp());
    let w0 = (1.0 - p0).powi(2) * (0.5 * 0.9 - 0.5 * 0.6f64).exp();
    let w1 = (1.0 - p1).powi(2) * (0.5 * 0.8 - 0.5 * (0.5f64).sqrt()).exp();
    let weight = be.download(&out.weight).unwrap();
    assert!((weight[0] as f64 - w0).abs() < 1e-5, "{weight:?} vs {w0}");
    assert!((weight[1] as f64 - w1).abs() < 1e-5, "{weight:?} vs {w1}");
    let loss = be.download(&out.loss).unwrap();
    assert!((loss[0] as f64 - w0 * -p0.ln()).abs() < 1e-4);
    assert!((loss[1] as f64 - w1 * -p1.ln()).abs() < 1e-5);
    // The batch went into next epoch's table, not the current one.
    assert_eq!(table.current(&be).unwrap().1, [0.9, 0.8]);
    let (pl, pc) = table.pending(&be).unwrap();
    assert_eq!(pl, [3.0, 2.0]);
    assert!((pc[0] - 0.6).abs() < 1e-6 && (pc[1] - 0.5f32.sqrt()).abs() < 1e-6);
}

#[test]
fn unfused_composition_agrees_with_the_fused_op() {
    unfused_agrees_with_fused(&be());
}

/// The same on the emulated CUDA backend: its unfused ops are kernels too.
#[test]
fn unfused_composition_agrees_with_the_fused_op_on_emulated_cuda() {
    unfused_agrees_with_fused(&ltrain::backend::cuda::CudaBackend::new_emulated().unwrap());
}

fn unfused_agrees_with_fused<B: UnfusedLoss>(be: &B) {
    let (n, c) = (5, 4);
    let logits: Vec<f32> = (0..n * c)
        .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.4)
        .collect();
    let labels: Vec<u32> = vec![0, 3, 1, 1, 2];
    let adj = [-0.2f32, -1.0, -2.0, -3.5];
    let cos_y = [0.1f32, -0.3, 0.8, 0.5, 0.0];
    let cos_star = [0.9f32, 0.7, 0.95, 0.6];
    let (l, y, a, cy, cs) = (
        be.upload(&logits).unwrap(),
        be.upload_index(&labels).unwrap(),
        be.upload(&adj).unwrap(),
        be.upload(&cos_y).unwrap(),
        be.upload(&cos_star).unwrap(),
    );
    for sla in [None, Some((&cy, &cs, 1.5f32, 0.8f32))] {
        let (loss_u, grad_u) = unfused_loss(be, &l, &y, &a, sla, RowDims { n, c }).unwrap();
        let weighting = match sla {
            None => ltrain::backend::LossWeighting::Unit,
            Some((cos_y, cos_star, gamma, tau)) => ltrain::backend::LossWeighting::Sla {
                cos_y,
                cos_star,
                gamma,
                tau,
            },
        };
        let fused = be
            .fused_loss(ltrain::backend::LossArgs {
                logits: &l,
                n,
                c,
                targets: LossTargets::Single(&y),
                adjustment: Some(&a),
                weighting,
                reduction: LossReduction::Mean,
            })
            .unwrap();
        for (u, f) in be
            .download(&loss_u)
            .unwrap()
            .iter()
            .zip(be.download(&fused.loss).unwrap())
        {
            assert!((u - f).abs() < 1e-5, "loss {u} vs {f}");
        }
        for (u, f) in be
            .download(&grad_u)
            .unwrap()
            .iter()
            .zip(be.download(&fused.dlogits).unwrap())
        {
            assert!((u - f).abs() < 1e-6, "grad {u} vs {f}");
        }
    }
}
