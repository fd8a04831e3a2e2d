//! SGD step (kernels/optim.cu).

use anyhow::Result;

use super::{kernels, to_u32, CudaBackend, CudaBuf};
use crate::backend::{OptimOps, SgdConfig};

impl OptimOps for CudaBackend {
    fn sgd_step_unchecked(
        &self,
        param: &mut CudaBuf,
        grad: &CudaBuf,
        velocity: &mut CudaBuf,
        lr: &CudaBuf,
        cfg: SgdConfig,
    ) -> Result<()> {
        let n = to_u32("sgd_step", "length", param.len())?;
        if let Some(launch) = self.elementwise(param.len()) {
            kernels::sgd_step(
                self.dev(),
                launch,
                param,
                grad,
                velocity,
                lr,
                cfg.momentum,
                cfg.weight_decay,
                i32::from(cfg.nesterov),
                n,
            )?;
        }
        Ok(())
    }
}
