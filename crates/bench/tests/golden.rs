//! The summary table and the other renderings of a fixed results file, compared with the files
//! committed next to it. Set BAKEOFF_UPDATE_GOLDEN=1 to rewrite them after an intended change.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use bakeoff_bench::output::{Format, render, summary_table};
use bakeoff_record::bench::BenchReport;
use bakeoff_record::bench::Stats;

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

fn check(name: &str, actual: &str) {
    let path = golden(name);
    if std::env::var_os("BAKEOFF_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap();
    assert!(
        expected == actual,
        "{name} differs from the golden file; got:\n{actual}"
    );
}

fn report() -> BenchReport {
    BenchReport::read(&golden("results.json")).unwrap()
}

#[test]
fn summary_table_matches_golden() {
    let r = report();
    let s = summary_table(&r);
    check("summary.txt", &s);
    // Every row names a winner among the models, and the notes are the documented ones.
    for line in s.lines().skip(3) {
        assert!(r.models.iter().any(|m| line.contains(&m.label)), "{line}");
    }
}

#[test]
fn table_and_markdown_match_golden() {
    let r = report();
    check("table.txt", &render(&r, Format::Table).unwrap());
    check("report.md", &render(&r, Format::Md).unwrap());
    check("rows.csv", &render(&r, Format::Csv).unwrap());
}

#[test]
fn golden_stats_follow_from_its_raw_samples() {
    let r = report();
    let cores = r.environment.cores;
    for m in &r.models {
        for s in &m.scenarios {
            assert_eq!(
                Stats::of(&s.samples, cores),
                s.stats,
                "{} {}",
                m.label,
                s.scenario
            );
        }
        for d in &m.depths {
            assert_eq!(
                Stats::of(&d.samples, cores),
                d.stats,
                "{} depth {}",
                m.label,
                d.depth
            );
        }
    }
}

#[test]
fn jsonl_has_one_record_per_model_and_measurement() {
    let r = report();
    let text = render(&r, Format::Jsonl).unwrap();
    let expected: usize = r
        .models
        .iter()
        .map(|m| m.scenarios.len() + m.depths.len())
        .sum();
    assert_eq!(text.lines().count(), expected);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["decode_tok_s_mean"].as_f64().unwrap() > 0.0);
    }
    let json = render(&r, Format::Json).unwrap();
    assert_eq!(BenchReport::from_json(&json).unwrap(), r);
}
