//! The report's quantization section.

use crate::doc::Doc;
use crate::inputs::Inputs;

use crate::report::format::*;

pub(crate) fn quantization(d: &mut Doc, inp: &Inputs) {
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
