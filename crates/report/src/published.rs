//! Scores the models' authors published (`published.toml`), matched to a report's models by the
//! repository of their original weights, so the quality section can set them beside what bakeoff
//! measured and say where the protocols differ.

use serde::Deserialize;

use crate::error::{ReportError, Result};

const PUBLISHED: &str = include_str!("../published.toml");

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Published {
    #[serde(rename = "model")]
    pub models: Vec<PublishedModel>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedModel {
    /// Hugging Face repository of the original weights.
    pub base: String,
    /// Who published the scores, where, and how.
    pub source: String,
    pub url: String,
    #[serde(rename = "score")]
    pub scores: Vec<PublishedScore>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishedScore {
    pub benchmark: String,
    /// As published: percent.
    pub value: f64,
    /// The bakeoff eval component and metric it is set beside.
    pub component: String,
    pub metric: String,
    /// Same task, shots, format and metric (bakeoff may score fewer items).
    pub comparable: bool,
    pub note: String,
}

impl Published {
    /// The table shipped with bakeoff.
    pub fn shipped() -> Result<Published> {
        toml::from_str(PUBLISHED)
            .map_err(|e| ReportError::Input(format!("published.toml (built in): {e}")))
    }

    /// The published scores of the model whose original weights are `base`.
    pub fn for_base(&self, base: &str) -> Option<&PublishedModel> {
        self.models
            .iter()
            .find(|m| m.base.eq_ignore_ascii_case(base))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_table_reads_and_names_known_components_and_metrics() {
        let p = Published::shipped().unwrap();
        assert!(p.for_base("HuggingFaceTB/SmolLM2-135M-Instruct").is_some());
        assert!(p.for_base("qwen/qwen2.5-coder-0.5b-instruct").is_some());
        let known = [
            ("mmlu", "acc"),
            ("arc_challenge", "acc"),
            ("hellaswag", "acc_norm"),
            ("truthfulqa_mc", "acc_norm"),
            ("gsm8k", "exact_match_flexible"),
            ("ifeval", "prompt_level_strict"),
            ("humaneval", "pass@1"),
            ("mbpp", "pass@1"),
        ];
        for m in &p.models {
            assert!(m.url.starts_with("https://"), "{}", m.base);
            for s in &m.scores {
                assert!(
                    known.contains(&(s.component.as_str(), s.metric.as_str())),
                    "{}: {} / {}",
                    m.base,
                    s.component,
                    s.metric
                );
                assert!(
                    (0.0..=100.0).contains(&s.value),
                    "{}: {}",
                    m.base,
                    s.benchmark
                );
                assert!(!s.note.is_empty());
            }
        }
    }
}
