#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `bakeoff` binary end to end on tiny synthetic models: what a user types, what they see.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bakeoff() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bakeoff"))
}

fn vocab(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/vocab")
        .join(name);
    assert!(
        p.is_file(),
        "{} is missing: the shared vocabularies must sit beside the repository",
        p.display()
    );
    p
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("cannot run bakeoff")
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

fn fails(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        !out.status.success(),
        "should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !err.contains("panicked"),
        "panic instead of an error: {err}"
    );
    err
}

/// A tiny Llama with the real Llama-2 tokenizer, as an HF folder and as a GGUF file.
fn tiny_models(dir: &Path) -> (PathBuf, PathBuf) {
    let hf = dir.join("hf");
    let gguf = dir.join("tiny.gguf");
    let v = vocab("ggml-vocab-llama-spm.gguf");
    ok(bakeoff()
        .args([
            "synth",
            "--preset",
            "tiny-llama",
            "--format",
            "hf",
            "--quant",
            "f32",
            "--out",
        ])
        .arg(&hf)
        .arg("--vocab")
        .arg(&v));
    ok(bakeoff()
        .args([
            "synth",
            "--preset",
            "tiny-llama",
            "--format",
            "gguf",
            "--quant",
            "q8_0",
            "--out",
        ])
        .arg(&gguf)
        .arg("--vocab")
        .arg(&v));
    (hf, gguf)
}

#[test]
fn generate_json_has_the_documented_keys_and_counts() {
    let d = tempfile::tempdir().unwrap();
    let (hf, gguf) = tiny_models(d.path());
    for m in [&hf, &gguf] {
        let out = ok(bakeoff().arg("generate").arg("--model").arg(m).args([
            "--prompt",
            "Hello there",
            "--max-tokens",
            "7",
            "--ignore-eos",
            "--json",
        ]));
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        for k in ["prompt_ids", "generated_ids", "text", "summary"] {
            assert!(v.get(k).is_some(), "missing {k}: {v}");
        }
        let s = &v["summary"];
        for k in [
            "prompt_tokens",
            "generated_tokens",
            "load_s",
            "ttft_ms",
            "prefill_tok_s",
            "decode_tok_s",
            "finish_reason",
            "peak_rss_bytes",
        ] {
            assert!(s.get(k).is_some(), "summary lacks {k}: {s}");
        }
        assert_eq!(s["generated_tokens"], 7);
        assert_eq!(v["generated_ids"].as_array().unwrap().len(), 7);
        assert_eq!(s["finish_reason"], "length");
        // The Llama tokenizer adds BOS (id 1) to plain prompts.
        assert_eq!(v["prompt_ids"][0], 1);
    }
}

#[test]
fn streaming_output_equals_json_text_and_summary_goes_to_stderr() {
    let d = tempfile::tempdir().unwrap();
    let (hf, _) = tiny_models(d.path());
    let args = [
        "--chat",
        "--system",
        "Be brief.",
        "--prompt",
        "Write a haiku",
        "--max-tokens",
        "12",
        "--ignore-eos",
    ];
    let out = run(bakeoff().arg("generate").arg("--model").arg(&hf).args(args));
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("decode") && stderr.contains("tok/s") && stderr.contains("finish length"),
        "{stderr}"
    );
    let json = ok(bakeoff()
        .arg("generate")
        .arg("--model")
        .arg(&hf)
        .args(args)
        .arg("--json"));
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let streamed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(streamed.trim_end_matches('\n'), v["text"].as_str().unwrap());
}

#[test]
fn same_seed_same_text_when_sampling() {
    let d = tempfile::tempdir().unwrap();
    let (_, gguf) = tiny_models(d.path());
    let run_seed = |seed: &str| {
        ok(bakeoff().arg("generate").arg("--model").arg(&gguf).args([
            "--prompt",
            "Once",
            "--max-tokens",
            "16",
            "--ignore-eos",
            "--json",
            "--temperature",
            "1.0",
            "--top-k",
            "50",
            "--seed",
            seed,
        ]))
    };
    let ids = |s: String| {
        serde_json::from_str::<serde_json::Value>(s.trim()).unwrap()["generated_ids"].clone()
    };
    assert_eq!(ids(run_seed("7")), ids(run_seed("7")));
    assert_ne!(ids(run_seed("7")), ids(run_seed("8")));
}

#[test]
fn generate_holds_the_answer_to_a_schema_or_a_regex() {
    let d = tempfile::tempdir().unwrap();
    let (_, gguf) = tiny_models(d.path());
    let schema = d.path().join("schema.json");
    std::fs::write(
        &schema,
        r#"{"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
            "required": ["ok", "n"], "additionalProperties": false}"#,
    )
    .unwrap();
    // Sampled from random weights: only the constraint makes these valid.
    for seed in ["1", "2"] {
        let out = ok(bakeoff()
            .arg("generate")
            .arg("--model")
            .arg(&gguf)
            .args([
                "--prompt",
                "Once",
                "--max-tokens",
                "60",
                "--temperature",
                "1.0",
                "--seed",
                seed,
                "--json-schema",
            ])
            .arg(&schema));
        let v: serde_json::Value =
            serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{out:?}: {e}"));
        assert!(
            v["ok"].is_boolean() && v["n"].as_u64().unwrap() <= 9,
            "{out}"
        );
    }
    let out = ok(bakeoff().arg("generate").arg("--model").arg(&gguf).args([
        "--prompt",
        "Once",
        "--max-tokens",
        "10",
        "--temperature",
        "1.0",
        "--regex",
        "(yes|no)",
    ]));
    assert!(out.trim() == "yes" || out.trim() == "no", "{out:?}");
    let e = fails(bakeoff().arg("generate").arg("--model").arg(&gguf).args([
        "--prompt",
        "Once",
        "--json-schema",
        "/no/such/schema.json",
    ]));
    assert!(e.contains("/no/such/schema.json"), "{e}");
    std::fs::write(&schema, r#"{"type": "nope"}"#).unwrap();
    let e = fails(
        bakeoff()
            .arg("generate")
            .arg("--model")
            .arg(&gguf)
            .args(["--prompt", "Once", "--json-schema"])
            .arg(&schema),
    );
    assert!(e.contains("response format") && e.contains("nope"), "{e}");
}

#[test]
fn info_and_tokenize() {
    let d = tempfile::tempdir().unwrap();
    let (hf, gguf) = tiny_models(d.path());
    let info = ok(bakeoff().arg("info").arg("--model").arg(&gguf));
    assert!(
        info.contains("architecture  llama")
            && info.contains("q8_0")
            && info.contains("<|assistant|>"),
        "{info}"
    );
    let j: serde_json::Value = serde_json::from_str(&ok(bakeoff()
        .arg("info")
        .arg("--json")
        .arg("--model")
        .arg(&hf)))
    .unwrap();
    assert_eq!(j["arch"], "llama");
    assert!(j["parameters"].as_u64().unwrap() > 0);
    // The folder says `legacy: false` (as TinyLlama's does): transformers 5 adds no `▁` piece for
    // the leading space; llama.cpp, the reference for the GGUF file, does.
    for (m, want) in [(&hf, "[15043,3186]"), (&gguf, "[29871,15043,3186]")] {
        let ids = ok(bakeoff()
            .arg("tokenize")
            .arg("--model")
            .arg(m)
            .args(["--text", " Hello world"]));
        assert_eq!(ids.trim(), want, "{}", m.display());
        let text = ok(bakeoff().arg("tokenize").arg("--model").arg(m).args([
            "--decode",
            "--text",
            "[15043,3186]",
        ]));
        assert_eq!(text, "Hello world");
    }
    // The tokenizer alone is read: a vocabulary-only GGUF file (no tensors) tokenizes the same
    // way as the model built on it.
    let v = vocab("ggml-vocab-llama-spm.gguf");
    let ids = ok(bakeoff()
        .arg("tokenize")
        .arg("--model")
        .arg(&v)
        .args(["--text", " Hello world"]));
    assert_eq!(ids.trim(), "[29871,15043,3186]");
}

#[test]
fn bad_input_gets_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let (hf, _) = tiny_models(d.path());
    let e = fails(bakeoff().args(["generate", "--model", "/no/such/dir", "--prompt", "x"]));
    assert!(e.contains("neither an existing folder"), "{e}");
    let e = fails(
        bakeoff()
            .arg("generate")
            .arg("--model")
            .arg(&hf)
            .args(["--prompt", "x", "--top-p", "1.5"]),
    );
    assert!(e.contains("top_p must be in (0, 1]"), "{e}");
    let e = fails(bakeoff().arg("generate").arg("--model").arg(&hf).args([
        "--prompt",
        "x",
        "--temperature",
        "-1",
    ]));
    assert!(e.contains("temperature must be"), "{e}");
    let long = "word ".repeat(100);
    let e = fails(bakeoff().arg("generate").arg("--model").arg(&hf).args([
        "--max-context",
        "16",
        "--prompt",
        &long,
    ]));
    assert!(
        e.contains("the model's context holds 16") && e.contains("nothing was truncated"),
        "{e}"
    );
    let e = fails(
        bakeoff()
            .arg("generate")
            .arg("--model")
            .arg(&hf)
            .args(["--prompt-ids", "[1, 99999999]"]),
    );
    assert!(e.contains("outside the vocabulary"), "{e}");
    let msgs = d.path().join("m.json");
    std::fs::write(&msgs, r#"[{"role": "wizard", "content": "hi"}]"#).unwrap();
    let e = fails(
        bakeoff()
            .arg("generate")
            .arg("--model")
            .arg(&hf)
            .arg("--messages")
            .arg(&msgs),
    );
    assert!(e.contains("unknown role `wizard`"), "{e}");
    let e = fails(bakeoff().arg("generate").arg("--model").arg(&hf).args([
        "--prompt",
        "x",
        "--kv-cache",
        "f8",
    ]));
    assert!(e.contains("--kv-cache") && e.contains("`f8`"), "{e}");
    let e = fails(bakeoff().arg("generate").arg("--model").arg(&hf).args([
        "--prompt",
        "x",
        "--prefill-chunk",
        "0",
    ]));
    assert!(e.contains("--prefill-chunk must be at least 1"), "{e}");
    // Invalid UTF-8 on stdin.
    let mut child = bakeoff()
        .arg("tokenize")
        .arg("--model")
        .arg(&hf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"ok \xff\xfe bad")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not valid UTF-8"));
}

/// The packed-weights cache holds what `$BAKEOFF_WEIGHT_CACHE_MAX` allows: an entry larger than
/// the bound is not written (the command still works), and a bound that is not a size is an
/// error naming the variable.
#[test]
fn the_weight_cache_keeps_to_its_size_bound() {
    let d = tempfile::tempdir().unwrap();
    let (_, gguf) = tiny_models(d.path());
    let cache = d.path().join("packed");
    let entries = || {
        std::fs::read_dir(&cache).map_or(0, |r| {
            r.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "bkpack"))
                .count()
        })
    };
    let generate = |max: &str| {
        let mut c = bakeoff();
        c.env("BAKEOFF_WEIGHT_CACHE", &cache)
            .env("BAKEOFF_WEIGHT_CACHE_MAX", max)
            .arg("generate")
            .arg("--model")
            .arg(&gguf)
            .args(["--prompt", "hello", "--max-tokens", "2"]);
        c
    };
    let e = fails(&mut generate("lots"));
    assert!(
        e.contains("BAKEOFF_WEIGHT_CACHE_MAX") && e.contains("`lots`"),
        "{e}"
    );
    ok(&mut generate("1K"));
    assert_eq!(entries(), 0, "an entry past the bound was written");
    // Processors without AVX2 do not repack, so they have nothing to cache.
    #[cfg(target_arch = "x86_64")]
    let repacks = std::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    let repacks = false;
    ok(&mut generate("1G"));
    assert_eq!(entries(), usize::from(repacks));
}

#[test]
fn multi_turn_messages_file_uses_the_chat_template() {
    let d = tempfile::tempdir().unwrap();
    let (hf, _) = tiny_models(d.path());
    let msgs = d.path().join("m.json");
    std::fs::write(&msgs, r#"[{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello!"},{"role":"user","content":"And now?"}]"#).unwrap();
    let out = ok(bakeoff()
        .arg("generate")
        .arg("--model")
        .arg(&hf)
        .arg("--messages")
        .arg(&msgs)
        .args(["--max-tokens", "3", "--json"]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let ids: Vec<u32> = serde_json::from_value(v["prompt_ids"].clone()).unwrap();
    let text = ok(bakeoff()
        .arg("tokenize")
        .arg("--model")
        .arg(&hf)
        .arg("--decode")
        .arg("--text")
        .arg(serde_json::to_string(&ids).unwrap()));
    // Three turns in template order, ending with the generation prompt.
    let mut at = 0;
    for part in [
        "<|user|>",
        "Hi",
        "</s>",
        "<|assistant|>",
        "Hello!",
        "</s>",
        "<|user|>",
        "And now?",
        "</s>",
        "<|assistant|>",
    ] {
        let i = text[at..]
            .find(part)
            .unwrap_or_else(|| panic!("`{part}` missing after byte {at} in {text:?}"));
        at += i + part.len();
    }
    assert!(text[at..].trim().is_empty(), "{text:?}");
}
