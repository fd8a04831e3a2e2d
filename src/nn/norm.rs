//! 2-D batch normalisation with PyTorch semantics and state-dict names, per rank or synchronised
//! across the ranks of a data-parallel run (`--sync-bn`, PyTorch's `SyncBatchNorm`).

use super::{check_len, Conv2d, Counter, Module, Nchw, Param, RunningStat, StateMut, StateRef};
use crate::backend::{
    Backend, BatchNormAct, BatchNormAffine, BatchNormBackwardAct, BatchNormBackwardInputs,
    BatchNormConfig, BatchNormRunning, BatchNormStats, BatchNormTrain, ParamGrads,
};
use crate::dist::Collective;
use anyhow::{ensure, Context, Result};
use std::sync::Arc;

/// Batch norm over `[n, c, h, w]`: weight 1, bias 0, running mean 0, running variance 1.
pub struct BatchNorm2d<B: Backend> {
    pub weight: Param<B>,
    pub bias: Param<B>,
    pub running_mean: RunningStat<B>,
    pub running_var: RunningStat<B>,
    pub num_batches_tracked: Counter,
    pub cfg: BatchNormConfig,
    pub channels: usize,
    /// With it, training statistics are over every rank's batch (synchronised batch norm).
    pub sync: Option<Arc<dyn Collective<B>>>,
    /// `(mean [c], inv_std [c])` of the last training forward, consumed by `backward`, and the
    /// per-channel count behind them on this rank.
    saved: Option<(B::Buf, B::Buf, usize)>,
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
            sync: None,
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
        // Synchronised: the running statistics are updated below from the global ones.
        let before = match &self.sync {
            Some(_) => Some((
                be.download(&self.running_mean.value)?,
                be.download(&self.running_var.value)?,
            )),
            None => None,
        };
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
        let count = out.n * out.h * out.w;
        let (Some(sync), Some(before)) = (self.sync.clone(), before) else {
            self.saved = Some((r.saved_mean, r.saved_inv_std, count));
            return Ok((r.z, r.y, out));
        };
        let (mean, var, inv_std) = self.sync_forward(be, sync.as_ref(), &r, count, before)?;
        let y = be.batch_norm_eval_forward_act(
            &r.z,
            self.affine(),
            BatchNormStats {
                mean: &mean,
                var: &be.upload(&var)?,
            },
            out.channel_dims(),
            self.cfg,
            BatchNormAct { residual, relu },
        )?;
        self.saved = Some((mean, be.upload(&inv_std)?, count));
        Ok((r.z, y, out))
    }

    /// The global batch statistics from every rank's `(count, mean, biased variance)` (Chan's
    /// combination, in f64, in rank order), and the running statistics updated from them as one
    /// process with the whole batch would: returns `(mean [c], biased variance [c] and inv_std [c]
    /// on the host)`.
    fn sync_forward(
        &mut self,
        be: &B,
        sync: &dyn Collective<B>,
        local: &crate::backend::ConvBatchNormOut<B>,
        count: usize,
        (running_mean, running_var): (Vec<f32>, Vec<f32>),
    ) -> Result<(B::Buf, Vec<f32>, Vec<f32>)> {
        let (c, eps) = (self.channels, self.cfg.eps as f64);
        let mut mine = vec![count as f32];
        mine.extend(be.download(&local.saved_mean)?);
        mine.extend(
            be.download(&local.saved_inv_std)?
                .iter()
                .map(|&s| (1.0 / (s as f64 * s as f64) - eps).max(0.0) as f32),
        );
        let all = be.download(&sync.all_gather(be, &be.upload(&mine)?)?)?;
        let ranks: Vec<&[f32]> = all.chunks(2 * c + 1).collect();
        let total: f64 = ranks.iter().map(|r| r[0] as f64).sum();
        let mut mean = vec![0f32; c];
        let mut biased = vec![0f32; c];
        let mut inv_std = vec![0f32; c];
        let (mut new_mean, mut new_var) = (running_mean, running_var);
        let m = self.cfg.momentum as f64;
        for ch in 0..c {
            let mu = ranks
                .iter()
                .map(|r| r[0] as f64 * r[1 + ch] as f64)
                .sum::<f64>()
                / total;
            let m2: f64 = ranks
                .iter()
                .map(|r| {
                    let d = r[1 + ch] as f64 - mu;
                    r[0] as f64 * (r[1 + c + ch] as f64 + d * d)
                })
                .sum();
            let var = m2 / total;
            mean[ch] = mu as f32;
            biased[ch] = var as f32;
            inv_std[ch] = (1.0 / (var + eps).sqrt()) as f32;
            let unbiased = if total > 1.0 { m2 / (total - 1.0) } else { var };
            new_mean[ch] = ((1.0 - m) * new_mean[ch] as f64 + m * mu) as f32;
            new_var[ch] = ((1.0 - m) * new_var[ch] as f64 + m * unbiased) as f32;
        }
        be.write(&mut self.running_mean.value, &new_mean)?;
        be.write(&mut self.running_var.value, &new_var)?;
        Ok((be.upload(&mean)?, biased, inv_std))
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
        let (mean, inv_std, count) = self.saved.take().with_context(|| {
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
        let dx = be.batch_norm_backward(inputs, s.channel_dims(), act, grads)?;
        match self.sync.clone() {
            Some(sync) => self.sync_backward(be, sync.as_ref(), dx, x, s, (&mean, &inv_std, count)),
            None => Ok(dx),
        }
    }

    /// Corrects this rank's `dx` (formed with its own `sum dy`, `sum dy x_hat` over `count`) to the
    /// global sums over every rank's count. The difference is per channel affine in `x`,
    /// `p x + q`, applied as an evaluation-mode batch norm with zero mean and unit variance.
    fn sync_backward(
        &mut self,
        be: &B,
        sync: &dyn Collective<B>,
        dx: B::Buf,
        x: &B::Buf,
        s: Nchw,
        (mean, inv_std, count): (&B::Buf, &B::Buf, usize),
    ) -> Result<B::Buf> {
        let c = self.channels;
        fn grad<B: Backend>(p: &Param<B>) -> Result<&B::Buf> {
            p.grad
                .as_ref()
                .with_context(|| format!("{}: no gradient after backward", p.name))
        }
        let mut mine = vec![count as f32];
        mine.extend(be.download(grad(&self.weight)?)?);
        mine.extend(be.download(grad(&self.bias)?)?);
        let all = be.download(&sync.all_gather(be, &be.upload(&mine)?)?)?;
        let ranks: Vec<&[f32]> = all.chunks(2 * c + 1).collect();
        let total: f64 = ranks.iter().map(|r| r[0] as f64).sum();
        let (gamma, mean, inv_std) = (
            be.download(&self.weight.value)?,
            be.download(mean)?,
            be.download(inv_std)?,
        );
        let local = count as f64;
        let (mut p, mut q) = (vec![0f32; c], vec![0f32; c]);
        for ch in 0..c {
            let sum_dy_xhat: f64 = ranks.iter().map(|r| r[1 + ch] as f64).sum();
            let sum_dy: f64 = ranks.iter().map(|r| r[1 + c + ch] as f64).sum();
            let k = gamma[ch] as f64 * inv_std[ch] as f64;
            let a = k * (mine[1 + c + ch] as f64 / local - sum_dy / total);
            let b = k * (mine[1 + ch] as f64 / local - sum_dy_xhat / total);
            p[ch] = (b * inv_std[ch] as f64) as f32;
            q[ch] = (a - b * mean[ch] as f64 * inv_std[ch] as f64) as f32;
        }
        let unit = BatchNormConfig {
            eps: 0.0,
            ..self.cfg
        };
        be.batch_norm_eval_forward_act(
            x,
            BatchNormAffine {
                gamma: &be.upload(&p)?,
                beta: &be.upload(&q)?,
            },
            BatchNormStats {
                mean: &be.zeros(c)?,
                var: &be.upload(&vec![1.0; c])?,
            },
            s.channel_dims(),
            unit,
            BatchNormAct {
                residual: Some(&dx),
                relu: false,
            },
        )
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
    fn batch_norms_mut(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d<B>)) {
        f(self);
    }
}
