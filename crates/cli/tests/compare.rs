//! End to end: `bakeoff compare` on the two tiny synthetic models (bench, eval, answers, report,
//! history), then `bakeoff report` re-rendering from the folder and `bakeoff history` diffing
//! the two runs. Runs in about a second of model time.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_bakeoff");

fn shared() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared"))
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn synth(dir: &Path, preset: &str) -> String {
    let p = dir.join(format!("synthetic-{preset}.gguf"));
    ok(&run(&[
        "synth",
        "--preset",
        preset,
        "--format",
        "gguf",
        "--out",
        p.to_str().unwrap(),
    ]));
    p.display().to_string()
}

#[test]
fn compare_report_and_history_on_tiny_models() {
    let data = shared().join("evaldata");
    assert!(
        data.join("SHA256SUMS").is_file(),
        "the evaluation data is missing: expected ../shared/evaldata ({})",
        data.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        synth(dir.path(), "tiny-llama"),
        synth(dir.path(), "tiny-qwen2"),
    );
    // A quantized variant measured against its source, for the report's quantization section.
    let q8 = dir.path().join("a-q8_0.gguf");
    let qres = dir.path().join("quantize.json");
    ok(&run(&[
        "quantize",
        "--model",
        &a,
        "--to",
        "q8_0",
        "--out",
        q8.to_str().unwrap(),
    ]));
    ok(&run(&[
        "quantize",
        "--measure",
        "--model",
        q8.to_str().unwrap(),
        "--against",
        &a,
        "--data-dir",
        data.to_str().unwrap(),
        "--tokens",
        "256",
        "--ctx",
        "128",
        "--no-speed",
        "--out",
        qres.to_str().unwrap(),
    ]));
    let out = dir.path().join("report");
    let db = dir.path().join("history.sqlite");
    let (out_s, db_s, data_s) = (
        out.to_str().unwrap(),
        db.to_str().unwrap(),
        data.to_str().unwrap(),
    );
    let o = run(&[
        "compare",
        "-m",
        &a,
        "-m",
        &b,
        "--out",
        out_s,
        "--db",
        db_s,
        "--data-dir",
        data_s,
        "--repetitions",
        "2",
        "--max-tokens",
        "12",
        "--depths",
        "128,256",
        "--depth-tokens",
        "4",
        "--limit",
        "2",
        "--max-new-tokens",
        "8",
        "--answer-tokens",
        "8",
        "--no-cold-load",
        "--no-progress",
        "--quantize-results",
        qres.to_str().unwrap(),
    ]);
    ok(&o);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("## Quantization") && md.contains("a-q8_0.gguf"),
        "the quantize results are not in the report"
    );
    for f in [
        "bench.json",
        "eval/results.json",
        "eval/audit.jsonl",
        "answers.json",
        "compare.json",
        "routing.json",
        "report.md",
        "report.html",
        "charts/tok_s_per_scenario.svg",
        "charts/context_scaling_decode.svg",
        "charts/latency_distribution.svg",
        "charts/quality_per_category.svg",
        "charts/quality_vs_speed.svg",
    ] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    for section in [
        "## Executive summary",
        "## Test environment",
        "## Model overview",
        "### Generation speed",
        "### Context scaling",
        "## Quality",
        "### Side-by-side answers",
        "Explain artificial intelligence in simple terms",
        "## Chat interface",
        "## Resource utilisation",
        "## Cost-benefit",
        "### Deployment matrix",
        "## Hardware requirements",
        "## Quantization",
        "## Tiered routing",
        "### Calibrated complexity router",
        "## Methodology",
        "## Appendix: raw data",
    ] {
        assert!(md.contains(section), "report lacks {section}");
    }
    assert!(
        md.contains("**Synthetic models:"),
        "synthetic models must be labelled"
    );
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.matches("<svg").count() >= 5);

    // Re-render from the folder alone into another folder: the same report, but for its sources.
    let again = dir.path().join("again");
    ok(&run(&[
        "report",
        out_s,
        "--out",
        again.to_str().unwrap(),
        "--db",
        db_s,
    ]));
    let md2 = std::fs::read_to_string(again.join("report.md")).unwrap();
    let body = |s: &str| {
        s.lines()
            .skip(3)
            .filter(|l| !l.contains(".json"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(body(&md), body(&md2));

    // The router is calibrated from what eval wrote: per-item scores from results.json, prompts
    // from the audit trail, half the items held out to check the chosen threshold.
    let eval_dir = out.join("eval");
    let cal = ok(&run(&[
        "route",
        "calibrate",
        "--results",
        eval_dir.to_str().unwrap(),
        "--strong-share",
        "0.5",
        "--dry-run",
        "--json",
    ]));
    let cal: serde_json::Value = serde_json::from_str(&cal).unwrap();
    // Without --fast/--strong the smaller model (parameters counted by eval) is the fast tier.
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(eval_dir.join("results.json")).unwrap())
            .unwrap();
    let params = |label: &serde_json::Value| {
        results["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| &m["label"] == label)
            .unwrap_or_else(|| panic!("{label} is not an eval model"))["info"]["parameters"]
            .as_u64()
            .unwrap()
    };
    assert_ne!(cal["fast"], cal["strong"]);
    assert!(params(&cal["fast"]) <= params(&cal["strong"]), "{cal}");
    let held = &cal["held_out"];
    let n_cal = cal["calibration"]["items"].as_u64().unwrap();
    let n_held = held["items"].as_u64().unwrap();
    assert!(n_cal > 0 && n_held > 0, "{cal}");
    for k in ["quality", "random_at_share", "strong_share"] {
        let v = held[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{k} {v}");
    }
    let e = run(&[
        "route",
        "calibrate",
        "--results",
        eval_dir.to_str().unwrap(),
        "--fast",
        "nope",
        "--dry-run",
    ]);
    assert!(!e.status.success());
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(
        err.contains("`nope` is not a model") && err.contains("synthetic-tiny"),
        "{err}"
    );

    let list = ok(&run(&["history", "--db", db_s]));
    assert!(
        list.contains("compare") && list.contains("report"),
        "{list}"
    );
    let diff = ok(&run(&["history", "--db", db_s, "--diff", "1", "2"]));
    assert!(
        diff.contains("decode_tok_s.short") && diff.contains("+0.0%"),
        "{diff}"
    );

    // --resume keeps the finished bench and answers eval from its journal: same scores, no
    // model call repeated.
    let scores = |v: &serde_json::Value| -> Vec<String> {
        v["models"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|m| m["components"].as_array().unwrap().clone())
            .map(|c| format!("{}={}", c["name"], c["headline"]))
            .collect()
    };
    let bench_before = std::fs::read(out.join("bench.json")).unwrap();
    let args: Vec<&str> = [
        "compare",
        "-m",
        &a,
        "-m",
        &b,
        "--out",
        out_s,
        "--db",
        db_s,
        "--data-dir",
        data_s,
        "--repetitions",
        "2",
        "--max-tokens",
        "12",
        "--depths",
        "128,256",
        "--depth-tokens",
        "4",
        "--limit",
        "2",
        "--max-new-tokens",
        "8",
        "--answer-tokens",
        "8",
        "--no-cold-load",
        "--no-progress",
        "--resume",
    ]
    .to_vec();
    let o = run(&args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    ok(&o);
    assert!(err.contains("bench: kept"), "{err}");
    assert!(err.contains("responses taken from"), "{err}");
    assert_eq!(std::fs::read(out.join("bench.json")).unwrap(), bench_before);
    let resumed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(eval_dir.join("results.json")).unwrap())
            .unwrap();
    assert_eq!(scores(&results), scores(&resumed));
}

#[test]
fn compare_and_report_refuse_bad_input() {
    let o = run(&["compare", "-m", "only-one.gguf"]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("exactly two models"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("x.json");
    std::fs::write(&junk, "[1, 2]").unwrap();
    let o = run(&["report", junk.to_str().unwrap(), "--no-history"]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("not a bakeoff results file"), "{e}");
    // A wrong --quantize-results file is refused before any model is benchmarked.
    let o = run(&[
        "compare",
        "-m",
        "a.gguf",
        "-m",
        "b.gguf",
        "--quantize-results",
        junk.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("--quantize-results") && e.contains("not a `bakeoff quantize --measure`"),
        "{e}"
    );
    let o = run(&[
        "history",
        "--db",
        dir.path().join("none.sqlite").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no history database"));
}
