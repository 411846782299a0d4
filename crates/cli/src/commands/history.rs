//! `bakeoff history`: the runs recorded by `compare` and `report`, and the difference between two.

use std::path::PathBuf;

use anyhow::{Context, Result};
use bakeoff_report::history::{History, format_diff, format_list};
use clap::Args;

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// The history database (default: bakeoff/history.sqlite under the user's data folder).
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// Show every summary figure of run OLD beside run NEW, with the relative change.
    #[arg(long, num_args = 2, value_names = ["OLD", "NEW"])]
    pub diff: Option<Vec<i64>>,
}

/// The database `compare`, `report` and `history` share unless `--db` says otherwise.
pub fn default_db() -> Result<PathBuf> {
    let base = dirs::data_dir().context(
        "no user data folder on this system (HOME unset?): pass --db PATH for the history database",
    )?;
    Ok(base.join("bakeoff").join("history.sqlite"))
}

pub fn db_path(db: &Option<PathBuf>) -> Result<PathBuf> {
    match db {
        Some(p) => Ok(p.clone()),
        None => default_db(),
    }
}

pub fn run(a: HistoryArgs) -> Result<()> {
    let path = db_path(&a.db)?;
    if !path.is_file() {
        anyhow::bail!(
            "no history database at {} (`bakeoff compare` and `bakeoff report` create it)",
            path.display()
        );
    }
    let h = History::open(&path)?;
    match a.diff.as_deref() {
        Some([old, new]) => {
            let rows = h.diff(*old, *new)?;
            print!(
                "{}",
                format_diff(*old, *new, (&h.labels(*old)?, &h.labels(*new)?), &rows)
            );
        }
        _ => print!("{}", format_list(&h.list()?)),
    }
    Ok(())
}
