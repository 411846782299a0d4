//! One error type for the engine. Each variant names the file, tensor or value at fault, because
//! a user who feeds bakeoff a broken model needs to know which part to fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that exists but whose content is not what its format promises.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
    #[error(
        "unsupported architecture `{0}`: bakeoff runs `llama` (TinyLlama, Llama-2) and `qwen2` (Qwen2, Qwen2.5) models"
    )]
    UnsupportedArch(String),
    #[error("tensor `{name}`: {msg}")]
    Tensor { name: String, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("model not found: {0}")]
    NotFound(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error(
        "the prompt has {prompt_tokens} tokens but the model's context holds {context} \
         (nothing was truncated; shorten the prompt or use --max-context)"
    )]
    ContextOverflow {
        prompt_tokens: usize,
        context: usize,
    },
    #[error("hub: {0}")]
    Hub(String),
    /// A batched forward pass failed; every sequence in it gets this copy of the error.
    #[error("generation failed: {0}")]
    Generation(String),
    /// A response format (JSON schema, regex, grammar) that cannot be compiled or followed.
    #[error("response format: {0}")]
    Constraint(String),
    #[error("device: {0}")]
    Device(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn tensor(name: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor {
            name: name.into(),
            msg: msg.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
