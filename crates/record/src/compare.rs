//! The files `bakeoff compare` writes besides bench's and eval's: the answers of both models to
//! the fixed prompts (`answers.json`) and the manifest of the run (`compare.json`).

use serde::{Deserialize, Serialize};

use crate::generation::FinishReason;
use crate::header::ResultsHeader;

/// Bumped on any change that an old reader would misread (answers and manifest alike; before
/// headers their `schema` was `bakeoff.answers/1` and `bakeoff.compare/1`).
pub const SCHEMA_VERSION: u32 = 1;

/// Side-by-side answers to fixed prompts, written by `bakeoff compare`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answers {
    #[serde(flatten)]
    pub header: ResultsHeader,
    pub created_unix: u64,
    pub max_tokens: usize,
    /// How the answers were sampled (greedy, so a rerun gives the same text).
    pub sampling: String,
    pub models: Vec<ModelAnswers>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelAnswers {
    pub label: String,
    pub source: String,
    /// Random weights written by `bakeoff synth` (read from the file's own metadata).
    pub synthetic: bool,
    pub chat_template: bool,
    pub answers: Vec<Answer>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub prompt: String,
    pub text: String,
    pub generated_tokens: usize,
    pub finish_reason: FinishReason,
    pub ttft_s: Option<f64>,
    pub total_s: f64,
}

/// What `bakeoff compare` ran: the models in order (A, B), which are synthetic, the command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(flatten)]
    pub header: ResultsHeader,
    pub created_unix: u64,
    pub command: Vec<String>,
    pub demo: bool,
    pub models: Vec<ManifestModel>,
    /// Seconds from the start of `compare` to the end of the last measurement (before rendering).
    pub measure_s: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestModel {
    pub label: String,
    pub source: String,
    pub synthetic: bool,
}
