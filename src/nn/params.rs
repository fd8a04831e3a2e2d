//! The model's parameters in three flat buffers (values, gradients, SGD momentum), in
//! `model.parameters()` order, each parameter a view of its part: one launch updates them all, while
//! layers, checkpoints and state dicts still see one tensor per PyTorch name and layout.

use super::Param;
use crate::backend::{Backend, SgdConfig};
use anyhow::{bail, Result};

pub struct ParamStore<B: Backend> {
    /// `[len]` each.
    values: B::Buf,
    grads: B::Buf,
    /// Created (zero) by the first step or a resumed checkpoint, as PyTorch's momentum buffers.
    velocity: Option<B::Buf>,
    len: usize,
}

impl<B: Backend> ParamStore<B> {
    /// Moves the values of `params` into one flat buffer and points each parameter's value and
    /// gradient at its part of the flat value and gradient buffers.
    pub fn gather(be: &B, params: Vec<&mut Param<B>>) -> Result<Self> {
        let len = params.iter().map(|p| p.numel()).sum();
        let mut values = be.zeros(len)?;
        let grads = be.zeros(len)?;
        let mut offset = 0;
        for p in params {
            let n = p.numel();
            be.copy_range(&p.value, 0, &mut values, offset, n)?;
            p.value = be.view(&values, offset, n)?;
            p.grad = Some(be.view(&grads, offset, n)?);
            p.fresh_grad = false;
            offset += n;
        }
        Ok(Self {
            values,
            grads,
            velocity: None,
            len,
        })
    }

    /// A view of gradients `offset..offset + len` (a bucket all-reduced across ranks).
    pub fn grads_view(&self, be: &B, offset: usize, len: usize) -> Result<B::Buf> {
        be.view(&self.grads, offset, len)
    }

    /// Creates the momentum buffer (zero) unless it exists, each parameter's velocity a view of it.
    /// `params` are the ones [`ParamStore::gather`] took, in the same order.
    pub fn ensure_velocity(&mut self, be: &B, params: &mut [&mut Param<B>]) -> Result<()> {
        if self.velocity.is_some() {
            return Ok(());
        }
        let velocity = be.zeros(self.len)?;
        let mut offset = 0;
        for p in params.iter_mut() {
            let n = p.numel();
            p.velocity = Some(be.view(&velocity, offset, n)?);
            offset += n;
        }
        self.velocity = Some(velocity);
        Ok(())
    }

    /// One SGD step over every parameter with the gradients of the last backward: one launch when
    /// every parameter has the same weight-decay flag, else one per run of parameters sharing one.
    pub fn sgd_step(
        &mut self,
        be: &B,
        mut params: Vec<&mut Param<B>>,
        lr: &B::Buf,
        cfg: SgdConfig,
    ) -> Result<()> {
        if let Some(p) = params.iter().find(|p| !p.fresh_grad) {
            bail!(
                "parameter {} has no gradient: backward did not reach it",
                p.name
            );
        }
        self.ensure_velocity(be, &mut params)?;
        let velocity = self.velocity.as_mut().expect("created above");
        // (offset, len, decay) of each run of parameters with one decay flag.
        let mut runs: Vec<(usize, usize, bool)> = Vec::new();
        let mut offset = 0;
        for p in &params {
            match runs.last_mut() {
                Some(run) if run.2 == p.decay => run.1 += p.numel(),
                _ => runs.push((offset, p.numel(), p.decay)),
            }
            offset += p.numel();
        }
        let with_decay = |decay: bool| SgdConfig {
            weight_decay: if decay { cfg.weight_decay } else { 0.0 },
            ..cfg
        };
        match runs.as_slice() {
            [] => {}
            &[(_, _, decay)] => be.sgd_step(
                &mut self.values,
                &self.grads,
                velocity,
                lr,
                with_decay(decay),
            )?,
            runs => {
                for &(offset, len, decay) in runs {
                    let mut value = be.view(&self.values, offset, len)?;
                    let grad = be.view(&self.grads, offset, len)?;
                    let mut v = be.view(velocity, offset, len)?;
                    be.sgd_step(&mut value, &grad, &mut v, lr, with_decay(decay))?;
                }
            }
        }
        for p in params {
            p.fresh_grad = false;
        }
        Ok(())
    }
}
