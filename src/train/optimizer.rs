//! SGD over every parameter of the model (the backend does the arithmetic in place).

use crate::backend::{Backend, SgdConfig};
use crate::model::MultiExpertNet;
use anyhow::{Context, Result};

/// One SGD step with the gradients of the last backward; creates momentum buffers on first use.
pub fn sgd_update<B: Backend>(be: &B, model: &mut MultiExpertNet<B>, cfg: SgdConfig) -> Result<()> {
    for p in model.params_mut() {
        let grad = p.grad.as_ref().with_context(|| {
            format!(
                "parameter {} has no gradient: backward did not reach it",
                p.name
            )
        })?;
        if p.velocity.is_none() {
            p.velocity = Some(be.zeros(p.numel())?);
        }
        let velocity = p.velocity.as_mut().expect("created above");
        let step = SgdConfig {
            weight_decay: if p.decay { cfg.weight_decay } else { 0.0 },
            ..cfg
        };
        be.sgd_step(&mut p.value, grad, velocity, step)?;
    }
    Ok(())
}
