//! Hostile completions run through the HumanEval program builder and the sandbox: each must be
//! contained, count as a failure, and leave the sandbox fit for the next program.

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

use bakeoff_eval::code;
use bakeoff_eval::data::HumanEvalItem;
use bakeoff_eval::sandbox::{Limits, SANDBOX_UID, Sandbox};

fn sandbox() -> &'static Sandbox {
    static SB: OnceLock<Sandbox> = OnceLock::new();
    SB.get_or_init(|| {
        let limits = Limits {
            timeout_s: 4.0,
            cpu_s: 4,
            ..Limits::default()
        };
        Sandbox::new(limits).expect("python3 is needed for the sandbox tests")
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

/// The tests of this file run in parallel threads; a test that inspects the sandbox uid's
/// processes after its run holds this across run and check, so another test's program cannot
/// start in between and be counted as a survivor.
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn run(completion: &str) -> bakeoff_eval::sandbox::RunOutcome {
    let _guard = exclusive();
    run_holding_lock(completion)
}

fn run_holding_lock(completion: &str) -> bakeoff_eval::sandbox::RunOutcome {
    sandbox()
        .run_python(&code::humaneval_program(&item(), completion))
        .expect("sandbox run")
}

fn assert_still_works() {
    let ok = run("    return a + b\n");
    assert!(
        ok.passed,
        "a correct completion must pass after a hostile one: {ok:?}"
    );
}

#[test]
fn correct_and_wrong_completions() {
    assert!(run("    return a + b\n").passed);
    let wrong = run("    return a - b\n");
    assert!(
        !wrong.passed && wrong.stderr_tail.contains("AssertionError"),
        "{wrong:?}"
    );
    let syntax = run("    return a +\n");
    assert!(!syntax.passed && syntax.stderr_tail.contains("SyntaxError"));
}

#[test]
fn infinite_loop_times_out() {
    let r = run("    while True:\n        pass\n");
    assert!(!r.passed);
    assert!(r.timed_out || r.signal.is_some(), "{r:?}");
    assert!(
        r.wall_s < 8.0,
        "the wall-clock limit kills it: {}",
        r.wall_s
    );
    assert_still_works();
}

#[test]
fn sleeping_child_processes_are_killed_with_the_group() {
    let r = run(
        "    import subprocess, time\n    subprocess.Popen(['sleep', '300'])\n    time.sleep(300)\n",
    );
    assert!(!r.passed && r.timed_out, "{r:?}");
    assert_still_works();
}

#[test]
fn fork_bomb_is_contained() {
    let guard = exclusive();
    let r = run_holding_lock(
        "    import os\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n",
    );
    assert!(!r.passed, "{r:?}");
    assert!(r.wall_s < 10.0);
    if sandbox().isolation.dropped_uid.is_some() {
        // Every process of the sandbox uid is gone after the run.
        let left = std::fs::read_dir("/proc")
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| {
                        std::fs::read_to_string(e.path().join("status"))
                            .ok()
                            .and_then(|s| {
                                s.lines()
                                    .find(|l| l.starts_with("Uid:"))
                                    .map(str::to_string)
                            })
                            .is_some_and(|l| {
                                l.split_whitespace().nth(1) == Some(&SANDBOX_UID.to_string())
                            })
                            && !std::fs::read_to_string(e.path().join("status"))
                                .is_ok_and(|s| s.contains("Z (zombie)"))
                    })
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(left, 0, "fork bomb processes survived");
    }
    drop(guard);
    assert_still_works();
}

#[test]
fn writing_outside_its_directory_is_refused() {
    let target: PathBuf =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("escape-{}", std::process::id()));
    let tmp = std::env::temp_dir().join(format!("bakeoff-escape-{}", std::process::id()));
    let _ = std::fs::remove_file(&target);
    let _ = std::fs::remove_file(&tmp);
    let r = run(&format!(
        "    open({:?}, 'w').write('escaped')\n    return a + b\n",
        target.display().to_string()
    ));
    assert!(
        !r.passed,
        "writing into the repository's target dir must fail: {r:?}"
    );
    assert!(
        !target.exists(),
        "the file must not exist outside the sandbox"
    );
    let r2 = run(&format!(
        "    open({:?}, 'w').write('escaped')\n    return a + b\n",
        tmp.display().to_string()
    ));
    if sandbox().isolation.mount_namespace {
        // /tmp is a private tmpfs inside: the write lands there and vanishes.
        assert!(
            !tmp.exists(),
            "a write to /tmp must not reach the host's /tmp: {r2:?}"
        );
    } else {
        let _ = std::fs::remove_file(&tmp);
    }
    // Its own directory is writable.
    assert!(run("    open('scratch.txt', 'w').write('ok')\n    return a + b\n").passed);
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
    if sandbox().isolation.network_namespace {
        assert!(!r.passed, "a connection must fail without network: {r:?}");
        let mut buf = [0u8; 8];
        let got = listener
            .accept()
            .ok()
            .map(|(mut s, _)| s.read(&mut buf).unwrap_or(0));
        assert!(got.is_none(), "the listener must see no connection");
    } else {
        eprintln!("no network namespace on this system: network containment not enforced");
    }
    assert_still_works();
}

#[test]
fn unbounded_allocation_is_contained() {
    let r = run("    x = []\n    while True:\n        x.append(bytearray(50_000_000))\n");
    assert!(!r.passed, "{r:?}");
    // Normally a MemoryError well before the timeout; on a heavily loaded machine the wall-clock
    // limit may come first, which contains it just as well.
    assert!(
        r.stderr_tail.contains("MemoryError") || r.timed_out || r.signal.is_some(),
        "{r:?}"
    );
    assert_still_works();
}

#[test]
fn environment_is_scrubbed() {
    // SAFETY: single assignment in a test before the sandbox runs; other tests do not read it.
    unsafe { std::env::set_var("BAKEOFF_SECRET_TOKEN", "hunter2") };
    let r = run(
        "    import os\n    assert 'BAKEOFF_SECRET_TOKEN' not in os.environ\n    assert os.getcwd() != '/'\n    return a + b\n",
    );
    assert!(r.passed, "{r:?}");
}

#[test]
fn isolation_is_reported() {
    let iso = &sandbox().isolation;
    eprintln!("sandbox isolation on this system: {iso:?}");
    assert!(!iso.python_version.is_empty());
    let r = sandbox()
        .run_python("import os\nprint(os.getuid())\n")
        .expect("run");
    if let Some(uid) = iso.dropped_uid {
        assert_eq!(r.stdout_tail.trim(), uid.to_string());
    }
}
