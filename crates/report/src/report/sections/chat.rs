//! The report's chat section.

use bakeoff_record::bench::ScenarioResult;
use bakeoff_record::stats::percentile;

use crate::charts::{self};
use crate::doc::{Block, Doc};
use crate::error::Result;

use crate::report::format::*;
use crate::report::sections::*;
use crate::report::view::*;

pub(crate) fn itls_ms(v: &View) -> Vec<f64> {
    v.bench
        .map(|b| {
            b.scenarios
                .iter()
                .flat_map(|s| s.samples.iter().flat_map(|x| x.itl_s()))
                .map(|x| x * 1e3)
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn chat(d: &mut Doc, pair: &Pair, f: &Facts) -> Result<()> {
    d.h2("Chat interface");
    let (a, b) = (pair.a, pair.b);
    fn short<'a>(v: &View<'a>) -> Option<&'a ScenarioResult> {
        scenario(v, "short")
    }
    let tokens = short(a)
        .or(short(b))
        .map_or(0, |s| s.stats.generated_tokens_max);
    let e2e = |v: &View| {
        short(v).map_or("n/a".into(), |s| {
            let mut xs: Vec<f64> = s.samples.iter().filter_map(|x| x.e2e_s()).collect();
            format!(
                "{} s (p95 {} s)",
                est(s.stats.e2e_s.as_ref()),
                sig(p95(&mut xs))
            )
        })
    };
    let ttft = |v: &View| {
        short(v).map_or("n/a".into(), |s| {
            format!("{} ms", est(s.stats.ttft_ms.as_ref()))
        })
    };
    let ttft_pick = f
        .ttft
        .iter()
        .find(|r| r.0 == "short")
        .map(|r| pair.name(r.3))
        .unwrap_or_else(|| "n/a".into());
    let itl = |v: &View| {
        let mut xs = itls_ms(v);
        if xs.is_empty() {
            return "n/a".into();
        }
        xs.sort_by(f64::total_cmp);
        let p = |q: f64| percentile(&xs, q);
        format!(
            "ITL p50 {} / p90 {} / p99 {} ms; jitter (p99/p50) {}",
            sig(p(0.5)),
            sig(p(0.9)),
            sig(p(0.99)),
            ratio(p(0.99) / p(0.5))
        )
    };
    let jitter = |v: &View| {
        let mut xs = itls_ms(v);
        xs.sort_by(f64::total_cmp);
        percentile(&xs, 0.99) / percentile(&xs, 0.5)
    };
    let rows = vec![
        vec![
            format!("Response time, {tokens} tokens (short prompt)"),
            e2e(a),
            e2e(b),
            f.latency.map_or("n/a".into(), |p| pair.name(p)),
        ],
        vec![
            "First-token latency (short prompt)".into(),
            ttft(a),
            ttft(b),
            ttft_pick,
        ],
        vec![
            "Streaming smoothness (inter-token latency, all scenarios)".into(),
            itl(a),
            itl(b),
            format!(
                "lower jitter: {} vs {} (no test: descriptive)",
                ratio(jitter(a)),
                ratio(jitter(b))
            ),
        ],
        vec![
            "Chat template support".into(),
            chat_template(a),
            chat_template(b),
            String::new(),
        ],
    ];
    d.table(&["Feature", &a.label, &b.label, "Winner"], rows);
    if let Some(c) = charts::cdf(
        "latency_distribution",
        "Inter-token latency distribution (all scenarios, all repetitions)",
        "inter-token latency (ms)",
        &[(a.label.clone(), itls_ms(a)), (b.label.clone(), itls_ms(b))],
    )? {
        d.blocks.push(Block::Chart(c));
    }
    Ok(())
}
