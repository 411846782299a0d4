//! `bakeoff quantize`: a Hugging Face folder or an F32/F16/BF16 GGUF file to one self-contained
//! GGUF file in Q8_0, Q4_0, Q4_K, Q5_K or Q6_K (or F32/F16/BF16, which only converts), and
//! ([`measure`]) what that costs in quality against the unquantized model.
//!
//! The output is what llama.cpp's `convert_hf_to_gguf.py` followed by `llama-quantize` would
//! write: llama.cpp's metadata keys, the tokenizer as `tokenizer.ggml.*` (converted from
//! tokenizer.json for Hugging Face input), the chat template, Llama's Q/K rows permuted for
//! interleaved RoPE, and llama.cpp's choice of type per tensor ([`plan`](mod@plan)) with its reference
//! quantizers ([`blocks`]). The header and metadata encoding ([`gguf_write`]) are shared with `bakeoff synth`.
//!
//! Tensors stream through in chunks of rows (memory stays bounded for 150 M-element
//! embeddings), each chunk quantized in parallel; every row is independent, so the output does
//! not depend on the thread count.

pub mod blocks;
pub mod gguf_write;
pub mod measure;
pub mod plan;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bakeoff_engine::WeightType;
use candle_core::quantized::gguf_file::Value;
use rayon::prelude::*;

use crate::gguf_write::{
    ALIGNMENT, TensorEntry, arch_metadata, encode_header, llama_qk_source_row, pad_vocab,
    write_atomically,
};
use bakeoff_engine::loader::store::TensorStore;
use bakeoff_engine::loader::{ModelSource, dtype_name, hub, open_weights};
use bakeoff_engine::models::{Arch, DecoderConfig, gguf_tensor_name};
use bakeoff_engine::tokenizer::{Tokenizer, TokenizerConfig, TokenizerFamily};
use bakeoff_engine::{Error, Result};
use plan::tensor_names;
pub use plan::{QuantType, TensorPlan, ggml_type_id, plan_types};

/// f32 values dequantized per parallel batch: enough rows to keep every core busy, few enough
/// that a 150 M-element embedding never sits in memory as f32 all at once.
const CHUNK_VALUES: usize = 8 << 20;

#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    /// A Hugging Face folder, an F32/F16/BF16 GGUF file, or a hub id.
    pub model: String,
    pub to: QuantType,
    pub out: PathBuf,
    /// Every matrix in `to` (no higher-precision head, no `_M` mix); fallbacks still apply.
    pub pure: bool,
    /// Threads for quantizing; all cores when `None`.
    pub threads: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct QuantizeReport {
    pub out: PathBuf,
    pub tensors: Vec<TensorPlan>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub parameters: u64,
    pub seconds: f64,
    /// Where the tokenizer came from, and how.
    pub tokenizer_note: String,
}

impl QuantizeReport {
    /// `(type, tensors, parameters)` per output type, most parameters first.
    pub fn type_counts(&self) -> Vec<(&'static str, usize, u64)> {
        let mut v: Vec<(&'static str, usize, u64)> = Vec::new();
        for t in &self.tensors {
            let n = dtype_name(t.to);
            match v.iter_mut().find(|e| e.0 == n) {
                Some(e) => {
                    e.1 += 1;
                    e.2 += t.elems() as u64;
                }
                None => v.push((n, 1, t.elems() as u64)),
            }
        }
        v.sort_by_key(|e| std::cmp::Reverse(e.2));
        v
    }

    /// Effective bits per weight over all tensors.
    pub fn bits_per_weight(&self) -> f64 {
        let bytes: u64 = self.tensors.iter().map(|t| t.out_bytes() as u64).sum();
        if self.parameters == 0 {
            0.0
        } else {
            bytes as f64 * 8.0 / self.parameters as f64
        }
    }
}

/// The source, resolved: config, weights, and the metadata the output needs.
struct Source {
    path: PathBuf,
    cfg: DecoderConfig,
    store: Box<dyn TensorStore>,
    metadata: Vec<(String, Value)>,
    /// Hugging Face names in output order.
    names: Vec<String>,
    from_hf: bool,
    tokenizer_note: String,
}

/// Writes the GGUF file `opts` describes; see the module documentation.
pub fn quantize(opts: &QuantizeOptions, progress: bool) -> Result<QuantizeReport> {
    let start = Instant::now();
    let src = open_source(&opts.model)?;
    if let (Ok(a), Ok(b)) = (src.path.canonicalize(), opts.out.canonicalize())
        && a == b
    {
        return Err(Error::InvalidArgument(format!(
            "--out {} is the input file",
            opts.out.display()
        )));
    }
    let mut plans = Vec::with_capacity(src.names.len());
    for name in &src.names {
        let raw = src.store.tensor(name)?;
        if !matches!(
            raw.dtype,
            WeightType::F32 | WeightType::F16 | WeightType::BF16
        ) {
            return Err(Error::tensor(
                name,
                format!(
                    "is stored as {}; bakeoff quantizes from F32, F16 or BF16 weights only \
                     (re-quantizing compounds the error)",
                    dtype_name(raw.dtype)
                ),
            ));
        }
        let gguf_name =
            gguf_tensor_name(name).ok_or_else(|| Error::tensor(name, "has no GGUF name"))?;
        let permute_heads = if src.from_hf && src.cfg.arch == Arch::Llama {
            if name.ends_with("self_attn.q_proj.weight") {
                Some(src.cfg.n_heads)
            } else if name.ends_with("self_attn.k_proj.weight") {
                Some(src.cfg.n_kv_heads)
            } else {
                None
            }
        } else {
            None
        };
        if raw.shape.is_empty() || raw.shape.len() > 2 {
            return Err(Error::tensor(
                name,
                format!("has shape {:?}; expected 1 or 2 dimensions", raw.shape),
            ));
        }
        plans.push(TensorPlan {
            hf_name: name.clone(),
            gguf_name,
            shape: raw.shape.clone(),
            from: raw.dtype,
            to: WeightType::F32,
            fallback: false,
            permute_heads,
        });
    }
    let listing: Vec<(String, Vec<usize>)> = plans
        .iter()
        .map(|p| (p.gguf_name.clone(), p.shape.clone()))
        .collect();
    for (p, (t, fb)) in plans
        .iter_mut()
        .zip(plan_types(&listing, opts.to, opts.pure))
    {
        p.to = t;
        p.fallback = fb;
    }

    let mut metadata = src.metadata;
    let set = |md: &mut Vec<(String, Value)>, k: &str, v: Value| {
        md.retain(|(key, _)| key != k);
        md.push((k.to_string(), v));
    };
    set(
        &mut metadata,
        "general.file_type",
        Value::U32(opts.to.file_type()),
    );
    set(&mut metadata, "general.quantization_version", Value::U32(2));
    set(
        &mut metadata,
        "general.alignment",
        Value::U32(ALIGNMENT as u32),
    );
    set(
        &mut metadata,
        "bakeoff.quantize.type",
        Value::String(format!(
            "{}{}",
            opts.to,
            if opts.pure { " (pure)" } else { "" }
        )),
    );
    // The architecture first, as llama.cpp writes it; the rest sorted so that the same input
    // always gives the same file.
    metadata.sort_by(|a, b| {
        (a.0 != "general.architecture", &a.0).cmp(&(b.0 != "general.architecture", &b.0))
    });

    let mut entries = Vec::with_capacity(plans.len());
    let mut offset = 0u64;
    for p in &plans {
        let size = p.to.storage_bytes(p.elems()).ok_or_else(|| {
            Error::tensor(
                &p.hf_name,
                format!("{:?} does not fit {}", p.shape, dtype_name(p.to)),
            )
        })? as u64;
        entries.push(TensorEntry {
            name: &p.gguf_name,
            dims: p.shape.clone(),
            type_id: ggml_type_id(p.to),
            offset,
        });
        offset += size.div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    let header = encode_header(&metadata, &entries).map_err(|m| Error::format(&opts.out, m))?;

    if let Some(parent) = opts.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(
            opts.threads
                .unwrap_or_else(bakeoff_engine::loader::default_threads),
        )
        .build()
        .map_err(|e| Error::InvalidArgument(format!("thread pool: {e}")))?;
    let total: u64 = plans.iter().map(|p| p.elems() as u64).sum();
    let bar = value_bar(progress, total);
    let out = &opts.out;
    write_atomically(out, |w| {
        w.write_all(&header).map_err(|e| Error::io(out, e))?;
        for p in &plans {
            if let Some(b) = &bar {
                b.set_message(format!("{} {}", p.gguf_name, dtype_name(p.to)));
            }
            let n = pool.install(|| write_tensor(w, src.store.as_ref(), p, &bar))?;
            let fill = (n.div_ceil(ALIGNMENT) * ALIGNMENT - n) as usize;
            w.write_all(&[0u8; ALIGNMENT as usize][..fill])
                .map_err(|e| Error::io(out, e))?;
        }
        Ok(())
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let bytes_in = src
        .store
        .files()
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    let bytes_out = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(QuantizeReport {
        out: out.clone(),
        parameters: total,
        tensors: plans,
        bytes_in,
        bytes_out,
        seconds: start.elapsed().as_secs_f64(),
        tokenizer_note: src.tokenizer_note,
    })
}

/// Streams one tensor, converted, to `w`; returns the bytes written.
fn write_tensor(
    w: &mut dyn Write,
    store: &dyn TensorStore,
    p: &TensorPlan,
    bar: &Option<indicatif::ProgressBar>,
) -> Result<u64> {
    let raw = store.tensor(&p.hf_name)?;
    let bytes = raw.data.bytes();
    let (rows, cols) = (p.rows(), p.cols());
    let row_in = raw
        .dtype
        .storage_bytes(cols)
        .ok_or_else(|| Error::tensor(&p.hf_name, "rows do not fill whole blocks"))?;
    let row_out =
        p.to.storage_bytes(cols)
            .ok_or_else(|| Error::tensor(&p.hf_name, "rows do not fill whole output blocks"))?;
    if bytes.len() != row_in * rows {
        return Err(Error::tensor(
            &p.hf_name,
            format!("holds {} bytes, expected {}", bytes.len(), row_in * rows),
        ));
    }
    if let Some(h) = p.permute_heads
        && (h == 0 || !rows.is_multiple_of(2 * h))
    {
        return Err(Error::tensor(
            &p.hf_name,
            format!("{rows} rows do not split into {h} heads of even size"),
        ));
    }
    let chunk_rows = (CHUNK_VALUES / cols.max(1)).clamp(1, rows.max(1));
    let mut buf = vec![0u8; chunk_rows * row_out];
    let mut written = 0u64;
    let mut start = 0;
    while start < rows {
        let n = chunk_rows.min(rows - start);
        let out = &mut buf[..n * row_out];
        out.par_chunks_mut(row_out)
            .enumerate()
            .try_for_each_init(
                || vec![0f32; cols],
                |scratch, (i, dst)| -> std::result::Result<(), String> {
                    let r = start + i;
                    let src = p
                        .permute_heads
                        .map_or(r, |h| llama_qk_source_row(r, rows, h));
                    bakeoff_engine::kernels::dequant::dequantize_into(
                        raw.dtype,
                        &bytes[src * row_in..(src + 1) * row_in],
                        scratch,
                    )?;
                    blocks::quantize_row(p.to, scratch, dst)
                },
            )
            .map_err(|m| Error::tensor(&p.hf_name, m))?;
        w.write_all(out)
            .map_err(|e| Error::tensor(&p.hf_name, format!("write failed: {e}")))?;
        if let Some(b) = bar {
            b.inc((n * cols) as u64);
        }
        written += out.len() as u64;
        start += n;
    }
    Ok(written)
}

/// A bar over the weights converted so far, naming the current tensor.
fn value_bar(show: bool, total: u64) -> Option<indicatif::ProgressBar> {
    if !show {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "quantize [{bar:30}] {percent:>3}% {elapsed}/{eta} {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    Some(bar)
}

fn open_source(model: &str) -> Result<Source> {
    let path = match ModelSource::parse(model, None)? {
        ModelSource::Dir(p) | ModelSource::Gguf(p) => p,
        ModelSource::Hub { id, .. } => hub::fetch_hf_model(&id)?,
        ModelSource::Catalog(m) => {
            m.pull(&bakeoff_engine::loader::catalog::PullOptions {
                progress: true,
                ..Default::default()
            })?
            .path
        }
    };
    let (cfg, store) = open_weights(&path)?;
    let names = tensor_names(&cfg);
    if path.is_dir() {
        let (metadata, tokenizer_note) = hf_metadata(&path, &cfg)?;
        Ok(Source {
            path,
            cfg,
            store,
            metadata,
            names,
            from_hf: true,
            tokenizer_note,
        })
    } else {
        let content = bakeoff_engine::loader::gguf::GgufContent::read_file(&path)?;
        // Every tensor must be one bakeoff knows how to place; anything else would be lost.
        let known: std::collections::HashSet<String> =
            names.iter().filter_map(|n| gguf_tensor_name(n)).collect();
        let mut unknown: Vec<&String> = content
            .tensor_infos
            .keys()
            .filter(|k| !known.contains(*k))
            .collect();
        unknown.sort();
        if !unknown.is_empty() {
            return Err(Error::format(
                &path,
                format!(
                    "holds tensors bakeoff does not carry over ({}); quantize it with llama.cpp's \
                     llama-quantize instead",
                    unknown
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if !content.metadata.contains_key("tokenizer.ggml.model") {
            return Err(Error::format(
                &path,
                "carries no tokenizer (tokenizer.ggml.*), so the output could not load on its own",
            ));
        }
        let metadata: Vec<(String, Value)> = content.metadata.into_iter().collect();
        Ok(Source {
            path,
            cfg,
            store,
            metadata,
            names,
            from_hf: false,
            tokenizer_note: "copied from the input GGUF".into(),
        })
    }
}

/// llama.cpp's metadata for a Hugging Face folder: general keys, the architecture's keys, the
/// tokenizer converted from tokenizer.json (padded with unused `[PAD{id}]` entries up to the
/// embedding size, as `convert_hf_to_gguf.py` does) and the chat template.
fn hf_metadata(dir: &Path, cfg: &DecoderConfig) -> Result<(Vec<(String, Value)>, String)> {
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.is_file() {
        return Err(Error::NotFound(format!(
            "{}: missing tokenizer.json (the GGUF file must carry the tokenizer)",
            dir.display()
        )));
    }
    let mut tok = Tokenizer::from_file(&tok_path)?;
    let tc_path = dir.join("tokenizer_config.json");
    let tc = if tc_path.is_file() {
        Some(TokenizerConfig::from_file(&tc_path)?)
    } else {
        None
    };
    if let Some(tc) = &tc {
        tok.apply_config(tc);
    }
    // Each architecture has one tokenizer layout bakeoff can describe in GGUF terms: the
    // byte-level pre-tokenizer is written as Qwen2's, which would be wrong for another
    // byte-level BPE (Llama 3, GPT-2), so that pairing is refused rather than guessed.
    let want = match cfg.arch {
        Arch::Llama => TokenizerFamily::Llama,
        Arch::Qwen2 => TokenizerFamily::Qwen2,
    };
    match tok.family() {
        Some(f) if f == want => {}
        Some(f) => {
            return Err(Error::format(
                &tok_path,
                format!(
                    "a {f:?}-style tokenizer in a {} model: bakeoff can only write Llama-2 \
                     SentencePiece tokenizers for llama and Qwen2 byte-level BPE for qwen2; \
                     convert this model with llama.cpp's convert_hf_to_gguf.py",
                    cfg.arch.name()
                ),
            ));
        }
        None => {
            return Err(Error::format(
                &tok_path,
                "neither a SentencePiece BPE with byte fallback (Llama-2) nor a byte-level BPE \
                 (Qwen2): bakeoff cannot describe it as tokenizer.ggml.*; convert this model \
                 with llama.cpp's convert_hf_to_gguf.py",
            ));
        }
    }
    let mut md: HashMap<String, Value> = tok.to_gguf_metadata()?.into_iter().collect();
    let n_tokens = match md.get("tokenizer.ggml.tokens") {
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    };
    if n_tokens > cfg.vocab_size {
        return Err(Error::format(
            &tok_path,
            format!(
                "{n_tokens} tokens but the embedding has only {} rows",
                cfg.vocab_size
            ),
        ));
    }
    pad_vocab(&mut md, cfg.vocab_size, &tok_path)?;
    // convert_hf_to_gguf.py takes ids missing from tokenizer_config.json from config.json.
    if !md.contains_key("tokenizer.ggml.bos_token_id")
        && let Some(b) = cfg.bos_token_id
    {
        md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(b));
    }
    if !md.contains_key("tokenizer.ggml.eos_token_id")
        && let Some(&e) = cfg.eos_token_ids.first()
    {
        md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(e));
    }
    let mut out: Vec<(String, Value)> = vec![
        (
            "general.architecture".into(),
            Value::String(cfg.arch.name().into()),
        ),
        (
            "general.name".into(),
            Value::String(
                dir.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "model".into()),
            ),
        ),
    ];
    out.extend(arch_metadata(cfg));
    out.extend(md);
    // Newer transformers save the template beside tokenizer_config.json.
    let template = tc
        .as_ref()
        .and_then(|t| t.chat_template())
        .or_else(|| std::fs::read_to_string(dir.join("chat_template.jinja")).ok());
    let note = format!(
        "converted from tokenizer.json ({n_tokens} tokens{}), chat template {}",
        if n_tokens < cfg.vocab_size {
            format!(", padded to {}", cfg.vocab_size)
        } else {
            String::new()
        },
        if template.is_some() {
            "included"
        } else {
            "absent"
        }
    );
    if let Some(t) = template {
        out.push(("tokenizer.chat_template".into(), Value::String(t)));
    }
    Ok((out, note))
}
