//! Hostile completions run through the HumanEval program builder and the sandbox: each must be
//! contained, count as a failure, leave no trace on the host, and leave the sandbox fit for the
//! next program. The host side of each attack (a sentinel process, a listening socket, a secret
//! file) is set up here and checked after the run.

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bakeoff_eval::code;
use bakeoff_eval::data::HumanEvalItem;
use bakeoff_eval::sandbox::{Limits, RunOutcome, SANDBOX_UID, Sandbox};

const MEMORY: u64 = 512 << 20;
const DISK: u64 = 8 << 20;

fn sandbox() -> &'static Sandbox {
    static SB: OnceLock<Sandbox> = OnceLock::new();
    SB.get_or_init(|| {
        let limits = Limits {
            timeout_s: 4.0,
            cpu_s: 4,
            memory_bytes: MEMORY,
            disk_bytes: DISK,
            ..Limits::default()
        };
        // CI must prove containment: a machine where the namespaces cannot be made fails here
        // with the reason, rather than skipping the attacks.
        Sandbox::new(limits).expect("the sandbox must isolate on this machine")
    })
}

fn item() -> HumanEvalItem {
    HumanEvalItem {
        task_id: "HumanEval/test".into(),
        prompt: "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n".into(),
        canonical_solution: "    return a + b\n".into(),
        test: "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n".into(),
        entry_point: "add".into(),
    }
}

/// The tests of this file run in parallel threads; a test that inspects the host after its run
/// holds this across run and check, so another test's program cannot run in between.
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn run(completion: &str) -> RunOutcome {
    let _guard = exclusive();
    run_holding_lock(completion)
}

fn run_holding_lock(completion: &str) -> RunOutcome {
    let start = Instant::now();
    let r = sandbox()
        .run_python(&code::humaneval_program(&item(), completion))
        .expect("sandbox run");
    // Every case is bounded: the 4 s limit plus set-up and tear-down.
    assert!(
        start.elapsed() < Duration::from_secs(12),
        "run took {:?}: {r:?}",
        start.elapsed()
    );
    r
}

fn assert_still_works() {
    let ok = run("    return a + b\n");
    assert!(
        ok.passed,
        "a correct completion must pass after a hostile one: {ok:?}"
    );
}

/// Host processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmd)
                .contains(marker)
                .then_some(pid)
        })
        .filter(|&pid| pid != std::process::id())
        .collect()
}

fn unique(name: &str) -> String {
    format!(
        "bakeoff-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    )
}

#[test]
fn correct_and_wrong_completions() {
    let ok = run("    return a + b\n");
    assert!(ok.passed && !ok.missing_token, "{ok:?}");
    let wrong = run("    return a - b\n");
    assert!(
        !wrong.passed && wrong.stderr_tail.contains("AssertionError"),
        "{wrong:?}"
    );
    let syntax = run("    return a +\n");
    assert!(
        !syntax.passed && syntax.stderr_tail.contains("SyntaxError"),
        "{syntax:?}"
    );
}

#[test]
fn exiting_before_the_tests_fails() {
    // The function is right, but the module ends before check() runs.
    for tail in [
        "import os\nos._exit(0)\n",
        "import sys\nsys.exit(0)\n",
        "raise SystemExit(0)\n",
        "import os, sys\nsys.stdout.flush()\nos.close(3)\n",
    ] {
        let r = run(&format!("    return a + b\n{tail}"));
        assert!(!r.passed, "{tail:?} must fail: {r:?}");
    }
    let r = run("    return a + b\nimport os\nos._exit(0)\n");
    assert!(r.missing_token && r.exit_code == Some(0), "{r:?}");
    assert!(r.reason().contains("completion token"), "{}", r.reason());
    // Exiting from inside the function, mid-test, fails the same way.
    let r = run("    import os\n    os._exit(0)\n");
    assert!(!r.passed && r.missing_token, "{r:?}");
    assert_still_works();
}

#[test]
fn infinite_loop_times_out() {
    let r = run("    while True:\n        pass\n");
    assert!(!r.passed);
    assert!(r.timed_out, "{r:?}");
    assert!(
        r.wall_s < 8.0,
        "the wall-clock limit kills it: {}",
        r.wall_s
    );
    let r = run("    import time\n    time.sleep(300)\n");
    assert!(!r.passed && r.timed_out, "{r:?}");
    assert_still_works();
}

#[test]
fn fork_bomb_is_contained() {
    let marker = unique("forkbomb");
    let guard = exclusive();
    let r = run_holding_lock(&format!(
        "    import os, sys\n    while True:\n        try:\n            if os.fork() == 0:\n                os.execv(sys.executable, [sys.executable, '-c', 'import os\\nwhile True:\\n    try: os.fork()\\n    except OSError: pass', '{marker}'])\n        except OSError:\n            pass\n"
    ));
    assert!(!r.passed, "{r:?}");
    let left = processes_with(&marker);
    drop(guard);
    assert!(left.is_empty(), "fork bomb processes survived: {left:?}");
    assert_still_works();
}

#[test]
fn setsid_and_double_fork_escapees_die_with_the_run() {
    let marker = unique("escapee");
    let guard = exclusive();
    let r = run_holding_lock(&format!(
        "    import os, sys, time\n    if os.fork() == 0:\n        os.setsid()\n        if os.fork() == 0:\n            os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(600)', '{marker}'])\n        os._exit(0)\n    time.sleep(0.5)\n    return a - b\n"
    ));
    assert!(!r.passed, "{r:?}");
    let left = processes_with(&marker);
    drop(guard);
    assert!(left.is_empty(), "an escapee outlived the run: {left:?}");
    assert_still_works();
}

#[test]
fn kill_minus_one_reaches_nothing_outside() {
    let guard = exclusive();
    // A sentinel outside the sandbox; as root it runs as the sandbox's own uid, so only the
    // PID namespace (not a uid difference) protects it.
    let mut cmd = Command::new("sleep");
    cmd.arg("60")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        cmd.uid(SANDBOX_UID).gid(SANDBOX_UID);
    }
    let mut sentinel = cmd.spawn().expect("sentinel");
    let r = run_holding_lock(
        "    import os, signal\n    for s in (signal.SIGKILL, signal.SIGTERM):\n        try:\n            os.kill(-1, s)\n        except OSError:\n            pass\n    for pid in range(1, 4096):\n        try:\n            os.kill(pid, signal.SIGKILL)\n        except OSError:\n            pass\n    return a - b\n",
    );
    std::thread::sleep(Duration::from_millis(100));
    let alive = sentinel.try_wait().expect("try_wait").is_none();
    let _ = sentinel.kill();
    let _ = sentinel.wait();
    drop(guard);
    assert!(!r.passed, "{r:?}");
    assert!(alive, "the sentinel outside the sandbox was killed");
    assert_still_works();
}

#[test]
fn host_unix_sockets_are_unreachable() {
    let path = std::env::temp_dir().join(unique("sock"));
    let listener = UnixListener::bind(&path).expect("bind unix socket");
    listener.set_nonblocking(true).expect("nonblocking");
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777));
    }
    let r = run(&format!(
        "    import socket\n    s = socket.socket(socket.AF_UNIX)\n    s.connect({:?})\n    s.sendall(b'leak')\n    return a + b\n",
        path.display().to_string()
    ));
    let got = listener.accept().is_ok();
    let _ = std::fs::remove_file(&path);
    assert!(!r.passed, "connect to a host socket must fail: {r:?}");
    assert!(!got, "the host socket saw a connection");

    // Abstract sockets (no path) belong to the network namespace.
    use std::os::linux::net::SocketAddrExt;
    let name = unique("abstract");
    let addr =
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
    let abs = UnixListener::bind_addr(&addr).expect("bind abstract");
    abs.set_nonblocking(true).expect("nonblocking");
    let r = run(&format!(
        "    import socket\n    s = socket.socket(socket.AF_UNIX)\n    s.connect('\\0{name}')\n    s.sendall(b'leak')\n    return a + b\n"
    ));
    assert!(
        !r.passed,
        "connect to a host abstract socket must fail: {r:?}"
    );
    assert!(
        abs.accept().is_err(),
        "the abstract socket saw a connection"
    );
    assert_still_works();
}

#[test]
fn network_connections_fail() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let r = run(&format!(
        "    import socket\n    s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    s.sendall(b'leak')\n    return a + b\n"
    ));
    assert!(!r.passed, "a connection must fail without network: {r:?}");
    let mut buf = [0u8; 8];
    let got = listener
        .accept()
        .ok()
        .map(|(mut s, _)| s.read(&mut buf).unwrap_or(0));
    assert!(got.is_none(), "the listener must see no connection");
    // Not even a socket of another family can be made (seccomp), where seccomp is on.
    if sandbox().isolation.seccomp {
        let r = run(
            "    import socket\n    socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n    return a + b\n",
        );
        assert!(
            !r.passed && r.stderr_tail.contains("PermissionError"),
            "{r:?}"
        );
    }
    assert_still_works();
}

#[test]
fn host_files_outside_the_minimal_root_are_unreadable() {
    let secret = "bakeoff-secret-7f3a9c";
    let tmp_file = std::env::temp_dir().join(unique("secret"));
    // The repository's target folder (skipped where this uid cannot write there).
    let target_file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("secret"));
    let mut targets = Vec::new();
    for p in [&tmp_file, &target_file] {
        if std::fs::write(p, secret).is_ok() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            targets.push(p.display().to_string());
        }
    }
    assert!(!targets.is_empty(), "cannot write a secret file anywhere");
    if std::path::Path::new("/etc/shadow").exists() {
        targets.push("/etc/shadow".into());
    }
    for t in &targets {
        let r = run(&format!(
            "    print(open({t:?}).read())\n    return a + b\n"
        ));
        assert!(!r.passed, "reading {t} must fail: {r:?}");
        assert!(!r.stdout_tail.contains(secret), "{r:?}");
    }
    // Writing outside its folder fails too, and nothing appears on the host.
    let escape = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(unique("escape"));
    let r = run(&format!(
        "    open({:?}, 'w').write('escaped')\n    return a + b\n",
        escape.display().to_string()
    ));
    assert!(!r.passed && !escape.exists(), "{r:?}");
    let _ = std::fs::remove_file(&escape);
    for p in [&tmp_file, &target_file] {
        let _ = std::fs::remove_file(p);
    }
    // Its own folder is writable.
    assert!(run("    open('scratch.txt', 'w').write('ok')\n    return a + b\n").passed);
    assert_still_works();
}

#[test]
fn output_file_swaps_change_nothing() {
    let secret = "bakeoff-swap-secret-51c2";
    let secret_file = std::env::temp_dir().join(unique("swap-secret"));
    std::fs::write(&secret_file, secret).expect("write secret");
    let s = secret_file.display().to_string();
    // The program replaces every plausible output path with a FIFO or a symlink to a secret,
    // and points its own stdout at a FIFO nobody reads; the evaluator reads its own pipes, so
    // it neither hangs nor follows the links.
    let r = run(&format!(
        "    import os\n    for name in ('stdout.txt', 'stderr.txt', 'out', 'err'):\n        try:\n            os.symlink({s:?} if name.startswith('std') else '/etc/shadow', name)\n        except OSError:\n            pass\n    for name in ('stdout.fifo', 'stderr.fifo'):\n        os.mkfifo(name)\n    fd = os.open('stdout.fifo', os.O_RDWR)\n    os.dup2(fd, 1)\n    os.dup2(fd, 2)\n    os._exit(0)\n"
    ));
    let _ = std::fs::remove_file(&secret_file);
    assert!(!r.passed && !r.timed_out, "{r:?}");
    assert!(
        !r.stdout_tail.contains(secret) && !r.stderr_tail.contains(secret),
        "{r:?}"
    );
    assert_still_works();
}

#[test]
fn unbounded_allocation_is_contained() {
    let r = run("    x = []\n    while True:\n        x.append(b'x' * 50_000_000)\n");
    assert!(!r.passed, "{r:?}");
    assert!(
        r.stderr_tail.contains("MemoryError") || r.timed_out || r.signal.is_some(),
        "{r:?}"
    );
    // Several processes, each under its own address-space limit, together over the run's
    // memory: the memory cgroup (where there is one) stops them.
    let r = run(
        "    import os\n    kids = []\n    for _ in range(4):\n        pid = os.fork()\n        if pid == 0:\n            x = b'x' * (300 << 20)\n            import time; time.sleep(1)\n            os._exit(0)\n        kids.append(pid)\n    ok = all(os.waitpid(p, 0)[1] == 0 for p in kids)\n    return a + b if ok else None\n",
    );
    if sandbox().isolation.cgroup.is_some() {
        assert!(
            !r.passed,
            "1.2 GB in four processes must not fit in 512 MiB: {r:?}"
        );
        if let Some(peak) = r.peak_memory_bytes {
            assert!(peak <= MEMORY, "peak {peak} over the limit");
        }
    } else {
        eprintln!("no cgroup here: the run's total memory is not bounded ({r:?})");
    }
    assert_still_works();
}

#[test]
fn disk_filler_stops_at_the_work_folder_size() {
    let r = run(
        "    import os, sys\n    total = 0\n    try:\n        i = 0\n        while True:\n            with open(f'fill{i}', 'wb') as f:\n                for _ in range(4):\n                    f.write(b'x' * (1 << 20))\n                    f.flush()\n                    total += 1 << 20\n            i += 1\n    except OSError as e:\n        print('written', total, e, file=sys.stderr)\n    return None\n",
    );
    assert!(!r.passed, "{r:?}");
    let written: u64 = r
        .stderr_tail
        .split_whitespace()
        .skip_while(|w| *w != "written")
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no total in {r:?}"));
    assert!(
        written <= DISK,
        "wrote {written} bytes into an {DISK}-byte folder"
    );
    // And the host's temp dir holds nothing of it.
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .expect("temp dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("fill0").exists())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_still_works();
}

#[test]
fn environment_is_scrubbed_and_the_view_minimal() {
    // SAFETY: single assignment in a test before the sandbox runs; other tests do not read it.
    unsafe { std::env::set_var("BAKEOFF_SECRET_TOKEN", "hunter2") };
    let r = run(
        "    import os, socket\n    assert 'BAKEOFF_SECRET_TOKEN' not in os.environ\n    assert os.getcwd() == '/tmp', os.getcwd()\n    assert socket.gethostname() == 'sandbox'\n    assert not os.path.exists('/proc/1')\n    assert not os.path.exists('/home') and not os.path.exists('/var')\n    assert os.getuid() != 0\n    return a + b\n",
    );
    assert!(r.passed, "{r:?}");
}

#[test]
fn isolation_is_reported() {
    let iso = &sandbox().isolation;
    eprintln!("sandbox isolation on this system: {iso:?}");
    assert!(!iso.python_version.is_empty());
    assert!(iso.pid_namespace && iso.mount_namespace && iso.network_namespace);
    assert!(!iso.unsafe_no_sandbox && iso.completion_token);
    let r = sandbox()
        .run_python("import os\nprint(os.getuid(), os.getgid())\n")
        .expect("run");
    assert!(r.passed, "{r:?}");
    if let Some(uid) = iso.dropped_uid {
        assert_eq!(r.stdout_tail.trim(), format!("{uid} {uid}"));
    }
}
