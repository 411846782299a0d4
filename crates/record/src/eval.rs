//! The eval results file (`bakeoff eval --out`): per model, each benchmark component with its
//! interval, the categories built from them and the overall score; the paired comparisons; and
//! what was read and how code was contained. The functions that compute these records live in
//! `bakeoff-eval`; the records, read by the report, live here.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::header::ResultsHeader;
use crate::model::ModelIdentity;
use crate::paired::{Paired, SCALE_FORMULA};

/// Bumped on any change that an old reader would misread. 2: `info` is a [`ModelIdentity`]
/// (files with their digests) instead of the engine's `ModelInfo`.
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelResult {
    pub label: String,
    /// The model's identity, its files with their SHA-256 (before schema version 2: the engine's
    /// whole `ModelInfo`, read through [`ModelIdentity`]'s aliases).
    pub info: ModelIdentity,
    /// SHA-256 of each model file, as files before schema version 2 recorded it (since then in
    /// `info.files`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files_sha256: Vec<(String, String)>,
    pub components: Vec<Component>,
    pub categories: Vec<Category>,
    pub overall: Option<Overall>,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Scale {
    pub formula: String,
    /// Category → components and weights, before renormalising over the components present.
    pub categories: Vec<(String, Vec<(String, f64)>)>,
    pub creativity_rule: String,
    pub overall_rule: String,
}

impl Default for Scale {
    fn default() -> Self {
        Self {
            formula: SCALE_FORMULA.into(),
            categories: CATEGORIES
                .iter()
                .map(|(n, parts)| {
                    (
                        n.to_string(),
                        parts.iter().map(|(c, w)| (c.to_string(), *w)).collect(),
                    )
                })
                .collect(),
            creativity_rule:
                "mt_bench_judge when a judge ran, else creativity_proxy (low confidence)".into(),
            overall_rule:
                "equal-weight mean of the categories present, always shown with its weights".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    #[serde(flatten)]
    pub header: ResultsHeader,
    pub tool: String,
    pub created_unix: u64,
    pub profile: String,
    pub selection_rule: String,
    /// Whether the frozen id lists equal what the rule derives from the data read.
    pub ids_match_rule: bool,
    pub item_counts: BTreeMap<String, usize>,
    /// Generation caps and batch size actually used (absent in files from before they were recorded).
    #[serde(default)]
    pub sizes: Option<Sizes>,
    pub data_dir: String,
    pub data_files: Vec<FileRecord>,
    pub sandbox: Option<Isolation>,
    pub scale: Scale,
    pub models: Vec<ModelResult>,
    pub comparisons: Vec<Comparison>,
    pub judge: Option<serde_json::Value>,
    pub audit_file: String,
    pub seconds: f64,
}

/// A metric with its sample size and 95% Wilson interval.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Metric {
    #[serde(deserialize_with = "crate::nan::f64_or_nan")]
    pub value: f64,
    /// Successes (instructions passed, items right).
    pub k: f64,
    pub n: usize,
    #[serde(deserialize_with = "crate::nan::pair_or_nan")]
    pub ci95: (f64, f64),
}

impl Metric {
    pub fn from_counts(k: f64, n: usize) -> Self {
        let value = if n == 0 { f64::NAN } else { k / n as f64 };
        Self {
            value,
            k,
            n,
            ci95: crate::paired::wilson(k, n as f64),
        }
    }

    /// Mean of 0/1 values.
    pub fn from_binary(values: &[f64]) -> Self {
        Self::from_counts(values.iter().sum(), values.len())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Component {
    /// Stable key: mmlu, arc_challenge, hellaswag, truthfulqa_mc, gsm8k, ifeval, humaneval, mbpp,
    /// hygiene, creativity_proxy, mt_bench_judge, wikitext.
    pub name: String,
    pub dataset: String,
    pub method: String,
    /// Name of the headline metric (`acc`, `acc_norm`, `pass@1`, ...).
    pub metric: String,
    pub headline: Metric,
    /// Chance level b of the headline metric.
    #[serde(deserialize_with = "crate::nan::f64_or_nan")]
    pub chance: f64,
    #[serde(deserialize_with = "crate::nan::f64_or_nan")]
    pub score10: f64,
    #[serde(deserialize_with = "crate::nan::pair_or_nan")]
    pub score10_ci: (f64, f64),
    /// Other metrics reported alongside (not scored).
    pub other: BTreeMap<String, Metric>,
    /// Extra numbers (distinct-2, mean length, perplexity, bits per byte, ...).
    #[serde(deserialize_with = "crate::nan::map_or_nan")]
    pub numbers: BTreeMap<String, f64>,
    /// Headline value per item id (0/1 or a fraction): the input of the paired tests.
    pub per_item: BTreeMap<String, f64>,
    /// False for diagnostics that no category uses (WikiText-2).
    pub scored: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub seconds: f64,
}

impl Component {
    pub fn new(
        name: &str,
        dataset: &str,
        method: &str,
        metric: &str,
        headline: Metric,
        chance: f64,
    ) -> Self {
        let score10 = crate::paired::scale10(headline.value, chance);
        let score10_ci = (
            crate::paired::scale10(headline.ci95.0, chance),
            crate::paired::scale10(headline.ci95.1, chance),
        );
        Self {
            name: name.into(),
            dataset: dataset.into(),
            method: method.into(),
            metric: metric.into(),
            headline,
            chance,
            score10,
            score10_ci,
            other: BTreeMap::new(),
            numbers: BTreeMap::new(),
            per_item: BTreeMap::new(),
            scored: true,
            note: None,
            seconds: 0.0,
        }
    }
}

/// Category definitions: (category, [(component, weight)], note).
pub const CATEGORIES: [(&str, &[(&str, f64)]); 6] = [
    (
        "technical accuracy",
        &[("mmlu", 0.4), ("arc_challenge", 0.3), ("gsm8k", 0.3)],
    ),
    (
        "response coherence",
        &[("hellaswag", 0.5), ("hygiene", 0.5)],
    ),
    ("instruction following", &[("ifeval", 1.0)]),
    (
        "creativity",
        &[("mt_bench_judge", 1.0), ("creativity_proxy", 1.0)],
    ),
    ("code quality", &[("humaneval", 0.5), ("mbpp", 0.5)]),
    ("factual accuracy", &[("truthfulqa_mc", 1.0)]),
];

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Category {
    pub name: String,
    #[serde(deserialize_with = "crate::nan::f64_or_nan")]
    pub score10: f64,
    /// Weighted mean of the components' mapped interval endpoints (a conservative band, not an
    /// exact interval).
    #[serde(deserialize_with = "crate::nan::pair_or_nan")]
    pub band: (f64, f64),
    /// Weights actually used (renormalised over the components present).
    pub weights: Vec<(String, f64)>,
    pub confidence: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Overall {
    #[serde(deserialize_with = "crate::nan::f64_or_nan")]
    pub score10: f64,
    pub weights: Vec<(String, f64)>,
    pub note: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Comparison {
    pub component: String,
    pub a: String,
    pub b: String,
    #[serde(flatten)]
    pub paired: Paired,
}

/// Item counts and generation caps of a profile (`None` = every item).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Sizes {
    pub mmlu_per_subject: Option<usize>,
    pub arc_challenge: Option<usize>,
    pub hellaswag: Option<usize>,
    pub truthfulqa: Option<usize>,
    pub gsm8k: Option<usize>,
    pub ifeval: Option<usize>,
    pub ifeval_creative: Option<usize>,
    pub humaneval: Option<usize>,
    pub mbpp: Option<usize>,
    /// MT-Bench writing/roleplay first turns (creativity; judged when a judge is given).
    pub mt_bench: Option<usize>,
    /// WikiText-2 chunks of `wikitext_context` tokens.
    pub wikitext_chunks: Option<usize>,
    pub wikitext_context: usize,
    pub gsm8k_max_tokens: usize,
    pub ifeval_max_tokens: usize,
    pub code_max_tokens: usize,
    pub mt_bench_max_tokens: usize,
    /// Generations run together through one batched forward pass (1 = one at a time).
    #[serde(default = "default_gen_batch")]
    pub gen_batch: usize,
}

/// Eight streams read each weight once for eight tokens: about 4× the single-stream throughput
/// on a 2-core CPU (docs/benchmarks.md, serve batching), with a few MB of extra KV cache.
pub const DEFAULT_GEN_BATCH: usize = 8;

fn default_gen_batch() -> usize {
    DEFAULT_GEN_BATCH
}

/// A data file that was read: where, how big, its SHA-256 and whether that matches the known one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileRecord {
    /// Path relative to the data folder.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
    /// `Some(true)` when it equals the pinned checksum, `Some(false)` when it differs, `None` when
    /// no checksum is pinned for this path.
    pub known_match: Option<bool>,
}

fn default_disk_bytes() -> u64 {
    32 << 20
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    /// Wall-clock timeout for one program.
    pub timeout_s: f64,
    pub cpu_s: u64,
    /// Address space of each process (RLIMIT_AS) and, where a memory cgroup is available, the
    /// memory of the whole run (all processes, plus what it writes to its tmpfs).
    pub memory_bytes: u64,
    pub file_bytes: u64,
    /// Processes of the run (RLIMIT_NPROC, and the pids cgroup where available).
    pub processes: u64,
    pub open_files: u64,
    /// Size of the work folder (a tmpfs); only enforced with the mount namespace.
    #[serde(default = "default_disk_bytes")]
    pub disk_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout_s: 10.0,
            cpu_s: 10,
            memory_bytes: 1 << 30,
            file_bytes: 16 << 20,
            processes: 32,
            open_files: 64,
            disk_bytes: default_disk_bytes(),
        }
    }
}

/// Which containment layers are active (probed once). The first six fields predate the
/// namespace sandbox and keep their meaning for older results files.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Isolation {
    pub python: PathBuf,
    pub python_version: String,
    /// New network namespace: no interface but a downed loopback.
    pub network_namespace: bool,
    /// New mount namespace with the minimal read-only root and a tmpfs work folder.
    pub mount_namespace: bool,
    /// Runs as the sandbox's unprivileged uid (evaluator is root).
    pub dropped_uid: Option<u32>,
    pub limits: Limits,
    /// New PID namespace: the program sees and can signal only its own processes, and all of
    /// them die with the run.
    #[serde(default)]
    pub pid_namespace: bool,
    /// New IPC and UTS namespaces.
    #[serde(default)]
    pub ipc_uts_namespaces: bool,
    /// A user namespace was needed (evaluator not root): the program keeps the evaluator's
    /// uid on the host but holds no capability.
    #[serde(default)]
    pub user_namespace: bool,
    /// The uid the program runs as, as the host sees it.
    #[serde(default)]
    pub uid: Option<u32>,
    /// Landlock ABI version applied (None: the kernel has no Landlock, or no namespaces).
    #[serde(default)]
    pub landlock_abi: Option<u32>,
    #[serde(default)]
    pub seccomp: bool,
    /// Cgroup limits applied to each run, e.g. "v1 memory+pids" (None: none available).
    #[serde(default)]
    pub cgroup: Option<String>,
    /// A pass needs the per-run completion token (written after the tests ran).
    #[serde(default)]
    pub completion_token: bool,
    /// The user allowed running without namespaces and none were available.
    #[serde(default)]
    pub unsafe_no_sandbox: bool,
    /// Layers this machine does not offer, each with the reason.
    #[serde(default)]
    pub missing: Vec<String>,
}
