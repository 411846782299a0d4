//! From results files to the report: the model pairing, every section of the seed report
//! computed from measurements, and the files written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bakeoff_record::ModelIdentity;
use bakeoff_record::bench::{
    BenchReport, DepthResult, ModelResult as BenchModel, ScenarioResult, Stats,
};
use bakeoff_record::compare::ModelAnswers;
use bakeoff_record::eval::{Component, ModelResult as EvalModel, Results as EvalResults};
use bakeoff_record::paired::{Verdict, compare as paired_compare};
use bakeoff_record::stats::{Estimate, percentile};

use crate::charts::{self, Bar, Point, XY};
use crate::doc::{Block, Doc};
use crate::error::{ReportError, Result};
use crate::inputs::{FIXED_PROMPTS, Inputs};
use crate::rules::{
    self, AREA_RULE, Better, Evidence, INTERVAL_RULE, Pick, THRESHOLD_RULE, USE_CASES,
};

/// One of the two models, with whatever each results file holds about it.
pub struct View<'a> {
    pub label: String,
    pub source: String,
    pub synthetic: bool,
    pub bench: Option<&'a BenchModel>,
    pub eval: Option<&'a EvalModel>,
    pub answers: Option<&'a ModelAnswers>,
}

/// The figures the history database keeps per model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSummary {
    pub label: String,
    pub source: String,
    pub synthetic: bool,
    /// Metric name → value (decode tok/s per scenario, TTFT, peak RSS, category scores, ...).
    pub metrics: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub models: Vec<ModelSummary>,
    pub machine: String,
    pub git_commit: Option<String>,
    pub bakeoff_version: String,
    /// Area → winner's label or "tie (within noise)".
    pub verdicts: Vec<(String, String)>,
}

pub struct Rendered {
    pub doc: Doc,
    pub markdown: String,
    pub html: String,
    pub summary: Summary,
}

pub const TIE: &str = "tie (within noise)";

fn source_of_eval(m: &EvalModel) -> String {
    m.info.source.clone()
}

fn find<'a, T>(
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
fn looks_synthetic(s: &str) -> bool {
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

// ---------- number formatting ----------

/// Three significant digits, without scientific notation for the ranges the report shows.
pub fn sig(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    if x == 0.0 {
        return "0".into();
    }
    let a = x.abs();
    let d = if a >= 100.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else if a >= 0.1 {
        3
    } else if a >= 0.01 {
        4
    } else {
        5
    };
    format!("{x:.d$}")
}

fn est(e: Option<&Estimate>) -> String {
    match e {
        Some(e) if e.n >= 2 => format!("{} ± {}", sig(e.mean), sig(e.ci95_half())),
        Some(e) => format!("{} (1 run)", sig(e.mean)),
        None => "n/a".into(),
    }
}

fn gib(b: Option<u64>) -> String {
    match b {
        Some(b) if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        Some(b) => format!("{} MiB", sig(b as f64 / (1u64 << 20) as f64)),
        None => "n/a".into(),
    }
}

fn ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}×")
    } else {
        "n/a".into()
    }
}

struct Pair<'v, 'a> {
    a: &'v View<'a>,
    b: &'v View<'a>,
}

impl Pair<'_, '_> {
    fn name(&self, p: Pick) -> String {
        match p {
            Pick::A => self.a.label.clone(),
            Pick::B => self.b.label.clone(),
            Pick::Tie => TIE.into(),
        }
    }
    fn models(&self) -> [&View<'_>; 2] {
        [self.a, self.b]
    }
}

fn winner_cells(pair: &Pair, p: Pick, a: f64, b: f64, better: Better) -> [String; 2] {
    match p {
        Pick::Tie => [TIE.into(), String::new()],
        p => [
            format!("**{}**", pair.name(p)),
            ratio(rules::advantage(a, b, better)),
        ],
    }
}

fn scenario_names(v: &View) -> Vec<String> {
    v.bench
        .map(|b| {
            b.scenarios
                .iter()
                .map(|s| s.scenario.name().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn scenario<'a>(v: &View<'a>, name: &str) -> Option<&'a ScenarioResult> {
    v.bench?
        .scenarios
        .iter()
        .find(|s| s.scenario.name() == name)
}

fn mean_of<'a>(xs: impl Iterator<Item = Option<&'a Estimate>>) -> f64 {
    let v: Vec<f64> = xs.flatten().map(|e| e.mean).collect();
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

fn all_scenarios(pair: &Pair) -> Vec<String> {
    let mut names = scenario_names(pair.a);
    for n in scenario_names(pair.b) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

/// Verdicts per scenario for one per-scenario metric.
fn per_scenario(
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
fn category_test(cat: &str, a: &EvalModel, b: &EvalModel) -> Option<(Pick, usize, f64)> {
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

fn p95(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    percentile(xs, 0.95)
}

struct Facts {
    speed: Vec<(String, Option<Estimate>, Option<Estimate>, Pick)>,
    ttft: Vec<(String, Option<Estimate>, Option<Estimate>, Pick)>,
    latency: Option<Pick>,
    memory: Option<Pick>,
    load: Option<Pick>,
    disk: Option<Pick>,
    categories: Vec<(String, Option<Pick>, usize, f64)>,
    quality_meaningful: bool,
    quality_measured: bool,
}

fn facts(pair: &Pair) -> Facts {
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

fn evidence(f: &Facts) -> Evidence {
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

/// Renders the report from the inputs.
pub fn render(inp: &Inputs) -> Result<Rendered> {
    let vs = views(inp)?;
    let pair = Pair {
        a: &vs[0],
        b: &vs[1],
    };
    let f = facts(&pair);
    let ev = evidence(&f);
    let mut d = Doc {
        title: format!("Model comparison: {} vs {}", pair.a.label, pair.b.label),
        blocks: Vec::new(),
    };
    intro(&mut d, inp, &pair);
    let verdicts = executive(&mut d, &pair, &f, &ev);
    environment(&mut d, inp);
    overview(&mut d, &pair);
    performance(&mut d, inp, &pair, &f)?;
    quality(&mut d, inp, &pair, &f)?;
    chat(&mut d, &pair, &f)?;
    resources(&mut d, inp, &pair);
    cost(&mut d, inp, &pair, &f)?;
    recommendations(&mut d, &pair, &ev);
    hardware(&mut d, &pair);
    quantization(&mut d, inp);
    routing(&mut d, &pair, &f)?;
    methodology(&mut d, inp, &pair);
    appendix(&mut d, inp, &pair);
    let summary = summarize(inp, &pair, verdicts);
    Ok(Rendered {
        markdown: d.markdown(),
        html: d.html(),
        doc: d,
        summary,
    })
}

/// Writes `report.md`, `report.html` and `charts/*.svg` into `out`; returns the paths written.
pub fn write(r: &Rendered, out: &Path) -> Result<Vec<PathBuf>> {
    let charts_dir = out.join("charts");
    std::fs::create_dir_all(&charts_dir).map_err(|e| ReportError::io(&charts_dir, e))?;
    let mut written = Vec::new();
    let mut put = |p: PathBuf, text: &str| -> Result<()> {
        std::fs::write(&p, text).map_err(|e| ReportError::io(&p, e))?;
        written.push(p);
        Ok(())
    };
    put(out.join("report.md"), &r.markdown)?;
    put(out.join("report.html"), &r.html)?;
    for c in r.doc.charts() {
        put(charts_dir.join(format!("{}.svg", c.file)), &c.svg)?;
    }
    Ok(written)
}

fn intro(d: &mut Doc, inp: &Inputs, pair: &Pair) {
    let files: Vec<String> = inp
        .sources
        .iter()
        .map(|s| format!("`{}` ({})", s.path, s.kind))
        .collect();
    d.p(format!(
        "Every number below is computed by `bakeoff report` from these results files: {}. \
         Their SHA-256 hashes are listed in the raw data appendix. Model A is **{}**, model B is **{}**.",
        files.join(", "),
        pair.a.label,
        pair.b.label
    ));
    let synth: Vec<&str> = pair
        .models()
        .iter()
        .filter(|v| v.synthetic)
        .map(|v| v.label.as_str())
        .collect();
    if !synth.is_empty() {
        d.p(format!(
            "**Synthetic models: {}.** These have the real architectures and tokenizers but random weights \
             (written by `bakeoff synth`). Speed, latency and memory figures are real measurements; \
             **quality scores are not meaningful** for them and no quality winner is named.",
            synth.join(", ")
        ));
    }
}

fn executive(d: &mut Doc, pair: &Pair, f: &Facts, ev: &Evidence) -> Vec<(String, String)> {
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
    d.table(&["Area", &a.label, &b.label, "Winner", "Advantage"], rows);
    d.list(key);
    d.p(format!(
        "Winners follow the rules printed under Methodology: repeated measurements, {INTERVAL_RULE}; {THRESHOLD_RULE}; {AREA_RULE}."
    ));
    verdicts
}

fn environment(d: &mut Doc, inp: &Inputs) {
    d.h2("Test environment");
    let mut rows = Vec::new();
    if let Some(b) = &inp.bench {
        let e = &b.environment;
        rows.push(vec![
            "CPU".into(),
            format!("{} ({} logical cores usable)", e.cpu_model, e.cores),
        ]);
        rows.push(vec!["Memory".into(), gib(Some(e.ram_bytes))]);
        rows.push(vec![
            "OS".into(),
            format!("{} (kernel {}, {})", e.os, e.kernel, e.arch),
        ]);
        rows.push(vec![
            "bakeoff".into(),
            format!(
                "{} (commit {}), {}",
                e.bakeoff_version,
                e.git_commit.as_deref().unwrap_or("unknown"),
                e.rustc
            ),
        ]);
        rows.push(vec![
            "Engine".into(),
            b.models
                .iter()
                .map(|m| format!("{}: {} on {}", m.label, m.run.backend, m.run.device))
                .collect::<Vec<_>>()
                .join("; "),
        ]);
        rows.push(vec![
            "Bench run".into(),
            format!("{} to {} (run {})", b.started_at, b.finished_at, b.run_id),
        ]);
        rows.push(vec![
            "Energy counters (RAPL)".into(),
            if e.rapl {
                "readable".into()
            } else {
                "not readable: energy not measured".into()
            },
        ]);
        rows.push(vec![
            "Page-cache drop (cold load)".into(),
            if e.drop_caches {
                "available".into()
            } else {
                "not available: cold load not measured".into()
            },
        ]);
    }
    if let Some(e) = &inp.eval {
        let matched = e
            .data_files
            .iter()
            .filter(|f| f.known_match == Some(true))
            .count();
        rows.push(vec![
            "Evaluation".into(),
            format!(
                "{}, profile `{}`, {} data files hashed ({} match the pinned SHA-256), {:.0} s",
                e.tool,
                e.profile,
                e.data_files.len(),
                matched,
                e.seconds
            ),
        ]);
        if let Some(s) = &e.sandbox {
            rows.push(vec![
                "Code sandbox".into(),
                format!(
                    "python {}; network namespace {}; mount namespace {}",
                    s.python_version,
                    if s.network_namespace { "yes" } else { "no" },
                    if s.mount_namespace { "yes" } else { "no" }
                ),
            ]);
        }
    }
    d.table(&["Component", "Specification"], rows);
}

fn eval_info<'a>(v: &'a View) -> Option<&'a ModelIdentity> {
    v.eval.map(|e| &e.info)
}

fn overview(d: &mut Doc, pair: &Pair) {
    d.h2("Model overview");
    let row =
        |name: &str, f: &dyn Fn(&View) -> String| vec![name.to_string(), f(pair.a), f(pair.b)];
    let rows = vec![
        row("Source", &|v| format!("`{}`", v.source)),
        row("Weights", &|v| {
            if v.synthetic {
                "**synthetic** (random, `bakeoff synth`)".into()
            } else {
                "as published".into()
            }
        }),
        row("Revision", &|v| {
            v.bench
                .and_then(|b| b.model.revision.clone())
                .or_else(|| eval_info(v).and_then(|i| i.revision.clone()))
                .unwrap_or_else(|| "n/a (local file)".into())
        }),
        row("Architecture", &|v| {
            v.bench
                .and_then(|b| b.model.arch.clone())
                .or_else(|| eval_info(v).and_then(|i| i.arch.clone()))
                .unwrap_or_else(|| "n/a".into())
        }),
        row("Parameters (counted from the weights)", &|v| {
            v.bench
                .and_then(|b| b.model.parameters)
                .or_else(|| eval_info(v).and_then(|i| i.parameters))
                .map(|p| format!("{:.3} B ({p})", p as f64 / 1e9))
                .unwrap_or_else(|| "n/a".into())
        }),
        row("Weight type", &|v| {
            v.bench
                .and_then(|b| b.model.dtype.clone())
                .or_else(|| eval_info(v).and_then(|i| i.dtype.clone()))
                .unwrap_or_else(|| "n/a".into())
        }),
        row("Format", &|v| {
            v.bench
                .map(|b| b.model.format.clone())
                .unwrap_or_else(|| "n/a".into())
        }),
        row("Size on disk", &|v| {
            let b = v.bench.and_then(|b| b.model.file_bytes);
            b.map(|x| format!("{} ({x} bytes)", gib(Some(x))))
                .unwrap_or_else(|| "n/a".into())
        }),
        row("Context length", &|v| {
            v.bench
                .and_then(|b| b.model.max_context)
                .map(|c| format!("{c} tokens"))
                .unwrap_or_else(|| "n/a".into())
        }),
        row("Chat template", &|v| chat_template(v)),
        row("File SHA-256", &|v| {
            let files: Vec<String> = v
                .bench
                .map(|b| {
                    b.model
                        .files
                        .iter()
                        .filter_map(|f| {
                            Some(format!(
                                "`{}`: `{}`",
                                f.path.file_name().map_or_else(
                                    || f.path.display().to_string(),
                                    |n| n.to_string_lossy().into_owned()
                                ),
                                f.sha256.as_ref()?
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            if files.is_empty() {
                "n/a".into()
            } else {
                files.join("; ")
            }
        }),
    ];
    d.table(&["", &pair.a.label, &pair.b.label], rows);
}

fn chat_template(v: &View) -> String {
    let from_eval = eval_info(v).and_then(|i| i.chat_template);
    let from_answers = v.answers.map(|a| a.chat_template);
    match from_eval.or(from_answers) {
        Some(true) => "yes (from the model files; rendered with minijinja)".into(),
        Some(false) => "none: plain `User:`/`Assistant:` prompts".into(),
        None => "n/a".into(),
    }
}

fn performance(d: &mut Doc, inp: &Inputs, pair: &Pair, f: &Facts) -> Result<()> {
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

fn synthetic_quality_note(d: &mut Doc, pair: &Pair) {
    if pair.a.synthetic || pair.b.synthetic {
        d.p("**Not meaningful: synthetic models.** Random weights produce noise, so these scores sit at or below chance. They are shown to prove the pipeline end to end, not to compare quality; no quality winner is named.");
    }
}

fn quality(d: &mut Doc, inp: &Inputs, pair: &Pair, f: &Facts) -> Result<()> {
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

fn itls_ms(v: &View) -> Vec<f64> {
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

fn chat(d: &mut Doc, pair: &Pair, f: &Facts) -> Result<()> {
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

fn cpu_mean(v: &View) -> f64 {
    mean_of(
        v.bench
            .into_iter()
            .flat_map(|b| b.scenarios.iter().map(|s| s.stats.cpu_util.as_ref())),
    )
}

fn resources(d: &mut Doc, inp: &Inputs, pair: &Pair) {
    d.h2("Resource utilisation");
    if inp.bench.is_none() {
        d.p("Not measured (no bench results).");
        return;
    }
    let (a, b) = (pair.a, pair.b);
    let energy = |v: &View| {
        let e = mean_of(v.bench.into_iter().flat_map(|b| {
            b.scenarios
                .iter()
                .map(|s| s.stats.energy_j_per_token.as_ref())
        }));
        if e.is_finite() {
            format!("{} J/token (package, upper bound)", sig(e))
        } else {
            "not measured (RAPL unreadable)".into()
        }
    };
    let threads = |v: &View| {
        v.bench
            .and_then(|b| b.run.threads)
            .map_or("n/a".into(), |t| t.to_string())
    };
    let rows = vec![
        vec![
            "CPU (share of all cores, mean over scenarios)".into(),
            format!("{:.0}%", cpu_mean(a) * 100.0),
            format!("{:.0}%", cpu_mean(b) * 100.0),
        ],
        vec!["Threads".into(), threads(a), threads(b)],
        vec![
            "Peak memory (RSS, weights included)".into(),
            gib(a.bench.and_then(|x| x.memory.peak_rss_bytes)),
            gib(b.bench.and_then(|x| x.memory.peak_rss_bytes)),
        ],
        vec!["Energy".into(), energy(a), energy(b)],
    ];
    d.table(&["Resource", &a.label, &b.label], rows);
}

fn decode_mean(v: &View) -> f64 {
    mean_of(
        v.bench
            .into_iter()
            .flat_map(|b| b.scenarios.iter().map(|s| s.stats.decode_tok_s.as_ref())),
    )
}

fn cost(d: &mut Doc, inp: &Inputs, pair: &Pair, f: &Facts) -> Result<()> {
    d.h2("Cost-benefit");
    let Some(bench) = &inp.bench else {
        d.p("Not computed (no bench results).");
        return Ok(());
    };
    let cores = bench.environment.cores;
    let (a, b) = (pair.a, pair.b);
    let core_s = |v: &View| rules::core_seconds_per_1k(decode_mean(v), cpu_mean(v), cores);
    let gb_s = |v: &View| {
        rules::gb_seconds_per_1k(
            decode_mean(v),
            v.bench.and_then(|x| x.memory.peak_rss_bytes).unwrap_or(0),
        )
    };
    let rel = |x: f64, y: f64| {
        let m = x.min(y);
        (x / m, y / m)
    };
    let (ca, cb) = (core_s(a), core_s(b));
    let (ga, gb) = (gb_s(a), gb_s(b));
    let (rca, rcb) = rel(ca, cb);
    let (rga, rgb) = rel(ga, gb);
    let mut rows = vec![
        vec!["CPU core-seconds per 1,000 tokens".into(), sig(ca), sig(cb)],
        vec!["Relative compute cost".into(), ratio(rca), ratio(rcb)],
        vec![
            "Memory GB-seconds per 1,000 tokens".into(),
            sig(ga),
            sig(gb),
        ],
        vec!["Relative memory cost".into(), ratio(rga), ratio(rgb)],
    ];
    let overall = |v: &View| v.eval.and_then(|e| e.overall.as_ref()).map(|o| o.score10);
    if f.quality_measured {
        let q = |v: &View| {
            if !f.quality_meaningful {
                return "not meaningful (synthetic)".to_string();
            }
            overall(v).map_or("n/a".into(), |o| {
                format!("{} tok/s", sig(rules::quality_adjusted(decode_mean(v), o)))
            })
        };
        rows.push(vec![
            "Quality-adjusted throughput (tok/s × overall/10)".into(),
            q(a),
            q(b),
        ]);
    }
    d.table(&["Measure", &a.label, &b.label], rows);
    d.p(format!(
        "Formulas: core-seconds per 1,000 tokens = 1000 / decode tok/s × CPU share × {cores} cores; GB-seconds = peak RSS (GB) × 1000 / decode tok/s; relative cost divides by the cheaper model's figure. Decode tok/s and CPU share are means over the scenarios."
    ));
    Ok(())
}

fn recommendations(d: &mut Doc, pair: &Pair, ev: &Evidence) {
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

fn opt_pick(pair: &Pair, p: Option<Pick>) -> String {
    p.map_or("not measured".into(), |p| pair.name(p))
}

fn hardware(d: &mut Doc, pair: &Pair) {
    d.h2("Hardware requirements");
    let mut rows = Vec::new();
    for v in pair.models() {
        let Some(b) = v.bench else { continue };
        let peak = b.memory.peak_rss_bytes;
        rows.push(vec![
            v.label.clone(),
            gib(peak),
            gib(peak.map(rules::ram_needed)),
            gib(b.model.file_bytes),
            b.run.threads.map_or("n/a".into(), |t| t.to_string()),
            b.model.max_context.map_or("n/a".into(), |c| c.to_string()),
        ]);
    }
    if rows.is_empty() {
        d.p("Not measured (no bench results).");
        return;
    }
    d.table(
        &[
            "Model",
            "Measured peak RSS",
            "RAM to provision",
            "Disk",
            "Threads measured",
            "Context",
        ],
        rows,
    );
    d.p(format!(
        "RAM to provision = measured peak × {:.1} ({}% headroom for the OS, other processes and longer contexts than measured: the KV cache grows with the context). The peak is the bench worker's whole process at the deepest context measured.",
        1.0 + rules::MEMORY_HEADROOM,
        (rules::MEMORY_HEADROOM * 100.0).round()
    ));
}

fn quantization(d: &mut Doc, inp: &Inputs) {
    d.h2("Quantization");
    if inp.quant.is_empty() {
        d.p("No quantized variants were measured for this report (`bakeoff quantize --measure --out FILE`, then pass FILE to `bakeoff report`).");
        return;
    }
    for q in &inp.quant {
        let mut rows = Vec::new();
        for e in std::iter::once(&q.reference).chain(&q.models) {
            let qual = e.quality.as_ref();
            rows.push(vec![
                format!("`{}`", e.model),
                e.weight_dtype.clone(),
                gib(Some(e.file_bytes)),
                format!("{:.2}", e.bits_per_weight),
                qual.map_or("reference".into(), |x| {
                    format!("{} ± {}", sig(x.ppl.value), sig(x.ppl.stderr))
                }),
                qual.map_or("".into(), |x| {
                    format!(
                        "{} ± {}",
                        sig(x.ln_ppl_ratio.value),
                        sig(x.ln_ppl_ratio.stderr)
                    )
                }),
                qual.map_or("".into(), |x| sig(x.kld_mean.value)),
                qual.map_or("".into(), |x| format!("{:.1}%", x.same_top_pct.value)),
                e.speed
                    .as_ref()
                    .map_or("n/a".into(), |s| sig(s.decode_tok_s)),
                e.speed
                    .as_ref()
                    .map_or("n/a".into(), |s| gib(Some(s.peak_rss_bytes))),
            ]);
        }
        d.table(
            &[
                "Model",
                "Weights",
                "Size",
                "bits/weight",
                "PPL",
                "Δ ln PPL",
                "mean KLD",
                "same top",
                "decode tok/s",
                "peak RSS",
            ],
            rows,
        );
    }
    d.p("From `bakeoff quantize --measure` (WikiText-2, llama-perplexity's KL-divergence method; see docs/quantize.md). Its speed figures are a short probe, not the bench.");
}

fn routing(d: &mut Doc, pair: &Pair, f: &Facts) -> Result<()> {
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

fn methodology(d: &mut Doc, inp: &Inputs, pair: &Pair) {
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
            if m.demo {
                " (offline demo on synthetic models)"
            } else {
                ""
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

fn appendix(d: &mut Doc, inp: &Inputs, pair: &Pair) {
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

fn summarize(inp: &Inputs, pair: &Pair, verdicts: Vec<(String, String)>) -> Summary {
    let models = pair
        .models()
        .iter()
        .map(|v| {
            let mut m = BTreeMap::new();
            if let Some(b) = v.bench {
                for s in &b.scenarios {
                    if let Some(e) = &s.stats.decode_tok_s {
                        m.insert(format!("decode_tok_s.{}", s.scenario.name()), e.mean);
                    }
                    if let Some(e) = &s.stats.ttft_ms {
                        m.insert(format!("ttft_ms.{}", s.scenario.name()), e.mean);
                    }
                }
                for x in &b.depths {
                    if let Some(e) = &x.stats.decode_tok_s {
                        m.insert(format!("decode_tok_s.depth{}", x.depth), e.mean);
                    }
                }
                if let Some(p) = b.memory.peak_rss_bytes {
                    m.insert("peak_rss_bytes".into(), p as f64);
                }
                if let Some(l) = b.load.warm_s {
                    m.insert("load_warm_s".into(), l);
                }
                let dm = decode_mean(v);
                if dm.is_finite() {
                    m.insert("decode_tok_s.mean".into(), dm);
                }
            }
            if let Some(e) = v.eval {
                for c in &e.categories {
                    m.insert(format!("quality.{}", c.name), c.score10);
                }
                if let Some(o) = &e.overall {
                    m.insert("quality.overall".into(), o.score10);
                }
            }
            ModelSummary {
                label: v.label.clone(),
                source: v.source.clone(),
                synthetic: v.synthetic,
                metrics: m,
            }
        })
        .collect();
    let env = inp.bench.as_ref().map(|b: &BenchReport| &b.environment);
    Summary {
        models,
        machine: env.map_or_else(
            || "unknown".into(),
            |e| format!("{} ×{} ({})", e.cpu_model, e.cores, e.hostname),
        ),
        git_commit: env.and_then(|e| e.git_commit.clone()),
        bakeoff_version: env.map_or_else(
            || env!("CARGO_PKG_VERSION").into(),
            |e| e.bakeoff_version.clone(),
        ),
        verdicts,
    }
}

/// For tests and the CLI: the eval results type, re-exported so callers need not name the crate.
pub type Eval = EvalResults;
