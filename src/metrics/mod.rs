//! Test-set metrics from per-sample predictions: top-1 (overall, per class, many/medium/few) and the
//! expected calibration error of paper Eq. 20. Every reported number is a percentage in 0..=100.
//!
//! Predictions are the averaged softmax of the experts, `probs [n, c]`; the predicted class is the
//! arg-max (the first one on ties) and the confidence is the max probability.

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// Number of equal-width confidence bins of the ECE (as in Guo et al. 2017 and the paper's baselines).
pub const ECE_BINS: usize = 15;

/// A class is "many-shot" with more than this many training images.
pub const MANY_SHOT_ABOVE: usize = 100;
/// A class is "few-shot" with fewer than this many training images; in between is "medium".
pub const FEW_SHOT_BELOW: usize = 20;

/// The usual long-tail split of classes by training-set size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShotGroup {
    /// More than 100 training images.
    Many,
    /// 20 to 100 training images.
    Medium,
    /// Fewer than 20 training images.
    Few,
}

impl ShotGroup {
    pub fn of(train_count: usize) -> Self {
        if train_count > MANY_SHOT_ABOVE {
            ShotGroup::Many
        } else if train_count >= FEW_SHOT_BELOW {
            ShotGroup::Medium
        } else {
            ShotGroup::Few
        }
    }
}

/// Number of classes in each shot group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSizes {
    pub many: usize,
    pub medium: usize,
    pub few: usize,
}

impl GroupSizes {
    pub fn of(train_class_counts: &[usize]) -> Self {
        let mut sizes = GroupSizes::default();
        for &count in train_class_counts {
            match ShotGroup::of(count) {
                ShotGroup::Many => sizes.many += 1,
                ShotGroup::Medium => sizes.medium += 1,
                ShotGroup::Few => sizes.few += 1,
            }
        }
        sizes
    }
}

/// One confidence bin (lo, hi] of the reliability diagram; the first bin also holds confidence 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReliabilityBin {
    /// Bin edges in percent.
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    /// Accuracy and mean confidence of the bin's samples in percent; `None` for an empty bin.
    pub accuracy: Option<f64>,
    pub confidence: Option<f64>,
}

/// The metrics of one evaluation, all in percent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Number of test samples.
    pub samples: usize,
    pub top1: f64,
    /// Accuracy over the test samples whose class is many / medium / few-shot (sample-weighted, not a
    /// mean of per-class accuracies; the two agree on a class-balanced test set such as CIFAR-LT's).
    /// `None` (JSON null) when the group has no test samples, e.g. no class of that size.
    pub many: Option<f64>,
    pub medium: Option<f64>,
    pub few: Option<f64>,
    /// Expected calibration error (Eq. 20) with [`ECE_BINS`] equal-width bins.
    pub ece: f64,
    /// Top-1 of each class; `None` for a class without test samples.
    pub per_class_top1: Vec<Option<f64>>,
    pub group_sizes: GroupSizes,
    pub bins: Vec<ReliabilityBin>,
}

impl EvalMetrics {
    /// One line for a terminal, e.g. "top-1 54.12% (many 70.10, medium 53.20, few 30.00), ECE 2.10%".
    pub fn summary_line(&self) -> String {
        let group = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2}"));
        format!(
            "top-1 {:.2}% (many {}, medium {}, few {}), ECE {:.2}%",
            self.top1,
            group(self.many),
            group(self.medium),
            group(self.few),
            self.ece
        )
    }
}

/// Index of the ECE bin (lo, hi] holding `confidence`; the edges are the f32 values of k/15 so that a
/// confidence computed as exactly k/15 falls in the bin it closes (as `torch.linspace` edges do).
fn ece_bin(confidence: f32) -> usize {
    (1..ECE_BINS)
        .take_while(|&k| confidence > k as f32 / ECE_BINS as f32)
        .count()
}

/// Accumulates predictions batch by batch; [`EvalAccumulator::finish`] turns them into [`EvalMetrics`].
#[derive(Clone, Debug)]
pub struct EvalAccumulator {
    train_class_counts: Vec<usize>,
    correct_per_class: Vec<usize>, // [c]
    samples_per_class: Vec<usize>, // [c]
    bin_count: [usize; ECE_BINS],
    bin_correct: [usize; ECE_BINS],
    bin_confidence_sum: [f64; ECE_BINS],
}

impl EvalAccumulator {
    /// `train_class_counts[k]` is the number of training images of class k; its length is the number
    /// of classes.
    pub fn new(train_class_counts: &[usize]) -> Self {
        let classes = train_class_counts.len();
        Self {
            train_class_counts: train_class_counts.to_vec(),
            correct_per_class: vec![0; classes],
            samples_per_class: vec![0; classes],
            bin_count: [0; ECE_BINS],
            bin_correct: [0; ECE_BINS],
            bin_confidence_sum: [0.0; ECE_BINS],
        }
    }

    pub fn classes(&self) -> usize {
        self.train_class_counts.len()
    }

    /// Adds a batch: `probs [n, c]` row-major averaged softmax, `labels [n]`.
    pub fn add_batch(&mut self, probs: &[f32], labels: &[u32]) -> Result<()> {
        let c = self.classes();
        ensure!(c > 0, "evaluation needs at least one class");
        ensure!(
            probs.len() == labels.len() * c,
            "evaluation batch: {} probabilities for {} labels and {c} classes (expected [n, c])",
            probs.len(),
            labels.len()
        );
        for (row, &label) in probs.chunks_exact(c).zip(labels) {
            let label = label as usize;
            ensure!(
                label < c,
                "evaluation label {label} is out of range for {c} classes"
            );
            let (predicted, confidence) =
                row.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (k, &p)| {
                        if p > best.1 {
                            (k, p)
                        } else {
                            best
                        }
                    });
            ensure!(
                confidence.is_finite(),
                "evaluation: a prediction has no finite probability (the model has diverged)"
            );
            let correct = usize::from(predicted == label);
            self.samples_per_class[label] += 1;
            self.correct_per_class[label] += correct;
            let bin = ece_bin(confidence);
            self.bin_count[bin] += 1;
            self.bin_correct[bin] += correct;
            self.bin_confidence_sum[bin] += confidence as f64;
        }
        Ok(())
    }

    pub fn finish(&self) -> Result<EvalMetrics> {
        let samples: usize = self.samples_per_class.iter().sum();
        ensure!(samples > 0, "evaluation saw no test samples");
        let percent = |correct: usize, total: usize| 100.0 * correct as f64 / total as f64;

        let group_top1 = |group: ShotGroup| {
            let (mut correct, mut total) = (0, 0);
            for k in 0..self.classes() {
                if ShotGroup::of(self.train_class_counts[k]) == group {
                    correct += self.correct_per_class[k];
                    total += self.samples_per_class[k];
                }
            }
            (total > 0).then(|| percent(correct, total))
        };

        // sum_b |T_b|/N |acc_b - conf_b| = sum_b |correct_b - confidence_sum_b| / N
        let ece = 100.0
            * (0..ECE_BINS)
                .map(|b| (self.bin_correct[b] as f64 - self.bin_confidence_sum[b]).abs())
                .sum::<f64>()
            / samples as f64;

        let bins = (0..ECE_BINS)
            .map(|b| {
                let count = self.bin_count[b];
                ReliabilityBin {
                    lo: 100.0 * b as f64 / ECE_BINS as f64,
                    hi: 100.0 * (b + 1) as f64 / ECE_BINS as f64,
                    count,
                    accuracy: (count > 0).then(|| percent(self.bin_correct[b], count)),
                    confidence: (count > 0)
                        .then(|| 100.0 * self.bin_confidence_sum[b] / count as f64),
                }
            })
            .collect();

        Ok(EvalMetrics {
            samples,
            top1: percent(self.correct_per_class.iter().sum(), samples),
            many: group_top1(ShotGroup::Many),
            medium: group_top1(ShotGroup::Medium),
            few: group_top1(ShotGroup::Few),
            ece,
            per_class_top1: self
                .correct_per_class
                .iter()
                .zip(&self.samples_per_class)
                .map(|(&correct, &total)| (total > 0).then(|| percent(correct, total)))
                .collect(),
            group_sizes: GroupSizes::of(&self.train_class_counts),
            bins,
        })
    }
}

/// Metrics of a whole test set at once: `probs [n, c]`, `labels [n]`, training images per class `[c]`.
pub fn evaluate(
    probs: &[f32],
    labels: &[u32],
    train_class_counts: &[usize],
) -> Result<EvalMetrics> {
    let mut acc = EvalAccumulator::new(train_class_counts);
    acc.add_batch(probs, labels)?;
    acc.finish()
}
