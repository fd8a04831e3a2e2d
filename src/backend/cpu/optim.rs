//! SGD with momentum (PyTorch semantics, dampening 0).

use anyhow::Result;
use rayon::prelude::*;

use super::check_len;
use crate::backend::SgdConfig;

/// `g = grad + wd * p; v = momentum * v + g; step = nesterov ? g + momentum * v : v; p -= lr * step`.
pub(super) fn sgd_step(
    param: &mut [f32],
    grad: &[f32],
    velocity: &mut [f32],
    cfg: SgdConfig,
) -> Result<()> {
    const OP: &str = "sgd_step";
    check_len(OP, "grad", grad.len(), param.len())?;
    check_len(OP, "velocity", velocity.len(), param.len())?;
    let SgdConfig {
        lr,
        momentum,
        weight_decay,
        nesterov,
    } = cfg;
    param
        .par_iter_mut()
        .with_min_len(1 << 14)
        .zip(grad.par_iter().zip(velocity.par_iter_mut()))
        .for_each(|(p, (&g, v))| {
            let g = g + weight_decay * *p;
            *v = momentum * *v + g;
            let step = if nesterov { g + momentum * *v } else { *v };
            *p -= lr * step;
        });
    Ok(())
}
