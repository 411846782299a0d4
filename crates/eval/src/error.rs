//! Errors of the evaluation crate.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("data set missing: {0}")]
    MissingData(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("engine: {0}")]
    Engine(#[from] bakeoff_engine::Error),
    #[error("sandbox: {0}")]
    Sandbox(String),
    /// No usable python3 for HumanEval/MBPP (the evaluator skips them).
    #[error("sandbox: {0}")]
    NoPython(String),
    #[error("judge: {0}")]
    Judge(String),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
