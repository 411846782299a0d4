//! `/tokenize` and `/detokenize` (llama.cpp server's shapes) on the models the router serves:
//! the same ids as the model's own tokenizer, a round trip back to the text, and clear errors
//! for `auto`, unknown models, remote upstreams, ids outside the vocabulary and bad bodies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use bakeoff_serve::HttpSettings;
use bakeoff_serve::backend::Upstream;
use bakeoff_serve::engine::EngineOptions;
use bakeoff_serve::metrics::Metrics;
use bakeoff_serve::router::{RouterConfig, RoutingPolicy, Tier};
use common::*;
use serde_json::json;

fn fixed() -> RouterConfig {
    RouterConfig {
        policy: RoutingPolicy::Fixed,
        ..Default::default()
    }
}

const TEXT: &str = "Hello world, 2 + 2 = 4.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_and_detokenize_use_the_named_models_tokenizer() {
    let (app, _) = two_tier(fixed(), EngineOptions::default());
    for (model, preset) in [
        (None, "tiny-llama"),
        (Some("strong"), "tiny-qwen2"),
        (Some("tiny-qwen2"), "tiny-qwen2"),
    ] {
        let want = tiny(preset)
            .prompter
            .tokenizer()
            .encode(TEXT, false)
            .unwrap();
        let mut body = json!({"content": TEXT});
        if let Some(m) = model {
            body["model"] = json!(m);
        }
        let r = send(&app, post("/tokenize", body.to_string())).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let v = r.json();
        assert_eq!(v["model"], preset);
        let ids: Vec<u32> = serde_json::from_value(v["tokens"].clone()).unwrap();
        assert_eq!(ids, want, "{model:?}");

        let mut back = json!({"tokens": ids});
        if let Some(m) = model {
            back["model"] = json!(m);
        }
        let r = send(&app, post("/detokenize", back.to_string())).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json()["content"], TEXT);
    }

    // with_pieces and add_special.
    let r = send(
        &app,
        post(
            "/tokenize",
            json!({"content": TEXT, "with_pieces": true, "add_special": true}).to_string(),
        ),
    )
    .await;
    let v = r.json();
    let want = tiny("tiny-llama")
        .prompter
        .tokenizer()
        .encode(TEXT, true)
        .unwrap();
    let pieces = v["tokens"].as_array().unwrap();
    assert_eq!(pieces.len(), want.len());
    for (p, id) in pieces.iter().zip(&want) {
        assert_eq!(p["id"], *id);
        assert!(p["piece"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_errors_name_the_problem() {
    let (app, _) = two_tier(fixed(), EngineOptions::default());
    for (uri, body, status, needle) in [
        (
            "/tokenize",
            json!({"content": "x", "model": "auto"}),
            400,
            "auto",
        ),
        (
            "/tokenize",
            json!({"content": "x", "model": "nope"}),
            404,
            "nope",
        ),
        ("/tokenize", json!({"text": "x"}), 400, "unknown field"),
        (
            "/detokenize",
            json!({"tokens": [1, 4000000]}),
            400,
            "4000000",
        ),
        ("/detokenize", json!({"tokens": "abc"}), 400, "invalid"),
    ] {
        let r = send(&app, post(uri, body.to_string())).await;
        assert_eq!(r.status, status, "{uri} {body}: {}", r.text);
        assert!(r.text.contains(needle), "{uri} {body}: {}", r.text);
    }

    // A tier served only by a remote upstream has no tokenizer here.
    let m = Arc::new(Metrics::new());
    let fast = local("tiny-llama", "tiny-llama", EngineOptions::default(), &m);
    let remote: Arc<dyn Upstream> = Scripted::new("far-away", Script::Hang);
    let (app, _) = app_with(
        vec![(Tier::Fast, fast), (Tier::Strong, remote)],
        fixed(),
        HttpSettings::default(),
        m,
    );
    let r = send(
        &app,
        post(
            "/tokenize",
            json!({"content": "x", "model": "strong"}).to_string(),
        ),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("remote upstream"), "{}", r.text);
}

/// vLLM's shapes of the same endpoints (`prompt`, `add_special_tokens`; `count`; the detokenized
/// text as `prompt`) and its `GET /tokenizer_info`, which lm-evaluation-harness's remote
/// tokenizer reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_shaped_tokenizer_endpoints() {
    let (app, _) = two_tier(fixed(), EngineOptions::default());
    let want = tiny("tiny-qwen2")
        .prompter
        .tokenizer()
        .encode(TEXT, false)
        .unwrap();
    let r = send(
        &app,
        post(
            "/tokenize",
            json!({"prompt": TEXT, "add_special_tokens": false, "model": "strong"}).to_string(),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["tokens"], json!(want));
    assert_eq!(v["count"], want.len());
    let r = send(
        &app,
        post(
            "/detokenize",
            json!({"tokens": want, "model": "strong"}).to_string(),
        ),
    )
    .await;
    assert_eq!(r.json()["prompt"], TEXT);
    let r = send(&app, get("/tokenizer_info?model=strong")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    let lm = tiny("tiny-qwen2");
    assert_eq!(v["model"], "tiny-qwen2");
    assert_eq!(v["vocab_size"], lm.prompter.tokenizer().vocab_size());
    assert_eq!(v["eos_token"].as_str(), lm.prompter.eos_token());
    assert_eq!(
        v["chat_template"].as_str(),
        lm.prompter.template().map(|t| t.source())
    );
    let r = send(&app, get("/tokenizer_info?model=auto")).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = send(&app, get("/tokenizer_info?colour=red")).await;
    assert_eq!(r.status, 400, "{}", r.text);
}
