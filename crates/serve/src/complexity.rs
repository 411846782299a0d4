//! A request complexity score in [0, 1] from cheap surface features: length, code markers,
//! math markers, multi-step and reasoning cues, number of turns, requested answer length.
//! The `complexity` policy sends requests at or above a threshold to the strong tier; `bakeoff
//! route calibrate` picks the threshold from eval results for a wanted share of strong calls.
//!
//! The features are deliberately simple and explainable (each one is reported in the route
//! reason); a learned router (RouteLLM's matrix factorisation, a BERT classifier) would need
//! training data this project does not have yet.

use serde::Serialize;

use crate::backend::Input;

/// Per-feature values in [0, 1] and the weighted total.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Score {
    pub total: f32,
    pub length: f32,
    pub code: f32,
    pub math: f32,
    pub reasoning: f32,
    pub turns: f32,
    pub max_tokens: f32,
}

/// Feature weights; they sum to 1 so the total stays in [0, 1].
const W_LENGTH: f32 = 0.20;
const W_CODE: f32 = 0.25;
const W_MATH: f32 = 0.20;
const W_REASONING: f32 = 0.20;
const W_TURNS: f32 = 0.05;
const W_MAX_TOKENS: f32 = 0.10;

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

pub fn score(input: &Input, max_tokens: Option<usize>) -> Score {
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
        // No text to read: scored as an empty prompt (the fast tier under `complexity`).
        Input::Tokens(_) => (String::new(), 1),
    };
    let lower = text.to_lowercase();
    let length =
        ((1.0 + text.chars().count() as f32).ln() / (1.0 + LENGTH_SATURATION).ln()).min(1.0);
    let code = marker_share(&lower, CODE_MARKERS, 3.0);
    let math = marker_share(&lower, MATH_MARKERS, 2.0).max(arithmetic_share(&lower));
    let reasoning = marker_share(&lower, REASONING_MARKERS, 2.0).max(list_share(&text));
    let turns = ((turns - 1) as f32 / 4.0).min(1.0);
    let max_tokens = max_tokens.map_or(0.0, |m| (m as f32 / MAX_TOKENS_SATURATION).min(1.0));
    let total = W_LENGTH * length
        + W_CODE * code
        + W_MATH * math
        + W_REASONING * reasoning
        + W_TURNS * turns
        + W_MAX_TOKENS * max_tokens;
    Score {
        total,
        length,
        code,
        math,
        reasoning,
        turns,
        max_tokens,
    }
}

impl Score {
    /// A short ASCII explanation for the route header.
    pub fn explain(&self) -> String {
        format!(
            "len {:.2} code {:.2} math {:.2} reasoning {:.2} turns {:.2} max_tokens {:.2}",
            self.length, self.code, self.math, self.reasoning, self.turns, self.max_tokens
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bakeoff_engine::template::Message;

    fn s(t: &str) -> f32 {
        score(&Input::Chat(vec![Message::user(t)]), None).total
    }

    #[test]
    fn harder_requests_score_higher() {
        let easy = s("Hi! How are you?");
        let code = s(
            "Implement a function in Python that parses a CSV file and returns a dict; debug this:\n```def f(x): return x+1```",
        );
        let math = s(
            "Solve the equation 3x + 7 = 22 and prove that the solution is unique. Calculate 12 * 7.",
        );
        let steps = s(
            "Explain why the sky is blue, step by step, and compare it with sunsets. Justify each step.",
        );
        assert!(easy < 0.15, "easy {easy}");
        for (name, v) in [("code", code), ("math", math), ("steps", steps)] {
            assert!(v > easy + 0.15, "{name} {v} vs easy {easy}");
        }
    }

    #[test]
    fn turns_and_max_tokens_count() {
        let one = score(&Input::Chat(vec![Message::user("hello")]), None);
        let many = score(
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
        assert!(many.total > one.total);
        assert!(many.total <= 1.0);
    }
}
