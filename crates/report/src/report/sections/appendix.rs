//! The report's appendix section.

use bakeoff_record::bench::Stats;

use crate::doc::Doc;
use crate::inputs::Inputs;

use crate::report::format::*;
use crate::report::view::*;

pub(crate) fn appendix(d: &mut Doc, inp: &Inputs, pair: &Pair) {
    d.h2("Appendix: raw data");
    d.h3("Sources");
    let rows = inp
        .sources
        .iter()
        .map(|s| {
            vec![
                format!("`{}`", s.path),
                s.kind.to_string(),
                s.bytes.to_string(),
                format!("`{}`", s.sha256),
            ]
        })
        .collect();
    d.table(&["File", "Kind", "Bytes", "SHA-256"], rows);
    for v in pair.models() {
        let Some(b) = v.bench else { continue };
        d.h3(format!("{}: every scenario and depth", v.label));
        let mut rows = Vec::new();
        let mut push = |name: String, s: &Stats| {
            rows.push(vec![
                name,
                s.repetitions.to_string(),
                s.prompt_tokens.to_string(),
                est(s.ttft_ms.as_ref()),
                est(s.prefill_tok_s.as_ref()),
                est(s.decode_tok_s.as_ref()),
                est(s.median_tok_s.as_ref()),
                est(s.peak_tok_s.as_ref()),
                est(s.sustained_tok_s.as_ref()),
                s.itl_ms.as_ref().map_or("n/a".into(), |p| {
                    format!("{} / {} / {}", sig(p.p50), sig(p.p90), sig(p.p99))
                }),
                est(s.e2e_s.as_ref()),
                s.cpu_util
                    .as_ref()
                    .map_or("n/a".into(), |c| format!("{:.0}%", c.mean * 100.0)),
            ]);
        };
        for s in &b.scenarios {
            push(s.scenario.name().to_string(), &s.stats);
        }
        for x in &b.depths {
            push(format!("depth {}", x.depth), &x.stats);
        }
        d.table(
            &[
                "Run",
                "reps",
                "prompt tok",
                "TTFT ms",
                "prefill tok/s",
                "decode tok/s",
                "median tok/s",
                "peak tok/s",
                "sustained tok/s",
                "ITL p50/p90/p99 ms",
                "e2e s",
                "CPU",
            ],
            rows,
        );
        if let Some(e) = &b.error {
            d.p(format!("**Worker error:** {e}"));
        }
    }
    d.p("The per-token timestamps behind every figure are in the bench results file (`samples[].token_times_s`); every eval prompt, output and verdict is in the eval audit file named in its results.");
}
