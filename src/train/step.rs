//! One training step (Algorithm 1, lines 3-8), written once for the epoch loop and `ltrain bench`:
//! the batch's views (Eq. 13: one per expert at its level in stage 1, one shared in stage 2), mixup
//! of the views with one draw shared by the experts (Eq. 14), each expert's loss (Eqs. 16-17), the
//! backward of their eps-weighted sum (Eq. 18) and the SGD update.
//!
//! [`StepRunner`] runs it. What changes from step to step (learning rate, mixup lambda, labels, the
//! mixup partners, the augmentation's sample indices and parameters) reaches the device as two
//! blocks, one `f32` and one `u32`, staged in page-locked memory and copied into buffers kept per
//! step shape; the step's ops read
//! views of them and take no per-step value as an argument. So on a backend with graphs each shape's
//! step runs once eagerly (filling the caching allocator), is captured the next time and replayed
//! from then on: per step, two uploads and one graph launch.

use crate::augment::draw_mixup;
use crate::backend::{AugmentSpec, Backend, HostStaging, LossTargets, SampleDims, SgdConfig};
use crate::config::TrainConfig;
use crate::dist::Collective;
use crate::method::{expert_loss, EpochPlan, ExpertLossInputs, LossSetup, SlaTable};
use crate::model::MultiExpertNet;
use crate::nn::{Module, StateMut, StateRef};
use crate::train::graphs::{Ran, Replay};
use crate::train::loader::{view_indices, BatchViews};
use crate::train::optimizer::sgd_update;
use anyhow::{bail, ensure, Result};

/// What stays fixed across the steps of an epoch.
pub struct StepContext<'a, B: Backend> {
    pub cfg: &'a TrainConfig,
    pub plan: &'a EpochPlan,
    pub losses: &'a LossSetup<B>,
    pub sgd: SgdConfig,
    /// The peers of a data-parallel run, the gradients summed across them before the update.
    pub reduce: Option<&'a dyn Collective<B>>,
}

/// One batch's mixup (Eq. 14): `x_i <- lambda x_i + (1 - lambda) x_perm[i]` for every view, the
/// targets mixed alike.
#[derive(Clone, Debug, PartialEq)]
pub struct Mixup {
    pub lambda: f32,
    /// `[n]` the partner of each sample.
    pub perm: Vec<u32>,
}

impl Mixup {
    /// The draw of batch `step` of `epoch` when the plan mixes: a function of `(seed, epoch, step)`,
    /// so a resumed run sees the same mixup.
    pub fn for_step(
        plan: &EpochPlan,
        seed: u64,
        epoch: usize,
        step: usize,
        n: usize,
    ) -> Option<Self> {
        (plan.mixup_alpha > 0.0).then(|| {
            let (lambda, perm) = draw_mixup(seed, epoch as u32, step as u32, n, plan.mixup_alpha);
            Self { lambda, perm }
        })
    }
}

/// What one step trains on.
pub struct StepBatch<'a, B: Backend> {
    pub views_from: BatchViews<'a, B>,
    /// Views per sample: one per entry of the plan's view levels, stacked view-major.
    pub views: usize,
    /// `[n]` the samples' indices in the training set (what the augmentation reads).
    pub samples: &'a [usize],
    /// `[n]` the samples' classes.
    pub labels: &'a [u32],
    pub mixup: Option<Mixup>,
    /// `(h, w)` of the views.
    pub hw: (usize, usize),
    pub lr: f32,
    /// Samples of the global batch this is a shard of (`n` in a single process): the loss is the
    /// global batch's mean, so the ranks' summed gradients are the whole batch's.
    pub global_n: usize,
}

/// What fixes the ops a step issues and the layout of its input blocks: steps of one shape issue the
/// same ops on the same buffers.
#[derive(Clone, Copy, Debug, PartialEq)]
struct StepShape {
    plan: EpochPlan,
    n: usize,
    global_n: usize,
    views: usize,
    hw: (usize, usize),
    mixup: bool,
    /// The augmentation's spec and parameter words, when the views are built in the step.
    augment: Option<(AugmentSpec, usize)>,
}

impl StepShape {
    // The f32 block: `[lr, lambda, augmentation parameters...]`.
    const LR: usize = 0;
    const LAMBDA: usize = 1;
    const PARAMS: usize = 2;

    fn values_len(&self) -> usize {
        Self::PARAMS + self.augment.map_or(0, |(_, words)| words)
    }
    /// The u32 block: `[labels n | partners' labels n | stacked partners views*n | augmentation
    /// indices views*n]`, the mixup parts only with mixup, the indices only with the augmentation.
    fn index_len(&self) -> usize {
        let mixed = if self.mixup {
            self.n + self.views * self.n
        } else {
            0
        };
        let augmented = if self.augment.is_some() {
            self.views * self.n
        } else {
            0
        };
        self.n + mixed + augmented
    }
    fn views_len(&self) -> usize {
        self.views * self.n * 3 * self.hw.0 * self.hw.1
    }

    /// The step's shape and its two input blocks, packed on the host.
    fn pack<B: Backend>(
        plan: &EpochPlan,
        batch: &StepBatch<'_, B>,
    ) -> Result<(Self, Vec<f32>, Vec<u32>)> {
        let n = batch.labels.len();
        ensure!(
            batch.samples.len() == n,
            "train_step: {} samples for {n} labels",
            batch.samples.len()
        );
        let views = batch.views;
        let augment = match &batch.views_from {
            BatchViews::Augment { spec, params, .. } => Some((*spec, params.len())),
            BatchViews::Ready(_) => None,
        };
        ensure!(
            batch.global_n >= n,
            "train_step: a shard of {n} samples of a global batch of {}",
            batch.global_n
        );
        let shape = Self {
            plan: *plan,
            n,
            global_n: batch.global_n,
            views,
            hw: batch.hw,
            mixup: batch.mixup.is_some(),
            augment,
        };
        let mut values = vec![batch.lr, 1.0];
        let mut index = batch.labels.to_vec();
        if let Some(mix) = &batch.mixup {
            ensure!(
                mix.perm.len() == n,
                "train_step: a mixup permutation of {} for a batch of {n}",
                mix.perm.len()
            );
            values[Self::LAMBDA] = mix.lambda;
            index.extend(mix.perm.iter().map(|&j| batch.labels[j as usize]));
            // One launch for every view: sample i of view k mixes with sample perm[i] of view k.
            index
                .extend((0..views).flat_map(|k| mix.perm.iter().map(move |&j| (k * n) as u32 + j)));
        }
        if let BatchViews::Augment { params, .. } = &batch.views_from {
            values.extend_from_slice(params);
            index.extend(view_indices(batch.samples, views));
        }
        Ok((shape, values, index))
    }
}

/// Page-locked buffers a shape's input blocks are staged in, used in turn: the next step's values
/// are written while the last step's copy may still be reading the other.
const INPUT_STAGING: usize = 2;

/// One shape's device inputs and, once captured, its graph.
struct ShapeRun<B: Backend> {
    shape: StepShape,
    values: B::Buf,
    index: B::Index,
    /// `[values | index words]` on the host, each block copied from here to the device.
    staging: Vec<B::Staging>,
    next_staging: usize,
    /// Where ready views are copied for a graph (its replays read them there).
    views: Option<B::Buf>,
    /// Its graph, with what a step adds to the model's host-side counters (batch norm's
    /// `num_batches_tracked`), which a replay must add as well.
    replay: Replay<B, Vec<u64>>,
}

/// Runs training steps, eagerly or through one captured graph per step shape.
pub struct StepRunner<B: Backend> {
    graphs: bool,
    shapes: Vec<ShapeRun<B>>,
    /// `[1]` the loss summed over the steps since [`StepRunner::set_loss_sum`].
    loss_sum: B::Buf,
}

impl<B: Backend> StepRunner<B> {
    /// With `graphs`, each step shape is captured once and replayed (the backend must have graphs:
    /// [`crate::config::CudaGraphs::enabled`]).
    pub fn new(be: &B, graphs: bool) -> Result<Self> {
        Ok(Self {
            graphs,
            shapes: Vec::new(),
            loss_sum: be.zeros(1)?,
        })
    }

    /// `[1]` the summed loss of the steps since the last reset (reading it back waits for the
    /// device).
    pub fn loss_sum(&self) -> &B::Buf {
        &self.loss_sum
    }

    /// Restarts the loss sum from `sum` (0 at an epoch's start, more in a resumed epoch).
    pub fn set_loss_sum(&mut self, be: &B, sum: f32) -> Result<()> {
        be.write(&mut self.loss_sum, &[sum])
    }

    /// One training step; its loss is added to [`StepRunner::loss_sum`]. Asynchronous on a GPU.
    pub fn run(
        &mut self,
        be: &B,
        model: &mut MultiExpertNet<B>,
        ctx: &StepContext<'_, B>,
        batch: StepBatch<'_, B>,
        sla_tables: &mut [SlaTable<B>],
    ) -> Result<()> {
        let (shape, values, index) = StepShape::pack(ctx.plan, &batch)?;
        let at = match self.shapes.iter().position(|r| r.shape == shape) {
            Some(at) => at,
            None => {
                let staged = shape.values_len() + shape.index_len();
                self.shapes.push(ShapeRun {
                    shape,
                    values: be.zeros(shape.values_len())?,
                    index: be.upload_index(&vec![0; shape.index_len()])?,
                    staging: (0..INPUT_STAGING)
                        .map(|_| be.alloc_staging(staged))
                        .collect::<Result<_>>()?,
                    next_staging: 0,
                    views: None,
                    replay: Replay::default(),
                });
                self.shapes.len() - 1
            }
        };
        let run = &mut self.shapes[at];
        // One staged upload per block, asynchronous on a GPU.
        let staging = &mut run.staging[run.next_staging];
        run.next_staging = (run.next_staging + 1) % INPUT_STAGING;
        let host = staging.as_mut_slice()?;
        host[..values.len()].copy_from_slice(&values);
        let words: &mut [u32] = bytemuck::cast_slice_mut(&mut host[values.len()..]);
        words[..index.len()].copy_from_slice(&index);
        be.write_staged(&mut run.values, staging, 0)?;
        be.write_index_staged(&mut run.index, staging, values.len())?;
        let source: Source<B> = match batch.views_from {
            BatchViews::Ready(x) if self.graphs => {
                // A graph reads its views from one place: copy them there.
                if run.views.is_none() {
                    run.views = Some(be.empty(shape.views_len())?);
                }
                let place = run.views.as_mut().expect("made above");
                be.copy_range(&x, 0, place, 0, shape.views_len())?;
                Source::Kept
            }
            BatchViews::Ready(x) => Source::Given(x),
            BatchViews::Augment { images, .. } => Source::Augment(images),
        };
        let ShapeRun {
            shape,
            values,
            index,
            views: kept,
            replay,
            ..
        } = run;
        let loss_sum = &mut self.loss_sum;
        let mut body = |model: &mut MultiExpertNet<B>| {
            let views = match &source {
                Source::Given(x) => Views::Ready(x),
                Source::Kept => Views::Ready(kept.as_ref().expect("copied above")),
                Source::Augment(images) => Views::Augment(*images),
            };
            let inputs = DeviceInputs::new(be, shape, values, index, views)?;
            step_body(be, model, ctx, inputs, sla_tables, loss_sum)
        };
        if !self.graphs {
            return body(model);
        }
        let ran = replay.run(be, "train step (CUDA graph)", || {
            let before = host_counts(model);
            body(model)?;
            let after = host_counts(model);
            Ok(after.iter().zip(&before).map(|(a, b)| a - b).collect())
        })?;
        if let Ran::Replayed(counted) = ran {
            add_host_counts(model, counted);
        }
        Ok(())
    }
}

/// The model's host-side counters, in visiting order.
fn host_counts<B: Backend>(model: &MultiExpertNet<B>) -> Vec<u64> {
    let mut counts = Vec::new();
    model.visit(&mut |s| {
        if let StateRef::Counter(c) = s {
            counts.push(c.value);
        }
    });
    counts
}

/// Adds what one step adds to the model's host-side counters (a replay runs no host code).
fn add_host_counts<B: Backend>(model: &mut MultiExpertNet<B>, step: &[u64]) {
    let mut step = step.iter();
    model.visit_mut(&mut |s| {
        if let StateMut::Counter(c) = s {
            c.value += step.next().copied().unwrap_or(0);
        }
    });
}

/// Where a step's views are: handed over, kept in the shape's place (for a graph), or to be built
/// from the resident set.
enum Source<'a, B: Backend> {
    Given(B::Buf),
    Kept,
    Augment(&'a B::Bytes),
}

/// The views of a step on the device: ready, or built from the resident set.
enum Views<'a, B: Backend> {
    Ready(&'a B::Buf),
    Augment(&'a B::Bytes),
}

/// Views of the input blocks, as the step's ops take them.
struct DeviceInputs<'a, B: Backend> {
    shape: &'a StepShape,
    lr: B::Buf,
    labels: B::Index,
    /// `(partners' labels [n], stacked partners [views * n], lambda [1])`.
    mixup: Option<(B::Index, B::Index, B::Buf)>,
    views: Views<'a, B>,
    /// `(indices [views * n], parameters)` of the augmentation.
    augment: Option<(B::Index, B::Buf)>,
}

impl<'a, B: Backend> DeviceInputs<'a, B> {
    fn new(
        be: &B,
        shape: &'a StepShape,
        values: &B::Buf,
        index: &B::Index,
        views: Views<'a, B>,
    ) -> Result<Self> {
        let n = shape.n;
        let mut at = n;
        let mut take = |len: usize| {
            let v = be.index_view(index, at, len);
            at += len;
            v
        };
        let mixup = if shape.mixup {
            let partner_labels = take(n)?;
            let partners = take(shape.views * n)?;
            Some((
                partner_labels,
                partners,
                be.view(values, StepShape::LAMBDA, 1)?,
            ))
        } else {
            None
        };
        let augment = match shape.augment {
            Some((_, words)) => Some((
                take(shape.views * n)?,
                be.view(values, StepShape::PARAMS, words)?,
            )),
            None => None,
        };
        Ok(Self {
            shape,
            lr: be.view(values, StepShape::LR, 1)?,
            labels: be.index_view(index, 0, n)?,
            mixup,
            views,
            augment,
        })
    }
}

/// The step's ops, every per-step value read from `inputs`; adds the step's loss to `loss_sum`.
fn step_body<B: Backend>(
    be: &B,
    model: &mut MultiExpertNet<B>,
    ctx: &StepContext<'_, B>,
    inputs: DeviceInputs<'_, B>,
    sla_tables: &mut [SlaTable<B>],
    loss_sum: &mut B::Buf,
) -> Result<()> {
    let StepShape {
        n,
        global_n,
        views,
        hw: (h, w),
        augment,
        ..
    } = *inputs.shape;
    let mut x = match (&inputs.views, &inputs.augment, augment) {
        (Views::Ready(x), _, _) => be.view(x, 0, be.len(x))?,
        (Views::Augment(images), Some((indices, params)), Some((spec, _))) => {
            be.range_push("augment");
            let x = be.augment_batch(images, indices, params, spec)?;
            be.range_pop();
            x
        }
        _ => bail!("train_step: augmentation without its inputs"),
    };
    if let Some((_, partners, lambda)) = &inputs.mixup {
        be.range_push("mixup");
        let d = SampleDims {
            n: views * n,
            per_sample: 3 * h * w,
        };
        x = be.mixup(&x, partners, lambda, d)?;
        be.range_pop();
    }

    let cfg = ctx.cfg;
    let classes = model.num_classes();
    be.range_push("forward");
    let outs = model.forward_train(be, x, views, n, h, w)?;
    be.range_pop();

    be.range_push("loss");
    // The first expert's term starts the total (no zero-filled accumulator to add to).
    let mut total: Option<B::Buf> = None;
    let mut dlogits = Vec::with_capacity(outs.len());
    for (k, o) in outs.iter().enumerate() {
        let targets = match &inputs.mixup {
            Some((b, _, lambda)) => LossTargets::Mixed {
                a: &inputs.labels,
                b,
                lambda,
            },
            None => LossTargets::Single(&inputs.labels),
        };
        let out = expert_loss(
            be,
            ctx.plan,
            ExpertLossInputs {
                logits: &o.logits,
                features: &o.features,
                classifier: model.classifier_weight(k),
                n,
                c: classes,
                d: model.feature_dim(),
                targets,
                adjustment: &ctx.losses.adjustment,
                class_weights: ctx.losses.class_weights.as_ref(),
                gamma: cfg.gamma,
                tau: cfg.tau,
                reduction: ctx.losses.reduction,
            },
            sla_tables.get_mut(k),
        )?;
        let eps = cfg.expert_loss_weight(k);
        let term = be.scale(&be.sum(&out.loss)?, eps / global_n as f32)?;
        match &mut total {
            Some(t) => be.add_assign(t, &term)?,
            None => total = Some(term),
        }
        // The loss's gradient is of this shard's mean; the global batch's mean weighs it n / N.
        let scale = eps * (n as f32 / global_n as f32);
        dlogits.push(if scale == 1.0 {
            out.dlogits
        } else {
            be.scale(&out.dlogits, scale)?
        });
    }
    if let Some(total) = total {
        be.add_assign(loss_sum, &total)?;
    }
    be.range_pop();

    be.range_push("backward");
    model.backward_reduced(be, &dlogits, ctx.reduce)?;
    be.range_pop();
    be.range_push("optimizer");
    sgd_update(be, model, &inputs.lr, ctx.sgd)?;
    be.range_pop();
    Ok(())
}
