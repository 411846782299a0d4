//! Shared pieces of the serve tests: tiny synthetic models written once per test binary, an
//! app around them, scripted backends, and request helpers that go through the axum app
//! in-process (`tower::ServiceExt::oneshot`, no socket).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use bakeoff_engine::generate::LoadedModel;
use bakeoff_engine::loader::{LoadOptions, load};
use bakeoff_serve::backend::{EventRx, GenRequest, StreamEvent, Upstream};
use bakeoff_serve::engine::{EngineOptions, LocalModel};
use bakeoff_serve::metrics::Metrics;
use bakeoff_serve::router::{Replica, Router, RouterConfig, Tier};
use bakeoff_serve::{ApiError, AppState, HttpSettings};
use bakeoff_synth::{SynthOptions, synth};
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tower::ServiceExt;

/// A tiny random-weight model (`tiny-llama` or `tiny-qwen2`) as a Hugging Face folder.
pub fn tiny_path(preset: &str) -> PathBuf {
    synth_tiny(preset, None)
}

/// As [`tiny_path`] with the real vocabulary of `../shared/vocab/<vocab>` (prompts of a few
/// hundred characters fit the 512-token context); None when that file is not there.
pub fn tiny_real_vocab_path(preset: &str, vocab: &str) -> Option<PathBuf> {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/vocab")
        .join(vocab);
    if !file.is_file() {
        eprintln!("skipped: {} is missing", file.display());
        return None;
    }
    Some(synth_tiny(preset, Some(file)))
}

/// Synthesized once per test process and vocabulary.
fn synth_tiny(preset: &str, vocab: Option<PathBuf>) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let out = dir.path().join(match &vocab {
        Some(_) => format!("{preset}-real-vocab"),
        None => preset.to_string(),
    });
    let _g = LOCK.lock().unwrap();
    if !out.join("config.json").exists() {
        let opts = SynthOptions {
            preset: preset.parse().unwrap(),
            out: out.clone(),
            format: "hf".parse().unwrap(),
            quant: "f32".parse().unwrap(),
            vocab,
            seed: 0,
        };
        synth(&opts, false).unwrap();
    }
    out
}

/// fast = tiny-llama, strong = tiny-qwen2, with their real vocabularies (see
/// [`tiny_real_vocab_path`]).
pub fn two_tier_real_vocab(cfg: RouterConfig) -> Option<(axum::Router, AppState)> {
    let m = Arc::new(Metrics::new());
    let load_opts = LoadOptions {
        threads: Some(1),
        ..Default::default()
    };
    let mut reps: Vec<(Tier, Arc<dyn Upstream>)> = Vec::new();
    for (tier, id, preset, vocab) in [
        (
            Tier::Fast,
            "tiny-llama",
            "tiny-llama",
            "ggml-vocab-llama-spm.gguf",
        ),
        (
            Tier::Strong,
            "tiny-qwen2",
            "tiny-qwen2",
            "ggml-vocab-qwen2.gguf",
        ),
    ] {
        let path = tiny_real_vocab_path(preset, vocab)?;
        let lm = load(path.to_str().unwrap(), None, &load_opts).unwrap();
        let local = LocalModel::spawn(id, lm, EngineOptions::default(), m.clone()).unwrap();
        reps.push((tier, Arc::new(local)));
    }
    Some(app_with(reps, cfg, HttpSettings::default(), m))
}

pub fn tiny(preset: &str) -> LoadedModel {
    let opts = LoadOptions {
        threads: Some(1),
        ..Default::default()
    };
    load(tiny_path(preset).to_str().unwrap(), None, &opts).unwrap()
}

pub fn local(
    id: &str,
    preset: &str,
    opts: EngineOptions,
    metrics: &Arc<Metrics>,
) -> Arc<LocalModel> {
    Arc::new(LocalModel::spawn(id, tiny(preset), opts, metrics.clone()).unwrap())
}

pub fn app_with(
    replicas: Vec<(Tier, Arc<dyn Upstream>)>,
    cfg: RouterConfig,
    http: HttpSettings,
    metrics: Arc<Metrics>,
) -> (axum::Router, AppState) {
    let reps = replicas
        .into_iter()
        .map(|(t, b)| Replica::new(t, b))
        .collect();
    let router = Router::new(reps, cfg, metrics.clone()).unwrap();
    let state = AppState::new(Arc::new(router), metrics, http);
    (bakeoff_serve::app(state.clone()), state)
}

/// fast = tiny-llama, strong = tiny-qwen2, both local.
pub fn two_tier(cfg: RouterConfig, opts: EngineOptions) -> (axum::Router, AppState) {
    let m = Arc::new(Metrics::new());
    let fast = local("tiny-llama", "tiny-llama", opts.clone(), &m);
    let strong = local("tiny-qwen2", "tiny-qwen2", opts, &m);
    app_with(
        vec![(Tier::Fast, fast), (Tier::Strong, strong)],
        cfg,
        HttpSettings::default(),
        m,
    )
}

pub fn post(uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(uri)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    pub fn route(&self) -> String {
        self.headers
            .get("x-bakeoff-route")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
    /// The `data:` payloads of an SSE body.
    pub fn events(&self) -> Vec<String> {
        self.text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
    /// Concatenated content of a chat SSE stream.
    pub fn streamed_content(&self) -> String {
        self.events()
            .iter()
            .filter(|e| *e != "[DONE]")
            .filter_map(|e| {
                let v: Value = serde_json::from_str(e).unwrap();
                v.pointer("/choices/0/delta/content")
                    .or(v.pointer("/choices/0/text"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect()
    }
}

pub async fn send(app: &axum::Router, req: Request<Body>) -> Reply {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

pub async fn metric(app: &axum::Router, line_prefix: &str) -> f64 {
    let m = send(app, get("/metrics")).await.text;
    m.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Polls until `f` holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A backend whose behaviour the test writes: fails to start, fails before the first token,
/// hangs, or streams given events.
pub enum Script {
    StartError(ApiError),
    Events(Vec<StreamEvent>),
    Hang,
}

pub struct Scripted {
    pub id: String,
    pub script: Script,
    pub calls: AtomicUsize,
    pub healthy: bool,
}

impl Scripted {
    pub fn new(id: &str, script: Script) -> Arc<Self> {
        Arc::new(Scripted {
            id: id.into(),
            script,
            calls: AtomicUsize::new(0),
            healthy: true,
        })
    }
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Upstream for Scripted {
    fn model_id(&self) -> &str {
        &self.id
    }
    fn kind(&self) -> &'static str {
        "remote"
    }
    fn context_len(&self) -> Option<usize> {
        None
    }
    fn start(&self, _req: GenRequest) -> BoxFuture<'_, Result<EventRx, ApiError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let (tx, rx) = mpsc::unbounded_channel();
            match &self.script {
                Script::StartError(e) => return Err(e.clone()),
                Script::Events(evs) => {
                    for e in evs {
                        tx.send(e.clone()).unwrap();
                    }
                }
                Script::Hang => {
                    // Keep the sender alive so the stream neither ends nor yields.
                    tokio::spawn(async move {
                        tx.closed().await;
                    });
                }
            }
            Ok(rx)
        })
    }
    fn health(&self, _t: Duration) -> BoxFuture<'_, bool> {
        let h = self.healthy;
        Box::pin(async move { h })
    }
}

pub fn chat_body(model: &str, content: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!(
        r#"{{"model": "{model}", "messages": [{{"role": "user", "content": {}}}], "temperature": 0{extra}}}"#,
        serde_json::to_string(content).unwrap()
    )
}
