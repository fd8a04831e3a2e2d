//! The LDAM-DRW long-tail protocol: class `c` keeps `n_c = int(n_max * (1/rho)^(c / (C - 1)))`
//! images, computed in f64 exactly as numpy does (`1/rho` is the correctly rounded decimal
//! literal: rho = 100 gives 0.01).
//!
//! Which images are kept, in order of preference:
//! 1. the official full training set (50,000 images in the official order, rho >= 10): the exact
//!    LDAM subsets, from the embedded rho = 10 index lists (`data/*_lt_r10_indices.u16le`; the
//!    first `n_c(rho)` entries of each class are the LDAM subset for every rho >= 10);
//! 2. a class-grouped file (each class one contiguous run, classes in order, e.g. the shared
//!    `train_lt_r10.bin`): the first `n_c` records of each class, which is again the LDAM subset
//!    when the file is an LDAM superset;
//! 3. otherwise (rho < 10, other files): a seeded per-class shuffle — the images of class c in
//!    file order, Fisher–Yates shuffled by the Philox stream `(seed, STREAM_LT_SHUFFLE, c, 0)`,
//!    first `n_c` kept.
//!
//! `n_max` is the largest class count of the source set. The subset is grouped by class.

use anyhow::{bail, Result};

use super::cifar::CifarVariant;
use super::ImageSet;
use crate::augment::rng::{PhiloxStream, STREAM_LT_SHUFFLE};

const CIFAR10_LT_R10: &[u8] = include_bytes!("../../data/cifar10_lt_r10_indices.u16le");
const CIFAR100_LT_R10: &[u8] = include_bytes!("../../data/cifar100_lt_r10_indices.u16le");

/// `int(n_max * imb_factor**(c / (classes - 1.0)))` with `imb_factor = 1 / rho`, in f64.
pub fn lt_count(n_max: usize, rho: f64, c: usize, classes: usize) -> usize {
    if classes <= 1 {
        return n_max;
    }
    let imb_factor = 1.0 / rho;
    (n_max as f64 * imb_factor.powf(c as f64 / (classes as f64 - 1.0))) as usize
}

/// The per-class counts of the exponential profile.
pub fn lt_counts(n_max: usize, rho: f64, classes: usize) -> Vec<usize> {
    (0..classes)
        .map(|c| lt_count(n_max, rho, c, classes))
        .collect()
}

/// The embedded LDAM rho = 10 superset for a variant: per class, the original train indices in
/// the LDAM shuffle order.
pub fn ldam_superset(variant: CifarVariant) -> Vec<Vec<usize>> {
    let bytes = match variant {
        CifarVariant::Cifar10 => CIFAR10_LT_R10,
        CifarVariant::Cifar100 => CIFAR100_LT_R10,
    };
    let all: Vec<usize> = bytes
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
        .collect();
    let classes = variant.classes();
    let n_max = 50_000 / classes;
    let mut out = Vec::with_capacity(classes);
    let mut start = 0;
    for count in lt_counts(n_max, 10.0, classes) {
        out.push(all[start..start + count].to_vec());
        start += count;
    }
    debug_assert_eq!(start, all.len());
    out
}

/// How a long-tailed subset was chosen.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LtMethod {
    /// The exact LDAM-DRW subset from the embedded index lists.
    LdamIndex,
    /// Per-class prefixes of a class-grouped file.
    GroupedPrefix,
    /// Seeded per-class shuffle.
    SeededShuffle { seed: u64 },
}

impl std::fmt::Display for LtMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LtMethod::LdamIndex => write!(f, "exact LDAM-DRW subset (embedded index lists)"),
            LtMethod::GroupedPrefix => write!(f, "per-class prefixes of a class-grouped file"),
            LtMethod::SeededShuffle { seed } => write!(f, "seeded per-class shuffle (seed {seed})"),
        }
    }
}

/// A long-tailed subset: the images, the source indices they came from, and the method.
#[derive(Clone, Debug)]
pub struct LtSubset {
    pub set: ImageSet,
    pub source_indices: Vec<usize>,
    pub method: LtMethod,
}

/// Whether every class forms one contiguous run and the runs come in class order.
pub fn is_class_grouped(labels: &[u32]) -> bool {
    labels.windows(2).all(|w| w[0] <= w[1])
}

/// Cut the long-tailed subset with imbalance `rho` (>= 1) from `set`. `variant` enables the exact
/// LDAM path for the official full training set.
pub fn long_tail(
    set: &ImageSet,
    variant: Option<CifarVariant>,
    rho: f64,
    seed: u64,
) -> Result<LtSubset> {
    if !(rho >= 1.0 && rho.is_finite()) {
        bail!("imbalance factor rho must be a finite number >= 1, got {rho}");
    }
    let counts = set.class_counts();
    let n_max = counts.iter().copied().max().unwrap_or(0);
    let targets = lt_counts(n_max, rho, set.classes);
    if let Some(short) = (0..set.classes).find(|&c| counts[c] < targets[c]) {
        bail!(
            "class {short} has {} images but rho={rho} with n_max={n_max} needs {}: the source \
             set is already more imbalanced than requested",
            counts[short],
            targets[short]
        );
    }

    if let Some(variant) = variant {
        let official = set.n == 50_000
            && set.classes == variant.classes()
            && counts.iter().all(|&k| k == 50_000 / variant.classes());
        if official && rho >= 10.0 {
            let superset = ldam_superset(variant);
            let order_matches = superset
                .iter()
                .enumerate()
                .all(|(c, idx)| idx.iter().all(|&i| set.labels[i] as usize == c));
            if order_matches {
                let indices: Vec<usize> = superset
                    .iter()
                    .zip(&targets)
                    .flat_map(|(idx, &k)| idx[..k].iter().copied())
                    .collect();
                return Ok(LtSubset {
                    set: set.subset(&indices),
                    source_indices: indices,
                    method: LtMethod::LdamIndex,
                });
            }
        }
    }

    let mut per_class: Vec<Vec<usize>> = vec![Vec::new(); set.classes];
    for (i, &y) in set.labels.iter().enumerate() {
        per_class[y as usize].push(i);
    }
    let method = if is_class_grouped(&set.labels) && counts.first() == Some(&n_max) {
        LtMethod::GroupedPrefix
    } else {
        for (c, idx) in per_class.iter_mut().enumerate() {
            PhiloxStream::new(seed, STREAM_LT_SHUFFLE, c as u32, 0).shuffle(idx);
        }
        LtMethod::SeededShuffle { seed }
    };
    let indices: Vec<usize> = per_class
        .iter()
        .zip(&targets)
        .flat_map(|(idx, &k)| idx[..k].iter().copied())
        .collect();
    Ok(LtSubset {
        set: set.subset(&indices),
        source_indices: indices,
        method,
    })
}
