//! Hugging Face folders tokenize as transformers does. A TinyLlama-style folder (tokenizer.json
//! in Llama-2's layout, tokenizer_config.json with `tokenizer_class: LlamaTokenizer` and
//! `legacy: false`) is tokenized by transformers 5 with a Metaspace pre-tokenizer that puts `▁`
//! only at the start of the input: after `</s>` the text `\n<|user|>` starts with `\n` (13), not
//! with `▁` (29871) as in Llama-2's legacy layout and in llama.cpp.
//!
//! The folder is made here from ../shared/vocab/ggml-vocab-llama-spm.gguf. The comparison with
//! transformers runs through `$BAKEOFF_PYTHON`, `.venv-ci` or `.venv-ref` (the first that imports
//! transformers); without one it prints why and only the fixed expectations are checked, unless
//! `BAKEOFF_E2E_REQUIRED=1`, where it fails.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use bakeoff_engine::loader::gguf::GgufContent as Content;
use bakeoff_engine::tokenizer::{Tokenizer, TokenizerConfig, TokenizerKind};

const ZEPHYR: &str = "<|system|>\nBe brief.</s>\n<|user|>\nHi there!</s>\n<|assistant|>\nHello.</s>\n<|user|>\nWhat's 2+2?</s>\n<|assistant|>\n";

/// Texts compared with transformers: leading spaces, special tokens inside text, chat turns.
const TEXTS: &[&str] = &[
    "",
    " ",
    "Hello world",
    " Hello world",
    "  Hello world",
    "Hello world  ",
    "a  b\n\n c\t d",
    "</s>\n<|user|>",
    "<s>[INST] hi [/INST] ok</s><s>[INST] more [/INST]",
    "End of answer</s> Next part",
    "an <unk> inside",
    "Café 🦙 我们 1234567",
    "def f(x):\n    return x  # done\n",
    ZEPHYR,
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn required() -> bool {
    std::env::var("BAKEOFF_E2E_REQUIRED").is_ok_and(|v| v == "1")
}

/// A TinyLlama-style folder: the SentencePiece vocabulary as tokenizer.json, and
/// tokenizer_config.json as TinyLlama-1.1B-Chat-v1.0 has it (trimmed to the tokenizer fields).
fn tinyllama_folder(dir: &Path, legacy: Option<bool>) {
    let vocab = root().join("../shared/vocab/ggml-vocab-llama-spm.gguf");
    let content =
        Content::read_file(&vocab).unwrap_or_else(|e| panic!("{e} (see /work/shared/vocab)"));
    let tok = Tokenizer::from_gguf(&content, &vocab).unwrap();
    tok.save(dir.join("tokenizer.json")).unwrap();
    let mut cfg = serde_json::json!({
        "add_bos_token": true,
        "add_eos_token": false,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "</s>",
        "clean_up_tokenization_spaces": false,
        "model_max_length": 2048,
        "tokenizer_class": "LlamaTokenizer",
    });
    if let Some(l) = legacy {
        cfg["legacy"] = serde_json::Value::Bool(l);
    }
    std::fs::write(
        dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
}

fn load_folder(dir: &Path) -> Tokenizer {
    let mut t = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    t.apply_config(&TokenizerConfig::from_file(dir.join("tokenizer_config.json")).unwrap());
    t
}

fn python_with_transformers() -> Option<PathBuf> {
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
            .args(["-c", "import transformers, tokenizers"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// transformers' ids for TEXTS on `dir`, with and without special tokens added.
fn transformers_ids(py: &Path, dir: &Path) -> Vec<(Vec<u32>, Vec<u32>)> {
    let script = r#"
import json, sys
from transformers import AutoTokenizer
t = AutoTokenizer.from_pretrained(sys.argv[1])
texts = json.load(sys.stdin)
print(json.dumps([[t.encode(x, add_special_tokens=False), t.encode(x, add_special_tokens=True)] for x in texts]))
"#;
    let mut child = Command::new(py)
        .args(["-c", script])
        .arg(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(child.stdin.take().unwrap(), TEXTS).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "transformers failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn legacy_false_puts_no_space_after_special_tokens() {
    let dir = tempfile::tempdir().unwrap();
    tinyllama_folder(dir.path(), Some(false));
    let t = load_folder(dir.path());
    assert_eq!(
        t.kind(),
        Some(&TokenizerKind::SentencePiece {
            add_space_prefix: true,
            legacy: false
        })
    );
    // `</s>` `\n` `<` `|` `user` `|` `>`, as transformers gives: no 29871 after the 2.
    assert_eq!(
        t.encode("</s>\n<|user|>", false).unwrap(),
        [2, 13, 29966, 29989, 1792, 29989, 29958]
    );
    assert_eq!(t.encode("Hello world", true).unwrap(), [1, 15043, 3186]);
    // The first text still gets its `▁`, once.
    assert_eq!(t.encode(" Hello", false).unwrap(), [15043]);
    assert_eq!(t.decode(&[1, 15043, 3186], true).unwrap(), "Hello world");
}

#[test]
fn legacy_true_and_gguf_keep_the_space_after_special_tokens() {
    let dir = tempfile::tempdir().unwrap();
    tinyllama_folder(dir.path(), Some(true));
    let t = load_folder(dir.path());
    assert_eq!(
        t.encode("</s>\n<|user|>", false).unwrap()[..3],
        [2, 29871, 13]
    );
}

#[test]
fn folders_match_transformers() {
    let Some(py) = python_with_transformers() else {
        let why = "no Python that imports transformers ($BAKEOFF_PYTHON, .venv-ci, .venv-ref)";
        assert!(!required(), "BAKEOFF_E2E_REQUIRED=1: {why}");
        eprintln!("skipping the transformers comparison: {why}");
        return;
    };
    let mut failures = Vec::new();
    let mut n = 0;
    // legacy false (TinyLlama), true, and absent (transformers 5 then takes false).
    for legacy in [Some(false), Some(true), None] {
        let dir = tempfile::tempdir().unwrap();
        tinyllama_folder(dir.path(), legacy);
        let t = load_folder(dir.path());
        let want = transformers_ids(&py, dir.path());
        for (text, (plain, special)) in TEXTS.iter().zip(want) {
            for (add, w) in [(false, plain), (true, special)] {
                n += 1;
                let got = t.encode(text, add).unwrap();
                if got != w {
                    failures.push(format!(
                        "  legacy {legacy:?} add_special {add} {text:?}\n    want {w:?}\n    got  {got:?}"
                    ));
                }
            }
        }
    }
    eprintln!("transformers agreement: {}/{n}", n - failures.len());
    assert!(
        failures.is_empty(),
        "{} of {n} differ from transformers:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
