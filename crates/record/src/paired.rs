//! Intervals, paired tests and the 1-10 scale. Pure functions: a results file's per-item verdicts
//! are enough to recompute every number.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Two-sided 95% normal quantile.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Wilson score interval for `k` successes in `n` trials at 95%: (low, high). `(0, 1)` for n = 0.
pub fn wilson(k: f64, n: f64) -> (f64, f64) {
    if n <= 0.0 {
        return (0.0, 1.0);
    }
    let p = (k / n).clamp(0.0, 1.0);
    let z2 = Z95 * Z95;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = Z95 / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    // Exact bounds at the ends (rounding would otherwise leave e.g. 1e-17 for k = 0).
    let lo = if k <= 0.0 {
        0.0
    } else {
        (center - half).max(0.0)
    };
    let hi = if k >= n {
        1.0
    } else {
        (center + half).min(1.0)
    };
    (lo, hi)
}

/// Exact two-sided McNemar test: `b` items only A got right, `c` items only B got right.
/// p = min(1, 2 · P(X ≤ min(b, c))) with X ~ Binomial(b + c, 1/2); 1 when b + c = 0.
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // Sum C(n, i) / 2^n in log space, so large n does not overflow.
    let ln_half_n = -(n as f64) * std::f64::consts::LN_2;
    let mut ln_c = 0.0f64; // ln C(n, 0)
    let mut total = 0.0f64;
    for i in 0..=k {
        if i > 0 {
            ln_c += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        total += (ln_c + ln_half_n).exp();
    }
    (2.0 * total).min(1.0)
}

/// Result of a paired bootstrap on per-item differences (A − B).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Bootstrap {
    pub mean_diff: f64,
    pub low: f64,
    pub high: f64,
    /// Two-sided bootstrap p-value: 2 · min(P(d* ≤ 0), P(d* ≥ 0)), at most 1.
    pub p_value: f64,
    pub resamples: usize,
}

/// Paired bootstrap of the mean difference with a fixed seed, percentile 95% interval.
pub fn paired_bootstrap(a: &[f64], b: &[f64], resamples: usize, seed: u64) -> Bootstrap {
    let n = a.len().min(b.len());
    let diffs: Vec<f64> = (0..n).map(|i| a[i] - b[i]).collect();
    if n == 0 || resamples == 0 {
        return Bootstrap {
            mean_diff: 0.0,
            low: 0.0,
            high: 0.0,
            p_value: 1.0,
            resamples,
        };
    }
    let mean_diff = diffs.iter().sum::<f64>() / n as f64;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stats: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| diffs[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    stats.sort_by(f64::total_cmp);
    let q = |p: f64| stats[((p * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    let le = stats.iter().filter(|&&s| s <= 0.0).count() as f64 / resamples as f64;
    let ge = stats.iter().filter(|&&s| s >= 0.0).count() as f64 / resamples as f64;
    Bootstrap {
        mean_diff,
        low: q(0.025),
        high: q(0.975),
        p_value: (2.0 * le.min(ge)).min(1.0),
        resamples,
    }
}

/// The verdict of a paired comparison.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Verdict {
    #[serde(rename = "A better")]
    ABetter,
    #[serde(rename = "B better")]
    BBetter,
    #[serde(rename = "no significant difference")]
    NoDifference,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::ABetter => "A better",
            Verdict::BBetter => "B better",
            Verdict::NoDifference => "no significant difference",
        }
    }
}

/// A paired comparison of two models on the same items.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Paired {
    pub test: String,
    pub n: usize,
    /// McNemar: items only A got right / only B got right.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub only_a: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub only_b: Option<u64>,
    #[serde(deserialize_with = "crate::nan::f64_or_nan")]
    pub mean_a: f64,
    #[serde(deserialize_with = "crate::nan::f64_or_nan")]
    pub mean_b: f64,
    #[serde(deserialize_with = "crate::nan::f64_or_nan")]
    pub p_value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff_ci: Option<(f64, f64)>,
    pub verdict: Verdict,
}

/// Paired test at α = 0.05: exact McNemar when every value is 0 or 1, else a paired bootstrap
/// (10,000 resamples, seed 0).
pub fn compare(a: &[f64], b: &[f64]) -> Paired {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mean = |x: &[f64]| {
        if x.is_empty() {
            0.0
        } else {
            x.iter().sum::<f64>() / x.len() as f64
        }
    };
    let binary = a.iter().chain(b).all(|v| *v == 0.0 || *v == 1.0);
    if binary {
        let only_a = a
            .iter()
            .zip(b)
            .filter(|(x, y)| **x == 1.0 && **y == 0.0)
            .count() as u64;
        let only_b = a
            .iter()
            .zip(b)
            .filter(|(x, y)| **x == 0.0 && **y == 1.0)
            .count() as u64;
        let p = mcnemar_exact(only_a, only_b);
        let verdict = if p < 0.05 {
            if only_a > only_b {
                Verdict::ABetter
            } else {
                Verdict::BBetter
            }
        } else {
            Verdict::NoDifference
        };
        Paired {
            test: "exact McNemar (two-sided, α = 0.05)".into(),
            n,
            only_a: Some(only_a),
            only_b: Some(only_b),
            mean_a: mean(a),
            mean_b: mean(b),
            p_value: p,
            diff_ci: None,
            verdict,
        }
    } else {
        let bs = paired_bootstrap(a, b, 10_000, 0);
        let verdict = if bs.low > 0.0 {
            Verdict::ABetter
        } else if bs.high < 0.0 {
            Verdict::BBetter
        } else {
            Verdict::NoDifference
        };
        Paired {
            test: "paired bootstrap of the mean difference (10,000 resamples, seed 0, 95% percentile interval)".into(),
            n,
            only_a: None,
            only_b: None,
            mean_a: mean(a),
            mean_b: mean(b),
            p_value: bs.p_value,
            diff_ci: Some((bs.low, bs.high)),
            verdict,
        }
    }
}

/// The 1-10 scale: 1 + 9 · clamp((m − b) / (1 − b), 0, 1) for a metric m in [0, 1] with chance level b.
pub fn scale10(m: f64, chance: f64) -> f64 {
    if !m.is_finite() {
        return f64::NAN;
    }
    let c = if chance >= 1.0 { 0.0 } else { chance.max(0.0) };
    1.0 + 9.0 * ((m - c) / (1.0 - c)).clamp(0.0, 1.0)
}

pub const SCALE_FORMULA: &str = "score = 1 + 9 × clamp((m − b) / (1 − b), 0, 1), m = metric in [0,1], b = chance level (1/k for k-way multiple choice, averaged over items; 0 for generative tasks); interval endpoints mapped the same way";

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() < tol
    }

    #[test]
    fn wilson_matches_hand_computation() {
        // 5/10: centre 0.5, half-width (z / (1 + z²/n)) · sqrt(0.025 + z²/400) = 0.263407.
        let (lo, hi) = wilson(5.0, 10.0);
        assert!(close(lo, 0.236593, 1e-5), "{lo}");
        assert!(close(hi, 0.763407, 1e-5), "{hi}");
        // 0/10: upper bound z²/n / (1 + z²/n) = 0.384146 / 1.384146 = 0.277530.
        let (lo, hi) = wilson(0.0, 10.0);
        assert!(close(lo, 0.0, 1e-9));
        assert!(close(hi, 0.277530, 1e-5), "{hi}");
        // 10/10 mirrors 0/10.
        let (lo, hi) = wilson(10.0, 10.0);
        assert!(close(lo, 0.722470, 1e-5) && close(hi, 1.0, 1e-9));
        // 57 items, 14 right (MMLU-quick at chance): p = 0.245614.
        let (lo, hi) = wilson(14.0, 57.0);
        assert!(close(lo, 0.152328, 1e-5), "{lo}");
        assert!(close(hi, 0.371023, 1e-5), "{hi}");
        assert_eq!(wilson(0.0, 0.0), (0.0, 1.0));
    }

    #[test]
    fn mcnemar_matches_hand_computation() {
        // b=1, c=7: 2 · (C(8,0) + C(8,1)) / 2^8 = 2 · 9/256.
        assert!(close(mcnemar_exact(1, 7), 18.0 / 256.0, 1e-12));
        // b=0, c=6: 2 / 64.
        assert!(close(mcnemar_exact(0, 6), 2.0 / 64.0, 1e-12));
        // b=c: capped at 1.
        assert!(close(mcnemar_exact(3, 3), 1.0, 1e-12));
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        // b=2, c=10: 2 · (1 + 12 + 66) / 4096.
        assert!(close(mcnemar_exact(10, 2), 158.0 / 4096.0, 1e-12));
        // Large n stays finite: b=400, c=400 → 1.
        assert!(close(mcnemar_exact(400, 400), 1.0, 1e-9));
    }

    #[test]
    fn compare_uses_mcnemar_for_binary() {
        let a = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0];
        let b = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0];
        let p = compare(&a, &b);
        assert_eq!((p.only_a, p.only_b), (Some(6), Some(0)));
        assert!(close(p.p_value, 2.0 / 64.0, 1e-12));
        assert_eq!(p.verdict, Verdict::ABetter);
        let p = compare(&b, &a);
        assert_eq!(p.verdict, Verdict::BBetter);
        // 1 vs 7 discordant: p = 0.0703 → not significant.
        let a = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let b = [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        assert_eq!(compare(&a, &b).verdict, Verdict::NoDifference);
    }

    #[test]
    fn bootstrap_known_cases() {
        // Every difference +0.5: the resampled mean is always 0.5.
        let bs = paired_bootstrap(&[0.5; 10], &[0.0; 10], 2000, 1);
        assert_eq!((bs.mean_diff, bs.low, bs.high), (0.5, 0.5, 0.5));
        assert_eq!(bs.p_value, 0.0);
        // Differences {+1, −1}: resampled means are −1, 0, +1 with probabilities 1/4, 1/2, 1/4,
        // so the 95% interval is [−1, 1] and P(d* ≤ 0) ≈ 3/4 → p = 1.
        let bs = paired_bootstrap(&[1.0, 0.0], &[0.0, 1.0], 4000, 2);
        assert_eq!((bs.low, bs.high), (-1.0, 1.0));
        assert_eq!(bs.p_value, 1.0);
        let p = compare(&[0.5, 0.75, 1.0, 0.5], &[0.25, 0.5, 0.5, 0.25]);
        assert_eq!(p.verdict, Verdict::ABetter);
        assert!(p.test.contains("bootstrap"));
        let p = compare(&[0.5, 0.25], &[0.25, 0.5]);
        assert_eq!(p.verdict, Verdict::NoDifference);
    }

    #[test]
    fn scale_examples() {
        // MMLU acc 0.55 with k = 4: (0.55 − 0.25) / 0.75 = 0.4 → 4.6 (eval-methods.md's example).
        assert!(close(scale10(0.55, 0.25), 4.6, 1e-12));
        assert_eq!(scale10(0.2, 0.25), 1.0);
        assert_eq!(scale10(1.0, 0.25), 10.0);
        assert!(close(scale10(0.5, 0.0), 5.5, 1e-12));
    }
}
