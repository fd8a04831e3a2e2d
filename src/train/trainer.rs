//! The epoch loop of Algorithm 1 over the op interface: batches, per-expert views and mixup, the
//! experts' losses, backward, SGD, the SLA table, evaluation, `metrics.jsonl` and per-epoch
//! checkpoints from which a killed run resumes with the same result.

use super::checkpoint::{load_checkpoint, save_checkpoint};
use super::evaluate::{evaluate, test_loader, Evaluation};
use super::loader::BatchLoader;
use super::optimizer::sgd_update;
use super::schedule::learning_rate;
use super::source::ImageSource;
use crate::augment::{draw_mixup, Level};
use crate::backend::{Backend, CosineDims, LossReduction, LossTargets, SampleDims, SgdConfig};
use crate::config::{LossKind, SlaTableRule, TrainConfig};
use crate::method::{
    class_balanced_weights, expert_loss, inverse_frequency_weights, log_prior, EpochPlan,
    ExpertLossInputs, SlaTable,
};
use crate::model::MultiExpertNet;
use crate::nn::{NamedTensor, TensorData};
use crate::report::{append_epoch_record, EpochRecord};
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// File names inside a run directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CONFIG_FILE: &str = "config.toml";

/// Checkpoint metadata keys.
const META_CONFIG: &str = "ltrain.config";
const META_EPOCHS_DONE: &str = "ltrain.epochs_completed";
const META_HISTORY: &str = "ltrain.history";
const META_SLA_FILLED: &str = "ltrain.sla_filled";
const META_TRAIN_SECONDS: &str = "ltrain.train_seconds";
const META_DATA_WAIT_SECONDS: &str = "ltrain.data_wait_seconds";
const META_SAMPLES_SEEN: &str = "ltrain.samples_seen";
const META_CLASS_COUNTS: &str = "ltrain.class_counts";

/// Progress events for a front end (progress bar, log); the library prints nothing itself.
pub enum Progress<'a> {
    EpochStart {
        epoch: usize,
        epochs: usize,
        steps: usize,
        plan: &'a EpochPlan,
        lr: f32,
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
pub enum Start {
    /// Fresh weights from the seed.
    Fresh,
    /// Fresh optimizer state, weights from a checkpoint file (`--init`).
    Init(PathBuf),
    /// Continue the run whose checkpoint is in the output directory (`--resume`).
    Resume,
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

/// Runs (or resumes) training as `cfg` says, writing `metrics.jsonl` and the checkpoint in `out`.
pub fn train<B: Backend>(
    be: &B,
    cfg: &TrainConfig,
    train_set: &dyn ImageSource,
    test_set: &dyn ImageSource,
    out: &Path,
    start: Start,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<RunResult> {
    cfg.validate()?;
    let classes = train_set.num_classes();
    if test_set.num_classes() != classes {
        bail!(
            "the training set has {classes} classes but the test set {}",
            test_set.num_classes()
        );
    }
    let (h, w) = train_set.image_hw();
    let class_counts = train_set.class_counts();
    let mut model = MultiExpertNet::from_config(be, cfg, classes)?;

    let adjustment: Vec<f32> = log_prior(&class_counts)
        .iter()
        .map(|l| l * cfg.la_tau)
        .collect();
    let adjustment = be.upload(&adjustment)?;
    let class_weights = match cfg.loss {
        LossKind::LaRw => Some(be.upload(&inverse_frequency_weights(&class_counts))?),
        LossKind::LaCb => Some(be.upload(&class_balanced_weights(&class_counts, cfg.cb_beta))?),
        _ => None,
    };
    let mut sla_tables = if cfg.loss == LossKind::LaSla {
        (0..cfg.experts)
            .map(|_| SlaTable::new(be, classes, cfg.sla_table_rule))
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };

    let mut state = RunState::default();
    let checkpoint_path = out.join(CHECKPOINT_FILE);
    match start {
        Start::Fresh => {}
        Start::Init(path) => {
            let (tensors, _) = load_checkpoint(&path)?;
            model
                .load_state_dict(be, &tensors)
                .with_context(|| format!("--init {}", path.display()))?;
        }
        Start::Resume => {
            state = restore(be, &checkpoint_path, &mut model, &mut sla_tables)?;
        }
    }
    truncate_metrics(&out.join(METRICS_FILE), state.epochs_done)?;

    let reduction = if cfg.normalize_weights {
        LossReduction::WeightNormalized
    } else {
        LossReduction::Mean
    };
    let labels_all = train_set.labels();
    let mut last_eval = None;
    // An in-memory training set lives on the device; each step's views are built there.
    let mut loader = BatchLoader::new(be, train_set, cfg.batch_size, true)?;
    let mut test_loader = test_loader(be, test_set, cfg.batch_size)?;

    for epoch in state.epochs_done..cfg.epochs {
        let epoch_start = Instant::now();
        let waited_before = loader.waited();
        let plan = EpochPlan::for_epoch(cfg, epoch);
        let lr = learning_rate(cfg, epoch);
        let sgd = SgdConfig {
            lr,
            momentum: cfg.momentum,
            weight_decay: cfg.weight_decay,
            nesterov: cfg.nesterov,
        };
        if plan.needs_sla_table() && !state.sla_filled {
            fill_sla_tables(be, &mut model, &mut loader, &mut sla_tables, cfg, progress)?;
            state.sla_filled = true;
        }

        let order = epoch_order(train_set.len(), cfg.seed, epoch);
        let batches: Vec<&[usize]> = order
            .chunks(cfg.batch_size)
            .filter(|b| b.len() >= 2) // batch norm needs two samples
            .collect();
        progress(Progress::EpochStart {
            epoch,
            epochs: cfg.epochs,
            steps: batches.len(),
            plan: &plan,
            lr,
        });
        let mut loss_sum = be.zeros(1)?;
        let levels = plan.view_levels(cfg.experts);
        loader.for_each(
            be,
            &batches,
            &levels,
            cfg.seed,
            epoch,
            |step, batch, mut views| {
                let n = batch.len();
                let labels: Vec<u32> = batch.iter().map(|&i| labels_all[i]).collect();
                let labels_dev = be.upload_index(&labels)?;
                let mut mixed = None;
                if plan.mixup_alpha > 0.0 {
                    be.range_push("mixup");
                    let (lambda, perm) =
                        draw_mixup(cfg.seed, epoch as u32, step as u32, n, plan.mixup_alpha);
                    let perm_dev = be.upload_index(&perm)?;
                    for v in &mut views {
                        *v = be.mixup(
                            v,
                            &perm_dev,
                            lambda,
                            SampleDims {
                                n,
                                per_sample: 3 * h * w,
                            },
                        )?;
                    }
                    let partner: Vec<u32> = perm.iter().map(|&j| labels[j as usize]).collect();
                    mixed = Some((be.upload_index(&partner)?, lambda));
                    be.range_pop();
                }

                let batch_loss = train_step(
                    be,
                    &mut model,
                    &StepInputs {
                        cfg,
                        plan: &plan,
                        adjustment: &adjustment,
                        class_weights: class_weights.as_ref(),
                        reduction,
                        sgd,
                    },
                    &views,
                    &labels_dev,
                    mixed.as_ref().map(|(b, l)| (b, *l)),
                    n,
                    (h, w),
                    &mut sla_tables,
                )?;
                be.add_assign(&mut loss_sum, &batch_loss)?;

                state.samples_seen += n as u64;
                // Reading the loss back synchronises the device, so only every few steps.
                let loss = if step % 20 == 19 || step + 1 == batches.len() {
                    Some(be.download(&loss_sum)?[0] / (step + 1) as f32)
                } else {
                    None
                };
                progress(Progress::Step {
                    step,
                    loss,
                    samples: n,
                });
                Ok(())
            },
        )?;
        if plan.needs_sla_table() {
            for t in &mut sla_tables {
                t.end_epoch(be)?;
            }
        }
        let train_loss = be.download(&loss_sum)?[0] / batches.len().max(1) as f32;
        be.synchronize()?;
        state.train_seconds += epoch_start.elapsed().as_secs_f64();
        state.data_wait_seconds += (loader.waited() - waited_before).as_secs_f64();
        state.epochs_done = epoch + 1;

        if (epoch + 1) % cfg.eval_every == 0 || epoch + 1 == cfg.epochs {
            let eval = evaluate(be, &mut model, &mut test_loader, &class_counts)?;
            let record = EpochRecord {
                data_wait_seconds: state.data_wait_seconds,
                ..EpochRecord::new(
                    epoch + 1,
                    plan.stage,
                    lr,
                    train_loss,
                    state.train_seconds,
                    Some(&eval.metrics),
                )
            };
            append_epoch_record(&out.join(METRICS_FILE), &record)?;
            progress(Progress::Evaluated(&record));
            state.history.push(record);
            last_eval = Some(eval);
        }
        persist(
            be,
            cfg,
            &checkpoint_path,
            &model,
            &sla_tables,
            &state,
            &class_counts,
        )?;
    }

    let last = match last_eval {
        Some(e) => e,
        // Resumed after the last epoch: evaluate the restored weights.
        None => evaluate(be, &mut model, &mut test_loader, &class_counts)?,
    };
    Ok(RunResult {
        history: state.history,
        last,
        samples_per_second: state.samples_seen as f64 / state.train_seconds.max(1e-9),
        train_seconds: state.train_seconds,
        data_wait_seconds: state.data_wait_seconds,
        class_counts,
    })
}

/// What stays fixed across the steps of an epoch.
pub struct StepInputs<'a, B: Backend> {
    pub cfg: &'a TrainConfig,
    pub plan: &'a EpochPlan,
    /// `[c]` `la_tau * log prior`.
    pub adjustment: &'a B::Buf,
    /// `[c]` RW / CB class weights when the loss uses them.
    pub class_weights: Option<&'a B::Buf>,
    pub reduction: LossReduction,
    pub sgd: SgdConfig,
}

/// One training step: forward of all experts (`views` holds one `[n, 3, h, w]` input per expert, or
/// one shared by all), each expert's loss (Eq. 16-17), backward of their eps-weighted sum (Eq. 18) and
/// the SGD update. Returns the step's total loss as a one-element device buffer (not read back here).
#[allow(clippy::too_many_arguments)]
pub fn train_step<B: Backend>(
    be: &B,
    model: &mut MultiExpertNet<B>,
    inputs: &StepInputs<'_, B>,
    views: &[B::Buf],
    labels: &B::Index,
    mixed: Option<(&B::Index, f32)>,
    n: usize,
    (h, w): (usize, usize),
    sla_tables: &mut [SlaTable<B>],
) -> Result<B::Buf> {
    let cfg = inputs.cfg;
    let classes = model.num_classes();
    let d = model.feature_dim();
    be.range_push("forward");
    let view_refs: Vec<&B::Buf> = views.iter().collect();
    let outs = model.forward_train(be, &view_refs, n, h, w)?;
    be.range_pop();

    be.range_push("loss");
    let mut total = be.zeros(1)?;
    let mut dlogits = Vec::with_capacity(outs.len());
    for (k, o) in outs.iter().enumerate() {
        let targets = match mixed {
            Some((b, lambda)) => LossTargets::Mixed {
                a: labels,
                b,
                lambda,
            },
            None => LossTargets::Single(labels),
        };
        let out = expert_loss(
            be,
            inputs.plan,
            ExpertLossInputs {
                logits: &o.logits,
                features: &o.features,
                classifier: model.classifier_weight(k),
                n,
                c: classes,
                d,
                targets,
                adjustment: inputs.adjustment,
                class_weights: inputs.class_weights,
                gamma: cfg.gamma,
                tau: cfg.tau,
                reduction: inputs.reduction,
            },
            sla_tables.get_mut(k),
        )?;
        let eps = cfg.expert_loss_weight(k);
        be.add_assign(&mut total, &be.scale(&be.sum(&out.loss)?, eps / n as f32)?)?;
        dlogits.push(if eps == 1.0 {
            out.dlogits
        } else {
            be.scale(&out.dlogits, eps)?
        });
    }
    be.range_pop();

    be.range_push("backward");
    model.backward(be, &dlogits)?;
    be.range_pop();
    be.range_push("optimizer");
    sgd_update(be, model, inputs.sgd)?;
    be.range_pop();
    Ok(total)
}

/// The epoch's sample order: a function of `(seed, epoch)` only, so a resumed run sees the same batches.
fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed ^ 0x005e_ed0f_ba7c ^ ((epoch as u64) << 32));
    order.shuffle(&mut rng);
    order
}

/// The no-gradient pass at the stage switch that fills each expert's cos-max table (evaluation-mode
/// forward on un-augmented images).
fn fill_sla_tables<B: Backend>(
    be: &B,
    model: &mut MultiExpertNet<B>,
    loader: &mut BatchLoader<'_, B>,
    tables: &mut [SlaTable<B>],
    cfg: &TrainConfig,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<()> {
    let train_set = loader.source();
    let (h, w) = train_set.image_hw();
    let classes = train_set.num_classes();
    let labels_all = train_set.labels();
    let d = model.feature_dim();
    let all: Vec<usize> = (0..train_set.len()).collect();
    let total = all.len();
    let batches: Vec<&[usize]> = all.chunks(cfg.batch_size).collect();
    let mut fresh: Vec<SlaTable<B>> = (0..tables.len())
        .map(|_| SlaTable::new(be, classes, SlaTableRule::Epoch))
        .collect::<Result<_>>()?;
    let mut done = 0;
    loader.for_each(
        be,
        &batches,
        &[Level::Plain],
        cfg.seed,
        0,
        |_, batch, views| {
            let n = batch.len();
            let labels: Vec<u32> = batch.iter().map(|&i| labels_all[i]).collect();
            let labels = be.upload_index(&labels)?;
            let out = model.forward_eval(be, &views[0], n, h, w)?;
            for (k, table) in fresh.iter_mut().enumerate() {
                let cos = be.row_cosine(
                    &out.features[k],
                    model.classifier_weight(k),
                    &labels,
                    CosineDims { n, d, c: classes },
                )?;
                table.observe(be, &out.logits[k], &cos, &labels, n)?;
            }
            done += n;
            progress(Progress::SlaTableFill { done, total });
            Ok(())
        },
    )?;
    for (table, mut filled) in tables.iter_mut().zip(fresh) {
        filled.end_epoch(be)?;
        let current = filled.current(be)?;
        let empty = (vec![f32::NEG_INFINITY; classes], vec![0.0; classes]);
        table.restore(be, (&current.0, &current.1), (&empty.0, &empty.1))?;
    }
    Ok(())
}

/// Training progress carried across a resume.
#[derive(Default)]
struct RunState {
    epochs_done: usize,
    history: Vec<EpochRecord>,
    sla_filled: bool,
    train_seconds: f64,
    data_wait_seconds: f64,
    samples_seen: u64,
}

fn persist<B: Backend>(
    be: &B,
    cfg: &TrainConfig,
    path: &Path,
    model: &MultiExpertNet<B>,
    sla_tables: &[SlaTable<B>],
    state: &RunState,
    class_counts: &[usize],
) -> Result<()> {
    let mut tensors = model.state_dict(be)?;
    for p in model.params() {
        if let Some(v) = &p.velocity {
            tensors.push(NamedTensor {
                name: format!("optimizer.{}.momentum_buffer", p.name),
                shape: p.shape.clone(),
                data: TensorData::F32(be.download(v)?),
            });
        }
    }
    for (k, t) in sla_tables.iter().enumerate() {
        let (cl, cc) = t.current(be)?;
        let (nl, nc) = t.pending(be)?;
        for (part, values) in [
            ("current_logit", cl),
            ("current_cos", cc),
            ("pending_logit", nl),
            ("pending_cos", nc),
        ] {
            tensors.push(NamedTensor {
                name: format!("sla.{k}.{part}"),
                shape: vec![values.len()],
                data: TensorData::F32(values),
            });
        }
    }
    let mut meta = BTreeMap::new();
    meta.insert(META_CONFIG.to_string(), cfg.to_toml()?);
    meta.insert(META_EPOCHS_DONE.to_string(), state.epochs_done.to_string());
    meta.insert(
        META_HISTORY.to_string(),
        serde_json::to_string(&state.history)?,
    );
    meta.insert(META_SLA_FILLED.to_string(), state.sla_filled.to_string());
    meta.insert(
        META_TRAIN_SECONDS.to_string(),
        state.train_seconds.to_string(),
    );
    meta.insert(
        META_DATA_WAIT_SECONDS.to_string(),
        state.data_wait_seconds.to_string(),
    );
    meta.insert(
        META_SAMPLES_SEEN.to_string(),
        state.samples_seen.to_string(),
    );
    meta.insert(
        META_CLASS_COUNTS.to_string(),
        serde_json::to_string(class_counts)?,
    );
    save_checkpoint(path, &tensors, &meta)
}

fn restore<B: Backend>(
    be: &B,
    path: &Path,
    model: &mut MultiExpertNet<B>,
    sla_tables: &mut [SlaTable<B>],
) -> Result<RunState> {
    let (tensors, meta) = load_checkpoint(path)?;
    let (model_tensors, extra): (Vec<NamedTensor>, Vec<NamedTensor>) = tensors
        .into_iter()
        .partition(|t| !t.name.starts_with("optimizer.") && !t.name.starts_with("sla."));
    model
        .load_state_dict(be, &model_tensors)
        .with_context(|| format!("resuming from {}", path.display()))?;
    let extra: BTreeMap<String, NamedTensor> =
        extra.into_iter().map(|t| (t.name.clone(), t)).collect();
    let f32_of = |name: &str| -> Result<Vec<f32>> {
        match extra.get(name).map(|t| &t.data) {
            Some(TensorData::F32(v)) => Ok(v.clone()),
            _ => bail!(
                "{}: the checkpoint has no f32 tensor {name}; it was not written by `ltrain train`, \
                 use --init to start from its weights instead",
                path.display()
            ),
        }
    };
    for p in model.params_mut() {
        let name = format!("optimizer.{}.momentum_buffer", p.name);
        if extra.contains_key(&name) {
            p.velocity = Some(be.upload(&f32_of(&name)?)?);
        }
    }
    for (k, t) in sla_tables.iter_mut().enumerate() {
        let part = |p: &str| f32_of(&format!("sla.{k}.{p}"));
        let (cl, cc, nl, nc) = (
            part("current_logit")?,
            part("current_cos")?,
            part("pending_logit")?,
            part("pending_cos")?,
        );
        t.restore(be, (&cl, &cc), (&nl, &nc))?;
    }
    let get = |key: &str| -> Result<&String> {
        meta.get(key).with_context(|| {
            format!(
                "{}: checkpoint metadata lacks {key}; it was not written by `ltrain train`",
                path.display()
            )
        })
    };
    Ok(RunState {
        epochs_done: get(META_EPOCHS_DONE)?.parse()?,
        history: serde_json::from_str(get(META_HISTORY)?)?,
        sla_filled: get(META_SLA_FILLED)? == "true",
        train_seconds: get(META_TRAIN_SECONDS)?.parse()?,
        // Absent in checkpoints written before it was measured.
        data_wait_seconds: meta
            .get(META_DATA_WAIT_SECONDS)
            .map_or(Ok(0.0), |v| v.parse())?,
        samples_seen: get(META_SAMPLES_SEEN)?.parse()?,
    })
}

/// The resolved configuration stored in a checkpoint written by `ltrain train`.
pub fn checkpoint_config(path: &Path) -> Result<TrainConfig> {
    let (_, meta) = load_checkpoint(path)?;
    let text = meta.get(META_CONFIG).with_context(|| {
        format!(
            "{}: no ltrain configuration in the checkpoint metadata",
            path.display()
        )
    })?;
    TrainConfig::from_toml_str(text, &format!("{} (metadata)", path.display()))
}

/// The training class counts stored in a checkpoint written by `ltrain train` (the many / medium /
/// few split of an evaluation follows from them).
pub fn checkpoint_class_counts(path: &Path) -> Result<Vec<usize>> {
    let (_, meta) = load_checkpoint(path)?;
    let text = meta.get(META_CLASS_COUNTS).with_context(|| {
        format!(
            "{}: no training class counts in the checkpoint metadata",
            path.display()
        )
    })?;
    serde_json::from_str(text)
        .with_context(|| format!("{}: malformed {META_CLASS_COUNTS}", path.display()))
}

/// Drops `metrics.jsonl` lines of epochs after the checkpoint (a run killed between the two writes).
fn truncate_metrics(path: &Path, epochs_done: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<EpochRecord>(line).is_ok_and(|r| r.epoch <= epochs_done)
        })
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    std::fs::write(path, body).with_context(|| format!("cannot rewrite {}", path.display()))
}
