//! A request complexity score in (0, 1) from cheap surface features: length, code markers,
//! math markers, multi-step and reasoning cues, number of turns, requested answer length. The
//! score is `σ(bias + Σ weightᵢ·featureᵢ)`; the `complexity` policy sends requests at or above a
//! threshold to the strong tier.
//!
//! The weights and the threshold are not set by hand: `bakeoff route calibrate` fits them on two
//! models' per-item eval results (a logistic regression of how much the strong model gains on
//! each item, then the threshold that sends the asked-for share), and the defaults are such a
//! fit, shipped in `data/router-calibration.json` with the figures it reached on held-out items.
//! The features stay few and explainable (each one is reported in the route reason); a learned
//! text classifier (RouteLLM's matrix factorisation, a BERT router) would need far more
//! preference data than an eval run gives.

use bakeoff_record::ResultsFile;
use bakeoff_record::routing::RouterCalibration;
use serde::Serialize;

use crate::backend::Input;

pub use bakeoff_record::routing::ComplexityWeights as Weights;

/// The calibration the router starts from when none is given: written by `bakeoff route
/// calibrate --out` (docs/serve.md says on which run).
const SHIPPED: &str = include_str!("../data/router-calibration.json");

/// The shipped calibration (its weights and threshold are the router's defaults).
pub fn shipped() -> Result<RouterCalibration, String> {
    read_calibration(SHIPPED.as_bytes()).map_err(|e| format!("the shipped calibration: {e}"))
}

/// Reads a `route calibrate --out` file and checks that its weights and threshold can be used.
pub fn read_calibration(bytes: &[u8]) -> Result<RouterCalibration, String> {
    let c = match ResultsFile::parse(bytes)? {
        ResultsFile::Routing(c) => *c,
        other => {
            return Err(format!(
                "{} results, not a router calibration (`bakeoff route calibrate --out`)",
                other.kind().describe()
            ));
        }
    };
    if !c.weights.is_finite() {
        return Err("the weights are not all finite numbers".into());
    }
    let th = c.calibration.threshold;
    if !(0.0..=1.0).contains(&th) {
        return Err(format!("the threshold {th} is not in [0, 1]"));
    }
    Ok(c)
}

/// Per-feature values in [0, 1].
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Features {
    pub length: f32,
    pub code: f32,
    pub math: f32,
    pub reasoning: f32,
    pub turns: f32,
    pub max_tokens: f32,
}

impl Features {
    /// In the weights' order ([`Weights::features`]).
    pub fn values(&self) -> [f32; 6] {
        [
            self.length,
            self.code,
            self.math,
            self.reasoning,
            self.turns,
            self.max_tokens,
        ]
    }
}

/// The features and the weighted total.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Score {
    pub total: f32,
    #[serde(flatten)]
    pub features: Features,
}

/// Characters at which the length feature saturates (about a page of text).
const LENGTH_SATURATION: f32 = 4000.0;
/// Requested answer length at which that feature saturates.
const MAX_TOKENS_SATURATION: f32 = 1024.0;

const CODE_MARKERS: &[&str] = &[
    "```",
    "def ",
    "fn ",
    "function ",
    "class ",
    "import ",
    "#include",
    "return ",
    "=>",
    "->",
    "();",
    "{\n",
    "};",
    "select ",
    "console.",
    "print(",
    "python",
    "javascript",
    "typescript",
    "rust",
    "java ",
    "c++",
    "sql",
    "regex",
    "bash",
    "code",
    "compile",
    "debug",
    "implement",
    "algorithm",
    "stack trace",
    "exception",
    "bug",
];
const MATH_MARKERS: &[&str] = &[
    "solve",
    "equation",
    "integral",
    "derivative",
    "prove",
    "proof",
    "theorem",
    "calculate",
    "compute",
    "probability",
    "matrix",
    "sqrt",
    "\\frac",
    "\\sum",
    "lim ",
    "x^",
    "^2",
    "how many",
    "how much",
    "percent",
    "%",
    "remainder",
    "modulo",
    "factor",
    "prime",
    "geometry",
    "algebra",
];
const REASONING_MARKERS: &[&str] = &[
    "step by step",
    "step-by-step",
    "explain why",
    "why does",
    "why is",
    "reason",
    "compare",
    "contrast",
    "analy",
    "evaluate",
    "trade-off",
    "tradeoff",
    "pros and cons",
    "justify",
    "first,",
    "then,",
    "finally",
    "plan",
    "design",
    "strategy",
    "implications",
    "critique",
    "in detail",
    "multi-step",
    "derive",
    "what if",
];

/// How many distinct markers appear, as a fraction of `saturation`.
fn marker_share(text: &str, markers: &[&str], saturation: f32) -> f32 {
    let hits = markers.iter().filter(|m| text.contains(*m)).count() as f32;
    (hits / saturation).min(1.0)
}

/// Arithmetic in the text: digits next to operators (`12 * 7`, `3+4=`).
fn arithmetic_share(text: &str) -> f32 {
    let b = text.as_bytes();
    let mut hits = 0;
    for w in b.windows(3) {
        let op = matches!(w[1], b'+' | b'*' | b'/' | b'=' | b'-' | b'^');
        let around = |c: u8| c.is_ascii_digit() || c == b' ';
        if op && around(w[0]) && around(w[2]) && (w[0].is_ascii_digit() || w[2].is_ascii_digit()) {
            hits += 1;
        }
    }
    (hits as f32 / 3.0).min(1.0)
}

/// Numbered or bulleted steps asked for in the prompt (`1.` `2.` lines).
fn list_share(text: &str) -> f32 {
    let n = text
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            t.len() > 2
                && t.as_bytes()[0].is_ascii_digit()
                && matches!(t.as_bytes()[1], b'.' | b')')
        })
        .count();
    (n as f32 / 4.0).min(1.0)
}

pub fn features(input: &Input, max_tokens: Option<usize>) -> Features {
    let (text, turns) = match input {
        Input::Chat(m) => {
            let text: String = m
                .iter()
                .map(|m| m.content.as_str())
                .collect::<Vec<_>>()
                .join("\n");
            (text, m.iter().filter(|m| m.role == "user").count().max(1))
        }
        Input::Text(t) => (t.clone(), 1),
        // No text to read: scored as an empty prompt.
        Input::Tokens(_) => (String::new(), 1),
    };
    let lower = text.to_lowercase();
    Features {
        length: ((1.0 + text.chars().count() as f32).ln() / (1.0 + LENGTH_SATURATION).ln())
            .min(1.0),
        code: marker_share(&lower, CODE_MARKERS, 3.0),
        math: marker_share(&lower, MATH_MARKERS, 2.0).max(arithmetic_share(&lower)),
        reasoning: marker_share(&lower, REASONING_MARKERS, 2.0).max(list_share(&text)),
        turns: ((turns - 1) as f32 / 4.0).min(1.0),
        max_tokens: max_tokens.map_or(0.0, |m| (m as f32 / MAX_TOKENS_SATURATION).min(1.0)),
    }
}

/// `σ(bias + Σ weightᵢ·featureᵢ)`.
pub fn combine(w: &Weights, f: &Features) -> f32 {
    let z = w.bias
        + w.features()
            .iter()
            .zip(f.values())
            .map(|(w, x)| w * x)
            .sum::<f32>();
    1.0 / (1.0 + (-z).exp())
}

pub fn score(input: &Input, max_tokens: Option<usize>, w: &Weights) -> Score {
    let features = features(input, max_tokens);
    Score {
        total: combine(w, &features),
        features,
    }
}

impl Score {
    /// A short ASCII explanation for the route header.
    pub fn explain(&self) -> String {
        let f = &self.features;
        format!(
            "len {:.2} code {:.2} math {:.2} reasoning {:.2} turns {:.2} max_tokens {:.2}",
            f.length, f.code, f.math, f.reasoning, f.turns, f.max_tokens
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bakeoff_engine::template::Message;

    fn f(t: &str) -> Features {
        features(&Input::Chat(vec![Message::user(t)]), None)
    }

    #[test]
    fn features_see_code_math_and_reasoning() {
        let easy = f("Hi! How are you?");
        let code = f(
            "Implement a function in Python that parses a CSV file and returns a dict; debug this:\n```def f(x): return x+1```",
        );
        let math = f(
            "Solve the equation 3x + 7 = 22 and prove that the solution is unique. Calculate 12 * 7.",
        );
        let steps = f(
            "Explain why the sky is blue, step by step, and compare it with sunsets. Justify each step.",
        );
        assert_eq!((easy.code, easy.math, easy.reasoning), (0.0, 0.0, 0.0));
        assert!(code.code >= 0.99 && math.math >= 0.99 && steps.reasoning >= 0.99);
        assert!(code.length > easy.length);
    }

    #[test]
    fn turns_and_max_tokens_count() {
        let one = features(&Input::Chat(vec![Message::user("hello")]), None);
        let many = features(
            &Input::Chat(vec![
                Message::user("hello"),
                Message::assistant("hi"),
                Message::user("more"),
                Message::assistant("ok"),
                Message::user("again"),
            ]),
            Some(2048),
        );
        assert_eq!(one.turns, 0.0);
        assert!(many.turns > 0.4 && many.max_tokens == 1.0);
    }

    #[test]
    fn the_score_is_the_logistic_of_the_weighted_features() {
        let w = Weights::from_parts(-1.0, [0.0, 2.0, 0.0, 0.0, 0.0, 0.0]);
        let x = Features {
            code: 1.0,
            ..Features::default()
        };
        assert!((combine(&w, &x) - 1.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
        assert!((combine(&w, &Features::default()) - 1.0 / (1.0 + 1.0f32.exp())).abs() < 1e-6);
    }

    /// The shipped calibration reads, and routes as its fit says: code and multi-step maths go
    /// to the strong model, small talk stays on the fast one (issue 17's palindrome example).
    #[test]
    fn the_shipped_calibration_routes_code_to_the_strong_model() {
        let c = shipped().unwrap();
        let th = c.calibration.threshold;
        let s = |t: &str| score(&Input::Chat(vec![Message::user(t)]), None, &c.weights).total;
        let palindrome = s(
            "Write a Python function that checks whether a string is a palindrome, ignoring case and punctuation, and explain its complexity.",
        );
        assert!(palindrome >= th, "palindrome {palindrome} < threshold {th}");
        let hi = s("Hi! How are you today?");
        assert!(hi < th, "small talk {hi} >= threshold {th}");
        assert!(
            c.held_out.is_some(),
            "the shipped fit was checked on held-out items"
        );
    }

    #[test]
    fn other_results_files_are_not_calibrations() {
        let eval = br#"{"kind": "answers", "schema_version": 1, "created_unix": 0, "max_tokens": 1, "sampling": "greedy", "models": []}"#;
        let e = read_calibration(eval).unwrap_err();
        assert!(e.contains("not a router calibration"), "{e}");
        assert!(read_calibration(b"{").unwrap_err().contains("JSON"));
    }
}
