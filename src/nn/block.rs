//! Residual blocks (ResNet-32's `BasicBlock` with option-A shortcuts, torchvision v1.5's
//! `Bottleneck` with projection shortcuts and ResNeXt groups) and the `Stage` that chains them.

use super::{check_len, BatchNorm2d, Conv2d, Module, Nchw, StateMut, StateRef};
use crate::backend::{Backend, BatchNormBackwardAct, ShortcutDims, WriteMode};
use anyhow::{ensure, Context, Result};
use rand::rngs::StdRng;

/// Option-A shortcut parameters: subsample by `stride`, zero-pad channels `c_in` → `c_out`.
#[derive(Clone, Copy, Debug)]
struct ShortcutA {
    c_in: usize,
    c_out: usize,
    stride: usize,
}

impl ShortcutA {
    fn dims(&self, x: Nchw) -> ShortcutDims {
        ShortcutDims {
            n: x.n,
            c_in: self.c_in,
            h: x.h,
            w: x.w,
            c_out: self.c_out,
            stride: self.stride,
        }
    }
}

/// Activations a `BasicBlock` keeps between its training forward and its backward.
struct BasicSaved<B: Backend> {
    x: Nchw,
    mid: Nchw,
    a1: B::Buf, // conv1 output [n, c_out, h', w']
    r1: B::Buf, // relu(bn1(a1)), conv2 input
    a2: B::Buf, // conv2 output
}

/// `y = relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`, 3x3 convolutions, stride on conv1.
/// The shortcut is the identity, or option A (subsample + zero-pad channels, no parameters)
/// when the stride or the width changes.
pub struct BasicBlock<B: Backend> {
    pub conv1: Conv2d<B>,
    pub bn1: BatchNorm2d<B>,
    pub conv2: Conv2d<B>,
    pub bn2: BatchNorm2d<B>,
    shortcut: Option<ShortcutA>,
    saved: Option<BasicSaved<B>>,
}

impl<B: Backend> BasicBlock<B> {
    /// `name` is the block's state-dict prefix (`shared.layer1.0`).
    pub fn new(
        be: &B,
        rng: &mut StdRng,
        name: &str,
        c_in: usize,
        c_out: usize,
        stride: usize,
    ) -> Result<Self> {
        ensure!(
            c_out >= c_in && (c_out - c_in).is_multiple_of(2),
            "{name}: the option-A shortcut pads channels equally on both sides, \
             so {c_in} → {c_out} channels must grow by an even number"
        );
        let shortcut = (stride != 1 || c_in != c_out).then_some(ShortcutA {
            c_in,
            c_out,
            stride,
        });
        Ok(Self {
            conv1: Conv2d::new(
                be,
                rng,
                &format!("{name}.conv1"),
                c_in,
                c_out,
                3,
                stride,
                1,
                1,
            )?,
            bn1: BatchNorm2d::new(be, &format!("{name}.bn1"), c_out)?,
            conv2: Conv2d::new(be, rng, &format!("{name}.conv2"), c_out, c_out, 3, 1, 1, 1)?,
            bn2: BatchNorm2d::new(be, &format!("{name}.bn2"), c_out)?,
            shortcut,
            saved: None,
        })
    }

    pub fn out_channels(&self) -> usize {
        self.conv2.c_out
    }

    /// The shortcut of `x`: `None` for the identity (`x` itself).
    fn shortcut(&self, be: &B, x: &B::Buf, s: Nchw) -> Result<Option<B::Buf>> {
        self.shortcut
            .map(|sc| be.shortcut_a_forward(x, sc.dims(s)))
            .transpose()
    }

    pub fn forward_train(&mut self, be: &B, x: &B::Buf, s: Nchw) -> Result<(B::Buf, Nchw)> {
        let (a1, r1, mid) = self
            .bn1
            .forward_train_after(be, &self.conv1, x, s, None, true)?;
        let shortcut = self.shortcut(be, x, s)?;
        let residual = shortcut.as_ref().unwrap_or(x);
        let (a2, y, out) =
            self.bn2
                .forward_train_after(be, &self.conv2, &r1, mid, Some(residual), true)?;
        self.saved = Some(BasicSaved {
            x: s,
            mid,
            a1,
            r1,
            a2,
        });
        Ok((y, out))
    }

    pub fn forward_eval(&self, be: &B, x: &B::Buf, s: Nchw) -> Result<(B::Buf, Nchw)> {
        let (a1, mid) = self.conv1.forward(be, x, s)?;
        let r1 = self.bn1.forward_eval_act(be, &a1, mid, None, true)?;
        let (a2, out) = self.conv2.forward(be, &r1, mid)?;
        let shortcut = self.shortcut(be, x, s)?;
        let residual = shortcut.as_ref().unwrap_or(x);
        let y = self
            .bn2
            .forward_eval_act(be, &a2, out, Some(residual), true)?;
        Ok((y, out))
    }

    /// `x` and `y` are the input and output of the training forward; returns `dx`.
    pub fn backward_into(
        &mut self,
        be: &B,
        x: &B::Buf,
        y: &B::Buf,
        dy: &B::Buf,
        dx: &mut B::Buf,
    ) -> Result<()> {
        let sv = self.saved.take().with_context(|| {
            format!(
                "{}: backward without a training forward",
                self.conv1.weight.name
            )
        })?;
        let out = self.conv2.out_shape(sv.mid);
        // The shortcut's gradient goes into dx first; the branch's is added to it below.
        let da2 = match self.shortcut {
            None => {
                let act = BatchNormBackwardAct {
                    relu_output: Some(y),
                    masked_dy: Some(&mut *dx),
                };
                self.bn2.backward_act(be, dy, &sv.a2, out, act)?
            }
            Some(sc) => {
                let mut dsum = be.empty(out.len())?;
                let act = BatchNormBackwardAct {
                    relu_output: Some(y),
                    masked_dy: Some(&mut dsum),
                };
                let da2 = self.bn2.backward_act(be, dy, &sv.a2, out, act)?;
                be.shortcut_a_backward(&dsum, sc.dims(sv.x), dx)?;
                da2
            }
        };
        let dr1 = self.conv2.backward(be, &sv.r1, &da2, sv.mid)?;
        let da1 =
            self.bn1
                .backward_act(be, &dr1, &sv.a1, sv.mid, BatchNormBackwardAct::relu(&sv.r1))?;
        self.conv1
            .backward_into(be, x, &da1, sv.x, dx, WriteMode::Add)
    }
}

impl<B: Backend> Module<B> for BasicBlock<B> {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(StateRef<'a, B>)) {
        self.conv1.visit(f);
        self.bn1.visit(f);
        self.conv2.visit(f);
        self.bn2.visit(f);
    }
    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(StateMut<'a, B>)) {
        self.conv1.visit_mut(f);
        self.bn1.visit_mut(f);
        self.conv2.visit_mut(f);
        self.bn2.visit_mut(f);
    }
    fn batch_norms_mut(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d<B>)) {
        f(&mut self.bn1);
        f(&mut self.bn2);
    }
}

/// Projection shortcut of a bottleneck: `downsample.0` (1x1 conv, stride) + `downsample.1` (BN).
pub struct Downsample<B: Backend> {
    pub conv: Conv2d<B>,
    pub bn: BatchNorm2d<B>,
}

/// Activations a `Bottleneck` keeps between its training forward and its backward.
struct BottleneckSaved<B: Backend> {
    x: Nchw,
    s1: Nchw, // after conv1 (input resolution)
    s2: Nchw, // after conv2 (output resolution)
    a1: B::Buf,
    r1: B::Buf,
    a2: B::Buf,
    r2: B::Buf,
    a3: B::Buf,
    ad: Option<B::Buf>, // downsample conv output
}

/// torchvision's v1.5 bottleneck: 1x1 (width) → 3x3 (width, stride, groups) → 1x1 (4 * planes),
/// BN after each, ReLU after the first two and after the residual sum; projection shortcut when
/// the stride or the width changes.
pub struct Bottleneck<B: Backend> {
    pub conv1: Conv2d<B>,
    pub bn1: BatchNorm2d<B>,
    pub conv2: Conv2d<B>,
    pub bn2: BatchNorm2d<B>,
    pub conv3: Conv2d<B>,
    pub bn3: BatchNorm2d<B>,
    pub downsample: Option<Downsample<B>>,
    saved: Option<BottleneckSaved<B>>,
}

impl<B: Backend> Bottleneck<B> {
    /// Output channels are `4 * planes`; the inner width is `planes * base_width / 64 * groups`
    /// (ResNet-50: groups 1, base width 64; ResNeXt-50 32x4d: groups 32, base width 4).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        be: &B,
        rng: &mut StdRng,
        name: &str,
        c_in: usize,
        planes: usize,
        stride: usize,
        groups: usize,
        base_width: usize,
    ) -> Result<Self> {
        let width = planes * base_width / 64 * groups;
        let c_out = planes * 4;
        let downsample = if stride != 1 || c_in != c_out {
            Some(Downsample {
                conv: Conv2d::new(
                    be,
                    rng,
                    &format!("{name}.downsample.0"),
                    c_in,
                    c_out,
                    1,
                    stride,
                    0,
                    1,
                )?,
                bn: BatchNorm2d::new(be, &format!("{name}.downsample.1"), c_out)?,
            })
        } else {
            None
        };
        // Construction order fixes the initialisation order: the main branch, then the shortcut.
        let conv1 = Conv2d::new(be, rng, &format!("{name}.conv1"), c_in, width, 1, 1, 0, 1)?;
        let bn1 = BatchNorm2d::new(be, &format!("{name}.bn1"), width)?;
        let conv2 = Conv2d::new(
            be,
            rng,
            &format!("{name}.conv2"),
            width,
            width,
            3,
            stride,
            1,
            groups,
        )?;
        let bn2 = BatchNorm2d::new(be, &format!("{name}.bn2"), width)?;
        let conv3 = Conv2d::new(be, rng, &format!("{name}.conv3"), width, c_out, 1, 1, 0, 1)?;
        let bn3 = BatchNorm2d::new(be, &format!("{name}.bn3"), c_out)?;
        Ok(Self {
            conv1,
            bn1,
            conv2,
            bn2,
            conv3,
            bn3,
            downsample,
            saved: None,
        })
    }

    pub fn out_channels(&self) -> usize {
        self.conv3.c_out
    }

    pub fn forward_train(&mut self, be: &B, x: &B::Buf, s: Nchw) -> Result<(B::Buf, Nchw)> {
        let (a1, r1, s1) = self
            .bn1
            .forward_train_after(be, &self.conv1, x, s, None, true)?;
        let (a2, r2, s2) = self
            .bn2
            .forward_train_after(be, &self.conv2, &r1, s1, None, true)?;
        let (ad, projected) = match &mut self.downsample {
            Some(ds) => {
                let (ad, projected, _) =
                    ds.bn.forward_train_after(be, &ds.conv, x, s, None, false)?;
                (Some(ad), Some(projected))
            }
            None => (None, None),
        };
        let residual = projected.as_ref().unwrap_or(x);
        let (a3, y, out) =
            self.bn3
                .forward_train_after(be, &self.conv3, &r2, s2, Some(residual), true)?;
        self.saved = Some(BottleneckSaved {
            x: s,
            s1,
            s2,
            a1,
            r1,
            a2,
            r2,
            a3,
            ad,
        });
        Ok((y, out))
    }

    pub fn forward_eval(&self, be: &B, x: &B::Buf, s: Nchw) -> Result<(B::Buf, Nchw)> {
        let (a1, s1) = self.conv1.forward(be, x, s)?;
        let r1 = self.bn1.forward_eval_act(be, &a1, s1, None, true)?;
        let (a2, s2) = self.conv2.forward(be, &r1, s1)?;
        let r2 = self.bn2.forward_eval_act(be, &a2, s2, None, true)?;
        let (a3, out) = self.conv3.forward(be, &r2, s2)?;
        let projected = match &self.downsample {
            Some(ds) => {
                let (ad, _) = ds.conv.forward(be, x, s)?;
                Some(ds.bn.forward_eval(be, &ad, out)?)
            }
            None => None,
        };
        let residual = projected.as_ref().unwrap_or(x);
        let y = self
            .bn3
            .forward_eval_act(be, &a3, out, Some(residual), true)?;
        Ok((y, out))
    }

    /// `x` and `y` are the input and output of the training forward; returns `dx`.
    pub fn backward_into(
        &mut self,
        be: &B,
        x: &B::Buf,
        y: &B::Buf,
        dy: &B::Buf,
        dx: &mut B::Buf,
    ) -> Result<()> {
        let sv = self.saved.take().with_context(|| {
            format!(
                "{}: backward without a training forward",
                self.conv1.weight.name
            )
        })?;
        let out = self.conv3.out_shape(sv.s2);
        // The shortcut's gradient goes into dx first; the branch's is added to it below.
        let da3 = match (&mut self.downsample, &sv.ad) {
            (Some(ds), Some(ad)) => {
                let mut dsum = be.empty(out.len())?;
                let act = BatchNormBackwardAct {
                    relu_output: Some(y),
                    masked_dy: Some(&mut dsum),
                };
                let da3 = self.bn3.backward_act(be, dy, &sv.a3, out, act)?;
                let dad = ds.bn.backward(be, &dsum, ad, out)?;
                ds.conv
                    .backward_into(be, x, &dad, sv.x, dx, WriteMode::Overwrite)?;
                da3
            }
            _ => {
                let act = BatchNormBackwardAct {
                    relu_output: Some(y),
                    masked_dy: Some(&mut *dx),
                };
                self.bn3.backward_act(be, dy, &sv.a3, out, act)?
            }
        };
        let dr2 = self.conv3.backward(be, &sv.r2, &da3, sv.s2)?;
        let da2 =
            self.bn2
                .backward_act(be, &dr2, &sv.a2, sv.s2, BatchNormBackwardAct::relu(&sv.r2))?;
        let dr1 = self.conv2.backward(be, &sv.r1, &da2, sv.s1)?;
        let da1 =
            self.bn1
                .backward_act(be, &dr1, &sv.a1, sv.s1, BatchNormBackwardAct::relu(&sv.r1))?;
        self.conv1
            .backward_into(be, x, &da1, sv.x, dx, WriteMode::Add)
    }
}

impl<B: Backend> Module<B> for Bottleneck<B> {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(StateRef<'a, B>)) {
        self.conv1.visit(f);
        self.bn1.visit(f);
        self.conv2.visit(f);
        self.bn2.visit(f);
        self.conv3.visit(f);
        self.bn3.visit(f);
        if let Some(ds) = &self.downsample {
            ds.conv.visit(f);
            ds.bn.visit(f);
        }
    }
    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(StateMut<'a, B>)) {
        self.conv1.visit_mut(f);
        self.bn1.visit_mut(f);
        self.conv2.visit_mut(f);
        self.bn2.visit_mut(f);
        self.conv3.visit_mut(f);
        self.bn3.visit_mut(f);
        if let Some(ds) = &mut self.downsample {
            ds.conv.visit_mut(f);
            ds.bn.visit_mut(f);
        }
    }
    fn batch_norms_mut(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d<B>)) {
        f(&mut self.bn1);
        f(&mut self.bn2);
        f(&mut self.bn3);
        if let Some(ds) = &mut self.downsample {
            f(&mut ds.bn);
        }
    }
}

/// A residual block of either kind.
// A few dozen blocks per model, each holding device buffers: the inline size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum ResBlock<B: Backend> {
    Basic(BasicBlock<B>),
    Bottleneck(Bottleneck<B>),
}

impl<B: Backend> ResBlock<B> {
    pub fn out_channels(&self) -> usize {
        match self {
            ResBlock::Basic(b) => b.out_channels(),
            ResBlock::Bottleneck(b) => b.out_channels(),
        }
    }
    pub fn forward_train(&mut self, be: &B, x: &B::Buf, s: Nchw) -> Result<(B::Buf, Nchw)> {
        match self {
            ResBlock::Basic(b) => b.forward_train(be, x, s),
            ResBlock::Bottleneck(b) => b.forward_train(be, x, s),
        }
    }
    pub fn forward_eval(&self, be: &B, x: &B::Buf, s: Nchw) -> Result<(B::Buf, Nchw)> {
        match self {
            ResBlock::Basic(b) => b.forward_eval(be, x, s),
            ResBlock::Bottleneck(b) => b.forward_eval(be, x, s),
        }
    }
    /// Fills the block's gradients and writes the gradient of its input `x` over `dx`; `y` is
    /// the block's training output (its ReLU mask), `dy` the gradient of `y`.
    pub fn backward_into(
        &mut self,
        be: &B,
        x: &B::Buf,
        y: &B::Buf,
        dy: &B::Buf,
        dx: &mut B::Buf,
    ) -> Result<()> {
        match self {
            ResBlock::Basic(b) => b.backward_into(be, x, y, dy, dx),
            ResBlock::Bottleneck(b) => b.backward_into(be, x, y, dy, dx),
        }
    }
}

impl<B: Backend> Module<B> for ResBlock<B> {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(StateRef<'a, B>)) {
        match self {
            ResBlock::Basic(b) => b.visit(f),
            ResBlock::Bottleneck(b) => b.visit(f),
        }
    }
    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(StateMut<'a, B>)) {
        match self {
            ResBlock::Basic(b) => b.visit_mut(f),
            ResBlock::Bottleneck(b) => b.visit_mut(f),
        }
    }
    fn batch_norms_mut(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d<B>)) {
        match self {
            ResBlock::Basic(b) => b.batch_norms_mut(f),
            ResBlock::Bottleneck(b) => b.batch_norms_mut(f),
        }
    }
}

/// A sequence of blocks (`layer1` … `layer4`); keeps each block's training output, since it is
/// both that block's ReLU mask and the next block's input.
pub struct Stage<B: Backend> {
    pub blocks: Vec<ResBlock<B>>,
    /// `[n, c, h, w]` output of each block in the last training forward.
    outputs: Vec<B::Buf>,
    out_shape: Option<Nchw>,
}

impl<B: Backend> Stage<B> {
    /// `count` basic blocks, the first with `stride`; `name` is the prefix (`experts.0.layer2`).
    #[allow(clippy::too_many_arguments)]
    pub fn basic(
        be: &B,
        rng: &mut StdRng,
        name: &str,
        c_in: usize,
        c_out: usize,
        count: usize,
        stride: usize,
    ) -> Result<Self> {
        ensure!(count >= 1, "{name}: a stage needs at least one block");
        let blocks = (0..count)
            .map(|i| {
                let (cin, st) = if i == 0 { (c_in, stride) } else { (c_out, 1) };
                BasicBlock::new(be, rng, &format!("{name}.{i}"), cin, c_out, st)
                    .map(ResBlock::Basic)
            })
            .collect::<Result<_>>()?;
        Ok(Self::from_blocks(blocks))
    }

    /// `count` bottlenecks of `planes` (output `4 * planes`), the first with `stride`.
    #[allow(clippy::too_many_arguments)]
    pub fn bottleneck(
        be: &B,
        rng: &mut StdRng,
        name: &str,
        c_in: usize,
        planes: usize,
        count: usize,
        stride: usize,
        groups: usize,
        base_width: usize,
    ) -> Result<Self> {
        ensure!(count >= 1, "{name}: a stage needs at least one block");
        let blocks = (0..count)
            .map(|i| {
                let (cin, st) = if i == 0 {
                    (c_in, stride)
                } else {
                    (planes * 4, 1)
                };
                Bottleneck::new(
                    be,
                    rng,
                    &format!("{name}.{i}"),
                    cin,
                    planes,
                    st,
                    groups,
                    base_width,
                )
                .map(ResBlock::Bottleneck)
            })
            .collect::<Result<_>>()?;
        Ok(Self::from_blocks(blocks))
    }

    fn from_blocks(blocks: Vec<ResBlock<B>>) -> Self {
        Self {
            blocks,
            outputs: Vec::new(),
            out_shape: None,
        }
    }

    pub fn out_channels(&self) -> usize {
        self.blocks.last().map_or(0, |b| b.out_channels())
    }

    /// Runs every block in training mode, keeping their outputs; returns the output shape.
    /// The output itself is [`Stage::output`].
    pub fn forward_train(&mut self, be: &B, x: &B::Buf, s: Nchw) -> Result<Nchw> {
        check_len(be, x, s.len(), "stage input")?;
        self.outputs.clear();
        self.out_shape = None;
        let mut shape = s;
        for (i, block) in self.blocks.iter_mut().enumerate() {
            let input = if i == 0 { x } else { &self.outputs[i - 1] };
            let (y, next) = block.forward_train(be, input, shape)?;
            self.outputs.push(y);
            shape = next;
        }
        self.out_shape = Some(shape);
        Ok(shape)
    }

    /// The output of the last training forward.
    pub fn output(&self) -> Result<(&B::Buf, Nchw)> {
        match (self.outputs.last(), self.out_shape) {
            (Some(y), Some(s)) => Ok((y, s)),
            _ => anyhow::bail!("stage output requested before a training forward"),
        }
    }

    pub fn forward_eval(&self, be: &B, x: &B::Buf, s: Nchw) -> Result<(B::Buf, Nchw)> {
        check_len(be, x, s.len(), "stage input")?;
        let (mut y, mut shape) = self.blocks[0].forward_eval(be, x, s)?;
        for block in &self.blocks[1..] {
            (y, shape) = block.forward_eval(be, &y, shape)?;
        }
        Ok((y, shape))
    }

    /// Backward through every block, freeing the kept outputs; `x` is the forward input.
    /// Returns the gradient of `x`.
    pub fn backward(&mut self, be: &B, x: &B::Buf, dy: B::Buf) -> Result<B::Buf> {
        let mut dx = be.empty(be.len(x))?;
        self.backward_into(be, x, dy, &mut dx)?;
        Ok(dx)
    }

    /// [`Stage::backward`] with the gradient of `x` written over the caller's `dx` (the expert's
    /// rows of the shared trunk's gradient).
    pub fn backward_into(&mut self, be: &B, x: &B::Buf, dy: B::Buf, dx: &mut B::Buf) -> Result<()> {
        ensure!(
            self.outputs.len() == self.blocks.len(),
            "stage backward without a training forward"
        );
        self.out_shape = None;
        let mut d = dy;
        for i in (0..self.blocks.len()).rev() {
            let y = self
                .outputs
                .pop()
                .context("stage outputs out of step with its blocks")?;
            let block = &mut self.blocks[i];
            if i == 0 {
                return block.backward_into(be, x, &y, &d, dx);
            }
            let input = self.outputs.last().context("a block's input is kept")?;
            let mut d_input = be.empty(be.len(input))?;
            block.backward_into(be, input, &y, &d, &mut d_input)?;
            d = d_input;
        }
        anyhow::bail!("a stage has at least one block")
    }
}

impl<B: Backend> Module<B> for Stage<B> {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(StateRef<'a, B>)) {
        for b in &self.blocks {
            b.visit(f);
        }
    }
    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(StateMut<'a, B>)) {
        for b in &mut self.blocks {
            b.visit_mut(f);
        }
    }
    fn batch_norms_mut(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d<B>)) {
        for b in &mut self.blocks {
            b.batch_norms_mut(f);
        }
    }
}
