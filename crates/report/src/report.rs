//! From results files to the report: the model pairing, every section of the seed report
//! computed from measurements, and the files written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bakeoff_record::bench::BenchReport;
use bakeoff_record::eval::Results as EvalResults;

use crate::doc::Doc;
use crate::error::{ReportError, Result};
use crate::inputs::Inputs;

mod format;
mod sections;
mod view;

pub use format::sig;
use sections::*;
use view::*;
pub use view::{View, views};

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
    let verdicts = executive(&mut d, &pair, &f, &ev, inp.routing.as_ref());
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
    routing(&mut d, inp, &pair, &f)?;
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
        bakeoff_record::fsio::write_atomic(&p, text.as_bytes())
            .map_err(|e| ReportError::io(&p, e))?;
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
