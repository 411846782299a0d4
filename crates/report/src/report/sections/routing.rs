//! The report's routing section.

use crate::charts::{self, Point};
use crate::doc::{Block, Doc};
use crate::error::Result;
use crate::inputs::Inputs;
use crate::rules::{self};
use bakeoff_record::routing::{ComplexityWeights, RouterCalibration};

use crate::report::sections::*;
use crate::report::view::*;

pub(crate) fn routing(d: &mut Doc, inp: &Inputs, pair: &Pair, f: &Facts) -> Result<()> {
    d.h2("Tiered routing");
    let (Some(ea), Some(eb)) = (pair.a.eval, pair.b.eval) else {
        d.p("Not computed (no eval results for both models).");
        return Ok(());
    };
    // The fast model is the one that decodes faster on average; the other is the strong tier.
    let (fast, strong, fe, se) = if decode_mean(pair.b) > decode_mean(pair.a) {
        (pair.b, pair.a, eb, ea)
    } else {
        (pair.a, pair.b, ea, eb)
    };
    let (mut vf, mut vs) = (Vec::new(), Vec::new());
    for c in fe.components.iter().filter(|c| c.scored) {
        let Some(o) = se.components.iter().find(|x| x.name == c.name) else {
            continue;
        };
        for (id, v) in &c.per_item {
            if let Some(w) = o.per_item.get(id) {
                vf.push(*v);
                vs.push(*w);
            }
        }
    }
    let Some((as_good, pts)) = rules::routing_curve(&vf, &vs, 10) else {
        d.p("Not computed (no items scored for both models).");
        return Ok(());
    };
    synthetic_quality_note(d, pair);
    d.p(format!(
        "Fast tier: **{}** (higher mean decode tok/s); strong tier: **{}**. Over the {} eval items both models answered, the fast model scores at least as well as the strong one on **{:.1}%** of them: that share of queries could stay on the fast model without losing quality, if a router could recognise them.",
        fast.label,
        strong.label,
        vf.len(),
        as_good * 100.0
    ));
    let rows: Vec<Vec<String>> = pts
        .iter()
        .filter(|p| (p.strong_share * 100.0).round() as i64 % 25 == 0)
        .map(|p| {
            vec![
                format!("{:.0}%", p.strong_share * 100.0),
                format!("{:.3}", p.oracle),
                format!("{:.3}", p.random),
            ]
        })
        .collect();
    d.table(
        &[
            "Queries sent to the strong model",
            "Mean item score, oracle router",
            "Mean item score, random routing",
        ],
        rows,
    );
    d.p("The oracle sends the strong model the items where it gains most first (an upper bound for any real router); random routing sends a uniform share (a lower reference). A real router lands between the two; the calibrated complexity router below is measured on items it was not fitted on.");
    let _ = f;
    let mut series = vec![
        (
            "oracle router".to_string(),
            pts.iter()
                .map(|p| Point {
                    x: p.strong_share * 100.0,
                    y: p.oracle,
                    interval: None,
                })
                .collect(),
        ),
        (
            "random routing".to_string(),
            pts.iter()
                .map(|p| Point {
                    x: p.strong_share * 100.0,
                    y: p.random,
                    interval: None,
                })
                .collect(),
        ),
    ];
    let labels = [pair.a.label.as_str(), pair.b.label.as_str()];
    if let Some(rc) = &inp.routing
        && let Some(h) = &rc.held_out
        && labels.contains(&rc.fast.as_str())
        && labels.contains(&rc.strong.as_str())
    {
        series.push((
            "calibrated router (held-out items)".to_string(),
            vec![Point {
                x: h.strong_share * 100.0,
                y: h.quality,
                interval: Some(h.quality_ci),
            }],
        ));
    }
    if let Some(c) = charts::lines(
        "routing_curve",
        "Quality against strong-model calls",
        "% of queries sent to the strong model",
        "mean item score",
        &series,
    )? {
        d.blocks.push(Block::Chart(c));
    }
    match &inp.routing {
        Some(rc) => calibrated(d, rc, pair),
        None => d.p("No router calibration among the inputs (`routing.json`, written by `bakeoff compare` and `bakeoff route calibrate --out`)."),
    }
    Ok(())
}

fn calibrated(d: &mut Doc, rc: &RouterCalibration, pair: &Pair) {
    d.h3("Calibrated complexity router");
    let labels = [pair.a.label.as_str(), pair.b.label.as_str()];
    if !(labels.contains(&rc.fast.as_str()) && labels.contains(&rc.strong.as_str())) {
        d.p(format!(
            "The router calibration among the inputs is for `{}` (fast) and `{}` (strong), not for this pair; it is not shown.",
            rc.fast, rc.strong
        ));
        return;
    }
    let c = &rc.calibration;
    d.p(format!(
        "`bakeoff route calibrate` {} the complexity score's weights on {} of the items both models answered ({}), then chose the threshold **{:.4}** that sends {:.0}% of them to **{}** (asked for: {:.0}%). The score is σ(bias + Σ weight × feature); every feature is in [0, 1] and read from the request alone.",
        if rc.fitted { "fitted" } else { "kept" },
        c.items,
        if rc.holdout > 0.0 {
            format!("the {:.0}% not held out, chosen by a hash of each item's id", (1.0 - rc.holdout) * 100.0)
        } else {
            "all of them".to_string()
        },
        c.threshold,
        c.strong_share * 100.0,
        rc.strong,
        rc.target_share * 100.0,
    ));
    d.table(
        &[
            "bias",
            "length",
            "code",
            "math",
            "reasoning",
            "turns",
            "max_tokens",
        ],
        vec![weights_row(&rc.weights)],
    );
    let Some(h) = &rc.held_out else {
        d.p("No items were held out (`--holdout 0`), so the router's quality was not measured on unseen items.");
        return;
    };
    let (lo, hi) = h.gain_ci;
    let verdict = if lo > 0.0 {
        "better than random routing at the same share (the 95% interval of the gain excludes 0)"
    } else if hi < 0.0 {
        "worse than random routing at the same share"
    } else {
        "not distinguishable from random routing at the same share on these items (the 95% interval of the gain includes 0)"
    };
    d.p(format!(
        "On the **{} held-out items** (not used for the fit or the threshold), the router sends **{:.1}%** to {} and reaches a mean item score of **{:.3}** (95% {:.3}–{:.3}); random routing at that share reaches {:.3} ({:.3}–{:.3}). Gain {:+.3} (95% {:+.3} to {:+.3}): {verdict}. For reference, {} alone scores {:.3} and {} alone {:.3}.",
        h.items,
        h.strong_share * 100.0,
        rc.strong,
        h.quality,
        h.quality_ci.0,
        h.quality_ci.1,
        h.random_at_share,
        h.random_ci.0,
        h.random_ci.1,
        h.quality - h.random_at_share,
        lo,
        hi,
        rc.fast,
        h.fast_only,
        rc.strong,
        h.strong_only,
    ));
    if !h.by_component.is_empty() {
        let rows = h
            .by_component
            .iter()
            .map(|p| {
                vec![
                    p.component.clone(),
                    p.items.to_string(),
                    format!("{:.0}%", p.strong_share * 100.0),
                    format!("{:.3}", p.quality),
                    format!("{:.3}", p.fast_only),
                    format!("{:.3}", p.strong_only),
                ]
            })
            .collect();
        d.table(
            &[
                "Held-out items of",
                "Items",
                "Sent to the strong model",
                "Routed score",
                "Fast model alone",
                "Strong model alone",
            ],
            rows,
        );
    }
    let source = |label: &str| {
        pair.models()
            .iter()
            .find(|v| v.label == label)
            .map_or_else(|| label.to_string(), |v| v.source.clone())
    };
    d.p(format!(
        "To serve with it: `bakeoff serve --model fast={} --model strong={} --calibration routing.json` (the file next to this report).",
        source(&rc.fast),
        source(&rc.strong)
    ));
}

fn weights_row(w: &ComplexityWeights) -> Vec<String> {
    std::iter::once(w.bias)
        .chain(w.features())
        .map(|v| format!("{v:+.2}"))
        .collect()
}
