//! 2-D batch normalisation with PyTorch semantics and state-dict names.

use super::{check_len, Counter, Module, Nchw, Param, RunningStat, StateMut, StateRef};
use crate::backend::{Backend, BatchNormAffine, BatchNormConfig};
use anyhow::{Context, Result};

/// Batch norm over `[n, c, h, w]`: weight 1, bias 0, running mean 0, running variance 1.
pub struct BatchNorm2d<B: Backend> {
    pub weight: Param<B>,
    pub bias: Param<B>,
    pub running_mean: RunningStat<B>,
    pub running_var: RunningStat<B>,
    pub num_batches_tracked: Counter,
    pub cfg: BatchNormConfig,
    pub channels: usize,
    /// `(mean [c], inv_std [c])` of the last training forward, consumed by `backward`.
    saved: Option<(B::Buf, B::Buf)>,
}

impl<B: Backend> BatchNorm2d<B> {
    /// `name` is the module's state-dict prefix (`shared.bn1`).
    pub fn new(be: &B, name: &str, channels: usize) -> Result<Self> {
        let ones = vec![1.0f32; channels];
        let param =
            |suffix: &str, value| Param::new(format!("{name}.{suffix}"), vec![channels], value);
        let stat = |suffix: &str, value| RunningStat {
            name: format!("{name}.{suffix}"),
            shape: vec![channels],
            value,
        };
        Ok(Self {
            weight: param("weight", be.upload(&ones)?),
            bias: param("bias", be.zeros(channels)?),
            running_mean: stat("running_mean", be.zeros(channels)?),
            running_var: stat("running_var", be.upload(&ones)?),
            num_batches_tracked: Counter {
                name: format!("{name}.num_batches_tracked"),
                value: 0,
            },
            cfg: BatchNormConfig::default(),
            channels,
            saved: None,
        })
    }

    fn affine(&self) -> BatchNormAffine<'_, B> {
        BatchNormAffine {
            gamma: &self.weight.value,
            beta: &self.bias.value,
        }
    }

    /// Normalises with the batch statistics, updates the running statistics and saves the
    /// batch statistics for `backward`.
    pub fn forward_train(&mut self, be: &B, x: &B::Buf, s: Nchw) -> Result<B::Buf> {
        check_len(be, x, s.len(), &self.weight.name)?;
        let affine = BatchNormAffine {
            gamma: &self.weight.value,
            beta: &self.bias.value,
        };
        let (y, mean, inv_std) = be.batch_norm_train_forward(
            x,
            affine,
            &mut self.running_mean.value,
            &mut self.running_var.value,
            s.channel_dims(),
            self.cfg,
        )?;
        self.num_batches_tracked.value += 1;
        self.saved = Some((mean, inv_std));
        Ok(y)
    }

    /// Normalises with the running statistics.
    pub fn forward_eval(&self, be: &B, x: &B::Buf, s: Nchw) -> Result<B::Buf> {
        check_len(be, x, s.len(), &self.weight.name)?;
        be.batch_norm_eval_forward(
            x,
            self.affine(),
            &self.running_mean.value,
            &self.running_var.value,
            s.channel_dims(),
            self.cfg,
        )
    }

    /// Stores the weight and bias gradients and returns `dx`; `x` is the forward input.
    pub fn backward(&mut self, be: &B, dy: &B::Buf, x: &B::Buf, s: Nchw) -> Result<B::Buf> {
        let (mean, inv_std) = self.saved.take().with_context(|| {
            format!("{}: backward without a training forward", self.weight.name)
        })?;
        let (dx, dgamma, dbeta) =
            be.batch_norm_backward(dy, x, &self.weight.value, &mean, &inv_std, s.channel_dims())?;
        self.weight.grad = Some(dgamma);
        self.bias.grad = Some(dbeta);
        Ok(dx)
    }
}

impl<B: Backend> Module<B> for BatchNorm2d<B> {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(StateRef<'a, B>)) {
        f(StateRef::Param(&self.weight));
        f(StateRef::Param(&self.bias));
        f(StateRef::Running(&self.running_mean));
        f(StateRef::Running(&self.running_var));
        f(StateRef::Counter(&self.num_batches_tracked));
    }
    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(StateMut<'a, B>)) {
        f(StateMut::Param(&mut self.weight));
        f(StateMut::Param(&mut self.bias));
        f(StateMut::Running(&mut self.running_mean));
        f(StateMut::Running(&mut self.running_var));
        f(StateMut::Counter(&mut self.num_batches_tracked));
    }
}
