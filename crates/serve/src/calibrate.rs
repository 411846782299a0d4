//! `bakeoff route calibrate`: fits the complexity router on eval results, RouteLLM-style. The
//! weights come from a logistic regression of each item's gain (strong score − fast score,
//! mapped to [0, 1]) on the request's features, so the score ranks items by the gain expected
//! from the strong model; for each share of requests sent to the strong model the curve gives
//! the quality the router would reach, and the threshold is the one that sends the asked-for
//! share. Items held out of both steps measure the result against random routing.
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
use serde::Deserialize;
use serde_json::Value;

use bakeoff_record::routing::{Calibration, ComponentRouting, CurvePoint, HeldOut};

use crate::backend::Input;
use crate::complexity::{self, Features, Weights};

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
    // Through the one reader of results files, so eval files from before headers read too.
    let name = results_path.display();
    let res = match bakeoff_record::ResultsFile::parse(&bytes) {
        Ok(bakeoff_record::ResultsFile::Eval(r)) => *r,
        Ok(other) => {
            return Err(format!(
                "{name}: {} results; calibration reads eval results or per-item records",
                other.kind().describe()
            ));
        }
        // A results file this build cannot read is named as such, not read as per-item records.
        Err(e)
            if serde_json::from_slice::<Value>(&bytes)
                .is_ok_and(|v| v.get("kind").is_some() || v.get("tool").is_some()) =>
        {
            return Err(format!("{name}: {e}"));
        }
        Err(_) => return Ok(None),
    };
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

/// One calibration item as the router sees it: its features and both models' scores.
#[derive(Clone, Debug)]
pub struct Row {
    /// The eval component (the part of the id before `/`), where the id has one.
    pub component: Option<String>,
    pub features: Features,
    pub fast: f64,
    pub strong: f64,
}

/// Reads each item's request features and the two models' scores.
pub fn rows(items: &[CalibItem], fast_key: &str, strong_key: &str) -> Result<Vec<Row>, String> {
    let mut rows = Vec::with_capacity(items.len());
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
        rows.push(Row {
            component: it
                .id
                .as_ref()
                .and_then(|v| v.as_str())
                .and_then(|id| id.split_once('/'))
                .map(|(c, _)| c.to_string()),
            features: complexity::features(&input, it.max_tokens),
            fast: get(fast_key)?,
            strong: get(strong_key)?,
        });
    }
    Ok(rows)
}

/// L2 penalty on the feature weights (not the bias). The features lie in [0, 1], so this is
/// worth about one item of evidence per unit of weight: enough to keep a feature that never
/// varies in the data (`turns`, `max_tokens` in eval items) at 0, too little to flatten the
/// others on a few hundred items.
const L2: f64 = 1.0;

/// Fits the weights by Newton's method on the logistic loss with soft targets
/// `(1 + strong − fast) / 2`: the fitted score is monotone in the expected gain of sending the
/// request to the strong model, so a threshold on it sends the items that gain most first.
pub fn fit(rows: &[Row]) -> Result<Weights, String> {
    const D: usize = 7;
    if rows.is_empty() {
        return Err("no items to fit the weights on".into());
    }
    let xs: Vec<[f64; D]> = rows
        .iter()
        .map(|r| {
            let mut x = [1.0; D];
            for (k, v) in r.features.values().iter().enumerate() {
                x[k + 1] = *v as f64;
            }
            x
        })
        .collect();
    let ts: Vec<f64> = rows
        .iter()
        .map(|r| (1.0 + r.strong - r.fast) / 2.0)
        .collect();
    let mut w = [0.0f64; D];
    for _ in 0..100 {
        let mut g = [0.0f64; D];
        let mut h = [[0.0f64; D]; D];
        for (x, t) in xs.iter().zip(&ts) {
            let z: f64 = x.iter().zip(&w).map(|(a, b)| a * b).sum();
            let p = 1.0 / (1.0 + (-z).exp());
            let v = (p * (1.0 - p)).max(1e-9);
            for i in 0..D {
                g[i] += (p - t) * x[i];
                for j in 0..D {
                    h[i][j] += v * x[i] * x[j];
                }
            }
        }
        for i in 1..D {
            g[i] += L2 * w[i];
            h[i][i] += L2;
        }
        let step = solve(h, g).ok_or("the fit's system is singular")?;
        let mut largest = 0.0f64;
        for i in 0..D {
            w[i] -= step[i];
            largest = largest.max(step[i].abs());
        }
        if largest < 1e-9 {
            break;
        }
    }
    let out = Weights::from_parts(w[0] as f32, std::array::from_fn(|k| w[k + 1] as f32));
    if !out.is_finite() {
        return Err("the fit did not converge to finite weights".into());
    }
    Ok(out)
}

/// Solves `a·x = b` by Gaussian elimination with partial pivoting.
fn solve<const D: usize>(mut a: [[f64; D]; D], mut b: [f64; D]) -> Option<[f64; D]> {
    for col in 0..D {
        let pivot = (col..D).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let top = a[col];
        for r in col + 1..D {
            let f = a[r][col] / top[col];
            for (x, t) in a[r].iter_mut().zip(top).skip(col) {
                *x -= f * t;
            }
            b[r] -= f * b[col];
        }
    }
    let mut x = [0.0; D];
    for r in (0..D).rev() {
        let s: f64 = (r + 1..D).map(|c| a[r][c] * x[c]).sum();
        x[r] = (b[r] - s) / a[r][r];
    }
    Some(x)
}

/// Routes `rows` with `weights` and `threshold` and compares with random routing at the share
/// reached, with 95% bootstrap intervals.
pub fn evaluate(rows: &[Row], weights: &Weights, threshold: f32) -> Result<HeldOut, String> {
    if rows.is_empty() {
        return Err("no held-out items".into());
    }
    let routed: Vec<(bool, f64, f64)> = rows
        .iter()
        .map(|r| {
            (
                complexity::combine(weights, &r.features) >= threshold,
                r.fast,
                r.strong,
            )
        })
        .collect();
    let stats = |idx: &mut dyn Iterator<Item = usize>| {
        let (mut n, mut k, mut q, mut fsum, mut ssum) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for i in idx {
            let (strong, f, s) = routed[i];
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
    let (share, quality, random, fast_only, strong_only) = stats(&mut (0..routed.len()));
    // Deterministic resampling: the interval is a property of the items, not of the run.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ routed.len() as u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut qs, mut rs, mut gs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..2000 {
        let n = routed.len();
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
    let mut components: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        if let Some(c) = &r.component {
            components.entry(c).or_default().push(i);
        }
    }
    let by_component = components
        .into_iter()
        .map(|(c, idx)| {
            let (share, quality, _, fast_only, strong_only) = stats(&mut idx.iter().copied());
            ComponentRouting {
                component: c.to_string(),
                items: idx.len(),
                strong_share: share,
                quality,
                fast_only,
                strong_only,
            }
        })
        .collect();
    Ok(HeldOut {
        items: routed.len(),
        strong_share: share,
        quality,
        quality_ci: ci(&mut qs),
        random_at_share: random,
        random_ci: ci(&mut rs),
        gain_ci: ci(&mut gs),
        fast_only,
        strong_only,
        by_component,
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

/// Scores every row with `weights` and finds the threshold that sends `share` of them to the
/// strong model.
pub fn calibrate(rows: &[Row], weights: &Weights, share: f64) -> Result<Calibration, String> {
    if !(0.0..=1.0).contains(&share) {
        return Err(format!("--strong-share must be in [0, 1], got {share}"));
    }
    if rows.is_empty() {
        return Err("no items to calibrate on".into());
    }
    let mut rows: Vec<(f32, f64, f64)> = rows
        .iter()
        .map(|r| (complexity::combine(weights, &r.features), r.fast, r.strong))
        .collect();
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

/// Whether `route calibrate` fits the weights or keeps the ones in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightsMode {
    Fit,
    Keep,
    /// Fit when there are at least [`MIN_FIT_ITEMS`] calibration items, else keep.
    Auto,
}

/// Fewer calibration items than this and `Auto` keeps the weights: seven parameters fitted on a
/// handful of hand-made items would say more about the items than about the requests.
pub const MIN_FIT_ITEMS: usize = 40;

/// What to calibrate on and how.
#[derive(Clone, Debug)]
pub struct Options<'a> {
    /// `bakeoff eval` output (folder or results.json) or the per-item format.
    pub results: &'a Path,
    /// Held-out share; `None`: 0.5 for eval output, 0 for the per-item format.
    pub holdout: Option<f64>,
    pub strong_share: f64,
    pub fast: Option<String>,
    pub strong: Option<String>,
    pub weights: WeightsMode,
    /// The weights in force (kept by `Keep`, and by `Auto` on few items).
    pub current: Weights,
}

/// A calibration and what the caller may want to tell the user about how it was made.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub calibration: bakeoff_record::routing::RouterCalibration,
    pub notes: Vec<String>,
}

/// Reads the per-item results, splits them, fits (or keeps) the weights and picks the threshold
/// on the calibration part, and measures both on the held-out part.
pub fn run(o: &Options) -> Result<Outcome, String> {
    use bakeoff_record::ResultsKind;
    use bakeoff_record::routing::RouterCalibration;
    if let Some(h) = o.holdout
        && !(0.0..1.0).contains(&h)
    {
        return Err(format!("--holdout must be in [0, 1), got {h}"));
    }
    let mut notes = Vec::new();
    let eval_output = read_eval(o.results)?;
    let holdout = o
        .holdout
        .unwrap_or(if eval_output.is_some() { 0.5 } else { 0.0 });
    let (items, fast, strong) = match eval_output {
        Some(ev) => {
            let labels: Vec<&str> = ev.models.iter().map(|(l, _)| l.as_str()).collect();
            let mut by_size = ev.models.clone();
            by_size.sort_by_key(|(_, p)| p.unwrap_or(u64::MAX));
            let fast = o.fast.clone().unwrap_or_else(|| by_size[0].0.clone());
            let strong = o.strong.clone().unwrap_or_else(|| {
                by_size
                    .iter()
                    .find(|(l, _)| *l != fast)
                    .map(|(l, _)| l.clone())
                    .unwrap_or_default()
            });
            for k in [&fast, &strong] {
                if !labels.contains(&k.as_str()) {
                    return Err(format!(
                        "`{k}` is not a model of {} (models: {})",
                        o.results.display(),
                        labels.join(", ")
                    ));
                }
            }
            notes.push(format!(
                "eval results: {} items scored for both models{}; fast = {fast}, strong = {strong}",
                ev.items.len(),
                if ev.without_prompt > 0 {
                    format!(" ({} without a prompt left out)", ev.without_prompt)
                } else {
                    String::new()
                }
            ));
            (ev.items, fast, strong)
        }
        None => (
            read_items(o.results)?,
            o.fast.clone().unwrap_or_else(|| "fast".into()),
            o.strong.clone().unwrap_or_else(|| "strong".into()),
        ),
    };
    if fast == strong {
        return Err(format!("the fast and the strong model are both `{fast}`"));
    }
    let (cal_items, test_items) = if holdout > 0.0 {
        let (a, b) = split(&items, holdout);
        if a.is_empty() || b.is_empty() {
            return Err(format!(
                "{} items cannot be split into calibration and held-out parts at --holdout {}; \
                 use --holdout 0 to calibrate on all of them (without a held-out check)",
                items.len(),
                holdout
            ));
        }
        (a, b)
    } else {
        (items, Vec::new())
    };
    let cal_rows = rows(&cal_items, &fast, &strong)?;
    let fitted = match o.weights {
        WeightsMode::Fit => true,
        WeightsMode::Keep => false,
        WeightsMode::Auto => {
            let enough = cal_rows.len() >= MIN_FIT_ITEMS;
            if !enough {
                notes.push(format!(
                    "{} calibration items (fewer than {MIN_FIT_ITEMS}): the weights in force are \
                     kept and only the threshold is chosen (--weights fit to fit anyway)",
                    cal_rows.len()
                ));
            }
            enough
        }
    };
    let weights = if fitted { fit(&cal_rows)? } else { o.current };
    let calibration = calibrate(&cal_rows, &weights, o.strong_share)?;
    let held_out = if test_items.is_empty() {
        None
    } else {
        let test_rows = rows(&test_items, &fast, &strong)?;
        Some(evaluate(&test_rows, &weights, calibration.threshold)?)
    };
    let created_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(Outcome {
        calibration: RouterCalibration {
            header: ResultsKind::Routing.header(),
            created_unix,
            source: o.results.display().to_string(),
            fast,
            strong,
            holdout,
            target_share: o.strong_share,
            fitted,
            weights,
            calibration,
            held_out,
        },
        notes,
    })
}

/// Writes the threshold and weights (and `policy = "complexity"`) into the config file, keeping
/// the rest of an existing file.
pub fn write_config(path: &Path, threshold: f32, weights: &Weights) -> Result<(), String> {
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
    router.remove("calibration");
    let w = toml::Value::try_from(weights).map_err(|e| format!("cannot write TOML: {e}"))?;
    router.insert("complexity_weights".into(), w);
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

    fn mixed_items() -> Vec<CalibItem> {
        vec![
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
        ]
    }

    #[test]
    fn threshold_sends_the_asked_share_and_beats_random() {
        let rows = rows(&mixed_items(), "fast", "strong").unwrap();
        let w = fit(&rows).unwrap();
        let c = calibrate(&rows, &w, 0.3).unwrap();
        assert!((c.strong_share - 0.3).abs() < 1e-9, "{c:?}");
        assert!(c.quality > c.random_at_share, "{c:?}");
        assert!((c.quality - 1.0).abs() < 1e-9, "{c:?}");
        assert_eq!(c.curve.len(), 11);
        assert_eq!(c.curve[0].strong_share, 0.0);
        assert_eq!(c.curve[10].strong_share, 1.0);

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("serve.toml");
        std::fs::write(&p, "port = 9000\n[router]\nfallback = false\n").unwrap();
        write_config(&p, c.threshold, &w).unwrap();
        let back: crate::config::ConfigFile =
            toml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(back.port, Some(9000));
        assert_eq!(back.router.fallback, Some(false));
        assert_eq!(back.router.policy.as_deref(), Some("complexity"));
        assert!((back.router.complexity_threshold.unwrap() - c.threshold).abs() < 1e-3);
        assert_eq!(back.router.complexity_weights, Some(w));
    }

    /// The fit recovers which feature predicts the gain: here the strong model wins exactly
    /// the requests with code in them, and loses a little on the others.
    #[test]
    fn the_fit_weights_the_feature_that_predicts_the_gain() {
        let mut items = Vec::new();
        for i in 0..40 {
            items.push(item(
                &format!("Implement function number {i} in Python and debug the code"),
                i % 4 == 0,
                true,
            ));
            items.push(item(
                &format!("Tell me about the weather on day {i}"),
                i % 5 != 0,
                i % 7 != 0,
            ));
        }
        let rows = rows(&items, "fast", "strong").unwrap();
        let w = fit(&rows).unwrap();
        assert!(w.code > 1.0, "{w:?}");
        assert!(
            w.code > w.math.abs() + 0.5 && w.code > w.reasoning.abs() + 0.5,
            "{w:?}"
        );
        // Nothing varies in turns or max_tokens: the penalty keeps them at 0.
        assert!(w.turns.abs() < 1e-6 && w.max_tokens.abs() < 1e-6, "{w:?}");
        let c = calibrate(&rows, &w, 0.5).unwrap();
        let held = evaluate(&rows, &w, c.threshold).unwrap();
        assert!((held.strong_share - 0.5).abs() < 1e-9, "{held:?}");
        assert!(held.quality > held.random_at_share + 0.1, "{held:?}");
        assert!(held.gain_ci.0 > 0.0, "{held:?}");
    }

    #[test]
    fn held_out_figures_are_split_by_component() {
        let mut items = mixed_items();
        for (i, it) in items.iter_mut().enumerate() {
            let c = if i % 2 == 0 { "gsm8k" } else { "humaneval" };
            it.id = Some(Value::String(format!("{c}/{i}")));
        }
        let rows = rows(&items, "fast", "strong").unwrap();
        let w = fit(&rows).unwrap();
        let h = evaluate(&rows, &w, 0.5).unwrap();
        let names: Vec<&str> = h
            .by_component
            .iter()
            .map(|c| c.component.as_str())
            .collect();
        assert_eq!(names, ["gsm8k", "humaneval"]);
        assert_eq!(h.by_component.iter().map(|c| c.items).sum::<usize>(), 10);
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
            rows(&items, "fast", "strong")
                .unwrap_err()
                .contains("correct.strong")
        );
    }
}
