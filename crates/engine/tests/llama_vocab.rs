//! bakeoff's tokenizers against llama.cpp's own tokenizer tests: the vocabulary-only GGUF files
//! `models/ggml-vocab-*.gguf` with their `.gguf.inp` texts and `.gguf.out` expected ids, which
//! llama.cpp's test-tokenizer-0 checks with `add_special = false, parse_special = false`.
//!
//! The files come from the llama-cpp-python source package at the pinned version
//! (`bash scripts/fetch-llama-vocab.sh`), into `$BAKEOFF_VOCAB_CACHE` or
//! `~/.cache/bakeoff/llama-vocab`. Without them the tests print why and pass, unless
//! `BAKEOFF_E2E_REQUIRED=1`, where a missing file fails them.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use bakeoff_engine::loader::gguf::GgufContent as Content;
use bakeoff_engine::tokenizer::{Tokenizer, TokenizerKind};

/// Every vocabulary of the set whose tokenizer bakeoff implements, with the kind it must
/// report. The others (bert-bge: WordPiece; gemma-4: SentencePiece-style BPE; aquila, baichuan,
/// gpt-neox, nomic-bert-moe: no expected-token files) are not Llama/Qwen2 tokenizers.
const VOCABS: &[(&str, &str)] = &[
    ("llama-spm", "llama"),
    ("phi-3", "llama"),
    ("llama-bpe", "llama-bpe"),
    ("qwen2", "qwen2"),
    ("qwen35", "qwen35"),
    ("deepseek-llm", "deepseek-llm"),
    ("deepseek-coder", "deepseek-coder"),
    ("gpt-2", "gpt-2"),
    ("starcoder", "starcoder"),
    ("refact", "refact"),
    ("mpt", "mpt"),
    ("falcon", "falcon"),
    ("command-r", "command-r"),
];

fn required() -> bool {
    std::env::var("BAKEOFF_E2E_REQUIRED").is_ok_and(|v| v == "1")
}

fn cache_dir() -> PathBuf {
    match std::env::var_os("BAKEOFF_VOCAB_CACHE") {
        Some(d) => PathBuf::from(d),
        None => dirs::home_dir()
            .unwrap_or_default()
            .join(".cache/bakeoff/llama-vocab"),
    }
}

/// The cache folder, or None (after saying why) when the tests may skip.
fn vocab_dir() -> Option<PathBuf> {
    let dir = cache_dir();
    if dir.join("ggml-vocab-llama-spm.gguf").is_file() {
        return Some(dir);
    }
    let why = format!(
        "llama.cpp's vocabulary tests are not in {} (run scripts/fetch-llama-vocab.sh)",
        dir.display()
    );
    assert!(!required(), "BAKEOFF_E2E_REQUIRED=1: {why}");
    eprintln!("skipping: {why}");
    None
}

fn load(path: &Path) -> Tokenizer {
    let content = Content::read_file(path).unwrap_or_else(|e| panic!("{e}"));
    Tokenizer::from_gguf(&content, path).unwrap_or_else(|e| panic!("{e}"))
}

/// The (text, ids) pairs of a `.inp`/`.out` pair, split as test-tokenizer-0 does.
fn cases(dir: &Path, name: &str) -> Vec<(String, Vec<u32>)> {
    let inp = dir.join(format!("ggml-vocab-{name}.gguf.inp"));
    let out = dir.join(format!("ggml-vocab-{name}.gguf.out"));
    let inp = std::fs::read_to_string(&inp).unwrap_or_else(|e| panic!("{}: {e}", inp.display()));
    let out = std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    // As test-tokenizer-0: a separator at the very end starts no further text.
    let sep = "\n__ggml_vocab_test__\n";
    let mut texts: Vec<&str> = inp.split(sep).collect();
    if inp.ends_with(sep) {
        texts.pop();
    }
    let ids: Vec<Vec<u32>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|t| {
                    t.parse()
                        .unwrap_or_else(|e| panic!("{name}.out: {t:?}: {e}"))
                })
                .collect()
        })
        .collect();
    assert_eq!(
        texts.len(),
        ids.len(),
        "{name}: .inp and .out differ in length"
    );
    texts.into_iter().map(str::to_string).zip(ids).collect()
}

#[test]
fn every_llama_cpp_vocabulary_test_passes() {
    let Some(dir) = vocab_dir() else { return };
    let mut report = Vec::new();
    let mut failures = Vec::new();
    let mut total = 0;
    for &(name, pre) in VOCABS {
        let tok = load(&dir.join(format!("ggml-vocab-{name}.gguf")));
        let kind_ok = match tok.kind() {
            Some(TokenizerKind::SentencePiece { .. }) => pre == "llama",
            Some(TokenizerKind::ByteLevelBpe { pre: p }) => p == pre,
            None => false,
        };
        assert!(kind_ok, "{name}: kind {:?}, expected {pre}", tok.kind());
        let cases = cases(&dir, name);
        let mut bad = 0;
        for (text, want) in &cases {
            let got = tok.encode_with(text, false, false).unwrap();
            if &got != want {
                bad += 1;
                failures.push(format!(
                    "  {name} {text:?}\n    want {want:?}\n    got  {got:?}"
                ));
            }
        }
        total += cases.len();
        report.push(format!("{name}: {}/{}", cases.len() - bad, cases.len()));
    }
    eprintln!("llama.cpp vocabulary tests: {}", report.join(", "));
    assert!(
        failures.is_empty(),
        "{} of {total} llama.cpp expected tokenizations differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn other_tokenizer_models_are_refused_by_name() {
    let Some(dir) = vocab_dir() else { return };
    let path = dir.join("ggml-vocab-bert-bge.gguf");
    let content = Content::read_file(&path).unwrap();
    let err = Tokenizer::from_gguf(&content, &path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"bert\""), "{err}");
}
