//! Reading results files. The report is computed from these and nothing else, so each file is
//! hashed on the way in and named, with its hash, in the report's sources section.

use std::path::{Path, PathBuf};

use bakeoff_bench::results::BenchReport;
use bakeoff_eval::report::Results as EvalResults;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ReportError, Result};

pub const ANSWERS_SCHEMA: &str = "bakeoff.answers/1";
pub const MANIFEST_SCHEMA: &str = "bakeoff.compare/1";

/// The fixed prompts every compare run answers with both models (the seed report's three).
pub const FIXED_PROMPTS: [&str; 3] = [
    "Explain artificial intelligence in simple terms",
    "Write a simple Python function to calculate fibonacci numbers",
    "Write a short story about a robot learning to paint",
];

/// Side-by-side answers to fixed prompts, written by `bakeoff compare`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answers {
    pub schema: String,
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
    pub finish_reason: String,
    pub ttft_s: Option<f64>,
    pub total_s: f64,
}

/// What `bakeoff compare` ran: the models in order (A, B), which are synthetic, the command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: String,
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

/// The parts of a `bakeoff quantize --measure` results file the report shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantMeasure {
    pub schema: String,
    pub reference: QuantEntry,
    pub models: Vec<QuantEntry>,
    pub threads: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantEntry {
    pub model: String,
    pub weight_dtype: String,
    pub parameters: u64,
    pub file_bytes: u64,
    pub bits_per_weight: f64,
    pub quality: Option<QuantQuality>,
    pub speed: Option<QuantSpeed>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValueErr {
    pub value: f64,
    pub stderr: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantQuality {
    pub tokens: usize,
    pub ppl: ValueErr,
    pub ln_ppl_ratio: ValueErr,
    pub kld_mean: ValueErr,
    pub kld_p99: f64,
    pub same_top_pct: ValueErr,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantSpeed {
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    pub runs: usize,
    pub peak_rss_bytes: u64,
}

/// One file the report was computed from.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    /// The path as given (so a report built from relative paths is the same on every machine).
    pub path: String,
    pub kind: &'static str,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub sources: Vec<Source>,
    pub bench: Option<BenchReport>,
    pub eval: Option<EvalResults>,
    pub answers: Option<Answers>,
    pub manifest: Option<Manifest>,
    pub quant: Vec<QuantMeasure>,
}

/// The files `bakeoff compare` writes into its output folder, so `bakeoff report DIR` finds them.
pub const COMPARE_FILES: [&str; 4] = [
    "compare.json",
    "bench.json",
    "eval/results.json",
    "answers.json",
];

impl Inputs {
    /// Reads results files (or compare output folders), recognising each by its content.
    pub fn load(paths: &[PathBuf]) -> Result<Inputs> {
        if paths.is_empty() {
            return Err(ReportError::Input(
                "no results files given (bench, eval, answers, compare.json or quantize --measure results, or a compare output folder)".into(),
            ));
        }
        let mut files = Vec::new();
        for p in paths {
            if p.is_dir() {
                let mut found: Vec<PathBuf> = COMPARE_FILES
                    .iter()
                    .map(|f| p.join(f))
                    .filter(|f| f.is_file())
                    .collect();
                // `compare --quantize-results` copies its files in as quantize-N.json.
                let mut quant: Vec<PathBuf> = std::fs::read_dir(p)
                    .map_err(|e| ReportError::io(p, e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| {
                        f.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("quantize-") && n.ends_with(".json"))
                    })
                    .collect();
                quant.sort();
                found.extend(quant);
                if found.is_empty() {
                    return Err(ReportError::Input(format!(
                        "{}: a folder without any of {}",
                        p.display(),
                        COMPARE_FILES.join(", ")
                    )));
                }
                files.extend(found);
            } else {
                files.push(p.clone());
            }
        }
        let mut inputs = Inputs::default();
        for f in &files {
            inputs.add(f)?;
        }
        if inputs.bench.is_none() && inputs.eval.is_none() {
            return Err(ReportError::Input(
                "neither a bench nor an eval results file among the inputs: nothing to report"
                    .into(),
            ));
        }
        Ok(inputs)
    }

    fn add(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| ReportError::io(path, e))?;
        let sha256 = hex(&Sha256::digest(&bytes));
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|source| ReportError::Json {
                path: path.into(),
                source,
            })?;
        let bad = |msg: String| ReportError::Results {
            path: path.into(),
            msg,
        };
        let schema = value.get("schema").and_then(|s| s.as_str()).unwrap_or("");
        let kind: &'static str = if value.get("run_id").is_some()
            && value.get("schema_version").is_some()
        {
            // The bench's own reader checks the schema version and says which one it reads.
            let r = BenchReport::read(path).map_err(|e| bad(e.to_string()))?;
            if r.models.is_empty() {
                return Err(bad("bench results without any model".into()));
            }
            set_once(&mut self.bench, r, "bench", path)?;
            "bench"
        } else if value
            .get("tool")
            .and_then(|t| t.as_str())
            .is_some_and(|t| t.starts_with("bakeoff-eval"))
        {
            let r: EvalResults =
                serde_json::from_value(value).map_err(|e| bad(format!("eval results: {e}")))?;
            if r.models.is_empty() {
                return Err(bad("eval results without any model".into()));
            }
            set_once(&mut self.eval, r, "eval", path)?;
            "eval"
        } else if schema == ANSWERS_SCHEMA {
            let r: Answers =
                serde_json::from_value(value).map_err(|e| bad(format!("answers: {e}")))?;
            set_once(&mut self.answers, r, "answers", path)?;
            "answers"
        } else if schema == MANIFEST_SCHEMA {
            let r: Manifest =
                serde_json::from_value(value).map_err(|e| bad(format!("compare manifest: {e}")))?;
            set_once(&mut self.manifest, r, "compare manifest", path)?;
            "compare manifest"
        } else if schema.starts_with("bakeoff.quantize.measure/") {
            if schema != "bakeoff.quantize.measure/1" {
                return Err(bad(format!(
                    "schema {schema}; this bakeoff reads bakeoff.quantize.measure/1"
                )));
            }
            let r: QuantMeasure = serde_json::from_value(value)
                .map_err(|e| bad(format!("quantize measurements: {e}")))?;
            self.quant.push(r);
            "quantize measurements"
        } else if schema.starts_with("bakeoff.") {
            return Err(bad(format!("unknown schema `{schema}`")));
        } else {
            return Err(bad(
                "not a bakeoff results file (bench, eval, answers, compare.json or quantize --measure)"
                    .into(),
            ));
        };
        self.sources.push(Source {
            path: path.display().to_string(),
            kind,
            bytes: bytes.len() as u64,
            sha256,
        });
        Ok(())
    }
}

fn set_once<T>(slot: &mut Option<T>, v: T, what: &str, path: &Path) -> Result<()> {
    if slot.is_some() {
        return Err(ReportError::Input(format!(
            "{}: a second {what} results file; a report covers one run of each",
            path.display()
        )));
    }
    *slot = Some(v);
    Ok(())
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
