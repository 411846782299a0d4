//! The report's performance section.

use bakeoff_record::bench::{DepthResult, ModelResult as BenchModel, Stats};
use bakeoff_record::stats::Estimate;

use crate::charts::{self, Bar, Point};
use crate::doc::{Block, Doc};
use crate::error::Result;
use crate::inputs::Inputs;
use crate::rules::{self, Better};

use crate::report::format::*;
use crate::report::view::*;

pub(crate) fn performance(d: &mut Doc, inp: &Inputs, pair: &Pair, f: &Facts) -> Result<()> {
    d.h2("Performance");
    if inp.bench.is_none() {
        d.p("No bench results among the inputs: speed, latency and memory were not measured.");
        return Ok(());
    }
    let (a, b) = (pair.a, pair.b);
    d.h3("Loading and memory");
    let mut rows = Vec::new();
    let single = |name: &str,
                  g: &dyn Fn(&BenchModel) -> Option<f64>,
                  fmt: &dyn Fn(f64) -> String,
                  margin: f64| {
        let (x, y) = (a.bench.and_then(g), b.bench.and_then(g));
        let (w, adv) = match (x, y) {
            (Some(x), Some(y)) => {
                let p = rules::by_margin(x, y, Better::Lower, margin);
                let c = winner_cells(pair, p, x, y, Better::Lower);
                (c[0].clone(), c[1].clone())
            }
            _ => ("n/a".into(), String::new()),
        };
        vec![
            name.to_string(),
            x.map_or_else(|| "n/a".into(), fmt),
            y.map_or_else(|| "n/a".into(), fmt),
            w,
            adv,
        ]
    };
    let s_fmt = |x: f64| format!("{} s", sig(x));
    let g_fmt = |x: f64| gib(Some(x as u64));
    let m = rules::SINGLE_SAMPLE_MARGIN;
    rows.push(single(
        "Load time, warm (single sample)",
        &|x| x.load.warm_s,
        &s_fmt,
        m,
    ));
    rows.push(single(
        "Load time, cold (single sample)",
        &|x| x.load.cold_s,
        &s_fmt,
        m,
    ));
    rows.push(single(
        "Peak memory, RSS (single sample)",
        &|x| x.memory.peak_rss_bytes.map(|v| v as f64),
        &g_fmt,
        m,
    ));
    rows.push(single(
        "Memory after load, RSS",
        &|x| x.memory.rss_after_load_bytes.map(|v| v as f64),
        &g_fmt,
        m,
    ));
    rows.push(single(
        "KV cache at its largest",
        &|x| x.memory.kv_cache_bytes.map(|v| v as f64),
        &g_fmt,
        m,
    ));
    rows.push(single(
        "Size on disk",
        &|x| x.model.file_bytes.map(|v| v as f64),
        &g_fmt,
        0.01,
    ));
    d.table(&["Metric", &a.label, &b.label, "Winner", "Advantage"], rows);
    let notes: Vec<String> = pair
        .models()
        .iter()
        .filter_map(|v| {
            v.bench
                .and_then(|b| b.load.note.as_ref())
                .map(|n| format!("{}: {n}", v.label))
        })
        .collect();
    d.list(notes);

    d.h3("Generation speed");
    let mut rows = Vec::new();
    for (n, x, y, p) in &f.speed {
        let (mx, my) = (
            x.as_ref().map_or(f64::NAN, |e| e.mean),
            y.as_ref().map_or(f64::NAN, |e| e.mean),
        );
        let w = winner_cells(pair, *p, mx, my, Better::Higher);
        let prompt =
            |v: &View| scenario(v, n).map_or("n/a".into(), |s| s.stats.prompt_tokens.to_string());
        let generated = |v: &View| {
            scenario(v, n).map_or("n/a".into(), |s| s.stats.generated_tokens_max.to_string())
        };
        rows.push(vec![
            n.clone(),
            format!("{} / {}", prompt(a), prompt(b)),
            format!("{} / {}", generated(a), generated(b)),
            est(x.as_ref()),
            est(y.as_ref()),
            w[0].clone(),
            w[1].clone(),
        ]);
    }
    if !f.speed.is_empty() {
        let ma = mean_of(f.speed.iter().map(|r| r.1.as_ref()));
        let mb = mean_of(f.speed.iter().map(|r| r.2.as_ref()));
        let p = rules::area(&f.speed.iter().map(|r| r.3).collect::<Vec<_>>());
        let w = winner_cells(pair, p, ma, mb, Better::Higher);
        rows.push(vec![
            "**average**".into(),
            String::new(),
            String::new(),
            sig(ma),
            sig(mb),
            w[0].clone(),
            w[1].clone(),
        ]);
    }
    d.table(
        &[
            "Scenario",
            "prompt tokens (A / B)",
            "generated",
            &format!("{} tok/s", a.label),
            &format!("{} tok/s", b.label),
            "Winner",
            "Advantage",
        ],
        rows,
    );
    let skipped: Vec<String> = pair
        .models()
        .iter()
        .flat_map(|v| {
            v.bench.into_iter().flat_map(move |b| {
                b.scenarios
                    .iter()
                    .filter(|s| s.samples.is_empty())
                    .map(move |s| {
                        format!(
                            "{}: scenario {} not measured: {}",
                            v.label,
                            s.scenario.name(),
                            s.note.as_deref().unwrap_or("no samples")
                        )
                    })
            })
        })
        .collect();
    d.list(skipped);
    d.p("Decode tok/s = (tokens − 1) / (last − first token time), per repetition; mean ± 95% interval half-width over the repetitions. Prompt tokens differ between models because each is measured in its own tokenizer, chat template included.");
    let names = all_scenarios(pair);
    let bars = |v: &View| -> Vec<Option<Bar>> {
        names
            .iter()
            .map(|n| {
                let e = scenario(v, n)?.stats.decode_tok_s.as_ref()?;
                Some(Bar {
                    value: e.mean,
                    interval: (e.n >= 2).then_some((e.ci95_low, e.ci95_high)),
                })
            })
            .collect()
    };
    if let Some(c) = charts::grouped_bars(
        "tok_s_per_scenario",
        "Decode tok/s per scenario (95% intervals)",
        "decode tok/s",
        &names,
        &[(a.label.clone(), bars(a)), (b.label.clone(), bars(b))],
    )? {
        d.blocks.push(Block::Chart(c));
    }

    d.h3("Throughput");
    let agg = |v: &View, g: &dyn Fn(&Stats) -> Option<&Estimate>, max: bool| -> f64 {
        let vals: Vec<f64> = v
            .bench
            .map(|b| {
                b.scenarios
                    .iter()
                    .filter_map(|s| g(&s.stats).map(|e| e.mean))
                    .collect()
            })
            .unwrap_or_default();
        if vals.is_empty() {
            f64::NAN
        } else if max {
            vals.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        } else {
            vals.iter().sum::<f64>() / vals.len() as f64
        }
    };
    let cv = |v: &View| -> String {
        let cvs: Vec<f64> = v
            .bench
            .map(|b| {
                b.scenarios
                    .iter()
                    .filter_map(|s| s.stats.decode_tok_s.as_ref().map(|e| e.cv))
                    .collect()
            })
            .unwrap_or_default();
        if cvs.is_empty() {
            return "n/a".into();
        }
        let lo = cvs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = cvs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("CV {:.1}–{:.1}%", lo * 100.0, hi * 100.0)
    };
    let rows = vec![
        vec![
            "Peak (best 16-token window, best scenario)".into(),
            format!("{} tok/s", sig(agg(a, &|s| s.peak_tok_s.as_ref(), true))),
            format!("{} tok/s", sig(agg(b, &|s| s.peak_tok_s.as_ref(), true))),
        ],
        vec![
            "Sustained (median ITL after 16 tokens, mean over scenarios)".into(),
            format!(
                "{} tok/s",
                sig(agg(a, &|s| s.sustained_tok_s.as_ref(), false))
            ),
            format!(
                "{} tok/s",
                sig(agg(b, &|s| s.sustained_tok_s.as_ref(), false))
            ),
        ],
        vec![
            "Prefill (mean over scenarios)".into(),
            format!(
                "{} tok/s",
                sig(agg(a, &|s| s.prefill_tok_s.as_ref(), false))
            ),
            format!(
                "{} tok/s",
                sig(agg(b, &|s| s.prefill_tok_s.as_ref(), false))
            ),
        ],
        vec![
            "Stability (spread of decode tok/s over repetitions, per scenario)".into(),
            cv(a),
            cv(b),
        ],
    ];
    d.table(&["Metric", &a.label, &b.label], rows);

    d.h3("Context scaling");
    let depths: Vec<usize> = {
        let mut v: Vec<usize> = pair
            .models()
            .iter()
            .filter_map(|m| m.bench)
            .flat_map(|b| b.depths.iter().map(|x| x.depth))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    if depths.is_empty() {
        d.p("No context depths were measured (`--depths none`).");
        return Ok(());
    }
    fn depth<'a>(v: &View<'a>, k: usize) -> Option<&'a DepthResult> {
        v.bench.and_then(|b| b.depths.iter().find(|x| x.depth == k))
    }
    let mut rows = Vec::new();
    for k in &depths {
        let cell = |v: &View, g: &dyn Fn(&Stats) -> Option<&Estimate>| {
            depth(v, *k).map_or("n/a".into(), |x| est(g(&x.stats)))
        };
        let clamped = |v: &View| depth(v, *k).is_some_and(|x| x.clamped);
        let (x, y) = (
            depth(a, *k).and_then(|x| x.stats.decode_tok_s.clone()),
            depth(b, *k).and_then(|x| x.stats.decode_tok_s.clone()),
        );
        let p = match (x, y) {
            (Some(x), Some(y)) => pair.name(rules::by_interval(&x, &y, Better::Higher)),
            _ => "n/a".into(),
        };
        rows.push(vec![
            format!(
                "{k}{}",
                match (clamped(a), clamped(b)) {
                    (false, false) => "",
                    (true, true) => " (clamped: both)",
                    (true, false) => " (clamped: A)",
                    (false, true) => " (clamped: B)",
                }
            ),
            cell(a, &|s| s.decode_tok_s.as_ref()),
            cell(b, &|s| s.decode_tok_s.as_ref()),
            cell(a, &|s| s.ttft_ms.as_ref()),
            cell(b, &|s| s.ttft_ms.as_ref()),
            p,
        ]);
    }
    d.table(
        &[
            "Depth (prompt tokens)",
            &format!("{} decode tok/s", a.label),
            &format!("{} decode tok/s", b.label),
            &format!("{} TTFT ms", a.label),
            &format!("{} TTFT ms", b.label),
            "Decode winner",
        ],
        rows,
    );
    let series = |g: &dyn Fn(&Stats) -> Option<&Estimate>| -> Vec<(String, Vec<Point>)> {
        pair.models()
            .iter()
            .map(|v| {
                let pts = v
                    .bench
                    .map(|b| {
                        b.depths
                            .iter()
                            .filter_map(|x| {
                                let e = g(&x.stats)?;
                                Some(Point {
                                    x: x.depth as f64,
                                    y: e.mean,
                                    interval: (e.n >= 2).then_some((e.ci95_low, e.ci95_high)),
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (v.label.clone(), pts)
            })
            .collect()
    };
    if let Some(c) = charts::lines(
        "context_scaling_decode",
        "Decode tok/s by context depth",
        "prompt tokens in the KV cache",
        "decode tok/s",
        &series(&|s| s.decode_tok_s.as_ref()),
    )? {
        d.blocks.push(Block::Chart(c));
    }
    if let Some(c) = charts::lines(
        "context_scaling_ttft",
        "Time to first token by context depth",
        "prompt tokens",
        "TTFT (ms)",
        &series(&|s| s.ttft_ms.as_ref()),
    )? {
        d.blocks.push(Block::Chart(c));
    }
    Ok(())
}
