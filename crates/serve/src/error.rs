//! Every error a client can see, and the one place that maps them to HTTP status codes and the
//! OpenAI error shape (`{"error": {"message", "type", "param", "code"}}`). Internal details
//! (paths, engine messages) stay in the server log; clients get a message they can act on.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// What went wrong, from the client's point of view. The router uses it to decide whether
/// another replica or tier may serve the request instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed JSON, wrong types, unknown roles, empty messages, bad parameter values.
    InvalidRequest,
    /// The prompt does not fit the model's context.
    ContextLength,
    /// Missing or wrong API key.
    Unauthorized,
    /// Unknown model name or route.
    NotFound,
    /// Body over the size limit.
    PayloadTooLarge,
    /// The client did not send its whole body within the body timeout (408).
    RequestTimeout,
    /// The model's queue is full: retry later (429 + Retry-After).
    Overloaded,
    /// No first token, or no answer, within the request's time limit.
    Timeout,
    /// No replica is healthy or out of cooldown.
    Unavailable,
    /// A remote upstream failed (connection refused, 5xx, broken stream).
    Upstream,
    /// The engine failed while computing.
    Internal,
    /// A valid request this replica cannot serve (tools on a remote upstream): another may.
    Unsupported,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidRequest | ErrorKind::ContextLength | ErrorKind::Unsupported => {
                StatusCode::BAD_REQUEST
            }
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The OpenAI `type` field.
    pub fn type_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest
            | ErrorKind::ContextLength
            | ErrorKind::NotFound
            | ErrorKind::PayloadTooLarge
            | ErrorKind::RequestTimeout
            | ErrorKind::Unsupported => "invalid_request_error",
            ErrorKind::Unauthorized => "authentication_error",
            ErrorKind::Overloaded => "rate_limit_error",
            ErrorKind::Timeout => "timeout_error",
            ErrorKind::Unavailable | ErrorKind::Upstream | ErrorKind::Internal => "server_error",
        }
    }

    /// The label used in `bakeoff_errors_total{kind=...}`.
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::ContextLength => "context_length",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::NotFound => "not_found",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Upstream => "upstream",
            ErrorKind::Internal => "internal",
            ErrorKind::Unsupported => "unsupported",
        }
    }

    /// Whether another replica or tier might succeed where this one failed. Client mistakes
    /// would fail anywhere; a context overflow may fit a model with a longer context.
    pub fn may_fall_back(self) -> bool {
        matches!(
            self,
            ErrorKind::ContextLength
                | ErrorKind::Unsupported
                | ErrorKind::Overloaded
                | ErrorKind::Timeout
                | ErrorKind::Unavailable
                | ErrorKind::Upstream
                | ErrorKind::Internal
        )
    }

    /// Whether it counts toward a replica's cooldown. Overload is load, not a fault; a client
    /// error says nothing about the replica.
    pub fn is_replica_fault(self) -> bool {
        matches!(
            self,
            ErrorKind::Timeout | ErrorKind::Unavailable | ErrorKind::Upstream | ErrorKind::Internal
        )
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    /// The request field at fault, when there is one (`messages[1].role`).
    pub param: Option<String>,
    /// OpenAI's `code` (`context_length_exceeded`, `invalid_api_key`, `model_not_found`).
    pub code: Option<&'static str>,
    /// Seconds, for 429.
    pub retry_after: Option<u64>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.kind.label())
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidRequest, message)
    }
    pub fn invalid_param(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param.into()),
            ..Self::invalid(message)
        }
    }
    pub fn context_length(prompt_tokens: usize, context: usize, model: &str) -> Self {
        ApiError {
            code: Some("context_length_exceeded"),
            param: Some("messages".into()),
            ..Self::new(
                ErrorKind::ContextLength,
                format!(
                    "the prompt has {prompt_tokens} tokens but model `{model}` has a context of {context} tokens \
                     (at least one must be left to generate); nothing was truncated: shorten the prompt"
                ),
            )
        }
    }
    /// A request whose prompt plus `max_tokens` needs more KV-cache memory than the engine's
    /// whole budget: it could never run, so it is refused rather than queued.
    pub fn kv_budget(
        prompt: usize,
        max_tokens: usize,
        need: u64,
        budget: u64,
        model: &str,
    ) -> Self {
        const MIB: f64 = 1024.0 * 1024.0;
        ApiError {
            code: Some("context_length_exceeded"),
            param: Some("max_tokens".into()),
            ..Self::new(
                ErrorKind::ContextLength,
                format!(
                    "{prompt} prompt tokens plus max_tokens {max_tokens} need {:.0} MiB of KV cache on model `{model}`, \
                     more than the server's budget of {:.0} MiB (engine.kv_budget_mib): lower max_tokens or shorten the prompt",
                    need as f64 / MIB,
                    budget as f64 / MIB
                ),
            )
        }
    }
    pub fn overloaded(model: &str, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(
                ErrorKind::Overloaded,
                format!("model `{model}` is at its queue limit; retry after {retry_after} s"),
            )
        }
    }
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Timeout, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError {
            code: Some("invalid_api_key"),
            ..Self::new(ErrorKind::Unauthorized, message)
        }
    }
    pub fn model_not_found(model: &str, known: &[String]) -> Self {
        ApiError {
            code: Some("model_not_found"),
            param: Some("model".into()),
            ..Self::new(
                ErrorKind::NotFound,
                format!(
                    "model `{model}` does not exist here; use one of: {}",
                    known.join(", ")
                ),
            )
        }
    }
    pub fn upstream(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Upstream, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// The OpenAI-shaped JSON body.
    pub fn body(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct Inner<'a> {
            message: &'a str,
            #[serde(rename = "type")]
            kind: &'a str,
            param: Option<&'a str>,
            code: Option<&'a str>,
        }
        serde_json::json!({
            "error": Inner {
                message: &self.message,
                kind: self.kind.type_str(),
                param: self.param.as_deref(),
                code: self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.kind.status(), axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        // Lets the metrics layer count errors by kind without parsing bodies.
        resp.extensions_mut().insert(self.kind);
        resp
    }
}

impl From<bakeoff_engine::Error> for ApiError {
    fn from(e: bakeoff_engine::Error) -> Self {
        use bakeoff_engine::Error as E;
        match e {
            E::ContextOverflow {
                prompt_tokens,
                context,
            } => ApiError::context_length(prompt_tokens, context, "?"),
            E::InvalidArgument(m) => ApiError::invalid(m),
            E::Template(m) => {
                ApiError::invalid(format!("the chat template refused these messages: {m}"))
            }
            E::Tokenizer(m) => ApiError::invalid(format!("tokenizer: {m}")),
            E::Constraint(m) => {
                ApiError::invalid_param("response_format", format!("response format: {m}"))
            }
            other => ApiError::internal(format!("engine error: {other}")),
        }
    }
}
