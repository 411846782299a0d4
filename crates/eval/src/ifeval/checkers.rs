//! IFEval's 25 verifiable instructions, re-implemented from the paper (Zhou et al. 2023) and the
//! documented upstream behaviour. Each takes the instruction's kwargs and a response.

use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value};

use super::text;

/// Every instruction id IFEval uses.
pub const INSTRUCTIONS: [&str; 25] = [
    "change_case:capital_word_frequency",
    "change_case:english_capital",
    "change_case:english_lowercase",
    "combination:repeat_prompt",
    "combination:two_responses",
    "detectable_content:number_placeholders",
    "detectable_content:postscript",
    "detectable_format:constrained_response",
    "detectable_format:json_format",
    "detectable_format:multiple_sections",
    "detectable_format:number_bullet_lists",
    "detectable_format:number_highlighted_sections",
    "detectable_format:title",
    "keywords:existence",
    "keywords:forbidden_words",
    "keywords:frequency",
    "keywords:letter_frequency",
    "language:response_language",
    "length_constraints:nth_paragraph_first_word",
    "length_constraints:number_paragraphs",
    "length_constraints:number_sentences",
    "length_constraints:number_words",
    "punctuation:no_comma",
    "startend:end_checker",
    "startend:quotation",
];

type R<T> = std::result::Result<T, String>;

struct Kw<'a>(&'a Map<String, Value>);

impl Kw<'_> {
    fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }
    fn str(&self, k: &str) -> R<String> {
        self.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("missing string kwarg `{k}`"))
    }
    fn num(&self, k: &str) -> R<usize> {
        self.get(k)
            .and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f as u64)))
            .map(|n| n as usize)
            .ok_or_else(|| format!("missing number kwarg `{k}`"))
    }
    fn strs(&self, k: &str) -> R<Vec<String>> {
        self.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .ok_or_else(|| format!("missing list kwarg `{k}`"))
    }
}

/// `less than` → count < n, `at least` → count ≥ n.
fn relation(rel: &str, count: usize, n: usize) -> R<bool> {
    match rel {
        "less than" => Ok(count < n),
        "at least" => Ok(count >= n),
        o => Err(format!("unknown relation `{o}`")),
    }
}

fn re(pattern: &str, ignore_case: bool, multi_line: bool) -> R<Regex> {
    RegexBuilder::new(pattern)
        .case_insensitive(ignore_case)
        .multi_line(multi_line)
        .build()
        .map_err(|e| format!("bad pattern {pattern:?}: {e}"))
}

/// Checks one instruction. `Err` means the instruction id or its kwargs are not understood.
pub fn check(id: &str, kwargs: &Map<String, Value>, response: &str) -> R<bool> {
    let kw = Kw(kwargs);
    let v = response;
    match id {
        "change_case:capital_word_frequency" => {
            let n = kw.num("capital_frequency")?;
            let count = text::words(v)
                .into_iter()
                .filter(|w| text::is_upper(w))
                .count();
            relation(&kw.str("capital_relation")?, count, n)
        }
        "change_case:english_capital" => {
            Ok(text::is_upper(v) && text::is_language(v, "en").unwrap_or(true))
        }
        "change_case:english_lowercase" => {
            Ok(text::is_lower(v) && text::is_language(v, "en").unwrap_or(true))
        }
        "combination:repeat_prompt" => {
            let p = kw.str("prompt_to_repeat")?;
            Ok(v.trim()
                .to_lowercase()
                .starts_with(&p.trim().to_lowercase()))
        }
        "combination:two_responses" => {
            let parts: Vec<&str> = v.split("******").collect();
            let mut valid = Vec::new();
            for (i, p) in parts.iter().enumerate() {
                if p.trim().is_empty() {
                    if i != 0 && i != parts.len() - 1 {
                        return Ok(false);
                    }
                } else {
                    valid.push(p.trim());
                }
            }
            Ok(valid.len() == 2 && valid[0] != valid[1])
        }
        "detectable_content:number_placeholders" => {
            let n = kw.num("num_placeholders")?;
            Ok(re(r"\[.*?\]", false, false)?.find_iter(v).count() >= n)
        }
        "detectable_content:postscript" => {
            let marker = kw.str("postscript_marker")?;
            let pattern = match marker.as_str() {
                "P.P.S" => r"\s*p\.\s?p\.\s?s.*$".to_string(),
                "P.S." => r"\s*p\.\s?s\..*$".to_string(),
                m => format!(r"\s*{}.*$", regex::escape(&m.to_lowercase())),
            };
            Ok(re(&pattern, false, true)?.is_match(&v.to_lowercase()))
        }
        "detectable_format:constrained_response" => {
            let t = v.trim();
            Ok([
                "My answer is yes.",
                "My answer is no.",
                "My answer is maybe.",
            ]
            .iter()
            .any(|o| t.contains(o)))
        }
        "detectable_format:json_format" => {
            let t = v.trim();
            let t = t
                .strip_prefix("```json")
                .or_else(|| t.strip_prefix("```Json"))
                .or_else(|| t.strip_prefix("```JSON"))
                .or_else(|| t.strip_prefix("```"))
                .unwrap_or(t);
            let t = t.strip_suffix("```").unwrap_or(t).trim();
            Ok(serde_json::from_str::<Value>(t).is_ok())
        }
        "detectable_format:multiple_sections" => {
            let splitter = kw.str("section_spliter")?;
            let n = kw.num("num_sections")?;
            let r = re(
                &format!(r"\s?{}\s?\d+\s?", regex::escape(&splitter)),
                false,
                false,
            )?;
            Ok(r.split(v).count().saturating_sub(1) >= n)
        }
        "detectable_format:number_bullet_lists" => {
            let n = kw.num("num_bullets")?;
            let stars = re(r"^\s*\*[^\*].*$", false, true)?.find_iter(v).count();
            let dashes = re(r"^\s*-.*$", false, true)?.find_iter(v).count();
            Ok(stars + dashes == n)
        }
        "detectable_format:number_highlighted_sections" => {
            let n = kw.num("num_highlights")?;
            let single = re(r"\*[^\n\*]*\*", false, false)?
                .find_iter(v)
                .filter(|m| !m.as_str().trim_matches('*').trim().is_empty())
                .count();
            let double = re(r"\*\*[^\n\*]*\*\*", false, false)?
                .find_iter(v)
                .filter(|m| {
                    let s = m.as_str();
                    let s = s.strip_prefix("**").unwrap_or(s);
                    !s.strip_suffix("**").unwrap_or(s).trim().is_empty()
                })
                .count();
            Ok(single + double >= n)
        }
        "detectable_format:title" => Ok(re(r"<<[^\n]+>>", false, false)?.find_iter(v).any(|m| {
            !m.as_str()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .trim()
                .is_empty()
        })),
        "keywords:existence" => {
            let words = kw.strs("keywords")?;
            for w in words {
                if !re(&regex::escape(&w), true, false)?.is_match(v) {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        "keywords:forbidden_words" => {
            let words = kw.strs("forbidden_words")?;
            for w in words {
                if re(&format!(r"\b{}\b", regex::escape(&w)), true, false)?.is_match(v) {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        "keywords:frequency" => {
            let k = kw.str("keyword")?;
            let n = kw.num("frequency")?;
            let count = re(&regex::escape(&k), true, false)?.find_iter(v).count();
            relation(&kw.str("relation")?, count, n)
        }
        "keywords:letter_frequency" => {
            let letter = kw.str("letter")?.trim().to_lowercase();
            let n = kw.num("let_frequency")?;
            let c = letter.chars().next().ok_or("empty letter")?;
            let count = v.to_lowercase().chars().filter(|x| *x == c).count();
            relation(&kw.str("let_relation")?, count, n)
        }
        "language:response_language" => {
            let lang = kw.str("language")?;
            Ok(text::is_language(v, &lang).unwrap_or(true))
        }
        "length_constraints:nth_paragraph_first_word" => {
            let num = kw.num("num_paragraphs")?;
            let nth = kw.num("nth_paragraph")?;
            let first = kw.str("first_word")?.to_lowercase();
            let paragraphs: Vec<&str> = v.split("\n\n").collect();
            let count = paragraphs.iter().filter(|p| !p.trim().is_empty()).count();
            if nth == 0 || nth > count {
                return Ok(false);
            }
            let Some(p) = paragraphs.get(nth - 1).map(|p| p.trim()) else {
                return Ok(false);
            };
            let Some(word) = p.split_whitespace().next() else {
                return Ok(false);
            };
            let word = word.trim_start_matches('\'').trim_start_matches('"');
            let got: String = word
                .chars()
                .take_while(|c| !matches!(c, '.' | ',' | '?' | '!' | '\'' | '"'))
                .flat_map(char::to_lowercase)
                .collect();
            Ok(count == num && got == first)
        }
        "length_constraints:number_paragraphs" => {
            let n = kw.num("num_paragraphs")?;
            let parts: Vec<&str> = re(r"\s?\*\*\*\s?", false, false)?.split(v).collect();
            let mut count = parts.len();
            for (i, p) in parts.iter().enumerate() {
                if p.trim().is_empty() {
                    if i == 0 || i == parts.len() - 1 {
                        count -= 1;
                    } else {
                        return Ok(false);
                    }
                }
            }
            Ok(count == n)
        }
        "length_constraints:number_sentences" => {
            let n = kw.num("num_sentences")?;
            relation(&kw.str("relation")?, text::count_sentences(v), n)
        }
        "length_constraints:number_words" => {
            let n = kw.num("num_words")?;
            relation(&kw.str("relation")?, text::count_words(v), n)
        }
        "punctuation:no_comma" => Ok(!v.contains(',')),
        "startend:end_checker" => {
            let end = kw.str("end_phrase")?.trim().to_lowercase();
            Ok(v.trim().trim_matches('"').to_lowercase().ends_with(&end))
        }
        "startend:quotation" => {
            let t = v.trim();
            Ok(t.chars().count() > 1 && t.starts_with('"') && t.ends_with('"'))
        }
        other => Err(format!("unknown instruction `{other}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kw(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    /// Asserts that `pass` passes and `fail` fails instruction `id` with `kwargs`.
    fn both(id: &str, kwargs: Value, pass: &str, fail: &str) {
        let k = kw(kwargs);
        assert_eq!(check(id, &k, pass), Ok(true), "{id} should pass: {pass:?}");
        assert_eq!(check(id, &k, fail), Ok(false), "{id} should fail: {fail:?}");
    }

    #[test]
    fn capital_word_frequency() {
        let k = json!({"capital_frequency": 3, "capital_relation": "at least"});
        both(
            "change_case:capital_word_frequency",
            k,
            "THIS IS VERY important",
            "This is Not important",
        );
        let k = json!({"capital_frequency": 2, "capital_relation": "less than"});
        both(
            "change_case:capital_word_frequency",
            k,
            "Only ONE shout here",
            "TWO SHOUTS here",
        );
    }

    #[test]
    fn english_capital() {
        both(
            "change_case:english_capital",
            json!({}),
            "THE WEATHER TODAY IS SUNNY AND WARM, SO WE WILL GO TO THE BEACH WITH OUR FRIENDS.",
            "The weather today is sunny and warm, so we will go to the beach with our friends.",
        );
    }

    #[test]
    fn english_lowercase() {
        both(
            "change_case:english_lowercase",
            json!({}),
            "the weather today is sunny and warm, so we will go to the beach with our friends.",
            "The weather today is sunny and warm, so we will go to the beach with our friends.",
        );
    }

    #[test]
    fn repeat_prompt() {
        both(
            "combination:repeat_prompt",
            json!({"prompt_to_repeat": "Write a haiku about moms."}),
            "write a haiku about moms. Mother's hands...",
            "Here is a haiku about moms.",
        );
    }

    #[test]
    fn two_responses() {
        both(
            "combination:two_responses",
            json!({}),
            "First answer.\n******\nSecond answer.",
            "Only one answer.",
        );
        let k = kw(json!({}));
        assert_eq!(
            check("combination:two_responses", &k, "Same.\n******\nSame."),
            Ok(false)
        );
        assert_eq!(
            check("combination:two_responses", &k, "A\n******\n\n******\nB"),
            Ok(false)
        );
    }

    #[test]
    fn number_placeholders() {
        both(
            "detectable_content:number_placeholders",
            json!({"num_placeholders": 2}),
            "Dear [name], meet me at [address].",
            "Dear [name], meet me there.",
        );
    }

    #[test]
    fn postscript() {
        both(
            "detectable_content:postscript",
            json!({"postscript_marker": "P.S."}),
            "Hello.\n\nP.S. See you",
            "Hello. See you",
        );
        both(
            "detectable_content:postscript",
            json!({"postscript_marker": "P.P.S"}),
            "Hi\nP.P.S bye",
            "Hi\nP.S. bye",
        );
    }

    #[test]
    fn constrained_response() {
        both(
            "detectable_format:constrained_response",
            json!({}),
            "My answer is yes.",
            "Yes, definitely.",
        );
    }

    #[test]
    fn json_format() {
        both(
            "detectable_format:json_format",
            json!({}),
            "```json\n{\"a\": 1}\n```",
            "{a: 1}",
        );
        let k = kw(json!({}));
        assert_eq!(
            check("detectable_format:json_format", &k, "  [1, 2, 3] "),
            Ok(true)
        );
    }

    #[test]
    fn multiple_sections() {
        both(
            "detectable_format:multiple_sections",
            json!({"section_spliter": "SECTION", "num_sections": 2}),
            "SECTION 1\nIntro\nSECTION 2\nBody",
            "SECTION 1\nIntro only",
        );
    }

    #[test]
    fn number_bullet_lists() {
        both(
            "detectable_format:number_bullet_lists",
            json!({"num_bullets": 3}),
            "Points:\n* one\n* two\n- three",
            "Points:\n* one\n* two",
        );
    }

    #[test]
    fn number_highlighted_sections() {
        both(
            "detectable_format:number_highlighted_sections",
            json!({"num_highlights": 2}),
            "This has *one part* and **another part**.",
            "This has *one part* and ** ** nothing.",
        );
    }

    #[test]
    fn title() {
        both(
            "detectable_format:title",
            json!({}),
            "<<My Poem>>\nRoses are red",
            "My Poem\nRoses are red",
        );
        let k = kw(json!({}));
        assert_eq!(
            check("detectable_format:title", &k, "<< >> text"),
            Ok(false)
        );
    }

    #[test]
    fn keywords_existence() {
        both(
            "keywords:existence",
            json!({"keywords": ["mom", "Mother"]}),
            "My MOM is a great mother.",
            "My mom is great.",
        );
    }

    #[test]
    fn forbidden_words() {
        both(
            "keywords:forbidden_words",
            json!({"forbidden_words": ["bad", "evil"]}),
            "This is a badge of honour.",
            "This is a Bad idea.",
        );
    }

    #[test]
    fn keyword_frequency() {
        both(
            "keywords:frequency",
            json!({"keyword": "cat", "frequency": 2, "relation": "at least"}),
            "The cat saw another Cat.",
            "The cat sat.",
        );
        both(
            "keywords:frequency",
            json!({"keyword": "cat", "frequency": 2, "relation": "less than"}),
            "The cat sat.",
            "The cat saw another cat.",
        );
    }

    #[test]
    fn letter_frequency() {
        both(
            "keywords:letter_frequency",
            json!({"letter": "z", "let_frequency": 3, "let_relation": "at least"}),
            "Zany zebras zigzag.",
            "Lazy dogs.",
        );
        both(
            "keywords:letter_frequency",
            json!({"letter": "a", "let_frequency": 2, "let_relation": "less than"}),
            "A dog.",
            "A cat and a dog.",
        );
    }

    #[test]
    fn response_language() {
        both(
            "language:response_language",
            json!({"language": "de"}),
            "Der schnelle braune Fuchs springt über den faulen Hund, während die Kinder aus dem Fenster schauen.",
            "The quick brown fox jumps over the lazy dog while the children watch from the window.",
        );
    }

    #[test]
    fn nth_paragraph_first_word() {
        let k = json!({"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "elm"});
        both(
            "length_constraints:nth_paragraph_first_word",
            k.clone(),
            "First paragraph.\n\n\"Elm, trees are tall.\n\nThird one.",
            "First paragraph.\n\nOak trees are tall.\n\nThird one.",
        );
        let kk = kw(k);
        // Right word, wrong paragraph count.
        assert_eq!(
            check(
                "length_constraints:nth_paragraph_first_word",
                &kk,
                "One.\n\nElm tree."
            ),
            Ok(false)
        );
    }

    #[test]
    fn number_paragraphs() {
        both(
            "length_constraints:number_paragraphs",
            json!({"num_paragraphs": 3}),
            "One.\n***\nTwo.\n***\nThree.",
            "One.\n***\n\n***\nThree.",
        );
    }

    #[test]
    fn number_sentences() {
        both(
            "length_constraints:number_sentences",
            json!({"num_sentences": 3, "relation": "less than"}),
            "One sentence. Two sentences.",
            "One. Two. Three. Four.",
        );
        both(
            "length_constraints:number_sentences",
            json!({"num_sentences": 2, "relation": "at least"}),
            "Dr. Who is here. He left.",
            "Dr. Who is here.",
        );
    }

    #[test]
    fn number_words() {
        both(
            "length_constraints:number_words",
            json!({"num_words": 5, "relation": "at least"}),
            "one two three four five",
            "one two three four",
        );
        both(
            "length_constraints:number_words",
            json!({"num_words": 3, "relation": "less than"}),
            "two words",
            "three whole words",
        );
    }

    #[test]
    fn no_comma() {
        both(
            "punctuation:no_comma",
            json!({}),
            "No commas here.",
            "Yes, a comma.",
        );
    }

    #[test]
    fn end_checker() {
        both(
            "startend:end_checker",
            json!({"end_phrase": "Any other questions?"}),
            "Here it is. any other questions?\"  ",
            "Any other questions? Thanks.",
        );
    }

    #[test]
    fn quotation() {
        both(
            "startend:quotation",
            json!({}),
            "  \"Quoted answer.\" ",
            "\"Half quoted.",
        );
        let k = kw(json!({}));
        assert_eq!(check("startend:quotation", &k, "\""), Ok(false));
    }

    #[test]
    fn every_instruction_is_known_and_errors_are_reported() {
        let k = kw(json!({}));
        for id in INSTRUCTIONS {
            let r = check(id, &k, "text");
            assert!(
                !matches!(&r, Err(e) if e.starts_with("unknown instruction")),
                "{id}"
            );
        }
        assert!(check("made:up", &k, "x").is_err());
        assert!(check("keywords:frequency", &k, "x").is_err());
    }
}
