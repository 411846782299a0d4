//! The report's intro section.

use crate::doc::Doc;
use crate::inputs::Inputs;

use crate::report::view::*;

pub(crate) fn intro(d: &mut Doc, inp: &Inputs, pair: &Pair) {
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
