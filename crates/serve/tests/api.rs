//! Every endpoint and error path of the axum app, in-process (no socket), on tiny synthetic
//! models: OpenAI response shapes, SSE framing, logprobs, stop strings, context limits,
//! authentication, body limits, and a server that keeps serving after bad requests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use bakeoff_serve::HttpSettings;
use bakeoff_serve::engine::EngineOptions;
use bakeoff_serve::metrics::Metrics;
use bakeoff_serve::router::{RouterConfig, RoutingPolicy, Tier};
use common::*;
use serde_json::Value;

fn fixed() -> RouterConfig {
    RouterConfig {
        policy: RoutingPolicy::Fixed,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completion_has_the_openai_shape() {
    let (app, _) = two_tier(fixed(), EngineOptions::default());
    let r = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body("auto", "Hello there!", r#""max_tokens": 12"#),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "tiny-llama");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    let c = &v["choices"][0];
    assert_eq!(c["index"], 0);
    assert_eq!(c["message"]["role"], "assistant");
    assert!(c["message"]["content"].is_string());
    assert!(["stop", "length"].contains(&c["finish_reason"].as_str().unwrap()));
    let u = &v["usage"];
    assert!(u["prompt_tokens"].as_u64().unwrap() > 3);
    assert!(u["completion_tokens"].as_u64().unwrap() <= 12);
    assert_eq!(
        u["total_tokens"].as_u64().unwrap(),
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    );
    assert_eq!(v["route"]["tier"], "fast");
    assert_eq!(v["route"]["policy"], "fixed");
    assert!(v["timings"]["ttft_ms"].as_f64().unwrap() > 0.0);
    assert!(
        r.route()
            .contains("tier=fast; model=tiny-llama; policy=fixed"),
        "{}",
        r.route()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_equals_non_streaming_and_ends_with_usage_and_done() {
    let (app, _) = two_tier(fixed(), EngineOptions::default());
    let body = chat_body(
        "fast",
        "Count to five.",
        r#""max_tokens": 20, "ignore_eos": true"#,
    );
    let whole = send(&app, post("/v1/chat/completions", body.clone()))
        .await
        .json();
    let stream_body = chat_body(
        "fast",
        "Count to five.",
        r#""max_tokens": 20, "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}"#,
    );
    let r = send(&app, post("/v1/chat/completions", stream_body)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["completion_tokens"], 20);
    let fin: Value = serde_json::from_str(&events[events.len() - 3]).unwrap();
    assert_eq!(fin["choices"][0]["finish_reason"], "length");
    assert_eq!(fin["route"]["tier"], "fast");
    assert_eq!(
        r.streamed_content(),
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    // Every chunk has the same id.
    let ids: std::collections::HashSet<String> = events[..events.len() - 1]
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_logprobs() {
    let (app, _) = two_tier(fixed(), EngineOptions::default());
    let r = send(&app, post("/v1/completions", r#"{"model": "strong", "prompt": "Once upon a time", "max_tokens": 5, "temperature": 0, "ignore_eos": true, "logprobs": 2}"#)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "tiny-qwen2");
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 5);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
    assert!(
        lp["token_logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x.as_f64().unwrap() <= 0.0)
    );
    // Greedy: the chosen token is the most likely, so its logprob is the top one.
    let top0 = lp["top_logprobs"][0]
        .as_object()
        .unwrap()
        .values()
        .map(|x| x.as_f64().unwrap())
        .fold(f64::MIN, f64::max);
    assert!((top0 - lp["token_logprobs"][0].as_f64().unwrap()).abs() < 1e-5);

    let r = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(
                "fast",
                "hi",
                r#""max_tokens": 4, "ignore_eos": true, "logprobs": true, "top_logprobs": 3"#,
            ),
        ),
    )
    .await;
    let v = r.json();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 4);
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 3);
    assert!(content[0]["bytes"].is_array());

    let r = send(
        &app,
        post(
            "/v1/completions",
            r#"{"prompt": "abc", "max_tokens": 3, "stream": true, "temperature": 0}"#,
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let evs = r.events();
    assert_eq!(evs.last().unwrap(), "[DONE]");
    assert!(evs[0].contains("text_completion"));
}

/// `echo` with `logprobs` scores the prompt (lm-evaluation-harness's log-likelihood requests):
/// the prompt's tokens come first with `null` for the first, the same from a string or from token
/// ids, `max_tokens: 0` allowed, the answer after the prompt equal to the answer without echo;
/// streamed, the prompt is the first chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_scores_the_prompt() {
    let (app, _) = two_tier(fixed(), EngineOptions::default());
    let prompt = "Once upon a time";
    let ids = send(
        &app,
        post(
            "/tokenize",
            format!(r#"{{"content": "{prompt}", "add_special": true, "model": "strong"}}"#),
        ),
    )
    .await
    .json()["tokens"]
        .clone();
    let n = ids.as_array().unwrap().len();
    assert!(n >= 3, "{ids}");
    let text = send(
        &app,
        post(
            "/detokenize",
            format!(r#"{{"tokens": {ids}, "model": "strong"}}"#),
        ),
    )
    .await
    .json()["content"]
        .as_str()
        .unwrap()
        .to_string();

    let scored = |p: String, extra: &str| {
        format!(
            r#"{{"model": "strong", "prompt": {p}, "echo": true, "logprobs": 1, "temperature": 0{extra}}}"#
        )
    };
    let a = send(
        &app,
        post(
            "/v1/completions",
            scored(format!("{prompt:?}"), r#", "max_tokens": 0"#),
        ),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text);
    let a = a.json();
    let c = &a["choices"][0];
    assert_eq!(c["text"], text.as_str());
    assert_eq!(c["finish_reason"], "length");
    assert_eq!(a["usage"]["completion_tokens"], 0);
    assert_eq!(a["usage"]["prompt_tokens"], n);
    let lp = &c["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), n);
    assert!(lp["token_logprobs"][0].is_null() && lp["top_logprobs"][0].is_null());
    for j in 1..n {
        let l = lp["token_logprobs"][j].as_f64().unwrap();
        assert!(l <= 0.0, "{l}");
        // The most likely token's log-probability is at least the prompt token's.
        let top = lp["top_logprobs"][j].as_object().unwrap();
        assert_eq!(top.len(), 1);
        assert!(top.values().next().unwrap().as_f64().unwrap() >= l - 1e-6);
    }
    assert_eq!(lp["text_offset"][0], 0);

    // Token ids, bare or in a list of one, give the same scores.
    for p in [ids.to_string(), format!("[{ids}]")] {
        let b = send(
            &app,
            post("/v1/completions", scored(p.clone(), r#", "max_tokens": 0"#)),
        )
        .await;
        assert_eq!(b.status, 200, "{p}: {}", b.text);
        assert_eq!(
            b.json()["choices"][0]["logprobs"]["token_logprobs"],
            lp["token_logprobs"],
            "{p}"
        );
    }

    // With an answer: the prompt, then the same answer as without echo.
    let plain = send(&app, post("/v1/completions", format!(r#"{{"model": "strong", "prompt": {prompt:?}, "max_tokens": 4, "temperature": 0, "ignore_eos": true}}"#))).await.json();
    let both = send(
        &app,
        post(
            "/v1/completions",
            scored(
                format!("{prompt:?}"),
                r#", "max_tokens": 4, "ignore_eos": true"#,
            ),
        ),
    )
    .await
    .json();
    let answer = plain["choices"][0]["text"].as_str().unwrap();
    assert_eq!(both["choices"][0]["text"], format!("{text}{answer}"));
    let blp = &both["choices"][0]["logprobs"];
    assert_eq!(blp["tokens"].as_array().unwrap().len(), n + 4);
    assert_eq!(
        blp["token_logprobs"].as_array().unwrap()[..n],
        lp["token_logprobs"].as_array().unwrap()[..]
    );
    let offsets: Vec<u64> = blp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
    assert_eq!(offsets[n] as usize, text.len());

    // Streamed: the prompt is the first chunk.
    let r = send(
        &app,
        post(
            "/v1/completions",
            scored(
                format!("{prompt:?}"),
                r#", "max_tokens": 2, "stream": true"#,
            ),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let first: Value = serde_json::from_str(&r.events()[0]).unwrap();
    assert_eq!(first["choices"][0]["text"], text.as_str());
    assert_eq!(
        first["choices"][0]["logprobs"]["token_logprobs"],
        lp["token_logprobs"]
    );

    // Errors name the problem.
    let e = send(
        &app,
        post("/v1/completions", scored("[1, 99999999]".into(), "")),
    )
    .await;
    assert_error(&e, 400, "is not a token id");
    let e = send(
        &app,
        post("/v1/completions", r#"{"prompt": "x", "max_tokens": 0}"#),
    )
    .await;
    assert_error(&e, 400, "0 only with `echo`");
    let e = send(
        &app,
        post("/v1/completions", r#"{"prompt": [1, -2], "echo": true}"#),
    )
    .await;
    assert_error(&e, 400, "token ids must be integers");
}

/// `n` choices: each sampled with its own seed (choice i with `seed + i` is the single answer with
/// that seed), the prompt counted once and computed once (the other choices copy its KV cache),
/// streamed with each chunk's `index`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_have_their_own_seeds_and_share_the_prompt() {
    let (app, _) = two_tier(fixed(), EngineOptions::default());
    let content = "Tell me a long story about a robot who learns to paint in the city at night";
    let body = |extra: &str| {
        chat_body(
            "fast",
            content,
            &format!(r#""max_tokens": 6, "ignore_eos": true, "temperature": 1.5{extra}"#),
        )
    };
    let cached_before = metric(
        &app,
        "bakeoff_engine_cached_tokens_total{model=\"tiny-llama\"}",
    )
    .await;
    let r = send(
        &app,
        post("/v1/chat/completions", body(r#", "n": 3, "seed": 40"#)),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 20, "{prompt_tokens}");
    assert_eq!(v["usage"]["completion_tokens"], 18);
    let cached = metric(
        &app,
        "bakeoff_engine_cached_tokens_total{model=\"tiny-llama\"}",
    )
    .await
        - cached_before;
    assert!(
        cached >= 2.0 * (prompt_tokens - 1) as f64,
        "cached {cached} of {prompt_tokens}"
    );
    let texts: Vec<String> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            assert_eq!(c["index"], i);
            assert_eq!(c["finish_reason"], "length");
            c["message"]["content"].as_str().unwrap().to_string()
        })
        .collect();
    for (i, want) in texts.iter().enumerate() {
        let one = send(
            &app,
            post(
                "/v1/chat/completions",
                body(&format!(r#", "seed": {}"#, 40 + i)),
            ),
        )
        .await
        .json();
        assert_eq!(
            one["choices"][0]["message"]["content"],
            want.as_str(),
            "choice {i}"
        );
    }
    assert!(texts[0] != texts[1] || texts[1] != texts[2], "{texts:?}");

    let r = send(&app, post("/v1/chat/completions", body(r#", "n": 2, "seed": 40, "stream": true, "stream_options": {"include_usage": true}"#))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut streamed = [String::new(), String::new()];
    let mut finishes = 0;
    for e in r.events().iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        if let Some(c) = v["choices"].as_array().and_then(|c| c.first()) {
            let i = c["index"].as_u64().unwrap() as usize;
            streamed[i].push_str(c["delta"]["content"].as_str().unwrap_or(""));
            finishes += c["finish_reason"].is_string() as usize;
        } else {
            assert_eq!(v["usage"]["completion_tokens"], 12);
        }
    }
    assert_eq!(finishes, 2);
    assert_eq!(streamed[0], texts[0]);
    assert_eq!(streamed[1], texts[1]);

    let e = send(&app, post("/v1/chat/completions", body(r#", "n": 17"#))).await;
    assert_error(&e, 400, "`n` must be from 1 to 16");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_cut_the_answer_and_max_tokens_is_capped_by_the_context() {
    let (app, _) = two_tier(fixed(), EngineOptions::default());
    let base = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(
                "fast",
                "Tell me a story.",
                r#""max_tokens": 40, "ignore_eos": true"#,
            ),
        ),
    )
    .await
    .json();
    let text = base["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() > 12, "{text:?}");
    let stop: String = chars[8..11].iter().collect();
    let cut = text.find(&stop).unwrap();
    let r = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(
                "fast",
                "Tell me a story.",
                &format!(
                    r#""max_tokens": 40, "ignore_eos": true, "stop": [{}]"#,
                    serde_json::to_string(&stop).unwrap()
                ),
            ),
        ),
    )
    .await
    .json();
    assert_eq!(
        r["choices"][0]["message"]["content"].as_str().unwrap(),
        &text[..cut]
    );
    assert_eq!(r["choices"][0]["finish_reason"], "stop");

    // A max_tokens far past the context ends with `length` when the context is full.
    let r = send(&app, post("/v1/completions", r#"{"model": "fast", "prompt": "a", "max_tokens": 100000, "temperature": 0, "ignore_eos": true}"#)).await.json();
    let u = &r["usage"];
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    assert_eq!(u["total_tokens"].as_u64().unwrap(), 512, "{u}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_and_metrics() {
    let (app, _) = two_tier(fixed(), EngineOptions::default());
    let v = send(&app, get("/v1/models")).await.json();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec!["auto", "fast", "strong", "tiny-llama", "tiny-qwen2"]
    );
    assert_eq!(v["data"][3]["context_length"], 512);
    assert_eq!(v["data"][3]["tier"], "fast");

    let h = send(&app, get("/health")).await;
    assert_eq!(h.status, 200);
    let hv = h.json();
    assert_eq!(hv["status"], "ok");
    assert_eq!(hv["replicas"].as_array().unwrap().len(), 2);

    send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body("auto", "hi", r#""max_tokens": 3"#),
        ),
    )
    .await;
    send(&app, post("/v1/chat/completions", "{")).await;
    let m = send(&app, get("/metrics")).await;
    assert_eq!(
        m.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    for family in [
        "# TYPE bakeoff_requests_total counter",
        "# TYPE bakeoff_time_to_first_token_seconds histogram",
        "# TYPE bakeoff_inter_token_latency_seconds histogram",
        "# TYPE bakeoff_queue_depth gauge",
        "# TYPE bakeoff_route_decisions_total counter",
        "# TYPE bakeoff_errors_total counter",
        "bakeoff_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"} 1",
        "bakeoff_requests_total{endpoint=\"/v1/chat/completions\",status=\"400\"} 1",
        "bakeoff_errors_total{kind=\"invalid_request\"} 1",
        "bakeoff_route_decisions_total{reason=\"policy\",tier=\"fast\"} 1",
        "bakeoff_time_to_first_token_seconds_count{model=\"tiny-llama\"} 1",
        "bakeoff_queue_depth{model=\"tiny-llama\"} 0",
    ] {
        assert!(m.text.contains(family), "missing `{family}` in\n{}", m.text);
    }
}

fn assert_error(r: &Reply, status: u16, needle: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    let v = r.json();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains(needle), "`{needle}` not in `{msg}`");
    assert!(v["error"]["type"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_400s_and_the_server_keeps_serving() {
    let (app, _) = two_tier(fixed(), EngineOptions::default());
    let cases: Vec<(&[u8], u16, &str)> = vec![
        (b"{\"messages\": [", 400, "malformed JSON"),
        (b"", 400, "empty"),
        (b"[1, 2]", 400, "JSON object"),
        (
            b"{\"messages\": [{\"role\": \"user\", \"content\": \"\xff\xfe\"}]}",
            400,
            "UTF-8",
        ),
        (
            br#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}"#,
            400,
            "`max_tokens`: invalid type",
        ),
        (
            br#"{"messages": [{"role": "user", "content": "hi"}], "temperature": 5}"#,
            400,
            "temperature",
        ),
        (
            br#"{"messages": [{"role": "robot", "content": "hi"}]}"#,
            400,
            "`messages[0].role` is `robot`",
        ),
        (br#"{"messages": []}"#, 400, "`messages` is empty"),
        (br#"{"model": "auto"}"#, 400, "missing field `messages`"),
        (
            br#"{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}"#,
            400,
            "not supported",
        ),
        (
            br#"{"messages": [{"role": "user", "content": "x"}], "n": 0}"#,
            400,
            "`n` must be from 1 to 16",
        ),
        (
            br#"{"messages": [{"role": "user", "content": "x"}], "stop": ["a","b","c","d","e"]}"#,
            400,
            "at most 4",
        ),
        (
            br#"{"messages": [{"role": "user", "content": "x"}], "model": "gpt-9"}"#,
            404,
            "model `gpt-9` does not exist",
        ),
    ];
    for (body, status, needle) in cases {
        let r = send(&app, post("/v1/chat/completions", body.to_vec())).await;
        assert_error(&r, status, needle);
    }
    let r = send(
        &app,
        post(
            "/v1/chat/completions",
            r#"{"messages": [{"role": "robot", "content": "hi"}]}"#,
        ),
    )
    .await;
    assert_eq!(r.json()["error"]["param"], "messages[0].role");

    // Longer than the 512-token context: refused, not truncated, whichever tier is asked.
    let long = "word ".repeat(600);
    let r = send(
        &app,
        post("/v1/chat/completions", chat_body("fast", &long, "")),
    )
    .await;
    assert_error(&r, 400, "context of 512 tokens");
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
    let r = send(
        &app,
        post(
            "/v1/completions",
            format!(r#"{{"prompt": {}}}"#, serde_json::to_string(&long).unwrap()),
        ),
    )
    .await;
    assert_error(&r, 400, "nothing was truncated");

    let r = send(&app, get("/v1/nothing")).await;
    assert_error(&r, 404, "no route");
    let r = send(&app, get("/v1/chat/completions")).await;
    assert_error(&r, 405, "not allowed");

    let ok = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body("auto", "still there?", r#""max_tokens": 2"#),
        ),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_and_body_limit() {
    let m = Arc::new(Metrics::new());
    let fast = local("tiny-llama", "tiny-llama", EngineOptions::default(), &m);
    let http = HttpSettings {
        api_key: Some("s3cret-key".into()),
        max_body_bytes: 4096,
        ..Default::default()
    };
    let (app, _) = app_with(vec![(Tier::Fast, fast)], fixed(), http, m);
    let body = chat_body("auto", "hi", r#""max_tokens": 2"#);
    let r = send(&app, post("/v1/chat/completions", body.clone())).await;
    assert_error(&r, 401, "missing API key");
    let mut req = post("/v1/chat/completions", body.clone());
    req.headers_mut()
        .insert("authorization", "Bearer s3cret-kex".parse().unwrap());
    assert_error(&send(&app, req).await, 401, "invalid API key");
    let mut req = post("/v1/chat/completions", body.clone());
    req.headers_mut()
        .insert("authorization", "Bearer s3cret-key".parse().unwrap());
    assert_eq!(send(&app, req).await.status, 200);
    // Health and metrics stay open for probes and scrapers.
    assert_eq!(send(&app, get("/health")).await.status, 200);

    let mut req = post(
        "/v1/chat/completions",
        chat_body("auto", &"x".repeat(5000), ""),
    );
    req.headers_mut()
        .insert("authorization", "Bearer s3cret-key".parse().unwrap());
    assert_error(&send(&app, req).await, 413, "over the limit of 4096 bytes");
}

/// A schema whose answers are bounded (short strings, bounded numbers, few items), so that
/// even a random-weight model must finish it: every answer has to parse and to fit.
const PERSON: &str = r#"{
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": false
}"#;

fn assert_person(text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {text}"));
    assert_eq!(o.len(), 3, "{text}");
    assert!(v["name"].as_str().unwrap().chars().count() <= 12, "{text}");
    assert!((0..=150).contains(&v["age"].as_i64().unwrap()), "{text}");
    let tags = v["tags"].as_array().unwrap();
    assert!(tags.len() <= 3, "{text}");
    assert!(
        tags.iter()
            .all(|t| ["a", "b", "c"].contains(&t.as_str().unwrap())),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_formats_are_enforced_streamed_and_batched() {
    let (app, _) = two_tier(fixed(), EngineOptions::default());
    let schema_format = format!(
        r#""response_format": {{"type": "json_schema", "json_schema": {{"name": "person", "strict": true, "schema": {PERSON}}}}}"#
    );
    // Sampled at temperature 1 from random weights: only the mask makes these valid.
    let sampled = |seed: u64, extra: &str| {
        chat_body(
            "strong",
            "Who are you?",
            &format!(
                r#""temperature": 1.0, "seed": {seed}, "max_tokens": 300, {schema_format}{extra}"#
            ),
        )
        .replacen(r#""temperature": 0, "#, "", 1)
    };
    let one = send(&app, post("/v1/chat/completions", sampled(1, ""))).await;
    assert_eq!(one.status, 200, "{}", one.text);
    let one = one.json();
    let text = one["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_person(&text);
    assert_eq!(one["choices"][0]["finish_reason"], "stop");

    // Streamed: the same answer for the same seed.
    let streamed = send(
        &app,
        post("/v1/chat/completions", sampled(1, r#", "stream": true"#)),
    )
    .await;
    assert_eq!(streamed.streamed_content(), text);

    // Batched: concurrent requests, each with its own grammar state, and n choices.
    let many = futures_util::future::join_all((2..6).map(|seed| {
        let app = app.clone();
        async move {
            send(
                &app,
                post("/v1/chat/completions", sampled(seed, r#", "n": 2"#)),
            )
            .await
        }
    }))
    .await;
    for r in many {
        assert_eq!(r.status, 200, "{}", r.text);
        for c in r.json()["choices"].as_array().unwrap() {
            assert_person(c["message"]["content"].as_str().unwrap());
        }
    }

    // json_object, and the regex extension, on completions too.
    let obj = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(
                "strong",
                "JSON please",
                r#""temperature": 1.0, "seed": 3, "max_tokens": 400, "response_format": {"type": "json_object"}"#,
            )
            .replacen(r#""temperature": 0, "#, "", 1),
        ),
    )
    .await
    .json();
    let c = &obj["choices"][0];
    if c["finish_reason"] == "stop" {
        let v: Value = serde_json::from_str(c["message"]["content"].as_str().unwrap()).unwrap();
        assert!(v.is_object());
    } else {
        // Cut by max_tokens: still a prefix of an object.
        assert!(c["message"]["content"].as_str().unwrap().starts_with('{'));
    }
    let yes_no = send(
        &app,
        post(
            "/v1/completions",
            r#"{"model": "strong", "prompt": "Is it? ", "temperature": 1.0, "seed": 9, "max_tokens": 10,
               "response_format": {"type": "regex", "pattern": "(yes|no)"}}"#,
        ),
    )
    .await
    .json();
    let answer = yes_no["choices"][0]["text"].as_str().unwrap();
    assert!(answer == "yes" || answer == "no", "{yes_no}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_formats_that_cannot_be_followed_are_400s() {
    let (app, _) = two_tier(fixed(), EngineOptions::default());
    for (format, needle) in [
        (
            r#"{"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}"#,
            "nope",
        ),
        (
            r#"{"type": "json_schema", "json_schema": {"name": "x", "schema": 3}}"#,
            "must be a JSON schema",
        ),
        (
            r#"{"type": "json_schema"}"#,
            "response_format.json_schema` is missing",
        ),
        (r#"{"type": "xml"}"#, "must be `text`, `json_object`"),
        (
            r#"{"type": "regex", "pattern": "(open"}"#,
            "response format",
        ),
        (
            r#"{"type": "grammar", "grammar": "start: missing_rule"}"#,
            "missing_rule",
        ),
    ] {
        let body = chat_body("strong", "hi", &format!(r#""response_format": {format}"#));
        let r = send(&app, post("/v1/chat/completions", body)).await;
        assert_error(&r, 400, needle);
    }
    let r = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(
                "strong",
                "hi",
                r#""ignore_eos": true, "response_format": {"type": "json_object"}"#,
            ),
        ),
    )
    .await;
    assert_error(&r, 400, "ignore_eos");
    // The server still answers.
    let ok = send(
        &app,
        post("/v1/chat/completions", chat_body("strong", "hi", "")),
    )
    .await;
    assert_eq!(ok.status, 200);
}

const TOOLS: &str = r#"[
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}},
                       "required": ["city"], "additionalProperties": false}}},
    {"type": "function", "function": {"name": "add", "description": "Adds two numbers",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                                        "b": {"type": "integer", "minimum": 0, "maximum": 99}},
                       "required": ["a", "b"], "additionalProperties": false}}}
]"#;

fn tool_body(model: &str, choice: &str, extra: &str) -> String {
    chat_body(
        model,
        "What is the weather in Paris?",
        &format!(
            r#""temperature": 1.0, "seed": 5, "max_tokens": 200, "tools": {TOOLS}, "tool_choice": {choice}, "parallel_tool_calls": false{extra}"#
        ),
    )
    .replacen(r#""temperature": 0, "#, "", 1)
}

/// Every call names a tool and carries arguments its schema accepts.
fn assert_calls(calls: &[Value], only: Option<&str>) {
    assert!(!calls.is_empty());
    for c in calls {
        assert_eq!(c["type"], "function");
        assert!(c["id"].as_str().unwrap().starts_with("call_"), "{c}");
        let name = c["function"]["name"].as_str().unwrap();
        let args: Value = serde_json::from_str(c["function"]["arguments"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{c}: {e}"));
        match name {
            "get_weather" => assert!(args["city"].as_str().unwrap().chars().count() <= 10, "{c}"),
            "add" => assert!(args["a"].is_u64() && args["b"].is_u64(), "{c}"),
            other => panic!("unknown function {other}"),
        }
        if let Some(o) = only {
            assert_eq!(name, o);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_and_named_tool_calls_are_made_streamed_and_read_back() {
    let Some((app, _)) = two_tier_real_vocab(fixed()) else {
        return;
    };
    // The strong tier's template offers tools itself (Qwen2.5, `<tool_call>` blocks); the
    // fast tier's (TinyLlama) knows none, so bakeoff describes them. Random weights: only the
    // grammar makes the calls.
    for model in ["strong", "fast"] {
        for (choice, only) in [
            (r#""required""#, None),
            (
                r#"{"type": "function", "function": {"name": "add"}}"#,
                Some("add"),
            ),
        ] {
            let r = send(
                &app,
                post("/v1/chat/completions", tool_body(model, choice, "")),
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.text);
            let v = r.json();
            let c = &v["choices"][0];
            assert_eq!(c["finish_reason"], "tool_calls", "{model} {choice}: {v}");
            assert!(c["message"]["content"].is_null(), "{v}");
            let calls = c["message"]["tool_calls"].as_array().unwrap();
            assert_eq!(calls.len(), 1, "parallel_tool_calls is false: {v}");
            assert_calls(calls, only);

            // Streamed: the call arrives as a delta with its index; the same call.
            let s = send(
                &app,
                post(
                    "/v1/chat/completions",
                    tool_body(model, choice, r#", "stream": true"#),
                ),
            )
            .await;
            let chunks: Vec<Value> = s.events()[..s.events().len() - 1]
                .iter()
                .map(|e| serde_json::from_str(e).unwrap())
                .collect();
            let deltas: Vec<&Value> = chunks
                .iter()
                .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
                .collect();
            assert_eq!(deltas.len(), 1, "{chunks:?}");
            assert_eq!(deltas[0][0]["index"], 0);
            assert_eq!(deltas[0][0]["function"], calls[0]["function"]);
            assert_eq!(s.streamed_content(), "");
            let fin = chunks
                .iter()
                .rev()
                .find(|c| !c["choices"][0]["finish_reason"].is_null());
            assert_eq!(fin.unwrap()["choices"][0]["finish_reason"], "tool_calls");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_round_trip_is_rendered_and_bad_tools_are_400s() {
    let Some((app, _)) = two_tier_real_vocab(fixed()) else {
        return;
    };
    // The call, the tool's result, then the answer (auto: the model may answer or call again).
    let conversation = format!(
        r#"{{"model": "strong", "temperature": 0, "max_tokens": 8, "tools": {TOOLS},
            "messages": [
              {{"role": "user", "content": "Weather in Paris?"}},
              {{"role": "assistant", "content": null, "tool_calls": [{{"id": "call_1", "type": "function",
                 "function": {{"name": "get_weather", "arguments": "{{\"city\": \"Paris\"}}"}}}}]}},
              {{"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"}}
            ]}}"#
    );
    for model in ["strong", "fast"] {
        let body = conversation.replace(r#""model": "strong""#, &format!(r#""model": "{model}""#));
        let r = send(&app, post("/v1/chat/completions", body)).await;
        assert_eq!(r.status, 200, "{model}: {}", r.text);
    }

    for (extra, needle) in [
        (r#""tools": {"type": "function"}"#, "`tools` must be a list"),
        (r#""tools": [{"type": "retrieval"}]"#, "tools[0].type"),
        (
            r#""tools": [{"type": "function", "function": {"name": "has space"}}]"#,
            "letters, digits",
        ),
        (
            r#""tools": [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]"#,
            "two tools are named `f`",
        ),
        (
            r#""tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]"#,
            "must be a JSON schema",
        ),
        (
            r#""tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}}"#,
            "not among `tools`",
        ),
        (r#""tool_choice": "required""#, "`tools` is empty"),
        (
            r#""tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "sometimes""#,
            "`tool_choice` must be",
        ),
        (r#""functions": [{"name": "f"}]"#, "use `tools`"),
    ] {
        let r = send(
            &app,
            post("/v1/chat/completions", chat_body("strong", "hi", extra)),
        )
        .await;
        assert_error(&r, 400, needle);
    }
    // `tool_choice: "none"` offers no tools: a plain answer.
    let r = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(
                "strong",
                "hi",
                &format!(r#""max_tokens": 4, "tools": {TOOLS}, "tool_choice": "none""#),
            ),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        r.json()["choices"][0]["message"]
            .get("tool_calls")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_prompts_in_one_completions_request() {
    let (app, _) = two_tier(fixed(), EngineOptions::default());
    let prompts = [
        "Once upon a time",
        "The quick brown fox",
        "In the beginning",
    ];
    let one = |p: &str| {
        format!(
            r#"{{"model": "strong", "prompt": {p:?}, "echo": true, "logprobs": 1, "max_tokens": 3, "temperature": 0, "ignore_eos": true}}"#
        )
    };
    let mut singles = Vec::new();
    for p in prompts {
        let r = send(&app, post("/v1/completions", one(p))).await;
        assert_eq!(r.status, 200, "{}", r.text);
        singles.push(r.json());
    }
    // The same three as one request (what lm-evaluation-harness sends with batch_size 3):
    // choice i is prompt i's answer, with its own echoed prompt and log-probabilities.
    let batch = one("X").replace(r#""X""#, &serde_json::to_string(&prompts).unwrap());
    let r = send(&app, post("/v1/completions", batch.clone())).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["text"], singles[i]["choices"][0]["text"], "{i}");
        assert_eq!(c["logprobs"], singles[i]["choices"][0]["logprobs"], "{i}");
    }
    let prompt_tokens: u64 = singles
        .iter()
        .map(|s| s["usage"]["prompt_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(v["usage"]["prompt_tokens"], prompt_tokens);
    assert_eq!(v["usage"]["completion_tokens"], 9);

    // Streamed, and with n = 2: choice index = prompt · n + choice, OpenAI's order.
    let streamed = send(
        &app,
        post(
            "/v1/completions",
            batch.replace(
                r#""temperature": 0"#,
                r#""temperature": 0, "n": 2, "stream": true"#,
            ),
        ),
    )
    .await;
    let mut texts = vec![String::new(); 6];
    for e in streamed.events().iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        if let Some(c) = v["choices"].get(0) {
            texts[c["index"].as_u64().unwrap() as usize] += c["text"].as_str().unwrap();
        }
    }
    for (k, t) in texts.iter().enumerate() {
        assert_eq!(t, choices[k / 2]["text"].as_str().unwrap(), "choice {k}");
    }

    // Token-id prompts mix with text ones; limits and empty prompts are 400s naming the prompt.
    let ok = send(
        &app,
        post(
            "/v1/completions",
            r#"{"model": "strong", "prompt": [[5, 6, 7], "text"], "max_tokens": 1}"#,
        ),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.json()["choices"].as_array().unwrap().len(), 2);
    let many = serde_json::to_string(&vec!["a"; 65]).unwrap();
    for (prompt, extra, needle) in [
        (many.as_str(), "", "at most 64 prompts"),
        (r#"["a", ""]"#, "", "`prompt[1]` is empty"),
        (r#"["a", 3]"#, "", "a list of either"),
        (r#"[]"#, "", "an empty list"),
        (
            r#"["a", "b", "c", "d", "e"]"#,
            r#", "n": 16"#,
            "prompts times `n`",
        ),
    ] {
        let r = send(
            &app,
            post(
                "/v1/completions",
                format!(r#"{{"model": "strong", "prompt": {prompt}, "max_tokens": 1{extra}}}"#),
            ),
        )
        .await;
        assert_error(&r, 400, needle);
    }
}
