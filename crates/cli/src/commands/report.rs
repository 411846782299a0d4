//! `bakeoff report`: the comparison report re-rendered from results files alone.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bakeoff_report::Inputs;
use bakeoff_report::history::{History, RunRecord};
use clap::Args;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Results files (bench JSON, eval results.json, answers.json, compare.json, quantize
    /// --measure JSON) or a `bakeoff compare` output folder.
    #[arg(required = true)]
    pub results: Vec<PathBuf>,
    /// Folder for report.md, report.html and charts/.
    #[arg(long, default_value = "bakeoff-report")]
    pub out: PathBuf,
    /// The history database (default: bakeoff/history.sqlite under the user's data folder).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Do not record this run in the history database.
    #[arg(long)]
    pub no_history: bool,
}

/// The catalog's files by SHA-256 → the repository of their original weights, so the report
/// finds the scores each model's authors published.
fn catalog_bases() -> Result<std::collections::BTreeMap<String, String>> {
    let catalog = bakeoff_engine::loader::catalog::Catalog::from_env()?;
    Ok(catalog
        .models
        .iter()
        .filter_map(|m| Some((m.sha256.clone()?.to_ascii_lowercase(), m.base.clone())))
        .collect())
}

/// Renders, writes and (unless told not to) records a report; shared with `compare`.
pub fn render_and_record(inputs: &Inputs, out: &Path, kind: &str, db: Option<&Path>) -> Result<()> {
    let mut inputs = inputs.clone();
    inputs.bases = catalog_bases()?;
    let rendered = bakeoff_report::render(&inputs)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let written = bakeoff_report::write(&rendered, out)?;
    if let Some(db) = db {
        let mut h = History::open(db)?;
        let command: Vec<String> = std::env::args().collect();
        let sources: Vec<String> = inputs
            .sources
            .iter()
            .map(|s| format!("{} sha256:{}", s.path, s.sha256))
            .collect();
        let id = h.record(&RunRecord {
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            kind,
            out_dir: out,
            command: &command,
            sources: &sources,
            summary: &rendered.summary,
        })?;
        eprintln!("recorded as run {id} in {}", db.display());
    }
    for (area, who) in &rendered.summary.verdicts {
        eprintln!("{area}: {who}");
    }
    eprintln!(
        "report: {} ({} files, {} charts)",
        out.join("report.html").display(),
        written.len(),
        rendered.doc.charts().count()
    );
    Ok(())
}

pub fn run(a: ReportArgs) -> Result<()> {
    let inputs = Inputs::load(&a.results)?;
    let db = if a.no_history {
        None
    } else {
        Some(super::history::db_path(&a.db)?)
    };
    render_and_record(&inputs, &a.out, "report", db.as_deref())
}
