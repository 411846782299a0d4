//! The contract between the HTTP side and whatever generates tokens: a local engine on its own
//! thread ([`crate::engine::LocalModel`]) or a remote OpenAI-compatible upstream
//! ([`crate::remote::RemoteModel`]). The router only sees [`Upstream`], so replicas of either
//! kind balance and fall back the same way.

use std::time::Duration;

use bakeoff_engine::constrain::OutputConstraint;
use bakeoff_engine::sampling::SamplingParams;
use bakeoff_engine::template::Message;
use bakeoff_engine::tools::ToolSet;
use bakeoff_record::{FinishReason, Timings, Usage};
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::ApiError;

/// What to generate from.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A conversation, rendered with the model's chat template.
    Chat(Vec<Message>),
    /// A plain prompt (`/v1/completions`).
    Text(String),
    /// Token ids (`/v1/completions` with an array of integers), used as given: no BOS added.
    Tokens(Vec<u32>),
}

impl Input {
    /// All the text a request carries, for the complexity scorer and for logs.
    pub fn text_len(&self) -> usize {
        match self {
            Input::Chat(m) => m.iter().map(|m| m.content.len()).sum(),
            Input::Text(t) => t.len(),
            // About four bytes of text per token.
            Input::Tokens(ids) => ids.len() * 4,
        }
    }
}

/// A validated request, independent of the endpoint it came through.
#[derive(Clone, Debug)]
pub struct GenRequest {
    /// `auto`, a tier name or a model id.
    pub model: String,
    pub input: Input,
    /// None: as many as the context allows.
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    /// None: no log-probabilities; Some(k): the chosen token's and the k most likely.
    pub logprobs: Option<usize>,
    /// What the answer must be (`response_format`), enforced by constrained decoding; the
    /// cascade also checks that a JSON answer parses.
    pub response_format: Option<ResponseFormat>,
    /// Functions the model may call (chat only), offered through its chat template; calls in
    /// the answer come back as [`StreamEvent::ToolCall`].
    pub tools: Option<ToolSet>,
    /// `/v1/completions` `echo`: the prompt comes back before the answer, with its tokens'
    /// log-probabilities when `logprobs` is set.
    pub echo: bool,
}

/// A constraint on the answer and how the client asked for it.
#[derive(Clone, Debug, PartialEq)]
pub struct ResponseFormat {
    pub constraint: OutputConstraint,
    /// The client's `response_format` object, passed on as it came to a remote upstream.
    pub wire: Value,
}

impl ResponseFormat {
    /// Whether a complete answer must parse as JSON.
    pub fn is_json(&self) -> bool {
        self.constraint.is_json()
    }
}

/// One of the most likely tokens at a position.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TokenOut {
    /// Newly complete text; may be empty (an unfinished character, text held back while it
    /// might start a stop string) or hold a flushed tail with no token of its own.
    pub text: String,
    /// The token's own text, for logprobs; None for a flushed tail.
    pub token: Option<String>,
    pub logprob: Option<f32>,
    pub top: Vec<TopLogprob>,
    /// Held-back text flushed at the end: not a generated token of its own.
    pub tail: bool,
}

/// The prompt as the model read it (`echo`): its text, and per token its text, the offset of
/// that text, and its log-probability given the tokens before it (None for the first).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PromptOut {
    pub text: String,
    pub tokens: Vec<PromptTokenOut>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PromptTokenOut {
    pub token: String,
    pub text_offset: usize,
    pub logprob: Option<f32>,
    pub top: Vec<TopLogprob>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DoneOut {
    /// The engine's reason; clients see its OpenAI name ([`FinishReason::openai`]).
    pub finish_reason: FinishReason,
    pub usage: Usage,
    /// The engine's timings of this sequence; a remote upstream sends none.
    pub timings: Option<Timings>,
}

/// A function call read out of the answer.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCallOut {
    /// `call_…`, unique within the process.
    pub id: String,
    pub name: String,
    /// The arguments as JSON text, as OpenAI sends them.
    pub arguments: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StreamEvent {
    /// The echoed prompt, before any token (only for `echo`).
    Prompt(PromptOut),
    Token(TokenOut),
    /// A complete call, once its text has been generated and read.
    ToolCall(ToolCallOut),
    Done(DoneOut),
    Error(ApiError),
}

/// The receiving end of a generation. Dropping it cancels the generation: the engine checks
/// for a closed channel before every step, and a remote stream's reader task stops sending.
pub type EventRx = mpsc::UnboundedReceiver<StreamEvent>;

/// Load of a replica, for /health and /metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Load {
    pub queued: usize,
    pub active: usize,
}

pub trait Upstream: Send + Sync + 'static {
    /// The model id clients may name, and the `model` field of responses.
    fn model_id(&self) -> &str;
    /// `local` or `remote`.
    fn kind(&self) -> &'static str;
    /// Context window in tokens, when known.
    fn context_len(&self) -> Option<usize>;
    /// Starts a generation; errors that happen before it is accepted (bad prompt, full
    /// queue, unreachable upstream) come back here, later ones as a [`StreamEvent::Error`].
    fn start(&self, req: GenRequest) -> BoxFuture<'_, Result<EventRx, ApiError>>;
    /// A cheap liveness probe for the health checker.
    fn health(&self, timeout: Duration) -> BoxFuture<'_, bool>;
    /// Queue and batch occupancy, when the backend knows them.
    fn load(&self) -> Option<Load> {
        None
    }
    /// A counter that moves whenever the backend does work (a local engine's generation
    /// steps), when it has one: a first-token timeout while it moves is load, not a fault.
    fn progress(&self) -> Option<u64> {
        None
    }
    /// The model's tokenizer and chat template (`/tokenize`, `/detokenize`); a remote
    /// upstream's tokenizer is on the other server.
    fn prompter(&self) -> Option<&bakeoff_engine::prompt::Prompter> {
        None
    }
}
