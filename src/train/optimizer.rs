//! SGD over every parameter of the model: one step over its flat parameter store.

use crate::backend::{Backend, SgdConfig};
use crate::model::MultiExpertNet;
use anyhow::Result;

/// One SGD step with the gradients of the last backward at learning rate `lr` (`[1]` on the device);
/// creates the momentum buffer on first use.
pub fn sgd_update<B: Backend>(
    be: &B,
    model: &mut MultiExpertNet<B>,
    lr: &B::Buf,
    cfg: SgdConfig,
) -> Result<()> {
    let (params, store) = model.params_and_store_mut();
    store.sgd_step(be, params, lr, cfg)
}
