//! `bakeoff serve` and `bakeoff chat` as users run them: the real binary on tiny synthetic
//! models, real clients over real loopback sockets.
//!
//! - curl's SSE transcript equals a golden file (ids, timestamps and timings masked);
//!   `BAKEOFF_BLESS=1` rewrites it.
//! - the official `openai` Python SDK, streaming and not (`scripts/e2e/openai_sdk.py`), from
//!   `$BAKEOFF_PYTHON` or `.venv-ci/bin/python` (made by `scripts/ci-python.sh`);
//! - `bakeoff chat` in tmux with Ctrl-C during an answer (`scripts/e2e/chat_tmux.sh`), and
//!   from a pipe with `--vs`;
//! - `route calibrate` writing a config that `serve` reads; refusal to bind beyond loopback.
//!
//! Without python+openai, tmux or curl these checks are skipped with a message, unless
//! `BAKEOFF_E2E_REQUIRED=1` (set it in CI after `scripts/ci-python.sh`), which makes them fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bakeoff");
const KEY: &str = "e2e-key";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn models() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let _g = LOCK.lock().unwrap();
    for preset in ["tiny-llama", "tiny-qwen2"] {
        let out = dir.path().join(preset);
        if !out.join("config.json").exists() {
            let st = Command::new(BIN)
                .args([
                    "synth", "--preset", preset, "--format", "hf", "--quant", "f32", "--out",
                ])
                .arg(&out)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "synth {preset} failed");
        }
    }
    dir.path()
}

/// A tool the test needs: present, or skipped (or failed when the e2e checks are required).
fn have(what: &str, ok: bool) -> bool {
    if !ok {
        if std::env::var("BAKEOFF_E2E_REQUIRED").is_ok_and(|v| v == "1") {
            panic!("{what} is required (BAKEOFF_E2E_REQUIRED=1); run scripts/ci-python.sh");
        }
        eprintln!("SKIPPED: {what} is not available (run scripts/ci-python.sh)");
    }
    ok
}

fn tool(name: &str) -> bool {
    Command::new(name)
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
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
            .args(["-c", "import openai"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A running `bakeoff serve`, killed on drop.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let m = models();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--model")
            .arg(format!("fast={}", m.join("tiny-llama").display()))
            .arg("--model")
            .arg(format!("strong={}", m.join("tiny-qwen2").display()))
            .args(["--port", "0", "--threads", "1", "--api-key", KEY])
            .args(extra)
            .env_remove("BAKEOFF_API_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.split(' ').next().unwrap_or_default().to_string());
                }
            }
        });
        let base = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server did not start");
        Server { child, base }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-N", "--max-time", "60"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Replaces what changes from run to run: ids, timestamps, measured times.
fn mask(transcript: &str) -> String {
    let mut out = String::new();
    for line in transcript.lines() {
        match line.strip_prefix("data: ").filter(|d| d.starts_with('{')) {
            Some(d) => {
                let mut v: Value = serde_json::from_str(d).unwrap();
                if v.get("id").is_some() {
                    v["id"] = Value::from("<id>");
                }
                if v.get("created").is_some() {
                    v["created"] = Value::from(0);
                }
                if let Some(t) = v.get_mut("timings").and_then(Value::as_object_mut) {
                    for x in t.values_mut() {
                        *x = Value::from("<measured>");
                    }
                }
                out.push_str(&format!("data: {v}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[test]
fn curl_sse_transcript_matches_the_golden_file() {
    if !have("curl", tool("curl")) {
        return;
    }
    let s = Server::start(&[]);
    let body = r#"{"model": "fast", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}"#;
    let url = format!("http://{}/v1/chat/completions", s.base);
    let auth = format!("Authorization: Bearer {KEY}");
    let got = mask(&curl(&[
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
        &url,
    ]));
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/serve_sse_chat.txt");
    if std::env::var("BAKEOFF_BLESS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, &got).unwrap();
        eprintln!("wrote {}", golden.display());
    }
    // A missing golden file fails: one that wrote itself could never fail.
    let want = std::fs::read_to_string(&golden).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (BAKEOFF_BLESS=1 writes it from this run)",
            golden.display()
        )
    });
    assert_eq!(
        got,
        want,
        "SSE transcript differs from {} (BAKEOFF_BLESS=1 rewrites it)",
        golden.display()
    );

    // Without the key: 401 in the OpenAI shape, and the server keeps serving.
    let no_key = curl(&["-d", body, &url]);
    assert!(no_key.contains("\"authentication_error\""), "{no_key}");
    let health: Value =
        serde_json::from_str(&curl(&[&format!("http://{}/health", s.base)])).unwrap();
    assert_eq!(health["status"], "ok");
    let metrics = curl(&[&format!("http://{}/metrics", s.base)]);
    assert!(
        metrics
            .contains("bakeoff_requests_total{endpoint=\"/v1/chat/completions\",status=\"401\"} 1"),
        "{metrics}"
    );
}

#[test]
fn the_openai_python_sdk_works_against_serve() {
    let py = python();
    if !have("python with the openai package", py.is_some()) {
        return;
    }
    let s = Server::start(&[]);
    let out = Command::new(py.unwrap())
        .arg(root().join("scripts/e2e/openai_sdk.py"))
        .arg(format!("http://{}/v1", s.base))
        .arg(KEY)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("all checks passed"), "{text}");
}

#[test]
fn chat_in_tmux_stops_an_answer_on_ctrl_c() {
    if !have("tmux", tool("tmux")) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(root().join("scripts/e2e/chat_tmux.sh"))
        .arg(BIN)
        .arg(models().join("tiny-llama"))
        .arg(work.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
}

#[test]
fn chat_from_a_pipe_answers_each_line_with_both_models() {
    let m = models();
    let mut child = Command::new(BIN)
        .args([
            "chat",
            "--threads",
            "1",
            "--max-tokens",
            "5",
            "--ignore-eos",
            "--model",
        ])
        .arg(m.join("tiny-llama"))
        .arg("--vs")
        .arg(m.join("tiny-qwen2"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"Hello\n\nSecond question\n/stats\n/quit\nnot read\n")
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout.matches("[tiny-llama]").count(), 2, "{stdout}");
    assert_eq!(stdout.matches("[tiny-qwen2]").count(), 2, "{stdout}");
    assert!(stdout.contains("2 turn(s)"), "{stdout}");
    assert_eq!(
        stderr.matches("-- tiny-llama: 5 tok").count(),
        2,
        "{stderr}"
    );
    assert!(stderr.contains("  decode  "), "{stderr}");
}

#[test]
fn calibrate_writes_a_config_that_serve_reads() {
    if !have("curl", tool("curl")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.jsonl");
    let items = [
        ("hi", true, true),
        ("What is the capital of France?", true, true),
        ("Solve 3x + 7 = 22 step by step and prove it.", false, true),
        (
            "Implement quicksort in Python and explain why it is O(n log n).",
            false,
            true,
        ),
        ("thanks!", true, true),
    ];
    let lines: Vec<String> = items
        .iter()
        .map(|(p, f, s)| {
            serde_json::json!({"prompt": p, "correct": {"fast": f, "strong": s}}).to_string()
        })
        .collect();
    std::fs::write(&results, lines.join("\n")).unwrap();
    let cfg = dir.path().join("serve.toml");
    std::fs::write(&cfg, "request_timeout_s = 30\n").unwrap();
    let out = Command::new(BIN)
        .args(["route", "calibrate", "--strong-share", "0.4", "--results"])
        .arg(&results)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("sends 40.0% to strong; quality 1.000"),
        "{stdout}"
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        text.contains("complexity_threshold") && text.contains("request_timeout_s = 30"),
        "{text}"
    );

    let s = Server::start(&["--config", cfg.to_str().unwrap()]);
    let auth = format!("Authorization: Bearer {KEY}");
    let url = format!("http://{}/v1/chat/completions", s.base);
    let hard = r#"{"messages": [{"role": "user", "content": "Solve 3x + 7 = 22 step by step and prove it."}], "max_tokens": 2}"#;
    let easy = r#"{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}"#;
    let tier = |body: &str| -> String {
        let v: Value = serde_json::from_str(&curl(&["-H", &auth, "-d", body, &url])).unwrap();
        v["route"]["tier"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(tier(hard), "strong");
    assert_eq!(tier(easy), "fast");
    drop(s);

    // Weights fitted on the items (forced: there are fewer than 40), written as a calibration
    // file that `serve --calibration` and `route score --calibration` start from.
    let routing = dir.path().join("routing.json");
    let out = Command::new(BIN)
        .args([
            "route",
            "calibrate",
            "--strong-share",
            "0.4",
            "--weights",
            "fit",
            "--dry-run",
        ])
        .arg("--results")
        .arg(&results)
        .arg("--out")
        .arg(&routing)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("weights (fitted)"),
        "{stdout}"
    );
    let rc: Value = serde_json::from_str(&std::fs::read_to_string(&routing).unwrap()).unwrap();
    assert_eq!(
        (rc["kind"].as_str(), rc["fitted"].as_bool()),
        (Some("routing"), Some(true))
    );
    assert!(rc["weights"]["math"].as_f64().unwrap() > 0.0, "{rc}");
    let th = rc["calibration"]["threshold"].as_f64().unwrap();
    let score = Command::new(BIN)
        .args([
            "route",
            "score",
            "--prompt",
            "Solve 3x + 7 = 22 step by step and prove it.",
        ])
        .arg("--calibration")
        .arg(&routing)
        .output()
        .unwrap();
    let sv: Value = serde_json::from_slice(&score.stdout).unwrap();
    assert_eq!(sv["tier"], "strong", "{sv}");
    assert!(
        (sv["threshold"].as_f64().unwrap() - th).abs() < 1e-6,
        "{sv}"
    );

    let s = Server::start(&["--calibration", routing.to_str().unwrap()]);
    let url = format!("http://{}/v1/chat/completions", s.base);
    let route = |body: &str| -> Value {
        let v: Value = serde_json::from_str(&curl(&["-H", &auth, "-d", body, &url])).unwrap();
        v["route"].clone()
    };
    let r = route(hard);
    assert_eq!(r["tier"], "strong", "{r}");
    assert!((r["score"].as_f64().unwrap() - sv["score"]["total"].as_f64().unwrap()).abs() < 1e-6);
    assert_eq!(route(easy)["tier"], "fast");
}

#[test]
fn serve_refuses_non_loopback_addresses_without_the_flag() {
    let start = Instant::now();
    let out = Command::new(BIN)
        .args([
            "serve",
            "--model",
            "fast=/nonexistent",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-non-loopback"), "{err}");
    // Refused before any model is loaded.
    assert!(start.elapsed() < Duration::from_secs(10));
    let out = Command::new(BIN)
        .args(["serve", "--model", "medium=x"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("`fast` or `strong`"));
}

fn sigint(child: &Child) {
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Waits for the process to end, up to `limit`; its exit status, or None if it is still running.
fn wait_for(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A request whose body never finishes: the server waits for it (until the body timeout).
fn stalled_request(base: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(base).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {base}\r\nauthorization: Bearer {KEY}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"messages\""
    )
    .unwrap();
    s
}

fn read_all(s: &mut std::net::TcpStream, limit: Duration) -> String {
    use std::io::Read;
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Ctrl-C drains for at most the grace period; a second Ctrl-C stops at once with 130.
#[test]
fn shutdown_is_bounded_by_the_grace_period_and_a_second_ctrl_c() {
    let mut srv = Server::start(&["--shutdown-grace", "1"]);
    let _held = stalled_request(&srv.base);
    std::thread::sleep(Duration::from_millis(300));
    sigint(&srv.child);
    let st = wait_for(&mut srv.child, Duration::from_secs(20))
        .expect("the server outlived its grace period");
    assert_eq!(st.code(), Some(0));

    let mut srv = Server::start(&["--shutdown-grace", "600"]);
    let _held = stalled_request(&srv.base);
    std::thread::sleep(Duration::from_millis(300));
    sigint(&srv.child);
    assert!(
        wait_for(&mut srv.child, Duration::from_millis(700)).is_none(),
        "a connection in flight is waited for"
    );
    sigint(&srv.child);
    let st = wait_for(&mut srv.child, Duration::from_secs(10)).expect("a second Ctrl-C ignored");
    assert_eq!(st.code(), Some(130));
}

/// Slow clients are cut off: headers within header_timeout_s, the body within body_timeout_s
/// (408); past max_connections a new connection gets a 503 and is closed.
#[test]
fn slow_clients_time_out_and_connections_are_capped() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("serve.toml");
    std::fs::write(&cfg, "header_timeout_s = 1\nbody_timeout_s = 1\n").unwrap();
    let srv = Server::start(&["--config", cfg.to_str().unwrap(), "--max-connections", "3"]);

    let mut body = stalled_request(&srv.base);
    let reply = read_all(&mut body, Duration::from_secs(20));
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("body_timeout_s"), "{reply}");

    let mut head = std::net::TcpStream::connect(&srv.base).unwrap();
    head.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    let t = Instant::now();
    let _ = read_all(&mut head, Duration::from_secs(20));
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "half-sent headers kept the connection open"
    );

    let idle: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(&srv.base).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = std::net::TcpStream::connect(&srv.base).unwrap();
    let reply = read_all(&mut extra, Duration::from_secs(10));
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains("too_many_connections"), "{reply}");
    drop(idle);
    // Closed connections give their slots back.
    std::thread::sleep(Duration::from_millis(300));
    let ok = curl(&[&format!("http://{}/health", srv.base)]);
    let ok: Value = serde_json::from_str(&ok).unwrap();
    assert_eq!(ok["status"], "ok", "{ok}");
}
