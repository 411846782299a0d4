//! The two models as the report sees them: each results file's entry for a model paired into a
//! [`View`], the [`Pair`] the sections compare, and the [`Facts`] (verdicts per area) that the
//! executive summary, the recommendations and the routing section share.

use std::path::Path;

use bakeoff_record::bench::{ModelResult as BenchModel, ScenarioResult, Stats};
use bakeoff_record::compare::ModelAnswers;
use bakeoff_record::eval::ModelResult as EvalModel;
use bakeoff_record::paired::{Verdict, compare as paired_compare};
use bakeoff_record::stats::{Estimate, percentile};

use crate::error::{ReportError, Result};
use crate::inputs::Inputs;
use crate::rules::{self, Better, Evidence, Pick};

use crate::report::TIE;
use crate::report::format::*;

/// One of the two models, with whatever each results file holds about it.
pub struct View<'a> {
    pub label: String,
    pub source: String,
    pub synthetic: bool,
    pub bench: Option<&'a BenchModel>,
    pub eval: Option<&'a EvalModel>,
    pub answers: Option<&'a ModelAnswers>,
}

pub(crate) fn source_of_eval(m: &EvalModel) -> String {
    m.info.source.clone()
}

pub(crate) fn find<'a, T>(
    items: &'a [T],
    i: usize,
    source: &str,
    label: &str,
    key: impl Fn(&T) -> (String, String),
) -> Option<&'a T> {
    items
        .iter()
        .find(|x| key(x).0 == source)
        .or_else(|| items.iter().find(|x| key(x).1 == label))
        .or_else(|| items.get(i))
}

/// `bakeoff synth` and `compare --demo` name their files `synthetic-*`; the manifest and the
/// answers file say so explicitly, from the file's metadata.
pub(crate) fn looks_synthetic(s: &str) -> bool {
    Path::new(s)
        .file_name()
        .is_some_and(|f| f.to_string_lossy().starts_with("synthetic-"))
}

/// Pairs the models across the files: by source, then label, then position.
pub fn views(inp: &Inputs) -> Result<Vec<View<'_>>> {
    let order: Vec<(String, String, bool)> = if let Some(m) = &inp.manifest {
        m.models
            .iter()
            .map(|x| (x.label.clone(), x.source.clone(), x.synthetic))
            .collect()
    } else if let Some(b) = &inp.bench {
        b.models
            .iter()
            .map(|m| (m.label.clone(), m.model.source.clone(), false))
            .collect()
    } else if let Some(e) = &inp.eval {
        e.models
            .iter()
            .map(|m| (m.label.clone(), source_of_eval(m), false))
            .collect()
    } else {
        Vec::new()
    };
    if order.len() != 2 {
        return Err(ReportError::Input(format!(
            "the report compares two models; the inputs hold {} ({})",
            order.len(),
            order
                .iter()
                .map(|o| o.0.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let counts = [
        inp.bench.as_ref().map(|b| ("bench", b.models.len())),
        inp.eval.as_ref().map(|e| ("eval", e.models.len())),
    ];
    for (what, n) in counts.into_iter().flatten() {
        if n != 2 {
            return Err(ReportError::Input(format!(
                "the {what} results hold {n} models; the report compares exactly two"
            )));
        }
    }
    let mut out = Vec::new();
    for (i, (label, source, synth)) in order.into_iter().enumerate() {
        let bench = inp.bench.as_ref().and_then(|b| {
            find(&b.models, i, &source, &label, |m| {
                (m.model.source.clone(), m.label.clone())
            })
        });
        let eval = inp.eval.as_ref().and_then(|e| {
            find(&e.models, i, &source, &label, |m| {
                (source_of_eval(m), m.label.clone())
            })
        });
        let answers = inp.answers.as_ref().and_then(|a| {
            find(&a.models, i, &source, &label, |m| {
                (m.source.clone(), m.label.clone())
            })
        });
        let path_synth = bench.is_some_and(|b| {
            looks_synthetic(&b.model.source)
                || b.model
                    .path
                    .as_ref()
                    .is_some_and(|p| looks_synthetic(&p.to_string_lossy()))
        }) || looks_synthetic(&source);
        let synthetic = synth || answers.is_some_and(|a| a.synthetic) || path_synth;
        out.push(View {
            label,
            source,
            synthetic,
            bench,
            eval,
            answers,
        });
    }
    if out[0].label == out[1].label {
        out[1].label = format!("{} (B)", out[1].label);
        out[0].label = format!("{} (A)", out[0].label);
    }
    Ok(out)
}

pub(crate) struct Pair<'v, 'a> {
    pub(crate) a: &'v View<'a>,
    pub(crate) b: &'v View<'a>,
}

impl Pair<'_, '_> {
    pub(crate) fn name(&self, p: Pick) -> String {
        match p {
            Pick::A => self.a.label.clone(),
            Pick::B => self.b.label.clone(),
            Pick::Tie => TIE.into(),
        }
    }
    pub(crate) fn models(&self) -> [&View<'_>; 2] {
        [self.a, self.b]
    }
}

pub(crate) fn winner_cells(pair: &Pair, p: Pick, a: f64, b: f64, better: Better) -> [String; 2] {
    match p {
        Pick::Tie => [TIE.into(), String::new()],
        p => [
            format!("**{}**", pair.name(p)),
            ratio(rules::advantage(a, b, better)),
        ],
    }
}

pub(crate) fn scenario_names(v: &View) -> Vec<String> {
    v.bench
        .map(|b| {
            b.scenarios
                .iter()
                .map(|s| s.scenario.name().to_string())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn scenario<'a>(v: &View<'a>, name: &str) -> Option<&'a ScenarioResult> {
    v.bench?
        .scenarios
        .iter()
        .find(|s| s.scenario.name() == name)
}

pub(crate) fn mean_of<'a>(xs: impl Iterator<Item = Option<&'a Estimate>>) -> f64 {
    let v: Vec<f64> = xs.flatten().map(|e| e.mean).collect();
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

pub(crate) fn all_scenarios(pair: &Pair) -> Vec<String> {
    let mut names = scenario_names(pair.a);
    for n in scenario_names(pair.b) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

/// Verdicts per scenario for one per-scenario metric.
pub(crate) fn per_scenario(
    pair: &Pair,
    metric: impl Fn(&Stats) -> Option<&Estimate>,
    better: Better,
) -> Vec<(String, Option<Estimate>, Option<Estimate>, Pick)> {
    all_scenarios(pair)
        .into_iter()
        .map(|n| {
            let a = scenario(pair.a, &n).and_then(|s| metric(&s.stats)).cloned();
            let b = scenario(pair.b, &n).and_then(|s| metric(&s.stats)).cloned();
            let p = match (a.as_ref(), b.as_ref()) {
                (Some(x), Some(y)) => rules::by_interval(x, y, better),
                _ => Pick::Tie,
            };
            (n, a, b, p)
        })
        .collect()
}

/// The category verdict: a paired test over the pooled items of the category's components
/// (exact McNemar when every score is 0/1, else a paired bootstrap), at α = 0.05.
pub(crate) fn category_test(cat: &str, a: &EvalModel, b: &EvalModel) -> Option<(Pick, usize, f64)> {
    let ca = a.categories.iter().find(|c| c.name == cat)?;
    let comps: Vec<&str> = ca.weights.iter().map(|(n, _)| n.as_str()).collect();
    let (mut va, mut vb) = (Vec::new(), Vec::new());
    for comp in comps {
        let (Some(x), Some(y)) = (
            a.components.iter().find(|c| c.name == comp),
            b.components.iter().find(|c| c.name == comp),
        ) else {
            continue;
        };
        for (id, s) in &x.per_item {
            if let Some(t) = y.per_item.get(id) {
                va.push(*s);
                vb.push(*t);
            }
        }
    }
    if va.is_empty() {
        return None;
    }
    let p = paired_compare(&va, &vb);
    let pick = match p.verdict {
        Verdict::ABetter => Pick::A,
        Verdict::BBetter => Pick::B,
        Verdict::NoDifference => Pick::Tie,
    };
    Some((pick, p.n, p.p_value))
}

pub(crate) fn p95(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    percentile(xs, 0.95)
}

pub(crate) struct Facts {
    pub(crate) speed: Vec<(String, Option<Estimate>, Option<Estimate>, Pick)>,
    pub(crate) ttft: Vec<(String, Option<Estimate>, Option<Estimate>, Pick)>,
    pub(crate) latency: Option<Pick>,
    pub(crate) memory: Option<Pick>,
    pub(crate) load: Option<Pick>,
    pub(crate) disk: Option<Pick>,
    pub(crate) categories: Vec<(String, Option<Pick>, usize, f64)>,
    pub(crate) quality_meaningful: bool,
    pub(crate) quality_measured: bool,
}

pub(crate) fn facts(pair: &Pair) -> Facts {
    let speed = per_scenario(pair, |s| s.decode_tok_s.as_ref(), Better::Higher);
    let ttft = per_scenario(pair, |s| s.ttft_ms.as_ref(), Better::Lower);
    let chat = |v: &View| scenario(v, "short").and_then(|s| s.stats.e2e_s.clone());
    let latency = match (chat(pair.a), chat(pair.b)) {
        (Some(a), Some(b)) => Some(rules::by_interval(&a, &b, Better::Lower)),
        _ => None,
    };
    let single = |f: &dyn Fn(&BenchModel) -> Option<f64>, margin: f64| match (
        pair.a.bench.and_then(f),
        pair.b.bench.and_then(f),
    ) {
        (Some(a), Some(b)) => Some(rules::by_margin(a, b, Better::Lower, margin)),
        _ => None,
    };
    let memory = single(
        &|m| m.memory.peak_rss_bytes.map(|b| b as f64),
        rules::SINGLE_SAMPLE_MARGIN,
    );
    let load = single(&|m| m.load.warm_s, rules::SINGLE_SAMPLE_MARGIN);
    // File sizes are exact, not measured with noise: any difference over 1% counts.
    let disk = single(&|m| m.model.file_bytes.map(|b| b as f64), 0.01);
    let mut categories = Vec::new();
    if let (Some(a), Some(b)) = (pair.a.eval, pair.b.eval) {
        for c in &a.categories {
            if b.categories.iter().any(|x| x.name == c.name) {
                match category_test(&c.name, a, b) {
                    Some((p, n, pv)) => categories.push((c.name.clone(), Some(p), n, pv)),
                    None => categories.push((c.name.clone(), None, 0, f64::NAN)),
                }
            }
        }
    }
    Facts {
        speed,
        ttft,
        latency,
        memory,
        load,
        disk,
        quality_measured: !categories.is_empty(),
        categories,
        quality_meaningful: !(pair.a.synthetic || pair.b.synthetic),
    }
}

pub(crate) fn evidence(f: &Facts) -> Evidence {
    let area_of = |rows: &[(String, Option<Estimate>, Option<Estimate>, Pick)]| {
        (!rows.is_empty()).then(|| rules::area(&rows.iter().map(|r| r.3).collect::<Vec<_>>()))
    };
    Evidence {
        latency: f.latency,
        throughput: area_of(&f.speed),
        memory: f.memory,
        load: f.load,
        quality: f
            .categories
            .iter()
            .filter_map(|(c, p, _, _)| p.map(|p| (c.clone(), p)))
            .collect(),
        quality_meaningful: f.quality_meaningful,
    }
}
