//! SGD step (kernels/optim.cu).

use anyhow::Result;

use super::{check_len, kernels, to_u32, CudaBackend, CudaBuf};
use crate::backend::SgdConfig;

impl CudaBackend {
    pub(super) fn sgd_step_impl(
        &self,
        param: &mut CudaBuf,
        grad: &CudaBuf,
        velocity: &mut CudaBuf,
        cfg: SgdConfig,
    ) -> Result<()> {
        const OP: &str = "sgd_step";
        check_len(OP, "grad", grad.len(), param.len())?;
        check_len(OP, "velocity", velocity.len(), param.len())?;
        let n = to_u32(OP, "length", param.len())?;
        if let Some(launch) = self.elementwise(param.len()) {
            kernels::sgd_step(
                self.rt(),
                launch,
                param,
                grad,
                velocity,
                cfg.lr,
                cfg.momentum,
                cfg.weight_decay,
                i32::from(cfg.nesterov),
                n,
            )?;
        }
        Ok(())
    }
}
