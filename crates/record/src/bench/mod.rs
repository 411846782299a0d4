//! The bench results file: one JSON document per `bakeoff bench` run. It holds the environment,
//! each model's identity and run parameters, the raw per-repetition samples and the statistics
//! derived from them (which [`Stats::of`] recomputes).

mod metrics;

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use metrics::{RunSample, Stats, WINDOW};

use crate::header::{ResultsFile, ResultsHeader, ResultsKind};
use crate::model::ModelIdentity;

/// Bumped on any change that an old reader would misread.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    #[serde(flatten)]
    pub header: ResultsHeader,
    pub run_id: String,
    pub started_at: String,
    pub finished_at: String,
    /// The command line, as typed.
    pub command: Vec<String>,
    pub environment: Environment,
    pub settings: RunParams,
    pub models: Vec<ModelResult>,
}

/// What every model of a run is asked, declared once: carried by the command line
/// (`bakeoff_bench::job::BenchConfig`), each worker's job, and the results file (`settings`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunParams {
    /// The prompt sets' version (`bakeoff_bench::scenarios::SCENARIO_SET_VERSION`).
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

/// How one model was run: the point of the sweep and what the engine said about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Runtime {
    pub device: String,
    /// What the engine reports about its kernels (e.g. `cpu avx512 vnni, 2 threads`).
    pub backend: String,
    pub threads: Option<usize>,
    /// `--dtype` as asked (safetensors only); the stored type is in the identity.
    pub dtype: Option<String>,
    pub max_context: Option<usize>,
}

/// The machine a run was measured on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub cpu_model: String,
    /// Logical cores this process may use.
    pub cores: usize,
    pub ram_bytes: u64,
    pub os: String,
    pub kernel: String,
    pub arch: String,
    pub hostname: String,
    pub bakeoff_version: String,
    pub git_commit: Option<String>,
    pub rustc: String,
    /// Whether RAPL energy counters were readable (energy figures are "n/a" otherwise).
    pub rapl: bool,
    /// Whether the page cache could be dropped (cold load times are "not measured" otherwise).
    pub drop_caches: bool,
}

/// A scenario of the bench's prompt sets (`bakeoff_bench::scenarios`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScenarioId {
    Short,
    Medium,
    Long,
    Code,
    Creative,
}

impl ScenarioId {
    pub const ALL: [ScenarioId; 5] = [
        ScenarioId::Short,
        ScenarioId::Medium,
        ScenarioId::Long,
        ScenarioId::Code,
        ScenarioId::Creative,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ScenarioId::Short => "short",
            ScenarioId::Medium => "medium",
            ScenarioId::Long => "long",
            ScenarioId::Code => "code",
            ScenarioId::Creative => "creative",
        }
    }
}

impl std::str::FromStr for ScenarioId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ScenarioId::ALL
            .into_iter()
            .find(|id| id.name() == s)
            .ok_or_else(|| format!("unknown scenario `{s}` (short, medium, long, code, creative)"))
    }
}

impl std::fmt::Display for ScenarioId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
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
    pub run: Runtime,
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
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }

    /// Reads a bench results file (with or without a header), refusing other kinds and schema
    /// versions this build does not know. The error says what is wrong, without the path.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        match ResultsFile::parse(bytes)? {
            ResultsFile::Bench(r) => Ok(*r),
            other => Err(format!(
                "{} results, not bench results",
                other.kind().describe()
            )),
        }
    }

    pub fn from_json(text: &str) -> Result<Self, String> {
        Self::parse(text.as_bytes())
    }

    pub fn read(path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes the file, creating its folder.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        crate::header::write_json(path, self)
    }

    /// Derives every scenario's and depth's statistics again from the raw samples, with this
    /// version's rules (for files written before a rule changed).
    pub fn recompute_stats(&mut self) {
        let cores = self.environment.cores;
        for m in &mut self.models {
            for s in &mut m.scenarios {
                s.stats = Stats::of(&s.samples, cores);
            }
            for d in &mut m.depths {
                d.stats = Stats::of(&d.samples, cores);
            }
        }
    }

    /// A new report's header.
    pub fn header() -> ResultsHeader {
        ResultsKind::Bench.header()
    }
}
