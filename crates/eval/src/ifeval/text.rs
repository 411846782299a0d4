//! Text helpers with the behaviour of IFEval's upstream utilities: sentence splitting, word
//! counting, Python's `str.isupper` / `str.islower`, and language identification.

use std::sync::OnceLock;

use regex::{Captures, Regex};

struct SentenceRes {
    prefixes: Regex,
    websites: Regex,
    digits: Regex,
    multiple_dots: Regex,
    single_letter: Regex,
    acronym_starter: Regex,
    three_letters: Regex,
    two_letters: Regex,
    suffix_starter: Regex,
    suffix: Regex,
    letter_dot: Regex,
}

const STARTERS: &str = r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s|However\s|That\s|This\s|Wherever)";

fn sentence_res() -> Option<&'static SentenceRes> {
    static RES: OnceLock<Option<SentenceRes>> = OnceLock::new();
    RES.get_or_init(|| {
        Some(SentenceRes {
            prefixes: Regex::new(r"(Mr|St|Mrs|Ms|Dr)[.]").ok()?,
            websites: Regex::new(r"[.](com|net|org|io|gov|edu|me)").ok()?,
            digits: Regex::new(r"([0-9])[.]([0-9])").ok()?,
            multiple_dots: Regex::new(r"\.{2,}").ok()?,
            single_letter: Regex::new(r"\s([A-Za-z])[.] ").ok()?,
            acronym_starter: Regex::new(&format!(r"([A-Z][.][A-Z][.](?:[A-Z][.])?) {STARTERS}"))
                .ok()?,
            three_letters: Regex::new(r"([A-Za-z])[.]([A-Za-z])[.]([A-Za-z])[.]").ok()?,
            two_letters: Regex::new(r"([A-Za-z])[.]([A-Za-z])[.]").ok()?,
            suffix_starter: Regex::new(&format!(r" (Inc|Ltd|Jr|Sr|Co)[.] {STARTERS}")).ok()?,
            suffix: Regex::new(r" (Inc|Ltd|Jr|Sr|Co)[.]").ok()?,
            letter_dot: Regex::new(r" ([A-Za-z])[.]").ok()?,
        })
    })
    .as_ref()
}

/// Splits text into sentences with the rules of IFEval's `split_into_sentences` (abbreviations,
/// acronyms, decimals, web domains and ellipses do not end a sentence).
pub fn split_into_sentences(text: &str) -> Vec<String> {
    let Some(r) = sentence_res() else {
        return vec![text.to_string()];
    };
    let mut t = format!(" {text}  ").replace('\n', " ");
    t = r.prefixes.replace_all(&t, "${1}<prd>").into_owned();
    t = r.websites.replace_all(&t, "<prd>${1}").into_owned();
    t = r.digits.replace_all(&t, "${1}<prd>${2}").into_owned();
    t = r
        .multiple_dots
        .replace_all(&t, |c: &Captures| {
            format!("{}<stop>", "<prd>".repeat(c[0].len()))
        })
        .into_owned();
    t = t.replace("Ph.D.", "Ph<prd>D<prd>");
    t = r.single_letter.replace_all(&t, " ${1}<prd> ").into_owned();
    t = r
        .acronym_starter
        .replace_all(&t, "${1}<stop> ${2}")
        .into_owned();
    t = r
        .three_letters
        .replace_all(&t, "${1}<prd>${2}<prd>${3}<prd>")
        .into_owned();
    t = r
        .two_letters
        .replace_all(&t, "${1}<prd>${2}<prd>")
        .into_owned();
    t = r
        .suffix_starter
        .replace_all(&t, " ${1}<stop> ${2}")
        .into_owned();
    t = r.suffix.replace_all(&t, " ${1}<prd>").into_owned();
    t = r.letter_dot.replace_all(&t, " ${1}<prd>").into_owned();
    t = t.replace(".\u{201d}", "\u{201d}.");
    t = t.replace(".\"", "\".");
    t = t.replace("!\"", "\"!");
    t = t.replace("?\"", "\"?");
    t = t
        .replace('.', ".<stop>")
        .replace('?', "?<stop>")
        .replace('!', "!<stop>");
    t = t.replace("<prd>", ".");
    let mut out: Vec<String> = t.split("<stop>").map(|s| s.trim().to_string()).collect();
    if out.last().is_some_and(|s| s.is_empty()) {
        out.pop();
    }
    out
}

pub fn count_sentences(text: &str) -> usize {
    split_into_sentences(text).len()
}

fn word_re() -> Option<&'static Regex> {
    static RE: OnceLock<Option<Regex>> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\w+").ok()).as_ref()
}

/// Words as `\w+` runs (nltk's `RegexpTokenizer(r"\w+")`, which IFEval's `count_words` uses).
pub fn words(text: &str) -> Vec<&str> {
    match word_re() {
        Some(re) => re.find_iter(text).map(|m| m.as_str()).collect(),
        None => text.split_whitespace().collect(),
    }
}

pub fn count_words(text: &str) -> usize {
    words(text).len()
}

/// Python's `str.isupper()`: at least one cased character and no lowercase one.
pub fn is_upper(s: &str) -> bool {
    s.chars().any(char::is_uppercase) && !s.chars().any(char::is_lowercase)
}

/// Python's `str.islower()`: at least one cased character and no uppercase one.
pub fn is_lower(s: &str) -> bool {
    s.chars().any(char::is_lowercase) && !s.chars().any(char::is_uppercase)
}

/// ISO 639-1 (what IFEval's kwargs use) to whatlang's ISO 639-3.
fn iso639_3(code: &str) -> Option<&'static str> {
    Some(match code {
        "en" => "eng",
        "de" => "deu",
        "fr" => "fra",
        "es" => "spa",
        "it" => "ita",
        "pt" => "por",
        "ru" => "rus",
        "bg" => "bul",
        "uk" => "ukr",
        "pl" => "pol",
        "nl" => "nld",
        "fi" => "fin",
        "sv" => "swe",
        "da" => "dan",
        "tr" => "tur",
        "ar" => "ara",
        "fa" => "pes",
        "ur" => "urd",
        "hi" => "hin",
        "mr" => "mar",
        "ne" => "nep",
        "bn" => "ben",
        "gu" => "guj",
        "pa" => "pan",
        "kn" => "kan",
        "te" => "tel",
        "ta" => "tam",
        "ml" => "mal",
        "th" => "tha",
        "vi" => "vie",
        "ko" => "kor",
        "ja" => "jpn",
        "zh" => "cmn",
        "he" => "heb",
        "el" => "ell",
        "id" => "ind",
        _ => return None,
    })
}

/// Whether `text` is in language `code` (ISO 639-1). `None` when the detector cannot tell (no
/// letters, or a language it does not know, e.g. Swahili): upstream counts a failed detection as
/// a pass, and so do the checkers.
pub fn is_language(text: &str, code: &str) -> Option<bool> {
    let want = iso639_3(code).and_then(whatlang::Lang::from_code)?;
    let info = whatlang::detect(&text.to_lowercase())?;
    Some(info.lang() == want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_follow_upstream_rules() {
        assert_eq!(count_sentences("Hello world. How are you? Fine!"), 3);
        assert_eq!(
            count_sentences("Mr. Smith went to Washington. He met Dr. Jones."),
            2
        );
        assert_eq!(
            count_sentences("Pi is 3.14 roughly. Visit example.com today."),
            2
        );
        assert_eq!(
            count_sentences("It was the U.S.A. that won. Then it ended."),
            2
        );
        assert_eq!(count_sentences("Wait... what happened"), 2);
        assert_eq!(count_sentences("no punctuation at all"), 1);
        assert_eq!(count_sentences(""), 0);
    }

    #[test]
    fn words_and_case() {
        assert_eq!(count_words("Hello, world! It's 2024."), 5);
        assert!(is_upper("HELLO, WORLD 1"));
        assert!(!is_upper("Hello"));
        assert!(!is_upper("123"));
        assert!(is_lower("hello, world"));
        assert!(!is_lower("hello World"));
    }

    #[test]
    fn language_detection() {
        let en =
            "The quick brown fox jumps over the lazy dog while the children watch from the window.";
        let de = "Der schnelle braune Fuchs springt über den faulen Hund, während die Kinder aus dem Fenster schauen.";
        assert_eq!(is_language(en, "en"), Some(true));
        assert_eq!(is_language(de, "de"), Some(true));
        assert_eq!(is_language(de, "en"), Some(false));
        assert_eq!(is_language(en, "xx"), None);
    }
}
