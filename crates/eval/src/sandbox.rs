//! Runs untrusted Python (model-written code plus its tests) in a contained child process.
//!
//! Containment, each layer independent of the others:
//! - its own temporary directory as the working directory, and a scrubbed environment
//!   (`PATH`, `HOME` = that directory, `LANG`, `PYTHONHASHSEED`; nothing inherited);
//! - `python3 -I` (isolated mode: no user site, no `PYTHON*` variables, no script dir on the path);
//! - rlimits: CPU seconds, address space, file size, open files, no core dumps, process count;
//! - a new session, so the whole process group is killed with SIGKILL at the wall-clock timeout
//!   (and after every run, for stragglers);
//! - where the system allows it, new network and mount namespaces: no interface but a downed
//!   loopback, so no connection can be opened; private tmpfs over `/tmp`, `/var/tmp`, `/dev/shm`
//!   and a read-only remount of `/`;
//! - when running as root, the child drops to a dedicated unprivileged uid/gid
//!   ([`SANDBOX_UID`]), which makes `RLIMIT_NPROC` effective (root ignores it) and lets every
//!   process of that uid be killed after the run.
//!
//! [`Sandbox::new`] probes which layers work here and records them in [`Isolation`]; runs are
//! serialised within the process, and across processes when the uid is dropped (a lock file).

use std::ffi::CString;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Uid and gid the child runs as when the evaluator runs as root (not in /etc/passwd; used only here).
pub const SANDBOX_UID: u32 = 64_975;

static RUN_LOCK: Mutex<()> = Mutex::new(());

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    /// Wall-clock timeout for one program.
    pub timeout_s: f64,
    pub cpu_s: u64,
    pub memory_bytes: u64,
    pub file_bytes: u64,
    /// Processes the sandbox uid may have (only enforced when the uid is dropped or counted).
    pub processes: u64,
    pub open_files: u64,
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
        }
    }
}

/// Which containment layers are active (probed once).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Isolation {
    pub python: PathBuf,
    pub python_version: String,
    /// New network namespace: no network at all.
    pub network_namespace: bool,
    /// New mount namespace with private /tmp and read-only root.
    pub mount_namespace: bool,
    /// Runs as [`SANDBOX_UID`] (evaluator is root).
    pub dropped_uid: Option<u32>,
    pub limits: Limits,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunOutcome {
    pub passed: bool,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub wall_s: f64,
    /// Last 2,000 bytes of stdout and stderr.
    pub stdout_tail: String,
    pub stderr_tail: String,
}

impl RunOutcome {
    /// Short reason for the audit trail.
    pub fn reason(&self) -> String {
        if self.passed {
            return "passed".into();
        }
        if self.timed_out {
            return format!("timed out after {:.1} s", self.wall_s);
        }
        if let Some(s) = self.signal {
            return format!("killed by signal {s}");
        }
        let last = self
            .stderr_tail
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        format!(
            "exit code {}: {}",
            self.exit_code.unwrap_or(-1),
            last.trim()
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Mode {
    net_mount: bool,
    drop_uid: bool,
}

pub struct Sandbox {
    pub isolation: Isolation,
    mode: Mode,
    nproc_limit: u64,
}

fn tail(bytes: &[u8], n: usize) -> String {
    let from = bytes.len().saturating_sub(n);
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

fn python_version_of(exe: &Path) -> String {
    Command::new(exe)
        .args(["-c", "import sys; print(sys.version.split()[0])"])
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Finds the real python3 binary (following version-manager shims) and its version.
fn find_python() -> Result<(PathBuf, String)> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys; print(sys.executable); print(sys.version.split()[0])",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            Error::Sandbox(format!(
                "cannot run python3 (needed for HumanEval/MBPP): {e}"
            ))
        })?;
    if !out.status.success() {
        return Err(Error::Sandbox(format!(
            "python3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let exe = lines
        .next()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("python3");
    let version = lines.next().unwrap_or("").trim().to_string();
    Ok((PathBuf::from(exe), version))
}

fn count_processes_of(uid: u32) -> u64 {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 0;
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|e| proc_uid(&e.path()) == Some(uid))
        .count() as u64
}

/// Real uid of a process.
fn proc_uid(dir: &Path) -> Option<u32> {
    let s = std::fs::read_to_string(dir.join("status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// SIGKILLs every process whose real uid is the sandbox uid (only used when it was dropped to):
/// a helper switches to that uid and calls `kill(-1, SIGKILL)`, which reaches all of them at
/// once (a fork bomb cannot outrun it), until none is left.
fn reap_uid(uid: u32) {
    for _ in 0..200 {
        if count_processes_of(uid) == 0 {
            return;
        }
        // Zombies (already dead, waiting for init to reap them) still count against
        // RLIMIT_NPROC, so wait for them too; killing them again is harmless.
        let mut cmd = Command::new("/bin/true");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(uid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                libc::kill(-1, libc::SIGKILL);
                Ok(())
            });
        }
        if let Ok(mut c) = cmd.spawn() {
            let _ = c.wait();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Exclusive advisory lock on a per-uid file in the temp dir, released when the file closes.
fn uid_lock() -> Result<std::fs::File> {
    let path = std::env::temp_dir().join(format!("bakeoff-sandbox-{SANDBOX_UID}.lock"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    f.lock().map_err(|e| Error::io(&path, e))?;
    Ok(f)
}

fn set_limit(res: libc::__rlimit_resource_t, soft: u64, hard: u64) -> std::io::Result<()> {
    let r = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: setrlimit reads a valid rlimit struct.
    if unsafe { libc::setrlimit(res, &r) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Everything the child needs, prepared before fork (the child must not allocate).
struct Prep {
    dir: CString,

    /// Folders to create inside a fresh tmpfs, outermost first, ending with the work dir.
    recreate: Vec<CString>,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
}

const HELD_FD: i32 = 1000;
const HELD_FD_PATH: &std::ffi::CStr = c"/proc/self/fd/1000";

const TMPFS_DIRS: [&str; 3] = ["/tmp", "/var/tmp", "/dev/shm"];

impl Prep {
    fn new(dir: &Path) -> Result<Self> {
        let c =
            |s: &str| CString::new(s).map_err(|_| Error::Sandbox(format!("path with NUL: {s:?}")));
        let dir_s = dir
            .to_str()
            .ok_or_else(|| Error::Sandbox(format!("non-UTF-8 path {}", dir.display())))?;
        let mut recreate = Vec::new();
        if let Some(base) = TMPFS_DIRS.iter().find(|b| dir.starts_with(b)) {
            let mut cur = PathBuf::from(base);
            for comp in dir
                .strip_prefix(base)
                .map_err(|e| Error::Sandbox(e.to_string()))?
                .components()
            {
                cur.push(comp);
                recreate.push(c(&cur.to_string_lossy())?);
            }
        }
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Ok(Self {
            dir: c(dir_s)?,
            recreate,
            uid_map: format!("{uid} {uid} 1\n").into_bytes(),
            gid_map: format!("{gid} {gid} 1\n").into_bytes(),
        })
    }
}

/// Writes `data` to a /proc file (child side, no allocation).
unsafe fn write_proc(path: &std::ffi::CStr, data: &[u8]) -> bool {
    // SAFETY: valid C string and buffer; the fd is closed before returning.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        libc::close(fd);
        n == data.len() as isize
    }
}

/// Runs in the child between fork and exec: only async-signal-safe system calls, no allocation.
fn child_setup(
    mode: Mode,
    limits: &Limits,
    nproc: u64,
    is_root: bool,
    prep: &Prep,
) -> std::io::Result<()> {
    let err = std::io::Error::last_os_error;
    // SAFETY: plain system calls on the forked child's own state; every pointer is a C string
    // prepared before fork or a static one.
    unsafe {
        if libc::setsid() < 0 {
            return Err(err());
        }
        if mode.net_mount {
            let flags = if is_root {
                libc::CLONE_NEWNET | libc::CLONE_NEWNS
            } else {
                libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::CLONE_NEWNS
            };
            if libc::unshare(flags) != 0 {
                return Err(err());
            }
            if !is_root {
                // Identity map, so files keep their owner; setgroups must be denied first.
                if !write_proc(c"/proc/self/setgroups", b"deny")
                    || !write_proc(c"/proc/self/uid_map", &prep.uid_map)
                    || !write_proc(c"/proc/self/gid_map", &prep.gid_map)
                {
                    return Err(err());
                }
            }
            // Never let a mount below propagate back to the host.
            if libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(err());
            }
            // Give the work dir its own writable mount before the root goes read-only, and keep
            // a handle on it (fd HELD_FD) in case a tmpfs below covers its path.
            if libc::mount(
                prep.dir.as_ptr(),
                prep.dir.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                return Err(err());
            }
            let fd = libc::open(prep.dir.as_ptr(), libc::O_PATH | libc::O_DIRECTORY);
            if fd < 0 || libc::dup2(fd, HELD_FD) < 0 {
                return Err(err());
            }
            libc::close(fd);
            for dir in [c"/tmp", c"/var/tmp", c"/dev/shm"] {
                // A missing folder is fine.
                libc::mount(
                    c"tmpfs".as_ptr(),
                    dir.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV,
                    c"size=16m,mode=1777".as_ptr().cast(),
                );
            }
            if !prep.recreate.is_empty() {
                // The work dir's path is now inside a fresh tmpfs: recreate it there and bind
                // the real folder onto it.
                for d in &prep.recreate {
                    libc::mkdir(d.as_ptr(), 0o755);
                }
                if libc::mount(
                    HELD_FD_PATH.as_ptr(),
                    prep.dir.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(err());
                }
            }
            libc::close(HELD_FD);
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                std::ptr::null(),
            ) != 0
            {
                return Err(err());
            }
            if libc::chdir(prep.dir.as_ptr()) != 0 {
                return Err(err());
            }
        }
        if mode.drop_uid {
            if libc::setgroups(0, std::ptr::null()) != 0 {
                return Err(err());
            }
            if libc::setgid(SANDBOX_UID) != 0 || libc::setuid(SANDBOX_UID) != 0 {
                return Err(err());
            }
        }
    }
    set_limit(libc::RLIMIT_CPU, limits.cpu_s, limits.cpu_s + 1)?;
    set_limit(libc::RLIMIT_AS, limits.memory_bytes, limits.memory_bytes)?;
    set_limit(libc::RLIMIT_FSIZE, limits.file_bytes, limits.file_bytes)?;
    set_limit(libc::RLIMIT_NOFILE, limits.open_files, limits.open_files)?;
    set_limit(libc::RLIMIT_CORE, 0, 0)?;
    set_limit(libc::RLIMIT_NPROC, nproc, nproc)?;
    Ok(())
}

/// Whether any user may execute `path` (every ancestor folder and the file itself have o+x).
fn world_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Ok(real) = std::fs::canonicalize(path) else {
        return false;
    };
    real.ancestors()
        .all(|p| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// A python3 that an unprivileged uid can run: `preferred` if world-executable, else a system one.
fn python_for_other_uid(preferred: &Path) -> Option<PathBuf> {
    std::iter::once(preferred.to_path_buf())
        .chain(["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"].map(PathBuf::from))
        .find(|p| world_executable(p))
}

impl Sandbox {
    /// Finds python3 and probes which isolation layers this system allows.
    pub fn new(limits: Limits) -> Result<Self> {
        let (python, python_version) = find_python()?;
        // SAFETY: getuid has no preconditions.
        let is_root = unsafe { libc::getuid() } == 0;
        let candidates = [
            Mode {
                net_mount: true,
                drop_uid: is_root,
            },
            Mode {
                net_mount: false,
                drop_uid: is_root,
            },
            Mode {
                net_mount: true,
                drop_uid: false,
            },
            Mode {
                net_mount: false,
                drop_uid: false,
            },
        ];
        let mut chosen = None;
        for mode in candidates {
            let exe = if mode.drop_uid {
                match python_for_other_uid(&python) {
                    Some(p) => p,
                    None => continue,
                }
            } else {
                python.clone()
            };
            let version = if exe == python {
                python_version.clone()
            } else {
                python_version_of(&exe)
            };
            let sb = Sandbox {
                isolation: Isolation {
                    python: exe,
                    python_version: version,
                    network_namespace: mode.net_mount,
                    mount_namespace: mode.net_mount,
                    dropped_uid: mode.drop_uid.then_some(SANDBOX_UID),
                    limits: limits.clone(),
                },
                mode,
                nproc_limit: 0,
            }
            .with_nproc();
            // The probe must also show that the network is really gone when claimed.
            let probe = if mode.net_mount {
                "import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\nexcept OSError as e:\n    import errno\n    raise SystemExit(0 if e.errno in (errno.ENETUNREACH, errno.EADDRNOTAVAIL) else 3)\nraise SystemExit(4)\n"
            } else {
                "print('ok')\n"
            };
            let r = sb.run_python(probe);
            if std::env::var_os("BAKEOFF_SANDBOX_DEBUG").is_some() {
                eprintln!("sandbox probe {mode:?}: {r:?}");
            }
            if let Ok(out) = r
                && out.passed
            {
                chosen = Some(sb);
                break;
            }
        }
        chosen.ok_or_else(|| {
            Error::Sandbox(format!(
                "{} cannot run even without isolation",
                python.display()
            ))
        })
    }

    fn with_nproc(mut self) -> Self {
        self.nproc_limit = if self.mode.drop_uid {
            self.isolation.limits.processes
        } else {
            // SAFETY: getuid has no preconditions.
            let uid = unsafe { libc::getuid() };
            count_processes_of(uid) + self.isolation.limits.processes
        };
        self
    }

    /// Runs one Python program; `passed` means exit status 0 before the timeout.
    pub fn run_python(&self, program: &str) -> Result<RunOutcome> {
        let _guard = RUN_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        // The reaping after the run kills every process of the sandbox uid, so two evaluators
        // on one machine (two `bakeoff eval`, or parallel test binaries) must not overlap
        // either: an advisory lock file serialises them across processes.
        let _uid_lock = if self.mode.drop_uid {
            Some(uid_lock()?)
        } else {
            None
        };
        let dir = tempfile_dir()?;
        let result = self.run_in(dir.path(), program);
        if self.mode.drop_uid {
            reap_uid(SANDBOX_UID);
        }
        result
    }

    fn run_in(&self, dir: &Path, program: &str) -> Result<RunOutcome> {
        use std::os::unix::fs::PermissionsExt;
        let prog = dir.join("prog.py");
        std::fs::write(&prog, program).map_err(|e| Error::io(&prog, e))?;
        if self.mode.drop_uid {
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777));
            let _ = std::fs::set_permissions(&prog, std::fs::Permissions::from_mode(0o644));
        }
        let out_path = dir.join("stdout.txt");
        let err_path = dir.join("stderr.txt");
        let out_f = std::fs::File::create(&out_path).map_err(|e| Error::io(&out_path, e))?;
        let err_f = std::fs::File::create(&err_path).map_err(|e| Error::io(&err_path, e))?;
        let mut cmd = Command::new(&self.isolation.python);
        cmd.args(["-I", "prog.py"])
            .current_dir(dir)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", dir)
            .env("LANG", "C.UTF-8")
            .env("PYTHONHASHSEED", "0")
            .stdin(Stdio::null())
            .stdout(out_f)
            .stderr(err_f);
        let mode = self.mode;
        let limits = self.isolation.limits.clone();
        let nproc = self.nproc_limit;
        let prep = Prep::new(dir)?;
        // SAFETY: getuid has no preconditions.
        let is_root = unsafe { libc::getuid() } == 0;
        // SAFETY: the closure only makes async-signal-safe system calls (see child_setup).
        unsafe {
            cmd.pre_exec(move || child_setup(mode, &limits, nproc, is_root, &prep));
        }
        let start = Instant::now();
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::Sandbox(format!("cannot start python: {e}")))?;
        let pgid = child.id() as i32;
        let deadline = Duration::from_secs_f64(self.isolation.limits.timeout_s);
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) => {}
                Err(e) => return Err(Error::Sandbox(format!("wait: {e}"))),
            }
            if start.elapsed() >= deadline {
                timed_out = true;
                // SAFETY: signals the child's own process group (setsid made pgid = pid).
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
                break child
                    .wait()
                    .map_err(|e| Error::Sandbox(format!("wait: {e}")))?;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let wall_s = start.elapsed().as_secs_f64();
        // Stragglers left in the group (daemonised children) go too.
        // SAFETY: as above.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let read = |p: &Path| {
            let mut buf = Vec::new();
            if let Ok(f) = std::fs::File::open(p) {
                let _ = f.take(16 << 20).read_to_end(&mut buf);
            }
            buf
        };
        let stdout = read(&out_path);
        let stderr = read(&err_path);
        // A busy loop can reach RLIMIT_CPU (SIGXCPU) before the wall-clock deadline on an idle
        // machine; either way the program ran out of time, and the audit says so.
        let timed_out = timed_out || status.signal() == Some(libc::SIGXCPU);
        Ok(RunOutcome {
            passed: !timed_out && status.success(),
            exit_code: status.code(),
            signal: status.signal(),
            timed_out,
            wall_s,
            stdout_tail: tail(&stdout, 2000),
            stderr_tail: tail(&stderr, 2000),
        })
    }
}

/// A fresh private directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> Result<TempDir> {
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
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(TempDir(p)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&p, e)),
        }
    }
    Err(Error::Sandbox("cannot create a temporary directory".into()))
}
