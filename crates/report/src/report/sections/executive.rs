//! The report's executive section.

use bakeoff_record::bench::ModelResult as BenchModel;
use bakeoff_record::routing::RouterCalibration;

use crate::doc::Doc;
use crate::rules::{self, AREA_RULE, Better, Evidence, INTERVAL_RULE, Pick, THRESHOLD_RULE};

use crate::report::TIE;
use crate::report::format::*;
use crate::report::view::*;

pub(crate) fn executive(
    d: &mut Doc,
    pair: &Pair,
    f: &Facts,
    ev: &Evidence,
    routing: Option<&RouterCalibration>,
) -> Vec<(String, String)> {
    d.h2("Executive summary");
    let mut rows = Vec::new();
    let mut verdicts = Vec::new();
    let mut key = Vec::new();
    let (a, b) = (pair.a, pair.b);
    if !f.speed.is_empty() {
        let ma = mean_of(f.speed.iter().map(|r| r.1.as_ref()));
        let mb = mean_of(f.speed.iter().map(|r| r.2.as_ref()));
        let p = ev.throughput.unwrap_or(Pick::Tie);
        let wins = f
            .speed
            .iter()
            .filter(|r| r.3 == p && p != Pick::Tie)
            .count();
        let w = winner_cells(pair, p, ma, mb, Better::Higher);
        rows.push(vec![
            "Generation speed (decode tok/s, mean over scenarios)".into(),
            sig(ma),
            sig(mb),
            w[0].clone(),
            w[1].clone(),
        ]);
        verdicts.push(("generation speed".into(), pair.name(p)));
        if p != Pick::Tie {
            key.push(format!(
                "**{}** generates {} faster (decode tok/s averaged over {} scenarios; significant in {} of them).",
                pair.name(p),
                ratio(rules::advantage(ma, mb, Better::Higher)),
                f.speed.len(),
                wins
            ));
        } else {
            key.push(format!(
                "Generation speed: {TIE} ({} vs {} tok/s on average; the per-scenario verdicts do not agree or the intervals overlap).",
                sig(ma),
                sig(mb)
            ));
        }
    }
    if !f.ttft.is_empty() {
        let ma = mean_of(f.ttft.iter().map(|r| r.1.as_ref()));
        let mb = mean_of(f.ttft.iter().map(|r| r.2.as_ref()));
        let p = rules::area(&f.ttft.iter().map(|r| r.3).collect::<Vec<_>>());
        let w = winner_cells(pair, p, ma, mb, Better::Lower);
        rows.push(vec![
            "First-token latency (ms, mean over scenarios)".into(),
            sig(ma),
            sig(mb),
            w[0].clone(),
            w[1].clone(),
        ]);
        verdicts.push(("first-token latency".into(), pair.name(p)));
    }
    if let Some(p) = f.latency {
        let e = |v: &View| {
            scenario(v, "short")
                .and_then(|s| s.stats.e2e_s.as_ref())
                .map_or(f64::NAN, |e| e.mean)
        };
        let (ma, mb) = (e(a), e(b));
        let w = winner_cells(pair, p, ma, mb, Better::Lower);
        rows.push(vec![
            "Chat response time (s, short prompt, whole answer)".into(),
            sig(ma),
            sig(mb),
            w[0].clone(),
            w[1].clone(),
        ]);
        verdicts.push(("chat response time".into(), pair.name(p)));
    }
    let single = |v: &View, g: &dyn Fn(&BenchModel) -> Option<f64>| v.bench.and_then(g);
    for (label, p, g, unit) in [
        (
            "Peak memory (GiB)",
            f.memory,
            &(|m: &BenchModel| {
                m.memory
                    .peak_rss_bytes
                    .map(|x| x as f64 / (1u64 << 30) as f64)
            }) as &dyn Fn(&BenchModel) -> Option<f64>,
            "peak memory",
        ),
        (
            "Load time, warm (s)",
            f.load,
            &(|m: &BenchModel| m.load.warm_s) as &dyn Fn(&BenchModel) -> Option<f64>,
            "load time",
        ),
        (
            "Size on disk (GiB)",
            f.disk,
            &(|m: &BenchModel| m.model.file_bytes.map(|x| x as f64 / (1u64 << 30) as f64))
                as &dyn Fn(&BenchModel) -> Option<f64>,
            "size on disk",
        ),
    ] {
        if let (Some(p), Some(x), Some(y)) = (p, single(a, g), single(b, g)) {
            let w = winner_cells(pair, p, x, y, Better::Lower);
            rows.push(vec![
                label.into(),
                sig(x),
                sig(y),
                w[0].clone(),
                w[1].clone(),
            ]);
            verdicts.push((unit.into(), pair.name(p)));
        }
    }
    if f.quality_measured {
        let oa = a
            .eval
            .and_then(|e| e.overall.as_ref())
            .map_or(f64::NAN, |o| o.score10);
        let ob = b
            .eval
            .and_then(|e| e.overall.as_ref())
            .map_or(f64::NAN, |o| o.score10);
        if f.quality_meaningful {
            let picks: Vec<Pick> = f.categories.iter().filter_map(|c| c.1).collect();
            let p = rules::area(&picks);
            let sig_a = picks.iter().filter(|x| **x == Pick::A).count();
            let sig_b = picks.iter().filter(|x| **x == Pick::B).count();
            rows.push(vec![
                "Quality (overall, 1-10)".into(),
                sig(oa),
                sig(ob),
                if p == Pick::Tie {
                    TIE.into()
                } else {
                    format!("**{}**", pair.name(p))
                },
                format!("categories won: {sig_a} vs {sig_b} of {}", picks.len()),
            ]);
            verdicts.push(("quality".into(), pair.name(p)));
            key.push(format!(
                "Quality: {} significantly better in {sig_a} categories, {} in {sig_b}, the rest within noise (paired tests, α = 0.05).",
                a.label, b.label
            ));
        } else {
            rows.push(vec![
                "Quality (overall, 1-10)".into(),
                sig(oa),
                sig(ob),
                "not meaningful (synthetic)".into(),
                String::new(),
            ]);
            verdicts.push(("quality".into(), "not meaningful (synthetic)".into()));
        }
    }
    if f.quality_meaningful
        && let Some(rc) = routing
        && let Some(h) = &rc.held_out
        && [a.label.as_str(), b.label.as_str()].contains(&rc.strong.as_str())
    {
        let (lo, hi) = h.gain_ci;
        key.push(format!(
            "Tiered routing: the calibrated complexity router sends {:.0}% of held-out requests to {} and scores {:.3} against {:.3} for random routing at that share (gain 95% {:+.3} to {:+.3}: {}); {} alone {:.3}, {} alone {:.3}.",
            h.strong_share * 100.0,
            rc.strong,
            h.quality,
            h.random_at_share,
            lo,
            hi,
            if lo > 0.0 { "better than random" } else if hi < 0.0 { "worse than random" } else { "not distinguishable from random" },
            rc.fast,
            h.fast_only,
            rc.strong,
            h.strong_only,
        ));
    }
    d.table(&["Area", &a.label, &b.label, "Winner", "Advantage"], rows);
    d.list(key);
    d.p(format!(
        "Winners follow the rules printed under Methodology: repeated measurements, {INTERVAL_RULE}; {THRESHOLD_RULE}; {AREA_RULE}."
    ));
    verdicts
}
