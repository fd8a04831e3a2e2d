//! Class-level quantities computed once from the training class counts.

/// `log(n_c / N)`: the log prior of paper Eq. 7 (mu = P_train / P_test with a balanced test set,
/// up to a constant that softmax ignores). A class with no training sample gets `log(0.5 / N)` so the
/// adjustment stays finite.
pub fn log_prior(class_counts: &[usize]) -> Vec<f32> {
    let total: usize = class_counts.iter().sum();
    let total = total.max(1) as f64;
    class_counts
        .iter()
        .map(|&n| ((n as f64).max(0.5) / total).ln() as f32)
        .collect()
}

/// Inverse class frequency, normalised so the weights sum to the number of classes (LDAM-DRW's RW).
pub fn inverse_frequency_weights(class_counts: &[usize]) -> Vec<f32> {
    normalise_to_class_count(class_counts.iter().map(|&n| 1.0 / (n.max(1) as f64)))
}

/// Class-balanced weights (Cui et al. 2019): `(1 - beta) / (1 - beta^n_c)`, normalised to sum to the
/// number of classes.
pub fn class_balanced_weights(class_counts: &[usize], beta: f64) -> Vec<f32> {
    normalise_to_class_count(
        class_counts
            .iter()
            .map(|&n| (1.0 - beta) / (1.0 - beta.powi(n.max(1) as i32))),
    )
}

fn normalise_to_class_count(raw: impl Iterator<Item = f64>) -> Vec<f32> {
    let raw: Vec<f64> = raw.collect();
    let sum: f64 = raw.iter().sum();
    let c = raw.len() as f64;
    raw.iter().map(|w| (w / sum * c) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_prior_is_log_frequency() {
        let p = log_prior(&[75, 25]);
        assert!((p[0] - 0.75f32.ln()).abs() < 1e-6);
        assert!((p[1] - 0.25f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn inverse_frequency_by_hand() {
        // 1/100, 1/10 → sum 0.11 → weights 2 * (0.01/0.11, 0.1/0.11)
        let w = inverse_frequency_weights(&[100, 10]);
        assert!((w[0] - 2.0 * 0.01 / 0.11).abs() < 1e-6);
        assert!((w[1] - 2.0 * 0.1 / 0.11).abs() < 1e-6);
    }

    #[test]
    fn class_balanced_by_hand() {
        let beta: f64 = 0.9;
        let e0 = (1.0 - beta) / (1.0 - beta.powi(2));
        let e1 = (1.0 - beta) / (1.0 - beta.powi(1));
        let s = e0 + e1;
        let w = class_balanced_weights(&[2, 1], beta);
        assert!((w[0] as f64 - 2.0 * e0 / s).abs() < 1e-6);
        assert!((w[1] as f64 - 2.0 * e1 / s).abs() < 1e-6);
        // beta -> 0 gives equal weights
        let w = class_balanced_weights(&[500, 5], 0.0);
        assert!((w[0] - 1.0).abs() < 1e-6 && (w[1] - 1.0).abs() < 1e-6);
    }
}
