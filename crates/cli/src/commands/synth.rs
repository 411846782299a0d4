use std::path::PathBuf;

use anyhow::Result;
use bakeoff_synth::{Preset, SynthFormat, SynthOptions, SynthQuant, synth};
use clap::Args;

use crate::args::gib;

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// tinyllama-1.1b, qwen2.5-1.5b (the real architectures), tiny-llama or tiny-qwen2 (for tests).
    #[arg(long)]
    pub preset: String,
    /// Output folder (hf) or .gguf file (gguf).
    #[arg(long)]
    pub out: PathBuf,
    /// hf (config.json + safetensors + tokenizer files) or gguf (one self-contained file).
    #[arg(long, default_value = "hf")]
    pub format: String,
    /// Weight type: f32, f16, bf16 (hf or gguf), q8_0, q4_0 (gguf). Default: bf16 for hf, f16 for gguf.
    #[arg(long)]
    pub quant: Option<String>,
    /// A GGUF vocabulary file (e.g. ../shared/vocab/ggml-vocab-llama-spm.gguf) for the real tokenizer.
    #[arg(long)]
    pub vocab: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(a: SynthArgs) -> Result<()> {
    let preset: Preset = a.preset.parse()?;
    let format: SynthFormat = a.format.parse()?;
    let quant: SynthQuant = match &a.quant {
        Some(q) => q.parse()?,
        None => match format {
            SynthFormat::Hf => SynthQuant::Bf16,
            SynthFormat::Gguf => SynthQuant::F16,
        },
    };
    let opts = SynthOptions {
        preset,
        out: a.out,
        format,
        quant,
        vocab: a.vocab,
        seed: a.seed,
    };
    let report = synth(&opts, true)?;
    for f in &report.files {
        println!("{}", f.display());
    }
    eprintln!(
        "-- {} parameters, {} written in {:.1} s (random weights: speed is real, text is not)",
        report.parameters,
        gib(report.bytes),
        report.seconds
    );
    Ok(())
}
