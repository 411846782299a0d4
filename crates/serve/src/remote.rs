//! A remote OpenAI-compatible upstream (vLLM, llama-server, Ollama, another bakeoff) as a
//! replica. Requests are always streamed from the upstream, so the router sees the first token
//! (or the failure before it) exactly as it does for a local engine, and a client that goes away
//! closes the upstream connection too.

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::{OnceCell, mpsc};

use crate::backend::{
    DoneOut, EventRx, GenRequest, Input, StreamEvent, TokenOut, TopLogprob, Upstream,
};
use crate::error::{ApiError, ErrorKind};
use bakeoff_record::stream::{ChunkToken, ChunkUsage, SseData, StreamChunk, sse_data};
use bakeoff_record::{FinishReason, Usage};

pub struct RemoteModel {
    id: String,
    /// Base URL ending in `/v1`.
    base: String,
    /// The model name to send upstream; asked from `/models` when not configured.
    upstream_model: OnceCell<String>,
    api_key: Option<String>,
    /// `user:password@` taken out of the URL, sent as basic auth where no API key is set.
    basic: Option<BasicAuth>,
    context: Option<usize>,
    client: reqwest::Client,
}

impl RemoteModel {
    /// `url` is the upstream's base (`http://host:port` or `http://host:port/v1`).
    pub fn new(
        id: Option<String>,
        url: &str,
        upstream_model: Option<String>,
        api_key: Option<String>,
        context: Option<usize>,
        connect_timeout: Duration,
    ) -> Result<Self, ApiError> {
        if url.contains('?') || url.contains('#') {
            return Err(ApiError::invalid(format!(
                "upstream URL `{}` has a query or fragment, which the API paths cannot be appended to; give the key with api_key_env",
                redact_url(url)
            )));
        }
        let (clean, basic) = split_credentials(url)?;
        let trimmed = clean.trim_end_matches('/');
        if !(trimmed.starts_with("http://") || trimmed.starts_with("https://")) {
            return Err(ApiError::invalid(format!(
                "upstream URL `{}` must start with http:// or https://",
                redact_url(url)
            )));
        }
        let base = if trimmed.ends_with("/v1") {
            trimmed.to_string()
        } else {
            format!("{trimmed}/v1")
        };
        let id = id.unwrap_or_else(|| {
            trimmed
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .trim_end_matches("/v1")
                .to_string()
        });
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .build()
            .map_err(|e| ApiError::internal(format!("HTTP client: {e}")))?;
        let cell = OnceCell::new();
        if let Some(m) = upstream_model {
            let _ = cell.set(m);
        }
        Ok(RemoteModel {
            id,
            base,
            upstream_model: cell,
            api_key,
            basic,
            context,
            client,
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match (&self.api_key, &self.basic) {
            (Some(k), _) => rb.bearer_auth(k),
            (None, Some((user, pass))) => rb.basic_auth(user, pass.as_ref()),
            (None, None) => rb,
        }
    }

    async fn model_name(&self) -> Result<String, ApiError> {
        self.upstream_model
            .get_or_try_init(|| async {
                let resp = self
                    .auth(self.client.get(format!("{}/models", self.base)))
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .map_err(|e| unreachable(&self.id, e))?;
                let v: Value = resp.json().await.map_err(|e| {
                    ApiError::upstream(format!("`{}`: /models: {}", self.id, e.without_url()))
                })?;
                v.pointer("/data/0/id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| {
                        ApiError::upstream(format!(
                            "`{}`: /models lists no model; set `upstream_model` in the config",
                            self.id
                        ))
                    })
            })
            .await
            .cloned()
    }

    fn body(&self, req: &GenRequest, model: &str) -> (String, Value) {
        let mut b =
            json!({ "model": model, "stream": true, "stream_options": {"include_usage": true} });
        let path = match &req.input {
            Input::Chat(messages) => {
                b["messages"] = json!(messages);
                if let Some(k) = req.logprobs {
                    b["logprobs"] = json!(true);
                    if k > 0 {
                        b["top_logprobs"] = json!(k);
                    }
                }
                if let Some(f) = &req.response_format {
                    b["response_format"] = f.wire.clone();
                }
                "chat/completions"
            }
            Input::Text(p) => {
                b["prompt"] = json!(p);
                if let Some(k) = req.logprobs {
                    b["logprobs"] = json!(k);
                }
                "completions"
            }
            Input::Tokens(ids) => {
                b["prompt"] = json!(ids);
                if let Some(k) = req.logprobs {
                    b["logprobs"] = json!(k);
                }
                "completions"
            }
        };
        if let Some(m) = req.max_tokens {
            b["max_tokens"] = json!(m);
        }
        let s = &req.sampling;
        b["temperature"] = json!(s.temperature);
        b["top_p"] = json!(s.top_p);
        b["seed"] = json!(s.seed as i64);
        if !req.stop.is_empty() {
            b["stop"] = json!(req.stop);
        }
        // Extensions only when used: OpenAI itself refuses unknown parameters.
        if s.top_k > 0 {
            b["top_k"] = json!(s.top_k);
        }
        if s.min_p > 0.0 {
            b["min_p"] = json!(s.min_p);
        }
        if s.repetition_penalty != 1.0 {
            b["repetition_penalty"] = json!(s.repetition_penalty);
        }
        if req.ignore_eos {
            b["ignore_eos"] = json!(true);
        }
        (format!("{}/{path}", self.base), b)
    }

    async fn submit(&self, req: GenRequest) -> Result<EventRx, ApiError> {
        if req.echo {
            // Servers differ in whether and how they echo (llama.cpp's does not score the
            // prompt); relaying one's answer as bakeoff's would promise what it may not keep.
            return Err(ApiError::invalid_param(
                "echo",
                format!(
                    "`echo` is served by local models only; `{}` is a remote upstream",
                    self.id
                ),
            ));
        }
        let model = self.model_name().await?;
        let (url, body) = self.body(&req, &model);
        let resp = self
            .auth(self.client.post(&url).json(&body))
            .send()
            .await
            .map_err(|e| unreachable(&self.id, e))?;
        let status = resp.status();
        if !status.is_success() {
            let retry = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let text = resp.text().await.unwrap_or_default();
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| {
                    v.pointer("/error/message")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_else(|| text.chars().take(300).collect());
            let msg = format!("upstream `{}` answered {}: {msg}", self.id, status.as_u16());
            return Err(match status.as_u16() {
                429 => ApiError {
                    retry_after: Some(retry.unwrap_or(1)),
                    ..ApiError::new(ErrorKind::Overloaded, msg)
                },
                400 | 422 => ApiError::invalid(msg),
                _ => ApiError::upstream(msg),
            });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.id.clone();
        let chat = matches!(req.input, Input::Chat(_));
        tokio::spawn(async move {
            let mut stream = resp.bytes_stream();
            let mut reader = SseReader::new(chat);
            loop {
                tokio::select! {
                    // The client went away: dropping the response closes the upstream connection.
                    _ = tx.closed() => return,
                    chunk = stream.next() => match chunk {
                        Some(Ok(bytes)) => {
                            for ev in reader.feed(&bytes) {
                                let end = !matches!(ev, StreamEvent::Token(_));
                                if tx.send(ev).is_err() || end {
                                    return;
                                }
                            }
                        }
                        Some(Err(e)) => {
                            let _ = tx.send(StreamEvent::Error(ApiError::upstream(format!("upstream `{id}`: stream broke: {}", e.without_url()))));
                            return;
                        }
                        None => {
                            let _ = tx.send(reader.end(&id));
                            return;
                        }
                    }
                }
            }
        });
        Ok(rx)
    }
}

fn unreachable(id: &str, e: reqwest::Error) -> ApiError {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Unavailable
    };
    // reqwest names the URL in its messages; the URL may carry credentials, and clients see
    // these messages.
    let e = e.without_url();
    ApiError::new(kind, format!("upstream `{id}` is unreachable: {e}"))
}

pub use bakeoff_record::redact::redact_url;

/// User name and optional password.
type BasicAuth = (String, Option<String>);

/// Splits `http://user:pass@host/…` into the URL without credentials and the credentials.
fn split_credentials(url: &str) -> Result<(String, Option<BasicAuth>), ApiError> {
    let Ok(mut u) = reqwest::Url::parse(url) else {
        return Ok((url.to_string(), None));
    };
    if u.username().is_empty() && u.password().is_none() {
        return Ok((url.to_string(), None));
    }
    let creds = (u.username().to_string(), u.password().map(str::to_string));
    if u.set_username("").is_err() || u.set_password(None).is_err() {
        return Err(ApiError::invalid(format!(
            "upstream URL `{}`: cannot take the credentials out of it",
            redact_url(url)
        )));
    }
    Ok((u.to_string(), Some(creds)))
}

impl Upstream for RemoteModel {
    fn model_id(&self) -> &str {
        &self.id
    }
    fn kind(&self) -> &'static str {
        "remote"
    }
    fn context_len(&self) -> Option<usize> {
        self.context
    }
    fn start(&self, req: GenRequest) -> BoxFuture<'_, Result<EventRx, ApiError>> {
        if req.tools.is_some() {
            // The upstream's calls would need reading back from its own deltas; a client that
            // needs tools names a local model.
            let mut e = ApiError::new(
                ErrorKind::Unsupported,
                format!(
                    "`tools`: model `{}` is a remote upstream, which bakeoff does not pass tools to",
                    self.id
                ),
            );
            e.param = Some("tools".into());
            return Box::pin(std::future::ready(Err(e)));
        }
        Box::pin(self.submit(req))
    }
    fn health(&self, timeout: Duration) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let r = self
                .auth(self.client.get(format!("{}/models", self.base)))
                .timeout(timeout)
                .send()
                .await;
            r.is_ok_and(|r| r.status().is_success())
        })
    }
}

/// Turns an upstream's server-sent events into [`StreamEvent`]s.
struct SseReader {
    chat: bool,
    buf: Vec<u8>,
    finish: Option<FinishReason>,
    usage: Option<ChunkUsage>,
    tokens: usize,
    done: bool,
}

impl SseReader {
    fn new(chat: bool) -> Self {
        SseReader {
            chat,
            buf: Vec::new(),
            finish: None,
            usage: None,
            tokens: 0,
            done: false,
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> Vec<StreamEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line);
            match sse_data(&line) {
                None => continue,
                Some(SseData::Done) => {
                    self.done = true;
                    out.push(self.done_event());
                    return out;
                }
                Some(SseData::Payload(data)) => match StreamChunk::parse(data, self.chat) {
                    Ok(c) => self.chunk(c, &mut out),
                    Err(e) => {
                        out.push(StreamEvent::Error(ApiError::upstream(format!(
                            "upstream sent {e}"
                        ))));
                        return out;
                    }
                },
            }
        }
        out
    }

    fn chunk(&mut self, c: StreamChunk, out: &mut Vec<StreamEvent>) {
        if c.usage.is_some() {
            self.usage = c.usage;
        }
        let mut tokens = c.tokens;
        if tokens.is_empty() && !c.text.is_empty() {
            tokens.push(ChunkToken::default());
        }
        // One event per upstream token; the chunk's text goes with the first.
        for (i, t) in tokens.into_iter().enumerate() {
            self.tokens += 1;
            out.push(StreamEvent::Token(TokenOut {
                text: if i == 0 {
                    c.text.clone()
                } else {
                    String::new()
                },
                token: t.token,
                logprob: t.logprob,
                top: t
                    .top
                    .into_iter()
                    .map(|(token, logprob)| TopLogprob { token, logprob })
                    .collect(),
                tail: false,
            }));
        }
        if let Some(f) = c.finish_reason {
            self.finish = Some(if f == "length" {
                FinishReason::Length
            } else {
                FinishReason::Stop
            });
        }
    }

    fn done_event(&self) -> StreamEvent {
        let u = self.usage.unwrap_or_default();
        StreamEvent::Done(DoneOut {
            finish_reason: self.finish.unwrap_or(FinishReason::Stop),
            usage: Usage {
                prompt_tokens: u.prompt_tokens.unwrap_or(0),
                completion_tokens: u.completion_tokens.unwrap_or(self.tokens),
                cached_tokens: u.cached_tokens.unwrap_or(0),
            },
            timings: None,
        })
    }

    /// The connection closed: a stream with a finish reason is complete even without
    /// `[DONE]` (some servers omit it); one without is broken.
    fn end(&self, id: &str) -> StreamEvent {
        if self.done || self.finish.is_some() {
            self.done_event()
        } else {
            StreamEvent::Error(ApiError::upstream(format!(
                "upstream `{id}` closed the stream before finishing"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{RemoteModel, redact_url};

    /// Credentials in an upstream URL never reach an id, a message or a log line; they are sent
    /// as basic auth instead.
    #[test]
    fn credentials_in_upstream_urls_are_kept_out_of_ids_and_messages() {
        let url = "http://alice:s3cret@127.0.0.1:9/v1?key=k3y";
        assert_eq!(redact_url(url), "http://127.0.0.1:9/v1");
        assert_eq!(redact_url("not a url user:pw@x?k=1"), "not a url user:pw…");
        let r = RemoteModel::new(
            None,
            "http://alice:s3cret@127.0.0.1:9/v1",
            Some("m".into()),
            None,
            None,
            std::time::Duration::from_millis(200),
        )
        .unwrap();
        assert_eq!(r.id, "127.0.0.1:9");
        assert_eq!(r.base_url(), "http://127.0.0.1:9/v1");
        assert_eq!(r.basic, Some(("alice".into(), Some("s3cret".into()))));
        let e = RemoteModel::new(
            None,
            "ftp://alice:s3cret@host/v1",
            None,
            None,
            None,
            std::time::Duration::from_millis(200),
        )
        .err()
        .unwrap();
        assert!(!e.message.contains("s3cret"), "{}", e.message);
        let e = RemoteModel::new(
            None,
            "http://127.0.0.1:9/v1?key=k3y",
            None,
            None,
            None,
            std::time::Duration::from_millis(200),
        )
        .err()
        .unwrap();
        assert!(
            e.message.contains("query") && !e.message.contains("k3y"),
            "{}",
            e.message
        );
    }

    #[tokio::test]
    async fn an_unreachable_upstream_is_reported_without_its_credentials() {
        let r = RemoteModel::new(
            None,
            "http://alice:s3cret@127.0.0.1:9/v1",
            None,
            None,
            None,
            std::time::Duration::from_millis(500),
        )
        .unwrap();
        let e = r.model_name().await.err().unwrap();
        assert!(e.message.contains("unreachable"), "{}", e.message);
        assert!(
            !e.message.contains("s3cret")
                && !e.message.contains("alice")
                && !e.message.contains("k3y"),
            "{}",
            e.message
        );
    }

    use super::*;

    #[test]
    fn sse_chunks_become_events() {
        let mut r = SseReader::new(true);
        let mut evs = r.feed(b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"con");
        assert!(evs.is_empty());
        evs.extend(r.feed(b"tent\":\"Hi\"},\"logprobs\":{\"content\":[{\"token\":\"Hi\",\"logprob\":-0.5,\"top_logprobs\":[]}]}}]}\n\n"));
        evs.extend(r.feed(b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\ndata: [DONE]\n\n"));
        assert_eq!(evs.len(), 2, "{evs:?}");
        assert_eq!(
            evs[0],
            StreamEvent::Token(TokenOut {
                text: "Hi".into(),
                token: Some("Hi".into()),
                logprob: Some(-0.5),
                top: vec![],
                tail: false
            })
        );
        match &evs[1] {
            StreamEvent::Done(d) => assert_eq!(
                (
                    d.finish_reason,
                    d.usage.prompt_tokens,
                    d.usage.completion_tokens
                ),
                (FinishReason::Length, 3, 1)
            ),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn a_stream_cut_before_finishing_is_an_error() {
        let mut r = SseReader::new(false);
        let evs = r.feed(b"data: {\"choices\":[{\"text\":\"a\"}]}\n\n");
        assert_eq!(evs.len(), 1);
        assert!(matches!(r.end("u"), StreamEvent::Error(_)));
    }
}
