//! `bakeoff route calibrate`: picks the complexity threshold from eval results, RouteLLM-style:
//! for each share of requests sent to the strong model, the quality the router would reach;
//! the threshold is the one that sends the asked-for share.
//!
//! Input (until the eval crate's results format is final, this minimal per-item format is what
//! calibration reads): a JSON array, a JSON object with an `items` array, or JSON Lines, of
//!
//! ```json
//! {"id": "gsm8k/12", "prompt": "text the user sent", "max_tokens": 256,
//!  "correct": {"fast": false, "strong": true}}
//! ```
//!
//! `messages` (a list of `{role, content}`) may replace `prompt`. `correct` maps each model to
//! true/false or a score in [0, 1]; its keys are the tier names, or model names mapped to tiers
//! with `--fast NAME --strong NAME`.

use std::collections::BTreeMap;
use std::path::Path;

use bakeoff_engine::template::Message;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::backend::Input;
use crate::complexity;

#[derive(Clone, Debug, Deserialize)]
pub struct CalibItem {
    #[serde(default)]
    pub id: Option<Value>,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<Message>>,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    pub correct: BTreeMap<String, Value>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CurvePoint {
    /// Share of items sent to the strong model.
    pub strong_share: f64,
    pub threshold: f32,
    /// Mean correctness of the routed answers.
    pub quality: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Calibration {
    pub items: usize,
    pub threshold: f32,
    /// The share the threshold actually sends to the strong model (ties can move it).
    pub strong_share: f64,
    pub quality: f64,
    pub fast_only: f64,
    pub strong_only: f64,
    /// Quality of sending the same share to the strong model at random.
    pub random_at_share: f64,
    /// Share of the fast-to-strong quality gap recovered: (quality − fast) / (strong − fast).
    pub gap_recovered: Option<f64>,
    pub curve: Vec<CurvePoint>,
}

pub fn read_items(path: &Path) -> Result<Vec<CalibItem>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let name = path.display();
    let trimmed = text.trim_start();
    let items: Vec<CalibItem> = if trimmed.starts_with('[') {
        serde_json::from_str(&text).map_err(|e| format!("{name}: {e}"))?
    } else if trimmed.starts_with('{')
        && serde_json::from_str::<Value>(&text).is_ok_and(|v| v.get("items").is_some())
    {
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{name}: {e}"))?;
        serde_json::from_value(v["items"].clone()).map_err(|e| format!("{name}: items: {e}"))?
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("{name}:{}: {e}", i + 1)))
            .collect::<Result<_, _>>()?
    };
    if items.is_empty() {
        return Err(format!("{name}: no items"));
    }
    Ok(items)
}

fn credit(v: &Value) -> Option<f64> {
    match v {
        Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Value::Number(n) => n.as_f64().filter(|x| (0.0..=1.0).contains(x)),
        _ => None,
    }
}

/// Scores every item and finds the threshold for `share`.
pub fn calibrate(
    items: &[CalibItem],
    fast_key: &str,
    strong_key: &str,
    share: f64,
) -> Result<Calibration, String> {
    if !(0.0..=1.0).contains(&share) {
        return Err(format!("--strong-share must be in [0, 1], got {share}"));
    }
    let mut rows: Vec<(f32, f64, f64)> = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        let label = it
            .id
            .as_ref()
            .map_or_else(|| format!("item {}", i + 1), |v| v.to_string());
        let input = match (&it.prompt, &it.messages) {
            (Some(p), None) => Input::Chat(vec![Message::user(p.clone())]),
            (None, Some(m)) if !m.is_empty() => Input::Chat(m.clone()),
            _ => return Err(format!("{label}: give `prompt` or a non-empty `messages`")),
        };
        let get = |k: &str| {
            it.correct.get(k).and_then(credit).ok_or_else(|| {
                format!("{label}: `correct.{k}` is missing or not a boolean / number in [0, 1]")
            })
        };
        let (f, s) = (get(fast_key)?, get(strong_key)?);
        rows.push((complexity::score(&input, it.max_tokens).total, f, s));
    }
    let n = rows.len() as f64;
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let fast_only = rows.iter().map(|r| r.1).sum::<f64>() / n;
    let strong_only = rows.iter().map(|r| r.2).sum::<f64>() / n;
    let at = |th: f32| -> (f64, f64) {
        let strong = rows.iter().filter(|r| r.0 >= th).count() as f64;
        let q = rows
            .iter()
            .map(|r| if r.0 >= th { r.2 } else { r.1 })
            .sum::<f64>()
            / n;
        (strong / n, q)
    };
    let threshold_for = |share: f64| -> f32 {
        let k = (share * n).round() as usize;
        if k == 0 {
            // Just above the highest score: nothing goes to the strong model.
            return (rows[0].0 + 1e-4).min(1.0);
        }
        if k >= rows.len() {
            return rows[rows.len() - 1].0;
        }
        let (hi, lo) = (rows[k - 1].0, rows[k].0);
        if hi > lo { (hi + lo) / 2.0 } else { hi }
    };
    let curve = (0..=10)
        .map(|i| {
            let th = threshold_for(i as f64 / 10.0);
            let (s, q) = at(th);
            CurvePoint {
                strong_share: s,
                threshold: th,
                quality: q,
            }
        })
        .collect();
    let threshold = threshold_for(share);
    let (actual, quality) = at(threshold);
    let gap = strong_only - fast_only;
    Ok(Calibration {
        items: rows.len(),
        threshold,
        strong_share: actual,
        quality,
        fast_only,
        strong_only,
        random_at_share: fast_only + actual * gap,
        gap_recovered: (gap.abs() > 1e-12).then(|| (quality - fast_only) / gap),
        curve,
    })
}

/// Writes the threshold (and `policy = "complexity"`) into the config file, keeping the rest
/// of an existing file.
pub fn write_config(path: &Path, threshold: f32) -> Result<(), String> {
    let mut table: toml::Table = if path.exists() {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
    } else {
        toml::Table::new()
    };
    let router = table
        .entry("router")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        .as_table_mut()
        .ok_or_else(|| format!("{}: `router` is not a table", path.display()))?;
    router.insert("policy".into(), toml::Value::String("complexity".into()));
    // Rounded so the file reads well; the scores are nowhere near that precise anyway.
    let th = (threshold as f64 * 1e4).round() / 1e4;
    router.insert("complexity_threshold".into(), toml::Value::Float(th));
    let text = toml::to_string_pretty(&table).map_err(|e| format!("cannot write TOML: {e}"))?;
    bakeoff_record::fsio::write_atomic(path, text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(p: &str, fast: bool, strong: bool) -> CalibItem {
        serde_json::from_value(
            serde_json::json!({"prompt": p, "correct": {"fast": fast, "strong": strong}}),
        )
        .unwrap()
    }

    #[test]
    fn threshold_sends_the_asked_share_and_beats_random() {
        let items = vec![
            item("hi", true, true),
            item("what is the capital of France?", true, true),
            item("tell me a joke", true, true),
            item(
                "Solve 3x + 7 = 22 step by step and prove the answer is unique.",
                false,
                true,
            ),
            item(
                "Implement a Python function to parse CSV; debug this code:\n```def f(x): return x```",
                false,
                true,
            ),
            item("thanks", true, false),
            item("ok", true, true),
            item(
                "Compare the trade-offs of B-trees and LSM trees in detail, step by step.",
                false,
                true,
            ),
            item("hello there", true, true),
            item("good morning", true, true),
        ];
        let c = calibrate(&items, "fast", "strong", 0.3).unwrap();
        assert!((c.strong_share - 0.3).abs() < 1e-9, "{c:?}");
        assert!(c.quality > c.random_at_share, "{c:?}");
        assert!((c.quality - 1.0).abs() < 1e-9, "{c:?}");
        assert_eq!(c.curve.len(), 11);
        assert_eq!(c.curve[0].strong_share, 0.0);
        assert_eq!(c.curve[10].strong_share, 1.0);

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("serve.toml");
        std::fs::write(&p, "port = 9000\n[router]\nfallback = false\n").unwrap();
        write_config(&p, c.threshold).unwrap();
        let back: crate::config::ConfigFile =
            toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(back.port, Some(9000));
        assert_eq!(back.router.fallback, Some(false));
        assert_eq!(back.router.policy.as_deref(), Some("complexity"));
        assert!((back.router.complexity_threshold.unwrap() - c.threshold).abs() < 1e-3);
    }

    #[test]
    fn missing_correctness_is_named() {
        let items = vec![
            serde_json::from_value::<CalibItem>(
                serde_json::json!({"id": "x1", "prompt": "a", "correct": {"fast": true}}),
            )
            .unwrap(),
        ];
        assert!(
            calibrate(&items, "fast", "strong", 0.3)
                .unwrap_err()
                .contains("correct.strong")
        );
    }
}
