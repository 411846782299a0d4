//! The report's environment section.

use crate::doc::Doc;
use crate::inputs::Inputs;

use crate::report::format::*;

pub(crate) fn environment(d: &mut Doc, inp: &Inputs) {
    d.h2("Test environment");
    let mut rows = Vec::new();
    if let Some(b) = &inp.bench {
        let e = &b.environment;
        rows.push(vec![
            "CPU".into(),
            format!("{} ({} logical cores usable)", e.cpu_model, e.cores),
        ]);
        rows.push(vec!["Memory".into(), gib(Some(e.ram_bytes))]);
        rows.push(vec![
            "OS".into(),
            format!("{} (kernel {}, {})", e.os, e.kernel, e.arch),
        ]);
        rows.push(vec![
            "bakeoff".into(),
            format!(
                "{} (commit {}), {}",
                e.bakeoff_version,
                e.git_commit.as_deref().unwrap_or("unknown"),
                e.rustc
            ),
        ]);
        rows.push(vec![
            "Engine".into(),
            b.models
                .iter()
                .map(|m| format!("{}: {} on {}", m.label, m.run.backend, m.run.device))
                .collect::<Vec<_>>()
                .join("; "),
        ]);
        rows.push(vec![
            "Bench run".into(),
            format!("{} to {} (run {})", b.started_at, b.finished_at, b.run_id),
        ]);
        rows.push(vec![
            "Energy counters (RAPL)".into(),
            if e.rapl {
                "readable".into()
            } else {
                "not readable: energy not measured".into()
            },
        ]);
        rows.push(vec![
            "Page-cache drop (cold load)".into(),
            if e.drop_caches {
                "available".into()
            } else {
                "not available: cold load not measured".into()
            },
        ]);
    }
    if let Some(e) = &inp.eval {
        let matched = e
            .data_files
            .iter()
            .filter(|f| f.known_match == Some(true))
            .count();
        rows.push(vec![
            "Evaluation".into(),
            format!(
                "{}, profile `{}`, {} data files hashed ({} match the pinned SHA-256), {:.0} s",
                e.tool,
                e.profile,
                e.data_files.len(),
                matched,
                e.seconds
            ),
        ]);
        if let Some(s) = &e.sandbox {
            rows.push(vec![
                "Code sandbox".into(),
                format!(
                    "python {}; network namespace {}; mount namespace {}",
                    s.python_version,
                    if s.network_namespace { "yes" } else { "no" },
                    if s.mount_namespace { "yes" } else { "no" }
                ),
            ]);
        }
    }
    d.table(&["Component", "Specification"], rows);
}
