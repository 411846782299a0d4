//! Small statistics over repetitions: mean, median, sample standard deviation, coefficient of
//! variation, percentiles, and a 95% Student-t interval for the mean. Pure functions, so the
//! summary table can be recomputed from a results file's raw samples.

use serde::{Deserialize, Serialize};

pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Sample standard deviation (n − 1); 0 for fewer than two values.
pub fn stddev(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    let ss: f64 = xs.iter().map(|x| (x - m) * (x - m)).sum();
    (ss / (xs.len() - 1) as f64).sqrt()
}

fn sorted(xs: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Percentile `p` in [0, 100] with linear interpolation between ranks (numpy's default), so
/// p50 of an even-length list is the mean of the two middle values.
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    let v = sorted(xs);
    percentile_sorted(&v, p)
}

fn percentile_sorted(v: &[f64], p: f64) -> f64 {
    match v.len() {
        0 => f64::NAN,
        1 => v[0],
        n => {
            let rank = (p.clamp(0.0, 100.0) / 100.0) * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = rank.ceil() as usize;
            v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
        }
    }
}

pub fn median(xs: &[f64]) -> f64 {
    percentile(xs, 50.0)
}

/// Two-sided 95% critical value of Student's t with `df` degrees of freedom.
pub fn t95(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        d if d <= 30 => T[d - 1],
        _ => 1.96,
    }
}

/// One metric over the repetitions of a scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub n: usize,
    pub mean: f64,
    pub median: f64,
    pub stddev: f64,
    /// Coefficient of variation: stddev / mean (0 when the mean is 0).
    pub cv: f64,
    pub min: f64,
    pub max: f64,
    /// 95% interval for the mean (Student t); equal to the mean when n = 1, where no spread is known.
    pub ci95_low: f64,
    pub ci95_high: f64,
}

impl Estimate {
    /// `None` when there are no finite values.
    pub fn of(xs: &[f64]) -> Option<Estimate> {
        let v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        let m = mean(&v);
        let sd = stddev(&v);
        let half = if v.len() > 1 {
            t95(v.len() - 1) * sd / (v.len() as f64).sqrt()
        } else {
            0.0
        };
        let s = sorted(&v);
        Some(Estimate {
            n: v.len(),
            mean: m,
            median: percentile_sorted(&s, 50.0),
            stddev: sd,
            cv: if m != 0.0 { sd / m.abs() } else { 0.0 },
            min: s[0],
            max: s[s.len() - 1],
            ci95_low: m - half,
            ci95_high: m + half,
        })
    }

    /// Whether the two 95% intervals overlap: the difference is within the measured noise.
    /// Single samples have no interval, so they never count as overlapping.
    pub fn overlaps(&self, other: &Estimate) -> bool {
        if self.n < 2 || other.n < 2 {
            return false;
        }
        self.ci95_low <= other.ci95_high && other.ci95_low <= self.ci95_high
    }

    /// Half-width of the 95% interval.
    pub fn ci95_half(&self) -> f64 {
        (self.ci95_high - self.ci95_low) / 2.0
    }
}

/// Latency percentiles of a pooled set of intervals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(xs: &[f64]) -> Option<Percentiles> {
        let v = sorted(xs);
        if v.is_empty() {
            return None;
        }
        Some(Percentiles {
            n: v.len(),
            p50: percentile_sorted(&v, 50.0),
            p90: percentile_sorted(&v, 90.0),
            p99: percentile_sorted(&v, 99.0),
            max: v[v.len() - 1],
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let xs = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(median(&xs), 2.5);
        assert!((percentile(&xs, 90.0) - 3.7).abs() < 1e-12);
        assert_eq!(percentile(&[5.0], 99.0), 5.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn estimate_interval_uses_student_t() {
        let e = Estimate::of(&[10.0, 12.0]).unwrap();
        assert_eq!(e.mean, 11.0);
        assert!((e.stddev - 2f64.sqrt()).abs() < 1e-12);
        // t(1) = 12.706; half = 12.706 * sqrt(2) / sqrt(2).
        assert!((e.ci95_half() - 12.706).abs() < 1e-9);
        let single = Estimate::of(&[3.0]).unwrap();
        assert_eq!(
            (single.ci95_low, single.ci95_high, single.cv),
            (3.0, 3.0, 0.0)
        );
        assert!(!single.overlaps(&single));
        assert!(Estimate::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn overlap_means_within_noise() {
        let a = Estimate::of(&[10.0, 10.2, 9.8]).unwrap();
        let b = Estimate::of(&[10.1, 10.3, 9.9]).unwrap();
        let c = Estimate::of(&[20.0, 20.1, 19.9]).unwrap();
        assert!(a.overlaps(&b));
        assert!(!a.overlaps(&c));
    }
}
