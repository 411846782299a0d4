//! The bench's error type. Each variant says which model, file or server was at fault, because a
//! benchmark that fails half-way through a long sweep must tell the user what to fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Engine(#[from] bakeoff_engine::Error),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("results file {}: {msg}", path.display())]
    Results { path: PathBuf, msg: String },
    #[error("remote engine {url}: {msg}")]
    Remote { url: String, msg: String },
    #[error("bench worker for `{model}`: {msg}")]
    Worker { model: String, msg: String },
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("writing output: {0}")]
    Output(#[source] std::io::Error),
}

impl BenchError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BenchError::Io {
            path: path.into(),
            source,
        }
    }
    /// The URL is shown without its credentials, query or fragment.
    pub fn remote(url: &str, msg: impl Into<String>) -> Self {
        BenchError::Remote {
            url: bakeoff_record::redact::redact_url(url),
            msg: msg.into(),
        }
    }
    pub fn worker(model: impl Into<String>, msg: impl Into<String>) -> Self {
        BenchError::Worker {
            model: model.into(),
            msg: msg.into(),
        }
    }
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;
