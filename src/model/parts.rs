//! The two halves of a multi-expert network: the shared trunk (stem + early stages) and an
//! expert (late stages + global pooling + classifier).

use crate::backend::{Backend, BatchNormBackwardAct};
use crate::nn::{
    global_avg_pool_backward, global_avg_pool_forward, BatchNorm2d, Conv2d, Linear, MaxPool2d,
    Module, Nchw, Stage, StateMut, StateRef,
};
use anyhow::{Context, Result};

/// Activations the stem keeps for its backward.
struct StemSaved<B: Backend> {
    x: B::Buf, // [n, 3, h, w] the input images
    xs: Nchw,
    a0: B::Buf, // conv1 output
    s0: Nchw,
    r0: B::Buf,                     // relu(bn1(a0))
    pooled: Option<(B::Buf, Nchw)>, // max-pool output (ResNet-50 stem)
}

/// `conv1 → bn1 → relu (→ maxpool)`.
pub(crate) struct Stem<B: Backend> {
    pub conv1: Conv2d<B>,
    pub bn1: BatchNorm2d<B>,
    pub maxpool: Option<MaxPool2d<B>>,
    saved: Option<StemSaved<B>>,
}

impl<B: Backend> Stem<B> {
    pub fn new(conv1: Conv2d<B>, bn1: BatchNorm2d<B>, maxpool: Option<MaxPool2d<B>>) -> Self {
        Self {
            conv1,
            bn1,
            maxpool,
            saved: None,
        }
    }

    /// Takes the input images: the first convolution's weight gradient needs them.
    fn forward_train(&mut self, be: &B, x: B::Buf, xs: Nchw) -> Result<Nchw> {
        let (a0, r0, s0) = self
            .bn1
            .forward_train_after(be, &self.conv1, &x, xs, None, true)?;
        let pooled = match &mut self.maxpool {
            Some(mp) => Some(mp.forward_train(be, &r0, s0)?),
            None => None,
        };
        let out = pooled.as_ref().map_or(s0, |p| p.1);
        self.saved = Some(StemSaved {
            x,
            xs,
            a0,
            s0,
            r0,
            pooled,
        });
        Ok(out)
    }

    fn output(&self) -> Result<(&B::Buf, Nchw)> {
        let sv = self
            .saved
            .as_ref()
            .context("stem output requested before a training forward")?;
        Ok(match &sv.pooled {
            Some((y, s)) => (y, *s),
            None => (&sv.r0, sv.s0),
        })
    }

    fn forward_eval(&self, be: &B, x: &B::Buf, xs: Nchw) -> Result<(B::Buf, Nchw)> {
        let (a0, s0) = self.conv1.forward(be, x, xs)?;
        let r0 = self.bn1.forward_eval_act(be, &a0, s0, None, true)?;
        match &self.maxpool {
            Some(mp) => mp.forward_eval(be, &r0, s0),
            None => Ok((r0, s0)),
        }
    }

    fn backward(&mut self, be: &B, dy: B::Buf) -> Result<()> {
        let sv = self
            .saved
            .take()
            .context("stem backward without a training forward")?;
        let dr0 = match &mut self.maxpool {
            Some(mp) => mp.backward(be, &dy, sv.s0)?,
            None => dy,
        };
        let da0 =
            self.bn1
                .backward_act(be, &dr0, &sv.a0, sv.s0, BatchNormBackwardAct::relu(&sv.r0))?;
        self.conv1.backward_weight(be, &sv.x, &da0, sv.xs)
    }
}

impl<B: Backend> Module<B> for Stem<B> {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(StateRef<'a, B>)) {
        self.conv1.visit(f);
        self.bn1.visit(f);
    }
    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(StateMut<'a, B>)) {
        self.conv1.visit_mut(f);
        self.bn1.visit_mut(f);
    }
    fn batch_norms_mut(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d<B>)) {
        f(&mut self.bn1);
    }
}

/// The shared early layers: stem + stages (`shared.*`).
pub(crate) struct Trunk<B: Backend> {
    pub stem: Stem<B>,
    pub stages: Vec<Stage<B>>,
}

impl<B: Backend> Trunk<B> {
    pub fn forward_train(&mut self, be: &B, x: B::Buf, xs: Nchw) -> Result<Nchw> {
        let mut shape = self.stem.forward_train(be, x, xs)?;
        for i in 0..self.stages.len() {
            let (done, rest) = self.stages.split_at_mut(i);
            let input = match done.last() {
                Some(prev) => prev.output()?.0,
                None => self.stem.output()?.0,
            };
            shape = rest[0].forward_train(be, input, shape)?;
        }
        Ok(shape)
    }

    /// The trunk output of the last training forward.
    pub fn output(&self) -> Result<(&B::Buf, Nchw)> {
        match self.stages.last() {
            Some(stage) => stage.output(),
            None => self.stem.output(),
        }
    }

    pub fn forward_eval(&self, be: &B, x: &B::Buf, xs: Nchw) -> Result<(B::Buf, Nchw)> {
        let (mut y, mut shape) = self.stem.forward_eval(be, x, xs)?;
        for stage in &self.stages {
            (y, shape) = stage.forward_eval(be, &y, shape)?;
        }
        Ok((y, shape))
    }

    /// Fills the gradients of every trunk parameter from `dy`, the gradient of the trunk output.
    pub fn backward(&mut self, be: &B, dy: B::Buf) -> Result<()> {
        let mut d = dy;
        for i in (0..self.stages.len()).rev() {
            let (done, rest) = self.stages.split_at_mut(i);
            let input = match done.last() {
                Some(prev) => prev.output()?.0,
                None => self.stem.output()?.0,
            };
            d = rest[0].backward(be, input, d)?;
        }
        self.stem.backward(be, d)
    }
}

impl<B: Backend> Module<B> for Trunk<B> {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(StateRef<'a, B>)) {
        self.stem.visit(f);
        for s in &self.stages {
            s.visit(f);
        }
    }
    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(StateMut<'a, B>)) {
        self.stem.visit_mut(f);
        for s in &mut self.stages {
            s.visit_mut(f);
        }
    }
    fn batch_norms_mut(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d<B>)) {
        self.stem.batch_norms_mut(f);
        for s in &mut self.stages {
            s.batch_norms_mut(f);
        }
    }
}

/// What an expert keeps for its backward.
struct ExpertSaved<B: Backend> {
    input: Nchw,
    last: Nchw,
    features: B::Buf, // [n, d] pooled features, the classifier input
}

/// One expert (`experts.{k}.*`): late stages, global average pooling, linear classifier.
pub(crate) struct Expert<B: Backend> {
    pub stages: Vec<Stage<B>>,
    pub fc: Linear<B>,
    saved: Option<ExpertSaved<B>>,
}

impl<B: Backend> Expert<B> {
    pub fn new(stages: Vec<Stage<B>>, fc: Linear<B>) -> Self {
        Self {
            stages,
            fc,
            saved: None,
        }
    }

    /// `h [n, c, h, w]` (trunk output) → `(logits [n, classes], features [n, d])`; the
    /// returned features are a view of those the expert keeps for the classifier's backward
    /// (nothing writes them).
    pub fn forward_train(&mut self, be: &B, h: &B::Buf, s: Nchw) -> Result<(B::Buf, B::Buf)> {
        let mut shape = s;
        for i in 0..self.stages.len() {
            let (done, rest) = self.stages.split_at_mut(i);
            let input = match done.last() {
                Some(prev) => prev.output()?.0,
                None => h,
            };
            shape = rest[0].forward_train(be, input, shape)?;
        }
        let features = match self.stages.last() {
            Some(stage) => global_avg_pool_forward(be, stage.output()?.0, shape)?,
            None => global_avg_pool_forward(be, h, shape)?,
        };
        let logits = self.fc.forward(be, &features, s.n)?;
        let features_out = be.view(&features, 0, be.len(&features))?;
        self.saved = Some(ExpertSaved {
            input: s,
            last: shape,
            features,
        });
        Ok((logits, features_out))
    }

    /// `h [n, c, h, w]` → `(logits [n, classes], features [n, d])`, batch norm in evaluation mode.
    pub fn forward_eval(&self, be: &B, h: &B::Buf, s: Nchw) -> Result<(B::Buf, B::Buf)> {
        let pooled = match self.stages.split_first() {
            Some((first, rest)) => {
                let (mut y, mut shape) = first.forward_eval(be, h, s)?;
                for stage in rest {
                    (y, shape) = stage.forward_eval(be, &y, shape)?;
                }
                global_avg_pool_forward(be, &y, shape)?
            }
            None => global_avg_pool_forward(be, h, s)?,
        };
        let logits = self.fc.forward(be, &pooled, s.n)?;
        Ok((logits, pooled))
    }

    /// Fills the expert's gradients from `dlogits [n, classes]` and writes the gradient of its
    /// input `h` (the forward input, passed back by the caller) over `dh`.
    pub fn backward_into(
        &mut self,
        be: &B,
        h: &B::Buf,
        dlogits: &B::Buf,
        dh: &mut B::Buf,
    ) -> Result<()> {
        let sv = self
            .saved
            .take()
            .context("expert backward without a training forward")?;
        let dfeatures = self.fc.backward(be, &sv.features, dlogits, sv.input.n)?;
        let mut d = global_avg_pool_backward(be, &dfeatures, sv.last)?;
        let Some((first, rest)) = self.stages.split_first_mut() else {
            // An expert of the classifier alone: its input gradient is the pooling's.
            let len = be.len(&d);
            return be.copy_range(&d, 0, dh, 0, len);
        };
        for i in (0..rest.len()).rev() {
            let (done, later) = rest.split_at_mut(i);
            let input = match done.last() {
                Some(prev) => prev.output()?.0,
                None => first.output()?.0,
            };
            d = later[0].backward(be, input, d)?;
        }
        first.backward_into(be, h, d, dh)
    }
}

impl<B: Backend> Module<B> for Expert<B> {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(StateRef<'a, B>)) {
        for s in &self.stages {
            s.visit(f);
        }
        self.fc.visit(f);
    }
    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(StateMut<'a, B>)) {
        for s in &mut self.stages {
            s.visit_mut(f);
        }
        self.fc.visit_mut(f);
    }
    fn batch_norms_mut(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d<B>)) {
        for s in &mut self.stages {
            s.batch_norms_mut(f);
        }
    }
}
