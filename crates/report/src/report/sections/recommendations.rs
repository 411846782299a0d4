//! The report's recommendations section.

use std::collections::BTreeMap;

use crate::doc::Doc;
use crate::rules::{self, Evidence, Pick, USE_CASES};

use crate::report::view::*;

pub(crate) fn recommendations(d: &mut Doc, pair: &Pair, ev: &Evidence) {
    d.h2("Use-case recommendations");
    let mut rows = Vec::new();
    let mut by: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for u in USE_CASES {
        let dec = rules::decide(&u, ev);
        let why = dec
            .why
            .replace("A ", &format!("{} ", pair.a.label))
            .replace("B ", &format!("{} ", pair.b.label));
        let who = pair.name(dec.pick);
        by.entry(match dec.pick {
            Pick::A => "A",
            Pick::B => "B",
            Pick::Tie => "T",
        })
        .or_default()
        .push(u.name.to_string());
        rows.push(vec![
            u.name.to_string(),
            if dec.pick == Pick::Tie {
                who
            } else {
                format!("**{who}**")
            },
            why,
            u.describe(),
        ]);
    }
    d.h3("Deployment matrix");
    d.table(
        &[
            "Scenario",
            "Recommended",
            "Why (from the measurements)",
            "Rule",
        ],
        rows,
    );
    let mut items = Vec::new();
    for (k, name) in [("A", &pair.a.label), ("B", &pair.b.label)] {
        if let Some(v) = by.get(k) {
            items.push(format!("Choose **{name}** for: {}.", v.join(", ")));
        }
    }
    if let Some(v) = by.get("T") {
        items.push(format!("No measured difference decides: {}.", v.join(", ")));
    }
    d.list(items);
    let mut ev_rows = vec![
        vec![
            "latency (short-prompt response time)".to_string(),
            opt_pick(pair, ev.latency),
        ],
        vec![
            "throughput (decode tok/s over scenarios)".into(),
            opt_pick(pair, ev.throughput),
        ],
        vec!["peak memory".into(), opt_pick(pair, ev.memory)],
        vec!["load time".into(), opt_pick(pair, ev.load)],
    ];
    for (c, p) in &ev.quality {
        ev_rows.push(vec![
            format!("quality: {c}"),
            if ev.quality_meaningful {
                pair.name(*p)
            } else {
                "ignored (synthetic)".into()
            },
        ]);
    }
    d.p("The rules read these verdicts (each decided as described under Methodology):");
    d.table(&["Evidence", "Verdict"], ev_rows);
}

pub(crate) fn opt_pick(pair: &Pair, p: Option<Pick>) -> String {
    p.map_or("not measured".into(), |p| pair.name(p))
}
