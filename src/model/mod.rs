//! Multi-expert ResNets (paper Sec. 4.2.2): early layers shared by all experts, deep layers and
//! classifier per expert, with PyTorch state-dict names (`shared.*`, `experts.{k}.*`).
//!
//! - ResNet-32 (CIFAR): `shared` = conv3x3(3→16) + BN + ReLU + `layer1` (5 basic blocks, 16 ch);
//!   each expert = `layer2` (5 blocks, stride 2), `layer3` (5 blocks, stride 2), pooling, `fc`.
//!   Option-A shortcuts. Same structure and names as `shared/peers/torch_resnet32_3e.py`.
//! - ResNet-50 / ResNeXt-50 32x4d (ImageNet): `shared` = torchvision's stem (conv7x7 s2 + BN +
//!   ReLU + maxpool 3x3 s2) + `layer1` + `layer2`; each expert = `layer3` + `layer4` + `fc`.
//!   torchvision v1.5 bottlenecks (stride on the 3x3), projection shortcuts.
//!
//! Training: [`MultiExpertNet::forward_train`] runs the trunk once on all views concatenated
//! (batch-norm statistics over all of them, as the PyTorch peer does), splits the activation per
//! expert, and [`MultiExpertNet::backward`] returns the gradient of the sum of the experts' losses.

mod parts;
mod state;

pub use state::is_model_tensor;

use crate::backend::{Backend, RowDims};
use crate::config::{ExpertWidth, ModelKind, TrainConfig};
use crate::dist::Collective;
use crate::nn::{
    BatchNorm2d, Conv2d, Linear, MaxPool2d, Module, Nchw, Param, ParamStore, Stage, StateMut,
    StateRef,
};
use anyhow::{bail, ensure, Context, Result};
use parts::{Expert, Stem, Trunk};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::sync::Arc;

/// The backbone of a multi-expert network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// CIFAR ResNet-32; `w2`, `w3` are the widths of the experts' `layer2` and `layer3`
    /// (32 and 64 in the original, 24 and 48 for the reduced variant).
    ResNet32 { w2: usize, w3: usize },
    /// torchvision's ResNet-50.
    ResNet50,
    /// torchvision's ResNeXt-50 32x4d.
    ResNeXt50_32x4d,
}

impl Arch {
    pub fn name(&self) -> String {
        match self {
            Arch::ResNet32 { w2: 32, w3: 64 } => "resnet32".to_string(),
            Arch::ResNet32 { w2, w3 } => format!("resnet32 (widths {w2}/{w3})"),
            Arch::ResNet50 => "resnet50".to_string(),
            Arch::ResNeXt50_32x4d => "resnext50_32x4d".to_string(),
        }
    }
}

/// Profiler range names (NVTX on CUDA) of the experts' passes; experts past the last share its name.
const EXPERT_FORWARD: [&str; 4] = [
    "expert 0 forward",
    "expert 1 forward",
    "expert 2 forward",
    "expert 3+ forward",
];
const EXPERT_BACKWARD: [&str; 4] = [
    "expert 0 backward",
    "expert 1 backward",
    "expert 2 backward",
    "expert 3+ backward",
];

/// One expert's training output.
pub struct ExpertOut<B: Backend> {
    /// `[batch, classes]` raw logits.
    pub logits: B::Buf,
    /// `[batch, d]` penultimate features (after global average pooling).
    pub features: B::Buf,
}

/// Evaluation output.
pub struct EvalOut<B: Backend> {
    /// Per expert `[batch, classes]` raw logits.
    pub logits: Vec<B::Buf>,
    /// Per expert `[batch, d]` penultimate features (SLA's cos-max pass needs them).
    pub features: Vec<B::Buf>,
    /// `[batch, classes]` mean of the experts' softmax (paper Eq. 19 with equal `eps_k`).
    pub probs: B::Buf,
}

/// How the trunk output of the last training forward reaches the experts.
enum ExpertInputs<B: Backend> {
    /// One view for all experts: every expert reads the trunk output itself.
    Shared,
    /// One view per expert: expert `k` reads a view of rows `k * batch .. (k + 1) * batch`.
    Split(Vec<B::Buf>),
}

/// What the network keeps between `forward_train` and `backward`.
struct NetSaved<B: Backend> {
    batch: usize,
    inputs: ExpertInputs<B>,
}

/// A ResNet with shared early layers and `experts` independent deep branches + classifiers.
pub struct MultiExpertNet<B: Backend> {
    arch: Arch,
    num_classes: usize,
    shared: Trunk<B>,
    experts: Vec<Expert<B>>,
    /// Every parameter's value, gradient and momentum, flat (the parameters are views of it).
    store: ParamStore<B>,
    /// `(offset, len)` in the flat store of the trunk's parameters and of each expert's: the
    /// gradient buckets of a data-parallel backward.
    buckets: (Bucket, Vec<Bucket>),
    saved: Option<NetSaved<B>>,
}

/// `(offset, len)` of a module's parameters in the flat store.
type Bucket = (usize, usize);

/// Elements of a module's parameters.
fn param_len<B: Backend>(m: &dyn Module<B>) -> usize {
    let mut len = 0;
    m.visit(&mut |s| {
        if let StateRef::Param(p) = s {
            len += p.numel();
        }
    });
    len
}

/// The parameters of a trunk and its experts in `model.parameters()` order (the order of
/// [`Module::visit`] on the model).
fn params_of<'a, B: Backend>(
    shared: &'a mut Trunk<B>,
    experts: &'a mut [Expert<B>],
) -> Vec<&'a mut Param<B>> {
    let mut out = Vec::new();
    let mut take = |s: StateMut<'a, B>| {
        if let StateMut::Param(p) = s {
            out.push(p)
        }
    };
    shared.visit_mut(&mut take);
    for e in experts {
        e.visit_mut(&mut take);
    }
    out
}

impl<B: Backend> MultiExpertNet<B> {
    /// The network `cfg` asks for (`model`, `experts`, `expert_width`, `seed`).
    pub fn from_config(be: &B, cfg: &TrainConfig, num_classes: usize) -> Result<Self> {
        let arch = match cfg.model {
            ModelKind::Resnet32 => match cfg.expert_width {
                ExpertWidth::Full => Arch::ResNet32 { w2: 32, w3: 64 },
                ExpertWidth::Reduced => Arch::ResNet32 { w2: 24, w3: 48 },
            },
            ModelKind::Resnet50 => Arch::ResNet50,
            ModelKind::Resnext50_32x4d => Arch::ResNeXt50_32x4d,
        };
        Self::new(be, arch, num_classes, cfg.experts, cfg.seed)
    }

    /// CIFAR ResNet-32 with `experts` experts whose `layer2`/`layer3` have `widths = (w2, w3)`
    /// channels. Initialisation is deterministic in `seed`.
    pub fn resnet32(
        be: &B,
        num_classes: usize,
        experts: usize,
        widths: (usize, usize),
        seed: u64,
    ) -> Result<Self> {
        Self::new(
            be,
            Arch::ResNet32 {
                w2: widths.0,
                w3: widths.1,
            },
            num_classes,
            experts,
            seed,
        )
    }

    /// torchvision's ResNet-50 split after `layer2`.
    pub fn resnet50(be: &B, num_classes: usize, experts: usize, seed: u64) -> Result<Self> {
        Self::new(be, Arch::ResNet50, num_classes, experts, seed)
    }

    /// torchvision's ResNeXt-50 32x4d split after `layer2`.
    pub fn resnext50_32x4d(be: &B, num_classes: usize, experts: usize, seed: u64) -> Result<Self> {
        Self::new(be, Arch::ResNeXt50_32x4d, num_classes, experts, seed)
    }

    /// Builds `arch` with Kaiming-normal convolution and linear weights, PyTorch's default
    /// uniform linear bias, BN weight 1 / bias 0; the trunk is initialised first, then the
    /// experts in order, all from one RNG seeded with `seed`.
    pub fn new(be: &B, arch: Arch, num_classes: usize, experts: usize, seed: u64) -> Result<Self> {
        ensure!(
            experts >= 1,
            "a multi-expert network needs at least one expert"
        );
        ensure!(num_classes >= 1, "a classifier needs at least one class");
        let mut rng = StdRng::seed_from_u64(seed);
        let rng = &mut rng;
        let (shared, expert_list) = match arch {
            Arch::ResNet32 { w2, w3 } => {
                ensure!(
                    w2 >= 16 && w3 >= w2 && (w2 - 16).is_multiple_of(2) && (w3 - w2).is_multiple_of(2),
                    "resnet32 widths {w2}/{w3}: option-A shortcuts need 16 <= w2 <= w3 with even steps"
                );
                let stem = Stem::new(
                    Conv2d::new(be, rng, "shared.conv1", 3, 16, 3, 1, 1, 1)?,
                    BatchNorm2d::new(be, "shared.bn1", 16)?,
                    None,
                );
                let layer1 = Stage::basic(be, rng, "shared.layer1", 16, 16, 5, 1)?;
                let shared = Trunk {
                    stem,
                    stages: vec![layer1],
                };
                let experts = (0..experts)
                    .map(|k| {
                        let p = format!("experts.{k}");
                        let stages = vec![
                            Stage::basic(be, rng, &format!("{p}.layer2"), 16, w2, 5, 2)?,
                            Stage::basic(be, rng, &format!("{p}.layer3"), w2, w3, 5, 2)?,
                        ];
                        let fc = Linear::new(be, rng, &format!("{p}.fc"), w3, num_classes)?;
                        Ok(Expert::new(stages, fc))
                    })
                    .collect::<Result<Vec<_>>>()?;
                (shared, experts)
            }
            Arch::ResNet50 | Arch::ResNeXt50_32x4d => {
                let (groups, base_width) = match arch {
                    Arch::ResNeXt50_32x4d => (32, 4),
                    _ => (1, 64),
                };
                let stem = Stem::new(
                    Conv2d::new(be, rng, "shared.conv1", 3, 64, 7, 2, 3, 1)?,
                    BatchNorm2d::new(be, "shared.bn1", 64)?,
                    Some(MaxPool2d::new(3, 2, 1)),
                );
                let stage = |rng: &mut StdRng, name: &str, c_in, planes, count, stride| {
                    Stage::bottleneck(
                        be, rng, name, c_in, planes, count, stride, groups, base_width,
                    )
                };
                let shared = Trunk {
                    stem,
                    stages: vec![
                        stage(rng, "shared.layer1", 64, 64, 3, 1)?,
                        stage(rng, "shared.layer2", 256, 128, 4, 2)?,
                    ],
                };
                let experts = (0..experts)
                    .map(|k| {
                        let p = format!("experts.{k}");
                        let stages = vec![
                            stage(rng, &format!("{p}.layer3"), 512, 256, 6, 2)?,
                            stage(rng, &format!("{p}.layer4"), 1024, 512, 3, 2)?,
                        ];
                        let fc = Linear::new(be, rng, &format!("{p}.fc"), 2048, num_classes)?;
                        Ok(Expert::new(stages, fc))
                    })
                    .collect::<Result<Vec<_>>>()?;
                (shared, experts)
            }
        };
        let mut shared = shared;
        let mut expert_list = expert_list;
        let store = ParamStore::gather(be, params_of(&mut shared, &mut expert_list))?;
        let trunk = (0, param_len(&shared));
        let mut offset = trunk.1;
        let experts = expert_list
            .iter()
            .map(|e| {
                let len = param_len(e);
                offset += len;
                (offset - len, len)
            })
            .collect();
        Ok(Self {
            arch,
            num_classes,
            shared,
            experts: expert_list,
            store,
            buckets: (trunk, experts),
            saved: None,
        })
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }
    pub fn experts(&self) -> usize {
        self.experts.len()
    }
    /// Width `d` of the penultimate features (the classifier input).
    pub fn feature_dim(&self) -> usize {
        self.experts[0].fc.d_in
    }
    /// `[classes, d]` classifier weight of expert `k` (for SLA's cosines). Panics if
    /// `k >= self.experts()`.
    pub fn classifier_weight(&self, k: usize) -> &B::Buf {
        &self.experts[k].fc.weight.value
    }

    /// Trainable parameters in PyTorch's `model.parameters()` order.
    pub fn params(&self) -> Vec<&Param<B>> {
        let mut out = Vec::new();
        self.visit(&mut |s| {
            if let StateRef::Param(p) = s {
                out.push(p)
            }
        });
        out
    }

    pub fn params_mut(&mut self) -> Vec<&mut Param<B>> {
        params_of(&mut self.shared, &mut self.experts)
    }

    /// The parameters beside the flat store they are views of (for the optimizer).
    pub fn params_and_store_mut(&mut self) -> (Vec<&mut Param<B>>, &mut ParamStore<B>) {
        (
            params_of(&mut self.shared, &mut self.experts),
            &mut self.store,
        )
    }

    pub fn num_parameters(&self) -> usize {
        self.params().iter().map(|p| p.numel()).sum()
    }

    /// Training forward of `x [views * batch, 3, h, w]`: the views stacked, one per expert (expert
    /// `k` trains on view `k`) or a single one all experts share (stage 2). The trunk runs once on
    /// all of them and expert `k` reads its view's rows of the trunk output in place. Returns per
    /// expert the logits `[batch, classes]` and the features `[batch, d]`; keeps what `backward`
    /// needs.
    pub fn forward_train(
        &mut self,
        be: &B,
        x: B::Buf,
        views: usize,
        batch: usize,
        h: usize,
        w: usize,
    ) -> Result<Vec<ExpertOut<B>>> {
        let experts = self.experts.len();
        ensure!(
            views == experts || views == 1,
            "forward_train: {views} input views for {experts} experts (give one per expert, or one for all)"
        );
        ensure!(batch >= 1, "forward_train: empty batch");
        let xs = Nchw::new(views * batch, 3, h, w);
        ensure!(
            be.len(&x) == xs.len(),
            "forward_train: the input holds {} values, {views} views of [{batch}, 3, {h}, {w}] need {}",
            be.len(&x),
            xs.len()
        );
        self.saved = None;
        be.range_push("shared forward");
        let trunk_shape = self.shared.forward_train(be, x, xs)?;
        be.range_pop();
        let (trunk_out, _) = self.shared.output()?;
        let expert_shape = trunk_shape.with_n(batch);
        let len = expert_shape.len();
        let mut outs = Vec::with_capacity(experts);
        let mut split = Vec::with_capacity(experts);
        for (k, expert) in self.experts.iter_mut().enumerate() {
            let input = if views == 1 {
                None
            } else {
                Some(be.view(trunk_out, k * len, len)?)
            };
            be.range_push(EXPERT_FORWARD[k.min(EXPERT_FORWARD.len() - 1)]);
            let (logits, features) =
                expert.forward_train(be, input.as_ref().unwrap_or(trunk_out), expert_shape)?;
            be.range_pop();
            outs.push(ExpertOut { logits, features });
            split.extend(input);
        }
        let inputs = if views == 1 {
            ExpertInputs::Shared
        } else {
            ExpertInputs::Split(split)
        };
        self.saved = Some(NetSaved { batch, inputs });
        Ok(outs)
    }

    /// Synchronises every batch norm's training statistics across the ranks of `sync` (`--sync-bn`),
    /// or, with `None`, makes them per rank again.
    pub fn set_sync_batch_norm(&mut self, sync: Option<Arc<dyn Collective<B>>>) {
        self.batch_norms_mut(&mut |bn| bn.sync = sync.clone());
    }

    /// Backward of the last `forward_train`: `dlogits[k]` (`[batch, classes]`) is the gradient
    /// of the total loss with respect to expert `k`'s logits (already scaled by the caller).
    /// Overwrites every parameter's `grad`.
    pub fn backward(&mut self, be: &B, dlogits: &[B::Buf]) -> Result<()> {
        self.backward_reduced(be, dlogits, None)
    }

    /// [`backward`](Self::backward), each gradient summed across the ranks of `reduce` in
    /// buckets, each expert's as soon as its backward is done (overlapping the rest of the
    /// backward where the collective runs asynchronously), the trunk's last.
    pub fn backward_reduced(
        &mut self,
        be: &B,
        dlogits: &[B::Buf],
        reduce: Option<&dyn Collective<B>>,
    ) -> Result<()> {
        let saved = self
            .saved
            .take()
            .context("backward called without a preceding forward_train")?;
        ensure!(
            dlogits.len() == self.experts.len(),
            "backward: {} logit gradients for {} experts",
            dlogits.len(),
            self.experts.len()
        );
        let want = saved.batch * self.num_classes;
        for (k, d) in dlogits.iter().enumerate() {
            ensure!(
                be.len(d) == want,
                "backward: dlogits[{k}] holds {} values, [{}, {}] needs {want}",
                be.len(d),
                saved.batch,
                self.num_classes
            );
        }
        let (trunk_out, trunk_shape) = self.shared.output()?;
        let mut dtrunk = be.empty(trunk_shape.len())?;
        match saved.inputs {
            ExpertInputs::Shared => {
                // Every expert read the same activation: its gradient is the sum of theirs.
                for (k, (expert, d)) in self.experts.iter_mut().zip(dlogits).enumerate() {
                    be.range_push(EXPERT_BACKWARD[k.min(EXPERT_BACKWARD.len() - 1)]);
                    if k == 0 {
                        expert.backward_into(be, trunk_out, d, &mut dtrunk)?;
                    } else {
                        let mut dk = be.empty(trunk_shape.len())?;
                        expert.backward_into(be, trunk_out, d, &mut dk)?;
                        be.add_assign(&mut dtrunk, &dk)?;
                    }
                    be.range_pop();
                    reduce_bucket(be, &self.store, reduce, self.buckets.1[k])?;
                }
            }
            ExpertInputs::Split(inputs) => {
                // Each expert writes the gradient of its rows of the trunk output in place.
                for (k, ((expert, d), input)) in
                    self.experts.iter_mut().zip(dlogits).zip(inputs).enumerate()
                {
                    let len = be.len(&input);
                    let mut rows = be.view(&dtrunk, k * len, len)?;
                    be.range_push(EXPERT_BACKWARD[k.min(EXPERT_BACKWARD.len() - 1)]);
                    expert.backward_into(be, &input, d, &mut rows)?;
                    be.range_pop();
                    reduce_bucket(be, &self.store, reduce, self.buckets.1[k])?;
                }
            }
        }
        be.range_push("shared backward");
        let result = self.shared.backward(be, dtrunk);
        be.range_pop();
        result?;
        reduce_bucket(be, &self.store, reduce, self.buckets.0)?;
        match reduce {
            Some(r) => r.wait(be),
            None => Ok(()),
        }
    }

    /// Evaluation forward (batch norm with running statistics) of `x [batch, 3, h, w]`: every
    /// expert's logits and the mean of their softmax.
    pub fn forward_eval(
        &self,
        be: &B,
        x: &B::Buf,
        batch: usize,
        h: usize,
        w: usize,
    ) -> Result<EvalOut<B>> {
        let xs = Nchw::new(batch, 3, h, w);
        if be.len(x) != xs.len() {
            bail!(
                "forward_eval: input holds {} values, [{batch}, 3, {h}, {w}] needs {}",
                be.len(x),
                xs.len()
            );
        }
        let (trunk_out, trunk_shape) = self.shared.forward_eval(be, x, xs)?;
        let (logits, features): (Vec<B::Buf>, Vec<B::Buf>) = self
            .experts
            .iter()
            .map(|e| e.forward_eval(be, &trunk_out, trunk_shape))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        let rows = RowDims {
            n: batch,
            c: self.num_classes,
        };
        let mut probs = be.softmax_rows(&logits[0], rows)?;
        for l in &logits[1..] {
            be.add_assign(&mut probs, &be.softmax_rows(l, rows)?)?;
        }
        if logits.len() > 1 {
            probs = be.scale(&probs, 1.0 / logits.len() as f32)?;
        }
        Ok(EvalOut {
            logits,
            features,
            probs,
        })
    }
}

/// Sums one bucket of gradients across the ranks.
fn reduce_bucket<B: Backend>(
    be: &B,
    store: &ParamStore<B>,
    reduce: Option<&dyn Collective<B>>,
    (offset, len): Bucket,
) -> Result<()> {
    match reduce {
        Some(r) => r.all_reduce_sum(be, &mut store.grads_view(be, offset, len)?),
        None => Ok(()),
    }
}

impl<B: Backend> Module<B> for MultiExpertNet<B> {
    /// Every state tensor (parameters, running statistics, `num_batches_tracked`) in PyTorch's
    /// `state_dict()` order: the trunk, then the experts in order.
    fn visit<'a>(&'a self, f: &mut dyn FnMut(StateRef<'a, B>)) {
        self.shared.visit(f);
        for e in &self.experts {
            e.visit(f);
        }
    }
    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(StateMut<'a, B>)) {
        self.shared.visit_mut(f);
        for e in &mut self.experts {
            e.visit_mut(f);
        }
    }
    fn batch_norms_mut(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d<B>)) {
        self.shared.batch_norms_mut(f);
        for e in &mut self.experts {
            e.batch_norms_mut(f);
        }
    }
}
