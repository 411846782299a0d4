#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `bakeoff quantize` end to end: writing files, `--measure` on a small text, refusals, and the
//! llama.cpp interop script (run when the Python reference environment is installed).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bakeoff() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bakeoff"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("cannot run bakeoff")
}

fn ok(cmd: &mut Command) -> (String, String) {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8(out.stdout).expect("stdout is UTF-8"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn fails(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(!out.status.success(), "should have failed");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !err.contains("panicked"),
        "panic instead of an error: {err}"
    );
    err
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tiny_hf(dir: &Path, preset: &str) -> PathBuf {
    let out = dir.join(format!("{preset}-hf"));
    ok(bakeoff()
        .args([
            "synth", "--preset", preset, "--format", "hf", "--quant", "f32",
        ])
        .args(["--seed", "3", "--out"])
        .arg(&out));
    out
}

#[test]
fn quantize_writes_a_file_that_generates() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny_hf(dir.path(), "tiny-llama");
    let out = dir.path().join("tl-q4_k.gguf");
    let (stdout, stderr) = ok(bakeoff()
        .args(["quantize", "--model"])
        .arg(&hf)
        .args(["--to", "q4_k", "--out"])
        .arg(&out)
        .args(["--threads", "2"]));
    assert_eq!(stdout.trim(), out.to_string_lossy());
    // 64-wide rows fit no K-quant: llama.cpp's fallbacks, and the report says so.
    assert!(stderr.contains("q5_0"), "{stderr}");
    assert!(stderr.contains("fell back"), "{stderr}");
    assert!(stderr.contains("chat template included"), "{stderr}");
    let (gen_out, _) = ok(bakeoff().args(["generate", "--model"]).arg(&out).args([
        "--prompt-ids",
        "[1, 40, 41]",
        "--max-tokens",
        "4",
        "--ignore-eos",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&gen_out).unwrap();
    assert_eq!(v["generated_ids"].as_array().unwrap().len(), 4);
    let (info, _) = ok(bakeoff().args(["info", "--model"]).arg(&out));
    assert!(info.contains("mixed(q5_0,q8_0)"), "{info}");
}

#[test]
fn bad_requests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny_hf(dir.path(), "tiny-qwen2");
    let out = dir.path().join("x.gguf");
    let e = fails(
        bakeoff()
            .args(["quantize", "--model"])
            .arg(&hf)
            .arg("--out")
            .arg(&out),
    );
    assert!(e.contains("--to"), "{e}");
    let e = fails(
        bakeoff()
            .args(["quantize", "--model"])
            .arg(&hf)
            .args(["--to", "q3_k", "--out"])
            .arg(&out),
    );
    assert!(e.contains("unknown type `q3_k`"), "{e}");
    let e = fails(
        bakeoff()
            .args(["quantize", "--measure", "--model"])
            .arg(&hf),
    );
    assert!(e.contains("--against"), "{e}");
    let e = fails(
        bakeoff()
            .args(["quantize", "--measure", "--model"])
            .arg(&hf)
            .arg("--against")
            .arg(&hf)
            .arg("--data-dir")
            .arg(dir.path()),
    );
    assert!(e.contains("WikiText-2"), "{e}");
}

/// `--measure` on a small text: the reference measured against itself (as an f32 GGUF, with
/// Llama's permuted Q/K and interleaved RoPE) costs nothing; Q8_0 costs a little; the JSON and
/// the table carry every figure.
#[test]
fn measure_reports_quality_speed_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let hf = tiny_hf(dir.path(), "tiny-llama");
    let f32_gguf = dir.path().join("tl-f32.gguf");
    let q4 = dir.path().join("tl-q4_0.gguf");
    for (to, out) in [("f32", &f32_gguf), ("q4_0", &q4)] {
        ok(bakeoff()
            .args(["quantize", "--model"])
            .arg(&hf)
            .args(["--to", to, "--out"])
            .arg(out));
    }
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("wikitext-2-raw")).unwrap();
    let text: String = (0..400)
        .map(|i| {
            format!(" = Section {i} = \n The quick brown fox {i} jumps over the lazy dog . \n")
        })
        .collect();
    std::fs::write(data.join("wikitext-2-raw/wiki.test.raw"), text).unwrap();
    let json = dir.path().join("out/results.json");
    let (table, stderr) = ok(bakeoff()
        .args(["quantize", "--measure", "--model"])
        .arg(&q4)
        .arg("--model")
        .arg(&f32_gguf)
        .arg("--against")
        .arg(&hf)
        .arg("--data-dir")
        .arg(&data)
        .args(["--tokens", "1024", "--ctx", "128", "--threads", "2"])
        .args([
            "--speed-prompt",
            "16",
            "--speed-tokens",
            "4",
            "--speed-runs",
            "1",
        ])
        .arg("--out")
        .arg(&json));
    assert!(stderr.contains("8 chunks of 128 tokens"), "{stderr}");
    assert!(table.contains("(reference)"), "{table}");
    assert!(table.contains("tl-q4_0.gguf"), "{table}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(
        (r["kind"].as_str(), r["schema_version"].as_u64()),
        (Some("quantize"), Some(1))
    );
    assert_eq!(r["data"]["chunks"], 8);
    // 63 scored positions per chunk of 128 (64 .. 126 predict the next token).
    assert_eq!(r["data"]["scored_tokens"], 8 * 63);
    assert_eq!(r["data"]["bos_per_chunk"], true);
    let q = &r["models"][0]["quality"];
    let same = &r["models"][1]["quality"];
    let kld = q["kld_mean"]["value"].as_f64().unwrap();
    assert!(kld > 1e-6 && kld < 0.05, "Q4_0 mean KLD {kld}");
    assert!(q["ppl"]["value"].as_f64().unwrap() > 1.0);
    assert!(same["kld_mean"]["value"].as_f64().unwrap() < 1e-6, "{same}");
    assert!(same["kld_p99"].as_f64().unwrap() < 1e-5, "{same}");
    assert_eq!(same["same_top_pct"]["value"], 100.0);
    assert!(same["ln_ppl_ratio"]["value"].as_f64().unwrap().abs() < 1e-5);
    for m in [&r["reference"], &r["models"][0], &r["models"][1]] {
        let s = &m["speed"];
        assert!(s["decode_tok_s"].as_f64().unwrap() > 0.0, "{m}");
        assert!(s["prefill_tok_s"].as_f64().unwrap() > 0.0, "{m}");
        assert!(s["peak_rss_bytes"].as_u64().unwrap() > 1 << 20, "{m}");
        assert_eq!(s["generated_tokens"], 4);
    }
    assert_eq!(r["models"][0]["weight_dtype"], "mixed(q4_0,q8_0)");
    assert!(
        r["models"][0]["file_bytes"].as_u64().unwrap()
            < r["reference"]["file_bytes"].as_u64().unwrap()
    );
}

/// scripts/interop_llama_cpp.py: llama.cpp loads files bakeoff wrote and vice versa, with the
/// same greedy tokens, and both quantizers write the same tensors. Needs llama-cpp-python (CI's
/// scripts/ci-python.sh builds it); skipped with a note when absent, unless
/// `BAKEOFF_E2E_REQUIRED=1`.
#[test]
fn llama_cpp_interop() {
    let root = repo_root();
    // The reference venv, CI's venv (scripts/ci-python.sh builds llama-cpp-python there), or
    // $BAKEOFF_PYTHON: the first that can import llama_cpp.
    let candidates: Vec<PathBuf> = std::env::var_os("BAKEOFF_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([
            root.join(".venv-ref/bin/python"),
            root.join(".venv-ci/bin/python"),
        ])
        .collect();
    let found = candidates.iter().find(|p| {
        Command::new(p)
            .args(["-c", "import llama_cpp, numpy, gguf, safetensors"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(python) = found else {
        let msg = format!(
            "no Python with llama_cpp, numpy, gguf and safetensors among {candidates:?} \
             (scripts/ci-python.sh or scripts/reference/setup.sh installs them)"
        );
        if std::env::var("BAKEOFF_E2E_REQUIRED").is_ok_and(|v| v == "1") {
            panic!("llama.cpp interop is required (BAKEOFF_E2E_REQUIRED=1): {msg}");
        }
        eprintln!("SKIPPED llama_cpp_interop: {msg}");
        return;
    };
    let out = Command::new(python)
        .arg(root.join("scripts/interop_llama_cpp.py"))
        .args(["--bakeoff", env!("CARGO_BIN_EXE_bakeoff"), "--steps", "16"])
        .output()
        .expect("cannot run the interop script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "interop_llama_cpp.py failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all checks agree"));
}
