//! The report's quality section.

use bakeoff_record::eval::{Component, ModelResult as EvalModel};
use bakeoff_record::paired::Verdict;
use bakeoff_record::stats::Estimate;

use crate::charts::{self, Bar, XY};
use crate::doc::{Block, Doc};
use crate::error::Result;
use crate::inputs::{FIXED_PROMPTS, Inputs};
use crate::published::Published;

use crate::report::TIE;
use crate::report::format::*;
use crate::report::view::*;

pub(crate) fn synthetic_quality_note(d: &mut Doc, pair: &Pair) {
    if pair.a.synthetic || pair.b.synthetic {
        d.p("**Not meaningful: synthetic models.** Random weights produce noise, so these scores sit at or below chance. They are shown to prove the pipeline end to end, not to compare quality; no quality winner is named.");
    }
}

pub(crate) fn quality(d: &mut Doc, inp: &Inputs, pair: &Pair, f: &Facts) -> Result<()> {
    d.h2("Quality");
    synthetic_quality_note(d, pair);
    let (a, b) = (pair.a, pair.b);
    match (a.eval, b.eval) {
        (Some(ea), Some(eb)) => {
            d.h3("Scores per category");
            let mut rows = Vec::new();
            for (cat, p, n, pv) in &f.categories {
                let c = |m: &EvalModel| {
                    m.categories
                        .iter()
                        .find(|c| &c.name == cat)
                        .map_or("n/a".into(), |c| {
                            format!(
                                "{} ({}–{}){}",
                                sig(c.score10),
                                sig(c.band.0),
                                sig(c.band.1),
                                if c.confidence.starts_with("low") {
                                    " low confidence"
                                } else {
                                    ""
                                }
                            )
                        })
                };
                let winner = if !f.quality_meaningful {
                    "not meaningful (synthetic)".into()
                } else {
                    match p {
                        Some(p) => pair.name(*p),
                        None => "n/a".into(),
                    }
                };
                rows.push(vec![
                    cat.clone(),
                    c(ea),
                    c(eb),
                    if *n > 0 {
                        format!("n {n}, p {}", sig(*pv))
                    } else {
                        "n/a".into()
                    },
                    winner,
                ]);
            }
            if let (Some(oa), Some(ob)) = (&ea.overall, &eb.overall) {
                rows.push(vec![
                    "**overall** (equal-weight mean)".into(),
                    sig(oa.score10),
                    sig(ob.score10),
                    String::new(),
                    String::new(),
                ]);
            }
            d.table(
                &[
                    "Category",
                    &format!("{} (1-10, band)", a.label),
                    &format!("{} (1-10, band)", b.label),
                    "Paired test",
                    "Winner",
                ],
                rows,
            );
            d.p("Scores map each benchmark metric to 1-10 above its chance level; the band is the weighted mean of the components' 95% Wilson interval ends (conservative). The category verdict is a paired test over the pooled items of the category's components (exact McNemar for right/wrong items, paired bootstrap otherwise), α = 0.05.");
            let names: Vec<String> = f.categories.iter().map(|c| c.0.clone()).collect();
            let bars = |m: &EvalModel| -> Vec<Option<Bar>> {
                names
                    .iter()
                    .map(|n| {
                        m.categories.iter().find(|c| &c.name == n).map(|c| Bar {
                            value: c.score10,
                            interval: Some(c.band),
                        })
                    })
                    .collect()
            };
            let title = if f.quality_meaningful {
                "Quality per category, 1-10 (95% bands)"
            } else {
                "Quality per category, 1-10 (95% bands) — synthetic: not meaningful"
            };
            if let Some(c) = charts::grouped_bars(
                "quality_per_category",
                title,
                "score (1-10)",
                &names,
                &[(a.label.clone(), bars(ea)), (b.label.clone(), bars(eb))],
            )? {
                d.blocks.push(Block::Chart(c));
            }
            d.h3("Components");
            let mut rows = Vec::new();
            for ca in ea.components.iter().filter(|c| c.scored) {
                let cb = eb.components.iter().find(|c| c.name == ca.name);
                let cell = |c: &Component| {
                    format!(
                        "{} ({}–{}), n {}",
                        sig(c.headline.value),
                        sig(c.headline.ci95.0),
                        sig(c.headline.ci95.1),
                        c.headline.n
                    )
                };
                let cmp = inp
                    .eval
                    .as_ref()
                    .and_then(|e| e.comparisons.iter().find(|x| x.component == ca.name));
                rows.push(vec![
                    format!("{} ({})", ca.name, ca.metric),
                    cell(ca),
                    cb.map_or("n/a".into(), cell),
                    cmp.map_or("n/a".into(), |c| format!("p {}", sig(c.paired.p_value))),
                    cmp.map_or("n/a".into(), |c| {
                        if !f.quality_meaningful {
                            "not meaningful (synthetic)".into()
                        } else {
                            match c.paired.verdict {
                                Verdict::ABetter => a.label.clone(),
                                Verdict::BBetter => b.label.clone(),
                                Verdict::NoDifference => TIE.into(),
                            }
                        }
                    }),
                ]);
            }
            d.table(
                &[
                    "Component (metric)",
                    &format!("{} (95% CI)", a.label),
                    &format!("{} (95% CI)", b.label),
                    "Paired test",
                    "Verdict",
                ],
                rows,
            );
            published(d, inp, pair)?;
            // Quality against speed: the trade-off in one picture.
            let point = |v: &View| -> Option<XY> {
                let o = v.eval?.overall.as_ref()?;
                let speeds: Vec<&Estimate> = v
                    .bench?
                    .scenarios
                    .iter()
                    .filter_map(|s| s.stats.decode_tok_s.as_ref())
                    .collect();
                if speeds.is_empty() {
                    return None;
                }
                let n = speeds.len() as f64;
                let x = speeds.iter().map(|e| e.mean).sum::<f64>() / n;
                Some(XY {
                    label: v.label.clone(),
                    x,
                    x_interval: Some((
                        speeds.iter().map(|e| e.ci95_low).sum::<f64>() / n,
                        speeds.iter().map(|e| e.ci95_high).sum::<f64>() / n,
                    )),
                    y: o.score10,
                    y_interval: None,
                })
            };
            let pts: Vec<XY> = pair.models().iter().filter_map(|v| point(v)).collect();
            if let Some(c) = charts::scatter(
                "quality_vs_speed",
                if f.quality_meaningful {
                    "Overall quality against decode speed"
                } else {
                    "Overall quality against decode speed — synthetic: quality not meaningful"
                },
                "decode tok/s (mean over scenarios)",
                "overall quality (1-10)",
                &pts,
            )? {
                d.blocks.push(Block::Chart(c));
            }
        }
        _ => d.p("No eval results for both models among the inputs: quality was not measured."),
    }
    d.h3("Side-by-side answers");
    match (a.answers, b.answers) {
        (Some(xa), Some(xb)) => {
            if let Some(ans) = &inp.answers {
                d.p(format!(
                    "Each model answered the same fixed prompts ({}, at most {} new tokens, the model's own chat template). Shown verbatim.",
                    ans.sampling, ans.max_tokens
                ));
            }
            let prompts: Vec<String> = {
                let mut p: Vec<String> = xa.answers.iter().map(|x| x.prompt.clone()).collect();
                for x in &xb.answers {
                    if !p.contains(&x.prompt) {
                        p.push(x.prompt.clone());
                    }
                }
                p
            };
            for prompt in prompts {
                d.blocks.push(Block::Heading(4, format!("Prompt: \"{prompt}\"")));
                for (v, m) in [(a, xa), (b, xb)] {
                    match m.answers.iter().find(|x| x.prompt == prompt) {
                        Some(ans) => {
                            d.p(format!(
                                "**{}** ({} tokens, {}, {} s{}):",
                                v.label,
                                ans.generated_tokens,
                                ans.finish_reason,
                                sig(ans.total_s),
                                if v.synthetic { "; random weights: noise" } else { "" }
                            ));
                            d.blocks.push(Block::Quote(if ans.text.trim().is_empty() {
                                "(empty answer)".into()
                            } else {
                                ans.text.clone()
                            }));
                        }
                        None => d.p(format!("**{}**: not answered.", v.label)),
                    }
                }
            }
            d.p("No winner is named per answer: a single answer is one sample. The quality verdicts above come from the scored benchmarks.");
        }
        _ => d.p(format!(
            "Not recorded: no answers file among the inputs (`bakeoff compare` writes one with the fixed prompts: {}).",
            FIXED_PROMPTS.map(|p| format!("\"{p}\"")).join(", ")
        )),
    }
    Ok(())
}

/// The repository of a model's original weights: from the catalog by file hash, else the hub id
/// it was loaded from.
fn base_of(inp: &Inputs, m: &EvalModel) -> Option<String> {
    m.info
        .files
        .iter()
        .filter_map(|f| f.sha256.as_ref())
        .find_map(|h| inp.bases.get(h).cloned())
        .or_else(|| {
            let s = &m.info.source;
            (s.split('/').count() == 2 && !std::path::Path::new(s).exists()).then(|| s.clone())
        })
}

/// Each model's measured scores beside the ones its authors published, with the protocol
/// difference spelled out.
fn published(d: &mut Doc, inp: &Inputs, pair: &Pair) -> Result<()> {
    if pair.a.synthetic || pair.b.synthetic {
        return Ok(());
    }
    d.h3("Measured beside published scores");
    let table = Published::shipped()?;
    let mut rows = Vec::new();
    let mut without = Vec::new();
    for v in pair.models() {
        let Some(m) = v.eval else { continue };
        let Some(p) = base_of(inp, m).and_then(|b| table.for_base(&b)) else {
            without.push(v.label.clone());
            continue;
        };
        for s in &p.scores {
            let measured = m
                .components
                .iter()
                .find(|c| c.name == s.component)
                .and_then(|c| {
                    if c.metric == s.metric {
                        Some(&c.headline)
                    } else {
                        c.other.get(&s.metric)
                    }
                })
                .map_or("not measured".to_string(), |x| {
                    format!(
                        "{:.1} ({:.1}–{:.1}), n {}",
                        x.value * 100.0,
                        x.ci95.0 * 100.0,
                        x.ci95.1 * 100.0,
                        x.n
                    )
                });
            rows.push(vec![
                v.label.clone(),
                s.benchmark.clone(),
                format!("{:.1}", s.value),
                format!("{measured} ({} {})", s.component, s.metric),
                if s.comparable {
                    format!("comparable: {}", s.note)
                } else {
                    format!("**not comparable**: {}", s.note)
                },
            ]);
        }
        d.p(format!(
            "Published for {} ({}): {} <{}>.",
            v.label, p.base, p.source, p.url
        ));
    }
    if rows.is_empty() {
        d.p("No published scores on file for these models (bakeoff's table, `crates/report/published.toml`, lists models by the repository of their original weights; a file is recognised by its SHA-256 in the model catalog, or by the hub id it was loaded from).");
        return Ok(());
    }
    d.table(
        &[
            "Model",
            "Published benchmark",
            "Published (%)",
            "Measured here (%, 95% CI)",
            "Protocol",
        ],
        rows,
    );
    if !without.is_empty() {
        d.p(format!(
            "No published scores on file for {}.",
            without.join(", ")
        ));
    }
    d.p("A comparable row differs only in the items scored (bakeoff's profile takes a subset, so its interval is wide) and the quantized file; a published score outside the measured interval there points at the quantization, the chat template or the prompt. Rows marked not comparable are context only.");
    Ok(())
}
