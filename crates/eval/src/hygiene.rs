//! Generation hygiene: deterministic checks on every generated output of a run. An output passes
//! when it is non-empty, stopped on its own (end-of-sequence or stop string) before the token cap,
//! shows no degenerate repetition, leaks no chat-template tokens, and stays in the prompt's script.

use std::io::Write;

use serde::{Deserialize, Serialize};

/// Chat-template markers that must never appear in the text of an answer.
pub const TEMPLATE_MARKERS: [&str; 11] = [
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "</s>",
    "<s>",
    "[INST]",
    "[/INST]",
    "<|eot_id|>",
];

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HygieneCheck {
    pub non_empty: bool,
    pub stopped: bool,
    pub no_repetition: bool,
    pub no_template_leak: bool,
    pub same_script: bool,
    /// Which marker leaked, or which repetition was seen.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub notes: Vec<String>,
}

impl HygieneCheck {
    pub fn pass(&self) -> bool {
        self.non_empty
            && self.stopped
            && self.no_repetition
            && self.no_template_leak
            && self.same_script
    }
}

/// The first n-gram (n = 1..=8 words) repeated back to back at least 4 times (8 for single words).
pub fn repeated_ngram(text: &str) -> Option<String> {
    let w: Vec<&str> = text.split_whitespace().collect();
    for n in 1..=8usize {
        let need = if n == 1 { 8 } else { 4 };
        if w.len() < n * need {
            continue;
        }
        let mut i = 0;
        while i + n * need <= w.len() {
            let mut reps = 1;
            while i + (reps + 1) * n <= w.len()
                && w[i..i + n] == w[i + reps * n..i + (reps + 1) * n]
            {
                reps += 1;
            }
            if reps >= need {
                return Some(format!("`{}` ×{reps}", w[i..i + n].join(" ")));
            }
            i += 1;
        }
    }
    None
}

/// zlib-compressed size / raw size; low values mean highly repetitive text.
pub fn compression_ratio(text: &str) -> f64 {
    if text.is_empty() {
        return 1.0;
    }
    let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    if enc.write_all(text.as_bytes()).is_err() {
        return 1.0;
    }
    match enc.finish() {
        Ok(c) => c.len() as f64 / text.len() as f64,
        Err(_) => 1.0,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Script {
    Latin,
    Cyrillic,
    Greek,
    Arabic,
    Hebrew,
    Devanagari,
    Cjk,
    Hangul,
    Thai,
    Other,
}

fn script(c: char) -> Option<Script> {
    if !c.is_alphabetic() {
        return None;
    }
    Some(match c as u32 {
        0x0041..=0x024F | 0x1E00..=0x1EFF => Script::Latin,
        0x0370..=0x03FF => Script::Greek,
        0x0400..=0x052F => Script::Cyrillic,
        0x0590..=0x05FF => Script::Hebrew,
        0x0600..=0x06FF | 0x0750..=0x077F => Script::Arabic,
        0x0900..=0x097F => Script::Devanagari,
        0x0E00..=0x0E7F => Script::Thai,
        0xAC00..=0xD7AF | 0x1100..=0x11FF => Script::Hangul,
        0x3040..=0x30FF | 0x4E00..=0x9FFF | 0x3400..=0x4DBF => Script::Cjk,
        _ => Script::Other,
    })
}

fn dominant_script(text: &str) -> Option<(Script, f64)> {
    let mut counts: Vec<(Script, usize)> = Vec::new();
    let mut total = 0;
    for s in text.chars().filter_map(script) {
        total += 1;
        match counts.iter_mut().find(|(k, _)| *k == s) {
            Some((_, c)) => *c += 1,
            None => counts.push((s, 1)),
        }
    }
    let (s, c) = counts.into_iter().max_by_key(|(_, c)| *c)?;
    Some((s, c as f64 / total as f64))
}

/// Whether the prompt asks for another language or script (then the script check is skipped).
fn asks_for_language(prompt: &str) -> bool {
    let p = prompt.to_lowercase();
    [
        "language",
        "translate",
        "in french",
        "in german",
        "in spanish",
        "in chinese",
        "in hindi",
        "in russian",
        "in japanese",
        "in korean",
        "in arabic",
    ]
    .iter()
    .any(|k| p.contains(k))
}

/// `stopped`: the generation ended on end-of-sequence or a stop string (not the cap).
pub fn check(prompt: &str, output: &str, stopped: bool) -> HygieneCheck {
    let mut h = HygieneCheck {
        non_empty: !output.trim().is_empty(),
        stopped,
        ..Default::default()
    };
    h.no_template_leak = true;
    for m in TEMPLATE_MARKERS {
        if output.contains(m) {
            h.no_template_leak = false;
            h.notes.push(format!("template marker {m}"));
        }
    }
    h.no_repetition = true;
    if let Some(r) = repeated_ngram(output) {
        h.no_repetition = false;
        h.notes.push(format!("repetition {r}"));
    }
    if output.len() > 200 {
        let ratio = compression_ratio(output);
        if ratio < 0.25 {
            h.no_repetition = false;
            h.notes.push(format!("compression ratio {ratio:.2}"));
        }
    }
    h.same_script = true;
    if !asks_for_language(prompt)
        && let (Some((ps, _)), Some((os, share))) =
            (dominant_script(prompt), dominant_script(output))
        && ps != os
        && share > 0.5
    {
        h.same_script = false;
        h.notes.push(format!("script {os:?} instead of {ps:?}"));
    }
    h
}

/// Distinct-2: distinct word bigrams / all word bigrams over a set of outputs (0 when none).
pub fn distinct_2<'a>(outputs: impl IntoIterator<Item = &'a str>) -> f64 {
    let mut all = 0usize;
    let mut set = std::collections::HashSet::new();
    for o in outputs {
        let w: Vec<&str> = o.split_whitespace().collect();
        for p in w.windows(2) {
            all += 1;
            set.insert((p[0].to_string(), p[1].to_string()));
        }
    }
    if all == 0 {
        0.0
    } else {
        set.len() as f64 / all as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_output_passes() {
        let h = check(
            "Write a haiku about rain.",
            "Soft rain on the roof,\nthe garden drinks in silence,\nclouds drift far away.",
            true,
        );
        assert!(h.pass(), "{h:?}");
    }

    #[test]
    fn each_failure_is_caught() {
        assert!(!check("p", "", true).pass());
        assert!(!check("p", "fine text", false).pass());
        let leak = check("p", "Answer.<|im_start|>user", true);
        assert!(!leak.no_template_leak && !leak.pass());
        let rep = check(
            "p",
            "I think that I think that I think that I think that is it",
            true,
        );
        assert!(!rep.no_repetition);
        let long = "abc ".repeat(100);
        assert!(!check("p", &long, true).no_repetition);
        let script = check(
            "Explain rain.",
            "Дождь идёт, когда облака становятся тяжёлыми.",
            true,
        );
        assert!(!script.same_script);
        assert!(check("Answer in Russian: what is rain?", "Дождь идёт.", true).same_script);
    }

    #[test]
    fn ngram_detection() {
        assert!(repeated_ngram("a b a b a b a b").is_some());
        assert!(repeated_ngram("a b a b a b").is_none());
        assert!(repeated_ngram("the the the the").is_none());
        assert!(repeated_ngram(&"x ".repeat(8)).is_some());
    }

    #[test]
    fn distinct() {
        assert_eq!(distinct_2(["a b c", "a b"]), 2.0 / 3.0);
        assert_eq!(distinct_2([""]), 0.0);
    }
}
