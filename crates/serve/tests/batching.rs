//! Aggregate decode throughput at 1, 4 and 8 concurrent streams, through the engine worker's
//! continuous batching (the figures in docs/benchmarks.md). Ignored by default: it wants a
//! full-size model and a release build.
//!
//! ```text
//! bakeoff synth --preset tinyllama-1.1b --format gguf --quant q8_0 \
//!     --vocab ../shared/vocab/ggml-vocab-llama-spm.gguf --out /tmp/models/tl-q8_0.gguf
//! BAKEOFF_BENCH_MODEL=/tmp/models/tl-q8_0.gguf cargo test --release -p bakeoff-serve \
//!     --test batching -- --ignored --nocapture
//! ```
//!
//! Two measurements per concurrency N:
//! - `scheduler`: N streams submitted together to a [`LocalModel`] (max_tokens each, EOS
//!   ignored); aggregate decode tok/s = tokens after each stream's first / (last token time −
//!   latest first-token time), i.e. over the span where all N decode together.
//! - `forward_batch`: the bare model, N one-token items per step, mean step time over 16
//!   steps; tok/s = N / step time. The ratio between the two is the scheduler's overhead.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use bakeoff_engine::loader::{LoadOptions, load};
use bakeoff_engine::sampling::SamplingParams;
use bakeoff_serve::backend::{GenRequest, Input, StreamEvent, Upstream};
use bakeoff_serve::engine::{EngineOptions, LocalModel};
use bakeoff_serve::metrics::Metrics;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs BAKEOFF_BENCH_MODEL (a full-size model) and a release build"]
async fn aggregate_decode_throughput_grows_with_concurrency() {
    let path =
        std::env::var("BAKEOFF_BENCH_MODEL").expect("set BAKEOFF_BENCH_MODEL to a model path");
    let tokens = env_or("BAKEOFF_BENCH_TOKENS", 64);
    let threads = std::env::var("BAKEOFF_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok());
    // `BAKEOFF_BENCH_LEVELS=1,4,8,16` adds more; the first is the baseline of the speed-ups.
    let levels: Vec<usize> = std::env::var("BAKEOFF_BENCH_LEVELS")
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|_| vec![1, 4, 8]);
    let max_n = levels.iter().copied().max().unwrap_or(8);
    let opts = LoadOptions {
        threads,
        ..Default::default()
    };

    // Bare forward_batch step times.
    let mut lm = load(&path, None, &opts).unwrap();
    println!(
        "model {path}: {} on {}",
        lm.info.weight_dtype, lm.info.device
    );
    let prompt: Vec<u32> = lm
        .prompter
        .encode_prompt("The quick brown fox jumps over the lazy dog.")
        .unwrap();
    let mut slots = vec![0usize];
    for _ in 1..max_n {
        slots.push(lm.model.alloc_slot().unwrap());
    }
    for &s in &slots {
        lm.model.forward_batch(&[(s, &prompt[..])]).unwrap();
    }
    let mut bare = Vec::new();
    for &n in &levels {
        let items: Vec<(usize, &[u32])> = slots[..n].iter().map(|&s| (s, &prompt[..1])).collect();
        lm.model.forward_batch(&items).unwrap();
        let t = Instant::now();
        for _ in 0..16 {
            lm.model.forward_batch(&items).unwrap();
        }
        let step = t.elapsed().as_secs_f64() / 16.0;
        bare.push(n as f64 / step);
        println!(
            "forward_batch N={n}: step {:.1} ms, {:.2} tok/s",
            step * 1e3,
            n as f64 / step
        );
    }
    drop(lm);

    // Through the scheduler.
    let lm = load(&path, None, &opts).unwrap();
    let engine = Arc::new(
        LocalModel::spawn(
            "bench",
            lm,
            EngineOptions {
                max_batch: max_n,
                ..Default::default()
            },
            Arc::new(Metrics::new()),
        )
        .unwrap(),
    );
    let mut sched = Vec::new();
    for &n in &levels {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..n {
            let req = GenRequest {
                model: "bench".into(),
                input: Input::Text(format!(
                    "Stream {i}: the quick brown fox jumps over the lazy dog."
                )),
                max_tokens: Some(tokens),
                sampling: SamplingParams::greedy(),
                stop: Vec::new(),
                ignore_eos: true,
                logprobs: None,
                response_format: None,
                tools: None,
                echo: false,
            };
            let e = engine.clone();
            tasks.push(tokio::spawn(async move {
                let mut rx = e.start(req).await.unwrap();
                let (mut first, mut last, mut count) = (None, None, 0usize);
                while let Some(ev) = rx.recv().await {
                    match ev {
                        StreamEvent::Token(t) if !t.tail => {
                            let now = start.elapsed().as_secs_f64();
                            first.get_or_insert(now);
                            last = Some(now);
                            count += 1;
                        }
                        StreamEvent::Done(_) => break,
                        StreamEvent::Error(e) => panic!("{e}"),
                        _ => {}
                    }
                }
                (first.unwrap(), last.unwrap(), count)
            }));
        }
        let mut runs = Vec::new();
        for t in tasks {
            runs.push(t.await.unwrap());
        }
        let first_max = runs.iter().map(|r| r.0).fold(0.0, f64::max);
        let last_max = runs.iter().map(|r| r.1).fold(0.0, f64::max);
        let decoded: usize = runs.iter().map(|r| r.2 - 1).sum();
        // Tokens after the latest first token, over that span.
        let in_span: f64 = runs
            .iter()
            .map(|r| (r.2 - 1) as f64 * (r.1 - first_max) / (r.1 - r.0))
            .sum();
        let agg = in_span / (last_max - first_max);
        sched.push(agg);
        println!(
            "scheduler N={n}: {decoded} tokens decoded, aggregate {agg:.2} tok/s, per stream {:.2} tok/s, ttft max {:.0} ms",
            agg / n as f64,
            first_max * 1e3
        );
    }
    for (i, &n) in levels.iter().enumerate().skip(1) {
        println!(
            "speed-up at {n} over {}: scheduler {:.2}x, forward_batch {:.2}x",
            levels[0],
            sched[i] / sched[0],
            bare[i] / bare[0]
        );
    }
}
