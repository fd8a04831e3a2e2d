//! Every error a kernel can raise (`abi::KERNEL_ERRORS`), provoked by one bad entry: the message
//! names the op, the argument, the position and the offending value, and reads the same on every
//! backend (the CPU backend checks on the host, the CUDA kernels record the error on the device).

use anyhow::{bail, ensure, Result};
use ltrain::augment::Level;
use ltrain::backend::abi::KERNEL_ERRORS;
use ltrain::backend::augment_params::{self, PARAM_WORDS};
use ltrain::backend::UnfusedLoss;
use ltrain::backend::{AugmentSpec, Backend, LossArgs, LossReduction, LossTargets, LossWeighting};
use ltrain::backend::{CosineDims, RowDims, SampleDims};

use super::up;

/// `op` must fail with a message containing `want`; on a GPU the error may surface only at the next
/// synchronisation, so that counts too.
fn expect_message<B: UnfusedLoss, T>(be: &B, op: Result<T>, want: &str) -> Result<()> {
    let outcome = op.and_then(|_| be.synchronize());
    match outcome {
        Ok(()) => bail!("expected the error {want:?}, got Ok"),
        Err(e) => {
            let got = format!("{e:#}");
            ensure!(got.contains(want), "got {got:?}, expected {want:?} in it");
            Ok(())
        }
    }
}

fn loss_args<'a, B: Backend>(logits: &'a B::Buf, targets: LossTargets<'a, B>) -> LossArgs<'a, B> {
    LossArgs {
        logits,
        n: 3,
        c: 4,
        targets,
        adjustment: None,
        weighting: LossWeighting::Unit,
        reduction: LossReduction::Mean,
    }
}

pub fn kernel_errors<B: UnfusedLoss>(be: &B) -> Result<()> {
    let mut covered = Vec::new();
    let mut case = |name: &'static str, outcome: Result<()>| -> Result<()> {
        covered.push(name);
        outcome.map_err(|e| e.context(name))
    };

    // fused_loss: [3, 4] logits.
    let logits = up(be, &[0.5; 12])?;
    let bad = be.upload_index(&[0, 7, 1])?;
    case(
        "ERR_LOSS_TARGET",
        expect_message(
            be,
            be.fused_loss(loss_args(&logits, LossTargets::Single(&bad))),
            "fused_loss: `targets`[1] = 7 is out of range (must be < 4)",
        ),
    )?;
    let good = be.upload_index(&[0, 1, 2])?;
    let bad_b = be.upload_index(&[3, 0, 9])?;
    let lambda = be.upload(&[0.3])?;
    let mixed = LossTargets::Mixed {
        a: &good,
        b: &bad_b,
        lambda: &lambda,
    };
    case(
        "ERR_LOSS_TARGET_B",
        expect_message(
            be,
            be.fused_loss(loss_args(&logits, mixed)),
            "fused_loss: `mixed targets b`[2] = 9 is out of range (must be < 4)",
        ),
    )?;

    // row_cosine: features [2, 3], classifier [4, 3].
    let features = up(be, &[1.0, 2.0, 3.0, -1.0, 0.5, 2.0])?;
    let classifier = up(be, &[0.25; 12])?;
    case(
        "ERR_COSINE_LABEL",
        expect_message(
            be,
            be.row_cosine(
                &features,
                &classifier,
                &be.upload_index(&[5, 0])?,
                CosineDims { n: 2, d: 3, c: 4 },
            ),
            "row_cosine: `labels`[0] = 5 is out of range (must be < 4)",
        ),
    )?;

    // cosmax_update: logits [2, 4], tables [4].
    let mut table_logit = up(be, &[f32::NEG_INFINITY; 4])?;
    let mut table_cos = be.zeros(4)?;
    case(
        "ERR_COSMAX_LABEL",
        expect_message(
            be,
            be.cosmax_update(
                &up(be, &[0.1; 8])?,
                &up(be, &[0.5, 0.25])?,
                &be.upload_index(&[1, 6])?,
                RowDims { n: 2, c: 4 },
                &mut table_logit,
                &mut table_cos,
            ),
            "cosmax_update: `labels`[1] = 6 is out of range (must be < 4)",
        ),
    )?;

    // mixup: x [3, 2].
    case(
        "ERR_MIXUP_PERM",
        expect_message(
            be,
            be.mixup(
                &up(be, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])?,
                &be.upload_index(&[0, 3, 1])?,
                &be.upload(&[0.4])?,
                SampleDims {
                    n: 3,
                    per_sample: 2,
                },
            ),
            "mixup: `perm`[1] = 3 is out of range (must be < 3)",
        ),
    )?;

    // augment_batch: two 4x4 images.
    let (h, w) = (4, 4);
    let images = be.upload_bytes(&(0..2 * 3 * h * w).map(|v| v as u8).collect::<Vec<_>>())?;
    let spec = AugmentSpec {
        h,
        w,
        drawn: true,
        mean: [0.5; 3],
        std: [0.25; 3],
    };
    let params = augment_params::draw_batch(&[0, 1], Level::Weak, h, w, 0, 0)?;
    case(
        "ERR_AUGMENT_INDEX",
        expect_message(
            be,
            be.augment_batch(&images, &be.upload_index(&[0, 5])?, &up(be, &params)?, spec),
            "augment_batch: `indices`[1] = 5 is out of range (must be < 2)",
        ),
    )?;
    let mut malformed = params[..PARAM_WORDS].to_vec();
    malformed[0] = 7.0; // no such geometry
    case(
        "ERR_AUGMENT_PARAMS",
        expect_message(
            be,
            be.augment_batch(&images, &be.upload_index(&[1])?, &up(be, &malformed)?, spec),
            "augment_batch: `params` row 0 is malformed: word 0 = 7",
        ),
    )?;

    // The unfused loss composition: rows [2, 3].
    case(
        "ERR_GATHER_INDEX",
        expect_message(
            be,
            be.gather_rows(
                &up(be, &[0.0; 6])?,
                &be.upload_index(&[2, 3])?,
                RowDims { n: 2, c: 3 },
            ),
            "gather_rows: `idx`[1] = 3 is out of range (must be < 3)",
        ),
    )?;
    case(
        "ERR_SLA_WEIGHTS_LABEL",
        expect_message(
            be,
            be.sla_weights(
                &up(be, &[0.5, 0.5])?,
                &up(be, &[0.1, 0.2])?,
                &up(be, &[0.3; 3])?,
                &be.upload_index(&[0, 4])?,
                1.0,
                1.0,
            ),
            "sla_weights: `labels`[1] = 4 is out of range (must be < 3)",
        ),
    )?;
    case(
        "ERR_XENT_LABEL",
        expect_message(
            be,
            be.softmax_xent_backward(
                &up(be, &[0.2; 6])?,
                &be.upload_index(&[3, 0])?,
                &up(be, &[1.0, 1.0])?,
                RowDims { n: 2, c: 3 },
            ),
            "softmax_xent_backward: `labels`[0] = 3 is out of range (must be < 3)",
        ),
    )?;

    for e in KERNEL_ERRORS {
        ensure!(
            covered.contains(&e.name),
            "{} ({}) has no case here",
            e.name,
            e.op
        );
    }
    Ok(())
}
