//! The report's hardware section.

use crate::doc::Doc;
use crate::rules::{self};

use crate::report::format::*;
use crate::report::view::*;

pub(crate) fn hardware(d: &mut Doc, pair: &Pair) {
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
