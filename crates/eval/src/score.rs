//! Components (one benchmark metric each), categories (documented weighted means of components)
//! and paired comparisons between models.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::stats::{self, Paired};

/// A metric with its sample size and 95% Wilson interval.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Metric {
    #[serde(deserialize_with = "crate::nan::f64_or_nan")]
    pub value: f64,
    /// Successes (instructions passed, items right).
    pub k: f64,
    pub n: usize,
    #[serde(deserialize_with = "crate::nan::pair_or_nan")]
    pub ci95: (f64, f64),
}

impl Metric {
    pub fn from_counts(k: f64, n: usize) -> Self {
        let value = if n == 0 { f64::NAN } else { k / n as f64 };
        Self {
            value,
            k,
            n,
            ci95: stats::wilson(k, n as f64),
        }
    }

    /// Mean of 0/1 values.
    pub fn from_binary(values: &[f64]) -> Self {
        Self::from_counts(values.iter().sum(), values.len())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Component {
    /// Stable key: mmlu, arc_challenge, hellaswag, truthfulqa_mc, gsm8k, ifeval, humaneval, mbpp,
    /// hygiene, creativity_proxy, mt_bench_judge, wikitext.
    pub name: String,
    pub dataset: String,
    pub method: String,
    /// Name of the headline metric (`acc`, `acc_norm`, `pass@1`, ...).
    pub metric: String,
    pub headline: Metric,
    /// Chance level b of the headline metric.
    #[serde(deserialize_with = "crate::nan::f64_or_nan")]
    pub chance: f64,
    #[serde(deserialize_with = "crate::nan::f64_or_nan")]
    pub score10: f64,
    #[serde(deserialize_with = "crate::nan::pair_or_nan")]
    pub score10_ci: (f64, f64),
    /// Other metrics reported alongside (not scored).
    pub other: BTreeMap<String, Metric>,
    /// Extra numbers (distinct-2, mean length, perplexity, bits per byte, ...).
    #[serde(deserialize_with = "crate::nan::map_or_nan")]
    pub numbers: BTreeMap<String, f64>,
    /// Headline value per item id (0/1 or a fraction): the input of the paired tests.
    pub per_item: BTreeMap<String, f64>,
    /// False for diagnostics that no category uses (WikiText-2).
    pub scored: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub seconds: f64,
}

impl Component {
    pub fn new(
        name: &str,
        dataset: &str,
        method: &str,
        metric: &str,
        headline: Metric,
        chance: f64,
    ) -> Self {
        let score10 = stats::scale10(headline.value, chance);
        let score10_ci = (
            stats::scale10(headline.ci95.0, chance),
            stats::scale10(headline.ci95.1, chance),
        );
        Self {
            name: name.into(),
            dataset: dataset.into(),
            method: method.into(),
            metric: metric.into(),
            headline,
            chance,
            score10,
            score10_ci,
            other: BTreeMap::new(),
            numbers: BTreeMap::new(),
            per_item: BTreeMap::new(),
            scored: true,
            note: None,
            seconds: 0.0,
        }
    }
}

/// Category definitions: (category, [(component, weight)], note).
pub const CATEGORIES: [(&str, &[(&str, f64)]); 6] = [
    (
        "technical accuracy",
        &[("mmlu", 0.4), ("arc_challenge", 0.3), ("gsm8k", 0.3)],
    ),
    (
        "response coherence",
        &[("hellaswag", 0.5), ("hygiene", 0.5)],
    ),
    ("instruction following", &[("ifeval", 1.0)]),
    (
        "creativity",
        &[("mt_bench_judge", 1.0), ("creativity_proxy", 1.0)],
    ),
    ("code quality", &[("humaneval", 0.5), ("mbpp", 0.5)]),
    ("factual accuracy", &[("truthfulqa_mc", 1.0)]),
];

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Category {
    pub name: String,
    #[serde(deserialize_with = "crate::nan::f64_or_nan")]
    pub score10: f64,
    /// Weighted mean of the components' mapped interval endpoints (a conservative band, not an
    /// exact interval).
    #[serde(deserialize_with = "crate::nan::pair_or_nan")]
    pub band: (f64, f64),
    /// Weights actually used (renormalised over the components present).
    pub weights: Vec<(String, f64)>,
    pub confidence: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Builds the categories from the components present. Creativity uses the judge's MT-Bench
/// score when there is one, else the labelled low-confidence proxy.
pub fn categories(components: &[Component]) -> Vec<Category> {
    let find = |n: &str| {
        components
            .iter()
            .find(|c| c.name == n && c.scored && c.headline.n > 0)
    };
    let mut out = Vec::new();
    for (name, parts) in CATEGORIES {
        let parts: Vec<(&str, f64)> = if name == "creativity" {
            if find("mt_bench_judge").is_some() {
                vec![("mt_bench_judge", 1.0)]
            } else {
                vec![("creativity_proxy", 1.0)]
            }
        } else {
            parts.to_vec()
        };
        let present: Vec<(&Component, f64)> = parts
            .iter()
            .filter_map(|(c, w)| find(c).map(|x| (x, *w)))
            .collect();
        let total: f64 = present.iter().map(|(_, w)| w).sum();
        if present.is_empty() || total <= 0.0 {
            continue;
        }
        let mean = |f: &dyn Fn(&Component) -> f64| {
            present.iter().map(|(c, w)| f(c) * w / total).sum::<f64>()
        };
        let proxy = present.iter().any(|(c, _)| c.name == "creativity_proxy");
        out.push(Category {
            name: name.into(),
            score10: mean(&|c| c.score10),
            band: (mean(&|c| c.score10_ci.0), mean(&|c| c.score10_ci.1)),
            weights: present.iter().map(|(c, w)| (c.name.clone(), w / total)).collect(),
            confidence: if proxy { "low (proxy, no judge)".into() } else { "as the intervals show".into() },
            note: proxy.then(|| {
                "no judge: pass rate of creative IFEval prompts (poem/story/song/...), with distinct-2 and mean length shown beside it; not a measure of quality".into()
            }),
        });
    }
    out
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Overall {
    #[serde(deserialize_with = "crate::nan::f64_or_nan")]
    pub score10: f64,
    pub weights: Vec<(String, f64)>,
    pub note: String,
}

/// Equal-weight mean of the categories present, shown only with its weights.
pub fn overall(cats: &[Category]) -> Option<Overall> {
    if cats.is_empty() {
        return None;
    }
    let w = 1.0 / cats.len() as f64;
    Some(Overall {
        score10: cats.iter().map(|c| c.score10 * w).sum(),
        weights: cats.iter().map(|c| (c.name.clone(), w)).collect(),
        note: "equal-weight mean of the categories; read the categories, not this number".into(),
    })
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Comparison {
    pub component: String,
    pub a: String,
    pub b: String,
    #[serde(flatten)]
    pub paired: Paired,
}

/// Paired tests on the items both models answered, component by component.
pub fn compare_models(
    a_label: &str,
    a: &[Component],
    b_label: &str,
    b: &[Component],
) -> Vec<Comparison> {
    let mut out = Vec::new();
    for ca in a {
        let Some(cb) = b.iter().find(|c| c.name == ca.name) else {
            continue;
        };
        let ids: Vec<&String> = ca
            .per_item
            .keys()
            .filter(|k| cb.per_item.contains_key(*k))
            .collect();
        if ids.is_empty() {
            continue;
        }
        let va: Vec<f64> = ids.iter().map(|k| ca.per_item[*k]).collect();
        let vb: Vec<f64> = ids.iter().map(|k| cb.per_item[*k]).collect();
        out.push(Comparison {
            component: ca.name.clone(),
            a: a_label.into(),
            b: b_label.into(),
            paired: stats::compare(&va, &vb),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comp(name: &str, m: f64, n: usize, chance: f64) -> Component {
        Component::new(
            name,
            "d",
            "m",
            "acc",
            Metric::from_counts(m * n as f64, n),
            chance,
        )
    }

    #[test]
    fn categories_weights_and_renormalisation() {
        let cs = vec![
            comp("mmlu", 0.55, 100, 0.25),        // 4.6
            comp("arc_challenge", 1.0, 10, 0.25), // 10
            comp("gsm8k", 0.5, 10, 0.0),          // 5.5
            comp("hellaswag", 0.25, 20, 0.25),    // 1
            comp("ifeval", 0.0, 8, 0.0),          // 1
            comp("humaneval", 0.5, 6, 0.0),       // 5.5
            comp("truthfulqa_mc", 1.0, 5, 0.25),
            comp("creativity_proxy", 1.0 / 3.0, 3, 0.0), // 4
        ];
        let cats = categories(&cs);
        let get = |n: &str| {
            cats.iter()
                .find(|c| c.name == n)
                .map(|c| c.score10)
                .unwrap_or(f64::NAN)
        };
        assert!((get("technical accuracy") - (0.4 * 4.6 + 0.3 * 10.0 + 0.3 * 5.5)).abs() < 1e-9);
        // hygiene missing: coherence is HellaSwag alone, weight renormalised to 1.
        assert!((get("response coherence") - 1.0).abs() < 1e-9);
        let coh = cats.iter().find(|c| c.name == "response coherence");
        assert_eq!(
            coh.map(|c| c.weights.clone()),
            Some(vec![("hellaswag".to_string(), 1.0)])
        );
        // mbpp missing: code is HumanEval alone.
        assert!((get("code quality") - 5.5).abs() < 1e-9);
        assert!((get("creativity") - 4.0).abs() < 1e-9);
        assert!(
            cats.iter()
                .any(|c| c.name == "creativity" && c.confidence.starts_with("low"))
        );
        let o = overall(&cats).map(|o| o.score10).unwrap_or(f64::NAN);
        let mean = cats.iter().map(|c| c.score10).sum::<f64>() / cats.len() as f64;
        assert!((o - mean).abs() < 1e-9 && cats.len() == 6);
    }

    #[test]
    fn judge_replaces_proxy() {
        let mut j = comp("mt_bench_judge", 0.5, 4, 0.0);
        j.score10 = 6.0;
        let cs = vec![comp("creativity_proxy", 0.0, 3, 0.0), j];
        let cats = categories(&cs);
        assert_eq!(cats.len(), 1);
        assert_eq!(cats[0].score10, 6.0);
        assert_eq!(cats[0].confidence, "as the intervals show");
    }
}
