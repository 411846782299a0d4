//! `bakeoff route calibrate`: picks the complexity threshold from eval results, RouteLLM-style:
//! for each share of requests sent to the strong model, the quality the router would reach;
//! the threshold is the one that sends the asked-for share.
//!
//! Input: what `bakeoff eval` writes (its folder or `results.json`: each item's headline score per
//! model from `results.json`, each item's prompt from the audit trail beside it), or a minimal
//! per-item format: a JSON array, a JSON object with an `items` array, or JSON Lines, of
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

/// Per-item results of a `bakeoff eval` run, as calibration items keyed by model label.
#[derive(Clone, Debug)]
pub struct EvalItems {
    pub items: Vec<CalibItem>,
    /// Each model's label and parameter count, in the results' order.
    pub models: Vec<(String, Option<u64>)>,
    /// Items scored for both models but without a prompt in the audit trail (left out).
    pub without_prompt: usize,
}

/// Reads an eval folder or its `results.json`; `None` when `path` is not eval output.
pub fn read_eval(path: &Path) -> Result<Option<EvalItems>, String> {
    let results_path = if path.is_dir() {
        path.join("results.json")
    } else {
        path.to_path_buf()
    };
    let Ok(bytes) = std::fs::read(&results_path) else {
        return if path.is_dir() {
            Err(format!(
                "{}: no results.json (is this a `bakeoff eval --out` folder?)",
                path.display()
            ))
        } else {
            Ok(None)
        };
    };
    let is_eval = bakeoff_record::ResultsFile::parse(&bytes)
        .is_ok_and(|f| f.kind() == bakeoff_record::ResultsKind::Eval);
    if !is_eval {
        return Ok(None);
    }
    let name = results_path.display();
    let res: bakeoff_record::eval::Results =
        serde_json::from_slice(&bytes).map_err(|e| format!("{name}: {e}"))?;
    let dir = results_path.parent().unwrap_or(Path::new("."));
    // The audit path is recorded as written; beside results.json is where `eval --out` puts it.
    let recorded = Path::new(&res.audit_file);
    let audit_path = if recorded.is_file() {
        recorded.to_path_buf()
    } else {
        dir.join("audit.jsonl")
    };
    let audit = std::fs::read_to_string(&audit_path).map_err(|e| {
        format!(
            "cannot read the audit trail {} (calibration needs each item's prompt): {e}",
            audit_path.display()
        )
    })?;
    let mut prompts: BTreeMap<(String, String), String> = BTreeMap::new();
    for (i, line) in audit
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| format!("{}:{}: {e}", audit_path.display(), i + 1))?;
        if let (Some(c), Some(id), Some(p)) = (
            v["component"].as_str(),
            v["id"].as_str(),
            v["prompt"].as_str(),
        ) {
            prompts
                .entry((c.to_string(), id.to_string()))
                .or_insert_with(|| p.to_string());
        }
    }
    if res.models.len() < 2 {
        return Err(format!(
            "{name}: calibration needs eval results of two models; this run has {}",
            res.models.len()
        ));
    }
    // (component, id) -> label -> score
    let mut scores: BTreeMap<(String, String), BTreeMap<String, Value>> = BTreeMap::new();
    for m in &res.models {
        for c in &m.components {
            for (id, score) in &c.per_item {
                scores
                    .entry((c.name.clone(), id.clone()))
                    .or_default()
                    .insert(m.label.clone(), serde_json::json!(score));
            }
        }
    }
    let mut items = Vec::new();
    let mut without_prompt = 0;
    for ((component, id), correct) in scores {
        if correct.len() < res.models.len() {
            continue;
        }
        match prompts.get(&(component.clone(), id.clone())) {
            Some(p) => items.push(CalibItem {
                id: Some(Value::String(format!("{component}/{id}"))),
                prompt: Some(p.clone()),
                messages: None,
                max_tokens: None,
                correct,
            }),
            None => without_prompt += 1,
        }
    }
    if items.is_empty() {
        return Err(format!(
            "{name}: no item has scores for every model and a prompt"
        ));
    }
    Ok(Some(EvalItems {
        items,
        models: res
            .models
            .iter()
            .map(|m| (m.label.clone(), m.info.parameters))
            .collect(),
        without_prompt,
    }))
}

/// How a threshold chosen on one part of the items does on the rest (`held_out`).
#[derive(Clone, Debug, Serialize)]
pub struct HeldOut {
    pub items: usize,
    pub strong_share: f64,
    /// Mean item score of the routed answers, with a 95% bootstrap interval.
    pub quality: f64,
    pub quality_ci: (f64, f64),
    /// Expected mean score of sending the same share to the strong model at random.
    pub random_at_share: f64,
    pub random_ci: (f64, f64),
    /// Routed minus random, paired over the same resamples.
    pub gain_ci: (f64, f64),
    pub fast_only: f64,
    pub strong_only: f64,
}

/// Splits items into a calibration part and a held-out part by a hash of each item's id (or
/// its position), so the split is the same on every run over the same items.
pub fn split(items: &[CalibItem], holdout: f64) -> (Vec<CalibItem>, Vec<CalibItem>) {
    use sha2::{Digest, Sha256};
    let mut cal = Vec::new();
    let mut test = Vec::new();
    for (i, it) in items.iter().enumerate() {
        let key = it
            .id
            .as_ref()
            .map_or_else(|| i.to_string(), |v| v.to_string());
        let h = Sha256::digest(key.as_bytes());
        let u = u64::from_le_bytes(h[..8].try_into().unwrap_or([0; 8])) as f64 / u64::MAX as f64;
        if u < holdout {
            test.push(it.clone());
        } else {
            cal.push(it.clone());
        }
    }
    (cal, test)
}

/// Applies `threshold` to `items` and compares with random routing at the share it reaches.
pub fn evaluate(
    items: &[CalibItem],
    fast_key: &str,
    strong_key: &str,
    threshold: f32,
) -> Result<HeldOut, String> {
    if items.is_empty() {
        return Err("no held-out items".into());
    }
    let mut rows = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
        let input = item_input(it, i)?;
        let get = |k: &str| it.correct.get(k).and_then(credit).ok_or(());
        let (Ok(f), Ok(s)) = (get(fast_key), get(strong_key)) else {
            return Err(format!("held-out item {}: scores missing", i + 1));
        };
        let strong = complexity::score(&input, it.max_tokens).total >= threshold;
        rows.push((strong, f, s));
    }
    let stats = |idx: &mut dyn Iterator<Item = usize>| {
        let (mut n, mut k, mut q, mut fsum, mut ssum) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for i in idx {
            let (strong, f, s) = rows[i];
            n += 1.0;
            fsum += f;
            ssum += s;
            if strong {
                k += 1.0;
                q += s;
            } else {
                q += f;
            }
        }
        let share = k / n;
        let random = (fsum + share * (ssum - fsum)) / n;
        (share, q / n, random, fsum / n, ssum / n)
    };
    let (share, quality, random, fast_only, strong_only) = stats(&mut (0..rows.len()));
    // Deterministic resampling: the interval is a property of the items, not of the run.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ rows.len() as u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut qs, mut rs, mut gs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..2000 {
        let n = rows.len();
        let picks: Vec<usize> = (0..n).map(|_| (next() % n as u64) as usize).collect();
        let (_, q, r, _, _) = stats(&mut picks.into_iter());
        qs.push(q);
        rs.push(r);
        gs.push(q - r);
    }
    let ci = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        (at(0.025), at(0.975))
    };
    Ok(HeldOut {
        items: rows.len(),
        strong_share: share,
        quality,
        quality_ci: ci(&mut qs),
        random_at_share: random,
        random_ci: ci(&mut rs),
        gain_ci: ci(&mut gs),
        fast_only,
        strong_only,
    })
}

fn item_input(it: &CalibItem, i: usize) -> Result<Input, String> {
    let label = it
        .id
        .as_ref()
        .map_or_else(|| format!("item {}", i + 1), |v| v.to_string());
    match (&it.prompt, &it.messages) {
        (Some(p), None) => Ok(Input::Chat(vec![Message::user(p.clone())])),
        (None, Some(m)) if !m.is_empty() => Ok(Input::Chat(m.clone())),
        _ => Err(format!("{label}: give `prompt` or a non-empty `messages`")),
    }
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
        let input = item_input(it, i)?;
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
