//! What the parent asks of a worker: one model, one point of the sweep, every scenario and depth.
//! A [`BenchConfig`] (the command line, validated) expands into one [`Job`] per model × threads
//! × dtype; each job travels to its child process as JSON on stdin.

use serde::{Deserialize, Serialize};

use crate::error::{BenchError, Result};
use crate::scenarios::{SCENARIO_SET_VERSION, ScenarioId};
pub use bakeoff_record::bench::RunParams;
use bakeoff_record::redact::redact_url;

/// A model to measure, as given to `--model`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ModelRef {
    /// A folder, .gguf file or hub id, run by bakeoff's engine.
    Local {
        source: String,
        gguf_file: Option<String>,
    },
    /// `openai:http://HOST:PORT/v1#MODEL`: an OpenAI-compatible server.
    Openai { base_url: String, model: String },
}

impl ModelRef {
    pub fn parse(s: &str, gguf_file: Option<&str>) -> Result<ModelRef> {
        let Some(rest) = s.strip_prefix("openai:") else {
            return Ok(ModelRef::Local {
                source: s.to_string(),
                gguf_file: gguf_file.map(str::to_string),
            });
        };
        let shown = redact_url(s);
        let (url, model) = rest.split_once('#').ok_or_else(|| {
            BenchError::InvalidArgument(format!(
                "`{shown}`: name the served model after `#`, e.g. openai:http://127.0.0.1:8080/v1#qwen2.5"
            ))
        })?;
        if model.is_empty() {
            return Err(BenchError::InvalidArgument(format!(
                "`{shown}`: the model name after `#` is empty"
            )));
        }
        // Validates the scheme and host now rather than in the worker.
        crate::remote::parse_host(url)?;
        Ok(ModelRef::Openai {
            base_url: url.trim_end_matches('/').to_string(),
            model: model.to_string(),
        })
    }

    /// A short name for tables: the file or folder name, or the served model's name.
    pub fn short_name(&self) -> String {
        match self {
            ModelRef::Openai { model, .. } => model.clone(),
            ModelRef::Local { source, .. } => {
                let p = std::path::Path::new(source.trim_end_matches('/'));
                let name = if p.extension().is_some_and(|e| e == "gguf") {
                    p.file_stem()
                } else {
                    p.file_name()
                };
                name.map_or_else(|| source.clone(), |n| n.to_string_lossy().to_string())
            }
        }
    }

    /// What results files record as the model's source: for a remote engine, its URL without
    /// credentials.
    pub fn shown_source(&self) -> String {
        match self {
            ModelRef::Openai { base_url, model } => {
                format!("openai:{}#{model}", redact_url(base_url))
            }
            ModelRef::Local { source, .. } => source.clone(),
        }
    }

    pub fn is_local(&self) -> bool {
        matches!(self, ModelRef::Local { .. })
    }
}

/// One child process's work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub label: String,
    pub source: String,
    pub model: ModelRef,
    pub device: String,
    pub threads: Option<usize>,
    pub dtype: Option<String>,
    pub max_context: Option<usize>,
    /// Scenarios, depths, repetitions, warm-up and lengths: the record the results file keeps.
    pub params: RunParams,
    /// Drop the page cache for a cold load time, where allowed.
    pub cold_load: bool,
    /// Packed-weights cache (`LoadOptions::weight_cache`); none when absent.
    #[serde(default)]
    pub weight_cache: Option<bakeoff_engine::loader::packcache::WeightCache>,
    /// Element type of the CPU KV cache (`LoadOptions::kv_cache`).
    #[serde(default)]
    pub kv_cache: bakeoff_engine::kernels::kvbuf::KvType,
    /// Non-loopback hosts the user allowed for remote engines.
    pub allowed_hosts: Vec<String>,
    /// Read timeout for remote engines, seconds.
    pub timeout_s: u64,
}

/// Tokens of each warm-up run: enough to run prefill on the real prompt and to page in every
/// weight, short enough to cost little.
pub const WARMUP_TOKENS: usize = 16;

impl Job {
    /// Progress steps the worker reports, for the parent's bar.
    pub fn work_units(&self) -> u64 {
        let loads = if self.model.is_local() { 3 } else { 0 };
        let scen = self.params.scenarios.len() * (self.params.warmup + self.params.repetitions);
        let depths = if self.params.depths.is_empty() {
            0
        } else {
            self.params.warmup + self.params.depths.len() * self.params.repetitions
        };
        (loads + scen + depths) as u64
    }
}

/// The validated command line.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchConfig {
    pub models: Vec<String>,
    pub gguf_file: Option<String>,
    pub device: String,
    /// Threads sweep; empty means all cores (resolved here so every model gets the same number).
    pub threads: Vec<usize>,
    /// `--dtype` sweep for safetensors models; empty means as stored.
    pub dtypes: Vec<String>,
    pub max_context: Option<usize>,
    /// Scenarios, depths, repetitions, warm-up and lengths: the record the results file keeps.
    pub params: RunParams,
    pub cold_load: bool,
    /// Packed-weights cache for local models (`LoadOptions::weight_cache`).
    pub weight_cache: Option<bakeoff_engine::loader::packcache::WeightCache>,
    /// Element type of the CPU KV cache for local models.
    pub kv_cache: bakeoff_engine::kernels::kvbuf::KvType,
    pub allowed_hosts: Vec<String>,
    pub timeout_s: u64,
}

/// bench's defaults: every scenario, depths 128 to 2048, 5 repetitions after 1 warm-up, 128
/// tokens (32 per depth run), greedy with end-of-sequence ignored.
pub fn default_params() -> RunParams {
    RunParams {
        scenario_set: SCENARIO_SET_VERSION.into(),
        scenarios: ScenarioId::ALL.to_vec(),
        depths: vec![128, 256, 512, 1024, 2048],
        repetitions: 5,
        warmup: 1,
        max_tokens: 128,
        depth_tokens: 32,
        sampling: "greedy".into(),
        ignore_eos: true,
    }
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            models: Vec::new(),
            gguf_file: None,
            device: "cpu".into(),
            threads: Vec::new(),
            dtypes: Vec::new(),
            max_context: None,
            params: default_params(),
            cold_load: true,
            weight_cache: None,
            kv_cache: Default::default(),
            allowed_hosts: Vec::new(),
            timeout_s: 600,
        }
    }
}

impl BenchConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(BenchError::InvalidArgument(m.into()));
        if self.models.is_empty() {
            return bad("give at least one --model");
        }
        if self.params.repetitions == 0 {
            return bad("--repetitions must be at least 1");
        }
        if self.params.max_tokens < 2 || self.params.depth_tokens < 2 {
            return bad(
                "--max-tokens and --depth-tokens must be at least 2 (a rate needs two tokens)",
            );
        }
        if self.threads.contains(&0) {
            return bad("--threads values must be at least 1");
        }
        if self.params.depths.contains(&0) {
            return bad("--depths values must be positive");
        }
        if self.params.scenarios.is_empty() && self.params.depths.is_empty() {
            return bad("nothing to measure: no scenarios and no depths");
        }
        // Every model reference parses before the command writes anything (its journal).
        for m in &self.models {
            ModelRef::parse(m, self.gguf_file.as_deref())?;
        }
        Ok(())
    }

    pub fn settings(&self) -> RunParams {
        self.params.clone()
    }

    /// One job per model × threads × dtype, labelled uniquely.
    pub fn jobs(&self) -> Result<Vec<Job>> {
        self.validate()?;
        let threads: Vec<Option<usize>> = if self.threads.is_empty() {
            vec![Some(crate::env::cores())]
        } else {
            self.threads.iter().map(|t| Some(*t)).collect()
        };
        let dtypes: Vec<Option<String>> = if self.dtypes.is_empty() {
            vec![None]
        } else {
            self.dtypes.iter().cloned().map(Some).collect()
        };
        let mut jobs: Vec<Job> = Vec::new();
        for m in &self.models {
            let model = ModelRef::parse(m, self.gguf_file.as_deref())?;
            let local = model.is_local();
            // Threads and dtypes mean nothing to a remote server: one job each.
            let (ts, ds) = if local {
                (threads.clone(), dtypes.clone())
            } else {
                (vec![None], vec![None])
            };
            for t in &ts {
                for d in &ds {
                    let mut label = model.short_name();
                    if local && self.threads.len() > 1 {
                        label.push_str(&format!(" t{}", t.unwrap_or(0)));
                    }
                    if let Some(d) = d.as_ref().filter(|_| self.dtypes.len() > 1) {
                        label.push_str(&format!(" {d}"));
                    }
                    jobs.push(Job {
                        label,
                        source: model.shown_source(),
                        model: model.clone(),
                        device: if local {
                            self.device.clone()
                        } else {
                            "remote".into()
                        },
                        threads: *t,
                        dtype: d.clone(),
                        max_context: self.max_context,
                        params: self.params.clone(),
                        cold_load: self.cold_load,
                        weight_cache: self.weight_cache.clone(),
                        kv_cache: self.kv_cache,
                        allowed_hosts: self.allowed_hosts.clone(),
                        timeout_s: self.timeout_s,
                    });
                }
            }
        }
        // Two models with the same file name in different folders still need distinct labels.
        for i in 0..jobs.len() {
            let dupes = jobs[..i]
                .iter()
                .filter(|j| j.label == jobs[i].label)
                .count();
            if dupes > 0 {
                jobs[i].label = format!("{} #{}", jobs[i].label, dupes + 1);
            }
        }
        Ok(jobs)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn model_refs_parse() {
        assert_eq!(
            ModelRef::parse("openai:http://127.0.0.1:8080/v1/#qwen", None).unwrap(),
            ModelRef::Openai {
                base_url: "http://127.0.0.1:8080/v1".into(),
                model: "qwen".into()
            }
        );
        assert!(ModelRef::parse("openai:http://127.0.0.1:8080/v1", None).is_err());
        assert!(ModelRef::parse("openai:ftp://127.0.0.1/v1#m", None).is_err());
        assert_eq!(
            ModelRef::parse("/m/tl-q4_0.gguf", None)
                .unwrap()
                .short_name(),
            "tl-q4_0"
        );
        assert_eq!(
            ModelRef::parse("/m/tiny-hf/", None).unwrap().short_name(),
            "tiny-hf"
        );
    }

    #[test]
    fn sweeps_expand_to_labelled_jobs() {
        let cfg = BenchConfig {
            models: vec![
                "/a/m.gguf".into(),
                "/b/m.gguf".into(),
                "openai:http://localhost:1/v1#x".into(),
            ],
            threads: vec![1, 2],
            ..BenchConfig::default()
        };
        let jobs = cfg.jobs().unwrap();
        let labels: Vec<&str> = jobs.iter().map(|j| j.label.as_str()).collect();
        assert_eq!(labels, ["m t1", "m t2", "m t1 #2", "m t2 #2", "x"]);
        assert_eq!(jobs[1].threads, Some(2));
        assert_eq!(jobs[4].threads, None);
        let default_threads = BenchConfig {
            models: vec!["m.gguf".into()],
            ..BenchConfig::default()
        };
        assert_eq!(
            default_threads.jobs().unwrap()[0].threads,
            Some(crate::env::cores())
        );
        assert!(
            BenchConfig {
                params: RunParams {
                    repetitions: 0,
                    ..default_threads.params.clone()
                },
                ..default_threads
            }
            .jobs()
            .is_err()
        );
    }
}
