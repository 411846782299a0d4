//! `bakeoff perplexity`: WikiText-2 perplexity of one model by llama.cpp's `llama-perplexity`
//! protocol (the whole test set tokenized once with BOS where the model adds one, chunks of
//! `--ctx` tokens each evaluated from an empty cache with BOS over its first token, the second
//! half of each chunk scored), so the figure can be set beside llama.cpp's on the same file.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use bakeoff_quantize::measure::{Chunks, perplexity_pass, tokenize_prefix};
use clap::Args;
use serde::Serialize;

use crate::args::ModelArgs;

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Data sets laid out like ../shared/evaldata (WikiText-2 in wikitext-2-raw/wiki.test.raw).
    #[arg(long, env = "BAKEOFF_EVAL_DATA", default_value = "../shared/evaldata")]
    pub data_dir: PathBuf,
    /// A plain-text file to score instead of WikiText-2's test set.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Chunks to score (llama-perplexity's --chunks).
    #[arg(long, default_value_t = 20)]
    pub chunks: usize,
    /// Chunk length (llama-perplexity's -c); the second half of each chunk is scored.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Print JSON (perplexity, standard error, the running estimate per chunk, the SHA-256 of
    /// the evaluated token ids) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Output {
    model: String,
    file: String,
    ctx: usize,
    chunks: usize,
    scored_tokens: usize,
    bos_per_chunk: bool,
    ppl: f64,
    ppl_stderr: f64,
    per_chunk: Vec<f64>,
    /// SHA-256 of the evaluated ids as little-endian u32s, to compare tokenizations.
    token_ids_sha256: String,
    seconds: f64,
}

pub fn run(a: PerplexityArgs) -> Result<()> {
    if a.chunks == 0 {
        bail!("--chunks must be at least 1");
    }
    let path = match &a.file {
        Some(f) => f.clone(),
        None => a.data_dir.join("wikitext-2-raw").join("wiki.test.raw"),
    };
    let text = std::fs::read(&path).with_context(|| {
        format!(
            "cannot read {} (pass --file, or --data-dir pointing at a copy of ../shared/evaldata)",
            path.display()
        )
    })?;
    let text = String::from_utf8(text)
        .map_err(|e| anyhow::anyhow!("{} is not UTF-8: {e}", path.display()))?;
    let show = std::io::stderr().is_terminal() && !a.json;
    let mut lm = a.model.load(show)?;
    let need = a
        .chunks
        .checked_mul(a.ctx)
        .context("--chunks × --ctx overflows")?;
    let ids = tokenize_prefix(lm.prompter.tokenizer(), lm.prompter.add_bos(), &text, need)?;
    let bos = if lm.prompter.add_bos() {
        lm.prompter.tokenizer().bos_id()
    } else {
        None
    };
    let chunks = Chunks::new(&ids, a.ctx, need, bos)?;
    if chunks.count < a.chunks {
        eprintln!(
            "-- only {} chunks of {} tokens in {} ({} tokens)",
            chunks.count,
            a.ctx,
            path.display(),
            ids.len()
        );
    }
    let t0 = std::time::Instant::now();
    let quiet = a.json;
    let p = perplexity_pass(lm.model.as_mut(), &chunks, |i, n| {
        if !quiet {
            eprint!("[{i}/{n}]");
        }
    })?;
    if !quiet {
        eprintln!();
    }
    let id_bytes: Vec<u8> = chunks
        .tokens
        .iter()
        .flat_map(|id| id.to_le_bytes())
        .collect();
    let out = Output {
        model: a.model.model.clone(),
        file: path.display().to_string(),
        ctx: a.ctx,
        chunks: chunks.count,
        scored_tokens: p.tokens,
        bos_per_chunk: bos.is_some(),
        ppl: p.ppl.value,
        ppl_stderr: p.ppl.stderr,
        per_chunk: p.per_chunk,
        token_ids_sha256: bakeoff_record::hash::sha256_hex(&id_bytes),
        seconds: t0.elapsed().as_secs_f64(),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let running: Vec<String> = out
        .per_chunk
        .iter()
        .enumerate()
        .map(|(i, v)| format!("[{}]{v:.4}", i + 1))
        .collect();
    println!("{}", running.join(","));
    println!(
        "Final estimate: PPL = {:.4} +/- {:.5} ({} chunks of {}, {} scored tokens, {:.1} s)",
        out.ppl, out.ppl_stderr, out.chunks, out.ctx, out.scored_tokens, out.seconds
    );
    Ok(())
}
