//! 2-D batch normalisation with PyTorch semantics and state-dict names.

use super::{check_len, Conv2d, Counter, Module, Nchw, Param, RunningStat, StateMut, StateRef};
use crate::backend::{
    Backend, BatchNormAct, BatchNormAffine, BatchNormBackwardAct, BatchNormBackwardInputs,
    BatchNormConfig, BatchNormRunning, BatchNormStats, BatchNormTrain, ParamGrads,
};
use anyhow::{ensure, Context, Result};

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

    /// (The training forward borrows the running statistics mutably beside these.)
    fn affine(&self) -> BatchNormAffine<'_, B> {
        BatchNormAffine {
            gamma: &self.weight.value,
            beta: &self.bias.value,
        }
    }

    /// `conv` of `x [s]`, then this batch norm in training mode with what follows fused in:
    /// `y = relu(bn(z) + residual)` (ReLU when `relu`), the batch statistics computed by the
    /// convolution's own pass. Updates the running statistics and saves the batch statistics for
    /// `backward`; returns `(z, y, shape of z and y)` (`z` is the backward's `x`).
    pub fn forward_train_after(
        &mut self,
        be: &B,
        conv: &Conv2d<B>,
        x: &B::Buf,
        s: Nchw,
        residual: Option<&B::Buf>,
        relu: bool,
    ) -> Result<(B::Buf, B::Buf, Nchw)> {
        let out = conv.out_shape(s);
        ensure!(
            out.c == self.channels,
            "{}: follows a convolution of {} channels, has {}",
            self.weight.name,
            out.c,
            self.channels
        );
        let bn = BatchNormTrain {
            affine: BatchNormAffine {
                gamma: &self.weight.value,
                beta: &self.bias.value,
            },
            running: BatchNormRunning {
                mean: &mut self.running_mean.value,
                var: &mut self.running_var.value,
            },
            cfg: self.cfg,
        };
        let act = BatchNormAct { residual, relu };
        let r = be.conv2d_batch_norm_train(x, &conv.weight.value, conv.dims(s), bn, act)?;
        self.num_batches_tracked.value += 1;
        self.saved = Some((r.saved_mean, r.saved_inv_std));
        Ok((r.z, r.y, out))
    }

    /// Normalises with the running statistics.
    pub fn forward_eval(&self, be: &B, x: &B::Buf, s: Nchw) -> Result<B::Buf> {
        self.forward_eval_act(be, x, s, None, false)
    }

    /// [`forward_eval`](Self::forward_eval) with what follows fused in, as in
    /// [`forward_train_act`](Self::forward_train_act).
    pub fn forward_eval_act(
        &self,
        be: &B,
        x: &B::Buf,
        s: Nchw,
        residual: Option<&B::Buf>,
        relu: bool,
    ) -> Result<B::Buf> {
        check_len(be, x, s.len(), &self.weight.name)?;
        let affine = self.affine();
        let running = BatchNormStats {
            mean: &self.running_mean.value,
            var: &self.running_var.value,
        };
        let act = BatchNormAct { residual, relu };
        be.batch_norm_eval_forward_act(x, affine, running, s.channel_dims(), self.cfg, act)
    }

    /// Stores the weight and bias gradients and returns `dx`; `x` is the forward input.
    pub fn backward(&mut self, be: &B, dy: &B::Buf, x: &B::Buf, s: Nchw) -> Result<B::Buf> {
        self.backward_act(be, dy, x, s, BatchNormBackwardAct::none())
    }

    /// Backward of [`forward_train_act`](Self::forward_train_act): with a ReLU, `act.relu_output`
    /// is its output, and `act.masked_dy` receives the gradient after the ReLU's mask (the
    /// residual's) when given. Returns `dx`.
    pub fn backward_act(
        &mut self,
        be: &B,
        dy: &B::Buf,
        x: &B::Buf,
        s: Nchw,
        act: BatchNormBackwardAct<'_, B>,
    ) -> Result<B::Buf> {
        let (mean, inv_std) = self.saved.take().with_context(|| {
            format!("{}: backward without a training forward", self.weight.name)
        })?;
        let saved = BatchNormStats {
            mean: &mean,
            var: &inv_std,
        };
        let (gamma, dgamma) = self.weight.value_and_grad_out(be)?;
        let inputs = BatchNormBackwardInputs {
            dy,
            x,
            gamma,
            saved,
        };
        let grads = ParamGrads {
            weight: dgamma,
            bias: self.bias.grad_out(be)?,
        };
        be.batch_norm_backward(inputs, s.channel_dims(), act, grads)
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
