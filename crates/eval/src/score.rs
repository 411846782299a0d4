//! Components (one benchmark metric each), categories (documented weighted means of components)
//! and paired comparisons between models.

pub use bakeoff_record::eval::{CATEGORIES, Category, Comparison, Component, Metric, Overall};
use bakeoff_record::paired as stats;

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
