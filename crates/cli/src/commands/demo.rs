use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bakeoff_engine::generate::{Flow, GenParams, generate};
use bakeoff_engine::template::Message;
use bakeoff_synth::{Preset, SynthFormat, SynthOptions, SynthQuant, synth};
use clap::Args;

use super::generate::format_summary;

/// Until `bakeoff compare` exists, the README's main job: synthesize a random-weight model with a
/// real architecture and tokenizer, then hold a two-turn streaming chat with it.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// tinyllama-1.1b or qwen2.5-1.5b.
    #[arg(long, default_value = "tinyllama-1.1b")]
    pub preset: String,
    /// Weight type of the synthesized GGUF file.
    #[arg(long, default_value = "q4_0")]
    pub quant: String,
    /// Where the real tokenizer vocabularies live (GGUF vocab files).
    #[arg(long, default_value = "../shared/vocab")]
    pub vocab_dir: PathBuf,
    /// Folder for synthesized models (reused across runs).
    #[arg(long, default_value = "models")]
    pub models_dir: PathBuf,
    #[arg(long, default_value_t = 48)]
    pub max_tokens: usize,
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let preset: Preset = a.preset.parse()?;
    let quant: SynthQuant = a.quant.parse()?;
    let vocab_file = match preset {
        Preset::Qwen25_1B5 | Preset::TinyQwen2 => "ggml-vocab-qwen2.gguf",
        _ => "ggml-vocab-llama-spm.gguf",
    };
    let vocab = a.vocab_dir.join(vocab_file);
    let vocab = vocab.is_file().then_some(vocab);
    if vocab.is_none() {
        eprintln!(
            "note: {} not found; using a byte-level stand-in tokenizer",
            a.vocab_dir.join(vocab_file).display()
        );
    }
    std::fs::create_dir_all(&a.models_dir)
        .with_context(|| format!("cannot create {}", a.models_dir.display()))?;
    let path = a
        .models_dir
        .join(format!("synthetic-{}-{}.gguf", a.preset, a.quant));
    if !path.is_file() {
        eprintln!(
            "synthesizing {} ({}) into {} ...",
            a.preset,
            a.quant,
            path.display()
        );
        let opts = SynthOptions {
            preset,
            out: path.clone(),
            format: SynthFormat::Gguf,
            quant,
            vocab,
            seed: 0,
        };
        synth(&opts, true)?;
    }
    chat(&path, a.threads, a.max_tokens)
}

fn chat(path: &Path, threads: Option<usize>, max_tokens: usize) -> Result<()> {
    let opts = bakeoff_engine::loader::LoadOptions {
        threads,
        progress: true,
        cpu_kernels: None,
        weight_cache: bakeoff_engine::loader::default_weight_cache()?,
        ..Default::default()
    };
    let mut lm = bakeoff_engine::loader::load(&path.to_string_lossy(), None, &opts)?;
    eprintln!(
        "loaded {} ({}, {:.2} B parameters, {}) in {:.2} s on {}",
        path.display(),
        lm.info.arch.name(),
        lm.info.parameters as f64 / 1e9,
        lm.info.weight_dtype,
        lm.info.load_s,
        lm.info.device
    );
    eprintln!("random weights: the text below is noise; the timings are real.\n");
    let params = GenParams {
        max_tokens,
        ..Default::default()
    };
    let mut messages = Vec::new();
    for prompt in [
        "Explain artificial intelligence in simple terms",
        "Write a simple Python function to calculate fibonacci numbers",
    ] {
        messages.push(Message::user(prompt));
        println!("user> {prompt}");
        print!("assistant> ");
        std::io::stdout().flush()?;
        let ids = lm.prompter.encode_chat(&messages)?;
        let g = generate(&mut lm, &ids, &params, |ev| {
            print!("{}", ev.text());
            let _ = std::io::stdout().flush();
            Flow::Continue
        })?;
        println!();
        eprintln!("{}\n", format_summary(&g.done, lm.info.load_s));
        messages.push(Message::assistant(g.text));
    }
    Ok(())
}
