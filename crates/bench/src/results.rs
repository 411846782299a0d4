//! The results file: one JSON document per `bakeoff bench` run, with a versioned schema. It holds
//! the environment, each model's identity and run parameters, the raw per-repetition samples and
//! the statistics derived from them (which [`crate::metrics::Stats::of`] can recompute).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::env::Environment;
use crate::error::{BenchError, Result};
use crate::metrics::{RunSample, Stats};
use crate::scenarios::ScenarioId;

/// Bumped on any change that an old reader would misread.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub schema_version: u32,
    pub run_id: String,
    pub started_at: String,
    pub finished_at: String,
    /// The command line, as typed.
    pub command: Vec<String>,
    pub environment: Environment,
    pub settings: Settings,
    pub models: Vec<ModelResult>,
}

/// What was asked of every model in the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub scenario_set: String,
    pub scenarios: Vec<ScenarioId>,
    pub depths: Vec<usize>,
    pub repetitions: usize,
    pub warmup: usize,
    pub max_tokens: usize,
    pub depth_tokens: usize,
    pub sampling: String,
    pub ignore_eos: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// bakeoff's own engine, in a child process.
    Local,
    /// An OpenAI-compatible server, measured from its stream.
    Openai,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileDigest {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
}

/// Which model was measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// The `--model` argument as given.
    pub source: String,
    pub engine: EngineKind,
    pub path: Option<PathBuf>,
    pub revision: Option<String>,
    /// `gguf`, `safetensors`, or `remote`.
    pub format: String,
    pub arch: Option<String>,
    /// Weight storage type, e.g. `q4_0`.
    pub dtype: Option<String>,
    pub parameters: Option<u64>,
    pub file_bytes: Option<u64>,
    pub files: Vec<FileDigest>,
    pub max_context: Option<usize>,
}

/// How the model was run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunParams {
    pub device: String,
    /// What the engine reports about its kernels (e.g. `cpu avx512 vnni, 2 threads`).
    pub backend: String,
    pub threads: Option<usize>,
    /// `--dtype` as asked (safetensors only); the stored type is in the identity.
    pub dtype: Option<String>,
    pub max_context: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LoadTimes {
    /// Load with the files in the page cache (they were just read to hash them).
    pub warm_s: Option<f64>,
    /// Load right after dropping the page cache.
    pub cold_s: Option<f64>,
    /// Why a figure is missing, e.g. "not measured: /proc/sys/vm/drop_caches is not writable".
    pub note: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Peak resident set of the worker process over the whole job.
    pub peak_rss_bytes: Option<u64>,
    /// Resident set right after the warm load.
    pub rss_after_load_bytes: Option<u64>,
    /// KV cache at its largest (after the deepest run).
    pub kv_cache_bytes: Option<u64>,
    /// Device memory on a GPU (not measured by this version).
    pub device_bytes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub scenario: ScenarioId,
    /// Tokens of the user message for each prompt of the set (as fitted to the target).
    pub content_tokens: Vec<usize>,
    pub samples: Vec<RunSample>,
    pub stats: Stats,
    /// Why the scenario has no samples (e.g. its prompt does not fit the model's context).
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DepthResult {
    /// The depth asked for.
    pub depth: usize,
    /// Whether the prompt had to be shortened to leave room for the generated tokens.
    pub clamped: bool,
    pub samples: Vec<RunSample>,
    pub stats: Stats,
}

/// The bench's own cost inside the timed region, over all runs of a model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Overhead {
    pub bench_s: f64,
    pub decode_s: f64,
    pub fraction: f64,
    /// Cost of one clock read, measured at start-up; two per token are counted in `bench_s`.
    pub clock_read_ns: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelResult {
    /// Short name used in tables, unique within the run.
    pub label: String,
    pub model: ModelIdentity,
    pub run: RunParams,
    pub load: LoadTimes,
    pub memory: Memory,
    pub scenarios: Vec<ScenarioResult>,
    pub depths: Vec<DepthResult>,
    pub overhead: Option<Overhead>,
    /// Seconds the whole job took.
    pub job_s: f64,
    /// Process id of the worker that measured this model (each model gets its own process).
    pub worker_pid: u32,
    /// Set when the worker failed; the other fields hold what was measured before.
    pub error: Option<String>,
}

impl BenchReport {
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Reads a results file, refusing schemas this version does not know.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| BenchError::io(path, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| BenchError::Results {
                path: path.into(),
                msg: format!("invalid JSON: {e}"),
            })?;
        match v.get("schema_version").and_then(|s| s.as_u64()) {
            Some(n) if n == u64::from(SCHEMA_VERSION) => {}
            Some(n) => {
                return Err(BenchError::Results {
                    path: path.into(),
                    msg: format!("schema version {n}; this bakeoff reads version {SCHEMA_VERSION}"),
                });
            }
            None => {
                return Err(BenchError::Results {
                    path: path.into(),
                    msg: "no schema_version".into(),
                });
            }
        }
        serde_json::from_value(v).map_err(|e| BenchError::Results {
            path: path.into(),
            msg: e.to_string(),
        })
    }

    /// Derives every scenario's and depth's statistics again from the raw samples, with this
    /// version's rules (for files written before a rule changed).
    pub fn recompute_stats(&mut self) {
        let cores = self.environment.cores;
        for m in &mut self.models {
            for s in &mut m.scenarios {
                s.stats = crate::metrics::Stats::of(&s.samples, cores);
            }
            for d in &mut m.depths {
                d.stats = crate::metrics::Stats::of(&d.samples, cores);
            }
        }
    }

    /// Writes the file, creating its folder.
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| BenchError::io(dir, e))?;
        }
        std::fs::write(path, self.to_json()? + "\n").map_err(|e| BenchError::io(path, e))
    }
}
