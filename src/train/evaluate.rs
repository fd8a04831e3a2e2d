//! Evaluation: the experts' softmax average (paper Eq. 19) over the test set, its metrics, and the
//! per-sample predictions `ltrain eval --predictions` writes.

use super::loader::BatchLoader;
use super::source::ImageSource;
use crate::augment::Level;
use crate::backend::{Backend, RowDims};
use crate::metrics::{EvalAccumulator, EvalMetrics};
use crate::model::MultiExpertNet;
use anyhow::Result;

/// One test sample's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    pub label: u32,
    pub prediction: u32,
    /// Max of the averaged softmax.
    pub confidence: f32,
    /// Each expert's own argmax.
    pub expert_predictions: Vec<u32>,
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

/// Evaluates the model (batch norm in evaluation mode) on every sample of the loader's set
/// (see [`test_loader`]), decoding (ImageNet-LT) overlapped with the forward passes.
pub fn evaluate<B: Backend>(
    be: &B,
    model: &mut MultiExpertNet<B>,
    loader: &mut BatchLoader<'_, B>,
    train_class_counts: &[usize],
) -> Result<Evaluation> {
    let test_set = loader.source();
    let classes = test_set.num_classes();
    let (h, w) = test_set.image_hw();
    let mut acc = EvalAccumulator::new(train_class_counts);
    let mut predictions = Vec::with_capacity(test_set.len());
    let all: Vec<usize> = (0..test_set.len()).collect();
    let batches: Vec<&[usize]> = all.chunks(loader.max_batch()).collect();
    be.range_push("evaluate");
    loader.for_each(be, &batches, &[Level::Plain], 0, 0, |_, batch, views| {
        let n = batch.len();
        let x = views.build(be, batch, 1)?;
        let out = model.forward_eval(be, &x, n, h, w)?;
        let rows = RowDims { n, c: classes };
        let (conf, pred) = be.row_max(&out.probs, rows)?;
        let (conf, pred) = (be.download(&conf)?, be.download_index(&pred)?);
        let expert_preds = out
            .logits
            .iter()
            .map(|l| be.row_max(l, rows).and_then(|(_, i)| be.download_index(&i)))
            .collect::<Result<Vec<_>>>()?;
        let probs = be.download(&out.probs)?;
        let labels: Vec<u32> = batch.iter().map(|&i| test_set.labels()[i]).collect();
        acc.add_batch(&probs, &labels)?;
        for i in 0..n {
            predictions.push(Prediction {
                label: labels[i],
                prediction: pred[i],
                confidence: conf[i],
                expert_predictions: expert_preds.iter().map(|p| p[i]).collect(),
            });
        }
        Ok(())
    })?;
    be.range_pop();
    Ok(Evaluation {
        metrics: acc.finish()?,
        predictions,
    })
}
