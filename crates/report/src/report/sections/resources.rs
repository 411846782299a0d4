//! The report's resources section.

use crate::doc::Doc;
use crate::inputs::Inputs;

use crate::report::format::*;
use crate::report::view::*;

pub(crate) fn cpu_mean(v: &View) -> f64 {
    mean_of(
        v.bench
            .into_iter()
            .flat_map(|b| b.scenarios.iter().map(|s| s.stats.cpu_util.as_ref())),
    )
}

pub(crate) fn resources(d: &mut Doc, inp: &Inputs, pair: &Pair) {
    d.h2("Resource utilisation");
    if inp.bench.is_none() {
        d.p("Not measured (no bench results).");
        return;
    }
    let (a, b) = (pair.a, pair.b);
    let energy = |v: &View| {
        let e = mean_of(v.bench.into_iter().flat_map(|b| {
            b.scenarios
                .iter()
                .map(|s| s.stats.energy_j_per_token.as_ref())
        }));
        if e.is_finite() {
            format!("{} J/token (package, upper bound)", sig(e))
        } else {
            "not measured (RAPL unreadable)".into()
        }
    };
    let threads = |v: &View| {
        v.bench
            .and_then(|b| b.run.threads)
            .map_or("n/a".into(), |t| t.to_string())
    };
    let rows = vec![
        vec![
            "CPU (share of all cores, mean over scenarios)".into(),
            format!("{:.0}%", cpu_mean(a) * 100.0),
            format!("{:.0}%", cpu_mean(b) * 100.0),
        ],
        vec!["Threads".into(), threads(a), threads(b)],
        vec![
            "Peak memory (RSS, weights included)".into(),
            gib(a.bench.and_then(|x| x.memory.peak_rss_bytes)),
            gib(b.bench.and_then(|x| x.memory.peak_rss_bytes)),
        ],
        vec!["Energy".into(), energy(a), energy(b)],
    ];
    d.table(&["Resource", &a.label, &b.label], rows);
}
