//! Runs untrusted Python (model-written code plus its tests) in a contained child process.
//!
//! The full design, what it guarantees and what it does not, is in `docs/sandbox.md`. In short,
//! three processes are forked for each program:
//! - the *keeper* (in the evaluator's PID namespace) joins the run's cgroups, unshares new PID,
//!   mount, network, IPC and UTS namespaces (plus a user namespace when the evaluator is not
//!   root), reports the next process's pid and waits for it;
//! - the *init* (PID 1 of the new PID namespace) builds a minimal root — an empty tmpfs with
//!   read-only bind mounts of `/usr`, the library folders, the python installation and four
//!   device nodes, and a size-limited tmpfs as `/tmp`, the work folder — pivots into it, forks
//!   the program and reaps until it exits; when init exits the kernel kills everything left in
//!   the namespace, so no `setsid`/double-fork escapee outlives the run;
//! - the *program* switches to an unprivileged uid ([`SANDBOX_UID`] when the evaluator is
//!   root), sets rlimits, applies Landlock (where the kernel has it) and a seccomp filter, and
//!   execs `python3 -I -` with the program on stdin (a sealed memfd, never a file it can find).
//!
//! Output comes back through pipes the evaluator created and reads while the program runs, with
//! a size cap; nothing is ever reopened by path. A pass needs exit status 0 *and* a random
//! per-run token that the harness writes to fd 3 after the program's own code (the tests) ran,
//! so `os._exit(0)` before the tests is a failure.
//!
//! [`Sandbox::new`] probes which layers work here and records them in [`Isolation`]; without
//! namespaces it refuses to run anything unless the caller asks for
//! [`SandboxPolicy::UnsafeNoSandbox`], which the results then record.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};

pub use bakeoff_record::eval::{Isolation, Limits};

use crate::{Error, Result};

mod cgroups;
mod child;
mod fds;
mod landlock;
mod root;
mod seccomp;

use cgroups::*;
use child::*;
use fds::*;
use landlock::*;
use root::*;
use seccomp::*;

/// Uid and gid the program runs as when the evaluator runs as root (not in /etc/passwd; used
/// only here, so nothing else on the machine shares its process count or its signals).
pub const SANDBOX_UID: u32 = 64_975;

/// Bytes of stdout plus stderr read from one program before it is killed as a failure.
pub const OUTPUT_CAP: u64 = 16 << 20;

static RUN_LOCK: Mutex<()> = Mutex::new(());

/// Whether model code may run without namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxPolicy {
    /// Refuse ([`Sandbox::new`] fails) where the namespaces cannot be created.
    RequireIsolation,
    /// Fall back to rlimits, a new session and (as root) a dropped uid only; the results record
    /// it (`unsafe_no_sandbox`).
    UnsafeNoSandbox,
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
    /// Exit status 0 but the completion token never came: the program ended before its tests.
    #[serde(default)]
    pub missing_token: bool,
    /// Killed because stdout + stderr passed [`OUTPUT_CAP`].
    #[serde(default)]
    pub output_capped: bool,
    /// Peak memory of the whole run from the memory cgroup, where there is one.
    #[serde(default)]
    pub peak_memory_bytes: Option<u64>,
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
        if self.output_capped {
            return format!("killed: output over {} bytes", OUTPUT_CAP);
        }
        if let Some(s) = self.signal {
            return format!("killed by signal {s}");
        }
        if self.missing_token {
            return "exited 0 before the tests finished (no completion token)".into();
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

fn tail(bytes: &[u8], n: usize) -> String {
    let from = bytes.len().saturating_sub(n);
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

/// What `python3` on the PATH is: its real executable, version and installation folders.
struct PythonInfo {
    exe: PathBuf,
    version: String,
    dirs: Vec<PathBuf>,
}

fn find_python() -> Result<PythonInfo> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, sys\nprint(os.path.realpath(sys.executable))\nprint(sys.version.split()[0])\nfor p in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}: print(os.path.realpath(p))\n",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::NoPython(format!("cannot run python3 (needed for HumanEval/MBPP): {e}")))?;
    if !out.status.success() {
        return Err(Error::NoPython(format!(
            "python3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines().map(str::trim);
    let exe = lines
        .next()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::NoPython("python3 did not name its executable".into()))?;
    let version = lines.next().unwrap_or("").to_string();
    let dirs = lines
        .filter(|l| l.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    Ok(PythonInfo {
        exe: PathBuf::from(exe),
        version,
        dirs,
    })
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

/// Exclusive advisory lock on a per-uid file in the temp dir, released when the file closes:
/// the sandbox uid's process count (RLIMIT_NPROC) is shared by every evaluator on the machine,
/// so two of them (two `bakeoff eval`, or parallel test binaries) take turns.
fn uid_lock() -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = std::env::temp_dir().join(format!("bakeoff-sandbox-{SANDBOX_UID}.lock"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    f.lock().map_err(|e| Error::io(&path, e))?;
    Ok(f)
}

pub struct Sandbox {
    pub isolation: Isolation,
    isolate: bool,
    user_ns: bool,
    cgroups: Vec<CgroupBase>,
    python_dirs: Vec<PathBuf>,
    seccomp: Option<(BpfProgram, BpfProgram)>,
    nproc_limit: u64,
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::getuid() == 0 }
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

/// The probe run in each candidate mode: it must show the network really gone.
const NET_PROBE: &str = "import socket, errno\ntry:\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\nexcept OSError as e:\n    if e.errno not in (errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.EPERM, errno.EACCES):\n        raise\nelse:\n    raise SystemExit(4)\n";

impl Sandbox {
    /// Finds python3 and probes which isolation layers this system allows; fails where the
    /// namespaces cannot be made (see [`SandboxPolicy`]).
    pub fn new(limits: Limits) -> Result<Self> {
        Self::with_policy(limits, SandboxPolicy::RequireIsolation)
    }

    pub fn with_policy(limits: Limits, policy: SandboxPolicy) -> Result<Self> {
        let py = find_python()?;
        let root = is_root();
        let mut missing = Vec::new();
        let (cgroups, cg_missing) = detect_cgroups();
        missing.extend(cg_missing);
        let landlock = match landlock_abi() {
            Ok(v) => Some(v),
            Err(e) => {
                missing.push(e);
                None
            }
        };
        let seccomp = match seccomp_filters() {
            Ok(f) => Some(f),
            Err(e) => {
                missing.push(e);
                None
            }
        };
        // SAFETY: getuid has no preconditions.
        let uid = unsafe { libc::getuid() };
        let mut sb = Sandbox {
            isolation: Isolation {
                python: py.exe.clone(),
                python_version: py.version.clone(),
                network_namespace: true,
                mount_namespace: true,
                dropped_uid: root.then_some(SANDBOX_UID),
                limits: limits.clone(),
                pid_namespace: true,
                ipc_uts_namespaces: true,
                user_namespace: !root,
                uid: Some(if root { SANDBOX_UID } else { uid }),
                landlock_abi: landlock,
                seccomp: seccomp.is_some(),
                cgroup: cgroup_label(&cgroups),
                completion_token: true,
                unsafe_no_sandbox: false,
                missing: Vec::new(),
            },
            isolate: true,
            user_ns: !root,
            cgroups,
            python_dirs: py.dirs.clone(),
            seccomp,
            nproc_limit: 0,
        };
        sb.nproc_limit = sb.nproc();
        let first = sb.run_python(NET_PROBE);
        let ok = matches!(&first, Ok(o) if o.passed);
        if std::env::var_os("BAKEOFF_SANDBOX_DEBUG").is_some() {
            eprintln!("sandbox probe (namespaces): {first:?}");
        }
        if ok {
            sb.isolation.missing = missing;
            return Ok(sb);
        }
        let why = match first {
            Ok(o) => o.reason(),
            Err(e) => e.to_string(),
        };
        // Landlock or seccomp failing on a kernel that claims them should not cost the
        // namespaces: try once more without them.
        if sb.isolation.landlock_abi.is_some() || sb.seccomp.is_some() {
            let saved = (sb.isolation.landlock_abi, sb.seccomp.take());
            sb.isolation.landlock_abi = None;
            sb.isolation.seccomp = false;
            if matches!(sb.run_python(NET_PROBE), Ok(o) if o.passed) {
                missing.push(format!(
                    "landlock/seccomp: the probe failed with them ({why}); running without"
                ));
                sb.isolation.missing = missing;
                return Ok(sb);
            }
            sb.isolation.landlock_abi = saved.0;
            sb.seccomp = saved.1;
            sb.isolation.seccomp = sb.seccomp.is_some();
        }
        missing.push(format!("namespaces: {why}"));
        if policy == SandboxPolicy::RequireIsolation {
            return Err(Error::Sandbox(format!(
                "cannot isolate model-written code on this system ({why}); pass --unsafe-no-sandbox to run it with rlimits only (recorded in the results)"
            )));
        }
        // The explicit unsafe mode: no namespaces, so no minimal root and no Landlock (its
        // rules would have to name host paths); seccomp, rlimits, cgroups and, as root, the
        // unprivileged uid stay.
        sb.isolate = false;
        sb.user_ns = false;
        sb.isolation.network_namespace = false;
        sb.isolation.mount_namespace = false;
        sb.isolation.pid_namespace = false;
        sb.isolation.ipc_uts_namespaces = false;
        sb.isolation.user_namespace = false;
        sb.isolation.landlock_abi = None;
        sb.isolation.unsafe_no_sandbox = true;
        sb.isolation.uid = Some(if root { SANDBOX_UID } else { uid });
        if root && !world_executable(&py.exe) {
            return Err(Error::Sandbox(format!(
                "{} is not executable by an unprivileged uid and no namespaces are available; refusing to run model code as root",
                py.exe.display()
            )));
        }
        sb.nproc_limit = sb.nproc();
        let r = sb.run_python("print('ok')\n")?;
        if !r.passed {
            return Err(Error::Sandbox(format!(
                "{} cannot run even without isolation: {}",
                py.exe.display(),
                r.reason()
            )));
        }
        sb.isolation.missing = missing;
        Ok(sb)
    }

    fn nproc(&self) -> u64 {
        if is_root() {
            self.isolation.limits.processes
        } else {
            // The evaluator's own uid: its existing processes count against the limit too.
            // SAFETY: getuid has no preconditions.
            let uid = unsafe { libc::getuid() };
            count_processes_of(uid) + self.isolation.limits.processes
        }
    }

    /// Runs one Python program; `passed` means exit status 0 before the timeout with the
    /// completion token written after the program's last statement.
    pub fn run_python(&self, program: &str) -> Result<RunOutcome> {
        let _guard = RUN_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let _uid_lock = if is_root() { Some(uid_lock()?) } else { None };
        let dir = tempfile_dir()?;
        self.run_in(dir.path(), program)
    }

    fn run_in(&self, dir: &Path, program: &str) -> Result<RunOutcome> {
        let root = is_root();
        let token = random_token();
        let source = format!("{program}{}", token_line(&token));
        let prog_fd = program_fd(&source)?;
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (done_r, done_w) = pipe()?;
        let (rep_r, rep_w) = pipe()?;
        let run_cg = RunCgroups::create(&self.cgroups, &self.isolation.limits)?;

        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let drop_to = root.then_some(SANDBOX_UID);
        let owner = drop_to.unwrap_or(uid);
        let owner_g = drop_to.unwrap_or(gid);
        if !self.isolate && root {
            // The work folder on the host must belong to the uid the program runs as.
            let c = cstring(dir)?;
            // SAFETY: chown of a folder this process made.
            unsafe {
                libc::chown(c.as_ptr(), SANDBOX_UID, SANDBOX_UID);
            }
        }
        let (ops, workdir, home) = if self.isolate {
            (
                root_ops(dir, &self.python_dirs)?,
                c"/tmp".to_owned(),
                "/tmp".to_string(),
            )
        } else {
            (Vec::new(), cstring(dir)?, dir.display().to_string())
        };
        let env: Vec<CString> = [
            "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
            format!("HOME={home}"),
            format!("TMPDIR={home}"),
            "LANG=C.UTF-8".to_string(),
            "PYTHONHASHSEED=0".to_string(),
            "PYTHONDONTWRITEBYTECODE=1".to_string(),
        ]
        .into_iter()
        .map(|s| CString::new(s).map_err(|_| Error::Sandbox("NUL in environment".into())))
        .collect::<Result<_>>()?;
        let python = cstring(&self.isolation.python)?;
        let args = [python.clone(), c"-I".to_owned(), c"-".to_owned()];
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
        envp.push(std::ptr::null());
        let plan = Plan {
            isolate: self.isolate,
            user_ns: self.user_ns,
            drop_to,
            mount_point: cstring(dir)?,
            ops,
            tmp_opts: CString::new(format!(
                "size={},nr_inodes=4096,mode=0700,uid={owner},gid={owner_g}",
                self.isolation.limits.disk_bytes
            ))
            .map_err(|_| Error::Sandbox("NUL in tmpfs options".into()))?,
            uid_map: format!("{uid} {uid} 1\n").into_bytes(),
            gid_map: format!("{gid} {gid} 1\n").into_bytes(),
            cgroup_procs: run_cg.procs_files()?,
            python,
            argv,
            envp,
            workdir,
            limits: self.isolation.limits.clone(),
            nproc: self.nproc_limit,
            landlock: if self.isolate {
                self.isolation.landlock_abi
            } else {
                None
            },
            seccomp: self.seccomp.as_ref(),
            fds: [rep_w.0, prog_fd.0, out_w.0, err_w.0, done_w.0],
        };

        let start = Instant::now();
        // SAFETY: the child runs only `keeper`, which makes system calls on memory prepared
        // above and never returns.
        let keeper_pid = unsafe { libc::fork() };
        if keeper_pid < 0 {
            return Err(Error::Sandbox(format!(
                "fork: {}",
                std::io::Error::last_os_error()
            )));
        }
        if keeper_pid == 0 {
            // SAFETY: see above.
            unsafe { keeper(&plan) };
        }
        drop((prog_fd, out_w, err_w, done_w, rep_w));

        let deadline = Duration::from_secs_f64(self.isolation.limits.timeout_s);
        let mut out = TailBuf::new(64 << 10);
        let mut err = TailBuf::new(64 << 10);
        let mut done = TailBuf::new(256);
        let mut rep = TailBuf::new(4096);
        let mut init_pid: Option<i32> = None;
        let mut timed_out = false;
        let mut capped = false;
        let mut killed = false;
        let isolate = self.isolate;
        let kill_run = |init: Option<i32>| {
            // SAFETY: kill has no memory preconditions; the init pid cannot have been reused
            // while the keeper (its parent) has not reaped it, and the keeper is not reaped
            // before this.
            unsafe {
                match init {
                    // Killing init takes the PID namespace down; the keeper is left alone so
                    // that its exit (after reaping init, which the kernel delays until every
                    // process of the namespace is gone) still marks the end of the run.
                    Some(p) if isolate => {
                        libc::kill(p, libc::SIGKILL);
                    }
                    _ => {
                        if let Some(p) = init {
                            libc::kill(p, libc::SIGKILL);
                        }
                        libc::kill(-keeper_pid, libc::SIGKILL);
                        libc::kill(keeper_pid, libc::SIGKILL);
                    }
                }
            }
        };
        loop {
            let mut fds = [
                libc::pollfd {
                    fd: out_r.0,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: err_r.0,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: done_r.0,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: rep_r.0,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: polls four live descriptors.
            unsafe {
                libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20);
            }
            out.pull(out_r.0);
            err.pull(err_r.0);
            done.pull(done_r.0);
            rep.pull(rep_r.0);
            if init_pid.is_none() {
                init_pid = parse_report(&rep.buf).init;
            }
            if !killed && out.total + err.total > OUTPUT_CAP {
                capped = true;
                killed = true;
                kill_run(init_pid);
            }
            if !killed && start.elapsed() >= deadline {
                timed_out = true;
                killed = true;
                kill_run(init_pid);
            }
            let mut st = 0;
            // SAFETY: waits for our own child.
            let r = unsafe { libc::waitpid(keeper_pid, &mut st, libc::WNOHANG) };
            if r == keeper_pid || r < 0 {
                break;
            }
        }
        let wall_s = start.elapsed().as_secs_f64();
        // Whatever the finished run left in the pipes. Without a PID namespace a straggler
        // may keep a pipe open, so this does not wait for end of stream.
        out.pull(out_r.0);
        err.pull(err_r.0);
        done.pull(done_r.0);
        rep.pull(rep_r.0);
        if !self.isolate {
            // SAFETY: the keeper's session; stragglers that made their own are the cgroup's.
            unsafe {
                libc::kill(-keeper_pid, libc::SIGKILL);
            }
        }
        let peak_memory_bytes = run_cg.peak_memory();
        drop(run_cg);

        let parsed = parse_report(&rep.buf);
        if let Some((stage_i, errno)) = parsed.error {
            return Err(Error::Sandbox(format!(
                "setting up the sandbox failed at {}: {}",
                STAGES.get(stage_i as usize).unwrap_or(&"?"),
                std::io::Error::from_raw_os_error(errno)
            )));
        }
        let (exit_code, mut signal) = match parsed.status {
            Some(st) if libc::WIFEXITED(st) => (Some(libc::WEXITSTATUS(st)), None),
            Some(st) if libc::WIFSIGNALED(st) => (None, Some(libc::WTERMSIG(st))),
            _ => (None, None),
        };
        if parsed.status.is_none() && !timed_out && !capped {
            // Init died before the program (a memory cgroup's OOM kill can pick it).
            signal = Some(libc::SIGKILL);
        }
        // A busy loop can reach RLIMIT_CPU (SIGXCPU) before the wall-clock deadline on an
        // idle machine; either way the program ran out of time, and the audit says so.
        let timed_out = timed_out || signal == Some(libc::SIGXCPU);
        let token_seen = done.buf == format!("{token}\n").as_bytes();
        let exited_zero = exit_code == Some(0);
        Ok(RunOutcome {
            passed: !timed_out && !capped && exited_zero && token_seen,
            exit_code,
            signal,
            timed_out,
            wall_s,
            stdout_tail: tail(&out.buf, 2000),
            stderr_tail: tail(&err.buf, 2000),
            missing_token: exited_zero && !token_seen,
            output_capped: capped,
            peak_memory_bytes,
        })
    }
}
