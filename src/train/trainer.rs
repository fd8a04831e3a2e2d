//! The epoch loop of Algorithm 1 over the op interface: per epoch its plan (stage, augmentation,
//! mixup, weighting), the SLA table before the first SLA epoch, the training steps
//! ([`super::step`]), evaluation, `metrics.jsonl` and a checkpoint from which a killed run resumes
//! with the same result ([`super::run_state`]).

use super::checkpoint::load_checkpoint;
use super::evaluate::{evaluate_sharded, test_loader, Evaluation};
use super::loader::BatchLoader;
use super::run_state::{
    persist, restore, truncate_metrics, RunState, CHECKPOINT_FILE, METRICS_FILE,
};
use super::schedule::learning_rate;
use super::source::ImageSource;
use super::step::{Mixup, StepBatch, StepContext, StepRunner};
use crate::augment::Level;
use crate::backend::{Backend, SgdConfig};
use crate::config::{SlaTableRule, TrainConfig, MIN_SAMPLES_PER_RANK};
use crate::dist::{shard, Dist, World};
use crate::method::{policy, EpochPlan, LossSetup, SlaTable, SlaTableFill};
use crate::model::MultiExpertNet;
use crate::nn::{Module, StateMut};
use crate::report::{append_epoch_record, EpochRecord};
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Progress events for a front end (progress bar, log); the library prints nothing itself.
pub enum Progress<'a> {
    EpochStart {
        epoch: usize,
        epochs: usize,
        steps: usize,
        plan: &'a EpochPlan,
        lr: f32,
        /// An [`Progress::Evaluated`] follows the epoch's last step.
        evaluated: bool,
    },
    Step {
        step: usize,
        loss: Option<f32>,
        samples: usize,
    },
    SlaTableFill {
        done: usize,
        total: usize,
    },
    Evaluated(&'a EpochRecord),
}

/// How a run starts.
#[derive(Clone, Debug)]
pub enum Start {
    /// Fresh weights from the seed.
    Fresh,
    /// Fresh optimizer state, weights from a checkpoint file (`--init`).
    Init(PathBuf),
    /// Continue the run whose checkpoint is in the output directory (`--resume`).
    Resume,
}

/// How a run starts, and how it runs its steps.
pub struct RunOptions {
    pub start: Start,
    /// Each step shape captured once as a CUDA graph and replayed (same results).
    pub cuda_graphs: bool,
    /// Set (by a signal handler) to stop the run at the next step boundary with a checkpoint
    /// from which `Start::Resume` goes on as if it had not stopped ([`Interrupted`]). A run on one
    /// rank only: ranks would have to agree on the step.
    pub interrupt: Option<Arc<AtomicBool>>,
}

impl From<Start> for RunOptions {
    /// Eager steps, not interruptible.
    fn from(start: Start) -> Self {
        Self {
            start,
            cuda_graphs: false,
            interrupt: None,
        }
    }
}

/// The error of a run stopped by [`RunOptions::interrupt`]: its checkpoint holds every step
/// trained so far.
#[derive(Debug)]
pub struct Interrupted {
    /// The epoch (1-based) and the steps of it trained, of `steps`.
    pub epoch: usize,
    pub step: usize,
    pub steps: usize,
    pub checkpoint: PathBuf,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dir = self.checkpoint.parent().unwrap_or(Path::new("."));
        write!(
            f,
            "stopped after step {} of {} of epoch {}; {} holds the run so far: continue it with \
             `ltrain train --resume {}`",
            self.step,
            self.steps,
            self.epoch,
            self.checkpoint.display(),
            dir.display()
        )
    }
}

impl std::error::Error for Interrupted {}

/// How an epoch's steps ended.
enum EpochEnd {
    /// Every step trained: the epoch's mean loss and its learning rate.
    Done(f32, f32),
    /// Stopped by the interrupt after this many steps of `steps`.
    Stopped { steps_done: usize, steps: usize },
}

/// What a finished run hands to the report.
pub struct RunResult {
    pub history: Vec<EpochRecord>,
    pub last: Evaluation,
    pub train_seconds: f64,
    /// Of `train_seconds`, the time the loop waited for the data loader.
    pub data_wait_seconds: f64,
    pub samples_per_second: f64,
    pub class_counts: Vec<usize>,
}

/// What every epoch of a run trains: the model, its losses' device state and the SLA tables, and
/// what runs the steps.
struct Run<'a, B: Backend> {
    cfg: &'a TrainConfig,
    model: MultiExpertNet<B>,
    losses: LossSetup<B>,
    sla_tables: Vec<SlaTable<B>>,
    state: RunState,
    runner: StepRunner<B>,
    dist: Dist<B>,
}

/// Runs (or resumes) training as `cfg` says, writing `metrics.jsonl` and the checkpoint in `out`.
pub fn train<B: Backend>(
    be: &B,
    cfg: &TrainConfig,
    train_set: &dyn ImageSource,
    test_set: &dyn ImageSource,
    out: &Path,
    options: RunOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<RunResult> {
    train_rank(
        be,
        cfg,
        train_set,
        test_set,
        out,
        options,
        Dist::single(),
        progress,
    )
}

/// [`train`] as one rank of a data-parallel run (DistributedDataParallel semantics): every rank
/// trains its shard of each global batch of `ranks x batch_size` samples of the same epoch order,
/// the gradients summed across the ranks in the backward; batch norm per rank (or synchronised,
/// `sync_bn`), rank 0's running statistics and the merged SLA table shared, the evaluation sharded
/// and merged. Only rank 0 writes `metrics.jsonl` and the checkpoint; every rank returns the
/// result.
#[allow(clippy::too_many_arguments)]
pub fn train_rank<B: Backend>(
    be: &B,
    cfg: &TrainConfig,
    train_set: &dyn ImageSource,
    test_set: &dyn ImageSource,
    out: &Path,
    options: RunOptions,
    dist: Dist<B>,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<RunResult> {
    cfg.validate()?;
    let world = dist.world();
    check_parallel(cfg, world, options.cuda_graphs)?;
    let classes = train_set.num_classes();
    if test_set.num_classes() != classes {
        bail!(
            "the training set has {classes} classes but the test set {}",
            test_set.num_classes()
        );
    }
    let class_counts = train_set.class_counts();
    let checkpoint_path = out.join(CHECKPOINT_FILE);
    let cuda_graphs = options.cuda_graphs;
    let interrupt = options.interrupt.clone().filter(|_| world.size == 1);
    let mut run = Run::start(
        be,
        cfg,
        classes,
        &class_counts,
        &checkpoint_path,
        options,
        dist,
    )?;
    if world.is_lead() {
        truncate_metrics(&out.join(METRICS_FILE), run.state.epochs_done)?;
    }
    // An in-memory training set lives on the device; each step's views are built there.
    let mut loader = BatchLoader::new(be, train_set, cfg.batch_size, true)?;
    let mut test_loader = test_loader(be, test_set, cfg.batch_size)?;

    // Algorithm 1: every epoch trains each mini-batch of the training set under the epoch's plan.
    let mut last_eval = None;
    for epoch in run.state.epochs_done..cfg.epochs {
        let epoch_start = Instant::now();
        let waited_before = loader.waited();
        let plan = EpochPlan::for_epoch(cfg, epoch);
        if plan.needs_sla_table() && !run.state.sla_filled {
            run.fill_sla_tables(be, &mut loader, progress)?;
        }
        let end = run.train_epoch(
            be,
            &mut loader,
            &plan,
            epoch,
            interrupt.as_deref(),
            progress,
        );
        run.state.train_seconds += epoch_start.elapsed().as_secs_f64();
        run.state.data_wait_seconds += (loader.waited() - waited_before).as_secs_f64();
        let (train_loss, lr) = match end? {
            EpochEnd::Done(loss, lr) => (loss, lr),
            EpochEnd::Stopped { steps_done, steps } => {
                run.state.steps_done = steps_done;
                run.state.epoch_loss_sum = be.download(run.runner.loss_sum())?[0];
                run.persist(be, &checkpoint_path, &class_counts)?;
                return Err(Interrupted {
                    epoch: epoch + 1,
                    step: steps_done,
                    steps,
                    checkpoint: checkpoint_path,
                }
                .into());
            }
        };
        run.state.epochs_done = epoch + 1;
        (run.state.steps_done, run.state.epoch_loss_sum) = (0, 0.0);

        run.share_running_statistics(be)?;
        if evaluates(cfg, epoch) {
            let eval = run
                .evaluate(be, &mut test_loader, &class_counts, cuda_graphs)
                .with_context(|| {
                    format!(
                        "epoch {} (learning rate {}, training loss {train_loss}): the evaluation \
                         after it failed. {}",
                        epoch + 1,
                        rate(lr),
                        divergence_fix(cfg)
                    )
                })?;
            let record = EpochRecord {
                data_wait_seconds: run.state.data_wait_seconds,
                ..EpochRecord::new(
                    epoch + 1,
                    plan.stage,
                    lr,
                    train_loss,
                    run.state.train_seconds,
                    Some(&eval.metrics),
                )
            };
            if world.is_lead() {
                let metrics = out.join(METRICS_FILE);
                append_epoch_record(&metrics, &record).with_context(|| {
                    format!(
                        "epoch {}: {} could not be written; {}",
                        epoch + 1,
                        metrics.display(),
                        resume_hint(&checkpoint_path, epoch)
                    )
                })?;
            }
            progress(Progress::Evaluated(&record));
            run.state.history.push(record);
            last_eval = Some(eval);
        }
        run.persist(be, &checkpoint_path, &class_counts)
            .with_context(|| resume_hint(&checkpoint_path, epoch))?;
    }

    let last = match last_eval {
        Some(e) => e,
        // Resumed after the last epoch: evaluate the restored weights.
        None => run.evaluate(be, &mut test_loader, &class_counts, cuda_graphs)?,
    };
    let state = run.state;
    Ok(RunResult {
        history: state.history,
        last,
        samples_per_second: state.samples_seen as f64 / state.train_seconds.max(1e-9),
        train_seconds: state.train_seconds,
        data_wait_seconds: state.data_wait_seconds,
        class_counts,
    })
}

/// Whether the test set is evaluated after epoch `epoch` (0-based): every `eval_every`, and the last.
fn evaluates(cfg: &TrainConfig, epoch: usize) -> bool {
    (epoch + 1).is_multiple_of(cfg.eval_every) || epoch + 1 == cfg.epochs
}

/// What a failed write of epoch `epoch`'s files leaves: the checkpoint of the epochs before (a
/// resume redoes the epoch and replaces whatever of it was written).
fn resume_hint(checkpoint: &Path, epoch: usize) -> String {
    let dir = checkpoint.parent().unwrap_or(Path::new("."));
    match epoch {
        0 => "epoch 1 has no checkpoint: once the disk has room (or the directory is writable), \
              start the run again (what was written of epoch 1 is replaced)"
            .to_string(),
        e => format!(
            "epoch {} was not checkpointed, {} still holds epoch {e}: once the disk has room (or \
             the directory is writable) continue with `ltrain train --resume {}`, which redoes \
             epoch {} (what was written of it is replaced)",
            e + 1,
            checkpoint.display(),
            dir.display(),
            e + 1
        ),
    }
}

impl<'a, B: Backend> Run<'a, B> {
    /// Writes the checkpoint of the run so far (rank 0 alone).
    fn persist(&self, be: &B, path: &Path, class_counts: &[usize]) -> Result<()> {
        if !self.dist.world().is_lead() {
            return Ok(());
        }
        persist(
            be,
            self.cfg,
            path,
            &self.model,
            &self.sla_tables,
            &self.state,
            class_counts,
        )
    }

    /// The model initialised (Algorithm 1, line 1) or restored, as `options.start` says.
    fn start(
        be: &B,
        cfg: &'a TrainConfig,
        classes: usize,
        class_counts: &[usize],
        checkpoint_path: &Path,
        options: RunOptions,
        dist: Dist<B>,
    ) -> Result<Self> {
        let runner = StepRunner::new(be, options.cuda_graphs)?;
        let mut model = MultiExpertNet::from_config(be, cfg, classes)?;
        if cfg.sync_bn {
            model.set_sync_batch_norm(dist.peers().cloned());
        }
        let losses = LossSetup::new(be, cfg, class_counts)?;
        let mut sla_tables = if policy(cfg.loss).reweighting.rules().sla_table {
            (0..cfg.experts)
                .map(|_| SlaTable::new(be, classes, cfg.sla_table_rule))
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let mut state = RunState::default();
        match options.start {
            Start::Fresh => {}
            Start::Init(path) => {
                let (tensors, _) = load_checkpoint(&path)?;
                model
                    .load_state_dict(be, &tensors)
                    .with_context(|| format!("--init {}", path.display()))?;
            }
            Start::Resume => {
                state = restore(
                    be,
                    checkpoint_path,
                    cfg,
                    class_counts,
                    &mut model,
                    &mut sla_tables,
                )?;
                let size = dist.world().size;
                if state.world_size != size {
                    bail!(
                        "{}: the run was trained on {} ranks and cannot resume on {size}: each rank \
                         trains its shard of a global batch of ranks x batch_size samples, so resume \
                         it with {} ranks (--ranks / --gpus, or WORLD_SIZE)",
                        checkpoint_path.display(),
                        state.world_size,
                        state.world_size
                    );
                }
            }
        }
        state.world_size = dist.world().size;
        Ok(Self {
            cfg,
            model,
            losses,
            sla_tables,
            state,
            runner,
            dist,
        })
    }

    /// Gives every rank rank 0's batch-norm running statistics (DistributedDataParallel's
    /// `broadcast_buffers`), before they are used (evaluation, the SLA pass) or saved: what a
    /// resumed run restores is then what every rank had.
    fn share_running_statistics(&mut self, be: &B) -> Result<()> {
        if self.dist.peers().is_none() || self.cfg.sync_bn {
            return Ok(());
        }
        let dist = &self.dist;
        let mut result = Ok(());
        self.model.visit_mut(&mut |s| {
            if let (StateMut::Running(r), Ok(())) = (s, &result) {
                result = dist.broadcast_from_lead(be, &mut r.value);
            }
        });
        result
    }

    /// The test set evaluated, sharded across the ranks.
    fn evaluate(
        &self,
        be: &B,
        loader: &mut BatchLoader<'_, B>,
        class_counts: &[usize],
        cuda_graphs: bool,
    ) -> Result<Evaluation> {
        evaluate_sharded(
            be,
            &self.model,
            loader,
            class_counts,
            cuda_graphs,
            &self.dist,
        )
    }

    /// One epoch's steps: each mini-batch (line 3) through the [`StepRunner`] (lines 4-8), from the
    /// first one the run has not trained yet; stopped at the next step boundary once `interrupt`
    /// is set. The device is idle when it returns. A non-finite loss is an error naming the epoch,
    /// the step and the learning rate, before anything of the epoch is saved.
    fn train_epoch(
        &mut self,
        be: &B,
        loader: &mut BatchLoader<'_, B>,
        plan: &EpochPlan,
        epoch: usize,
        interrupt: Option<&AtomicBool>,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<EpochEnd> {
        let cfg = self.cfg;
        let lr = learning_rate(cfg, epoch);
        let ctx = StepContext {
            cfg,
            plan,
            losses: &self.losses,
            sgd: SgdConfig {
                momentum: cfg.momentum,
                weight_decay: cfg.weight_decay,
                nesterov: cfg.nesterov,
            },
            reduce: self.dist.peers().map(|c| c.as_ref()),
        };
        let train_set = loader.source();
        let (labels_all, hw) = (train_set.labels(), train_set.image_hw());
        let order = epoch_order(train_set.len(), cfg.seed, epoch);
        let world = self.dist.world();
        let global: Vec<&[usize]> = order
            .chunks(cfg.batch_size * world.size)
            .filter(|b| b.len() >= MIN_SAMPLES_PER_RANK * world.size)
            .collect();
        let batches: Vec<&[usize]> = global.iter().map(|b| &b[shard(b.len(), world)]).collect();
        progress(Progress::EpochStart {
            epoch,
            epochs: cfg.epochs,
            steps: batches.len(),
            plan,
            lr,
            evaluated: evaluates(cfg, epoch),
        });
        let runner = &mut self.runner;
        let done = self.state.steps_done.min(batches.len());
        runner.set_loss_sum(be, self.state.epoch_loss_sum)?;
        let (model, sla_tables, state) = (&mut self.model, &mut self.sla_tables, &mut self.state);
        let dist = &self.dist;
        let levels = plan.view_levels(cfg.experts);
        let steps = batches.len();
        let mut stopped_after = None;
        let ran = loader.for_each(
            be,
            &batches[done..],
            &levels,
            cfg.seed,
            epoch,
            |step, batch, views| {
                let step = done + step;
                let n = batch.len();
                let global_n = global[step].len();
                let labels: Vec<u32> = batch.iter().map(|&i| labels_all[i]).collect();
                let step_batch = StepBatch {
                    views_from: views,
                    views: levels.len(),
                    samples: batch,
                    labels: &labels,
                    mixup: Mixup::for_step(plan, cfg.seed, epoch, step, n),
                    hw,
                    lr,
                    global_n,
                };
                runner.run(be, model, &ctx, step_batch, sla_tables)?;
                state.samples_seen += global_n as u64;
                // Reading the loss back synchronises the device, so only every few steps.
                let loss = if step % LOSS_EVERY == LOSS_EVERY - 1 || step + 1 == steps {
                    let mean = global_loss(be, runner, dist)? / (step + 1) as f32;
                    if !mean.is_finite() {
                        bail!(diverged(cfg, epoch, step, steps, lr, mean));
                    }
                    Some(mean)
                } else {
                    None
                };
                progress(Progress::Step {
                    step,
                    loss,
                    samples: global_n,
                });
                if interrupt.is_some_and(|f| f.load(Ordering::Relaxed)) {
                    stopped_after = Some(step + 1);
                    bail!("interrupted");
                }
                Ok(())
            },
        );
        if let Some(steps_done) = stopped_after {
            // The loss of the steps since the last check, before it is saved.
            let mean = global_loss(be, runner, dist)? / steps_done as f32;
            if !mean.is_finite() {
                bail!(diverged(cfg, epoch, steps_done - 1, steps, lr, mean));
            }
            be.synchronize()?;
            return Ok(EpochEnd::Stopped { steps_done, steps });
        }
        ran?;
        if plan.needs_sla_table() {
            for t in sla_tables.iter_mut() {
                t.merge_ranks(be, dist)?;
                t.end_epoch(be)?;
            }
        }
        let train_loss = global_loss(be, &self.runner, dist)? / batches.len().max(1) as f32;
        be.synchronize()?;
        Ok(EpochEnd::Done(train_loss, lr))
    }

    /// The table S before the first SLA epoch: one no-gradient pass over the training set.
    fn fill_sla_tables(
        &mut self,
        be: &B,
        loader: &mut BatchLoader<'_, B>,
        progress: &mut dyn FnMut(Progress<'_>),
    ) -> Result<()> {
        let train_set = loader.source();
        let (h, w) = train_set.image_hw();
        let labels_all = train_set.labels();
        let all: Vec<usize> = (0..train_set.len()).collect();
        let total = all.len();
        // Each rank passes over its share of the batches; the tables are merged after.
        let world = self.dist.world();
        let batches: Vec<&[usize]> = all
            .chunks(self.cfg.batch_size)
            .skip(world.rank)
            .step_by(world.size)
            .collect();
        let mut fill = SlaTableFill::new(be, self.sla_tables.len(), train_set.num_classes())?;
        let model = &self.model;
        let mut done = 0;
        loader.for_each(
            be,
            &batches,
            &[Level::Plain],
            self.cfg.seed,
            0,
            |_, batch, views| {
                let n = batch.len();
                let x = views.build(be, batch, 1)?;
                let labels: Vec<u32> = batch.iter().map(|&i| labels_all[i]).collect();
                let labels = be.upload_index(&labels)?;
                fill.observe(be, model, &x, &labels, (n, h, w))?;
                done += n * world.size;
                progress(Progress::SlaTableFill {
                    done: done.min(total),
                    total,
                });
                Ok(())
            },
        )?;
        fill.merge_ranks(be, &self.dist)?;
        fill.finish(be, &mut self.sla_tables)?;
        self.state.sla_filled = true;
        Ok(())
    }
}

/// Images of a training set of `n` left out of every epoch: a last global batch too small to give
/// every one of `world` ranks [`MIN_SAMPLES_PER_RANK`] images (the epoch's batch filter).
pub fn images_left_out(n: usize, batch_size: usize, world: usize) -> usize {
    let last = n % (batch_size * world);
    if last < MIN_SAMPLES_PER_RANK * world {
        last
    } else {
        0
    }
}

/// Steps between two read-backs of the training loss (each waits for the device), and so between
/// two checks that it is finite.
const LOSS_EVERY: usize = 20;

/// The error of a non-finite training loss first seen after step `step` (0-based) of `steps`.
fn diverged(
    cfg: &TrainConfig,
    epoch: usize,
    step: usize,
    steps: usize,
    lr: f32,
    mean: f32,
) -> String {
    let checked = match step / LOSS_EVERY * LOSS_EVERY {
        0 => "its first check this epoch".to_string(),
        good => format!("finite after step {good}"),
    };
    format!(
        "epoch {} step {} of {steps} (learning rate {}): the training loss is {mean} ({checked}; \
         it is checked every {LOSS_EVERY} steps): the model has diverged. {}",
        epoch + 1,
        step + 1,
        rate(lr),
        divergence_fix(cfg)
    )
}

/// What a diverged run keeps and how to start it again.
fn divergence_fix(cfg: &TrainConfig) -> String {
    format!(
        "Nothing of this epoch was saved, the checkpoint of the epochs before is as it was. Start \
         again with a lower --lr (now {}) or a longer --warmup-epochs (now {}); --init with that \
         checkpoint keeps its weights",
        rate(cfg.lr),
        cfg.warmup_epochs
    )
}

/// A learning rate as a person writes it: 6 significant digits without float noise (0.005, not
/// 0.0050000004), an exponent outside [1e-4, 1e4).
fn rate(x: f32) -> String {
    let x = f64::from(x);
    let trim = |t: &str| match t.contains('.') {
        true => t.trim_end_matches('0').trim_end_matches('.').to_string(),
        false => t.to_string(),
    };
    if x != 0.0 && !(1e-4..1e4).contains(&x.abs()) {
        let text = format!("{x:.5e}");
        let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
        return format!("{}e{exponent}", trim(mantissa));
    }
    if x == 0.0 {
        return "0".into();
    }
    let digits = (5 - x.abs().log10().floor() as i32).max(0) as usize;
    trim(&format!("{x:.digits$}"))
}

/// The mean loss of the global batches since the runner's reset, read back (waits for the device).
fn global_loss<B: Backend>(be: &B, runner: &StepRunner<B>, dist: &Dist<B>) -> Result<f32> {
    if dist.peers().is_none() {
        return Ok(be.download(runner.loss_sum())?[0]);
    }
    // Each rank's sum holds its shard's part of every global batch's mean.
    let mut total = be.scale(runner.loss_sum(), 1.0)?;
    dist.all_reduce_sum(be, &mut total)?;
    Ok(be.download(&total)?[0])
}

/// What a run on several ranks does not support yet, as errors naming the setting (front ends call
/// it before they create anything).
pub fn check_parallel(cfg: &TrainConfig, world: World, cuda_graphs: bool) -> Result<()> {
    if world.size == 1 {
        return Ok(());
    }
    if cfg.sla_table_rule == SlaTableRule::Running {
        bail!(
            "sla_table_rule = \"running\" updates the table with every batch before its weights, \
             which several ranks cannot share without a collective per step: use \"epoch\" (the \
             default) with {} ranks",
            world.size
        );
    }
    if cfg.normalize_weights {
        bail!(
            "--normalize-weights divides by the global batch's summed weight, which the ranks do \
             not share yet: train without it on {} ranks, or on one",
            world.size
        );
    }
    if cuda_graphs {
        bail!(
            "--cuda-graphs on: steps of several ranks are not captured yet (their collectives run \
             between the ops); use --cuda-graphs auto or off"
        );
    }
    Ok(())
}

/// The epoch's sample order: a function of `(seed, epoch)` only, so a resumed run sees the same batches.
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed ^ 0x005e_ed0f_ba7c ^ ((epoch as u64) << 32));
    order.shuffle(&mut rng);
    order
}

#[cfg(test)]
mod tests {
    use super::rate;

    #[test]
    fn learning_rates_read_as_written() {
        assert_eq!(rate(0.05 * 0.1), "0.005");
        assert_eq!(rate(0.1), "0.1");
        assert_eq!(rate(0.025), "0.025");
        assert_eq!(rate(2.0), "2");
        assert_eq!(rate(1e30), "1e30");
        assert_eq!(rate(1e-6), "1e-6");
        assert_eq!(rate(0.0), "0");
    }
}
