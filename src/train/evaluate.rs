//! Evaluation: the experts' softmax average (paper Eq. 19) over the test set, its metrics, and the
//! per-sample predictions `ltrain eval --predictions` writes.

use super::graphs::Replay;
use super::loader::BatchLoader;
use super::source::ImageSource;
use crate::augment::Level;
use crate::backend::{Backend, RowDims};
use crate::dist::Dist;
use crate::metrics::{EvalAccumulator, EvalMetrics};
use crate::model::MultiExpertNet;
use anyhow::{ensure, Result};

/// One test sample's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub label: u32,
    pub prediction: u32,
    /// Max of the averaged softmax.
    pub confidence: f32,
    /// Each expert's own argmax.
    pub expert_predictions: Vec<u32>,
    /// The averaged softmax over the classes (what `prediction` and `confidence` are the argmax
    /// and max of); empty unless asked for ([`evaluate_with_probabilities`]).
    pub probabilities: Vec<f32>,
}

pub struct Evaluation {
    pub metrics: EvalMetrics,
    pub predictions: Vec<Prediction>,
}

/// A loader for evaluating on `test_set` in batches of `batch_size`: the host path, since the test set
/// is read once per evaluation (an in-memory set is not worth uploading as bytes). Keep it across
/// evaluations: its staging memory is reused.
pub fn test_loader<'a, B: Backend>(
    be: &B,
    test_set: &'a dyn ImageSource,
    batch_size: usize,
) -> Result<BatchLoader<'a, B>> {
    BatchLoader::new(be, test_set, batch_size, false)
}

/// What one batch's ops leave on the device: the averaged softmax `[n, c]`, its max and argmax, and
/// each expert's argmax.
struct BatchOut<B: Backend> {
    probs: B::Buf,
    confidence: B::Buf,
    prediction: B::Index,
    expert_predictions: Vec<B::Index>,
}

fn batch_ops<B: Backend>(
    be: &B,
    model: &MultiExpertNet<B>,
    x: &B::Buf,
    (n, h, w): (usize, usize, usize),
    classes: usize,
) -> Result<BatchOut<B>> {
    let out = model.forward_eval(be, x, n, h, w)?;
    let rows = RowDims { n, c: classes };
    let (confidence, prediction) = be.row_max(&out.probs, rows)?;
    let expert_predictions = out
        .logits
        .iter()
        .map(|l| be.row_max(l, rows).map(|(_, i)| i))
        .collect::<Result<Vec<_>>>()?;
    Ok(BatchOut {
        probs: out.probs,
        confidence,
        prediction,
        expert_predictions,
    })
}

/// One batch size's input place and graph.
struct BatchGraph<B: Backend> {
    n: usize,
    /// `[n, 3, h, w]`: each batch's views are copied here, where the graph reads them.
    x: B::Buf,
    replay: Replay<B, BatchOut<B>>,
}

/// Evaluates the model (batch norm in evaluation mode) on every sample of the loader's set
/// (see [`test_loader`]), decoding (ImageNet-LT) overlapped with the forward passes. With
/// `cuda_graphs`, each batch size's forward is captured once and replayed.
pub fn evaluate<B: Backend>(
    be: &B,
    model: &MultiExpertNet<B>,
    loader: &mut BatchLoader<'_, B>,
    train_class_counts: &[usize],
    cuda_graphs: bool,
) -> Result<Evaluation> {
    evaluate_sharded(
        be,
        model,
        loader,
        train_class_counts,
        cuda_graphs,
        &Dist::single(),
    )
}

/// [`evaluate`], each prediction with its averaged softmax ([`Prediction::probabilities`]): the
/// whole test set's probabilities are held, samples x classes floats.
pub fn evaluate_with_probabilities<B: Backend>(
    be: &B,
    model: &MultiExpertNet<B>,
    loader: &mut BatchLoader<'_, B>,
    train_class_counts: &[usize],
    cuda_graphs: bool,
) -> Result<Evaluation> {
    evaluate_on_ranks(
        be,
        model,
        loader,
        train_class_counts,
        cuda_graphs,
        &Dist::single(),
        true,
    )
}

/// [`evaluate`] on the ranks of `dist`: rank `r` evaluates batches `r, r + size, ...` of the
/// single-process batching, and every rank merges all batches' outcomes in batch order, so the
/// metrics and predictions are those of one process evaluating the whole set.
pub fn evaluate_sharded<B: Backend>(
    be: &B,
    model: &MultiExpertNet<B>,
    loader: &mut BatchLoader<'_, B>,
    train_class_counts: &[usize],
    cuda_graphs: bool,
    dist: &Dist<B>,
) -> Result<Evaluation> {
    evaluate_on_ranks(
        be,
        model,
        loader,
        train_class_counts,
        cuda_graphs,
        dist,
        false,
    )
}

/// [`evaluate_sharded`], the probabilities kept in the predictions if `keep_probabilities`.
fn evaluate_on_ranks<B: Backend>(
    be: &B,
    model: &MultiExpertNet<B>,
    loader: &mut BatchLoader<'_, B>,
    train_class_counts: &[usize],
    cuda_graphs: bool,
    dist: &Dist<B>,
    keep_probabilities: bool,
) -> Result<Evaluation> {
    let test_set = loader.source();
    let classes = test_set.num_classes();
    let (h, w) = test_set.image_hw();
    let experts = model.experts();
    let world = dist.world();
    let all: Vec<usize> = (0..test_set.len()).collect();
    let batches: Vec<&[usize]> = all.chunks(loader.max_batch()).collect();
    let mine: Vec<&[usize]> = batches
        .iter()
        .skip(world.rank)
        .step_by(world.size)
        .copied()
        .collect();
    let mut graphs: Vec<BatchGraph<B>> = Vec::new();
    let mut acc = EvalAccumulator::new(train_class_counts);
    let mut predictions = Vec::with_capacity(test_set.len());
    let rounds = batches.len().div_ceil(world.size);
    // Round j holds batches j * size .. (j + 1) * size, one per rank: each rank's record of its
    // batch of the round (`[probs n*c | confidence n | prediction n | expert predictions
    // experts*n]`, the indices as their bits; empty past the last batch), gathered and merged in
    // batch order as the round ends, so one round's outputs are held at a time.
    let mut merge = |round: usize, record: Vec<f32>| -> Result<()> {
        for (rank, record) in dist.gather_host(be, &record)?.into_iter().enumerate() {
            let Some(batch) = batches.get(round * world.size + rank) else {
                continue;
            };
            let n = batch.len();
            ensure!(
                record.len() == n * (classes + 2 + experts),
                "evaluation: rank {rank} returned {} values for a batch of {n}",
                record.len()
            );
            let (probs, rest) = record.split_at(n * classes);
            let labels: Vec<u32> = batch.iter().map(|&i| test_set.labels()[i]).collect();
            acc.add_batch(probs, &labels)?;
            let at = |k: usize, i: usize| rest[k * n + i];
            for (i, &label) in labels.iter().enumerate() {
                predictions.push(Prediction {
                    label,
                    prediction: at(1, i).to_bits(),
                    confidence: at(0, i),
                    expert_predictions: (0..experts).map(|e| at(2 + e, i).to_bits()).collect(),
                    probabilities: if keep_probabilities {
                        probs[i * classes..(i + 1) * classes].to_vec()
                    } else {
                        Vec::new()
                    },
                });
            }
        }
        Ok(())
    };
    be.range_push("evaluate");
    loader.for_each(be, &mine, &[Level::Plain], 0, 0, |round, batch, views| {
        let n = batch.len();
        let x = views.build(be, batch, 1)?;
        let (eager, ran);
        let out = if cuda_graphs {
            let at = match graphs.iter().position(|g| g.n == n) {
                Some(at) => at,
                None => {
                    graphs.push(BatchGraph {
                        n,
                        x: be.empty(n * 3 * h * w)?,
                        replay: Replay::default(),
                    });
                    graphs.len() - 1
                }
            };
            let BatchGraph {
                x: place, replay, ..
            } = &mut graphs[at];
            be.copy_range(&x, 0, place, 0, n * 3 * h * w)?;
            let place = &*place;
            ran = replay.run(be, "evaluate batch (CUDA graph)", || {
                batch_ops(be, model, place, (n, h, w), classes)
            })?;
            ran.value()
        } else {
            eager = batch_ops(be, model, &x, (n, h, w), classes)?;
            &eager
        };
        let mut record = be.download(&out.probs)?;
        record.extend(be.download(&out.confidence)?);
        let bits = |i: &B::Index| -> Result<Vec<f32>> {
            Ok(be
                .download_index(i)?
                .into_iter()
                .map(f32::from_bits)
                .collect())
        };
        record.extend(bits(&out.prediction)?);
        for p in &out.expert_predictions {
            record.extend(bits(p)?);
        }
        merge(round, record)
    })?;
    be.range_pop();
    // A rank with one batch fewer still takes part in the last round.
    for round in mine.len()..rounds {
        merge(round, Vec::new())?;
    }
    Ok(Evaluation {
        metrics: acc.finish()?,
        predictions,
    })
}
