use std::path::PathBuf;

/// Everything that can go wrong between results files and a written report. Variants name the
/// file at fault so the CLI can print a message that says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {msg}")]
    Results { path: PathBuf, msg: String },
    #[error("{0}")]
    Input(String),
    #[error("chart `{name}`: {msg}")]
    Chart { name: String, msg: String },
    #[error("history database {path}: {source}")]
    History {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("history: {0}")]
    HistoryQuery(String),
}

impl ReportError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ReportError::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = ReportError> = std::result::Result<T, E>;
