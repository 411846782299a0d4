//! The report's cost section.

use crate::doc::Doc;
use crate::error::Result;
use crate::inputs::Inputs;
use crate::rules::{self};

use crate::report::format::*;
use crate::report::sections::*;
use crate::report::view::*;

pub(crate) fn decode_mean(v: &View) -> f64 {
    mean_of(
        v.bench
            .into_iter()
            .flat_map(|b| b.scenarios.iter().map(|s| s.stats.decode_tok_s.as_ref())),
    )
}

pub(crate) fn cost(d: &mut Doc, inp: &Inputs, pair: &Pair, f: &Facts) -> Result<()> {
    d.h2("Cost-benefit");
    let Some(bench) = &inp.bench else {
        d.p("Not computed (no bench results).");
        return Ok(());
    };
    let cores = bench.environment.cores;
    let (a, b) = (pair.a, pair.b);
    let core_s = |v: &View| rules::core_seconds_per_1k(decode_mean(v), cpu_mean(v), cores);
    let gb_s = |v: &View| {
        rules::gb_seconds_per_1k(
            decode_mean(v),
            v.bench.and_then(|x| x.memory.peak_rss_bytes).unwrap_or(0),
        )
    };
    let rel = |x: f64, y: f64| {
        let m = x.min(y);
        (x / m, y / m)
    };
    let (ca, cb) = (core_s(a), core_s(b));
    let (ga, gb) = (gb_s(a), gb_s(b));
    let (rca, rcb) = rel(ca, cb);
    let (rga, rgb) = rel(ga, gb);
    let mut rows = vec![
        vec!["CPU core-seconds per 1,000 tokens".into(), sig(ca), sig(cb)],
        vec!["Relative compute cost".into(), ratio(rca), ratio(rcb)],
        vec![
            "Memory GB-seconds per 1,000 tokens".into(),
            sig(ga),
            sig(gb),
        ],
        vec!["Relative memory cost".into(), ratio(rga), ratio(rgb)],
    ];
    let overall = |v: &View| v.eval.and_then(|e| e.overall.as_ref()).map(|o| o.score10);
    if f.quality_measured {
        let q = |v: &View| {
            if !f.quality_meaningful {
                return "not meaningful (synthetic)".to_string();
            }
            overall(v).map_or("n/a".into(), |o| {
                format!("{} tok/s", sig(rules::quality_adjusted(decode_mean(v), o)))
            })
        };
        rows.push(vec![
            "Quality-adjusted throughput (tok/s × overall/10)".into(),
            q(a),
            q(b),
        ]);
    }
    d.table(&["Measure", &a.label, &b.label], rows);
    d.p(format!(
        "Formulas: core-seconds per 1,000 tokens = 1000 / decode tok/s × CPU share × {cores} cores; GB-seconds = peak RSS (GB) × 1000 / decode tok/s; relative cost divides by the cheaper model's figure. Decode tok/s and CPU share are means over the scenarios."
    ));
    Ok(())
}
