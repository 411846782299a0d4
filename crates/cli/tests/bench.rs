//! `bakeoff bench` end to end: the real binary, tiny synthetic models written with
//! `bakeoff synth`, one child process per model, every output format, and the error paths.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use bakeoff_record::bench::BenchReport;

fn bakeoff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bakeoff"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Two tiny models (Llama and Qwen2 architectures), written once for this test binary.
fn models() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static M: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    M.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for preset in ["tiny-llama", "tiny-qwen2"] {
            let out = dir.path().join(format!("{preset}.gguf"));
            let o = bakeoff(&[
                "synth",
                "--preset",
                preset,
                "--format",
                "gguf",
                "--quant",
                "f32",
                "--out",
                out.to_str().unwrap(),
            ]);
            assert!(o.status.success(), "synth {preset}: {}", text(&o.stderr));
            paths.push(out);
        }
        let b = paths.pop().unwrap();
        let a = paths.pop().unwrap();
        (dir, a, b)
    })
}

/// One real bench run shared by the tests that only read its results.
fn run_once() -> &'static (PathBuf, Output) {
    static R: OnceLock<(PathBuf, Output)> = OnceLock::new();
    R.get_or_init(|| {
        let (dir, a, b) = models();
        let out = dir.path().join("results/run.json");
        let o = bakeoff(&[
            "bench",
            "--model",
            a.to_str().unwrap(),
            "--model",
            b.to_str().unwrap(),
            "--repetitions",
            "2",
            "--max-tokens",
            "10",
            "--scenarios",
            "short,code",
            "--depths",
            "160",
            "--depth-tokens",
            "5",
            "--threads",
            "1",
            "--no-cold-load",
            "--out",
            out.to_str().unwrap(),
            "--format",
            "json",
        ]);
        (out, o)
    })
}

#[test]
fn bench_measures_each_model_in_its_own_process() {
    let (file, o) = run_once();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let stdout: BenchReport = BenchReport::from_json(&text(&o.stdout)).unwrap();
    let saved = BenchReport::read(file).unwrap();
    assert_eq!(stdout, saved, "stdout JSON is the results file");
    assert_eq!(saved.models.len(), 2);
    let pids: Vec<u32> = saved.models.iter().map(|m| m.worker_pid).collect();
    assert!(
        pids[0] != pids[1] && !pids.contains(&std::process::id()) && !pids.contains(&0),
        "{pids:?}"
    );
    for m in &saved.models {
        assert_eq!(m.error, None, "{}", m.label);
        assert_eq!(m.run.threads, Some(1));
        assert_eq!(m.scenarios.len(), 2);
        for s in &m.scenarios {
            assert!(s.samples.iter().all(|x| x.generated_tokens == 10));
            let st = &s.stats;
            assert!(st.e2e_s.as_ref().unwrap().mean >= st.ttft_ms.as_ref().unwrap().mean / 1e3);
        }
        assert_eq!(m.depths.iter().map(|d| d.depth).collect::<Vec<_>>(), [160]);
        assert!(m.memory.peak_rss_bytes.unwrap() >= m.model.file_bytes.unwrap());
        assert!(m.overhead.as_ref().unwrap().fraction < 0.01);
    }
    assert_eq!(saved.settings.repetitions, 2);
    assert!(saved.command.iter().any(|a| a == "bench"));
    // The human summary goes to stderr when stdout is JSON.
    let err = text(&o.stderr);
    assert!(
        err.contains("short: decode tok/s") && err.contains("winner"),
        "{err}"
    );
}

#[test]
fn results_render_in_every_format() {
    let (file, o) = run_once();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let f = file.to_str().unwrap();
    let table = bakeoff(&["bench", "--from", f]);
    assert!(table.status.success(), "{}", text(&table.stderr));
    let t = text(&table.stdout);
    for needle in [
        "== tiny-llama",
        "== tiny-qwen2",
        "decode tok/s",
        "ITL p50/p90/p99 ms",
        "winner",
        "ratio",
    ] {
        assert!(t.contains(needle), "table lacks `{needle}`:\n{t}");
    }
    let md = text(&bakeoff(&["bench", "--from", f, "--format", "md"]).stdout);
    assert!(md.contains("| metric |") && md.contains("|---|"), "{md}");
    let csv = text(&bakeoff(&["bench", "--from", f, "--format", "csv"]).stdout);
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("run_id,label,"), "{csv}");
    assert_eq!(
        lines.len(),
        1 + 2 * 3,
        "header + 2 models × (2 scenarios + 1 depth)"
    );
    // --recompute derives the same statistics from the raw samples (nothing was buffered), and
    // never overwrites the file it read.
    let again = file.with_file_name("recomputed.json");
    let g = again.to_str().unwrap();
    let r = bakeoff(&[
        "bench",
        "--from",
        f,
        "--recompute",
        "--out",
        g,
        "--format",
        "json",
    ]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    let read = |p: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    assert_eq!(read(f)["models"], read(g)["models"]);
    let same = bakeoff(&["bench", "--from", f, "--recompute", "--out", f]);
    assert!(!same.status.success());
    assert!(
        text(&same.stderr).contains("is the --from file"),
        "{}",
        text(&same.stderr)
    );
    let jsonl = text(&bakeoff(&["bench", "--from", f, "--format", "jsonl"]).stdout);
    assert_eq!(jsonl.lines().count(), 6);
    for l in jsonl.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(
            v["generated_tokens"] == 10 || v["generated_tokens"] == 5,
            "{l}"
        );
    }
}

#[test]
fn bench_errors_name_the_problem() {
    let (dir, a, _) = models();
    let missing = dir.path().join("nope.gguf");
    let out = dir.path().join("err.json");
    let o = bakeoff(&[
        "bench",
        "-m",
        a.to_str().unwrap(),
        "-m",
        missing.to_str().unwrap(),
        "--repetitions",
        "1",
        "--max-tokens",
        "4",
        "--scenarios",
        "short",
        "--depths",
        "none",
        "--no-cold-load",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(err.contains("1 of 2 models failed: nope"), "{err}");
    // The good model's numbers are kept beside the failure.
    let saved = BenchReport::read(&out).unwrap();
    assert_eq!(saved.models[0].error, None);
    assert!(
        saved.models[1]
            .error
            .as_deref()
            .unwrap()
            .contains("nope.gguf")
    );

    // Run where the default results folder would appear: a refused run writes nothing.
    let cwd = tempfile::tempdir().unwrap();
    let bad = |args: &[&str], needle: &str| {
        let o = Command::new(env!("CARGO_BIN_EXE_bakeoff"))
            .args(args)
            .current_dir(cwd.path())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let e = text(&o.stderr);
        assert!(e.contains(needle), "{args:?}: {e}");
        assert!(
            !cwd.path().join("results").exists(),
            "{args:?} left results/"
        );
    };
    let m = a.to_str().unwrap();
    bad(
        &["bench", "-m", m, "--format", "xml"],
        "unknown format `xml`",
    );
    bad(
        &["bench", "-m", m, "--repetitions", "0"],
        "--repetitions must be at least 1",
    );
    bad(
        &["bench", "-m", m, "--scenarios", "huge"],
        "unknown scenario `huge`",
    );
    bad(
        &["bench", "-m", m, "--depths", "deep"],
        "`deep` is not a number",
    );
    bad(
        &["bench", "-m", "openai:http://127.0.0.1:9/v1"],
        "name the served model after `#`",
    );
    bad(
        &[
            "bench",
            "--from",
            &dir.path().join("none.json").to_string_lossy(),
        ],
        "none.json",
    );
}

#[test]
fn worker_rejects_a_malformed_job() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bakeoff"))
        .arg("bench-worker")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"{not json").unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("JSON"), "{}", text(&o.stderr));
}

/// A remote engine through the real binary and its child process: a fake OpenAI server in this
/// test process streams 6 tokens per request.
#[test]
fn bench_measures_a_remote_engine_through_the_worker() {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).unwrap();
            let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let n = req["max_tokens"].as_u64().unwrap();
            let mut out = conn;
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            for i in 0..n {
                std::thread::sleep(std::time::Duration::from_millis(2));
                let chunk = serde_json::json!({"choices": [{"index": 0, "delta": {"content": format!("t{i} ")}}]});
                write!(out, "data: {chunk}\n\n").unwrap();
                out.flush().unwrap();
            }
            let usage = serde_json::json!({"choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": n}});
            write!(out, "data: {usage}\n\ndata: [DONE]\n\n").unwrap();
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("remote.json");
    let model = format!("openai:{base}#fake");
    let o = bakeoff(&[
        "bench",
        "-m",
        &model,
        "--repetitions",
        "2",
        "--max-tokens",
        "6",
        "--scenarios",
        "short",
        "--depths",
        "none",
        "--out",
        out.to_str().unwrap(),
        "--format",
        "csv",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let r = BenchReport::read(&out).unwrap();
    let m = &r.models[0];
    assert_eq!((m.label.as_str(), m.error.as_deref()), ("fake", None));
    assert!(
        m.scenarios[0]
            .samples
            .iter()
            .all(|s| s.generated_tokens == 6 && s.prompt_tokens == 30)
    );
    assert!(text(&o.stdout).contains(",fake,"));
}

#[test]
fn membw_reports_bandwidth_cap_and_share() {
    let (_dir, tl, _qw) = models();
    let o = bakeoff(&[
        "bench",
        "--membw",
        "--membw-mib",
        "16",
        "--threads",
        "1",
        "--model",
        tl.to_str().unwrap(),
    ]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}\n{}", text(&o.stderr));
    assert!(out.contains("1 thread:") && out.contains("GB/s"), "{out}");
    let row = out
        .lines()
        .find(|l| l.starts_with(&format!("| {}", tl.display())))
        .unwrap_or_else(|| panic!("no row for the model:\n{out}"));
    // | model | bytes | bandwidth | cap | decode | share (min-max) |
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert_eq!(cells.len(), 8, "{row}");
    let share = cells[6];
    let (median, range) = share.split_once(" (").unwrap_or_else(|| panic!("{row}"));
    let pct = |s: &str| s.trim_end_matches('%').parse::<f64>().unwrap_or(-1.0);
    let (lo, hi) = range
        .trim_end_matches(')')
        .split_once('-')
        .unwrap_or_else(|| panic!("{row}"));
    let (m, lo, hi) = (pct(median), pct(lo), pct(hi));
    assert!(0.0 < lo && lo <= m && m <= hi, "{row}");
    // Zero rounds cannot give a share.
    let o = bakeoff(&[
        "bench",
        "--membw",
        "--membw-mib",
        "16",
        "--membw-rounds",
        "0",
        "--model",
        tl.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("--membw-rounds"),
        "{}",
        text(&o.stderr)
    );
    // A bad model path is an error that names it, not a panic.
    let o = bakeoff(&[
        "bench",
        "--membw",
        "--membw-mib",
        "16",
        "--model",
        "/nope.gguf",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("/nope.gguf"),
        "{}",
        text(&o.stderr)
    );
}

/// A bench killed after its first model keeps that model's result in `OUT.jobs.jsonl`;
/// `--resume` measures only the second, and a journal from another machine is refused.
#[test]
fn an_interrupted_bench_resumes_without_measuring_finished_models_again() {
    let (dir, a, b) = models();
    let out = dir.path().join("resume/run.json");
    let journal = dir.path().join("resume/run.json.jobs.jsonl");
    let args: Vec<String> = [
        "bench",
        "--model",
        a.to_str().unwrap(),
        "--model",
        b.to_str().unwrap(),
        "--repetitions",
        "3",
        "--max-tokens",
        "24",
        "--scenarios",
        "short",
        "--depths",
        "none",
        "--threads",
        "1",
        "--no-cold-load",
        "--no-progress",
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bakeoff"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed as soon as the first model's result is in the journal.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    let first = loop {
        let lines = std::fs::read_to_string(&journal).unwrap_or_default();
        if let Some(l) = lines.lines().nth(1).filter(|_| lines.ends_with('\n')) {
            break serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no job finished");
        assert!(child.try_wait().unwrap().is_none(), "the bench ended first");
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists());
    let kept_pid = first["result"]["worker_pid"].as_u64().unwrap();
    let label = first["label"].as_str().unwrap().to_string();

    let mut resumed = args.clone();
    resumed.push("--resume".into());
    let o = Command::new(env!("CARGO_BIN_EXE_bakeoff"))
        .args(&resumed)
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("{label}: measured before the interruption, kept")),
        "{err}"
    );
    let report = BenchReport::read(&out).unwrap();
    assert_eq!(report.models.len(), 2);
    assert_eq!(u64::from(report.models[0].worker_pid), kept_pid);
    assert_ne!(report.models[1].worker_pid, report.models[0].worker_pid);
    assert!(report.models.iter().all(|m| m.error.is_none()));
    assert!(
        !journal.exists(),
        "the journal is removed once the results are written"
    );

    // A journal written on another machine is refused; nothing is measured or overwritten.
    std::fs::write(
        &journal,
        "{\"kind\":\"bakeoff-bench-jobs\",\"machine\":{\"hostname\":\"elsewhere\"}}\n",
    )
    .unwrap();
    let before = std::fs::read(&out).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_bakeoff"))
        .args(&resumed)
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("another machine or build"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
}
