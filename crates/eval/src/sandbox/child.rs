//! The three forked processes (keeper, init, program) and the fixed descriptors and stages
//! through which they report to the evaluator.

#[allow(unused_imports)]
use super::*;

/// Fixed descriptor numbers in the keeper and init (the parent's are all >= 200).
pub(super) const FD_REPORT: i32 = 100;
pub(super) const FD_PROG: i32 = 101;
pub(super) const FD_OUT: i32 = 102;
pub(super) const FD_ERR: i32 = 103;
pub(super) const FD_DONE: i32 = 104;

/// Stages, for the error the child reports before it gives up.
pub(super) const STAGES: [&str; 24] = [
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
pub(super) struct Plan<'a> {
    pub(super) isolate: bool,
    pub(super) user_ns: bool,
    pub(super) drop_to: Option<u32>,
    pub(super) mount_point: CString,
    pub(super) ops: Vec<RootOp>,
    pub(super) tmp_opts: CString,
    pub(super) uid_map: Vec<u8>,
    pub(super) gid_map: Vec<u8>,
    pub(super) cgroup_procs: Vec<CString>,
    pub(super) python: CString,
    pub(super) argv: Vec<*const libc::c_char>,
    pub(super) envp: Vec<*const libc::c_char>,
    pub(super) workdir: CString,
    pub(super) limits: Limits,
    pub(super) nproc: u64,
    pub(super) landlock: Option<u32>,
    pub(super) seccomp: Option<&'a (BpfProgram, BpfProgram)>,
    pub(super) fds: [i32; 5],
}

/// Reports (stage, errno) on the report pipe and exits. Child side only.
pub(super) fn die(stage: usize) -> ! {
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

pub(super) fn report(tag: u8, value: i32) {
    let mut msg = [0u8; 5];
    msg[0] = tag;
    msg[1..5].copy_from_slice(&value.to_le_bytes());
    // SAFETY: a plain write of a stack buffer.
    unsafe {
        libc::write(FD_REPORT, msg.as_ptr().cast(), msg.len());
    }
}

pub(super) fn stage(i: &str) -> usize {
    STAGES.iter().position(|s| *s == i).unwrap_or(0)
}

/// Writes `data` to a /proc file (child side, no allocation).
///
/// # Safety
/// Child side only.
pub(super) unsafe fn write_file(path: &CStr, data: &[u8]) -> bool {
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

pub(super) fn close_from(first: i32) {
    // SAFETY: closing descriptors the child does not use.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0) != 0 {
            for fd in first..4096 {
                libc::close(fd);
            }
        }
    }
}

pub(super) fn set_limit(res: libc::__rlimit_resource_t, soft: u64, hard: u64) -> bool {
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
pub(super) unsafe fn keeper(plan: &Plan) -> ! {
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
pub(super) unsafe fn init_process(plan: &Plan, keeper_pid: i32) -> ! {
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
pub(super) unsafe fn build_root(plan: &Plan) {
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
pub(super) unsafe fn program(plan: &Plan) -> ! {
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
