//! The report's overview section.

use bakeoff_record::ModelIdentity;

use crate::doc::Doc;

use crate::report::format::*;
use crate::report::view::*;

pub(crate) fn eval_info<'a>(v: &'a View) -> Option<&'a ModelIdentity> {
    v.eval.map(|e| &e.info)
}

pub(crate) fn overview(d: &mut Doc, pair: &Pair) {
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

pub(crate) fn chat_template(v: &View) -> String {
    let from_eval = eval_info(v).and_then(|i| i.chat_template);
    let from_answers = v.answers.map(|a| a.chat_template);
    match from_eval.or(from_answers) {
        Some(true) => "yes (from the model files; rendered with minijinja)".into(),
        Some(false) => "none: plain `User:`/`Assistant:` prompts".into(),
        None => "n/a".into(),
    }
}
