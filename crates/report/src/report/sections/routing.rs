//! The report's routing section.

use crate::charts::{self, Point};
use crate::doc::{Block, Doc};
use crate::error::Result;
use crate::rules::{self};

use crate::report::sections::*;
use crate::report::view::*;

pub(crate) fn routing(d: &mut Doc, pair: &Pair, f: &Facts) -> Result<()> {
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
    d.p("The oracle sends the strong model the items where it gains most first (an upper bound for any real router); random routing sends a uniform share (a lower reference). A real router, such as `bakeoff serve --policy complexity` calibrated with `bakeoff route calibrate`, lands between the two.");
    let _ = f;
    let series = vec![
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
    if let Some(c) = charts::lines(
        "routing_curve",
        "Quality against strong-model calls",
        "% of queries sent to the strong model",
        "mean item score",
        &series,
    )? {
        d.blocks.push(Block::Chart(c));
    }
    Ok(())
}
