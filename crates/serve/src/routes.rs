//! The axum application: endpoints, authentication, body limit, request counting, and the
//! conversion of event streams into OpenAI JSON bodies and server-sent events.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::backend::{
    DoneOut, EventRx, GenRequest, PromptOut, StreamEvent, TokenOut, ToolCallOut, TopLogprob,
};
use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;
use crate::openai::{
    ApiUsage, ChatCompletionRequest, ChatLogprob, CompletionLogprobs, CompletionRequest, Shape,
    new_id, parse_chat, parse_completion, unix_now,
};
use crate::router::{Lease, RouteInfo, Router, Served};

/// HTTP-level settings.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// Bearer key required on `/v1/*`, `/tokenize` and `/detokenize` when set.
    pub api_key: Option<String>,
    pub max_body_bytes: usize,
    /// The whole request, from arrival to the last token.
    pub request_timeout: Duration,
    /// Receiving a request's whole body, from its headers on (a client trickling it in ties up
    /// a connection and the memory of its buffer).
    pub body_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            api_key: None,
            max_body_bytes: 1 << 20,
            request_timeout: Duration::from_secs(600),
            body_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    pub settings: Arc<HttpSettings>,
    /// Unix time the server started (the `created` of `/v1/models`).
    pub started: u64,
}

impl AppState {
    pub fn new(router: Arc<Router>, metrics: Arc<Metrics>, settings: HttpSettings) -> Self {
        AppState {
            router,
            metrics,
            settings: Arc::new(settings),
            started: unix_now(),
        }
    }
}

pub const ROUTE_HEADER: &str = "x-bakeoff-route";

/// The application, ready for `axum::serve` or for `tower::ServiceExt::oneshot` in tests.
pub fn app(state: AppState) -> axum::Router {
    let v1 = axum::Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/tokenizer_info", get(tokenizer_info))
        .route_layer(middleware::from_fn_with_state(state.clone(), body_deadline))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    axum::Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        ErrorKind::NotFound,
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> Response {
    let e = ApiError::invalid(format!(
        "{} is not allowed on {}",
        req.method(),
        req.uri().path()
    ));
    let mut r = e.into_response();
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r
}

/// Counts every response by endpoint and status, and error responses by kind.
async fn count_requests(State(st): State<AppState>, req: Request, next: Next) -> Response {
    // Matched route templates only, so unknown paths cannot blow up the label set.
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |p| p.as_str())
        .to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    st.metrics.inc(
        "bakeoff_requests_total",
        &[("endpoint", &endpoint), ("status", status.as_str())],
    );
    if let Some(kind) = resp.extensions().get::<ErrorKind>() {
        st.metrics
            .inc("bakeoff_errors_total", &[("kind", kind.label())]);
    } else if status == StatusCode::PAYLOAD_TOO_LARGE {
        st.metrics.inc(
            "bakeoff_errors_total",
            &[("kind", ErrorKind::PayloadTooLarge.label())],
        );
    }
    resp
}

/// Bearer-key check. Both sides are hashed first so the comparison takes the same time
/// whatever the key's length and wherever it differs.
async fn require_key(
    State(st): State<AppState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    if let Some(key) = &st.settings.api_key {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let ok = given.is_some_and(|g| {
            let a = Sha256::digest(g.as_bytes());
            let b = Sha256::digest(key.as_bytes());
            bool::from(a.as_slice().ct_eq(b.as_slice()))
        });
        if !ok {
            let msg = if given.is_none() {
                "missing API key: send `Authorization: Bearer <key>`"
            } else {
                "invalid API key"
            };
            return ApiError::unauthorized(msg).into_response();
        }
    }
    next.run(req).await
}

/// Reads the whole body within `body_timeout` (and `max_body_bytes`) before the handler runs, so
/// a client sending it slowly is cut off with a 408 instead of holding the connection open.
async fn body_deadline(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let limit = st.settings.max_body_bytes;
    let read =
        tokio::time::timeout(st.settings.body_timeout, axum::body::to_bytes(body, limit)).await;
    match read {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if over {
                ApiError::new(
                    ErrorKind::PayloadTooLarge,
                    format!("the request body is over the limit of {limit} bytes"),
                )
            } else {
                ApiError::invalid(format!("cannot read the request body: {e}"))
            }
            .into_response()
        }
        Err(_) => ApiError::new(
            ErrorKind::RequestTimeout,
            format!(
                "the request body did not arrive within {} s (body_timeout_s)",
                st.settings.body_timeout.as_secs_f32()
            ),
        )
        .into_response(),
    }
}

fn body_bytes(st: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "the request body is over the limit of {} bytes",
                    st.settings.max_body_bytes
                ),
            )
        } else {
            ApiError::invalid(format!("cannot read the request body: {r}"))
        }
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completions,
}

async fn chat_completions(
    State(st): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let parsed = body_bytes(&st, body)
        .and_then(|b| parse_chat(&b))
        .and_then(ChatCompletionRequest::validate);
    match parsed {
        Ok((req, shape)) => respond(st, req, shape, Endpoint::Chat).await,
        Err(e) => e.into_response(),
    }
}

async fn completions(State(st): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let parsed = body_bytes(&st, body)
        .and_then(|b| parse_completion(&b))
        .and_then(CompletionRequest::validate);
    match parsed {
        Ok((req, shape)) => respond(st, req, shape, Endpoint::Completions).await,
        Err(e) => e.into_response(),
    }
}

async fn respond(st: AppState, req: GenRequest, shape: Shape, ep: Endpoint) -> Response {
    let arrived = Instant::now();
    let deadline = arrived + st.settings.request_timeout;
    let too_late = || {
        ApiError::timeout(format!(
            "no model started answering within the request timeout of {} s",
            st.settings.request_timeout.as_secs_f32()
        ))
        .into_response()
    };
    // The request again for the other choices and prompts, only when there are any.
    let total = shape.n * (1 + shape.prompts.len());
    let extra = (total > 1).then(|| req.clone());
    let served = match tokio::time::timeout_at(deadline.into(), st.router.dispatch(req)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return e.into_response(),
        Err(_) => return too_late(),
    };
    let Served {
        route,
        first,
        rx,
        lease,
    } = served;
    let mut choices = vec![(first, rx)];
    let mut leases = vec![lease];
    if let Some(extra) = extra {
        // The other choices go to the model the router chose for the first, each with a seed
        // of its own; they find their prompt's computation in its KV cache and copy it. The
        // other prompts of a completions request (lm-evaluation-harness's batches) go there too:
        // one model scores the whole batch.
        let starts = (1..total).map(|k| {
            let (prompt, choice) = (k / shape.n, k % shape.n);
            let mut r = extra.clone();
            if let Some(input) = prompt.checked_sub(1).and_then(|p| shape.prompts.get(p)) {
                r.input = input.clone();
            }
            r.model = route.model.clone();
            r.sampling.seed = r.sampling.seed.wrapping_add(choice as u64);
            st.router.dispatch(r)
        });
        let started =
            tokio::time::timeout_at(deadline.into(), futures_util::future::join_all(starts)).await;
        let Ok(started) = started else {
            return too_late();
        };
        for s in started {
            match s {
                Ok(s) => {
                    choices.push((s.first, s.rx));
                    leases.push(s.lease);
                }
                Err(e) => return e.into_response(),
            }
        }
    }
    let tracker = Tracker::new(st.metrics.clone(), route.model.clone(), arrived);
    let out = Output {
        id: new_id(if ep == Endpoint::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        }),
        created: unix_now(),
        ep,
        shape,
        route,
    };
    let header = HeaderValue::from_str(&out.route.header()).ok();
    let mut resp = if out.shape.stream {
        stream_response(out, choices, leases, tracker, deadline)
    } else {
        json_response(out, choices, leases, tracker, deadline).await
    };
    if let Some(h) = header {
        resp.headers_mut().insert(ROUTE_HEADER, h);
    }
    resp
}

/// Metrics of one response as its events pass: time to first token, inter-token latency,
/// tokens, duration, and a disconnect when it is dropped before the end.
struct Tracker {
    metrics: Arc<Metrics>,
    model: String,
    arrived: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
    finished: bool,
}

impl Tracker {
    fn new(metrics: Arc<Metrics>, model: String, arrived: Instant) -> Self {
        Tracker {
            metrics,
            model,
            arrived,
            first: None,
            last: None,
            finished: false,
        }
    }

    fn token(&mut self, t: &TokenOut) {
        if t.tail {
            return;
        }
        let now = Instant::now();
        let l = [("model", self.model.as_str())];
        match self.last {
            None => {
                self.first = Some(now);
                self.metrics.observe(
                    "bakeoff_time_to_first_token_seconds",
                    &l,
                    (now - self.arrived).as_secs_f64(),
                );
            }
            Some(prev) => self.metrics.observe(
                "bakeoff_inter_token_latency_seconds",
                &l,
                (now - prev).as_secs_f64(),
            ),
        }
        self.last = Some(now);
    }

    fn done(&mut self, d: &DoneOut) {
        self.finished = true;
        let l = [("model", self.model.as_str())];
        self.metrics.add(
            "bakeoff_prompt_tokens_total",
            &l,
            d.usage.prompt_tokens as f64,
        );
        self.metrics.add(
            "bakeoff_generated_tokens_total",
            &l,
            d.usage.completion_tokens as f64,
        );
        self.metrics.observe(
            "bakeoff_request_duration_seconds",
            &l,
            self.arrived.elapsed().as_secs_f64(),
        );
    }

    /// An error ends the response too; it is counted as an error, not a disconnect.
    fn failed(&mut self, kind: ErrorKind) {
        self.finished = true;
        self.metrics
            .inc("bakeoff_errors_total", &[("kind", kind.label())]);
    }

    fn timings(&self, d: &DoneOut) -> Value {
        let ms = |t: Option<Instant>| t.map(|t| (t - self.arrived).as_secs_f64() * 1e3);
        let mut v = json!({
            "ttft_ms": ms(self.first),
            "total_ms": self.arrived.elapsed().as_secs_f64() * 1e3,
        });
        if let Some(e) = &d.timings {
            v["queue_ms"] = json!(e.queue_ms);
            v["prefill_ms"] = json!(e.prefill_ms);
            v["decode_tok_s"] = json!(e.decode_tok_s);
        }
        v
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if !self.finished {
            self.metrics.inc(
                "bakeoff_client_disconnects_total",
                &[("model", self.model.as_str())],
            );
        }
    }
}

struct Output {
    id: String,
    created: u64,
    ep: Endpoint,
    shape: Shape,
    route: RouteInfo,
}

impl Output {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.ep, chunk) {
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Completions, _) => "text_completion",
        }
    }

    fn envelope(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.route.model,
            "system_fingerprint": concat!("bakeoff-", env!("CARGO_PKG_VERSION")),
            "choices": choices,
        })
    }

    /// The chunk for one token (None when it carries nothing to send).
    fn token_chunk(&self, i: usize, t: &TokenOut, text_offset: usize) -> Option<Value> {
        let lp = if self.shape.logprobs { t.logprob } else { None };
        if t.text.is_empty() && lp.is_none() {
            return None;
        }
        let choice = match self.ep {
            Endpoint::Chat => {
                let logprobs = match (lp, &t.token) {
                    (Some(l), Some(tok)) => {
                        json!({ "content": [ChatLogprob::new(tok, l, &t.top)] })
                    }
                    _ => Value::Null,
                };
                json!({ "index": i, "delta": { "content": t.text }, "logprobs": logprobs, "finish_reason": null })
            }
            Endpoint::Completions => {
                let logprobs = match (lp, &t.token) {
                    (Some(l), Some(tok)) => {
                        let mut c = CompletionLogprobs::default();
                        push_completion_logprob(&mut c, tok, l, t, text_offset);
                        json!(c)
                    }
                    _ => Value::Null,
                };
                json!({ "index": i, "text": t.text, "logprobs": logprobs, "finish_reason": null })
            }
        };
        Some(self.envelope(true, json!([choice])))
    }

    fn finish_chunk(&self, i: usize, d: &DoneOut, calls: bool, timings: Value) -> Value {
        let choice = match self.ep {
            Endpoint::Chat => {
                json!({ "index": i, "delta": {}, "logprobs": null, "finish_reason": finish_reason(d, calls) })
            }
            Endpoint::Completions => {
                json!({ "index": i, "text": "", "logprobs": null, "finish_reason": d.finish_reason.openai() })
            }
        };
        let mut v = self.envelope(true, json!([choice]));
        v["route"] = json!(self.route);
        v["timings"] = timings;
        v
    }
}

fn push_completion_logprob(
    c: &mut CompletionLogprobs,
    tok: &str,
    l: f32,
    t: &TokenOut,
    text_offset: usize,
) {
    c.tokens.push(tok.to_string());
    c.token_logprobs.push(Some(l));
    c.text_offset.push(text_offset);
    c.top_logprobs.push(Some(top_map(&t.top)));
}

fn top_map(top: &[TopLogprob]) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    for x in top {
        m.insert(x.token.clone(), json!(x.logprob));
    }
    m
}

/// An echoed prompt's tokens in the completions `logprobs` object: the first has `null`
/// log-probabilities, as OpenAI's did.
fn push_prompt_logprobs(c: &mut CompletionLogprobs, p: &PromptOut) {
    for t in &p.tokens {
        c.tokens.push(t.token.clone());
        c.token_logprobs.push(t.logprob);
        c.text_offset.push(t.text_offset);
        c.top_logprobs.push(t.logprob.map(|_| top_map(&t.top)));
    }
}

/// One choice's events, then `None` when its stream ends.
type ChoiceEvents = futures_util::stream::BoxStream<'static, (usize, Option<StreamEvent>)>;

/// The events of every choice, merged as they come, each tagged with its choice's index; the
/// first event of each (in hand already) comes first.
fn merged(choices: Vec<(StreamEvent, EventRx)>) -> futures_util::stream::SelectAll<ChoiceEvents> {
    use futures_util::StreamExt;
    let streams =
        choices.into_iter().enumerate().map(|(i, (first, rx))| {
            let rest = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|e| (e, rx))
            });
            futures_util::stream::once(async move { first })
                .chain(rest)
                .map(Some)
                .chain(futures_util::stream::once(async { None }))
                .map(move |e| (i, e))
                .boxed()
        });
    futures_util::stream::select_all(streams)
}

/// The usage and timings of an answer of several choices: each prompt counted once (as OpenAI
/// does; choices `k·n` start a prompt's), the completions summed; timings are the first
/// choice's.
fn combined(dones: &[Option<DoneOut>], n: usize) -> Option<DoneOut> {
    let first = dones.first()?.clone()?;
    let mut d = first;
    d.usage.prompt_tokens = dones
        .iter()
        .step_by(n.max(1))
        .flatten()
        .map(|x| x.usage.prompt_tokens)
        .sum();
    d.usage.cached_tokens = dones
        .iter()
        .step_by(n.max(1))
        .flatten()
        .map(|x| x.usage.cached_tokens)
        .sum();
    d.usage.completion_tokens = dones
        .iter()
        .flatten()
        .map(|x| x.usage.completion_tokens)
        .sum();
    Some(d)
}

/// One choice being collected into a JSON body.
#[derive(Default)]
struct Collected {
    text: String,
    chat_lps: Vec<ChatLogprob>,
    comp_lps: CompletionLogprobs,
    tool_calls: Vec<ToolCallOut>,
}

/// OpenAI's `finish_reason`: an answer that ended by itself after calling tools ended for
/// `tool_calls`.
fn finish_reason(d: &DoneOut, calls: bool) -> &'static str {
    match d.finish_reason.openai() {
        "stop" if calls => "tool_calls",
        other => other,
    }
}

/// A call in a response: `{"id", "type": "function", "function": {"name", "arguments"}}`, and
/// in a stream chunk also its `index` among the choice's calls.
fn tool_call_json(c: &ToolCallOut, index: Option<usize>) -> Value {
    let mut v = json!({
        "id": c.id,
        "type": "function",
        "function": { "name": c.name, "arguments": c.arguments },
    });
    if let Some(k) = index {
        v["index"] = json!(k);
    }
    v
}

/// Collects the whole answer into one JSON body.
async fn json_response(
    out: Output,
    choices: Vec<(StreamEvent, EventRx)>,
    leases: Vec<Option<Lease>>,
    mut tr: Tracker,
    deadline: Instant,
) -> Response {
    use futures_util::StreamExt;
    let n = choices.len();
    let mut acc: Vec<Collected> = (0..n).map(|_| Collected::default()).collect();
    let mut dones: Vec<Option<DoneOut>> = vec![None; n];
    let mut events = merged(choices);
    while dones.iter().any(Option::is_none) {
        let (i, ev) = match tokio::time::timeout_at(deadline.into(), events.next()).await {
            Ok(Some(x)) => x,
            Ok(None) => break,
            Err(_) => {
                tr.failed(ErrorKind::Timeout);
                // Dropping the receivers (on return) stops the generations.
                return ApiError::timeout("the answer did not finish within the request timeout")
                    .into_response();
            }
        };
        let c = &mut acc[i];
        match ev {
            Some(StreamEvent::Prompt(p)) if out.shape.echo => {
                if out.shape.logprobs {
                    push_prompt_logprobs(&mut c.comp_lps, &p);
                }
                c.text.push_str(&p.text);
            }
            Some(StreamEvent::Prompt(_)) => {}
            Some(StreamEvent::Token(t)) => {
                tr.token(&t);
                if let (true, Some(l), Some(tok)) = (out.shape.logprobs, t.logprob, &t.token) {
                    match out.ep {
                        Endpoint::Chat => c.chat_lps.push(ChatLogprob::new(tok, l, &t.top)),
                        Endpoint::Completions => {
                            push_completion_logprob(&mut c.comp_lps, tok, l, &t, c.text.len())
                        }
                    }
                }
                c.text.push_str(&t.text);
            }
            Some(StreamEvent::ToolCall(call)) => c.tool_calls.push(call),
            Some(StreamEvent::Done(d)) => dones[i] = Some(d),
            Some(StreamEvent::Error(e)) => {
                tr.failed(e.kind);
                if let Some(l) = leases.get(i).and_then(Option::as_ref) {
                    l.failed(e.kind);
                }
                return e.into_response();
            }
            None if dones[i].is_none() => {
                let e = ApiError::internal("the model stopped without finishing the answer");
                tr.failed(e.kind);
                return e.into_response();
            }
            None => {}
        }
    }
    let Some(done) = combined(&dones, out.shape.n) else {
        let e = ApiError::internal("the model stopped without finishing the answer");
        tr.failed(e.kind);
        return e.into_response();
    };
    tr.done(&done);
    let choices: Vec<Value> = acc
        .into_iter()
        .zip(&dones)
        .enumerate()
        .map(|(i, (c, d))| {
            let calls = !c.tool_calls.is_empty();
            let reason = d.as_ref().map(|d| finish_reason(d, calls));
            let mut message = json!({ "role": "assistant", "content": c.text });
            if calls {
                if c.text.is_empty() {
                    message["content"] = Value::Null;
                }
                message["tool_calls"] =
                    c.tool_calls.iter().map(|t| tool_call_json(t, None)).collect();
            }
            match out.ep {
                Endpoint::Chat => json!({
                    "index": i,
                    "message": message,
                    "logprobs": if out.shape.logprobs { json!({ "content": c.chat_lps }) } else { Value::Null },
                    "finish_reason": reason,
                }),
                Endpoint::Completions => json!({
                    "index": i,
                    "text": c.text,
                    "logprobs": if out.shape.logprobs { json!(c.comp_lps) } else { Value::Null },
                    "finish_reason": reason,
                }),
            }
        })
        .collect();
    let mut body = out.envelope(false, json!(choices));
    body["usage"] = json!(ApiUsage::from_done(&done));
    body["route"] = json!(out.route);
    body["timings"] = tr.timings(&done);
    drop(leases);
    (StatusCode::OK, axum::Json(body)).into_response()
}

struct StreamState {
    out: Output,
    events: futures_util::stream::SelectAll<ChoiceEvents>,
    leases: Vec<Option<Lease>>,
    tracker: Tracker,
    deadline: Instant,
    pending: VecDeque<SseEvent>,
    finished: bool,
    /// Text sent so far, per choice (completions' `text_offset`).
    text_len: Vec<usize>,
    /// Tool calls sent so far, per choice.
    calls: Vec<usize>,
    dones: Vec<Option<DoneOut>>,
}

fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

/// Streams the answer as server-sent events: a role chunk per choice (chat), one chunk per
/// token (its `index` naming the choice), a finish chunk per choice with the route and timings, a
/// usage chunk when asked for, then `[DONE]`. Dropping the body (the client disconnected) drops
/// the receivers, which stops the generations.
fn stream_response(
    out: Output,
    choices: Vec<(StreamEvent, EventRx)>,
    leases: Vec<Option<Lease>>,
    tracker: Tracker,
    deadline: Instant,
) -> Response {
    use futures_util::StreamExt;
    let n = choices.len();
    let mut pending = VecDeque::new();
    if out.ep == Endpoint::Chat {
        for i in 0..n {
            let mut v = out.envelope(
                true,
                json!([{ "index": i, "delta": { "role": "assistant", "content": "" }, "logprobs": null, "finish_reason": null }]),
            );
            v["route"] = json!(out.route);
            pending.push_back(data(&v));
        }
    }
    let state = StreamState {
        out,
        events: merged(choices),
        leases,
        tracker,
        deadline,
        pending,
        finished: false,
        text_len: vec![0; n],
        calls: vec![0; n],
        dones: vec![None; n],
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(ev) = s.pending.pop_front() {
                return Some((Ok::<_, Infallible>(ev), s));
            }
            if s.finished {
                return None;
            }
            let next = tokio::time::timeout_at(s.deadline.into(), s.events.next()).await;
            match next {
                Ok(Some((i, ev))) => s.step(i, ev),
                Ok(None) => s.fail(ApiError::internal(
                    "the model stopped without finishing the answer",
                )),
                Err(_) => s.fail(ApiError::timeout(
                    "the answer did not finish within the request timeout",
                )),
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

impl StreamState {
    fn step(&mut self, i: usize, ev: Option<StreamEvent>) {
        match ev {
            Some(StreamEvent::Prompt(p)) if self.out.shape.echo => {
                let lps = if self.out.shape.logprobs {
                    let mut c = CompletionLogprobs::default();
                    push_prompt_logprobs(&mut c, &p);
                    json!(c)
                } else {
                    Value::Null
                };
                let choice =
                    json!({ "index": i, "text": p.text, "logprobs": lps, "finish_reason": null });
                self.pending
                    .push_back(data(&self.out.envelope(true, json!([choice]))));
                self.text_len[i] += p.text.len();
            }
            Some(StreamEvent::Prompt(_)) => {}
            Some(StreamEvent::Token(t)) => {
                self.tracker.token(&t);
                if let Some(v) = self.out.token_chunk(i, &t, self.text_len[i]) {
                    self.pending.push_back(data(&v));
                }
                self.text_len[i] += t.text.len();
            }
            Some(StreamEvent::ToolCall(call)) => {
                let delta = json!({ "tool_calls": [tool_call_json(&call, Some(self.calls[i]))] });
                let choice =
                    json!({ "index": i, "delta": delta, "logprobs": null, "finish_reason": null });
                self.pending
                    .push_back(data(&self.out.envelope(true, json!([choice]))));
                self.calls[i] += 1;
            }
            Some(StreamEvent::Done(d)) => {
                let timings = self.tracker.timings(&d);
                let calls = self.calls[i] > 0;
                self.pending
                    .push_back(data(&self.out.finish_chunk(i, &d, calls, timings)));
                self.dones[i] = Some(d);
                if self.dones.iter().all(Option::is_some) {
                    if let Some(all) = combined(&self.dones, self.out.shape.n) {
                        self.tracker.done(&all);
                        if self.out.shape.include_usage {
                            let mut v = self.out.envelope(true, json!([]));
                            v["usage"] = json!(ApiUsage::from_done(&all));
                            self.pending.push_back(data(&v));
                        }
                    }
                    self.pending.push_back(SseEvent::default().data("[DONE]"));
                    self.finished = true;
                    self.leases.clear();
                }
            }
            Some(StreamEvent::Error(e)) => {
                if let Some(l) = self.leases.get(i).and_then(Option::as_ref) {
                    l.failed(e.kind);
                }
                self.fail(e)
            }
            None if self.dones[i].is_none() => self.fail(ApiError::internal(
                "the model stopped without finishing the answer",
            )),
            None => {}
        }
    }

    /// Headers are gone by now: the error travels as a data event, OpenAI's way.
    fn fail(&mut self, e: ApiError) {
        self.tracker.failed(e.kind);
        self.pending.push_back(data(&e.body()));
        self.finished = true;
        self.leases.clear();
    }
}

/// llama.cpp server's `/tokenize` body, with the model to tokenize with.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizeBody {
    #[serde(default)]
    model: Option<String>,
    /// llama.cpp names it `content`, vLLM `prompt`.
    #[serde(alias = "prompt")]
    content: String,
    #[serde(default, alias = "add_special_tokens")]
    add_special: bool,
    #[serde(default)]
    with_pieces: bool,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DetokenizeBody {
    #[serde(default)]
    model: Option<String>,
    tokens: Vec<u32>,
}

fn parse_body<T: serde::de::DeserializeOwned>(
    st: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body_bytes(st, body)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}")))
}

async fn tokenize(State(st): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let run = async {
        let b: TokenizeBody = parse_body(&st, body)?;
        let (model, prompter) = st.router.tokenizer_for(b.model.as_deref())?;
        // A megabyte of text takes a while to tokenize: off the async workers.
        let (ids, pieces) = tokio::task::spawn_blocking(move || {
            let ids = prompter.tokenizer().encode(&b.content, b.add_special)?;
            let pieces = b.with_pieces.then(|| {
                ids.iter()
                    .map(|&i| prompter.token_text(i))
                    .collect::<Vec<_>>()
            });
            Ok::<_, bakeoff_engine::Error>((ids, pieces))
        })
        .await
        .map_err(|e| ApiError::new(ErrorKind::Internal, format!("tokenizer task failed: {e}")))??;
        let tokens = match pieces {
            Some(p) => json!(
                ids.iter()
                    .zip(p)
                    .map(|(i, piece)| json!({"id": i, "piece": piece}))
                    .collect::<Vec<_>>()
            ),
            None => json!(ids),
        };
        // `count` as vLLM's /tokenize has it.
        Ok::<_, ApiError>(
            axum::Json(json!({"model": model, "tokens": tokens, "count": ids.len()}))
                .into_response(),
        )
    };
    run.await.unwrap_or_else(|e| e.into_response())
}

async fn detokenize(State(st): State<AppState>, body: Result<Bytes, BytesRejection>) -> Response {
    let run = async {
        let b: DetokenizeBody = parse_body(&st, body)?;
        let (model, prompter) = st.router.tokenizer_for(b.model.as_deref())?;
        let vocab = prompter.tokenizer().vocab_size();
        if let Some(bad) = b.tokens.iter().find(|&&i| i as usize >= vocab) {
            return Err(ApiError::invalid(format!(
                "token id {bad} is outside `{model}`'s vocabulary of {vocab} tokens"
            )));
        }
        let content = prompter.tokenizer().decode(&b.tokens, false)?;
        // llama.cpp's key and vLLM's.
        Ok(
            axum::Json(json!({"model": model, "content": content, "prompt": content}))
                .into_response(),
        )
    };
    run.await.unwrap_or_else(|e| e.into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizerInfoQuery {
    #[serde(default)]
    model: Option<String>,
}

/// vLLM's `GET /tokenizer_info`: the special tokens and chat template of a local model, which
/// lm-evaluation-harness's `tokenizer_backend=remote` reads (with /tokenize and /detokenize) so
/// that it needs no copy of the tokenizer.
async fn tokenizer_info(
    State(st): State<AppState>,
    q: Result<axum::extract::Query<TokenizerInfoQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let run = || {
        let q = q.map_err(|e| ApiError::invalid(format!("invalid query: {e}")))?;
        let (model, p) = st.router.tokenizer_for(q.model.as_deref())?;
        let t = p.tokenizer();
        let pad = t.pad_id().map(|id| p.token_text(id));
        Ok::<_, ApiError>(
            axum::Json(json!({
                "model": model,
                "tokenizer_class": "bakeoff",
                "vocab_size": t.vocab_size(),
                "bos_token": p.bos_token(),
                "eos_token": p.eos_token(),
                "pad_token": pad,
                "add_bos_token": p.add_bos(),
                "chat_template": p.template().map(|c| c.source()),
            }))
            .into_response(),
        )
    };
    run().unwrap_or_else(|e| e.into_response())
}

async fn models(State(st): State<AppState>) -> Response {
    let mut data = Vec::new();
    let r = &st.router;
    for name in r.names() {
        let rep = r.replicas().iter().find(|x| x.backend.model_id() == name);
        let mut m =
            json!({ "id": name, "object": "model", "created": st.started, "owned_by": "bakeoff" });
        match rep {
            Some(rep) => {
                m["tier"] = json!(rep.tier);
                m["kind"] = json!(rep.backend.kind());
                if let Some(c) = rep.backend.context_len() {
                    m["context_length"] = json!(c);
                }
            }
            None if name == "auto" => {
                m["route"] = json!(format!("policy `{}`", r.config().policy.as_str()))
            }
            None => m["route"] = json!(format!("tier `{name}`")),
        }
        data.push(m);
    }
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}

async fn health(State(st): State<AppState>) -> Response {
    let reps: Vec<_> = st.router.replicas().iter().map(|r| r.status()).collect();
    let up = st
        .router
        .replicas()
        .iter()
        .filter(|r| r.available())
        .count();
    let status = if up == reps.len() {
        "ok"
    } else if up > 0 {
        "degraded"
    } else {
        "down"
    };
    let code = if up > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({ "status": status, "policy": st.router.config().policy, "replicas": reps });
    (code, axum::Json(body)).into_response()
}

async fn metrics(State(st): State<AppState>) -> Response {
    for r in st.router.replicas() {
        if let Some(l) = r.backend.load() {
            let lab = [("model", r.backend.model_id())];
            st.metrics.set("bakeoff_queue_depth", &lab, l.queued as f64);
            st.metrics
                .set("bakeoff_active_sequences", &lab, l.active as f64);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        st.metrics.render(),
    )
        .into_response()
}
