//! End to end: `bakeoff eval --profile quick` on two tiny random-weight models with the real
//! Llama tokenizer and the real data sets. Scores must sit near chance, every stage must run,
//! the paired tests must be there, and the audit trail must hold every item.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_bakeoff");

fn shared() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared"))
}

fn data_dir() -> PathBuf {
    let d = shared().join("evaldata");
    assert!(
        d.join("SHA256SUMS").is_file(),
        "the evaluation data is missing: expected ../shared/evaldata beside the repository ({})",
        d.display()
    );
    d
}

fn synth(out: &Path, seed: u64) {
    let vocab = shared().join("vocab/ggml-vocab-llama-spm.gguf");
    assert!(vocab.is_file(), "missing {}", vocab.display());
    let st = Command::new(BIN)
        .args([
            "synth",
            "--preset",
            "tiny-llama",
            "--format",
            "gguf",
            "--seed",
            &seed.to_string(),
        ])
        .arg("--vocab")
        .arg(&vocab)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "synth failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

#[test]
fn quick_profile_end_to_end_on_tiny_models() {
    let data = data_dir();
    let dir = tempfile::tempdir().unwrap();
    let (m1, m2) = (
        dir.path().join("tiny-a.gguf"),
        dir.path().join("tiny-b.gguf"),
    );
    synth(&m1, 1);
    synth(&m2, 2);
    let out = dir.path().join("results");
    let run = Command::new(BIN)
        .args([
            "eval",
            "--profile",
            "quick",
            "--format",
            "json",
            "--threads",
            "2",
            "--batch",
            "3",
        ])
        .arg("--model")
        .arg(&m1)
        .arg("--model")
        .arg(&m2)
        .arg("--data-dir")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "eval failed: {stderr}");
    let stdout: Value =
        serde_json::from_slice(&run.stdout).expect("--format json prints the results");
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(stdout, results);
    assert_eq!(results["profile"], "quick");
    assert_eq!(results["ids_match_rule"], true);
    assert_eq!(results["sizes"]["gen_batch"], 3);
    assert_eq!(results["sizes"]["gsm8k_max_tokens"], 256);

    // Every data file read is hashed and matches the pinned checksum.
    let files = results["data_files"].as_array().unwrap();
    assert!(files.len() > 60);
    assert!(
        files.iter().all(
            |f| f["known_match"] == true && f["sha256"].as_str().is_some_and(|s| s.len() == 64)
        )
    );

    let models = results["models"].as_array().unwrap();
    assert_eq!(models.len(), 2);
    for m in models {
        assert!(
            m["info"]["files"][0]["sha256"]
                .as_str()
                .is_some_and(|s| s.len() == 64)
        );
        let comps = m["components"].as_array().unwrap();
        let get = |n: &str| {
            comps
                .iter()
                .find(|c| c["name"] == n)
                .unwrap_or_else(|| panic!("component {n} missing"))
        };
        let expected_n = [
            ("mmlu", 57),
            ("arc_challenge", 30),
            ("hellaswag", 30),
            ("truthfulqa_mc", 40),
            ("gsm8k", 5),
            ("ifeval", 8),
            ("creativity_proxy", 3),
            ("humaneval", 6),
            ("hygiene", 25),
        ];
        for (name, n) in expected_n {
            let c = get(name);
            assert_eq!(c["headline"]["n"], n, "{name}");
            let v = c["headline"]["value"].as_f64().unwrap();
            let (lo, hi) = (
                c["headline"]["ci95"][0].as_f64().unwrap(),
                c["headline"]["ci95"][1].as_f64().unwrap(),
            );
            assert!(
                lo <= v + 1e-12 && v <= hi + 1e-12,
                "{name}: {v} outside [{lo}, {hi}]"
            );
            let s10 = c["score10"].as_f64().unwrap();
            assert!((1.0..=10.0).contains(&s10), "{name}: {s10}");
        }
        // Random weights: multiple choice at chance (its 95% interval covers the chance level),
        // nothing generative right.
        for name in ["mmlu", "arc_challenge", "hellaswag"] {
            let c = get(name);
            let chance = c["chance"].as_f64().unwrap();
            let (lo, hi) = (
                c["headline"]["ci95"][0].as_f64().unwrap(),
                c["headline"]["ci95"][1].as_f64().unwrap(),
            );
            assert!(
                lo <= chance + 0.05 && chance - 0.05 <= hi,
                "{name}: [{lo}, {hi}] vs chance {chance}"
            );
        }
        assert_eq!(get("gsm8k")["headline"]["value"], 0.0);
        assert_eq!(get("humaneval")["headline"]["value"], 0.0);
        assert!(get("ifeval")["headline"]["value"].as_f64().unwrap() <= 0.5);
        let w = get("wikitext");
        assert_eq!(w["scored"], false);
        let bpb = w["numbers"]["bits_per_byte"].as_f64().unwrap();
        assert!(
            bpb > 2.0,
            "random weights cannot compress text: {bpb} bits per byte"
        );
        assert_eq!(w["numbers"]["chunks"], 2.0);
        // Categories, each with its weights; creativity flagged as a proxy.
        let cats = m["categories"].as_array().unwrap();
        assert_eq!(cats.len(), 6);
        for c in cats {
            let total: f64 = c["weights"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w[1].as_f64().unwrap())
                .sum();
            assert!((total - 1.0).abs() < 1e-9, "{c}");
        }
        let creativity = cats.iter().find(|c| c["name"] == "creativity").unwrap();
        assert!(
            creativity["confidence"]
                .as_str()
                .unwrap()
                .starts_with("low")
        );
        assert_eq!(m["overall"]["weights"].as_array().unwrap().len(), 6);
    }

    // Paired tests between the two models on the same items.
    let cmp = results["comparisons"].as_array().unwrap();
    assert!(cmp.len() >= 9);
    for c in cmp {
        let v = c["verdict"].as_str().unwrap();
        assert!(
            ["A better", "B better", "no significant difference"].contains(&v),
            "{v}"
        );
        assert!(
            c["test"].as_str().unwrap().contains("McNemar")
                || c["test"].as_str().unwrap().contains("bootstrap")
        );
    }

    // The sandbox ran the programs.
    assert!(
        results["sandbox"]["python_version"]
            .as_str()
            .is_some_and(|v| v.starts_with('3'))
    );

    // Audit: every item of every component, for both models.
    let audit = std::fs::read_to_string(out.join("audit.jsonl")).unwrap();
    let recs: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let per_model = 57 + 30 + 30 + 40 + 1 + 5 + 8 + 3 + 3 + 6 + 25;
    assert_eq!(recs.len(), 2 * per_model);
    for r in &recs {
        assert!(
            r["model"].is_string() && r["component"].is_string() && r["id"].is_string(),
            "{r}"
        );
        match r["component"].as_str().unwrap() {
            "hygiene" => assert!(r["verdict"].is_object()),
            "wikitext" => assert!(
                r["output"]["bits_per_byte"].is_null() && r["output"]["nll_nats"].is_number()
            ),
            _ => {
                assert!(r["prompt"].as_str().is_some_and(|p| !p.is_empty()), "{r}");
                assert!(!r["output"].is_null(), "{r}");
            }
        }
    }
    for comp in ["mmlu", "gsm8k", "ifeval", "humaneval"] {
        assert!(
            recs.iter()
                .filter(|r| r["component"] == comp)
                .all(|r| !r["verdict"].is_null()),
            "{comp}"
        );
    }
    let he = recs.iter().find(|r| r["component"] == "humaneval").unwrap();
    assert!(
        he["extracted"].as_str().unwrap().contains("check("),
        "the program run is recorded"
    );
}

#[test]
fn missing_data_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = Command::new(BIN)
        .args(["eval", "--model", "nonexistent.gguf", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("data set missing") || err.contains("evaluation data"),
        "{err}"
    );
}

/// An interrupted run continues with `--resume`: the responses in items.jsonl are reused, the
/// scores equal an uninterrupted run's, and a run with other flags is refused without touching
/// the earlier output.
#[test]
fn an_interrupted_eval_resumes_from_its_items_journal() {
    let data = data_dir();
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("tiny.gguf");
    synth(&m, 3);
    let out = dir.path().join("results");
    let eval = |extra: &[&str]| {
        Command::new(BIN)
            .args([
                "eval",
                "--only",
                "mmlu,gsm8k,wikitext",
                "--limit",
                "4",
                "--max-new-tokens",
                "8",
                "--format",
                "json",
                "--threads",
                "2",
            ])
            .args(extra)
            .arg("--model")
            .arg(&m)
            .arg("--data-dir")
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap()
    };
    let headlines = |v: &Value| -> Vec<(String, Value)> {
        v["models"][0]["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["headline"].clone(),
                )
            })
            .collect()
    };
    let full = eval(&[]);
    assert!(
        full.status.success(),
        "{}",
        String::from_utf8_lossy(&full.stderr)
    );
    let full: Value = serde_json::from_slice(&full.stdout).unwrap();
    let items = out.join("items.jsonl");
    let text = std::fs::read_to_string(&items).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // Header, the run's start, the model's line, 4 MMLU items, 4 GSM8K items, wikitext.
    assert!(lines.len() >= 9, "{text}");
    assert!(lines[1].contains("session_start"), "{text}");

    // Interrupted after three responses, the fourth cut mid-line.
    let mut cut = lines[..6].join("\n");
    cut.push('\n');
    cut.push_str(&lines[6][..lines[6].len() / 2]);
    std::fs::write(&items, &cut).unwrap();
    let resumed = eval(&["--resume"]);
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{err}");
    assert!(err.contains("resuming: 3 responses recorded"), "{err}");
    // The interrupted run's time is counted in the resumed one's (from the journal's timestamps).
    assert!(err.contains("the runs before this one took"), "{err}");
    assert!(err.contains("3 responses taken from"), "{err}");
    let resumed: Value = serde_json::from_slice(&resumed.stdout).unwrap();
    assert_eq!(headlines(&full), headlines(&resumed));
    assert_eq!(
        std::fs::read_to_string(&items).unwrap().lines().count(),
        lines.len() + 1,
        "the journal is whole again, with the resumed run's start"
    );

    // Other flags: refused, and the finished run's files are untouched.
    let before = std::fs::read(out.join("audit.jsonl")).unwrap();
    let other = Command::new(BIN)
        .args(["eval", "--only", "mmlu", "--limit", "2", "--resume"])
        .arg("--model")
        .arg(&m)
        .arg("--data-dir")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(!other.status.success());
    assert!(err.contains("another configuration"), "{err}");
    assert_eq!(std::fs::read(out.join("audit.jsonl")).unwrap(), before);

    // Nothing to resume is an error that names the file.
    let empty = dir.path().join("empty");
    let none = Command::new(BIN)
        .args(["eval", "--only", "mmlu", "--resume"])
        .arg("--model")
        .arg(&m)
        .arg("--data-dir")
        .arg(&data)
        .arg("--out")
        .arg(&empty)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(!none.status.success());
    assert!(
        err.contains("items.jsonl") && err.contains("cannot resume"),
        "{err}"
    );
    // The cause is printed once, though the error both names and chains it.
    assert_eq!(err.matches("cannot resume").count(), 1, "{err}");
}
