//! Tokenizers rebuilt from the shared GGUF vocabularies against reference ids recorded from
//! llama.cpp and transformers (scripts/reference/make_tokenizer_fixtures.py), plus decoding,
//! streaming detokenization, tokenizer.json round trips and error reporting.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bakeoff_engine::Error;
use bakeoff_engine::detok::Detokenizer;
use bakeoff_engine::loader::gguf::GgufContent as Content;
use bakeoff_engine::tokenizer::{
    QWEN25_TOKENIZER_SIZE, Tokenizer, TokenizerConfig, TokenizerFamily, qwen25_special_tokens,
    upgrade_to_qwen25,
};
use candle_core::quantized::gguf_file::{self, Value};
use serde::Deserialize;

const VOCAB_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/vocab");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokenizer");

#[derive(Deserialize)]
struct Fixture {
    vocab: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    text: String,
    ids: Vec<u32>,
    /// What llama.cpp gives on the same GGUF file, the reference for GGUF tokenizers. It
    /// differs from `ids` (Qwen2's tokenizer.json) where tokenizer.json normalizes to NFC and
    /// where llama.cpp treats the vocabulary's "</s>" as a control token.
    llama_cpp: Vec<u32>,
    decoded: String,
}

fn vocab_path(file: &str) -> PathBuf {
    let p = Path::new(VOCAB_DIR).join(file);
    assert!(
        p.is_file(),
        "missing vocabulary file {} (the shared GGUF vocabularies live in /work/shared/vocab; \
         see its README.md). These tests cannot run without it.",
        p.display()
    );
    p
}

fn read_content(path: &Path) -> Content {
    Content::read_file(path).unwrap_or_else(|e| panic!("{e}"))
}

fn fixture(name: &str) -> Fixture {
    let p = Path::new(FIXTURES).join(format!("{name}.json"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

struct Family {
    tok: Tokenizer,
    fixture: Fixture,
    metadata: HashMap<String, Value>,
}

fn load(fixture_name: &str) -> Family {
    let fixture = fixture(fixture_name);
    let path = vocab_path(&fixture.vocab);
    let content = read_content(&path);
    let tok = Tokenizer::from_gguf(&content, &path).unwrap_or_else(|e| panic!("{e}"));
    Family {
        tok,
        fixture,
        metadata: content.metadata,
    }
}

fn llama() -> &'static Family {
    static F: OnceLock<Family> = OnceLock::new();
    F.get_or_init(|| load("llama-spm"))
}

fn qwen() -> &'static Family {
    static F: OnceLock<Family> = OnceLock::new();
    F.get_or_init(|| load("qwen2"))
}

fn both() -> [&'static Family; 2] {
    [llama(), qwen()]
}

/// Every mismatch at once, so a regression shows its whole extent. The reference is llama.cpp
/// on the same file.
fn check_ids(tok: &Tokenizer, fx: &Fixture, what: &str) {
    let mut bad = Vec::new();
    for c in &fx.cases {
        let got = tok.encode(&c.text, false).unwrap();
        if got != c.llama_cpp {
            bad.push(format!(
                "  {} {:?}\n    want {:?}\n    got  {:?}",
                c.name, c.text, c.llama_cpp, got
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "{what}: {} of {} cases differ:\n{}",
        bad.len(),
        fx.cases.len(),
        bad.join("\n")
    );
}

fn stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> String {
    let mut d = Detokenizer::with_options(std::sync::Arc::new(tok.clone()), skip_special);
    let mut out = String::new();
    for &id in ids {
        if let Some(p) = d.push(id).unwrap() {
            assert!(!p.is_empty());
            out.push_str(&p);
        }
    }
    if let Some(p) = d.finish().unwrap() {
        out.push_str(&p);
    }
    out
}

#[test]
fn llama_ids_match_reference() {
    let f = llama();
    check_ids(&f.tok, &f.fixture, "llama-spm");
}

#[test]
fn qwen2_ids_match_reference() {
    let f = qwen();
    check_ids(&f.tok, &f.fixture, "qwen2");
}

#[test]
fn fixtures_cover_the_required_texts() {
    for f in both() {
        let names: Vec<&str> = f.fixture.cases.iter().map(|c| c.name.as_str()).collect();
        for n in [
            "empty",
            "hello_leading_space",
            "cjk_chinese",
            "emoji_zwj",
            "code_python",
            "im_chat",
        ] {
            assert!(names.contains(&n), "{} lacks case {n}", f.fixture.vocab);
        }
        assert!(f.fixture.cases.len() >= 40);
    }
}

#[test]
fn llama_legacy_spm_layout() {
    let t = &llama().tok;
    // A Metaspace pre-tokenizer with prepend_scheme "first" would give [15043, 3186].
    assert_eq!(
        t.encode(" Hello world", false).unwrap(),
        [29871, 15043, 3186]
    );
    assert_eq!(t.encode("Hello world", true).unwrap(), [1, 15043, 3186]);
    assert_eq!(t.encode("", true).unwrap(), [1]);
    assert_eq!(t.encode("a</s>", false).unwrap().last(), Some(&2));
    assert_eq!((t.bos_id(), t.eos_ids()), (Some(1), &[2u32][..]));
    assert_eq!(
        (t.bos_token().as_deref(), t.eos_token().as_deref()),
        (Some("<s>"), Some("</s>"))
    );
    assert_eq!(t.unk_id(), Some(0));
    assert_eq!(t.vocab_size(), 32000);
    assert_eq!(t.family(), Some(TokenizerFamily::Llama));
    assert!(t.adds_bos());
    // Byte fallback: a character outside the vocabulary becomes its UTF-8 bytes.
    let ids = t.encode("🦙", false).unwrap();
    let pieces: Vec<String> = ids.iter().map(|&i| t.id_to_token(i).unwrap()).collect();
    assert_eq!(pieces, ["▁", "<0xF0>", "<0x9F>", "<0xA6>", "<0x99>"]);
    assert_eq!(t.token_to_id("<0xF0>"), Some(243));
}

#[test]
fn qwen2_layout() {
    let t = &qwen().tok;
    assert_eq!(t.encode("<|im_start|>", false).unwrap(), [151644]);
    assert_eq!(
        t.encode("Hello world", true).unwrap(),
        [9707, 1879],
        "Qwen2 adds no BOS"
    );
    assert_eq!(t.token_to_id("<|im_end|>"), Some(151645));
    assert_eq!(t.id_to_token(151643).as_deref(), Some("<|endoftext|>"));
    assert_eq!(t.vocab_size(), 151936);
    // The file's EOS first, then what llama.cpp also ends generation on.
    assert_eq!(t.eos_ids()[0], 151643);
    assert!(t.eos_ids().contains(&151645), "{:?}", t.eos_ids());
    assert_eq!(t.family(), Some(TokenizerFamily::Qwen2));
    assert!(!t.adds_bos());
    assert!(t.is_special(151644) && !t.is_special(9707));
}

#[test]
fn decode_matches_reference() {
    for f in both() {
        for c in &f.fixture.cases {
            let got = f.tok.decode(&c.ids, false).unwrap();
            assert_eq!(got, c.decoded, "{} {}", f.fixture.vocab, c.name);
        }
    }
}

#[test]
fn decode_round_trips_plain_text() {
    let specials = ["<|", "</s>", "<s>", "<unk>"];
    for f in both() {
        for c in &f.fixture.cases {
            if specials.iter().any(|s| c.text.contains(s)) || c.name == "decomposed_accent" {
                continue;
            }
            let ids = f.tok.encode(&c.text, false).unwrap();
            assert_eq!(
                f.tok.decode(&ids, true).unwrap(),
                c.text,
                "{} {}",
                f.fixture.vocab,
                c.name
            );
        }
    }
}

#[test]
fn skip_special_drops_control_tokens() {
    let q = &qwen().tok;
    let ids = q.encode("<|im_start|>user\nhi<|im_end|>", false).unwrap();
    assert_eq!(q.decode(&ids, true).unwrap(), "user\nhi");
    let l = &llama().tok;
    let ids = l.encode("hi</s>", true).unwrap();
    assert_eq!(l.decode(&ids, true).unwrap(), "hi");
    assert_eq!(l.decode(&ids, false).unwrap(), "<s> hi</s>");
}

#[test]
fn streaming_concatenation_equals_decode() {
    for f in both() {
        for c in &f.fixture.cases {
            for skip in [true, false] {
                let want = f.tok.decode(&c.ids, skip).unwrap();
                let got = stream(&f.tok, &c.ids, skip);
                assert_eq!(
                    got, want,
                    "{} {} skip_special={skip}",
                    f.fixture.vocab, c.name
                );
            }
        }
    }
}

#[test]
fn streaming_never_splits_a_character() {
    let t = &llama().tok;
    // 🦙 is four byte-fallback tokens; no piece may hold half of it.
    let ids = t.encode("a 🦙 b 𐍈 c", false).unwrap();
    let mut d = Detokenizer::new(std::sync::Arc::new(t.clone()));
    let mut pieces = Vec::new();
    for &id in &ids {
        if let Some(p) = d.push(id).unwrap() {
            pieces.push(p);
        }
    }
    pieces.extend(d.finish().unwrap());
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    assert!(pieces.iter().any(|p| p.contains('🦙')), "{pieces:?}");
    assert_eq!(pieces.concat(), "a 🦙 b 𐍈 c");
    // A continuation's first piece keeps its leading space.
    assert_eq!(pieces.first().map(String::as_str), Some("a"));
    assert!(pieces[1].starts_with(' '), "{pieces:?}");
}

/// Random ids, generation-like: byte-level pieces cut characters anywhere.
#[test]
fn streaming_random_qwen_ids() {
    let t = &qwen().tok;
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..200 {
        let n = 1 + (next() % 40) as usize;
        let ids: Vec<u32> = (0..n).map(|_| (next() % 151_646) as u32).collect();
        for skip in [true, false] {
            assert_eq!(
                stream(t, &ids, skip),
                t.decode(&ids, skip).unwrap(),
                "{ids:?}"
            );
        }
    }
}

#[test]
fn gguf_to_tokenizer_json_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    for f in both() {
        let p = dir.path().join(format!("{}.json", f.fixture.vocab));
        f.tok.save(&p).unwrap();
        let back = Tokenizer::from_file(&p).unwrap();
        check_ids(&back, &f.fixture, "reloaded tokenizer.json");
        assert_eq!(back.family(), f.tok.family());
        assert_eq!(back.vocab_size(), f.tok.vocab_size());
        assert_eq!(back.adds_bos(), f.tok.adds_bos());
        assert_eq!(
            back.encode("x y", true).unwrap(),
            f.tok.encode("x y", true).unwrap()
        );
        assert_eq!(back.bos_id(), f.tok.bos_id().filter(|_| f.tok.adds_bos()));
    }
}

#[test]
fn tokenizer_to_gguf_metadata_round_trip() {
    for f in both() {
        let md: HashMap<String, Value> = f.tok.to_gguf_metadata().unwrap().into_iter().collect();
        let back = Tokenizer::from_gguf_metadata(&md, Path::new("roundtrip.gguf")).unwrap();
        check_ids(
            &back,
            &f.fixture,
            "tokenizer rebuilt from its own GGUF metadata",
        );
        assert_eq!(back.vocab_size(), f.tok.vocab_size());
    }
    for fam in [TokenizerFamily::Llama, TokenizerFamily::Qwen2] {
        let tiny = Tokenizer::tiny(fam).unwrap();
        let md: HashMap<String, Value> = tiny.to_gguf_metadata().unwrap().into_iter().collect();
        let back = Tokenizer::from_gguf_metadata(&md, Path::new("tiny.gguf")).unwrap();
        for text in [
            "",
            " Hello wörld",
            "<|im_start|>x<|im_end|>",
            "a</s>b",
            "你好 🦙",
        ] {
            assert_eq!(
                back.encode(text, true).unwrap(),
                tiny.encode(text, true).unwrap(),
                "{fam:?} {text:?}"
            );
        }
        assert_eq!(
            (back.bos_id(), back.eos_ids().first()),
            (tiny.bos_id(), tiny.eos_ids().first())
        );
    }
}

#[test]
fn tiny_vocabularies_stream_and_round_trip() {
    for fam in [TokenizerFamily::Llama, TokenizerFamily::Qwen2] {
        let t = Tokenizer::tiny(fam).unwrap();
        for c in &qwen().fixture.cases {
            let ids = t.encode(&c.text, false).unwrap();
            assert!(ids.iter().all(|&i| (i as usize) < t.vocab_size()));
            for skip in [true, false] {
                assert_eq!(
                    stream(&t, &ids, skip),
                    t.decode(&ids, skip).unwrap(),
                    "{fam:?} {}",
                    c.name
                );
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        t.save(&p).unwrap();
        let back = Tokenizer::from_file(&p).unwrap();
        assert_eq!(
            back.encode(" Hi <|im_end|></s>", true).unwrap(),
            t.encode(" Hi <|im_end|></s>", true).unwrap()
        );
        assert_eq!(back.eos_token(), t.eos_token());
    }
}

#[test]
fn qwen25_upgrade_names_the_new_special_tokens() {
    let mut md = qwen().metadata.clone();
    upgrade_to_qwen25(&mut md).unwrap();
    let t = Tokenizer::from_gguf_metadata(&md, Path::new("qwen2.5-vocab.gguf")).unwrap();
    assert_eq!(
        qwen25_special_tokens().len(),
        QWEN25_TOKENIZER_SIZE - 151646
    );
    for &(id, content, special) in qwen25_special_tokens() {
        assert_eq!(t.token_to_id(content), Some(id), "{content}");
        assert_eq!(t.encode(content, false).unwrap(), [id], "{content} in text");
        // llama.cpp makes the fill-in-the-middle tokens control tokens whatever their type.
        let fim = content.starts_with("<|fim_")
            || content == "<|repo_name|>"
            || content == "<|file_sep|>";
        assert_eq!(t.is_special(id), special || fim, "{content}");
    }
    let ids = t
        .encode("<tool_call>\n{}\n</tool_call><|im_end|>", false)
        .unwrap();
    assert_eq!(
        t.decode(&ids, true).unwrap(),
        "<tool_call>\n{}\n</tool_call>"
    );
    // The rest of the vocabulary is untouched.
    check_ids(&t, &qwen().fixture, "qwen2.5-upgraded");
}

#[test]
fn tokenizer_config_variants() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer_config.json");
    std::fs::write(
        &p,
        r#"{"add_bos_token": false, "bos_token": null,
            "eos_token": {"content": "<|im_end|>", "lstrip": false, "special": true},
            "chat_template": [{"name": "default", "template": "D"}, {"name": "tool_use", "template": "T"}]}"#,
    )
    .unwrap();
    let c = TokenizerConfig::from_file(&p).unwrap();
    assert_eq!(c.eos_token().as_deref(), Some("<|im_end|>"));
    assert_eq!(c.bos_token(), None);
    assert_eq!(c.chat_template().as_deref(), Some("D"));
    assert_eq!(c.add_bos_token, Some(false));
    let mut t = qwen().tok.clone();
    t.apply_config(&c);
    assert_eq!(t.eos_ids().first(), Some(&151645));
    assert_eq!(t.eos_token().as_deref(), Some("<|im_end|>"));

    std::fs::write(&p, "{\"chat_template\": 3}").unwrap();
    match TokenizerConfig::from_file(&p) {
        Err(Error::Format { path, .. }) => assert_eq!(path, p),
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_tokenizer_json_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokenizer.json");
    std::fs::write(&p, "{\"model\": {\"type\": \"BPE\", \"vocab\": 7}}").unwrap();
    match Tokenizer::from_file(&p) {
        Err(e @ Error::Format { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&p.display().to_string()) && msg.contains("tokenizer.json"),
                "{msg}"
            );
        }
        other => panic!("expected a format error, got {other:?}"),
    }
    let missing = dir.path().join("nope.json");
    match Tokenizer::from_file(&missing) {
        Err(Error::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected an io error, got {other:?}"),
    }
}

/// A vocab-only GGUF file written by candle and read back as the loader reads one.
fn gguf_with(md: &[(&str, Value)]) -> (tempfile::TempDir, PathBuf, Content) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vocab.gguf");
    let mut f = std::fs::File::create(&p).unwrap();
    let refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    gguf_file::write(&mut f, &refs, &[]).unwrap();
    drop(f);
    let content = read_content(&p);
    (dir, p, content)
}

fn strs(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect())
}

fn err_text(r: bakeoff_engine::Result<Tokenizer>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_gguf_tokenizer_is_refused_by_name() {
    let tokens = strs(&["a", "b"]);
    let (_d, p, c) = gguf_with(&[
        ("tokenizer.ggml.model", Value::String("bert".into())),
        ("tokenizer.ggml.tokens", tokens.clone()),
    ]);
    let msg = err_text(Tokenizer::from_gguf(&c, &p));
    assert!(
        msg.contains("\"bert\"") && msg.contains(&p.display().to_string()),
        "{msg}"
    );

    let (_d, p, c) = gguf_with(&[
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("no-such-pre".into())),
        ("tokenizer.ggml.tokens", tokens.clone()),
    ]);
    let msg = err_text(Tokenizer::from_gguf(&c, &p));
    // The unknown name, and the supported ones.
    assert!(
        msg.contains("\"no-such-pre\"")
            && msg.contains("\"llama-bpe\"")
            && msg.contains("\"smollm\""),
        "{msg}"
    );

    let (_d, p, c) = gguf_with(&[("general.architecture", Value::String("llama".into()))]);
    let msg = err_text(Tokenizer::from_gguf(&c, &p));
    assert!(msg.contains("tokenizer.ggml.model"), "{msg}");
}

#[test]
fn out_of_range_special_ids_are_refused() {
    let mut md = llama().metadata.clone();
    md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(32000));
    let msg = err_text(Tokenizer::from_gguf_metadata(&md, Path::new("bad.gguf")));
    assert!(
        msg.contains("tokenizer.ggml.eos_token_id") && msg.contains("32000"),
        "{msg}"
    );

    let mut md = qwen().metadata.clone();
    md.insert("tokenizer.ggml.merges".into(), strs(&["Ġ Ġ", "nonsense"]));
    let msg = err_text(Tokenizer::from_gguf_metadata(&md, Path::new("bad.gguf")));
    assert!(msg.contains("tokenizer.ggml.merges[1]"), "{msg}");
}
