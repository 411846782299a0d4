//! The parent side: one child process per job, one after the other, with a live progress bar fed
//! by the children's progress lines. The children are the same executable started with a hidden
//! subcommand (`bakeoff bench-worker`), so nothing else needs installing.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::env;
use crate::error::{BenchError, Result};
use crate::job::{BenchConfig, Job};
use crate::journal::{Journal, job_key};
use crate::worker::{PROGRESS_PREFIX, Progress, error_chain};
use bakeoff_record::bench::{BenchReport, ModelResult};

/// How to start a worker: the program and the arguments before nothing else (it reads stdin).
#[derive(Clone, Debug)]
pub struct WorkerCommand {
    pub program: std::path::PathBuf,
    pub args: Vec<String>,
}

impl WorkerCommand {
    /// This executable with the hidden `bench-worker` subcommand.
    pub fn current_exe() -> Result<WorkerCommand> {
        let program =
            std::env::current_exe().map_err(|e| BenchError::io("current executable", e))?;
        Ok(WorkerCommand {
            program,
            args: vec!["bench-worker".into()],
        })
    }
}

/// Runs every job of `config` in its own child process and gathers the report. With a journal,
/// each finished job is recorded as it returns, and jobs the journal already holds are not run
/// again.
pub fn run(
    config: &BenchConfig,
    worker: &WorkerCommand,
    command: Vec<String>,
    progress: bool,
    mut journal: Option<&mut Journal>,
) -> Result<BenchReport> {
    let jobs = config.jobs()?;
    let started = env::unix_now();
    let environment = env::capture();
    let total: u64 = jobs.iter().map(Job::work_units).sum();
    let bar = if progress {
        let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} eta {eta} {msg}")
        {
            b.set_style(style.progress_chars("=> "));
        }
        b
    } else {
        ProgressBar::hidden()
    };
    let mut models = Vec::new();
    let mut base = 0;
    for job in &jobs {
        let key = job_key(job)?;
        if let Some(r) = journal.as_deref().and_then(|j| j.finished(&key)) {
            base += job.work_units();
            bar.set_position(base);
            bar.suspend(|| {
                eprintln!("{}: measured before the interruption, kept", job.label);
            });
            models.push(r);
            continue;
        }
        bar.set_message(job.label.clone());
        let r = run_child(worker, job, &bar, base);
        base += job.work_units();
        bar.set_position(base);
        let r = r.unwrap_or_else(|e| failed(job, &error_chain(&e)));
        if let Some(e) = &r.error {
            bar.println(format!("{}: {e}", job.label));
        }
        if let Some(j) = journal.as_deref_mut() {
            j.record(&key, &r)?;
        }
        models.push(r);
    }
    bar.finish_and_clear();
    let finished = env::unix_now();
    Ok(BenchReport {
        header: BenchReport::header(),
        run_id: format!("bench-{}", env::compact_time(started)),
        started_at: env::rfc3339(started),
        finished_at: env::rfc3339(finished),
        command,
        environment,
        settings: config.settings(),
        models,
    })
}

/// A result that only says what went wrong, for a child that returned nothing readable.
fn failed(job: &Job, msg: &str) -> ModelResult {
    let mut r = crate::worker::empty_result(job);
    r.worker_pid = 0;
    r.error = Some(msg.to_string());
    r
}

fn run_child(
    worker: &WorkerCommand,
    job: &Job,
    bar: &ProgressBar,
    base: u64,
) -> Result<ModelResult> {
    let start = Instant::now();
    let err = |m: String| BenchError::worker(&job.label, m);
    let mut child = Command::new(&worker.program)
        .args(&worker.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot start {}: {e}", worker.program.display())))?;
    let input = serde_json::to_string(job)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| err(format!("cannot send the job: {e}")))?;
    }
    // Progress lines move the bar; anything else the child prints is kept for error messages.
    let stderr = child.stderr.take();
    let bar2 = bar.clone();
    let reader = std::thread::spawn(move || {
        let mut other = Vec::new();
        let Some(stderr) = stderr else { return other };
        for line in BufReader::new(stderr)
            .lines()
            .map_while(std::result::Result::ok)
        {
            match line
                .strip_prefix(PROGRESS_PREFIX)
                .and_then(|j| serde_json::from_str::<Progress>(j).ok())
            {
                Some(p) => {
                    bar2.set_position(base + p.done);
                    bar2.set_message(p.what);
                }
                None => other.push(line),
            }
        }
        other
    });
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout
            .read_to_string(&mut out)
            .map_err(|e| err(format!("cannot read the result: {e}")))?;
    }
    let status = child
        .wait()
        .map_err(|e| err(format!("cannot wait for the worker: {e}")))?;
    let other = reader.join().unwrap_or_default();
    let tail = other
        .iter()
        .rev()
        .take(20)
        .rev()
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    let mut result: ModelResult = serde_json::from_str(out.trim()).map_err(|e| {
        err(format!(
            "{status}, no readable result ({e}){}",
            if tail.is_empty() {
                String::new()
            } else {
                format!("; stderr:\n{tail}")
            }
        ))
    })?;
    if !status.success() && result.error.is_none() {
        result.error = Some(format!("worker exited with {status}"));
    }
    result.job_s = start.elapsed().as_secs_f64();
    Ok(result)
}

/// Whether `path` looks like it could be written as a results file, checked before a long run.
pub fn check_out_path(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(BenchError::InvalidArgument(format!(
            "--out {} is a folder; give a file name",
            path.display()
        )));
    }
    Ok(())
}
