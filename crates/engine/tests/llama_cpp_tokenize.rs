//! bakeoff's GGUF tokenizers against llama.cpp on the same files: scripts/reference/llama_tokenize.py
//! tokenizes a fixed, varied set of texts (code, numbers, contractions, emoji, CJK, odd
//! whitespace, special tokens inside text, chat renderings) with llama-cpp-python, with and
//! without BOS/EOS and special-token parsing, and every case must give the same ids here.
//!
//! Files: the shared vocabularies (../shared/vocab: Llama SentencePiece, Qwen2) and the real
//! models in `$BAKEOFF_REAL_MODELS` or `~/.cache/bakeoff/real-models` (../shared/models/fetch.sh),
//! those that are present. Python: `$BAKEOFF_PYTHON`, `.venv-ci` or `.venv-ref`, the first that
//! imports llama_cpp. Without it the test prints why and passes, unless `BAKEOFF_E2E_REQUIRED=1`;
//! then a missing Python or a missing model of the two that CI fetches fails it.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use bakeoff_engine::loader::gguf::GgufContent as Content;
use bakeoff_engine::tokenizer::Tokenizer;
use serde::Deserialize;

/// With whether `scripts/test.sh` fetches it (the others are compared when present: the 1.5B
/// file has the 0.5B file's vocabulary).
const REAL_MODELS: &[(&str, bool)] = &[
    ("smollm2-135m-instruct-q4_1.gguf", true),
    ("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", true),
    ("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", false),
];

#[derive(Deserialize)]
struct Output {
    llama_cpp_version: String,
    files: std::collections::BTreeMap<String, FileCases>,
}

#[derive(Deserialize)]
struct FileCases {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    text: String,
    add_special: bool,
    parse_special: bool,
    ids: Vec<u32>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn required() -> bool {
    std::env::var("BAKEOFF_E2E_REQUIRED").is_ok_and(|v| v == "1")
}

fn python() -> Option<PathBuf> {
    let cands: Vec<PathBuf> = std::env::var_os("BAKEOFF_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            root().join(".venv-ci/bin/python"),
            root().join(".venv-ref/bin/python"),
        ])
        .collect();
    cands.into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import llama_cpp"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn files() -> Vec<PathBuf> {
    let vocab = root().join("../shared/vocab");
    let mut out: Vec<PathBuf> = ["ggml-vocab-llama-spm.gguf", "ggml-vocab-qwen2.gguf"]
        .iter()
        .map(|f| vocab.join(f))
        .collect();
    for f in &out {
        assert!(f.is_file(), "missing shared vocabulary {}", f.display());
    }
    let real = std::env::var_os("BAKEOFF_REAL_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            dirs::home_dir()
                .unwrap_or_default()
                .join(".cache/bakeoff/real-models")
        });
    for &(m, fetched_by_ci) in REAL_MODELS {
        let p = real.join(m);
        if p.is_file() {
            out.push(p);
        } else {
            let why = format!(
                "real model {} is missing (../shared/models/fetch.sh)",
                p.display()
            );
            assert!(
                !(required() && fetched_by_ci),
                "BAKEOFF_E2E_REQUIRED=1: {why}"
            );
            eprintln!("not compared: {why}");
        }
    }
    out
}

fn load(path: &Path) -> Tokenizer {
    let content = Content::read_file(path).unwrap_or_else(|e| panic!("{e}"));
    Tokenizer::from_gguf(&content, path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn ids_match_llama_cpp_on_the_same_files() {
    let Some(py) = python() else {
        let why = "no Python that imports llama_cpp ($BAKEOFF_PYTHON, .venv-ci, .venv-ref; \
                   scripts/ci-python.sh builds one)";
        assert!(!required(), "BAKEOFF_E2E_REQUIRED=1: {why}");
        eprintln!("skipping: {why}");
        return;
    };
    let files = files();
    let out = Command::new(&py)
        .arg(root().join("scripts/reference/llama_tokenize.py"))
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "llama_tokenize.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference: Output = serde_json::from_slice(&out.stdout).unwrap();
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for path in &files {
        let key = path.to_string_lossy().to_string();
        let cases = &reference.files[&key].cases;
        let tok = load(path);
        let mut bad = 0;
        for c in cases {
            let got = tok
                .encode_with(&c.text, c.add_special, c.parse_special)
                .unwrap();
            if got != c.ids {
                bad += 1;
                failures.push(format!(
                    "  {} {} (add_special {}, parse_special {}) {:?}\n    want {:?}\n    got  {:?}",
                    path.file_name().unwrap().to_string_lossy(),
                    c.name,
                    c.add_special,
                    c.parse_special,
                    c.text,
                    c.ids,
                    got
                ));
            }
        }
        assert!(cases.len() >= 160, "{key}: only {} cases", cases.len());
        summary.push(format!(
            "{}: {}/{}",
            path.file_name().unwrap().to_string_lossy(),
            cases.len() - bad,
            cases.len()
        ));
    }
    eprintln!(
        "llama.cpp {} agreement: {}",
        reference.llama_cpp_version,
        summary.join(", ")
    );
    assert!(
        failures.is_empty(),
        "{} cases differ from llama.cpp:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
