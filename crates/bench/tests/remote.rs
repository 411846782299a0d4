//! Remote engines, against an in-process fake OpenAI server on 127.0.0.1 that streams one token
//! per SSE chunk at a known pace: the bench must see every token, take counts from `usage`, and
//! measure latencies close to the pace.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bakeoff_bench::job::{BenchConfig, RunParams, default_params};
use bakeoff_bench::scenarios::ScenarioId;
use bakeoff_bench::worker::run_job;
use bakeoff_record::EngineKind;
use serde_json::{Value, json};

struct Fake {
    base: String,
    requests: Arc<Mutex<Vec<Value>>>,
}

/// Serves `/v1/chat/completions`: `max_tokens` chunks `delay` apart, then `usage`, then [DONE].
/// With `status` other than 200 it answers that status with an OpenAI-style error body.
fn fake_server(delay: Duration, status: u16) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let seen = seen.clone();
            std::thread::spawn(move || serve(conn, delay, status, &seen));
        }
    });
    Fake { base, requests }
}

fn serve(conn: TcpStream, delay: Duration, status: u16, seen: &Mutex<Vec<Value>>) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let mut length = 0;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    let req: Value = serde_json::from_slice(&body).unwrap();
    seen.lock().unwrap().push(req.clone());
    let mut out = conn;
    if status != 200 || !request_line.starts_with("POST /v1/chat/completions ") {
        let code = if status != 200 { status } else { 404 };
        let msg =
            json!({"error": {"message": "model is asleep", "type": "server_error"}}).to_string();
        let _ = write!(
            out,
            "HTTP/1.1 {code} Oops\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{msg}",
            msg.len()
        );
        return;
    }
    let n = req["max_tokens"].as_u64().unwrap();
    let model = req["model"].as_str().unwrap().to_string();
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut send = |v: Value| {
        write!(out, "data: {v}\n\n").unwrap();
        out.flush().unwrap();
    };
    // A role-only first chunk, as real servers send: it carries no content and is no token.
    send(
        json!({"object": "chat.completion.chunk", "model": model, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
    );
    for i in 0..n {
        std::thread::sleep(delay);
        send(
            json!({"choices": [{"index": 0, "delta": {"content": format!(" w{i}")}, "finish_reason": null}]}),
        );
    }
    send(json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}));
    send(
        json!({"choices": [], "usage": {"prompt_tokens": 21, "completion_tokens": n, "total_tokens": 21 + n}}),
    );
    write!(out, "data: [DONE]\n\n").unwrap();
}

fn config(models: Vec<String>) -> BenchConfig {
    BenchConfig {
        models,
        params: RunParams {
            scenarios: vec![ScenarioId::Short],
            depths: vec![64],
            repetitions: 2,
            warmup: 1,
            max_tokens: 12,
            depth_tokens: 4,
            ..default_params()
        },
        timeout_s: 30,
        ..BenchConfig::default()
    }
}

#[test]
fn remote_engine_is_measured_from_its_stream() {
    let fake = fake_server(Duration::from_millis(5), 200);
    let jobs = config(vec![format!("openai:{}#fake-model", fake.base)])
        .jobs()
        .unwrap();
    assert_eq!(jobs.len(), 1);
    let mut steps = Vec::new();
    let r = run_job(&jobs[0], &mut |p| steps.push(p.done));
    assert_eq!(r.error, None);
    assert_eq!(r.model.engine, EngineKind::Openai);
    assert_eq!(
        steps.len() as u64,
        jobs[0].work_units(),
        "one progress step per unit of work"
    );

    let short = &r.scenarios[0];
    assert_eq!(short.samples.len(), 2);
    for s in &short.samples {
        assert_eq!(s.generated_tokens, 12, "count from usage");
        assert_eq!(
            s.token_times_s.len(),
            12,
            "one timestamp per content chunk, none for the role chunk"
        );
        assert_eq!(s.prompt_tokens, 21, "prompt count from usage");
        assert_eq!(s.finish_reason, "length");
        assert!(s.e2e_s().unwrap() >= s.ttft_s().unwrap());
    }
    let st = &short.stats;
    let itl = st.itl_ms.as_ref().unwrap();
    assert!(
        itl.p50 >= 4.0 && itl.p50 < 100.0,
        "ITL p50 {} ms for a 5 ms pace",
        itl.p50
    );
    let decode = st.decode_tok_s.as_ref().unwrap().mean;
    assert!(
        decode > 10.0 && decode <= 250.0,
        "{decode} tok/s for a 5 ms pace"
    );
    assert!(st.ttft_ms.as_ref().unwrap().mean >= 4.0);
    assert_eq!(r.depths.len(), 1);
    assert_eq!(r.depths[0].samples[0].generated_tokens, 4);

    let reqs = fake.requests.lock().unwrap();
    // Warm-up + 2 repetitions for the scenario, warm-up + 2 for the depth.
    assert_eq!(reqs.len(), 6);
    for q in reqs.iter() {
        assert_eq!(q["model"], "fake-model");
        assert_eq!(q["stream"], true);
        assert_eq!(q["stream_options"]["include_usage"], true);
        assert_eq!(q["temperature"], 0.0);
        assert_eq!(q["ignore_eos"], true);
        assert_eq!(q["messages"][0]["role"], "user");
    }
    // Every request is tagged with its own number, so no two share a prompt prefix that a
    // server's cache could reuse; the repetitions of one prompt differ only by the tag.
    let contents: Vec<&str> = reqs
        .iter()
        .map(|q| q["messages"][0]["content"].as_str().unwrap())
        .collect();
    for (i, c) in contents.iter().enumerate() {
        assert!(c.starts_with(&format!("[{}] ", i + 1)), "{c}");
    }
    let untagged = |c: &str| c.split_once("] ").unwrap().1.to_string();
    assert_eq!(untagged(contents[4]), untagged(contents[5]));
    assert!(short.note.as_deref().unwrap().contains("prefix cache"));
    assert_eq!(reqs[1]["max_tokens"], 12);
    assert_eq!(
        reqs[0]["max_tokens"], 12,
        "warm-up asks min(16, max_tokens)"
    );
}

#[test]
fn remote_errors_are_reported_with_the_status() {
    let fake = fake_server(Duration::from_millis(1), 503);
    let jobs = config(vec![format!("openai:{}#m", fake.base)])
        .jobs()
        .unwrap();
    let r = run_job(&jobs[0], &mut |_| {});
    let err = r.error.unwrap();
    assert!(
        err.contains("HTTP 503") && err.contains("model is asleep"),
        "{err}"
    );
}

#[test]
fn non_loopback_hosts_need_allow_host() {
    let jobs = config(vec!["openai:http://192.0.2.7:8080/v1#m".into()])
        .jobs()
        .unwrap();
    let r = run_job(&jobs[0], &mut |_| {});
    let err = r.error.unwrap();
    assert!(err.contains("--allow-host 192.0.2.7"), "{err}");
    assert!(r.scenarios.is_empty());
}
