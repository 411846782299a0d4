//! Writing files so that a crash, a kill or a full disk never leaves a half-written one behind.
//!
//! Every results, report and record file goes through [`write_atomic`] (or
//! [`write_atomic_with`] for streamed output): the bytes go to a temporary file in the same
//! folder, are flushed to disk, and the temporary is renamed over the target. A reader sees
//! either the old file or the complete new one, never a prefix; the rename is atomic only
//! within one file system, which is why the temporary lives next to the target.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// The marker every temporary carries, so a leftover one (from a killed process) is
/// recognisable as ours and never mistaken for a results file.
pub const TEMP_MARKER: &str = ".bakeoff-tmp";

/// Writes `bytes` to `path` atomically, creating the parent folder if needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Writes whatever `fill` produces to `path` atomically. If `fill` fails, the target keeps its
/// old content (or stays absent) and the temporary is removed.
pub fn write_atomic_with<F>(path: &Path, fill: F) -> io::Result<()>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.to_path_buf()
        }
        None => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file to write", path.display()),
        )
    })?;
    let (tmp, file) = create_temp(&dir, &name.to_string_lossy())?;
    let result = (|| {
        let mut w = BufWriter::new(file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        // The temporary is ours and incomplete; a failure to remove it must not hide the
        // error that matters.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(&dir);
    Ok(())
}

/// Creates a fresh temporary next to the target. The process id keeps concurrent writers
/// apart; the attempt number covers one process writing the same target twice at once.
fn create_temp(dir: &Path, name: &str) -> io::Result<(PathBuf, File)> {
    let pid = std::process::id();
    let mut attempt = 0u32;
    loop {
        let tmp = dir.join(format!(".{name}.{pid}.{attempt}{TEMP_MARKER}"));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 1000 => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

/// Makes the rename itself durable. Best effort: some file systems refuse to open or sync a
/// folder, and the file's content is already on disk by then.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// An append-only JSON-lines journal reopened after an interruption: its records, and the file
/// open for appending. Only the last line may be cut short (the process died mid-write); it is
/// dropped and the journal rewritten whole (atomically), so appending goes on at a line boundary.
/// Any other unreadable line is an error naming its number.
pub fn reopen_jsonl(path: &Path) -> io::Result<(Vec<serde_json::Value>, File)> {
    let text = std::fs::read_to_string(path)?;
    let lines: Vec<&str> = text.lines().collect();
    let mut records: Vec<serde_json::Value> = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(v) => records.push(v),
            Err(_) if i + 1 == lines.len() && i > 0 => {}
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("line {}: {e}", i + 1),
                ));
            }
        }
    }
    let mut whole = String::new();
    for v in &records {
        whole.push_str(&v.to_string());
        whole.push('\n');
    }
    write_atomic(path, whole.as_bytes())?;
    let file = OpenOptions::new().append(true).open(path)?;
    Ok((records, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temporaries(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(TEMP_MARKER))
            .collect()
    }

    #[test]
    fn writes_and_replaces_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/results.json");
        write_atomic(&p, b"first").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        write_atomic(&p, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second, longer");
        assert!(temporaries(&dir.path().join("sub")).is_empty());
    }

    #[test]
    fn a_failure_mid_write_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("results.json");
        write_atomic(&p, b"{\"old\": true}\n").unwrap();
        let err = write_atomic_with(&p, |w| {
            w.write_all(b"{\"new\": ")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"old\": true}\n");
        assert!(temporaries(dir.path()).is_empty());
    }

    #[test]
    fn a_failure_on_a_new_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("report.md");
        write_atomic_with(&p, |_| Err(io::Error::other("interrupted"))).unwrap_err();
        assert!(!p.exists());
        assert!(temporaries(dir.path()).is_empty());
    }

    #[test]
    fn a_path_without_a_file_name_is_refused() {
        let err = write_atomic(Path::new("/"), b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn a_journal_cut_mid_line_reopens_at_a_line_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.jsonl");
        std::fs::write(&p, "{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        let (recs, mut f) = reopen_jsonl(&p).unwrap();
        assert_eq!(recs.len(), 2);
        f.write_all(b"{\"d\":4}\n").unwrap();
        drop(f);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n{\"d\":4}\n"
        );
        std::fs::write(&p, "{\"a\":1}\nbroken\n{\"b\":2}\n").unwrap();
        let e = reopen_jsonl(&p).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }
}
