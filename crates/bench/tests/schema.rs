//! The results file: a full report survives JSON both ways, and unknown schema versions are
//! refused with a message.
#![allow(clippy::unwrap_used)]

mod common;

use bakeoff_bench::job::{BenchConfig, RunParams, default_params};
use bakeoff_bench::scenarios::ScenarioId;
use bakeoff_bench::worker::run_job;
use bakeoff_record::bench::{BenchReport, SCHEMA_VERSION};

#[test]
fn report_round_trips_through_json() {
    let path = common::tiny_model("tiny-qwen2");
    let cfg = BenchConfig {
        models: vec![path.to_str().unwrap().into()],
        threads: vec![1],
        params: RunParams {
            scenarios: vec![ScenarioId::Short],
            depths: vec![160],
            repetitions: 2,
            max_tokens: 6,
            depth_tokens: 4,
            ..default_params()
        },
        cold_load: false,
        ..BenchConfig::default()
    };
    let jobs = cfg.jobs().unwrap();
    let models = jobs.iter().map(|j| run_job(j, &mut |_| {})).collect();
    let report = BenchReport {
        header: BenchReport::header(),
        run_id: "bench-test".into(),
        started_at: "2025-01-01T00:00:00Z".into(),
        finished_at: "2025-01-01T00:00:01Z".into(),
        command: vec!["bakeoff".into(), "bench".into()],
        environment: bakeoff_bench::env::capture(),
        settings: cfg.settings(),
        models,
    };
    let text = report.to_json().unwrap();
    assert_eq!(BenchReport::from_json(&text).unwrap(), report);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sub/r.json");
    report.write(&file).unwrap();
    assert_eq!(BenchReport::read(&file).unwrap(), report);

    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["schema_version"], SCHEMA_VERSION);
    assert_eq!(v["kind"], "bench");
    for key in ["environment", "settings", "models"] {
        assert!(v.get(key).is_some(), "{key}");
    }
    let m = &v["models"][0];
    for key in [
        "model",
        "run",
        "load",
        "memory",
        "scenarios",
        "depths",
        "overhead",
    ] {
        assert!(m.get(key).is_some(), "{key}");
    }
    assert!(
        m["scenarios"][0]["samples"][0]["token_times_s"]
            .as_array()
            .unwrap()
            .len()
            == 6
    );

    let newer = text.replacen(
        &format!("\"schema_version\": {SCHEMA_VERSION}"),
        "\"schema_version\": 999",
        1,
    );
    std::fs::write(&file, newer).unwrap();
    let err = BenchReport::read(&file).unwrap_err().to_string();
    assert!(err.contains("schema version 999"), "{err}");
}
