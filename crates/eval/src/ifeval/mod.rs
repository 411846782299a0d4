//! IFEval scoring: each instruction is checked on the response (*strict*) and, for *loose*, on
//! eight variants of it (as is, first line removed, last line removed, both removed, and each of
//! those with `*` deleted); it passes loose if any non-empty variant passes. A prompt passes when
//! all its instructions do. Four metrics: prompt-level and instruction-level, strict and loose.

pub mod checkers;
pub mod text;

use serde::Serialize;

use crate::data::IfevalItem;

pub use checkers::{INSTRUCTIONS, check};

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct InstructionResult {
    pub id: String,
    pub strict: bool,
    pub loose: bool,
    /// Set when the kwargs could not be understood (counted as a failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct IfevalResult {
    pub instructions: Vec<InstructionResult>,
    pub prompt_strict: bool,
    pub prompt_loose: bool,
}

impl IfevalResult {
    pub fn inst_strict_fraction(&self) -> f64 {
        frac(
            self.instructions.iter().filter(|i| i.strict).count(),
            self.instructions.len(),
        )
    }
    pub fn inst_loose_fraction(&self) -> f64 {
        frac(
            self.instructions.iter().filter(|i| i.loose).count(),
            self.instructions.len(),
        )
    }
}

fn frac(k: usize, n: usize) -> f64 {
    if n == 0 { 0.0 } else { k as f64 / n as f64 }
}

/// The eight loose variants of a response, in upstream's order.
pub fn loose_variants(response: &str) -> Vec<String> {
    let lines: Vec<&str> = response.split('\n').collect();
    let join = |ls: &[&str]| ls.join("\n").trim().to_string();
    let remove_first = join(lines.get(1..).unwrap_or(&[]));
    let remove_last = join(lines.get(..lines.len().saturating_sub(1)).unwrap_or(&[]));
    let remove_both = if lines.len() >= 2 {
        join(&lines[1..lines.len() - 1])
    } else {
        String::new()
    };
    let strip = |s: &str| s.replace('*', "");
    vec![
        response.to_string(),
        strip(response),
        remove_first.clone(),
        remove_last.clone(),
        remove_both.clone(),
        strip(&remove_first),
        strip(&remove_last),
        strip(&remove_both),
    ]
}

pub fn evaluate(item: &IfevalItem, response: &str) -> IfevalResult {
    let variants = loose_variants(response);
    let empty = serde_json::Map::new();
    let instructions: Vec<InstructionResult> = item
        .instruction_id_list
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let kw = item.kwargs.get(i).unwrap_or(&empty);
            let strict = if response.trim().is_empty() {
                Ok(false)
            } else {
                check(id, kw, response)
            };
            match strict {
                Err(e) => InstructionResult {
                    id: id.clone(),
                    strict: false,
                    loose: false,
                    error: Some(e),
                },
                Ok(s) => {
                    let loose = variants
                        .iter()
                        .any(|r| !r.trim().is_empty() && check(id, kw, r) == Ok(true));
                    InstructionResult {
                        id: id.clone(),
                        strict: s,
                        loose,
                        error: None,
                    }
                }
            }
        })
        .collect();
    IfevalResult {
        prompt_strict: !instructions.is_empty() && instructions.iter().all(|i| i.strict),
        prompt_loose: !instructions.is_empty() && instructions.iter().all(|i| i.loose),
        instructions,
    }
}

/// Whether a prompt asks for creative writing (the creativity proxy's items).
pub fn is_creative(prompt: &str) -> bool {
    let p = prompt.to_lowercase();
    [
        "poem",
        "story",
        "song",
        "riddle",
        "limerick",
        "haiku",
        "rap ",
        "lyrics",
        "joke",
        "sonnet",
        "fairy tale",
    ]
    .iter()
    .any(|w| p.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(ids: &[&str], kwargs: serde_json::Value) -> IfevalItem {
        IfevalItem {
            key: 1,
            prompt: "p".into(),
            instruction_id_list: ids.iter().map(|s| s.to_string()).collect(),
            kwargs: kwargs
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_object().cloned()).collect())
                .unwrap_or_default(),
        }
    }

    #[test]
    fn strict_and_loose_levels() {
        let it = item(
            &["punctuation:no_comma", "startend:quotation"],
            json!([{}, {}]),
        );
        // No comma, quoted: both pass strict.
        let r = evaluate(&it, "\"Hello there.\"");
        assert!(r.prompt_strict && r.prompt_loose);
        // A preamble line breaks strict quotation but the loose variant without it passes.
        let r = evaluate(&it, "Sure here it is:\n\"Hello there.\"");
        assert!(r.instructions[0].strict);
        assert!(!r.instructions[1].strict);
        assert!(r.instructions[1].loose);
        assert!(!r.prompt_strict && r.prompt_loose);
        assert_eq!(r.inst_strict_fraction(), 0.5);
        assert_eq!(r.inst_loose_fraction(), 1.0);
        // A comma fails both.
        let r = evaluate(&it, "\"Hello, there.\"");
        assert!(!r.prompt_strict && !r.prompt_loose);
        // Empty responses fail everything.
        let r = evaluate(&it, "   ");
        assert!(!r.instructions.iter().any(|i| i.strict || i.loose));
    }

    #[test]
    fn loose_strips_markdown_stars() {
        let it = item(
            &["startend:end_checker"],
            json!([{"end_phrase": "The end."}]),
        );
        let r = evaluate(&it, "Story text. **The end.**");
        assert!(!r.prompt_strict && r.prompt_loose);
    }

    #[test]
    fn bad_kwargs_fail_with_an_error() {
        let it = item(&["keywords:frequency"], json!([{}]));
        let r = evaluate(&it, "text");
        assert!(r.instructions[0].error.is_some() && !r.prompt_loose);
    }

    #[test]
    fn variants() {
        let v = loose_variants("a\n*b*\nc");
        assert_eq!(
            v,
            vec![
                "a\n*b*\nc",
                "a\nb\nc",
                "*b*\nc",
                "a\n*b*",
                "*b*",
                "b\nc",
                "a\nb",
                "b"
            ]
        );
    }
}
