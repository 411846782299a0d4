//! The run's cgroups: memory and process limits and the peak-memory reading, where the machine
//! lets the evaluator create them.

#[allow(unused_imports)]
use super::*;

#[derive(Clone, Debug)]
pub(super) struct CgroupBase {
    /// Folder under which a per-run child cgroup is made.
    pub(super) dir: PathBuf,
    /// (file, value) pairs written into the child; the value is a function of the limits.
    pub(super) kind: CgroupKind,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum CgroupKind {
    V1Memory,
    V1Pids,
    V2,
}

/// The cgroup folders this process may create children in, one per controller (v1) or one
/// with both controllers (v2), with what is missing.
pub(super) fn detect_cgroups() -> (Vec<CgroupBase>, Vec<String>) {
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

pub(super) fn cgroup_label(bases: &[CgroupBase]) -> Option<String> {
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
pub(super) struct RunCgroups {
    pub(super) dirs: Vec<(PathBuf, CgroupKind)>,
}

impl RunCgroups {
    pub(super) fn create(bases: &[CgroupBase], limits: &Limits) -> Result<Self> {
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

    pub(super) fn procs_files(&self) -> Result<Vec<CString>> {
        self.dirs
            .iter()
            .map(|(d, _)| cstring(&d.join("cgroup.procs")))
            .collect()
    }

    pub(super) fn peak_memory(&self) -> Option<u64> {
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
    pub(super) fn kill_all(&self) {
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
