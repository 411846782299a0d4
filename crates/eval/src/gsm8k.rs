//! GSM8K answer extraction: *strict* (the number after `####`, the format the prompt asks for)
//! and *flexible* (the last number anywhere in the text), as lm-evaluation-harness reports both.

use std::sync::OnceLock;

use regex::Regex;

/// The instruction appended to each question (0-shot chat, chain of thought).
pub const INSTRUCTION: &str = "Solve the problem step by step. At the end, write the final answer as a number on its own line in the form \"#### <number>\".";

fn strict_re() -> Option<&'static Regex> {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"####\s*\$?\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)").ok())
        .as_ref()
}

fn number_re() -> Option<&'static Regex> {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"-?\$?[0-9][0-9,]*(?:\.[0-9]+)?").ok())
        .as_ref()
}

/// Canonical form of a number: no `$`, commas, spaces or trailing `.`; no trailing decimal zeros.
pub fn normalize_number(s: &str) -> String {
    let mut t: String = s
        .trim()
        .chars()
        .filter(|c| !matches!(c, '$' | ',' | ' '))
        .collect();
    while t.ends_with('.') {
        t.pop();
    }
    if t.contains('.') {
        while t.ends_with('0') {
            t.pop();
        }
        if t.ends_with('.') {
            t.pop();
        }
    }
    if t == "-0" {
        t = "0".into();
    }
    t
}

/// The number after the last `####`, if the response uses the requested format.
pub fn extract_strict(text: &str) -> Option<String> {
    let re = strict_re()?;
    re.captures_iter(text)
        .last()
        .and_then(|c| c.get(1))
        .map(|m| normalize_number(m.as_str()))
}

/// The last number in the response.
pub fn extract_flexible(text: &str) -> Option<String> {
    let re = number_re()?;
    re.find_iter(text)
        .last()
        .map(|m| normalize_number(m.as_str()))
        .filter(|s| !s.is_empty() && s != "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize_number(" $1,234.50 "), "1234.5");
        assert_eq!(normalize_number("18.00"), "18");
        assert_eq!(normalize_number("18."), "18");
        assert_eq!(normalize_number("-7"), "-7");
        assert_eq!(normalize_number("0.0"), "0");
    }

    #[test]
    fn strict_and_flexible() {
        let t = "She sells 9 eggs for $2 each, so 9 * 2 = 18.\n#### 18";
        assert_eq!(extract_strict(t).as_deref(), Some("18"));
        assert_eq!(extract_flexible(t).as_deref(), Some("18"));
        let loose = "9 * 2 = $18 dollars. The answer is 18.";
        assert_eq!(extract_strict(loose), None);
        assert_eq!(extract_flexible(loose).as_deref(), Some("18"));
        assert_eq!(extract_strict("#### $1,000").as_deref(), Some("1000"));
        assert_eq!(extract_flexible("no numbers here"), None);
        assert_eq!(extract_flexible("it is -3.").as_deref(), Some("-3"));
    }
}
