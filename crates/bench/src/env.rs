//! What a results file says about the machine, and the probes the worker reads around each
//! run: process CPU time, RAPL energy, the page cache, and file digests.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub use bakeoff_record::bench::Environment;
pub use bakeoff_record::time::{compact_time, rfc3339};

use crate::error::{BenchError, Result};

/// What a results file says about this machine.
pub fn capture() -> Environment {
    Environment {
        cpu_model: cpu_model(),
        cores: cores(),
        ram_bytes: ram_bytes(),
        os: os_name(),
        kernel: read_trim("/proc/sys/kernel/osrelease").unwrap_or_default(),
        arch: std::env::consts::ARCH.to_string(),
        hostname: read_trim("/proc/sys/kernel/hostname").unwrap_or_default(),
        bakeoff_version: env!("CARGO_PKG_VERSION").to_string(),
        git_commit: git_commit(),
        rustc: env!("BAKEOFF_RUSTC_VERSION").to_string(),
        rapl: Rapl::open().is_some(),
        drop_caches: can_drop_caches(),
    }
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn ram_bytes() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

fn os_name() -> String {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| std::env::consts::OS.to_string())
}

/// The commit of the source tree this binary was built from, asked of git at run time (the
/// tree may have moved on since the build, so a dirty flag is added when it has changes).
fn git_commit() -> Option<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    if !dir.is_dir() {
        return None;
    }
    let run = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "HEAD"]).filter(|s| !s.is_empty())?;
    let dirty =
        run(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

/// User + system CPU seconds of this process so far.
pub fn cpu_seconds() -> f64 {
    // SAFETY: a zeroed rusage is a valid value for getrusage to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid out-pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return f64::NAN;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// RAPL package-energy counters (Linux powercap). The counters cover whole CPU packages, so other
/// processes on the machine add to the figure: it is an upper bound for the model's energy.
pub struct Rapl {
    domains: Vec<(PathBuf, u64)>,
}

impl Rapl {
    /// The top-level `intel-rapl:N` domains whose counters this process can read.
    pub fn open() -> Option<Rapl> {
        let dir = std::fs::read_dir("/sys/class/powercap").ok()?;
        let mut domains = Vec::new();
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            // Sub-domains (intel-rapl:0:1) are already inside their package's counter.
            if !name.starts_with("intel-rapl:") || name.matches(':').count() != 1 {
                continue;
            }
            let path = e.path().join("energy_uj");
            if read_u64(&path).is_none() {
                continue;
            }
            let range = read_u64(&e.path().join("max_energy_range_uj")).unwrap_or(u64::MAX);
            domains.push((path, range));
        }
        domains.sort();
        (!domains.is_empty()).then_some(Rapl { domains })
    }

    /// Current counters in microjoules.
    pub fn read(&self) -> Vec<u64> {
        self.domains
            .iter()
            .map(|(p, _)| read_u64(p).unwrap_or(0))
            .collect()
    }

    /// Joules between two readings, allowing for one wrap of each counter.
    pub fn joules(&self, before: &[u64], after: &[u64]) -> f64 {
        let mut uj = 0u64;
        for ((b, a), (_, range)) in before.iter().zip(after).zip(&self.domains) {
            uj += if a >= b {
                a - b
            } else {
                range.saturating_sub(*b) + a
            };
        }
        uj as f64 * 1e-6
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

const DROP_CACHES: &str = "/proc/sys/vm/drop_caches";

/// Whether this process may drop the page cache (root outside a read-only /proc/sys).
pub fn can_drop_caches() -> bool {
    std::fs::OpenOptions::new()
        .write(true)
        .open(DROP_CACHES)
        .is_ok()
}

/// Writes dirty pages back, then drops the page cache, so the next read comes from the disk.
pub fn drop_caches() -> Result<()> {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write(DROP_CACHES, "3\n").map_err(|e| BenchError::io(DROP_CACHES, e))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_is_described() {
        let e = capture();
        assert!(e.cores >= 1);
        assert!(!e.bakeoff_version.is_empty());
        assert!(cpu_seconds() >= 0.0);
    }
}
