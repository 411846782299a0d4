//! `OUT.jobs.jsonl`: each finished job's result, appended and flushed as its worker returns, so an
//! interrupted `bakeoff bench` keeps every model already measured and `--resume` measures only
//! the rest. The journal is removed once the results file is written.
//!
//! Layout: the first line is `{"kind": "bakeoff-bench-jobs", "machine": …}`; every other line is
//! `{"key", "label", "result"}`, `key` being the SHA-256 of the job (model, sweep point, every
//! run parameter) and of the model file's size and modification time. Speeds from another machine
//! or another build must not be mixed into one table, so the machine line must match on resume.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use bakeoff_record::bench::{Environment, ModelResult};
use bakeoff_record::hash::sha256_hex;
use serde_json::{Value, json};

use crate::error::{BenchError, Result};
use crate::job::Job;

const KIND: &str = "bakeoff-bench-jobs";

/// Where the journal of a results file lives: beside it, named after it.
pub fn path_for(out: &Path) -> PathBuf {
    let mut name = out
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".jobs.jsonl");
    out.with_file_name(name)
}

pub struct Journal {
    path: PathBuf,
    w: BufWriter<File>,
    done: HashMap<String, ModelResult>,
}

/// What must not change between an interrupted run and its resumption.
fn machine(env: &Environment) -> Value {
    json!({
        "cpu_model": env.cpu_model, "cores": env.cores, "hostname": env.hostname,
        "bakeoff_version": env.bakeoff_version, "git_commit": env.git_commit,
    })
}

/// The job and the model file it will read: a replaced file is a different measurement.
pub fn job_key(job: &Job) -> Result<String> {
    let file = std::fs::metadata(&job.source).ok().map(|m| {
        let mtime = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos());
        json!([m.len(), mtime.map(|n| n.to_string())])
    });
    let v = json!([serde_json::to_value(job)?, file]);
    Ok(sha256_hex(v.to_string().as_bytes()))
}

impl Journal {
    /// Starts a new journal, replacing any earlier one.
    pub fn create(path: &Path, env: &Environment) -> Result<Self> {
        let f = File::create(path).map_err(|e| BenchError::io(path, e))?;
        let mut j = Self {
            path: path.to_path_buf(),
            w: BufWriter::new(f),
            done: HashMap::new(),
        };
        j.append(&json!({"kind": KIND, "machine": machine(env)}))?;
        Ok(j)
    }

    /// Opens an interrupted run's journal. A missing journal starts a new one (nothing was
    /// finished); one from another machine or build is refused; a last line cut short by the
    /// interruption is dropped; failed jobs are measured again.
    pub fn resume(path: &Path, env: &Environment) -> Result<Self> {
        if !path.exists() {
            return Self::create(path, env);
        }
        let bad = |msg: String| BenchError::Results {
            path: path.to_path_buf(),
            msg,
        };
        let (parsed, file) = bakeoff_record::fsio::reopen_jsonl(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                bad(e.to_string())
            } else {
                BenchError::io(path, e)
            }
        })?;
        let head = parsed
            .first()
            .ok_or_else(|| bad("empty; nothing to resume".into()))?;
        if head.get("kind").and_then(Value::as_str) != Some(KIND) {
            return Err(bad("not a bench jobs journal".into()));
        }
        let now = machine(env);
        if head.get("machine") != Some(&now) {
            return Err(BenchError::InvalidArgument(format!(
                "--resume: {} was measured on another machine or build ({}; now {now}); speeds from both cannot share one table, so drop --resume to measure again",
                path.display(),
                head.get("machine").unwrap_or(&Value::Null)
            )));
        }
        let mut done = HashMap::new();
        for (i, v) in parsed.iter().enumerate().skip(1) {
            let key = v.get("key").and_then(Value::as_str);
            let result = v
                .get("result")
                .map(|r| serde_json::from_value::<ModelResult>(r.clone()));
            match (key, result) {
                (Some(k), Some(Ok(r))) if r.error.is_none() => {
                    done.insert(k.to_string(), r);
                }
                (Some(_), Some(Ok(_))) => {}
                _ => return Err(bad(format!("line {}: not a job record", i + 1))),
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            w: BufWriter::new(file),
            done,
        })
    }

    /// The recorded result of a finished job, if any.
    pub fn finished(&self, key: &str) -> Option<ModelResult> {
        self.done.get(key).cloned()
    }

    pub fn record(&mut self, key: &str, result: &ModelResult) -> Result<()> {
        self.append(&json!({"key": key, "label": result.label, "result": result}))?;
        if result.error.is_none() {
            self.done.insert(key.to_string(), result.clone());
        }
        Ok(())
    }

    /// The run is written whole: the journal has served its purpose.
    pub fn finish(self) -> Result<()> {
        drop(self.w);
        std::fs::remove_file(&self.path).map_err(|e| BenchError::io(&self.path, e))
    }

    fn append(&mut self, v: &Value) -> Result<()> {
        serde_json::to_writer(&mut self.w, v)?;
        self.w
            .write_all(b"\n")
            .and_then(|()| self.w.flush())
            .map_err(|e| BenchError::io(&self.path, e))
    }
}
