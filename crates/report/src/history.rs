//! The run history: each report's metadata and summary figures in a SQLite database, so runs on
//! different versions or machines can be listed and compared figure by figure.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{ReportError, Result};
use crate::report::Summary;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_unix INTEGER NOT NULL,
    kind TEXT NOT NULL,
    out_dir TEXT NOT NULL,
    machine TEXT NOT NULL,
    git_commit TEXT,
    bakeoff_version TEXT NOT NULL,
    command TEXT NOT NULL,
    sources TEXT NOT NULL,
    verdicts TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    position INTEGER NOT NULL,
    label TEXT NOT NULL,
    source TEXT NOT NULL,
    synthetic INTEGER NOT NULL,
    PRIMARY KEY (run_id, position)
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (run_id, position, name)
);
";

/// What one run adds to the history.
pub struct RunRecord<'a> {
    pub created_unix: u64,
    /// `compare`, `compare --demo` or `report`.
    pub kind: &'a str,
    pub out_dir: &'a Path,
    pub command: &'a [String],
    /// The results files (with their SHA-256) the report came from.
    pub sources: &'a [String],
    pub summary: &'a Summary,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RunRow {
    pub id: i64,
    pub created_unix: i64,
    pub kind: String,
    pub out_dir: String,
    pub machine: String,
    pub git_commit: Option<String>,
    pub bakeoff_version: String,
    pub models: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DiffRow {
    /// 0 = model A, 1 = model B.
    pub position: i64,
    pub metric: String,
    pub old: Option<f64>,
    pub new: Option<f64>,
}

impl DiffRow {
    /// Relative change from the old run to the new one.
    pub fn change(&self) -> Option<f64> {
        match (self.old, self.new) {
            (Some(o), Some(n)) if o != 0.0 => Some((n - o) / o.abs()),
            _ => None,
        }
    }
}

pub struct History {
    conn: Connection,
    path: PathBuf,
}

impl History {
    /// Opens (creating when missing) the database at `path`, and its folder.
    pub fn open(path: &Path) -> Result<History> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| ReportError::io(dir, e))?;
        }
        let err = |source| ReportError::History {
            path: path.into(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(History {
            conn,
            path: path.into(),
        })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> ReportError + '_ {
        |source| ReportError::History {
            path: self.path.clone(),
            source,
        }
    }

    /// Adds a run; returns its id.
    pub fn record(&mut self, r: &RunRecord) -> Result<i64> {
        let path = self.path.clone();
        let err = |source| ReportError::History {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(err)?;
        let json = |v: &dyn erased::Ser| v.json();
        tx.execute(
            "INSERT INTO runs (created_unix, kind, out_dir, machine, git_commit, bakeoff_version, command, sources, verdicts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                r.created_unix as i64,
                r.kind,
                r.out_dir.display().to_string(),
                r.summary.machine,
                r.summary.git_commit,
                r.summary.bakeoff_version,
                json(&r.command.to_vec()),
                json(&r.sources.to_vec()),
                json(&r.summary.verdicts),
            ],
        )
        .map_err(err)?;
        let id = tx.last_insert_rowid();
        for (pos, m) in r.summary.models.iter().enumerate() {
            tx.execute(
                "INSERT INTO models (run_id, position, label, source, synthetic) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, pos as i64, m.label, m.source, m.synthetic],
            )
            .map_err(err)?;
            for (name, value) in &m.metrics {
                if value.is_finite() {
                    tx.execute(
                        "INSERT INTO metrics (run_id, position, name, value) VALUES (?1, ?2, ?3, ?4)",
                        params![id, pos as i64, name, value],
                    )
                    .map_err(err)?;
                }
            }
        }
        tx.commit().map_err(err)?;
        Ok(id)
    }

    /// Every run, oldest first.
    pub fn list(&self) -> Result<Vec<RunRow>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, created_unix, kind, out_dir, machine, git_commit, bakeoff_version FROM runs ORDER BY id",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map([], |row| {
                Ok(RunRow {
                    id: row.get(0)?,
                    created_unix: row.get(1)?,
                    kind: row.get(2)?,
                    out_dir: row.get(3)?,
                    machine: row.get(4)?,
                    git_commit: row.get(5)?,
                    bakeoff_version: row.get(6)?,
                    models: Vec::new(),
                })
            })
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err())?;
        let mut out = Vec::new();
        for mut r in rows {
            r.models = self.models(r.id)?;
            out.push(r);
        }
        Ok(out)
    }

    fn models(&self, run: i64) -> Result<Vec<String>> {
        let mut st = self
            .conn
            .prepare("SELECT label, synthetic FROM models WHERE run_id = ?1 ORDER BY position")
            .map_err(self.err())?;
        st.query_map([run], |row| {
            let label: String = row.get(0)?;
            let synth: bool = row.get(1)?;
            Ok(if synth {
                format!("{label} (synthetic)")
            } else {
                label
            })
        })
        .map_err(self.err())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(self.err())
    }

    fn exists(&self, run: i64) -> Result<bool> {
        Ok(self
            .conn
            .query_row("SELECT id FROM runs WHERE id = ?1", [run], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map_err(self.err())?
            .is_some())
    }

    fn metrics(&self, run: i64) -> Result<Vec<(i64, String, f64)>> {
        let mut st = self
            .conn
            .prepare("SELECT position, name, value FROM metrics WHERE run_id = ?1 ORDER BY position, name")
            .map_err(self.err())?;
        st.query_map([run], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err())
    }

    /// Every summary figure of two runs, model by model (A with A, B with B).
    pub fn diff(&self, old: i64, new: i64) -> Result<Vec<DiffRow>> {
        for id in [old, new] {
            if !self.exists(id)? {
                return Err(ReportError::HistoryQuery(format!(
                    "no run {id} in {} (`bakeoff history` lists them)",
                    self.path.display()
                )));
            }
        }
        let (mo, mn) = (self.metrics(old)?, self.metrics(new)?);
        let mut keys: Vec<(i64, String)> = mo
            .iter()
            .chain(&mn)
            .map(|(p, n, _)| (*p, n.clone()))
            .collect();
        keys.sort();
        keys.dedup();
        let get = |m: &[(i64, String, f64)], p: i64, n: &str| {
            m.iter().find(|(q, k, _)| *q == p && k == n).map(|x| x.2)
        };
        Ok(keys
            .into_iter()
            .map(|(p, n)| DiffRow {
                position: p,
                old: get(&mo, p, &n),
                new: get(&mn, p, &n),
                metric: n,
            })
            .collect())
    }

    /// The model labels of a run, for diff headings.
    pub fn labels(&self, run: i64) -> Result<Vec<String>> {
        self.models(run)
    }
}

/// Serialises any serde value for a TEXT column.
mod erased {
    pub trait Ser {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}

pub fn format_list(rows: &[RunRow]) -> String {
    let mut s = String::new();
    if rows.is_empty() {
        s.push_str("no runs recorded yet\n");
        return s;
    }
    let _ = writeln!(
        s,
        "{:>4}  {:<16}  {:<14}  {:<12}  {:<40}  output",
        "id", "when (UTC)", "kind", "commit", "models (A vs B)"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:>4}  {:<16}  {:<14}  {:<12}  {:<40}  {}",
            r.id,
            bakeoff_record::time::compact_time(r.created_unix as f64),
            r.kind,
            r.git_commit
                .as_deref()
                .map_or("-", |c| &c[..c.len().min(12)]),
            r.models.join(" vs "),
            r.out_dir
        );
    }
    s
}

pub fn format_diff(old: i64, new: i64, labels: (&[String], &[String]), rows: &[DiffRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "run {old} → run {new}");
    let f = |x: Option<f64>| x.map_or("-".to_string(), crate::report::sig);
    let mut pos = -1;
    for r in rows {
        if r.position != pos {
            pos = r.position;
            let name = |l: &[String]| l.get(pos as usize).cloned().unwrap_or_else(|| "-".into());
            let _ = writeln!(
                s,
                "\nmodel {}: {} → {}",
                if pos == 0 { "A" } else { "B" },
                name(labels.0),
                name(labels.1)
            );
            let _ = writeln!(
                s,
                "  {:<34} {:>12} {:>12} {:>9}",
                "metric", "old", "new", "change"
            );
        }
        let _ = writeln!(
            s,
            "  {:<34} {:>12} {:>12} {:>9}",
            r.metric,
            f(r.old),
            f(r.new),
            r.change()
                .map_or("-".into(), |c| format!("{:+.1}%", c * 100.0))
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ModelSummary;
    use std::collections::BTreeMap;

    fn summary(tok_s: f64) -> Summary {
        let mut metrics = BTreeMap::new();
        metrics.insert("decode_tok_s.short".to_string(), tok_s);
        metrics.insert("peak_rss_bytes".to_string(), 1e9);
        Summary {
            models: vec![
                ModelSummary {
                    label: "a".into(),
                    source: "a.gguf".into(),
                    synthetic: true,
                    metrics: metrics.clone(),
                },
                ModelSummary {
                    label: "b".into(),
                    source: "b.gguf".into(),
                    synthetic: false,
                    metrics,
                },
            ],
            machine: "test".into(),
            git_commit: Some("abc".into()),
            bakeoff_version: "0.1.0".into(),
            verdicts: vec![("speed".into(), "a".into())],
        }
    }

    #[test]
    fn record_list_and_diff() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| ReportError::io("tempdir", e))?;
        let db = dir.path().join("sub/history.sqlite");
        let mut h = History::open(&db)?;
        let cmd = vec!["bakeoff".to_string(), "compare".to_string()];
        let s1 = summary(10.0);
        let s2 = summary(12.5);
        let rec = |s| RunRecord {
            created_unix: 1_700_000_000,
            kind: "compare",
            out_dir: Path::new("out"),
            command: &cmd,
            sources: &[],
            summary: s,
        };
        let a = h.record(&rec(&s1))?;
        let b = h.record(&rec(&s2))?;
        let runs = h.list()?;
        assert_eq!(runs.len(), 2);
        assert_eq!(
            runs[0].models,
            vec!["a (synthetic)".to_string(), "b".to_string()]
        );
        let d = h.diff(a, b)?;
        let row = d
            .iter()
            .find(|r| r.position == 0 && r.metric == "decode_tok_s.short");
        assert_eq!(
            row.and_then(|r| r.change()).map(|c| (c * 1000.0).round()),
            Some(250.0)
        );
        let text = format_diff(a, b, (&h.labels(a)?, &h.labels(b)?), &d);
        assert!(text.contains("+25.0%"), "{text}");
        assert!(format_list(&runs).contains("a (synthetic) vs b"));
        // Reopening keeps the runs; a missing run is a clear error.
        drop(h);
        let h = History::open(&db)?;
        assert_eq!(h.list()?.len(), 2);
        let e = h
            .diff(a, 99)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("no run 99"), "{e}");
        Ok(())
    }
}
