//! Metrics against hand-computed values and a textbook ECE.

use ltrain::metrics::{evaluate, EvalAccumulator, EvalMetrics, ShotGroup, ECE_BINS};
use rand::{Rng, SeedableRng};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-4
}

/// Six samples, three classes with 500 / 60 / 10 training images (one class per shot group).
///   sample  probs               label  predicted  conf  ECE bin (lo, hi] in 1/15
///   0       .95 .03 .02         0      0 ok       .95   14
///   1       .95 .03 .02         1      0 wrong    .95   14
///   2       .01 .02 .97         2      2 ok       .97   14
///   3       .25 .55 .20         1      1 ok       .55   8
///   4       .20 .25 .55         0      2 wrong    .55   8
///   5       .35 .33 .32         1      0 wrong    .35   5
/// ECE = (|2 - 2.87| + |1 - 1.10| + |0 - 0.35|) / 6 = 1.32 / 6 = 22 %.
fn example() -> (Vec<f32>, Vec<u32>, Vec<usize>) {
    let probs = vec![
        0.95, 0.03, 0.02, //
        0.95, 0.03, 0.02, //
        0.01, 0.02, 0.97, //
        0.25, 0.55, 0.20, //
        0.20, 0.25, 0.55, //
        0.35, 0.33, 0.32,
    ];
    (probs, vec![0, 1, 2, 1, 0, 1], vec![500, 60, 10])
}

#[test]
fn hand_computed_example() {
    let (probs, labels, counts) = example();
    let m = evaluate(&probs, &labels, &counts).unwrap();
    assert_eq!(m.samples, 6);
    assert!(close(m.top1, 50.0), "top1 {}", m.top1);
    assert!(close(m.ece, 22.0), "ece {}", m.ece);
    let per_class: Vec<f64> = m.per_class_top1.iter().map(|v| v.unwrap()).collect();
    assert!(
        close(per_class[0], 50.0) && close(per_class[1], 100.0 / 3.0) && close(per_class[2], 100.0)
    );
    assert!(close(m.many.unwrap(), 50.0));
    assert!(close(m.medium.unwrap(), 100.0 / 3.0));
    assert!(close(m.few.unwrap(), 100.0));
    assert_eq!(
        (m.group_sizes.many, m.group_sizes.medium, m.group_sizes.few),
        (1, 1, 1)
    );

    assert_eq!(m.bins.len(), ECE_BINS);
    for (b, bin) in m.bins.iter().enumerate() {
        assert!(
            close(bin.lo, 100.0 * b as f64 / 15.0) && close(bin.hi, 100.0 * (b + 1) as f64 / 15.0)
        );
        let expected = match b {
            14 => Some((3, 200.0 / 3.0, (95.0 + 95.0 + 97.0) / 3.0)),
            8 => Some((2, 50.0, 55.0)),
            5 => Some((1, 0.0, 35.0)),
            _ => None,
        };
        match expected {
            Some((count, acc, conf)) => {
                assert_eq!(bin.count, count, "bin {b}");
                assert!(close(bin.accuracy.unwrap(), acc), "bin {b} accuracy");
                assert!(close(bin.confidence.unwrap(), conf), "bin {b} confidence");
            }
            None => assert_eq!(
                (bin.count, bin.accuracy, bin.confidence),
                (0, None, None),
                "bin {b}"
            ),
        }
    }
}

#[test]
fn batches_accumulate_to_the_whole() {
    let (probs, labels, counts) = example();
    let whole = evaluate(&probs, &labels, &counts).unwrap();
    let mut acc = EvalAccumulator::new(&counts);
    acc.add_batch(&probs[..12], &labels[..4]).unwrap();
    acc.add_batch(&probs[12..], &labels[4..]).unwrap();
    assert_eq!(acc.finish().unwrap(), whole);
}

fn bin_of_single(row: &[f32]) -> usize {
    let counts = vec![500; row.len()];
    let m = evaluate(row, &[0], &counts).unwrap();
    let bins: Vec<usize> = (0..ECE_BINS).filter(|&b| m.bins[b].count == 1).collect();
    assert_eq!(bins.len(), 1);
    bins[0]
}

#[test]
fn bin_edges() {
    // Bins are (lo, hi]: a confidence on an edge belongs to the bin it closes.
    assert_eq!(bin_of_single(&[1.0, 0.0]), 14);
    assert_eq!(bin_of_single(&[0.6, 0.4]), 8); // 9/15
    assert_eq!(bin_of_single(&[0.8, 0.2]), 11); // 12/15
    assert_eq!(bin_of_single(&[0.600_001, 0.399_999]), 9);
    assert_eq!(bin_of_single(&[0.2; 5]), 2); // 3/15; ties predict the first class
                                             // The first bin also holds 0.
    assert_eq!(bin_of_single(&[0.0, 0.0]), 0);
    // Confidence 1 and correct: perfectly calibrated.
    assert!(close(
        evaluate(&[1.0, 0.0], &[0], &[500, 500]).unwrap().ece,
        0.0
    ));
    // Confidence 0.6 and wrong: ECE 60.
    assert!(close(
        evaluate(&[0.6, 0.4], &[1], &[500, 500]).unwrap().ece,
        60.0
    ));
}

#[test]
fn ties_predict_the_first_class() {
    let m = evaluate(&[0.5, 0.5, 0.5, 0.5], &[0, 1], &[500, 500]).unwrap();
    assert_eq!(m.per_class_top1, vec![Some(100.0), Some(0.0)]);
}

#[test]
fn group_accuracy_is_over_samples_and_empty_groups_are_null() {
    // Two many-shot classes: class 0 one correct sample, class 1 three wrong ones. Over samples the
    // group is 25 % (a mean of class accuracies would say 50 %). No medium or few class.
    let probs = [0.9, 0.1, 0.9, 0.1, 0.9, 0.1, 0.9, 0.1];
    let m = evaluate(&probs, &[0, 1, 1, 1], &[500, 101]).unwrap();
    assert!(close(m.many.unwrap(), 25.0));
    assert_eq!((m.medium, m.few), (None, None));
    let json = serde_json::to_value(&m).unwrap();
    assert!(json["medium"].is_null() && json["few"].is_null());
    assert!(close(json["many"].as_f64().unwrap(), 25.0));
    let back: EvalMetrics = serde_json::from_value(json).unwrap();
    assert_eq!(back, m);
}

#[test]
fn shot_group_thresholds() {
    assert_eq!(ShotGroup::of(101), ShotGroup::Many);
    assert_eq!(ShotGroup::of(100), ShotGroup::Medium);
    assert_eq!(ShotGroup::of(20), ShotGroup::Medium);
    assert_eq!(ShotGroup::of(19), ShotGroup::Few);
}

#[test]
fn a_class_without_test_samples_is_null() {
    let m = evaluate(&[0.9, 0.05, 0.05], &[0], &[500, 50, 5]).unwrap();
    assert_eq!(m.per_class_top1, vec![Some(100.0), None, None]);
    assert_eq!((m.medium, m.few), (None, None));
}

#[test]
fn ece_matches_the_textbook_formula_on_random_predictions() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (n, c) = (2000, 10);
    let mut probs = Vec::with_capacity(n * c);
    for _ in 0..n {
        let logits: Vec<f32> = (0..c).map(|_| rng.random_range(-3.0f32..3.0)).collect();
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        probs.extend(logits.iter().map(|l| l.exp() / z));
    }
    let labels: Vec<u32> = (0..n).map(|_| rng.random_range(0..c as u32)).collect();
    let m = evaluate(&probs, &labels, &[200; 10]).unwrap();

    // sum_b |T_b|/N |acc(T_b) - conf(T_b)| with bins found by floor(conf * 15) (no sample lies on an
    // edge here with probability 1).
    let mut members: Vec<Vec<(bool, f64)>> = vec![Vec::new(); 15];
    for (row, &label) in probs.chunks(c).zip(&labels) {
        let (pred, conf) =
            row.iter()
                .enumerate()
                .fold((0, -1.0f32), |b, (k, &p)| if p > b.1 { (k, p) } else { b });
        let bin = ((conf as f64 * 15.0).floor() as usize).min(14);
        members[bin].push((pred == label as usize, conf as f64));
    }
    let ece: f64 = members
        .iter()
        .filter(|m| !m.is_empty())
        .map(|m| {
            let acc = m.iter().filter(|s| s.0).count() as f64 / m.len() as f64;
            let conf = m.iter().map(|s| s.1).sum::<f64>() / m.len() as f64;
            m.len() as f64 / n as f64 * (acc - conf).abs()
        })
        .sum();
    assert!(
        (m.ece - 100.0 * ece).abs() < 1e-6,
        "{} vs {}",
        m.ece,
        100.0 * ece
    );
    let counts: Vec<usize> = members.iter().map(|m| m.len()).collect();
    assert_eq!(m.bins.iter().map(|b| b.count).collect::<Vec<_>>(), counts);
}

#[test]
fn bad_input_is_an_error() {
    let err = evaluate(&[0.5, 0.5], &[2], &[10, 10])
        .unwrap_err()
        .to_string();
    assert!(err.contains("label 2"), "{err}");
    assert!(evaluate(&[0.5, 0.5, 0.1], &[0], &[10, 10]).is_err());
    assert!(evaluate(&[], &[], &[10, 10]).is_err());
    assert!(evaluate(&[f32::NAN, f32::NAN], &[0], &[10, 10]).is_err());
}

#[test]
fn summary_line() {
    let (probs, labels, counts) = example();
    let m = evaluate(&probs, &labels, &counts).unwrap();
    assert_eq!(
        m.summary_line(),
        "top-1 50.00% (many 50.00, medium 33.33, few 100.00), ECE 22.00%"
    );
}
