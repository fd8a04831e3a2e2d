//! `ltrain data info`: per-class counts, imbalance and the many / medium / few split.

use serde::Serialize;

/// Many-shot classes have more than this many training images.
pub const MANY_SHOT_ABOVE: usize = 100;
/// Few-shot classes have fewer than this many training images.
pub const FEW_SHOT_BELOW: usize = 20;

/// The shot group of a class with `count` training images: many (> 100), medium (20..=100),
/// few (< 20).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shot {
    Many,
    Medium,
    Few,
}

pub fn shot_of(count: usize) -> Shot {
    if count > MANY_SHOT_ABOVE {
        Shot::Many
    } else if count >= FEW_SHOT_BELOW {
        Shot::Medium
    } else {
        Shot::Few
    }
}

/// Class ids of each shot group, from training counts.
pub fn shot_groups(train_counts: &[usize]) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let (mut many, mut medium, mut few) = (Vec::new(), Vec::new(), Vec::new());
    for (c, &k) in train_counts.iter().enumerate() {
        match shot_of(k) {
            Shot::Many => many.push(c),
            Shot::Medium => medium.push(c),
            Shot::Few => few.push(c),
        }
    }
    (many, medium, few)
}

/// A dataset summary (serialises to JSON).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DatasetInfo {
    pub name: String,
    pub classes: usize,
    /// Training images.
    pub total: usize,
    pub class_counts: Vec<usize>,
    /// Largest over smallest class count (`null` when a class is empty).
    pub imbalance: Option<f64>,
    pub many: Vec<usize>,
    pub medium: Vec<usize>,
    pub few: Vec<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_total: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_class_counts: Option<Vec<usize>>,
}

impl DatasetInfo {
    pub fn new(name: &str, train_counts: &[usize], test_counts: Option<&[usize]>) -> Self {
        let max = train_counts.iter().copied().max().unwrap_or(0);
        let min = train_counts.iter().copied().min().unwrap_or(0);
        let (many, medium, few) = shot_groups(train_counts);
        Self {
            name: name.to_string(),
            classes: train_counts.len(),
            total: train_counts.iter().sum(),
            class_counts: train_counts.to_vec(),
            imbalance: (min > 0).then(|| max as f64 / min as f64),
            many,
            medium,
            few,
            test_total: test_counts.map(|t| t.iter().sum()),
            test_class_counts: test_counts.map(<[usize]>::to_vec),
        }
    }

    /// A human-readable table: one line per class (train count, test count, shot group), then
    /// the totals.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "dataset {}: {} classes\n",
            self.name, self.classes
        ));
        out.push_str(&format!(
            "{:>6} {:>8} {:>8}  {}\n",
            "class", "train", "test", "group"
        ));
        for (c, &k) in self.class_counts.iter().enumerate() {
            let test = self
                .test_class_counts
                .as_ref()
                .map_or("-".to_string(), |t| t[c].to_string());
            let group = match shot_of(k) {
                Shot::Many => "many",
                Shot::Medium => "medium",
                Shot::Few => "few",
            };
            out.push_str(&format!("{c:>6} {k:>8} {test:>8}  {group}\n"));
        }
        let test_total = self.test_total.map_or("-".to_string(), |t| t.to_string());
        out.push_str(&format!(
            "{:>6} {:>8} {:>8}\n",
            "total", self.total, test_total
        ));
        let imbalance = self
            .imbalance
            .map_or("undefined (empty class)".to_string(), |r| format!("{r:.2}"));
        out.push_str(&format!("imbalance (max/min): {imbalance}\n"));
        out.push_str(&format!(
            "many (>{MANY_SHOT_ABOVE}): {} classes, medium ({FEW_SHOT_BELOW}..={MANY_SHOT_ABOVE}): {} classes, few (<{FEW_SHOT_BELOW}): {} classes\n",
            self.many.len(),
            self.medium.len(),
            self.few.len()
        ));
        out
    }
}
