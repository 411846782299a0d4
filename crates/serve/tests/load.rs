//! A bounded load test over real loopback sockets: the app served by `axum::serve` on
//! 127.0.0.1:0, many concurrent HTTP clients, a fixed number of requests each, so it stops by
//! itself. No unexpected errors allowed; latency percentiles and throughput are printed.
//!
//! Defaults (CI): 32 clients × 20 requests, 8 tokens each, tiny-llama. Override with
//! `BAKEOFF_LOAD_CLIENTS`, `BAKEOFF_LOAD_REQUESTS`, `BAKEOFF_LOAD_MAX_TOKENS`,
//! `BAKEOFF_LOAD_MODEL` (a model path) and `BAKEOFF_LOAD_MAX_BATCH`; see docs/benchmarks.md.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bakeoff_engine::loader::{LoadOptions, load};
use bakeoff_serve::HttpSettings;
use bakeoff_serve::engine::{EngineOptions, LocalModel};
use bakeoff_serve::metrics::Metrics;
use bakeoff_serve::router::{RouterConfig, RoutingPolicy, Tier};
use common::*;
use serde_json::Value;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bounded_load_on_loopback_has_no_errors() {
    let clients = env_or("BAKEOFF_LOAD_CLIENTS", 32);
    let per_client = env_or("BAKEOFF_LOAD_REQUESTS", 20);
    let max_tokens = env_or("BAKEOFF_LOAD_MAX_TOKENS", 8);
    let max_batch = env_or("BAKEOFF_LOAD_MAX_BATCH", 8);
    let m = Arc::new(Metrics::new());
    // Room in the queue for every client: this test is about throughput, not refusals.
    let opts = EngineOptions {
        max_batch,
        queue_capacity: clients,
        ..Default::default()
    };
    let (lm, name) = match std::env::var("BAKEOFF_LOAD_MODEL") {
        Ok(p) => (load(&p, None, &LoadOptions::default()).unwrap(), p),
        Err(_) => (tiny("tiny-llama"), "tiny-llama (synthetic)".to_string()),
    };
    let fast = Arc::new(LocalModel::spawn("m", lm, opts, m.clone()).unwrap());
    let (app, _) = app_with(
        vec![(Tier::Fast, fast)],
        RouterConfig {
            policy: RoutingPolicy::Fixed,
            ..Default::default()
        },
        HttpSettings::default(),
        m,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let url = format!("http://{addr}/v1/chat/completions");
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_client);
                let mut tokens = 0u64;
                for r in 0..per_client {
                    // Half streaming, half not; distinct prompts so prefixes differ.
                    let stream = (c + r) % 2 == 0;
                    let body = serde_json::json!({
                        "model": "auto",
                        "messages": [{"role": "user", "content": format!("client {c} request {r}: say something")}],
                        "max_tokens": max_tokens, "temperature": 0.7, "seed": r, "ignore_eos": true,
                        "stream": stream, "stream_options": {"include_usage": true},
                    });
                    let t = Instant::now();
                    let resp = client.post(&url).json(&body).timeout(Duration::from_secs(300)).send().await.unwrap();
                    let status = resp.status();
                    let text = resp.text().await.unwrap();
                    assert_eq!(status, 200, "client {c} request {r}: {text}");
                    let usage = if stream {
                        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
                        let line = text.lines().rfind(|l| l.contains("\"usage\"")).unwrap();
                        serde_json::from_str::<Value>(line.trim_start_matches("data: ")).unwrap()["usage"].clone()
                    } else {
                        serde_json::from_str::<Value>(&text).unwrap()["usage"].clone()
                    };
                    tokens += usage["completion_tokens"].as_u64().unwrap();
                    lat.push(t.elapsed().as_secs_f64());
                }
                (lat, tokens)
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut tokens = 0;
    for t in tasks {
        let (l, n) = t.await.unwrap();
        lat.extend(l);
        tokens += n;
    }
    let wall = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let n = lat.len();
    assert_eq!(n, clients * per_client);
    assert_eq!(tokens, (n * max_tokens) as u64);
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let batches: Vec<f64> = ["sum", "count"]
        .iter()
        .map(|k| {
            let key = format!("bakeoff_engine_batch_size_{k}{{model=\"m\"}} ");
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(key.as_str()))
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        !metrics.contains("bakeoff_errors_total{"),
        "unexpected errors:\n{metrics}"
    );
    println!(
        "load: model {name}, {clients} clients x {per_client} requests x {max_tokens} tokens, max_batch {max_batch}: \
         {n} requests in {wall:.2} s = {:.1} req/s, {:.1} tok/s; latency p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, \
         max {:.1} ms; mean batch {:.2}",
        n as f64 / wall,
        tokens as f64 / wall,
        pct(&lat, 0.5) * 1e3,
        pct(&lat, 0.9) * 1e3,
        pct(&lat, 0.99) * 1e3,
        lat[n - 1] * 1e3,
        batches[0] / batches[1],
    );
    server.abort();
}
