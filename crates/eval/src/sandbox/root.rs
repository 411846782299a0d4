//! The minimal root the init process builds and pivots into.

#[allow(unused_imports)]
use super::*;

/// One step of building the minimal root under the mount point (paths already prefixed).
pub(super) enum RootOp {
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

pub(super) fn cstring(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| Error::Sandbox(format!("path with NUL: {}", p.display())))
}

/// Mount flags a read-only remount of a bind of `p` must keep: inside a user namespace the
/// kernel refuses a remount that would clear a flag the original mount has.
pub(super) fn locked_flags(p: &Path) -> libc::c_ulong {
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
pub(super) fn root_ops(mount_point: &Path, python_dirs: &[PathBuf]) -> Result<Vec<RootOp>> {
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
