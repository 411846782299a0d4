//! The decision rules of the report, as pure functions over measured numbers. The report prints
//! each rule's text next to its outcome, and the unit tests below drive them with constructed
//! numbers, ties included, so what the report recommends is exactly what these functions say.

use std::collections::BTreeMap;

use bakeoff_record::stats::Estimate;

/// Which of the two models (A = first, B = second) a rule picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    A,
    B,
    Tie,
}

impl Pick {
    pub fn other(self) -> Pick {
        match self {
            Pick::A => Pick::B,
            Pick::B => Pick::A,
            Pick::Tie => Pick::Tie,
        }
    }
}

/// Whether more or less of a figure is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

pub const INTERVAL_RULE: &str = "a winner only when the two 95% confidence intervals of the mean do not overlap \
     (a conservative test: overlapping intervals are reported as a tie within noise)";

/// Repeated measurements: a winner only when the 95% intervals do not overlap
/// ([`Estimate::overlaps`]), and only with at least two repetitions each (one sample has no
/// interval).
pub fn by_interval(a: &Estimate, b: &Estimate, better: Better) -> Pick {
    let finite =
        |m: &Estimate| m.mean.is_finite() && m.ci95_low.is_finite() && m.ci95_high.is_finite();
    if a.n < 2 || b.n < 2 || !finite(a) || !finite(b) || a.overlaps(b) {
        return Pick::Tie;
    }
    match (better, a.mean > b.mean) {
        (Better::Higher, true) | (Better::Lower, false) => Pick::A,
        _ => Pick::B,
    }
}

/// Relative difference single-sample figures (load time, peak memory) must exceed to name a
/// winner: one sample has no interval, so a fixed margin stands in for the noise.
pub const SINGLE_SAMPLE_MARGIN: f64 = 0.10;

pub const THRESHOLD_RULE: &str = "single samples (load time, peak memory): a winner only when the larger value exceeds \
     the smaller by more than 10%";

/// Single samples: a winner only when the larger exceeds the smaller by more than `margin`.
pub fn by_margin(a: f64, b: f64, better: Better, margin: f64) -> Pick {
    if !a.is_finite() || !b.is_finite() || a < 0.0 || b < 0.0 {
        return Pick::Tie;
    }
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    if hi <= lo * (1.0 + margin) {
        return Pick::Tie;
    }
    match (better, a < b) {
        (Better::Lower, true) | (Better::Higher, false) => Pick::A,
        _ => Pick::B,
    }
}

pub const AREA_RULE: &str = "an area (several scenarios or categories) goes to a model when it wins at least one row, \
     loses none, and wins at least as many rows as are tied; otherwise it is a tie";

/// Combines row verdicts into an area verdict.
pub fn area(picks: &[Pick]) -> Pick {
    let count = |p: Pick| picks.iter().filter(|x| **x == p).count();
    let (a, b, t) = (count(Pick::A), count(Pick::B), count(Pick::Tie));
    match (a, b) {
        (0, 0) => Pick::Tie,
        (a, 0) if a >= t => Pick::A,
        (0, b) if b >= t => Pick::B,
        _ => Pick::Tie,
    }
}

/// How many times better the winner is: ≥ 1 (NaN when either value is not positive).
pub fn advantage(a: f64, b: f64, better: Better) -> f64 {
    if !(a > 0.0 && b > 0.0) {
        return f64::NAN;
    }
    match better {
        Better::Higher => a.max(b) / a.min(b),
        Better::Lower => a.max(b) / a.min(b),
    }
}

/// What a use-case rule looks at first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Criterion {
    /// End-to-end time of a short chat answer (first token + the generated tokens).
    Latency,
    /// Decode tokens per second over the scenarios.
    Throughput,
    /// Peak resident memory.
    Memory,
    /// Warm load time.
    Load,
    /// The quality categories listed.
    Quality(&'static [&'static str]),
}

impl Criterion {
    pub fn describe(self) -> String {
        match self {
            Criterion::Latency => {
                "lower chat response time (first token + 128 tokens, short prompt)".into()
            }
            Criterion::Throughput => "higher decode tok/s over the scenarios".into(),
            Criterion::Memory => "lower peak memory".into(),
            Criterion::Load => "faster warm load".into(),
            Criterion::Quality(c) => format!("significantly better {}", c.join(" and ")),
        }
    }
}

/// A use case and how its model is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UseCase {
    pub name: &'static str,
    pub primary: Criterion,
    /// Quality categories in which the primary winner may not be significantly worse.
    pub guard: &'static [&'static str],
    /// Decides when the primary criterion is a tie (or not measured).
    pub fallback: Criterion,
}

impl UseCase {
    /// The rule in words, as the report prints it.
    pub fn describe(&self) -> String {
        let mut s = format!("the model with {}", self.primary.describe());
        if !self.guard.is_empty() {
            s.push_str(&format!(
                ", unless it is significantly worse in {} (then the other model)",
                self.guard.join(" or ")
            ));
        }
        s.push_str(&format!(
            "; if that is a tie, the model with {}; otherwise a tie",
            self.fallback.describe()
        ));
        s
    }
}

/// The deployment matrix: the seed report's scenarios, each with an explicit rule.
pub const USE_CASES: [UseCase; 9] = [
    UseCase {
        name: "Customer service bot",
        primary: Criterion::Latency,
        guard: &["instruction following", "response coherence"],
        fallback: Criterion::Quality(&["instruction following", "response coherence"]),
    },
    UseCase {
        name: "Real-time chat / gaming NPCs",
        primary: Criterion::Latency,
        guard: &["response coherence"],
        fallback: Criterion::Throughput,
    },
    UseCase {
        name: "Code assistant",
        primary: Criterion::Quality(&["code quality"]),
        guard: &[],
        fallback: Criterion::Latency,
    },
    UseCase {
        name: "Content generation",
        primary: Criterion::Quality(&["creativity", "instruction following"]),
        guard: &[],
        fallback: Criterion::Throughput,
    },
    UseCase {
        name: "Educational platform",
        primary: Criterion::Quality(&["technical accuracy", "factual accuracy"]),
        guard: &[],
        fallback: Criterion::Latency,
    },
    UseCase {
        name: "Research tools",
        primary: Criterion::Quality(&["technical accuracy", "factual accuracy"]),
        guard: &[],
        fallback: Criterion::Throughput,
    },
    UseCase {
        name: "IoT / edge devices",
        primary: Criterion::Memory,
        guard: &[],
        fallback: Criterion::Throughput,
    },
    UseCase {
        name: "Batch processing",
        primary: Criterion::Throughput,
        guard: &["technical accuracy"],
        fallback: Criterion::Memory,
    },
    UseCase {
        name: "Prototype development",
        primary: Criterion::Load,
        guard: &[],
        fallback: Criterion::Throughput,
    },
];

/// The verdicts the rules read: each already decided by [`by_interval`], [`by_margin`] or a
/// paired significance test.
#[derive(Clone, Debug, PartialEq)]
pub struct Evidence {
    pub latency: Option<Pick>,
    pub throughput: Option<Pick>,
    pub memory: Option<Pick>,
    pub load: Option<Pick>,
    /// Category → verdict of the paired test. Empty when quality was not measured.
    pub quality: BTreeMap<String, Pick>,
    /// False for synthetic (random-weight) models: their quality verdicts are ignored.
    pub quality_meaningful: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub pick: Pick,
    /// Why, in terms of the rule's criteria (model names are filled in by the report).
    pub why: String,
}

fn criterion_pick(c: Criterion, ev: &Evidence) -> (Option<Pick>, String) {
    match c {
        Criterion::Latency => (ev.latency, "latency".into()),
        Criterion::Throughput => (ev.throughput, "throughput".into()),
        Criterion::Memory => (ev.memory, "peak memory".into()),
        Criterion::Load => (ev.load, "load time".into()),
        Criterion::Quality(cats) => {
            let what = cats.join(" + ");
            if !ev.quality_meaningful {
                return (
                    None,
                    format!("{what} (not meaningful for synthetic models)"),
                );
            }
            let picks: Vec<Pick> = cats
                .iter()
                .filter_map(|c| ev.quality.get(*c).copied())
                .collect();
            if picks.is_empty() {
                (None, format!("{what} (not measured)"))
            } else {
                (Some(area(&picks)), what)
            }
        }
    }
}

fn name(p: Pick) -> &'static str {
    match p {
        Pick::A => "A",
        Pick::B => "B",
        Pick::Tie => "tie",
    }
}

/// Applies a use case's rule to the evidence.
pub fn decide(u: &UseCase, ev: &Evidence) -> Decision {
    let (primary, pwhat) = criterion_pick(u.primary, ev);
    match primary {
        Some(p @ (Pick::A | Pick::B)) => {
            if ev.quality_meaningful && !u.guard.is_empty() {
                let worse: Vec<&str> = u
                    .guard
                    .iter()
                    .copied()
                    .filter(|c| ev.quality.get(*c) == Some(&p.other()))
                    .collect();
                if !worse.is_empty() {
                    return Decision {
                        pick: p.other(),
                        why: format!(
                            "{} wins on {pwhat} but is significantly worse in {}",
                            name(p),
                            worse.join(", ")
                        ),
                    };
                }
            }
            Decision {
                pick: p,
                why: format!("{} wins on {pwhat}", name(p)),
            }
        }
        _ => {
            let first = match primary {
                Some(_) => format!("{pwhat}: tie within noise"),
                None => format!("{pwhat}: no verdict"),
            };
            let (fallback, fwhat) = criterion_pick(u.fallback, ev);
            match fallback {
                Some(p @ (Pick::A | Pick::B)) => Decision {
                    pick: p,
                    why: format!("{first}; {} wins on {fwhat}", name(p)),
                },
                Some(_) => Decision {
                    pick: Pick::Tie,
                    why: format!("{first}; {fwhat}: tie within noise"),
                },
                None => Decision {
                    pick: Pick::Tie,
                    why: format!("{first}; {fwhat}: no verdict"),
                },
            }
        }
    }
}

/// Headroom the hardware section adds to measured peak memory: the OS, other processes and
/// longer contexts (the KV cache grows with the context) need room beyond one measured run.
pub const MEMORY_HEADROOM: f64 = 0.5;

/// RAM to provision for a model whose process peaked at `peak_bytes`.
pub fn ram_needed(peak_bytes: u64) -> u64 {
    (peak_bytes as f64 * (1.0 + MEMORY_HEADROOM)).ceil() as u64
}

/// Relative compute cost per 1,000 generated tokens: CPU core-seconds spent per 1,000 tokens,
/// from measured decode speed and CPU utilisation (fraction of all `cores` busy).
pub fn core_seconds_per_1k(decode_tok_s: f64, cpu_util: f64, cores: usize) -> f64 {
    if decode_tok_s.is_nan() || decode_tok_s <= 0.0 || !cpu_util.is_finite() || cores == 0 {
        return f64::NAN;
    }
    1000.0 / decode_tok_s * cpu_util * cores as f64
}

/// Memory held per 1,000 tokens: GB-seconds of peak resident memory while generating them.
pub fn gb_seconds_per_1k(decode_tok_s: f64, peak_bytes: u64) -> f64 {
    if decode_tok_s.is_nan() || decode_tok_s <= 0.0 {
        return f64::NAN;
    }
    peak_bytes as f64 / 1e9 * 1000.0 / decode_tok_s
}

/// Quality-adjusted throughput: decode tok/s × overall quality on the 1-10 scale / 10.
pub fn quality_adjusted(decode_tok_s: f64, overall10: f64) -> f64 {
    decode_tok_s * overall10 / 10.0
}

/// One point of the routing curve: a share of queries sent to the strong model and the mean
/// per-item score that results.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoutePoint {
    pub strong_share: f64,
    pub oracle: f64,
    pub random: f64,
}

/// Routing between a fast and a strong model, from per-item scores on the same items
/// (`fast[i]`, `strong[i]`). The oracle sends to the strong model first the items where it
/// gains most (an upper bound for any real router); random routing sends a uniform share
/// (a lower reference). Returns the share the fast model answers at least as well, and
/// the curve at `steps + 1` evenly spaced shares.
pub fn routing_curve(fast: &[f64], strong: &[f64], steps: usize) -> Option<(f64, Vec<RoutePoint>)> {
    let n = fast.len().min(strong.len());
    if n == 0 || steps == 0 {
        return None;
    }
    let as_good = (0..n).filter(|i| fast[*i] >= strong[*i]).count() as f64 / n as f64;
    let mut gains: Vec<f64> = (0..n).map(|i| strong[i] - fast[i]).collect();
    gains.sort_by(|x, y| y.total_cmp(x));
    let base: f64 = fast[..n].iter().sum::<f64>() / n as f64;
    let strong_mean: f64 = strong[..n].iter().sum::<f64>() / n as f64;
    let mut pts = Vec::with_capacity(steps + 1);
    for s in 0..=steps {
        let share = s as f64 / steps as f64;
        let k = (share * n as f64).round() as usize;
        // Escalating an item that the strong model does worse on would lower the score; an
        // oracle would not, so only positive gains count.
        let gain: f64 = gains[..k].iter().filter(|g| **g > 0.0).sum::<f64>() / n as f64;
        pts.push(RoutePoint {
            strong_share: share,
            oracle: base + gain,
            random: base + share * (strong_mean - base),
        });
    }
    Some((as_good, pts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(mean: f64, half: f64) -> Estimate {
        Estimate {
            n: 5,
            mean,
            median: mean,
            stddev: 0.0,
            cv: 0.0,
            min: mean,
            max: mean,
            ci95_low: mean - half,
            ci95_high: mean + half,
        }
    }

    #[test]
    fn interval_rule_names_a_winner_only_without_overlap() {
        assert_eq!(
            by_interval(&m(10.0, 1.0), &m(5.0, 1.0), Better::Higher),
            Pick::A
        );
        assert_eq!(
            by_interval(&m(10.0, 1.0), &m(5.0, 1.0), Better::Lower),
            Pick::B
        );
        // Touching intervals count as overlapping: a tie.
        assert_eq!(
            by_interval(&m(10.0, 2.5), &m(5.0, 2.5), Better::Higher),
            Pick::Tie
        );
        assert_eq!(
            by_interval(&m(10.0, 3.0), &m(9.0, 3.0), Better::Lower),
            Pick::Tie
        );
        // One repetition has no interval.
        let one = Estimate {
            n: 1,
            ..m(100.0, 0.0)
        };
        assert_eq!(by_interval(&one, &m(1.0, 0.1), Better::Higher), Pick::Tie);
        let nan = m(f64::NAN, 1.0);
        assert_eq!(by_interval(&nan, &m(1.0, 0.1), Better::Higher), Pick::Tie);
    }

    #[test]
    fn margin_rule_for_single_samples() {
        assert_eq!(by_margin(1.0, 1.05, Better::Lower, 0.10), Pick::Tie);
        assert_eq!(by_margin(1.0, 1.10, Better::Lower, 0.10), Pick::Tie);
        assert_eq!(by_margin(1.0, 1.2, Better::Lower, 0.10), Pick::A);
        assert_eq!(by_margin(1.0, 1.2, Better::Higher, 0.10), Pick::B);
        assert_eq!(by_margin(3.0, 2.0, Better::Lower, 0.10), Pick::B);
        assert_eq!(by_margin(f64::NAN, 2.0, Better::Lower, 0.10), Pick::Tie);
    }

    #[test]
    fn area_needs_wins_and_no_losses() {
        use Pick::*;
        assert_eq!(area(&[A, A, A]), A);
        assert_eq!(area(&[A, Tie]), A);
        assert_eq!(area(&[A, Tie, Tie]), Tie);
        assert_eq!(area(&[A, B]), Tie);
        assert_eq!(area(&[B, B, Tie]), B);
        assert_eq!(area(&[Tie, Tie]), Tie);
        assert_eq!(area(&[]), Tie);
    }

    #[test]
    fn advantage_is_winner_over_loser() {
        assert!((advantage(10.0, 5.0, Better::Higher) - 2.0).abs() < 1e-12);
        assert!((advantage(0.5, 1.0, Better::Lower) - 2.0).abs() < 1e-12);
        assert!(advantage(0.0, 1.0, Better::Lower).is_nan());
    }

    fn evidence(latency: Pick, throughput: Pick, quality: &[(&str, Pick)]) -> Evidence {
        Evidence {
            latency: Some(latency),
            throughput: Some(throughput),
            memory: Some(Pick::A),
            load: Some(Pick::Tie),
            quality: quality.iter().map(|(c, p)| (c.to_string(), *p)).collect(),
            quality_meaningful: true,
        }
    }

    const CS: usize = 0; // customer service: latency, guarded by instruction following + coherence
    const CODE: usize = 2;

    #[test]
    fn latency_winner_without_quality_deficit() {
        let ev = evidence(Pick::A, Pick::A, &[("instruction following", Pick::Tie)]);
        let d = decide(&USE_CASES[CS], &ev);
        assert_eq!(d.pick, Pick::A);
        assert_eq!(d.why, "A wins on latency");
    }

    #[test]
    fn significant_quality_deficit_overrides_latency() {
        let ev = evidence(
            Pick::A,
            Pick::A,
            &[
                ("instruction following", Pick::B),
                ("response coherence", Pick::Tie),
            ],
        );
        let d = decide(&USE_CASES[CS], &ev);
        assert_eq!(d.pick, Pick::B);
        assert!(
            d.why
                .contains("significantly worse in instruction following"),
            "{}",
            d.why
        );
    }

    #[test]
    fn latency_tie_falls_back_to_quality_then_tie() {
        let ev = evidence(Pick::Tie, Pick::A, &[("instruction following", Pick::B)]);
        assert_eq!(decide(&USE_CASES[CS], &ev).pick, Pick::B);
        let ev = evidence(Pick::Tie, Pick::A, &[("instruction following", Pick::Tie)]);
        let d = decide(&USE_CASES[CS], &ev);
        assert_eq!(d.pick, Pick::Tie);
        assert!(d.why.contains("tie within noise"), "{}", d.why);
    }

    #[test]
    fn synthetic_models_ignore_quality() {
        let mut ev = evidence(Pick::Tie, Pick::B, &[("code quality", Pick::A)]);
        ev.quality_meaningful = false;
        // Code assistant: quality first, but it is not meaningful: falls back to latency (tie) → tie.
        let d = decide(&USE_CASES[CODE], &ev);
        assert_eq!(d.pick, Pick::Tie);
        assert!(d.why.contains("not meaningful"), "{}", d.why);
        // The guard is ignored too: the latency winner keeps it.
        ev.latency = Some(Pick::B);
        ev.quality.insert("instruction following".into(), Pick::A);
        assert_eq!(decide(&USE_CASES[CS], &ev).pick, Pick::B);
    }

    #[test]
    fn quality_first_use_cases() {
        let ev = evidence(Pick::A, Pick::A, &[("code quality", Pick::B)]);
        assert_eq!(decide(&USE_CASES[CODE], &ev).pick, Pick::B);
        let ev = evidence(Pick::A, Pick::A, &[("code quality", Pick::Tie)]);
        let d = decide(&USE_CASES[CODE], &ev);
        assert_eq!(d.pick, Pick::A);
        assert!(
            d.why
                .starts_with("code quality: tie within noise; A wins on latency"),
            "{}",
            d.why
        );
        // Not measured at all: no verdict, then the fallback.
        let ev = evidence(Pick::Tie, Pick::A, &[]);
        let d = decide(&USE_CASES[CODE], &ev);
        assert_eq!(d.pick, Pick::Tie);
        assert!(d.why.contains("not measured"), "{}", d.why);
    }

    #[test]
    fn every_rule_describes_itself() {
        for u in USE_CASES {
            let d = u.describe();
            assert!(d.starts_with("the model with "), "{d}");
            assert!(d.ends_with("otherwise a tie"), "{d}");
        }
    }

    #[test]
    fn costs_from_measured_numbers() {
        // 20 tok/s with both of 2 cores busy: 50 s × 2 cores = 100 core-seconds per 1,000 tokens.
        assert!((core_seconds_per_1k(20.0, 1.0, 2) - 100.0).abs() < 1e-9);
        assert!((core_seconds_per_1k(40.0, 0.5, 2) - 25.0).abs() < 1e-9);
        assert!(core_seconds_per_1k(0.0, 0.5, 2).is_nan());
        assert!((gb_seconds_per_1k(10.0, 2_000_000_000) - 200.0).abs() < 1e-9);
        assert!((quality_adjusted(30.0, 5.0) - 15.0).abs() < 1e-12);
        assert_eq!(ram_needed(1000), 1500);
    }

    #[test]
    fn routing_curve_bounds() {
        let fast = [1.0, 0.0, 0.0, 1.0];
        let strong = [1.0, 1.0, 0.0, 0.0];
        let (as_good, pts) = routing_curve(&fast, &strong, 4).unwrap_or_default();
        assert!((as_good - 0.75).abs() < 1e-12);
        assert_eq!(pts.len(), 5);
        assert!((pts[0].oracle - 0.5).abs() < 1e-12);
        // One escalation fixes item 1: 0.75, and more escalations never lower the oracle.
        assert!((pts[1].oracle - 0.75).abs() < 1e-12);
        assert!((pts[4].oracle - 0.75).abs() < 1e-12);
        // Random routing interpolates between the two models' means (both 0.5 here).
        assert!(pts.iter().all(|p| (p.random - 0.5).abs() < 1e-12));
        assert!(routing_curve(&[], &[], 4).is_none());
    }
}
