//! The evaluator's plumbing: descriptors, pipes, the program's sealed memfd, bounded output
//! buffers, the children's status report and the run's temporary folder.

#[allow(unused_imports)]
use super::*;

/// A descriptor closed on drop.
pub(super) struct Fd(pub(super) i32);

impl Drop for Fd {
    fn drop(&mut self) {
        if self.0 >= 0 {
            // SAFETY: the descriptor is owned by this value.
            unsafe {
                libc::close(self.0);
            }
        }
    }
}

/// Moves a new descriptor to a number >= 200, close-on-exec, so the children's fixed numbers
/// (0..=3 and 100..=104) never collide with it.
pub(super) fn high(fd: i32) -> Result<Fd> {
    if fd < 0 {
        return Err(Error::Sandbox(format!(
            "cannot create a descriptor: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fd is a descriptor this function owns.
    let h = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 200) };
    unsafe {
        libc::close(fd);
    }
    if h < 0 {
        return Err(Error::Sandbox(format!(
            "cannot move a descriptor: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(Fd(h))
}

pub(super) fn pipe() -> Result<(Fd, Fd)> {
    let mut p = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::Sandbox(format!(
            "pipe: {}",
            std::io::Error::last_os_error()
        )));
    }
    let r = high(p[0])?;
    let w = high(p[1])?;
    // SAFETY: setting a flag on our own descriptor.
    unsafe {
        libc::fcntl(r.0, libc::F_SETFL, libc::O_NONBLOCK);
    }
    Ok((r, w))
}

/// The program's source in a sealed memfd: the program reads it as stdin and cannot change
/// it, and there is no file on disk for anything to swap.
pub(super) fn program_fd(source: &str) -> Result<Fd> {
    // SAFETY: memfd_create with a static name.
    let fd = unsafe {
        libc::memfd_create(
            c"bakeoff-program".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    let fd = high(fd)?;
    let bytes = source.as_bytes();
    let mut off = 0;
    while off < bytes.len() {
        // SAFETY: writes from a live slice.
        let n = unsafe { libc::write(fd.0, bytes[off..].as_ptr().cast(), bytes.len() - off) };
        if n <= 0 {
            return Err(Error::Sandbox(format!(
                "memfd write: {}",
                std::io::Error::last_os_error()
            )));
        }
        off += n as usize;
    }
    // SAFETY: plain calls on our own descriptor.
    unsafe {
        libc::fcntl(
            fd.0,
            libc::F_ADD_SEALS,
            libc::F_SEAL_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL,
        );
        libc::lseek(fd.0, 0, libc::SEEK_SET);
    }
    Ok(fd)
}

/// Keeps the last `keep` bytes of a stream and counts all of it.
pub(super) struct TailBuf {
    pub(super) buf: Vec<u8>,
    pub(super) keep: usize,
    pub(super) total: u64,
}

impl TailBuf {
    pub(super) fn new(keep: usize) -> Self {
        Self {
            buf: Vec::new(),
            keep,
            total: 0,
        }
    }

    /// Reads what is available; false at end of stream.
    pub(super) fn pull(&mut self, fd: i32) -> bool {
        let mut chunk = [0u8; 65536];
        loop {
            // SAFETY: reads into a stack buffer.
            let n = unsafe { libc::read(fd, chunk.as_mut_ptr().cast(), chunk.len()) };
            if n > 0 {
                let n = n as usize;
                self.total += n as u64;
                self.buf.extend_from_slice(&chunk[..n]);
                if self.buf.len() > 2 * self.keep {
                    let cut = self.buf.len() - self.keep;
                    self.buf.drain(..cut);
                }
                continue;
            }
            if n == 0 {
                return false;
            }
            let e = std::io::Error::last_os_error().raw_os_error();
            if e == Some(libc::EINTR) {
                continue;
            }
            return e == Some(libc::EAGAIN);
        }
    }
}

pub(super) fn random_token() -> String {
    let a: u64 = rand::random();
    let b: u64 = rand::random();
    format!("bakeoff-done-{a:016x}{b:016x}")
}

/// The line appended after the program: reached only if everything before it (the tests) ran
/// and returned normally.
pub(super) fn token_line(token: &str) -> String {
    format!("\n\nimport os as _bakeoff_os\n_bakeoff_os.write(3, b\"{token}\\n\")\n")
}

#[derive(Default)]
pub(super) struct Report {
    pub(super) init: Option<i32>,
    pub(super) status: Option<i32>,
    pub(super) error: Option<(u32, i32)>,
}

pub(super) fn parse_report(buf: &[u8]) -> Report {
    let mut r = Report::default();
    let mut i = 0;
    while i < buf.len() {
        match buf[i] {
            b'P' | b'S' if i + 5 <= buf.len() => {
                let v = i32::from_le_bytes([buf[i + 1], buf[i + 2], buf[i + 3], buf[i + 4]]);
                if buf[i] == b'P' {
                    r.init = Some(v);
                } else {
                    r.status = Some(v);
                }
                i += 5;
            }
            b'E' if i + 9 <= buf.len() => {
                let s = u32::from_le_bytes([buf[i + 1], buf[i + 2], buf[i + 3], buf[i + 4]]);
                let e = i32::from_le_bytes([buf[i + 5], buf[i + 6], buf[i + 7], buf[i + 8]]);
                r.error.get_or_insert((s, e));
                i += 9;
            }
            _ => break,
        }
    }
    r
}

/// A fresh private directory under the system temp dir, removed on drop: the mount point of
/// the minimal root (or the work folder itself without namespaces).
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) fn tempfile_dir() -> Result<TempDir> {
    use std::os::unix::fs::DirBuilderExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let base = std::env::temp_dir();
    for _ in 0..100 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "bakeoff-sbx-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let p = base.join(name);
        match std::fs::DirBuilder::new().mode(0o700).create(&p) {
            Ok(()) => return Ok(TempDir(p)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&p, e)),
        }
    }
    Err(Error::Sandbox("cannot create a temporary directory".into()))
}
