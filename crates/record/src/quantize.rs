//! The `bakeoff quantize --measure` results file: quantized files measured against a reference
//! (perplexity, KL divergence, top-token agreement as llama-perplexity computes them, and speed).
//! The engine computes [`Quality`] and [`Speed`]; the CLI writes the file; the report reads it.

use serde::{Deserialize, Serialize};

use crate::header::ResultsHeader;

/// Bumped on any change that an old reader would misread (before headers, `schema` was
/// `bakeoff.quantize.measure/1`).
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantizeResults {
    #[serde(flatten)]
    pub header: ResultsHeader,
    pub created_unix_s: f64,
    pub method: String,
    pub data: QuantData,
    pub threads: usize,
    pub cores: usize,
    /// /proc/loadavg at the start and the end: speed figures from a busy machine are noisy.
    pub loadavg_start: Option<String>,
    pub loadavg_end: Option<String>,
    pub reference: QuantEntry,
    pub reference_ppl: Option<ValueErr>,
    pub models: Vec<QuantEntry>,
}

/// The text the models were measured on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantData {
    pub file: String,
    pub tokens: usize,
    pub ctx: usize,
    pub chunks: usize,
    pub scored_tokens: usize,
    pub bos_per_chunk: bool,
}

/// One model file: the reference or a quantized one.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantEntry {
    pub model: String,
    pub weight_dtype: String,
    pub parameters: u64,
    pub file_bytes: u64,
    pub bits_per_weight: f64,
    /// Absent for the reference.
    pub quality: Option<Quality>,
    pub speed: Option<Speed>,
}

/// A mean and its standard error.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValueErr {
    pub value: f64,
    pub stderr: f64,
}

/// The quality figures of one model against the reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Scored positions.
    pub tokens: usize,
    pub ppl: ValueErr,
    pub ppl_base: ValueErr,
    /// mean ln q − mean ln p over the same tokens: ln(PPL(Q)/PPL(base)).
    pub ln_ppl_ratio: ValueErr,
    pub kld_mean: ValueErr,
    pub kld_median: f64,
    pub kld_p99: f64,
    pub kld_max: f64,
    /// Percent of positions where both models' top token is the same.
    pub same_top_pct: ValueErr,
    /// Root mean square of q(token) − p(token), in percent.
    pub rms_dp_pct: f64,
}

/// Speed and memory of one short greedy generation (EOS ignored), as `bakeoff generate` times it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Speed {
    pub load_s: f64,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Median over the runs.
    pub prefill_tok_s: f64,
    /// Median over the runs.
    pub decode_tok_s: f64,
    pub runs: usize,
    /// Peak resident memory of the process that loaded the model and ran it.
    pub peak_rss_bytes: u64,
}
