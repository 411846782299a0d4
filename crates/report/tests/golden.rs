//! Golden tests: the report rendered from fixed results files must equal the files under
//! `tests/golden/` (BAKEOFF_UPDATE_GOLDEN=1 rewrites them after a deliberate change).

use std::path::{Path, PathBuf};

use bakeoff_report::{Inputs, render};

fn fixture_paths() -> Vec<PathBuf> {
    // Relative paths, so the report's sources section is the same on every machine.
    [
        "compare.json",
        "bench.json",
        "eval/results.json",
        "answers.json",
        "routing.json",
    ]
    .iter()
    .map(|f| Path::new("tests/fixtures/tiny").join(f))
    .collect()
}

fn check(name: &str, actual: &str) {
    let path = Path::new("tests/golden").join(name);
    if std::env::var_os("BAKEOFF_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (BAKEOFF_UPDATE_GOLDEN=1 creates it)",
            path.display()
        )
    });
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .map_or(expected.lines().count().min(actual.lines().count()), |i| i);
        panic!(
            "{} differs from the rendered report at line {}:\n  golden: {:?}\n  actual: {:?}\n(BAKEOFF_UPDATE_GOLDEN=1 rewrites it after a deliberate change)",
            path.display(),
            line + 1,
            expected.lines().nth(line),
            actual.lines().nth(line)
        );
    }
}

#[test]
fn synthetic_pair_markdown_matches_golden() {
    let inputs = Inputs::load(&fixture_paths()).expect("fixtures load");
    let r = render(&inputs).expect("report renders");
    check("tiny-synthetic.md", &r.markdown);
    // Honesty: synthetic models are labelled and no quality winner is named.
    assert!(
        r.markdown
            .contains("**Synthetic models: synthetic-tiny-llama, synthetic-tiny-qwen2.**")
    );
    assert!(r.markdown.contains("**Not meaningful: synthetic models.**"));
    assert!(
        r.summary
            .verdicts
            .iter()
            .any(|(a, w)| a == "quality" && w == "not meaningful (synthetic)")
    );
    // Traceability: every source file is named with its hash.
    for s in &inputs.sources {
        assert!(r.markdown.contains(&s.sha256), "{} not named", s.path);
    }
}

#[test]
fn html_holds_the_same_sections_and_inline_charts() {
    let inputs = Inputs::load(&fixture_paths()).expect("fixtures load");
    let r = render(&inputs).expect("report renders");
    for line in r.markdown.lines().filter(|l| l.starts_with("## ")) {
        let title = &line[3..];
        assert!(
            r.html.contains(&format!(">{title}</h2>")),
            "HTML lacks section {title}"
        );
    }
    let charts = r.doc.charts().count();
    assert!(charts >= 5, "{charts} charts");
    assert_eq!(r.html.matches("<svg").count(), charts);
    assert_eq!(r.markdown.matches("](charts/").count(), charts);
    // Self-contained: no scripts, no external resources.
    for bad in [
        "<script",
        "<link",
        "src=\"http",
        "href=\"http",
        "@import",
        "url(",
    ] {
        assert!(!r.html.contains(bad), "HTML holds {bad}");
    }
}

#[test]
fn a_folder_is_read_like_its_files() {
    let a = Inputs::load(&[PathBuf::from("tests/fixtures/tiny")]).expect("folder loads");
    assert_eq!(a.sources.len(), 5);
    assert!(a.bench.is_some() && a.eval.is_some() && a.answers.is_some() && a.manifest.is_some());
    assert!(a.routing.is_some());
}

/// The same measurements relabelled as real models (constructed here, never shown as data):
/// the quality sections then name winners from the paired tests instead of "not meaningful".
#[test]
fn real_models_get_quality_verdicts() {
    let mut inputs = Inputs::load(&fixture_paths()).expect("fixtures load");
    let rename = |s: &str| s.replace("synthetic-", "model-");
    if let Some(m) = inputs.manifest.as_mut() {
        for x in &mut m.models {
            x.synthetic = false;
            x.label = rename(&x.label);
            x.source = rename(&x.source);
        }
    }
    if let Some(a) = inputs.answers.as_mut() {
        for x in &mut a.models {
            x.synthetic = false;
            x.label = rename(&x.label);
            x.source = rename(&x.source);
        }
    }
    if let Some(b) = inputs.bench.as_mut() {
        for m in &mut b.models {
            m.label = rename(&m.label);
            m.model.source = rename(&m.model.source);
            m.model.path = m
                .model
                .path
                .as_ref()
                .map(|p| PathBuf::from(rename(&p.to_string_lossy())));
        }
    }
    if let Some(rc) = inputs.routing.as_mut() {
        rc.fast = rename(&rc.fast);
        rc.strong = rename(&rc.strong);
    }
    // Model A's file is one the catalog knows: its authors' scores are set beside the measured
    // ones; model B's is not.
    let digest = "ab".repeat(32);
    if let Some(e) = inputs.eval.as_mut() {
        e.models[0].info.files = vec![bakeoff_record::FileDigest {
            path: PathBuf::from("a.gguf"),
            bytes: Some(1),
            sha256: Some(digest.clone()),
        }];
    }
    inputs
        .bases
        .insert(digest, "HuggingFaceTB/SmolLM2-135M-Instruct".into());
    let r = render(&inputs).expect("report renders");
    assert!(!r.markdown.contains("Synthetic models:"));
    assert!(!r.markdown.contains("not meaningful"));
    let md = &r.markdown;
    assert!(md.contains("### Measured beside published scores"), "{md}");
    assert!(md.contains("| HellaSwag | 40.9 | "), "{md}");
    assert!(md.contains("**not comparable**: the card uses 5 worked examples"));
    assert!(md.contains("No published scores on file for "));
    assert!(
        md.contains("- Tiered routing: the calibrated complexity router sends 36% of held-out requests to model-tiny-qwen2"),
        "{md}"
    );
    let q = r
        .summary
        .verdicts
        .iter()
        .find(|(a, _)| a == "quality")
        .map(|x| x.1.clone());
    assert!(q.is_some_and(|w| w == "tie (within noise)" || w.starts_with("model-")));
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, "{\"hello\": 1}").expect("write");
    let e = Inputs::load(std::slice::from_ref(&junk))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("not a bakeoff results file"), "{e}");
    std::fs::write(&junk, "not json").expect("write");
    let e = Inputs::load(&[junk])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("not valid JSON"), "{e}");
    let e = Inputs::load(&[])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("no results files given"), "{e}");
    let e = Inputs::load(&[dir.path().join("missing.json")])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("missing.json"), "{e}");
    // Two bench files: a report covers one run.
    let b = Path::new("tests/fixtures/tiny/bench.json").to_path_buf();
    let e = Inputs::load(&[b.clone(), b])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("a second bench results file"), "{e}");
    // Answers alone: nothing to report.
    let e = Inputs::load(&[Path::new("tests/fixtures/tiny/answers.json").to_path_buf()])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("nothing to report"), "{e}");
}
