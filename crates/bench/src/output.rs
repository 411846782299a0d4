//! Turning a [`BenchReport`] into text: per-model tables, the comparison summary (winner, ratio,
//! "within noise"), and the flat records behind `--format csv|jsonl`. Pure functions of the
//! report, so a results file renders the same way every time (the golden test holds them to it).

use serde_json::{Value, json};

use crate::error::{BenchError, Result};
use bakeoff_record::EngineKind;
use bakeoff_record::bench::{BenchReport, ModelResult, Stats};
use bakeoff_record::stats::Estimate;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Jsonl,
    Csv,
    Md,
}

impl std::str::FromStr for Format {
    type Err = BenchError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "jsonl" => Ok(Format::Jsonl),
            "csv" => Ok(Format::Csv),
            "md" | "markdown" => Ok(Format::Md),
            o => Err(BenchError::InvalidArgument(format!(
                "unknown format `{o}` (table, json, jsonl, csv, md)"
            ))),
        }
    }
}

/// The report in `format`, ready for stdout.
pub fn render(report: &BenchReport, format: Format) -> Result<String> {
    Ok(match format {
        Format::Json => report.to_json()? + "\n",
        Format::Jsonl => flat_rows(report)
            .iter()
            .map(|r| jsonl_line(r) + "\n")
            .collect(),
        Format::Csv => csv(&flat_rows(report)),
        Format::Table => text_report(report, false),
        Format::Md => text_report(report, true),
    })
}

/// A simple aligned table that prints as plain text or Markdown.
struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn text(&self) -> String {
        let n = self.headers.len();
        let mut w: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| -> String {
            let parts: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let pad = w[i].saturating_sub(c.chars().count());
                    // The first column is a name; the rest are numbers, right-aligned.
                    if i == 0 {
                        format!("{c}{}", " ".repeat(pad))
                    } else {
                        format!("{}{c}", " ".repeat(pad))
                    }
                })
                .collect();
            parts.join("  ").trim_end().to_string()
        };
        let mut out = line(&self.headers) + "\n";
        out += &(w
            .iter()
            .map(|k| "-".repeat(*k))
            .collect::<Vec<_>>()
            .join("  ")
            + "\n");
        for r in &self.rows {
            out += &(line(r) + "\n");
        }
        out
    }

    fn markdown(&self) -> String {
        let esc = |s: &str| s.replace('|', "\\|");
        let mut out = format!(
            "| {} |\n",
            self.headers
                .iter()
                .map(|h| esc(h))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let align: Vec<&str> = (0..self.headers.len())
            .map(|i| if i == 0 { "---" } else { "---:" })
            .collect();
        out += &format!("|{}|\n", align.join("|"));
        for r in &self.rows {
            out += &format!(
                "| {} |\n",
                r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")
            );
        }
        out
    }

    fn render(&self, md: bool) -> String {
        if md { self.markdown() } else { self.text() }
    }
}

/// A number with about three significant figures, as a person reads a table.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn decimals(x: f64) -> usize {
    let a = x.abs();
    if a >= 100.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else {
        3
    }
}

/// `mean ± half-width of the 95% interval` (just the mean for a single sample).
fn pm(e: Option<&Estimate>) -> String {
    match e {
        None => "n/a".into(),
        Some(e) if e.n < 2 => num(e.mean),
        Some(e) => {
            let d = decimals(e.mean);
            format!("{:.d$} ± {:.d$}", e.mean, e.ci95_half())
        }
    }
}

fn mean(e: Option<&Estimate>) -> String {
    e.map_or_else(|| "n/a".into(), |e| num(e.mean))
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

fn opt_s(x: Option<f64>) -> String {
    x.map_or_else(|| "n/a".into(), |v| format!("{} s", num(v)))
}

fn model_heading(m: &ModelResult) -> String {
    let id = &m.model;
    let mut parts = vec![id.format.clone()];
    if let Some(d) = &id.dtype {
        parts.push(d.clone());
    }
    if let Some(p) = id.parameters {
        parts.push(format!("{} parameters", count(p)));
    }
    if let Some(b) = id.file_bytes {
        parts.push(mib(b));
    }
    let on = if m.run.backend.is_empty() {
        let threads = m
            .run
            .threads
            .map(|t| format!(", {t} threads"))
            .unwrap_or_default();
        format!("{}{threads}", m.run.device)
    } else {
        m.run.backend.clone()
    };
    format!("{} ({}) on {on}", m.label, parts.join(", "))
}

/// 1.10 B, 131.9 K: parameter counts as people say them.
fn count(n: u64) -> String {
    let x = n as f64;
    if x >= 1e9 {
        format!("{:.2} B", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.1} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} K", x / 1e3)
    } else {
        n.to_string()
    }
}

fn model_facts(m: &ModelResult) -> String {
    let mut cold = opt_s(m.load.cold_s);
    if m.load.cold_s.is_none() && m.model.engine == EngineKind::Local {
        cold = "not measured".into();
    }
    let rss = m.memory.peak_rss_bytes.map_or_else(|| "n/a".into(), mib);
    let overhead = m
        .overhead
        .as_ref()
        .map_or_else(|| "n/a".into(), |o| percent(o.fraction));
    format!(
        "load warm {}, cold {} | peak RSS {} | bench overhead {} of decode time",
        opt_s(m.load.warm_s),
        cold,
        rss,
        overhead
    )
}

fn scenario_table(m: &ModelResult) -> Table {
    let mut t = Table::new(&[
        "scenario",
        "prompt tok",
        "gen tok",
        "TTFT ms",
        "prefill tok/s",
        "decode tok/s",
        "median",
        "peak",
        "sustained",
        "CV",
        "ITL p50/p90/p99 ms",
        "e2e s",
        "CPU",
        "J/tok",
    ]);
    for s in &m.scenarios {
        let st = &s.stats;
        let gen_tok = if s.samples.is_empty() {
            "skipped".to_string()
        } else if st.generated_tokens_min == st.generated_tokens_max {
            st.generated_tokens_min.to_string()
        } else {
            format!("{}-{}", st.generated_tokens_min, st.generated_tokens_max)
        };
        t.rows.push(vec![
            s.scenario.to_string(),
            if s.samples.is_empty() {
                "-".to_string()
            } else {
                st.prompt_tokens.to_string()
            },
            gen_tok,
            pm(st.ttft_ms.as_ref()),
            mean(st.prefill_tok_s.as_ref()),
            pm(st.decode_tok_s.as_ref()),
            mean(st.median_tok_s.as_ref()),
            mean(st.peak_tok_s.as_ref()),
            mean(st.sustained_tok_s.as_ref()),
            st.decode_tok_s
                .as_ref()
                .map_or_else(|| "n/a".into(), |e| format!("{:.1}%", e.cv * 100.0)),
            st.itl_ms.as_ref().map_or_else(
                || "n/a".into(),
                |p| format!("{}/{}/{}", num(p.p50), num(p.p90), num(p.p99)),
            ),
            pm(st.e2e_s.as_ref()),
            st.cpu_util
                .as_ref()
                .map_or_else(|| "n/a".into(), |e| format!("{:.0}%", e.mean * 100.0)),
            mean(st.energy_j_per_token.as_ref()),
        ]);
    }
    t
}

fn depth_table(m: &ModelResult) -> Table {
    let mut t = Table::new(&[
        "depth",
        "prompt tok",
        "gen tok",
        "TTFT ms",
        "prefill tok/s",
        "decode tok/s",
        "CV",
        "ITL p99 ms",
    ]);
    for d in &m.depths {
        let st = &d.stats;
        let depth = if d.clamped {
            format!("{} (clamped)", d.depth)
        } else {
            d.depth.to_string()
        };
        t.rows.push(vec![
            depth,
            st.prompt_tokens.to_string(),
            st.generated_tokens_min.to_string(),
            pm(st.ttft_ms.as_ref()),
            mean(st.prefill_tok_s.as_ref()),
            pm(st.decode_tok_s.as_ref()),
            st.decode_tok_s
                .as_ref()
                .map_or_else(|| "n/a".into(), |e| format!("{:.1}%", e.cv * 100.0)),
            st.itl_ms
                .as_ref()
                .map_or_else(|| "n/a".into(), |p| num(p.p99)),
        ]);
    }
    t
}

fn text_report(r: &BenchReport, md: bool) -> String {
    let e = &r.environment;
    let mut out = String::new();
    let settings = format!(
        "{} repetitions after {} warm-up, {} tokens per scenario and {} per depth, greedy, EOS ignored ({})",
        r.settings.repetitions,
        r.settings.warmup,
        r.settings.max_tokens,
        r.settings.depth_tokens,
        r.settings.scenario_set
    );
    let machine = format!(
        "{}, {} cores, {:.1} GiB RAM, {} ({}); bakeoff {} ({}), {}",
        e.cpu_model,
        e.cores,
        e.ram_bytes as f64 / f64::from(1u32 << 30),
        e.os,
        e.kernel,
        e.bakeoff_version,
        e.git_commit.as_deref().unwrap_or("commit unknown"),
        e.rustc
    );
    if md {
        out += &format!(
            "Run `{}`, {} to {}.\n\n",
            r.run_id, r.started_at, r.finished_at
        );
        out += &format!("- machine: {machine}\n- settings: {settings}\n\n");
    } else {
        out += &format!(
            "run {} ({} to {})\nmachine: {machine}\nsettings: {settings}\n\n",
            r.run_id, r.started_at, r.finished_at
        );
    }
    for m in &r.models {
        if md {
            out += &format!("**{}**\n\n{}\n\n", model_heading(m), model_facts(m));
        } else {
            out += &format!("== {}\n   {}\n", model_heading(m), model_facts(m));
        }
        if let Some(err) = &m.error {
            out += &format!("{}error: {err}\n\n", if md { "" } else { "   " });
        }
        if !m.scenarios.is_empty() {
            out += &scenario_table(m).render(md);
            for s in &m.scenarios {
                if let Some(n) = &s.note {
                    out += &format!("{}{}: {n}\n", if md { "\n" } else { "" }, s.scenario);
                }
            }
            out += "\n";
        }
        if !m.depths.is_empty() {
            out += &depth_table(m).render(md);
            out += "\n";
        }
    }
    out += &summary(r, md);
    out
}

/// Which way is better for a summary row.
#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
}

/// The comparison table as plain text: each row's winner, its ratio to the runner-up, and
/// "within noise" where their 95% intervals overlap.
pub fn summary_table(r: &BenchReport) -> String {
    summary(r, false)
}

fn summary(r: &BenchReport, md: bool) -> String {
    let mut headers: Vec<&str> = vec!["metric"];
    headers.extend(r.models.iter().map(|m| m.label.as_str()));
    headers.extend(["winner", "ratio", "note"]);
    let mut t = Table::new(&headers);
    let mut row = |name: String,
                   better: Better,
                   values: Vec<Option<Estimate>>,
                   show: &dyn Fn(&Estimate) -> String| {
        if values.iter().all(Option::is_none) {
            return;
        }
        let mut cells = vec![name];
        cells.extend(
            values
                .iter()
                .map(|v| v.as_ref().map_or_else(|| "n/a".into(), show)),
        );
        let mut ranked: Vec<(usize, &Estimate)> = values
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.as_ref().map(|e| (i, e)))
            .collect();
        ranked.sort_by(|a, b| match better {
            Better::Higher => b.1.mean.total_cmp(&a.1.mean),
            Better::Lower => a.1.mean.total_cmp(&b.1.mean),
        });
        let winner = r.models[ranked[0].0].label.clone();
        let (ratio, note) = match ranked.get(1) {
            None => ("—".to_string(), String::new()),
            Some((_, second)) => {
                let best = ranked[0].1;
                let ratio = match better {
                    Better::Higher => best.mean / second.mean,
                    Better::Lower => second.mean / best.mean,
                };
                let note = if best.n < 2 || second.n < 2 {
                    "single sample".to_string()
                } else if best.overlaps(second) {
                    "within noise".to_string()
                } else {
                    String::new()
                };
                (
                    if ratio.is_finite() {
                        format!("{ratio:.2}×")
                    } else {
                        "n/a".into()
                    },
                    note,
                )
            }
        };
        cells.extend([winner, ratio, note]);
        t.rows.push(cells);
    };
    let single = |x: Option<f64>| x.and_then(|v| Estimate::of(&[v]));
    let secs = |e: &Estimate| num(e.mean);
    let with_ci = |e: &Estimate| pm(Some(e));
    row(
        "load warm, s".into(),
        Better::Lower,
        r.models.iter().map(|m| single(m.load.warm_s)).collect(),
        &secs,
    );
    row(
        "load cold, s".into(),
        Better::Lower,
        r.models.iter().map(|m| single(m.load.cold_s)).collect(),
        &secs,
    );
    row(
        "peak RSS, MiB".into(),
        Better::Lower,
        r.models
            .iter()
            .map(|m| {
                single(
                    m.memory
                        .peak_rss_bytes
                        .map(|b| b as f64 / f64::from(1u32 << 20)),
                )
            })
            .collect(),
        &secs,
    );
    for sc in &r.settings.scenarios {
        let find = |m: &ModelResult| {
            m.scenarios
                .iter()
                .find(|s| s.scenario == *sc)
                .map(|s| s.stats.clone())
        };
        let stats: Vec<_> = r.models.iter().map(find).collect();
        let pick = |f: &dyn Fn(&Stats) -> Option<Estimate>| -> Vec<Option<Estimate>> {
            stats.iter().map(|s| s.as_ref().and_then(f)).collect()
        };
        row(
            format!("{sc}: decode tok/s"),
            Better::Higher,
            pick(&|s| s.decode_tok_s.clone()),
            &with_ci,
        );
        row(
            format!("{sc}: TTFT ms"),
            Better::Lower,
            pick(&|s| s.ttft_ms.clone()),
            &with_ci,
        );
        row(
            format!("{sc}: e2e s"),
            Better::Lower,
            pick(&|s| s.e2e_s.clone()),
            &with_ci,
        );
    }
    for d in &r.settings.depths {
        let find = |m: &ModelResult| {
            m.depths
                .iter()
                .find(|x| x.depth == *d)
                .map(|x| x.stats.clone())
        };
        let stats: Vec<_> = r.models.iter().map(find).collect();
        let decode = stats
            .iter()
            .map(|s| s.as_ref().and_then(|s| s.decode_tok_s.clone()))
            .collect();
        let ttft = stats
            .iter()
            .map(|s| s.as_ref().and_then(|s| s.ttft_ms.clone()))
            .collect();
        row(
            format!("depth {d}: decode tok/s"),
            Better::Higher,
            decode,
            &with_ci,
        );
        row(format!("depth {d}: TTFT ms"), Better::Lower, ttft, &with_ci);
    }
    let title = "Summary: mean ± 95% interval over the repetitions; ratio = winner over runner-up";
    if md {
        format!("{title}.\n\n{}", t.markdown())
    } else {
        format!("{title}\n{}", t.text())
    }
}

/// One flat record per model × scenario or depth, as (field, value) pairs in column order.
pub fn flat_rows(r: &BenchReport) -> Vec<Vec<(&'static str, Value)>> {
    let est = |e: &Option<Estimate>, f: fn(&Estimate) -> f64| {
        e.as_ref().map_or(Value::Null, |e| json!(f(e)))
    };
    let mut rows = Vec::new();
    for m in &r.models {
        let base = vec![
            ("run_id", json!(r.run_id)),
            ("label", json!(m.label)),
            ("source", json!(m.model.source)),
            ("engine", json!(m.model.engine)),
            ("format", json!(m.model.format)),
            ("dtype", json!(m.model.dtype)),
            ("parameters", json!(m.model.parameters)),
            ("file_bytes", json!(m.model.file_bytes)),
            (
                "sha256",
                json!(m.model.files.first().map(|f| f.sha256.clone())),
            ),
            ("device", json!(m.run.device)),
            ("backend", json!(m.run.backend)),
            ("threads", json!(m.run.threads)),
            ("load_warm_s", json!(m.load.warm_s)),
            ("load_cold_s", json!(m.load.cold_s)),
            ("peak_rss_bytes", json!(m.memory.peak_rss_bytes)),
        ];
        let items = m
            .scenarios
            .iter()
            .map(|s| ("scenario", s.scenario.to_string(), None, false, &s.stats))
            .chain(m.depths.iter().map(|d| {
                (
                    "depth",
                    d.depth.to_string(),
                    Some(d.depth),
                    d.clamped,
                    &d.stats,
                )
            }));
        for (kind, name, depth, clamped, st) in items {
            let mut row = base.clone();
            row.extend([
                ("kind", json!(kind)),
                ("name", json!(name)),
                ("depth", json!(depth)),
                ("clamped", json!(clamped)),
                ("repetitions", json!(st.repetitions)),
                ("prompt_tokens", json!(st.prompt_tokens)),
                ("generated_tokens", json!(st.generated_tokens_min)),
                ("ttft_ms_mean", est(&st.ttft_ms, |e| e.mean)),
                ("ttft_ms_ci95", est(&st.ttft_ms, Estimate::ci95_half)),
                ("prefill_tok_s_mean", est(&st.prefill_tok_s, |e| e.mean)),
                ("decode_tok_s_mean", est(&st.decode_tok_s, |e| e.mean)),
                (
                    "decode_tok_s_ci95",
                    est(&st.decode_tok_s, Estimate::ci95_half),
                ),
                ("decode_tok_s_median", est(&st.median_tok_s, |e| e.mean)),
                ("decode_tok_s_peak", est(&st.peak_tok_s, |e| e.mean)),
                (
                    "decode_tok_s_sustained",
                    est(&st.sustained_tok_s, |e| e.mean),
                ),
                ("decode_cv", est(&st.decode_tok_s, |e| e.cv)),
                (
                    "itl_ms_p50",
                    st.itl_ms.as_ref().map_or(Value::Null, |p| json!(p.p50)),
                ),
                (
                    "itl_ms_p90",
                    st.itl_ms.as_ref().map_or(Value::Null, |p| json!(p.p90)),
                ),
                (
                    "itl_ms_p99",
                    st.itl_ms.as_ref().map_or(Value::Null, |p| json!(p.p99)),
                ),
                ("e2e_s_mean", est(&st.e2e_s, |e| e.mean)),
                ("cpu_util_mean", est(&st.cpu_util, |e| e.mean)),
                (
                    "energy_j_per_token_mean",
                    est(&st.energy_j_per_token, |e| e.mean),
                ),
                ("error", json!(m.error)),
            ]);
            rows.push(row);
        }
        if m.scenarios.is_empty() && m.depths.is_empty() {
            let mut row = base.clone();
            row.push(("error", json!(m.error)));
            rows.push(row);
        }
    }
    rows
}

/// A JSON object with the fields in column order.
fn jsonl_line(row: &[(&'static str, Value)]) -> String {
    let fields: Vec<String> = row
        .iter()
        .map(|(k, v)| format!("{}:{}", Value::from(*k), v))
        .collect();
    format!("{{{}}}", fields.join(","))
}

fn csv(rows: &[Vec<(&'static str, Value)>]) -> String {
    let Some(widest) = rows.iter().max_by_key(|r| r.len()) else {
        return String::new();
    };
    let headers: Vec<&str> = widest.iter().map(|(k, _)| *k).collect();
    let cell = |v: Option<&Value>| -> String {
        let s = match v {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s
        }
    };
    let mut out = headers.join(",") + "\n";
    for r in rows {
        let cells: Vec<String> = headers
            .iter()
            .map(|h| cell(r.iter().find(|(k, _)| k == h).map(|(_, v)| v)))
            .collect();
        out += &(cells.join(",") + "\n");
    }
    out
}

/// A small fraction as a percentage with two significant digits (the overhead is often < 0.001%).
fn percent(fraction: f64) -> String {
    let p = fraction * 100.0;
    if p == 0.0 || p >= 0.01 {
        format!("{p:.2}%")
    } else {
        format!("{p:.1e}%")
    }
}
