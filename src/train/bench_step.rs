//! A complete training step on random data, for throughput measurements (`ltrain bench`, the
//! criterion benches): the same [`StepRunner`] the epoch loop runs (mixup drawn per step as in
//! training, or off, CUDA graphs or not), fed in one of three ways ([`BenchInput`]) so that the cost
//! of the data path can be told apart from the step itself.

use crate::augment::{Level, CIFAR_NORMALIZATION};
use crate::backend::{augment_params, AugmentSpec, Backend, HostStaging, SgdConfig};
use crate::config::{ExpertWidth, ModelKind, TrainConfig};
use crate::method::{EpochPlan, LossSetup, SlaTable};
use crate::model::MultiExpertNet;
use crate::train::loader::BatchViews;
use crate::train::loader::STAGED_BATCHES;
use crate::train::step::{Mixup, StepBatch, StepContext, StepRunner};
use anyhow::Result;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Where the timed step's views come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchInput {
    /// Views already on the device, the same every step: the step alone.
    #[default]
    PreAugmented,
    /// The trainer's path for an in-memory set (CIFAR): a resident u8 training set, and per step
    /// each expert's parameters drawn on the host, uploaded, and the views built by
    /// `augment_batch`. The trainer draws the parameters on its loader thread, overlapped
    /// with the previous step; here the draw is inline, so the measured overhead is an upper bound.
    DeviceAugment,
    /// The trainer's path for host-decoded sets (ImageNet-LT): finished views written into staging
    /// memory and uploaded with `upload_staged` every step, rotating through as many staging sets as
    /// the trainer's loader uses (the views themselves are built once; their host-side cost is not
    /// timed).
    HostUpload,
}

impl BenchInput {
    /// The command-line spelling (`--input`).
    pub fn name(self) -> &'static str {
        match self {
            BenchInput::PreAugmented => "pre-augmented",
            BenchInput::DeviceAugment => "device-augment",
            BenchInput::HostUpload => "host-upload",
        }
    }
}

/// What to time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BenchStepConfig {
    pub model: ModelKind,
    /// ResNet-32 experts' widths.
    pub expert_width: ExpertWidth,
    pub experts: usize,
    pub batch_size: usize,
    pub classes: usize,
    /// Square input resolution.
    pub image_size: usize,
    /// Stage 2 (one shared view, no mixup, SLA weights) instead of stage 1 (one view per expert,
    /// mixup, no reweighting).
    pub stage2: bool,
    /// Mix the views in stage 1 (the trainer's default alpha), or train on them as they are (the
    /// PyTorch peer's step). Stage 2 never mixes, whatever this says.
    pub mixup: bool,
    pub input: BenchInput,
    /// Capture each step shape as a CUDA graph and replay it.
    pub cuda_graphs: bool,
}

/// Images of the resident training set of [`BenchInput::DeviceAugment`] (at least one batch).
const RESIDENT_IMAGES: usize = 2048;
/// Seed of the augmentation parameter draw.
const AUGMENT_SEED: u64 = 0;

/// The views of each step, `[views * n, 3, s, s]` stacked: one per expert in stage 1, one shared in
/// stage 2.
enum ViewSource<B: Backend> {
    Resident(B::Buf),
    DeviceAugment {
        images: B::Bytes, // [N, 3, s, s] u8
        /// Level of each view.
        levels: Vec<Level>,
        /// Sample order of the current pass over the set; each step takes the next `n`.
        order: Vec<usize>,
        cursor: usize,
        /// Passes over the set so far (the `epoch` of the parameter draw and the reshuffle's seed).
        pass: usize,
    },
    HostUpload {
        host: Vec<f32>, // [views * n, 3, s, s]
        /// Staging buffers used in turn.
        staging: Vec<B::Staging>,
        next: usize,
    },
}

impl<B: Backend> ViewSource<B> {
    /// The stacked views of the next step and the samples they show.
    fn next_input(
        &mut self,
        be: &B,
        n: usize,
        size: usize,
    ) -> Result<(BatchViews<'_, B>, Vec<usize>)> {
        let any_samples = || (0..n).collect();
        match self {
            // A view of the resident input: the step reads it, nothing writes it.
            ViewSource::Resident(x) => {
                Ok((BatchViews::Ready(be.view(x, 0, be.len(x))?), any_samples()))
            }
            ViewSource::DeviceAugment {
                images,
                levels,
                order,
                cursor,
                pass,
            } => {
                // A different batch every step, as in an epoch: the next `n` of a shuffled order,
                // reshuffled (a new pass, new parameters) when it runs out.
                if *cursor + n > order.len() {
                    *cursor = 0;
                    *pass += 1;
                    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(*pass as u64));
                }
                let batch = &order[*cursor..*cursor + n];
                *cursor += n;
                let mut params = Vec::new(); // [views * n, PARAM_WORDS], empty for the plain transform
                for &level in levels.iter() {
                    params.extend(augment_params::draw_batch(
                        batch,
                        level,
                        size,
                        size,
                        AUGMENT_SEED,
                        *pass,
                    )?);
                }
                let spec = AugmentSpec {
                    h: size,
                    w: size,
                    drawn: AugmentSpec::drawn_for(levels)?,
                    mean: CIFAR_NORMALIZATION.mean,
                    std: CIFAR_NORMALIZATION.std,
                };
                let views = BatchViews::Augment {
                    images,
                    spec,
                    params,
                };
                Ok((views, batch.to_vec()))
            }
            ViewSource::HostUpload {
                host,
                staging,
                next,
            } => {
                let buf = &mut staging[*next];
                *next = (*next + 1) % STAGED_BATCHES;
                buf.as_mut_slice()?[..host.len()].copy_from_slice(host);
                Ok((
                    BatchViews::Ready(be.upload_staged(buf, host.len())?),
                    any_samples(),
                ))
            }
        }
    }
}

/// The model, its step inputs and the data path that feeds it.
pub struct BenchStep<B: Backend> {
    cfg: TrainConfig,
    plan: EpochPlan,
    model: MultiExpertNet<B>,
    source: ViewSource<B>,
    labels: Vec<u32>, // [n]
    losses: LossSetup<B>,
    sla_tables: Vec<SlaTable<B>>,
    runner: StepRunner<B>,
    size: usize,
    /// Steps run so far (the mixup draw's step counter).
    steps: usize,
}

/// `count` random views of `len` values each, stacked.
fn random_views(rng: &mut impl Rng, count: usize, len: usize) -> Vec<f32> {
    (0..count * len)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect()
}

impl<B: Backend> BenchStep<B> {
    pub fn new(be: &B, bench: BenchStepConfig) -> Result<Self> {
        let BenchStepConfig {
            model,
            expert_width,
            experts,
            batch_size: n,
            classes: c,
            image_size: size,
            stage2,
            mixup,
            input,
            cuda_graphs,
        } = bench;
        let defaults = TrainConfig::default();
        let cfg = TrainConfig {
            model,
            expert_width,
            experts,
            batch_size: n,
            stage2_epoch: Some(if stage2 { 0 } else { 1 }),
            epochs: 2,
            // As `ltrain train --no-mixup`: the plan's alpha is 0, so no step draws a mixup.
            mixup_alpha: if mixup { defaults.mixup_alpha } else { 0.0 },
            ..defaults
        };
        let plan = EpochPlan::for_epoch(&cfg, 0);
        let net = MultiExpertNet::from_config(be, &cfg, c)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        let per_view = n * 3 * size * size;
        let view_count = plan.view_levels(experts).len();
        let source = match input {
            BenchInput::PreAugmented => {
                ViewSource::Resident(be.upload(&random_views(&mut rng, view_count, per_view))?)
            }
            BenchInput::DeviceAugment => {
                let images_n = RESIDENT_IMAGES.max(n);
                let images: Vec<u8> = (0..images_n * 3 * size * size)
                    .map(|_| rng.random())
                    .collect();
                let levels = plan.view_levels(experts);
                let mut order: Vec<usize> = (0..images_n).collect();
                order.shuffle(&mut rng);
                ViewSource::DeviceAugment {
                    images: be.upload_bytes(&images)?,
                    levels,
                    order,
                    cursor: 0,
                    pass: 0,
                }
            }
            BenchInput::HostUpload => {
                let host = random_views(&mut rng, view_count, per_view);
                let staging = (0..STAGED_BATCHES)
                    .map(|_| be.alloc_staging(host.len()))
                    .collect::<Result<_>>()?;
                ViewSource::HostUpload {
                    host,
                    staging,
                    next: 0,
                }
            }
        };
        let labels: Vec<u32> = (0..n).map(|_| rng.random_range(0..c as u32)).collect();
        // A balanced class distribution: the logit adjustment is uniform.
        let losses = LossSetup::new(be, &cfg, &vec![1; c])?;
        let sla_tables = (0..experts)
            .map(|_| SlaTable::new(be, c, cfg.sla_table_rule))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            plan,
            model: net,
            source,
            labels,
            losses,
            sla_tables,
            runner: StepRunner::new(be, cuda_graphs)?,
            size,
            steps: 0,
            cfg,
        })
    }

    /// The epoch plan the step follows (stage, mixup, reweighting).
    pub fn plan(&self) -> &EpochPlan {
        &self.plan
    }

    /// The model the steps train.
    pub fn model(&self) -> &MultiExpertNet<B> {
        &self.model
    }

    /// One training step: this step's views (by the [`BenchInput`]), then the step: mixup of the
    /// views (stage 1, unless off), forward of all experts, fused losses, backward and SGD.
    /// Asynchronous on the GPU; call `be.synchronize()` before reading a clock.
    pub fn run(&mut self, be: &B) -> Result<()> {
        let (n, size) = (self.labels.len(), self.size);
        let (views, samples) = self.source.next_input(be, n, size)?;
        let ctx = StepContext {
            cfg: &self.cfg,
            plan: &self.plan,
            losses: &self.losses,
            sgd: SgdConfig {
                momentum: 0.9,
                weight_decay: 5e-4,
                nesterov: false,
            },
            reduce: None,
        };
        let batch = StepBatch {
            views_from: views,
            views: self.plan.view_levels(self.cfg.experts).len(),
            samples: &samples,
            labels: &self.labels,
            mixup: Mixup::for_step(&self.plan, self.cfg.seed, 0, self.steps, n),
            hw: (size, size),
            lr: 0.01,
            global_n: n,
        };
        self.runner
            .run(be, &mut self.model, &ctx, batch, &mut self.sla_tables)?;
        self.steps += 1;
        Ok(())
    }
}
