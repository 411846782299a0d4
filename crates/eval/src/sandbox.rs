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
//! [`Policy::UnsafeNoSandbox`], which the results then record.

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

/// Uid and gid the program runs as when the evaluator runs as root (not in /etc/passwd; used
/// only here, so nothing else on the machine shares its process count or its signals).
pub const SANDBOX_UID: u32 = 64_975;

/// Bytes of stdout plus stderr read from one program before it is killed as a failure.
pub const OUTPUT_CAP: u64 = 16 << 20;

static RUN_LOCK: Mutex<()> = Mutex::new(());

/// Whether model code may run without namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
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

// ---------------------------------------------------------------------------------------------
// Cgroups

#[derive(Clone, Debug)]
struct CgroupBase {
    /// Folder under which a per-run child cgroup is made.
    dir: PathBuf,
    /// (file, value) pairs written into the child; the value is a function of the limits.
    kind: CgroupKind,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum CgroupKind {
    V1Memory,
    V1Pids,
    V2,
}

/// The cgroup folders this process may create children in, one per controller (v1) or one
/// with both controllers (v2), with what is missing.
fn detect_cgroups() -> (Vec<CgroupBase>, Vec<String>) {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let unified_root = Path::new("/sys/fs/cgroup/cgroup.controllers")
        .exists()
        .then(|| PathBuf::from("/sys/fs/cgroup"));
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if ctrls.is_empty() {
            if let Some(root) = &unified_root {
                let dir = root.join(rel);
                let ctl =
                    std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
                if ctl.split_whitespace().any(|c| c == "memory")
                    && ctl.split_whitespace().any(|c| c == "pids")
                {
                    found.push(CgroupBase {
                        dir,
                        kind: CgroupKind::V2,
                    });
                } else {
                    missing.push(format!(
                        "cgroup v2: memory and pids are not delegated to {} (subtree_control: {:?})",
                        dir.display(),
                        ctl.trim()
                    ));
                }
            }
            continue;
        }
        for c in ctrls.split(',') {
            let kind = match c {
                "memory" => CgroupKind::V1Memory,
                "pids" => CgroupKind::V1Pids,
                _ => continue,
            };
            found.push(CgroupBase {
                dir: Path::new("/sys/fs/cgroup").join(c).join(rel),
                kind,
            });
        }
    }
    // A folder we cannot create children in is no use.
    found.retain(|b| {
        let probe = b.dir.join(format!("bakeoff-probe-{}", std::process::id()));
        match std::fs::create_dir(&probe) {
            Ok(()) => {
                let _ = std::fs::remove_dir(&probe);
                true
            }
            Err(e) => {
                missing.push(format!("cgroup {}: {e}", b.dir.display()));
                false
            }
        }
    });
    if found.is_empty() && missing.is_empty() {
        missing.push("cgroup: no memory or pids controller in /proc/self/cgroup".into());
    }
    (found, missing)
}

fn cgroup_label(bases: &[CgroupBase]) -> Option<String> {
    if bases.is_empty() {
        return None;
    }
    let names: Vec<&str> = bases
        .iter()
        .map(|b| match b.kind {
            CgroupKind::V1Memory => "v1 memory",
            CgroupKind::V1Pids => "v1 pids",
            CgroupKind::V2 => "v2 memory+pids",
        })
        .collect();
    Some(names.join(", "))
}

/// The per-run cgroups, removed (after their processes are killed) on drop.
struct RunCgroups {
    dirs: Vec<(PathBuf, CgroupKind)>,
}

impl RunCgroups {
    fn create(bases: &[CgroupBase], limits: &Limits) -> Result<Self> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let mut me = RunCgroups { dirs: Vec::new() };
        for b in bases {
            let dir = b
                .dir
                .join(format!("bakeoff-sbx-{}-{n}", std::process::id()));
            std::fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
            me.dirs.push((dir.clone(), b.kind));
            // Keeper and init count against the pids limit as well.
            let pids = (limits.processes + 2).to_string();
            let mem = limits.memory_bytes.to_string();
            let writes: &[(&str, &str, bool)] = match b.kind {
                CgroupKind::V1Memory => &[
                    ("memory.limit_in_bytes", &mem, true),
                    ("memory.memsw.limit_in_bytes", &mem, false),
                ],
                CgroupKind::V1Pids => &[("pids.max", &pids, true)],
                CgroupKind::V2 => &[
                    ("memory.max", &mem, true),
                    ("memory.swap.max", "0", false),
                    ("pids.max", &pids, true),
                ],
            };
            for (file, value, required) in writes {
                let p = dir.join(file);
                if let Err(e) = std::fs::write(&p, value)
                    && *required
                {
                    return Err(Error::io(&p, e));
                }
            }
        }
        Ok(me)
    }

    fn procs_files(&self) -> Result<Vec<CString>> {
        self.dirs
            .iter()
            .map(|(d, _)| cstring(&d.join("cgroup.procs")))
            .collect()
    }

    fn peak_memory(&self) -> Option<u64> {
        self.dirs.iter().find_map(|(d, k)| {
            let file = match k {
                CgroupKind::V1Memory => "memory.max_usage_in_bytes",
                CgroupKind::V2 => "memory.peak",
                CgroupKind::V1Pids => return None,
            };
            std::fs::read_to_string(d.join(file))
                .ok()?
                .trim()
                .parse()
                .ok()
        })
    }

    /// SIGKILLs every process still in the run's cgroups (only the no-namespace mode can leave
    /// any: with a PID namespace they died with its init).
    fn kill_all(&self) {
        for _ in 0..200 {
            let mut any = false;
            for (d, _) in &self.dirs {
                let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    any = true;
                    // SAFETY: kill has no memory preconditions.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
            if !any {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RunCgroups {
    fn drop(&mut self) {
        self.kill_all();
        for (d, _) in self.dirs.iter().rev() {
            for _ in 0..100 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Landlock (raw system calls: the rules name inodes of the minimal root, which exists only in
// the child, and the child of a multi-threaded process must not allocate)

const LL_FS_EXECUTE: u64 = 1 << 0;
const LL_FS_WRITE_FILE: u64 = 1 << 1;
const LL_FS_READ_FILE: u64 = 1 << 2;
const LL_FS_READ_DIR: u64 = 1 << 3;
/// Every filesystem right of ABI v1 (execute .. make_sym).
const LL_FS_ABI1: u64 = (1 << 13) - 1;
const LL_FS_REFER: u64 = 1 << 13;
const LL_FS_TRUNCATE: u64 = 1 << 14;
const LL_FS_IOCTL_DEV: u64 = 1 << 15;
const LL_NET_BIND_TCP: u64 = 1 << 0;
const LL_NET_CONNECT_TCP: u64 = 1 << 1;
const LL_SCOPE_ABSTRACT_UNIX: u64 = 1 << 0;
const LL_SCOPE_SIGNAL: u64 = 1 << 1;
const LL_RULE_PATH_BENEATH: libc::c_long = 1;
const LL_CREATE_RULESET_VERSION: libc::c_long = 1;

#[repr(C)]
struct LandlockRulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct LandlockPathBeneath {
    allowed_access: u64,
    parent_fd: i32,
}

/// The kernel's Landlock ABI version, or why there is none.
fn landlock_abi() -> std::result::Result<u32, String> {
    // SAFETY: the version query takes no pointer.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LL_CREATE_RULESET_VERSION,
        )
    };
    if v < 1 {
        return Err(format!(
            "landlock: not available ({})",
            std::io::Error::last_os_error()
        ));
    }
    Ok(v as u32)
}

fn landlock_fs_rights(abi: u32) -> u64 {
    let mut r = LL_FS_ABI1;
    if abi >= 2 {
        r |= LL_FS_REFER;
    }
    if abi >= 3 {
        r |= LL_FS_TRUNCATE;
    }
    if abi >= 5 {
        r |= LL_FS_IOCTL_DEV;
    }
    r
}

/// Child side: read and execute under `/`, everything under `/tmp`, read and write of
/// `/dev/null`; no TCP bind or connect (ABI 4+); no abstract UNIX sockets or signals beyond
/// the program's own processes (ABI 6+).
///
/// # Safety
/// Must run in the forked child after the pivot; makes only system calls.
unsafe fn landlock_restrict(abi: u32) -> bool {
    let fs = landlock_fs_rights(abi);
    let attr = LandlockRulesetAttr {
        handled_access_fs: fs,
        handled_access_net: if abi >= 4 {
            LL_NET_BIND_TCP | LL_NET_CONNECT_TCP
        } else {
            0
        },
        scoped: if abi >= 6 {
            LL_SCOPE_ABSTRACT_UNIX | LL_SCOPE_SIGNAL
        } else {
            0
        },
    };
    let size = match abi {
        1..=3 => 8,
        4..=5 => 16,
        _ => 24,
    };
    // SAFETY: attr outlives the calls; every fd is checked and closed.
    unsafe {
        let rs = libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const LandlockRulesetAttr,
            size as usize,
            0,
        ) as i32;
        if rs < 0 {
            return false;
        }
        let rules: [(&CStr, u64); 3] = [
            (c"/", LL_FS_EXECUTE | LL_FS_READ_FILE | LL_FS_READ_DIR),
            (c"/tmp", fs),
            (
                c"/dev/null",
                LL_FS_READ_FILE | LL_FS_WRITE_FILE | (fs & LL_FS_TRUNCATE),
            ),
        ];
        for (path, access) in rules {
            let fd = libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
            if fd < 0 {
                if path == c"/dev/null" {
                    continue;
                }
                libc::close(rs);
                return false;
            }
            let rule = LandlockPathBeneath {
                allowed_access: access,
                parent_fd: fd,
            };
            let r = libc::syscall(
                libc::SYS_landlock_add_rule,
                rs,
                LL_RULE_PATH_BENEATH,
                &rule as *const LandlockPathBeneath,
                0,
            );
            libc::close(fd);
            if r != 0 {
                libc::close(rs);
                return false;
            }
        }
        let r = libc::syscall(libc::SYS_landlock_restrict_self, rs, 0);
        libc::close(rs);
        r == 0
    }
}

// ---------------------------------------------------------------------------------------------
// Seccomp

/// Two filters: system calls the program has no use for and that widen the kernel surface or
/// could undo the namespaces fail with EPERM; `clone3` (whose flags a filter cannot read) fails
/// with ENOSYS so that libc falls back to `clone`, whose namespace flags the first filter sees.
fn seccomp_filters() -> std::result::Result<(BpfProgram, BpfProgram), String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| format!("seccomp: {e} ({})", std::env::consts::ARCH))?;
    let err = |e: seccompiler::BackendError| format!("seccomp: {e}");
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let always = [
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_bpf,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_syslog,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_fanotify_init,
        libc::SYS_fsopen,
        libc::SYS_fsmount,
        libc::SYS_fsconfig,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_personality,
    ];
    for s in always {
        deny.insert(s, Vec::new());
    }
    // Sockets: only AF_UNIX (socketpair, and sockets inside the sandbox's own tmpfs).
    deny.insert(
        libc::SYS_socket,
        vec![
            SeccompRule::new(vec![
                SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Ne,
                    libc::AF_UNIX as u64,
                )
                .map_err(err)?,
            ])
            .map_err(err)?,
        ],
    );
    let ns_flags = [
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWNS,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWCGROUP,
    ];
    let mut clone_rules = Vec::new();
    for f in ns_flags {
        clone_rules.push(
            SeccompRule::new(vec![
                SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(f as u64),
                    f as u64,
                )
                .map_err(err)?,
            ])
            .map_err(err)?,
        );
    }
    deny.insert(libc::SYS_clone, clone_rules);
    let a = SeccompFilter::new(
        deny,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(err)?;
    let b = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(err)?;
    let a = BpfProgram::try_from(a).map_err(err)?;
    let b = BpfProgram::try_from(b).map_err(err)?;
    Ok((a, b))
}

// ---------------------------------------------------------------------------------------------
// The minimal root

/// One step of building the minimal root under the mount point (paths already prefixed).
enum RootOp {
    Dir(CString),
    Symlink {
        target: CString,
        at: CString,
    },
    Bind {
        src: CString,
        dst: CString,
        file: bool,
        flags: libc::c_ulong,
    },
}

fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::Sandbox(format!("path with NUL: {}", p.display())))
}

/// Mount flags a read-only remount of a bind of `p` must keep: inside a user namespace the
/// kernel refuses a remount that would clear a flag the original mount has.
fn locked_flags(p: &Path) -> libc::c_ulong {
    let Ok(c) = cstring(p) else { return 0 };
    // SAFETY: statvfs writes into the zeroed struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    let f = st.f_flag;
    let mut m = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if f & st_flag != 0 {
            m |= ms_flag;
        }
    }
    m
}

/// The host paths the minimal root exposes (read-only), plus python's own folders.
fn root_ops(mount_point: &Path, python_dirs: &[PathBuf]) -> Result<Vec<RootOp>> {
    const SYSTEM: [&str; 13] = [
        "/usr",
        "/bin",
        "/sbin",
        "/lib",
        "/lib64",
        "/lib32",
        "/libx32",
        "/etc/ld.so.cache",
        "/etc/localtime",
        "/dev/null",
        "/dev/zero",
        "/dev/random",
        "/dev/urandom",
    ];
    let mut ops = Vec::new();
    let mut made: BTreeSet<PathBuf> = BTreeSet::new();
    let mut bound: Vec<PathBuf> = Vec::new();
    let inside = |p: &Path| mount_point.join(p.strip_prefix("/").unwrap_or(p));
    let mut mkdirs = |p: &Path, ops: &mut Vec<RootOp>| -> Result<()> {
        let mut cur = PathBuf::from("/");
        for comp in p.components().skip(1) {
            cur.push(comp);
            if made.insert(cur.clone()) {
                ops.push(RootOp::Dir(cstring(&inside(&cur))?));
            }
        }
        Ok(())
    };
    mkdirs(Path::new("/tmp"), &mut ops)?;
    let all = SYSTEM
        .iter()
        .map(PathBuf::from)
        .chain(python_dirs.iter().cloned());
    for host in all {
        if bound.iter().any(|b| host.starts_with(b)) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&host) else {
            continue;
        };
        if let Some(parent) = host.parent() {
            mkdirs(parent, &mut ops)?;
        }
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&host).map_err(|e| Error::io(&host, e))?;
            ops.push(RootOp::Symlink {
                target: cstring(&target)?,
                at: cstring(&inside(&host))?,
            });
            continue;
        }
        let file = !meta.is_dir();
        if !file {
            mkdirs(&host, &mut ops)?;
        }
        ops.push(RootOp::Bind {
            src: cstring(&host)?,
            dst: cstring(&inside(&host))?,
            file,
            flags: locked_flags(&host),
        });
        bound.push(host);
    }
    Ok(ops)
}

// ---------------------------------------------------------------------------------------------
// The child processes

/// Fixed descriptor numbers in the keeper and init (the parent's are all >= 200).
const FD_REPORT: i32 = 100;
const FD_PROG: i32 = 101;
const FD_OUT: i32 = 102;
const FD_ERR: i32 = 103;
const FD_DONE: i32 = 104;

/// Stages, for the error the child reports before it gives up.
const STAGES: [&str; 24] = [
    "setsid",
    "join cgroup",
    "unshare namespaces",
    "write uid/gid map",
    "fork init",
    "make mounts private",
    "mount root tmpfs",
    "build minimal root",
    "bind mount",
    "read-only remount",
    "mount /tmp tmpfs",
    "pivot_root",
    "detach old root",
    "read-only root",
    "fork program",
    "set up stdio",
    "chdir",
    "drop uid",
    "rlimit",
    "no_new_privs",
    "landlock",
    "seccomp",
    "exec python",
    "sethostname",
];

/// Everything the children need, prepared before fork: after fork only system calls on these.
struct Plan<'a> {
    isolate: bool,
    user_ns: bool,
    drop_to: Option<u32>,
    mount_point: CString,
    ops: Vec<RootOp>,
    tmp_opts: CString,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    cgroup_procs: Vec<CString>,
    python: CString,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    workdir: CString,
    limits: Limits,
    nproc: u64,
    landlock: Option<u32>,
    seccomp: Option<&'a (BpfProgram, BpfProgram)>,
    fds: [i32; 5],
}

/// Reports (stage, errno) on the report pipe and exits. Child side only.
fn die(stage: usize) -> ! {
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let mut msg = [0u8; 9];
    msg[0] = b'E';
    msg[1..5].copy_from_slice(&(stage as u32).to_le_bytes());
    msg[5..9].copy_from_slice(&errno.to_le_bytes());
    // SAFETY: plain writes and exit in the child.
    unsafe {
        libc::write(FD_REPORT, msg.as_ptr().cast(), msg.len());
        libc::_exit(127);
    }
}

fn report(tag: u8, value: i32) {
    let mut msg = [0u8; 5];
    msg[0] = tag;
    msg[1..5].copy_from_slice(&value.to_le_bytes());
    // SAFETY: a plain write of a stack buffer.
    unsafe {
        libc::write(FD_REPORT, msg.as_ptr().cast(), msg.len());
    }
}

fn stage(i: &str) -> usize {
    STAGES.iter().position(|s| *s == i).unwrap_or(0)
}

/// Writes `data` to a /proc file (child side, no allocation).
///
/// # Safety
/// Child side only.
unsafe fn write_file(path: &CStr, data: &[u8]) -> bool {
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

fn close_from(first: i32) {
    // SAFETY: closing descriptors the child does not use.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0) != 0 {
            for fd in first..4096 {
                libc::close(fd);
            }
        }
    }
}

fn set_limit(res: libc::__rlimit_resource_t, soft: u64, hard: u64) -> bool {
    let r = libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: setrlimit reads a valid rlimit struct.
    unsafe { libc::setrlimit(res, &r) == 0 }
}

/// The keeper: first process after fork. Never returns.
///
/// # Safety
/// Runs in the forked child of a possibly multi-threaded process: only system calls, no
/// allocation, no locks.
unsafe fn keeper(plan: &Plan) -> ! {
    // SAFETY: system calls on the child's own state with pointers prepared before fork.
    unsafe {
        // Own descriptors at fixed numbers; every other one (another thread's pipes included)
        // closed.
        for (i, fd) in plan.fds.iter().enumerate() {
            if libc::dup2(*fd, FD_REPORT + i as i32) < 0 {
                libc::_exit(127);
            }
        }
        for fd in 3..FD_REPORT {
            libc::close(fd);
        }
        close_from(FD_DONE + 1);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::setsid() < 0 {
            die(stage("setsid"));
        }
        for p in &plan.cgroup_procs {
            if !write_file(p, b"0") {
                die(stage("join cgroup"));
            }
        }
        if plan.isolate {
            let mut flags = libc::CLONE_NEWPID
                | libc::CLONE_NEWNS
                | libc::CLONE_NEWNET
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWUTS;
            if plan.user_ns {
                flags |= libc::CLONE_NEWUSER;
            }
            if libc::unshare(flags) != 0 {
                die(stage("unshare namespaces"));
            }
            if plan.user_ns
                && (!write_file(c"/proc/self/setgroups", b"deny")
                    || !write_file(c"/proc/self/uid_map", &plan.uid_map)
                    || !write_file(c"/proc/self/gid_map", &plan.gid_map))
            {
                die(stage("write uid/gid map"));
            }
        }
        let keeper_pid = libc::getpid();
        let init = libc::fork();
        if init < 0 {
            die(stage("fork init"));
        }
        if init == 0 {
            init_process(plan, keeper_pid);
        }
        report(b'P', init);
        for fd in FD_PROG..=FD_DONE {
            libc::close(fd);
        }
        let mut st = 0;
        while libc::waitpid(init, &mut st, 0) < 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
        libc::_exit(0);
    }
}

/// # Safety
/// As [`keeper`].
unsafe fn init_process(plan: &Plan, keeper_pid: i32) -> ! {
    // SAFETY: as in keeper.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // Seen from inside a new PID namespace the parent (outside it) is pid 0.
        let expected_parent = if plan.isolate { 0 } else { keeper_pid };
        if libc::getppid() != expected_parent {
            libc::_exit(127);
        }
        if plan.isolate {
            build_root(plan);
        }
        let prog = libc::fork();
        if prog < 0 {
            die(stage("fork program"));
        }
        if prog == 0 {
            program(plan);
        }
        for fd in FD_PROG..=FD_DONE {
            libc::close(fd);
        }
        // PID 1 of the namespace: reap everything until the program itself exits. Orphans
        // still running then are killed by the kernel when this process exits.
        let mut status = None;
        loop {
            let mut st = 0;
            let pid = libc::waitpid(-1, &mut st, 0);
            if pid == prog {
                status = Some(st);
                if plan.isolate {
                    break;
                }
            }
            if pid < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                break;
            }
        }
        if let Some(st) = status {
            report(b'S', st);
        }
        libc::_exit(0);
    }
}

/// # Safety
/// As [`keeper`].
unsafe fn build_root(plan: &Plan) {
    // SAFETY: as in keeper.
    unsafe {
        let null = std::ptr::null::<libc::c_char>();
        let mp = plan.mount_point.as_ptr();
        // Nothing below propagates back to the host.
        if libc::mount(
            null,
            c"/".as_ptr(),
            null,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            die(stage("make mounts private"));
        }
        if libc::mount(
            c"tmpfs".as_ptr(),
            mp,
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            c"size=1m,nr_inodes=1024,mode=0755".as_ptr().cast(),
        ) != 0
        {
            die(stage("mount root tmpfs"));
        }
        for op in &plan.ops {
            match op {
                RootOp::Dir(p) => {
                    if libc::mkdir(p.as_ptr(), 0o755) != 0 {
                        die(stage("build minimal root"));
                    }
                }
                RootOp::Symlink { target, at } => {
                    if libc::symlink(target.as_ptr(), at.as_ptr()) != 0 {
                        die(stage("build minimal root"));
                    }
                }
                RootOp::Bind {
                    src,
                    dst,
                    file,
                    flags,
                } => {
                    if *file {
                        let fd = libc::open(
                            dst.as_ptr(),
                            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                            0o644,
                        );
                        if fd < 0 {
                            die(stage("build minimal root"));
                        }
                        libc::close(fd);
                    }
                    if libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        null,
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ) != 0
                    {
                        die(stage("bind mount"));
                    }
                    if libc::mount(
                        null,
                        dst.as_ptr(),
                        null,
                        libc::MS_REMOUNT
                            | libc::MS_BIND
                            | libc::MS_RDONLY
                            | libc::MS_NOSUID
                            | flags,
                        std::ptr::null(),
                    ) != 0
                    {
                        die(stage("read-only remount"));
                    }
                }
            }
        }
        if libc::chdir(mp) != 0 {
            die(stage("chdir"));
        }
        if libc::mount(
            c"tmpfs".as_ptr(),
            c"tmp".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            plan.tmp_opts.as_ptr().cast(),
        ) != 0
        {
            die(stage("mount /tmp tmpfs"));
        }
        // pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only the
        // minimal root (see pivot_root(2)).
        if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0 {
            die(stage("pivot_root"));
        }
        if libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0 {
            die(stage("detach old root"));
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            die(stage("chdir"));
        }
        if libc::mount(
            null,
            c"/".as_ptr(),
            null,
            libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            std::ptr::null(),
        ) != 0
        {
            die(stage("read-only root"));
        }
        let host = b"sandbox";
        if libc::sethostname(host.as_ptr().cast(), host.len()) != 0 {
            die(stage("sethostname"));
        }
    }
}

/// # Safety
/// As [`keeper`].
unsafe fn program(plan: &Plan) -> ! {
    // SAFETY: as in keeper.
    unsafe {
        if libc::dup2(FD_PROG, 0) < 0
            || libc::dup2(FD_OUT, 1) < 0
            || libc::dup2(FD_ERR, 2) < 0
            || libc::dup2(FD_DONE, 3) < 0
        {
            die(stage("set up stdio"));
        }
        // The report pipe stays open until exec (it is close-on-exec), so a failure below
        // can still be reported.
        if libc::fcntl(FD_REPORT, libc::F_SETFD, libc::FD_CLOEXEC) != 0 {
            die(stage("set up stdio"));
        }
        for fd in FD_PROG..=FD_DONE {
            libc::close(fd);
        }
        if libc::chdir(plan.workdir.as_ptr()) != 0 {
            die(stage("chdir"));
        }
        if let Some(id) = plan.drop_to
            && (libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(id) != 0
                || libc::setuid(id) != 0
                || libc::getuid() != id
                || libc::geteuid() != id)
        {
            die(stage("drop uid"));
        }
        let l = &plan.limits;
        if !(set_limit(libc::RLIMIT_CPU, l.cpu_s, l.cpu_s + 1)
            && set_limit(libc::RLIMIT_AS, l.memory_bytes, l.memory_bytes)
            && set_limit(libc::RLIMIT_FSIZE, l.file_bytes, l.file_bytes)
            && set_limit(libc::RLIMIT_NOFILE, l.open_files, l.open_files)
            && set_limit(libc::RLIMIT_CORE, 0, 0)
            && set_limit(libc::RLIMIT_NPROC, plan.nproc, plan.nproc))
        {
            die(stage("rlimit"));
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            die(stage("no_new_privs"));
        }
        if let Some(abi) = plan.landlock
            && !landlock_restrict(abi)
        {
            die(stage("landlock"));
        }
        if let Some((a, b)) = plan.seccomp
            && (seccompiler::apply_filter(a).is_err() || seccompiler::apply_filter(b).is_err())
        {
            die(stage("seccomp"));
        }
        libc::execve(plan.python.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
        die(stage("exec python"));
    }
}

// ---------------------------------------------------------------------------------------------
// The evaluator's side

/// A descriptor closed on drop.
struct Fd(i32);

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
fn high(fd: i32) -> Result<Fd> {
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

fn pipe() -> Result<(Fd, Fd)> {
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
fn program_fd(source: &str) -> Result<Fd> {
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
struct TailBuf {
    buf: Vec<u8>,
    keep: usize,
    total: u64,
}

impl TailBuf {
    fn new(keep: usize) -> Self {
        Self {
            buf: Vec::new(),
            keep,
            total: 0,
        }
    }

    /// Reads what is available; false at end of stream.
    fn pull(&mut self, fd: i32) -> bool {
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

fn random_token() -> String {
    let a: u64 = rand::random();
    let b: u64 = rand::random();
    format!("bakeoff-done-{a:016x}{b:016x}")
}

/// The line appended after the program: reached only if everything before it (the tests) ran
/// and returned normally.
fn token_line(token: &str) -> String {
    format!("\n\nimport os as _bakeoff_os\n_bakeoff_os.write(3, b\"{token}\\n\")\n")
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
    /// namespaces cannot be made (see [`Policy`]).
    pub fn new(limits: Limits) -> Result<Self> {
        Self::with_policy(limits, Policy::RequireIsolation)
    }

    pub fn with_policy(limits: Limits, policy: Policy) -> Result<Self> {
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
        if policy == Policy::RequireIsolation {
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

#[derive(Default)]
struct Report {
    init: Option<i32>,
    status: Option<i32>,
    error: Option<(u32, i32)>,
}

fn parse_report(buf: &[u8]) -> Report {
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
