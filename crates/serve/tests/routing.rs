//! The router through the app: policies, tier and model names, fallback from failing
//! upstreams (before the first token too), cooldown, overload (429), timeouts (504), client
//! disconnects that cancel the generation, and continuous batching that keeps answers equal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bakeoff_record::{FinishReason, Usage};
use bakeoff_serve::HttpSettings;
use bakeoff_serve::backend::{DoneOut, StreamEvent, TokenOut, Upstream};
use bakeoff_serve::engine::EngineOptions;
use bakeoff_serve::metrics::Metrics;
use bakeoff_serve::remote::RemoteModel;
use bakeoff_serve::router::{RouterConfig, RoutingPolicy, Tier};
use bakeoff_serve::{ApiError, ErrorKind};
use common::*;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

fn cfg(policy: RoutingPolicy) -> RouterConfig {
    RouterConfig {
        policy,
        ..Default::default()
    }
}

fn tok(text: &str, lp: f32) -> StreamEvent {
    StreamEvent::Token(TokenOut {
        text: text.into(),
        token: Some(text.into()),
        logprob: Some(lp),
        top: vec![],
        tail: false,
    })
}

fn done(n: usize) -> StreamEvent {
    StreamEvent::Done(DoneOut {
        finish_reason: FinishReason::Stop,
        usage: Usage {
            prompt_tokens: 5,
            completion_tokens: n,
            cached_tokens: 0,
        },
        timings: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complexity_sends_easy_requests_fast_and_hard_ones_strong() {
    let (app, _) = two_tier(cfg(RoutingPolicy::Complexity), EngineOptions::default());
    let easy = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body("auto", "Hi!", r#""max_tokens": 2"#),
        ),
    )
    .await;
    assert_eq!(easy.json()["route"]["tier"], "fast", "{}", easy.text);
    assert!(
        easy.route().contains("reason=complexity"),
        "{}",
        easy.route()
    );
    let hard = "Implement a Python function that solves the equation 3x + 7 = 22 step by step, \
                explain why each step is valid, compare two algorithms and prove the result.";
    let r = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body("auto", hard, r#""max_tokens": 2"#),
        ),
    )
    .await;
    let v = r.json();
    assert_eq!(v["route"]["tier"], "strong", "{}", r.text);
    let th = RouterConfig::default().complexity_threshold as f64;
    assert!(v["route"]["score"].as_f64().unwrap() >= th);
    // Names bypass the policy.
    let r = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body("fast", hard, r#""max_tokens": 2"#),
        ),
    )
    .await;
    assert_eq!(r.json()["route"]["tier"], "fast");
    let r = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body("tiny-qwen2", "Hi!", r#""max_tokens": 2"#),
        ),
    )
    .await;
    let v = r.json();
    assert_eq!(
        (v["model"].as_str(), v["route"]["reason"].as_str()),
        (Some("tiny-qwen2"), Some("model requested by name"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascade_keeps_confident_answers_and_escalates_weak_ones() {
    let m = Arc::new(Metrics::new());
    let strong = local("tiny-qwen2", "tiny-qwen2", EngineOptions::default(), &m);
    let confident = Scripted::new(
        "fast-confident",
        Script::Events(vec![tok("Paris", -0.1), tok(".", -0.2), done(2)]),
    );
    let (app, _) = app_with(
        vec![
            (Tier::Fast, confident.clone()),
            (Tier::Strong, strong.clone()),
        ],
        cfg(RoutingPolicy::Cascade),
        HttpSettings::default(),
        m.clone(),
    );
    let r = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body("auto", "Capital of France?", r#""max_tokens": 4"#),
        ),
    )
    .await;
    let v = r.json();
    assert_eq!(v["choices"][0]["message"]["content"], "Paris.");
    assert_eq!(v["route"]["tier"], "fast");
    assert!(
        v["route"]["reason"].as_str().unwrap().contains("accepted"),
        "{}",
        r.text
    );
    // The client did not ask for logprobs: none in the answer.
    assert!(v["choices"][0]["logprobs"].is_null());

    let unsure = Scripted::new(
        "fast-unsure",
        Script::Events(vec![tok("Lyon", -3.0), tok("?", -2.5), done(2)]),
    );
    let m2 = Arc::new(Metrics::new());
    let (app, _) = app_with(
        vec![(Tier::Fast, unsure), (Tier::Strong, strong)],
        cfg(RoutingPolicy::Cascade),
        HttpSettings::default(),
        m2,
    );
    let r = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(
                "auto",
                "Capital of France?",
                r#""max_tokens": 4, "stream": true"#,
            ),
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.route().contains("tier=strong"), "{}", r.route());
    assert!(
        r.route()
            .contains("rejected (mean logprob -2.750 < -1.500)"),
        "{}",
        r.route()
    );
    assert!(!r.streamed_content().contains("Lyon"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_falls_back_to_the_other_tier() {
    // A real failing upstream: a loopback server that answers 500 to everything.
    let upstream = axum::Router::new()
        .fallback(|| async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom") });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, upstream).await.unwrap() });
    let broken = Arc::new(
        RemoteModel::new(
            Some("broken".into()),
            &format!("http://{addr}"),
            Some("m".into()),
            None,
            None,
            Duration::from_secs(1),
        )
        .unwrap(),
    );
    let m = Arc::new(Metrics::new());
    let strong = local("tiny-qwen2", "tiny-qwen2", EngineOptions::default(), &m);
    let (app, _) = app_with(
        vec![(Tier::Fast, broken), (Tier::Strong, strong)],
        cfg(RoutingPolicy::Fixed),
        HttpSettings::default(),
        m,
    );
    for stream in [false, true] {
        let extra = format!(r#""max_tokens": 3, "stream": {stream}"#);
        let r = send(
            &app,
            post("/v1/chat/completions", chat_body("auto", "hi", &extra)),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let route = r.route();
        assert!(
            route.contains("tier=strong") && route.contains("fallback=true"),
            "{route}"
        );
        assert!(route.contains("answered 500"), "{route}");
    }
    assert_eq!(
        metric(&app, "bakeoff_fallbacks_total{from=\"fast\",to=\"strong\"}").await,
        2.0
    );
    assert_eq!(
        metric(
            &app,
            "bakeoff_replica_failures_total{kind=\"upstream\",model=\"broken\"}"
        )
        .await,
        2.0
    );
    // Two failures in a row: the replica cools down and is skipped, and says so.
    let h = send(&app, get("/health")).await.json();
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["replicas"][0]["cooling_down"], true);
    let r = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body("auto", "hi", r#""max_tokens": 3"#),
        ),
    )
    .await;
    assert!(
        r.route().contains("no `fast` replica is available"),
        "{}",
        r.route()
    );
    assert_eq!(
        metric(
            &app,
            "bakeoff_replica_failures_total{kind=\"upstream\",model=\"broken\"}"
        )
        .await,
        2.0
    );

    // An unreachable upstream (nothing listens) is the same.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gone = Arc::new(
        RemoteModel::new(
            None,
            &format!("http://{dead}/v1"),
            Some("m".into()),
            None,
            None,
            Duration::from_secs(1),
        )
        .unwrap(),
    );
    assert!(!gone.health(Duration::from_millis(500)).await);
    let m = Arc::new(Metrics::new());
    let strong = local("tiny-qwen2", "tiny-qwen2", EngineOptions::default(), &m);
    let (app, state) = app_with(
        vec![(Tier::Fast, gone), (Tier::Strong, strong)],
        cfg(RoutingPolicy::Fixed),
        HttpSettings::default(),
        m,
    );
    state.router.check_health().await;
    assert_eq!(
        metric(&app, "bakeoff_replica_up{model=\"127.0.0.1:").await,
        0.0
    );
    let r = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body("auto", "hi", r#""max_tokens": 3"#),
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.route().contains("tier=strong"), "{}", r.route());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_fails_before_its_first_token_falls_back() {
    let m = Arc::new(Metrics::new());
    let failing = Scripted::new(
        "flaky",
        Script::Events(vec![StreamEvent::Error(ApiError::upstream(
            "exploded before any token",
        ))]),
    );
    let strong = local("tiny-qwen2", "tiny-qwen2", EngineOptions::default(), &m);
    let (app, _) = app_with(
        vec![(Tier::Fast, failing.clone()), (Tier::Strong, strong)],
        cfg(RoutingPolicy::Fixed),
        HttpSettings::default(),
        m,
    );
    let r = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body("auto", "hi", r#""max_tokens": 3, "stream": true"#),
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(failing.calls(), 1);
    assert!(
        r.route()
            .contains("fell back from `fast`: exploded before any token"),
        "{}",
        r.route()
    );
    assert_eq!(r.events().last().unwrap(), "[DONE]");

    // With fallback off, the error reaches the client with the right status.
    let m = Arc::new(Metrics::new());
    let failing = Scripted::new("flaky", Script::StartError(ApiError::upstream("down")));
    let strong = local("tiny-qwen2", "tiny-qwen2", EngineOptions::default(), &m);
    let (app, _) = app_with(
        vec![(Tier::Fast, failing), (Tier::Strong, strong)],
        RouterConfig {
            fallback: false,
            ..cfg(RoutingPolicy::Fixed)
        },
        HttpSettings::default(),
        m,
    );
    let r = send(
        &app,
        post("/v1/chat/completions", chat_body("auto", "hi", "")),
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_first_token_in_time_is_a_504() {
    let m = Arc::new(Metrics::new());
    let hang = Scripted::new("slow", Script::Hang);
    let (app, _) = app_with(
        vec![(Tier::Fast, hang)],
        RouterConfig {
            first_token_timeout: Duration::from_millis(200),
            ..cfg(RoutingPolicy::Fixed)
        },
        HttpSettings::default(),
        m,
    );
    let r = send(
        &app,
        post("/v1/chat/completions", chat_body("auto", "hi", "")),
    )
    .await;
    assert_eq!(r.status, 504, "{}", r.text);
    assert_eq!(r.json()["error"]["type"], "timeout_error");
    assert_eq!(
        metric(&app, "bakeoff_errors_total{kind=\"timeout\"}").await,
        1.0
    );

    // The request deadline covers the whole answer too.
    let m = Arc::new(Metrics::new());
    let hang = Scripted::new("slow", Script::Hang);
    let http = HttpSettings {
        request_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let (app, _) = app_with(vec![(Tier::Fast, hang)], cfg(RoutingPolicy::Fixed), http, m);
    assert_eq!(
        send(
            &app,
            post("/v1/chat/completions", chat_body("auto", "hi", ""))
        )
        .await
        .status,
        504
    );
}

/// One sequence at a time, one waiting, and steps slow enough to fill the queue.
fn tight() -> EngineOptions {
    EngineOptions {
        max_batch: 1,
        queue_capacity: 1,
        step_delay: Duration::from_millis(30),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_with_retry_after() {
    let m = Arc::new(Metrics::new());
    let fast = local("tiny-llama", "tiny-llama", tight(), &m);
    let (app, _) = app_with(
        vec![(Tier::Fast, fast)],
        cfg(RoutingPolicy::Fixed),
        HttpSettings::default(),
        m,
    );
    let long = chat_body(
        "auto",
        "hi",
        r#""max_tokens": 200, "ignore_eos": true, "stream": true"#,
    );
    // A: generating (its body is held, not read).
    let a = app
        .clone()
        .oneshot(post("/v1/chat/completions", long.clone()))
        .await
        .unwrap();
    assert_eq!(a.status(), 200);
    // B: waits in the queue.
    let app_b = app.clone();
    let b = tokio::spawn(async move { send(&app_b, post("/v1/chat/completions", long)).await });
    let app_m = app.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            let app_m = app_m.clone();
            async move { metric(&app_m, "bakeoff_queue_depth{model=\"tiny-llama\"}").await == 1.0 }
        })
        .await,
        "the second request never queued"
    );
    // C: no room.
    let c = send(
        &app,
        post("/v1/chat/completions", chat_body("auto", "hi", "")),
    )
    .await;
    assert_eq!(c.status, 429, "{}", c.text);
    assert_eq!(c.headers["retry-after"], "1");
    assert_eq!(c.json()["error"]["type"], "rate_limit_error");
    // Admission comes before the template and the tokenizer: a prompt longer than the context
    // gets the 429 of a full queue, not the 400 that tokenizing it would have found.
    let d = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body("auto", &"word ".repeat(600), ""),
        ),
    )
    .await;
    assert_eq!(d.status, 429, "{}", d.text);
    drop(a);
    b.abort();
    let h = send(&app, get("/health")).await;
    assert_eq!(h.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_on_one_tier_falls_back_to_the_other() {
    let m = Arc::new(Metrics::new());
    let fast = local("tiny-llama", "tiny-llama", tight(), &m);
    let strong = local("tiny-qwen2", "tiny-qwen2", EngineOptions::default(), &m);
    let (app, _) = app_with(
        vec![(Tier::Fast, fast), (Tier::Strong, strong)],
        cfg(RoutingPolicy::Fixed),
        HttpSettings::default(),
        m,
    );
    let long = chat_body(
        "fast",
        "hi",
        r#""max_tokens": 200, "ignore_eos": true, "stream": true"#,
    );
    let a = app
        .clone()
        .oneshot(post("/v1/chat/completions", long.clone()))
        .await
        .unwrap();
    let app_b = app.clone();
    let b = tokio::spawn(async move { send(&app_b, post("/v1/chat/completions", long)).await });
    let app_m = app.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            let app_m = app_m.clone();
            async move { metric(&app_m, "bakeoff_queue_depth{model=\"tiny-llama\"}").await == 1.0 }
        })
        .await
    );
    let c = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body("auto", "hi", r#""max_tokens": 2"#),
        ),
    )
    .await;
    assert_eq!(c.status, 200, "{}", c.text);
    assert!(
        c.route().contains("tier=strong") && c.route().contains("queue limit"),
        "{}",
        c.route()
    );
    drop(a);
    b.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_disconnect_cancels_the_generation() {
    let m = Arc::new(Metrics::new());
    let opts = EngineOptions {
        step_delay: Duration::from_millis(20),
        ..Default::default()
    };
    let fast = local("tiny-llama", "tiny-llama", opts, &m);
    let (app, _) = app_with(
        vec![(Tier::Fast, fast)],
        cfg(RoutingPolicy::Fixed),
        HttpSettings::default(),
        m,
    );
    let body = chat_body(
        "auto",
        "hi",
        r#""max_tokens": 400, "ignore_eos": true, "stream": true"#,
    );
    let resp = app
        .clone()
        .oneshot(post("/v1/chat/completions", body))
        .await
        .unwrap();
    let mut body = resp.into_body();
    // Read a couple of chunks, then hang up.
    for _ in 0..2 {
        body.frame().await.unwrap().unwrap();
    }
    drop(body);
    let app_m = app.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            let app_m = app_m.clone();
            async move {
                metric(
                    &app_m,
                    "bakeoff_engine_cancelled_total{model=\"tiny-llama\"}",
                )
                .await
                    == 1.0
            }
        })
        .await,
        "the engine never noticed the disconnect:\n{}",
        send(&app, get("/metrics")).await.text
    );
    assert_eq!(
        metric(
            &app,
            "bakeoff_client_disconnects_total{model=\"tiny-llama\"}"
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(&app, "bakeoff_active_sequences{model=\"tiny-llama\"}").await,
        0.0
    );
    // It stopped early: far fewer than 400 tokens went through the model.
    let batches = metric(
        &app,
        "bakeoff_engine_batch_size_count{model=\"tiny-llama\"}",
    )
    .await;
    assert!(batches < 200.0, "{batches} steps");

    // A non-streaming request dropped mid-way (its future cancelled) stops the engine too.
    let body = chat_body("auto", "hi", r#""max_tokens": 400, "ignore_eos": true"#);
    let fut = app.clone().oneshot(post("/v1/chat/completions", body));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), fut)
            .await
            .is_err()
    );
    let app_m = app.clone();
    assert!(
        eventually(Duration::from_secs(5), || {
            let app_m = app_m.clone();
            async move {
                metric(
                    &app_m,
                    "bakeoff_engine_cancelled_total{model=\"tiny-llama\"}",
                )
                .await
                    == 2.0
            }
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_are_batched_and_answer_as_if_alone() {
    let m = Arc::new(Metrics::new());
    let opts = EngineOptions {
        max_batch: 4,
        ..Default::default()
    };
    let fast = local("tiny-llama", "tiny-llama", opts, &m);
    let (app, _) = app_with(
        vec![(Tier::Fast, fast)],
        cfg(RoutingPolicy::Fixed),
        HttpSettings::default(),
        m,
    );
    let prompts = [
        "Tell me a story.",
        "What is 2+2?",
        "Name a colour.",
        "Say hello in French.",
    ];
    let mut alone = Vec::new();
    for p in prompts {
        let r = send(
            &app,
            post(
                "/v1/chat/completions",
                chat_body("auto", p, r#""max_tokens": 48, "ignore_eos": true"#),
            ),
        )
        .await;
        alone.push(
            r.json()["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let before = metric(&app, "bakeoff_engine_batch_size_sum{model=\"tiny-llama\"}").await;
    let steps_before = metric(
        &app,
        "bakeoff_engine_batch_size_count{model=\"tiny-llama\"}",
    )
    .await;
    let tasks: Vec<_> = prompts
        .iter()
        .map(|p| {
            let app = app.clone();
            let body = chat_body("auto", p, r#""max_tokens": 48, "ignore_eos": true"#);
            tokio::spawn(async move { send(&app, post("/v1/chat/completions", body)).await })
        })
        .collect();
    let mut together = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        together.push(
            r.json()["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(
        together, alone,
        "batched greedy answers must equal the ones computed alone"
    );
    let rows = metric(&app, "bakeoff_engine_batch_size_sum{model=\"tiny-llama\"}").await - before;
    let steps = metric(
        &app,
        "bakeoff_engine_batch_size_count{model=\"tiny-llama\"}",
    )
    .await
        - steps_before;
    assert!(
        rows / steps > 1.5,
        "mean batch {:.2} over {steps} steps: requests were not batched",
        rows / steps
    );
    // The second round found the prompts' prefixes in the slots' caches.
    assert!(
        metric(
            &app,
            "bakeoff_engine_cached_tokens_total{model=\"tiny-llama\"}"
        )
        .await
            > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_bakeoff_is_a_replica_like_any_other() {
    // Upstream: a bakeoff app on a loopback socket.
    let (upstream, _) = two_tier(cfg(RoutingPolicy::Fixed), EngineOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, upstream).await.unwrap() });
    let remote = Arc::new(
        RemoteModel::new(
            Some("upstream".into()),
            &format!("http://{addr}"),
            None,
            None,
            None,
            Duration::from_secs(2),
        )
        .unwrap(),
    );
    assert!(remote.health(Duration::from_secs(2)).await);
    let m = Arc::new(Metrics::new());
    let (app, _) = app_with(
        vec![(Tier::Strong, remote)],
        cfg(RoutingPolicy::Fixed),
        HttpSettings::default(),
        m,
    );
    let direct = {
        let (local_app, _) = two_tier(cfg(RoutingPolicy::Fixed), EngineOptions::default());
        send(
            &local_app,
            post(
                "/v1/chat/completions",
                chat_body(
                    "auto",
                    "Hello",
                    r#""max_tokens": 10, "ignore_eos": true, "seed": 1"#,
                ),
            ),
        )
        .await
        .json()
    };
    // The upstream's /v1/models lists `auto` first, which is what gets asked for.
    let r = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(
                "auto",
                "Hello",
                r#""max_tokens": 10, "ignore_eos": true, "seed": 1, "logprobs": true"#,
            ),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let v = r.json();
    assert_eq!(v["model"], "upstream");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        direct["choices"][0]["message"]["content"]
    );
    assert_eq!(v["usage"]["completion_tokens"], 10);
    assert_eq!(
        v["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap()
            .len(),
        10
    );
    let r = send(&app, post("/v1/completions", r#"{"prompt": "abc", "max_tokens": 4, "temperature": 0, "ignore_eos": true, "stream": true}"#)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.events().last().unwrap(), "[DONE]");
    let usage_seen = r
        .events()
        .iter()
        .any(|e| e.contains("\"finish_reason\":\"length\""));
    assert!(usage_seen, "{}", r.text);
}

#[test]
fn error_kinds_map_to_statuses() {
    for (k, s) in [
        (ErrorKind::InvalidRequest, 400),
        (ErrorKind::ContextLength, 400),
        (ErrorKind::Unauthorized, 401),
        (ErrorKind::NotFound, 404),
        (ErrorKind::PayloadTooLarge, 413),
        (ErrorKind::Overloaded, 429),
        (ErrorKind::Timeout, 504),
        (ErrorKind::Unavailable, 503),
        (ErrorKind::Upstream, 502),
        (ErrorKind::Internal, 500),
    ] {
        assert_eq!(k.status().as_u16(), s, "{k:?}");
    }
    let v: Value = ApiError::overloaded("m", 3).body();
    assert_eq!(v["error"]["type"], "rate_limit_error");
}

/// The KV-cache budget: a request that could never fit is refused with a 400 naming the budget;
/// two that fit one at a time both finish, the second after the first; a request without
/// max_tokens gets the configured default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_budget_refuses_what_cannot_fit_and_queues_what_can() {
    let m = Arc::new(Metrics::new());
    let lm = tiny("tiny-llama");
    let per_token = lm.model.kv_bytes_per_token() as u64;
    let opts = EngineOptions {
        max_batch: 4,
        step_delay: Duration::from_millis(5),
        default_max_tokens: 6,
        // Room for one sequence of about 100 positions, not two.
        kv_budget_bytes: 100 * per_token,
        ..Default::default()
    };
    let fast = Arc::new(
        bakeoff_serve::engine::LocalModel::spawn("tiny-llama", lm, opts, m.clone()).unwrap(),
    );
    let (app, _) = app_with(
        vec![(Tier::Fast, fast)],
        cfg(RoutingPolicy::Fixed),
        HttpSettings::default(),
        m,
    );
    let r = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body("auto", "hi", r#""max_tokens": 400"#),
        ),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
    assert_eq!(r.json()["error"]["param"], "max_tokens");
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("kv_budget_mib"), "{msg}");

    let body = chat_body("auto", "hi", r#""max_tokens": 60, "ignore_eos": true"#);
    let (a, b) = tokio::join!(
        send(&app, post("/v1/chat/completions", body.clone())),
        send(&app, post("/v1/chat/completions", body))
    );
    for x in [&a, &b] {
        assert_eq!(x.status, 200, "{}", x.text);
        assert_eq!(x.json()["usage"]["completion_tokens"], 60);
    }
    // Never batched together: every forward pass held one sequence.
    let one = metric(
        &app,
        "bakeoff_engine_batch_size_bucket{model=\"tiny-llama\",le=\"1\"}",
    )
    .await;
    let all = metric(
        &app,
        "bakeoff_engine_batch_size_count{model=\"tiny-llama\"}",
    )
    .await;
    assert!(
        all > 100.0 && one == all,
        "{one} of {all} steps had one sequence"
    );

    let d = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body("auto", "hi", r#""ignore_eos": true"#),
        ),
    )
    .await;
    assert_eq!(d.status, 200, "{}", d.text);
    assert_eq!(d.json()["usage"]["completion_tokens"], 6);
    assert_eq!(d.json()["choices"][0]["finish_reason"], "length");
}

/// After a burst, an engine idle for `kv_idle_release` gives its KV-cache slots' memory back
/// (the gauge shows it), and still answers afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_engine_gives_its_kv_cache_back() {
    let m = Arc::new(Metrics::new());
    let opts = EngineOptions {
        max_batch: 4,
        step_delay: Duration::from_millis(5),
        kv_idle_release: Duration::from_millis(400),
        ..Default::default()
    };
    let fast = Arc::new(
        bakeoff_serve::engine::LocalModel::spawn("tiny-llama", tiny("tiny-llama"), opts, m.clone())
            .unwrap(),
    );
    let (app, _) = app_with(
        vec![(Tier::Fast, fast)],
        cfg(RoutingPolicy::Fixed),
        HttpSettings::default(),
        m,
    );
    let gauge = "bakeoff_engine_kv_cache_bytes{model=\"tiny-llama\"}";
    let body = chat_body("auto", "hi", r#""max_tokens": 40, "ignore_eos": true"#);
    let burst = (0..3).map(|_| send(&app, post("/v1/chat/completions", body.clone())));
    for r in futures_util::future::join_all(burst).await {
        assert_eq!(r.status, 200, "{}", r.text);
    }
    // Set as the engine goes idle, just after the last answer: the three slots are still held.
    assert!(
        eventually(Duration::from_secs(2), || async {
            metric(&app, gauge).await > 0.0
        })
        .await,
        "no KV cache held after the burst"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            metric(&app, gauge).await == 0.0
        })
        .await,
        "still held: {}",
        metric(&app, gauge).await
    );
    let r = send(&app, post("/v1/chat/completions", body)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["usage"]["completion_tokens"], 40);
}

/// A panic in a model's worker fails the requests it was generating with a 500 that says so,
/// and the worker restarts: the next request is answered by the same model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_worker_fails_its_requests_and_restarts() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let m = Arc::new(Metrics::new());
    let armed = Arc::new(AtomicBool::new(false));
    let trigger = armed.clone();
    let opts = EngineOptions {
        fault_hook: Some(bakeoff_serve::engine::FaultHook(Arc::new(move || {
            if trigger.swap(false, Ordering::SeqCst) {
                panic!("injected fault");
            }
        }))),
        ..Default::default()
    };
    let fast = local("tiny-llama", "tiny-llama", opts, &m);
    let (app, _) = app_with(
        vec![(Tier::Fast, fast)],
        cfg(RoutingPolicy::Fixed),
        HttpSettings::default(),
        m,
    );
    let body = chat_body("auto", "hi", r#""max_tokens": 5, "ignore_eos": true"#);
    armed.store(true, Ordering::SeqCst);
    let failed = send(&app, post("/v1/chat/completions", body.clone())).await;
    assert_eq!(failed.status, 500, "{}", failed.text);
    let msg = failed.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("restarted") && msg.contains("injected fault"),
        "{msg}"
    );
    let ok = send(&app, post("/v1/chat/completions", body)).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.json()["usage"]["completion_tokens"], 5);
    assert_eq!(
        metric(&app, "bakeoff_engine_restarts_total{model=\"tiny-llama\"}").await,
        1.0
    );
}

/// A request that waits in a busy engine's queue past the first-token timeout gets its 504, but
/// the replica is not faulted: load alone never puts a tier into cooldown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_token_timeout_under_load_is_not_a_fault() {
    let m = Arc::new(Metrics::new());
    let fast = local("tiny-llama", "tiny-llama", tight(), &m);
    let (app, _) = app_with(
        vec![(Tier::Fast, fast)],
        RouterConfig {
            first_token_timeout: Duration::from_millis(300),
            failures_before_cooldown: 1,
            ..cfg(RoutingPolicy::Fixed)
        },
        HttpSettings::default(),
        m,
    );
    let long = chat_body(
        "auto",
        "hi",
        r#""max_tokens": 40, "ignore_eos": true, "stream": true"#,
    );
    // A holds the only batch slot for about 40 × 30 ms.
    let a = app
        .clone()
        .oneshot(post("/v1/chat/completions", long))
        .await
        .unwrap();
    assert_eq!(a.status(), 200);
    let b = send(
        &app,
        post("/v1/chat/completions", chat_body("auto", "hi", "")),
    )
    .await;
    assert_eq!(b.status, 504, "{}", b.text);
    assert!(b.text.contains("busy"), "{}", b.text);
    drop(a);
    let h = send(&app, get("/health")).await;
    assert_eq!(h.json()["status"], "ok", "{}", h.text);
    // Once the cancelled requests have left the queue, the same replica answers.
    let app_c = app.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let app_c = app_c.clone();
            async move {
                let body = chat_body("auto", "hi", r#""max_tokens": 3"#);
                send(&app_c, post("/v1/chat/completions", body))
                    .await
                    .status
                    == 200
            }
        })
        .await,
        "the replica did not answer again"
    );
    assert_eq!(
        metric(
            &app,
            "bakeoff_replica_failures_total{kind=\"timeout_busy\",model=\"tiny-llama\"}"
        )
        .await,
        1.0
    );
}

/// A request waiting for KV-cache room when the worker panics is not lost: the running one fails
/// with the 500, the waiting one is served after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_kv_room_survives_a_worker_panic() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let m = Arc::new(Metrics::new());
    let lm = tiny("tiny-llama");
    let per_token = lm.model.kv_bytes_per_token() as u64;
    let steps = Arc::new(AtomicUsize::new(0));
    let counter = steps.clone();
    let opts = EngineOptions {
        max_batch: 4,
        step_delay: Duration::from_millis(20),
        kv_budget_bytes: 100 * per_token,
        fault_hook: Some(bakeoff_serve::engine::FaultHook(Arc::new(move || {
            if counter.fetch_add(1, Ordering::SeqCst) == 10 {
                panic!("injected fault");
            }
        }))),
        ..Default::default()
    };
    let fast = Arc::new(
        bakeoff_serve::engine::LocalModel::spawn("tiny-llama", lm, opts, m.clone()).unwrap(),
    );
    let (app, _) = app_with(
        vec![(Tier::Fast, fast)],
        cfg(RoutingPolicy::Fixed),
        HttpSettings::default(),
        m,
    );
    let body = chat_body("auto", "hi", r#""max_tokens": 60, "ignore_eos": true"#);
    let (a, b) = tokio::join!(
        send(&app, post("/v1/chat/completions", body.clone())),
        send(&app, post("/v1/chat/completions", body))
    );
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 500], "{} / {}", a.text, b.text);
}
