//! The audit trail: one JSON object per line for every prompt, raw output, extracted answer and
//! verdict, so any score in the results file can be recomputed and inspected.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{Error, Result};

pub struct Audit {
    sink: Sink,
    pub records: usize,
}

enum Sink {
    File {
        path: PathBuf,
        w: std::io::BufWriter<std::fs::File>,
    },
    Memory(Vec<Value>),
}

impl Audit {
    pub fn to_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Self {
            sink: Sink::File {
                path,
                w: std::io::BufWriter::new(f),
            },
            records: 0,
        })
    }

    /// Keeps records in memory (tests).
    pub fn in_memory() -> Self {
        Self {
            sink: Sink::Memory(Vec::new()),
            records: 0,
        }
    }

    pub fn record(&mut self, rec: Value) -> Result<()> {
        self.records += 1;
        match &mut self.sink {
            Sink::File { path, w } => {
                serde_json::to_writer(&mut *w, &rec)?;
                w.write_all(b"\n").map_err(|e| Error::io(&*path, e))
            }
            Sink::Memory(v) => {
                v.push(rec);
                Ok(())
            }
        }
    }

    pub fn flush(&mut self) -> Result<()> {
        if let Sink::File { path, w } = &mut self.sink {
            w.flush().map_err(|e| Error::io(&*path, e))?;
        }
        Ok(())
    }

    /// Records kept in memory (empty for a file sink).
    pub fn memory(&self) -> &[Value] {
        match &self.sink {
            Sink::Memory(v) => v,
            Sink::File { .. } => &[],
        }
    }
}
