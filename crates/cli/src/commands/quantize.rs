//! `bakeoff quantize`: write a quantized GGUF file, or (`--measure`) measure what quantization
//! costs in quality and gains in size and speed against the unquantized model.
//! docs/quantize.md has the formats, the per-tensor choices and the measurement method.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use bakeoff_engine::generate::LoadedModel;
use bakeoff_engine::loader::{LoadOptions, load};
use bakeoff_quantize::measure::{
    Chunks, Speed, compare_pass, reference_pass, speed_runs, tokenize_prefix,
};
use bakeoff_quantize::{QuantType, QuantizeOptions, quantize};
use bakeoff_record::ResultsKind;
use bakeoff_record::quantize::{QuantData, QuantEntry, QuantizeResults};
use clap::Args;

use crate::args::gib;

/// Quantize: `--model M --to TYPE --out FILE.gguf`. Measure: `--measure --model Q [--model Q2 …]
/// --against REF`: perplexity, Δ ln PPL, KL divergence and same-top-token rate on WikiText-2
/// (llama-perplexity --kl-divergence's method), size on disk, and speed and peak memory from a
/// short greedy run of each model in its own process.
#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// The source (a Hugging Face folder, an F32/F16/BF16 .gguf or a hub id); with --measure, a
    /// model to measure (repeatable).
    #[arg(long = "model", short = 'm', required = true)]
    pub models: Vec<String>,
    /// q8_0, q4_0, q4_k (llama.cpp's Q4_K_M mix), q5_k (Q5_K_M), q6_k; f32, f16, bf16 only convert.
    #[arg(long, required_unless_present_any = ["measure", "probe"])]
    pub to: Option<String>,
    /// The .gguf file to write; with --measure, the results JSON (optional).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Every matrix in the --to type: no Q6_K/Q8_0 output head, no _M mix (short rows still fall back).
    #[arg(long)]
    pub pure: bool,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Measure the --model files against --against instead of quantizing.
    #[arg(long, requires = "against")]
    pub measure: bool,
    /// The reference (unquantized) model for --measure.
    #[arg(long)]
    pub against: Option<String>,
    /// Data sets laid out like ../shared/evaldata (WikiText-2 in wikitext-2-raw/wiki.test.raw).
    #[arg(long, env = "BAKEOFF_EVAL_DATA", default_value = "../shared/evaldata")]
    pub data_dir: PathBuf,
    /// Evaluation tokens: the first N tokens of WikiText-2's test set, in whole chunks.
    #[arg(long, default_value_t = 8192)]
    pub tokens: usize,
    /// Chunk length; the second half of each chunk is scored.
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Prompt tokens of each speed run.
    #[arg(long, default_value_t = 128)]
    pub speed_prompt: usize,
    /// Tokens generated per speed run (EOS ignored).
    #[arg(long, default_value_t = 32)]
    pub speed_tokens: usize,
    /// Timed speed runs per model (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub speed_runs: usize,
    /// Skip the speed and memory runs.
    #[arg(long)]
    pub no_speed: bool,
    /// Internal: the child process that times one model and prints its Speed as JSON.
    #[arg(long, hide = true)]
    pub probe: bool,
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    if a.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    if a.probe {
        return probe(&a);
    }
    if a.measure {
        return measure(&a);
    }
    let [model] = a.models.as_slice() else {
        bail!("quantize takes one --model (several only with --measure)");
    };
    let to: QuantType = a.to.as_deref().unwrap_or_default().parse()?;
    let Some(out) = a.out.clone() else {
        bail!("--out FILE.gguf is required");
    };
    let opts = QuantizeOptions {
        model: model.clone(),
        to,
        out,
        pure: a.pure,
        threads: a.threads,
    };
    let r = quantize(&opts, std::io::stderr().is_terminal())
        .with_context(|| format!("cannot quantize `{model}`"))?;
    println!("{}", r.out.display());
    let mix: Vec<String> = r
        .type_counts()
        .iter()
        .map(|(t, n, p)| {
            format!(
                "{t}: {n} tensors, {:.1}% of weights",
                100.0 * *p as f64 / r.parameters.max(1) as f64
            )
        })
        .collect();
    let fallbacks = r.tensors.iter().filter(|t| t.fallback).count();
    eprintln!("-- {}", mix.join("; "));
    if fallbacks > 0 {
        eprintln!(
            "-- {fallbacks} tensors fell back to another type: their rows do not fit {}'s blocks",
            to
        );
    }
    eprintln!(
        "-- {} → {} ({:.2} bits per weight) in {:.1} s; tokenizer {}",
        gib(r.bytes_in),
        gib(r.bytes_out),
        r.bits_per_weight(),
        r.seconds,
        r.tokenizer_note
    );
    Ok(())
}

fn load_opts(a: &QuantizeArgs, progress: bool) -> Result<LoadOptions> {
    Ok(LoadOptions {
        threads: a.threads,
        progress,
        cpu_kernels: None,
        weight_cache: bakeoff_engine::loader::default_weight_cache()?,
        ..LoadOptions::default()
    })
}

fn wikitext(data_dir: &Path) -> Result<(PathBuf, String)> {
    let path = data_dir.join("wikitext-2-raw").join("wiki.test.raw");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read WikiText-2 at {} (pass --data-dir pointing at a copy of ../shared/evaldata)",
            path.display()
        )
    })?;
    Ok((path, text))
}

/// The child process: load one model, time it, print the result.
fn probe(a: &QuantizeArgs) -> Result<()> {
    let [model] = a.models.as_slice() else {
        bail!("--probe takes one --model");
    };
    let mut lm = load(model, None, &load_opts(a, false)?)
        .with_context(|| format!("cannot load model `{model}`"))?;
    // WikiText when it is there (a realistic prompt); otherwise any valid ids will do for timing.
    let prompt = match wikitext(&a.data_dir) {
        Ok((_, text)) => tokenize_prefix(
            lm.prompter.tokenizer(),
            lm.prompter.add_bos(),
            &text,
            a.speed_prompt,
        )?,
        Err(_) => (0..a.speed_prompt as u32).map(|i| 10 + i % 200).collect(),
    };
    let speed = speed_runs(&mut lm, &prompt, a.speed_tokens, a.speed_runs)?;
    println!("{}", serde_json::to_string(&speed)?);
    Ok(())
}

/// Runs `bakeoff quantize --probe` for one model in a fresh process, so that its peak memory is
/// its own.
fn probe_in_child(a: &QuantizeArgs, model: &str) -> Result<Speed> {
    let exe = std::env::current_exe().context("cannot find the bakeoff executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["quantize", "--probe", "--model", model])
        .arg("--data-dir")
        .arg(&a.data_dir)
        .args(["--speed-prompt", &a.speed_prompt.to_string()])
        .args(["--speed-tokens", &a.speed_tokens.to_string()])
        .args(["--speed-runs", &a.speed_runs.to_string()]);
    if let Some(t) = a.threads {
        cmd.args(["--threads", &t.to_string()]);
    }
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("cannot start the speed probe")?;
    if !out.status.success() {
        bail!("the speed run of `{model}` failed ({})", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).with_context(|| format!("speed probe printed {text:?}"))
}

fn loadavg() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn entry(lm: &LoadedModel, source: &str) -> QuantEntry {
    let i = &lm.info;
    QuantEntry {
        model: source.to_string(),
        weight_dtype: i.weight_dtype.clone(),
        parameters: i.parameters,
        file_bytes: i.file_bytes,
        bits_per_weight: if i.parameters == 0 {
            0.0
        } else {
            i.file_bytes as f64 * 8.0 / i.parameters as f64
        },
        quality: None,
        speed: None,
    }
}

fn chunk_bar(show: bool, n: usize, what: &str) -> Option<indicatif::ProgressBar> {
    if !show {
        return None;
    }
    let bar = indicatif::ProgressBar::new(n as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] chunk {pos}/{len} {elapsed}/{eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    Some(bar)
}

fn measure(a: &QuantizeArgs) -> Result<()> {
    let Some(against) = a.against.as_deref() else {
        bail!("--measure needs --against REF");
    };
    if a.tokens == 0 {
        bail!("--tokens must be positive");
    }
    let show = std::io::stderr().is_terminal();
    let loadavg_start = loadavg();
    let (data_path, text) = wikitext(&a.data_dir)?;
    let mut reference = load(against, None, &load_opts(a, show)?)
        .with_context(|| format!("cannot load the reference `{against}`"))?;
    if a.ctx > reference.model.config().max_context {
        bail!(
            "--ctx {} exceeds the reference's context of {}",
            a.ctx,
            reference.model.config().max_context
        );
    }
    let ids = tokenize_prefix(
        reference.prompter.tokenizer(),
        reference.prompter.add_bos(),
        &text,
        a.tokens,
    )?;
    let bos = if reference.prompter.add_bos() {
        reference.model.config().bos_token_id
    } else {
        None
    };
    let chunks = Chunks::new(&ids, a.ctx, a.tokens, bos)?;
    eprintln!(
        "-- {} chunks of {} tokens from {} ({} scored positions per model)",
        chunks.count,
        chunks.ctx,
        data_path.display(),
        chunks.count * chunks.scored()
    );
    // A sample to check that every model tokenizes the text the same way. Its leading
    // whitespace is left out: transformers' LlamaTokenizer (legacy: false) and llama.cpp's
    // SentencePiece put the `▁` prefix differently only there (and after special tokens, which
    // WikiText has none of), so a folder and its own GGUF conversion still agree on the rest.
    let sample: String = text.trim_start().chars().take(4000).collect();
    let sample_ids = reference
        .prompter
        .tokenizer()
        .encode(&sample, reference.prompter.add_bos())?;
    let bar = chunk_bar(show, chunks.count, "reference");
    let base = reference_pass(reference.model.as_mut(), &chunks, |i, _| {
        if let Some(b) = &bar {
            b.set_position(i as u64);
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let mut ref_entry = entry(&reference, against);
    drop(reference);

    let mut entries = Vec::new();
    for m in &a.models {
        let mut lm =
            load(m, None, &load_opts(a, show)?).with_context(|| format!("cannot load `{m}`"))?;
        if lm
            .prompter
            .tokenizer()
            .encode(&sample, lm.prompter.add_bos())?
            != sample_ids
        {
            bail!("`{m}` tokenizes the text differently from the reference `{against}`");
        }
        let bar = chunk_bar(show, chunks.count, &short(m));
        let q = compare_pass(lm.model.as_mut(), &chunks, &base, |i, _| {
            if let Some(b) = &bar {
                b.set_position(i as u64);
            }
        })
        .with_context(|| format!("measuring `{m}`"))?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let mut e = entry(&lm, m);
        e.quality = Some(q);
        entries.push(e);
    }
    drop(base);

    if !a.no_speed {
        eprintln!(
            "-- speed: {} prompt tokens + {} generated, {} runs each, one process per model",
            a.speed_prompt, a.speed_tokens, a.speed_runs
        );
        ref_entry.speed = Some(probe_in_child(a, against)?);
        for e in &mut entries {
            e.speed = Some(probe_in_child(a, &e.model)?);
        }
    }
    let reference_ppl = entries
        .first()
        .and_then(|e| e.quality.as_ref())
        .map(|q| q.ppl_base);
    let results = QuantizeResults {
        header: ResultsKind::Quantize.header(),
        created_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        method: "llama-perplexity --kl-divergence: chunks of ctx tokens (BOS first where the \
                 model adds one), second half scored; reference log-probs kept in f32; KL over \
                 the whole vocabulary"
            .into(),
        data: QuantData {
            file: data_path.display().to_string(),
            tokens: chunks.count * chunks.ctx,
            ctx: chunks.ctx,
            chunks: chunks.count,
            scored_tokens: chunks.count * chunks.scored(),
            bos_per_chunk: chunks.bos.is_some(),
        },
        threads: a
            .threads
            .unwrap_or_else(bakeoff_engine::loader::default_threads),
        cores: bakeoff_engine::loader::default_threads(),
        loadavg_start,
        loadavg_end: loadavg(),
        reference: ref_entry,
        reference_ppl,
        models: entries,
    };
    print!("{}", table(&results));
    if let Some(out) = &a.out {
        // write_atomic creates the folder too.
        bakeoff_record::fsio::write_atomic(
            out,
            (serde_json::to_string_pretty(&results)? + "\n").as_bytes(),
        )
        .with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("-- results: {}", out.display());
    }
    Ok(())
}

/// The last path component, for table rows.
fn short(m: &str) -> String {
    Path::new(m)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| m.to_string())
}

fn table(r: &QuantizeResults) -> String {
    let mut out = String::new();
    let head = [
        "model",
        "weights",
        "size",
        "bpw",
        "PPL",
        "Δ ln PPL",
        "mean KLD",
        "p99 KLD",
        "same top",
        "prefill t/s",
        "decode t/s",
        "peak RSS",
    ];
    let mut rows: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
    let speed_cols = |s: &Option<Speed>| -> [String; 3] {
        match s {
            Some(s) => [
                format!("{:.1}", s.prefill_tok_s),
                format!("{:.2}", s.decode_tok_s),
                gib(s.peak_rss_bytes),
            ],
            None => ["-".into(), "-".into(), "-".into()],
        }
    };
    let e = &r.reference;
    let mut row = vec![
        format!("{} (reference)", short(&e.model)),
        e.weight_dtype.clone(),
        gib(e.file_bytes),
        format!("{:.2}", e.bits_per_weight),
        r.reference_ppl
            .map_or("-".into(), |p| format!("{:.4} ± {:.4}", p.value, p.stderr)),
        "-".into(),
        "-".into(),
        "-".into(),
        "-".into(),
    ];
    row.extend(speed_cols(&e.speed));
    rows.push(row);
    for e in &r.models {
        let mut row = vec![
            short(&e.model),
            e.weight_dtype.clone(),
            gib(e.file_bytes),
            format!("{:.2}", e.bits_per_weight),
        ];
        match &e.quality {
            Some(q) => row.extend([
                format!("{:.4} ± {:.4}", q.ppl.value, q.ppl.stderr),
                format!("{:.5} ± {:.5}", q.ln_ppl_ratio.value, q.ln_ppl_ratio.stderr),
                format!("{:.6} ± {:.6}", q.kld_mean.value, q.kld_mean.stderr),
                format!("{:.6}", q.kld_p99),
                format!(
                    "{:.2} ± {:.2} %",
                    q.same_top_pct.value, q.same_top_pct.stderr
                ),
            ]),
            None => row.extend([
                "-".to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]),
        }
        row.extend(speed_cols(&e.speed));
        rows.push(row);
    }
    let widths: Vec<usize> = (0..head.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out.push_str(&format!(
        "{} scored tokens ({} chunks of {}) from {}; {} threads on {} cores, load average {} → {}\n",
        r.data.scored_tokens,
        r.data.chunks,
        r.data.ctx,
        r.data.file,
        r.threads,
        r.cores,
        r.loadavg_start.as_deref().unwrap_or("n/a"),
        r.loadavg_end.as_deref().unwrap_or("n/a"),
    ));
    out
}
