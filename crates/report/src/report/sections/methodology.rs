//! The report's methodology section.

use crate::doc::Doc;
use crate::inputs::Inputs;
use crate::rules::{AREA_RULE, INTERVAL_RULE, THRESHOLD_RULE, USE_CASES};

use crate::report::view::*;

pub(crate) fn methodology(d: &mut Doc, inp: &Inputs, pair: &Pair) {
    d.h2("Methodology");
    let mut items = Vec::new();
    if let Some(b) = &inp.bench {
        let s = &b.settings;
        items.push(format!(
            "Speed: `bakeoff bench` (docs/bench.md), each model in its own process, one after the other; scenario set `{}` ({}), {} measured repetitions after {} warm-up, {} tokens per scenario run, {}, EOS ignored = {}; context depths {} with {} tokens each.",
            s.scenario_set,
            s.scenarios.iter().map(|x| x.name()).collect::<Vec<_>>().join(", "),
            s.repetitions,
            s.warmup,
            s.max_tokens,
            s.sampling,
            s.ignore_eos,
            if s.depths.is_empty() { "none".into() } else { s.depths.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ") },
            s.depth_tokens
        ));
        if inp.manifest.is_none() {
            items.push(format!("Bench command: `{}`.", b.command.join(" ")));
        }
    }
    if let Some(e) = &inp.eval {
        items.push(format!(
            "Quality: `bakeoff eval` (docs/eval.md), profile `{}`; items: {}; selection: {}; scale: {}; overall: {}.",
            e.profile,
            e.item_counts.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", "),
            e.selection_rule,
            e.scale.formula,
            e.scale.overall_rule
        ));
    }
    if let Some(m) = &inp.manifest {
        items.push(format!(
            "Compare command: `{}`{}.",
            m.command.join(" "),
            match (m.demo, m.models.iter().any(|x| x.synthetic)) {
                (true, true) => " (offline demo on synthetic models)",
                (true, false) => " (demo profile: few items and short runs)",
                _ => "",
            }
        ));
    }
    items.push(format!("Repeated measurements: {INTERVAL_RULE}."));
    items.push(format!(
        "{THRESHOLD_RULE}; sizes on disk are exact, so any difference over 1% counts."
    ));
    items.push(format!("Areas: {AREA_RULE}."));
    items.push("Quality categories: paired test over the pooled items of each category's components (exact McNemar when all scores are 0/1, otherwise a paired bootstrap with 10,000 resamples), α = 0.05; not applied to synthetic models.".into());
    items.push(format!(
        "Use-case rules ({} of them) are printed in the deployment matrix; each reads only the verdicts above. Model A = {}, model B = {}.",
        USE_CASES.len(),
        pair.a.label,
        pair.b.label
    ));
    d.list(items);
}
