//! `bakeoff quantize`: a Hugging Face folder or an F32/F16/BF16 GGUF file to one self-contained
//! GGUF file in Q8_0, Q4_0, Q4_K, Q5_K or Q6_K (or F32/F16/BF16, which only converts), and
//! ([`measure`]) what that costs in quality against the unquantized model.
//!
//! The output is what llama.cpp's `convert_hf_to_gguf.py` followed by `llama-quantize` would
//! write: llama.cpp's metadata keys, the tokenizer as `tokenizer.ggml.*` (converted from
//! tokenizer.json for Hugging Face input), the chat template, Llama's Q/K rows permuted for
//! interleaved RoPE, and llama.cpp's choice of type per tensor ([`plan`]) with its reference
//! quantizers ([`blocks`]). The header and metadata encoding are `bakeoff synth`'s.
//!
//! Tensors stream through in chunks of rows (memory stays bounded for 150 M-element
//! embeddings), each chunk quantized in parallel; every row is independent, so the output does
//! not depend on the thread count.

pub mod blocks;
pub mod measure;

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use crate::WeightType;
use candle_core::quantized::gguf_file::Value;
use rayon::prelude::*;

use crate::loader::store::{TensorStore, storage_bytes};
use crate::loader::{ModelSource, dtype_name, hub, open_weights};
use crate::models::{Arch, DecoderConfig, gguf_tensor_name, layer_tensor_names};
use crate::synth::{
    ALIGNMENT, TensorEntry, arch_metadata, encode_header, llama_qk_source_row, pad_vocab,
    write_atomically,
};
use crate::tokenizer::{Tokenizer, TokenizerConfig, TokenizerFamily};
use crate::{Error, Result};

/// f32 values dequantized per parallel batch: enough rows to keep every core busy, few enough
/// that a 150 M-element embedding never sits in memory as f32 all at once.
const CHUNK_VALUES: usize = 8 << 20;

/// What `--to` asks for: a llama.cpp file type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantType {
    Q8_0,
    Q4_0,
    /// llama.cpp's Q4_K_M mix (plain Q4_K with `--pure`).
    Q4K,
    /// llama.cpp's Q5_K_M mix (plain Q5_K with `--pure`).
    Q5K,
    Q6K,
    F32,
    F16,
    Bf16,
}

impl QuantType {
    pub const QUANTIZED: [QuantType; 5] = [
        QuantType::Q8_0,
        QuantType::Q4_0,
        QuantType::Q4K,
        QuantType::Q5K,
        QuantType::Q6K,
    ];

    pub fn name(self) -> &'static str {
        match self {
            QuantType::Q8_0 => "q8_0",
            QuantType::Q4_0 => "q4_0",
            QuantType::Q4K => "q4_k",
            QuantType::Q5K => "q5_k",
            QuantType::Q6K => "q6_k",
            QuantType::F32 => "f32",
            QuantType::F16 => "f16",
            QuantType::Bf16 => "bf16",
        }
    }

    /// The type of the bulk of the matrices.
    pub fn base(self) -> WeightType {
        match self {
            QuantType::Q8_0 => WeightType::Q8_0,
            QuantType::Q4_0 => WeightType::Q4_0,
            QuantType::Q4K => WeightType::Q4K,
            QuantType::Q5K => WeightType::Q5K,
            QuantType::Q6K => WeightType::Q6K,
            QuantType::F32 => WeightType::F32,
            QuantType::F16 => WeightType::F16,
            QuantType::Bf16 => WeightType::BF16,
        }
    }

    pub fn is_quantized(self) -> bool {
        !matches!(self, QuantType::F32 | QuantType::F16 | QuantType::Bf16)
    }

    /// llama.cpp's `llama_ftype`, written as `general.file_type`.
    pub fn file_type(self) -> u32 {
        match self {
            QuantType::F32 => 0,
            QuantType::F16 => 1,
            QuantType::Q4_0 => 2,
            QuantType::Q8_0 => 7,
            QuantType::Q4K => 15,
            QuantType::Q5K => 17,
            QuantType::Q6K => 18,
            QuantType::Bf16 => 32,
        }
    }
}

impl fmt::Display for QuantType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QuantType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "q8_0" => Ok(QuantType::Q8_0),
            "q4_0" => Ok(QuantType::Q4_0),
            "q4_k" | "q4_k_m" => Ok(QuantType::Q4K),
            "q5_k" | "q5_k_m" => Ok(QuantType::Q5K),
            "q6_k" => Ok(QuantType::Q6K),
            "f32" => Ok(QuantType::F32),
            "f16" => Ok(QuantType::F16),
            "bf16" => Ok(QuantType::Bf16),
            _ => Err(Error::InvalidArgument(format!(
                "unknown type `{s}` (q8_0, q4_0, q4_k, q5_k, q6_k; f32, f16, bf16 to convert only)"
            ))),
        }
    }
}

/// ggml's `enum ggml_type` id of `t`, as the GGUF writer stores it.
pub fn ggml_type_id(t: WeightType) -> u32 {
    t.ggml_id()
}

/// One tensor of the output: where it comes from and what it becomes.
#[derive(Clone, Debug)]
pub struct TensorPlan {
    pub hf_name: String,
    pub gguf_name: String,
    /// Row-major; one dimension for norms and biases.
    pub shape: Vec<usize>,
    /// Type in the source.
    pub from: WeightType,
    pub to: WeightType,
    /// Whether `to` is a fallback because the row length does not fit the wanted type's blocks.
    pub fallback: bool,
    /// Llama Q/K rows from a Hugging Face folder are permuted for llama.cpp's interleaved RoPE:
    /// the head count to permute by.
    pub permute_heads: Option<usize>,
}

impl TensorPlan {
    pub fn rows(&self) -> usize {
        if self.shape.len() == 2 {
            self.shape[0]
        } else {
            1
        }
    }
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(0)
    }
    pub fn elems(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn out_bytes(&self) -> usize {
        storage_bytes(self.to, self.elems()).unwrap_or(0)
    }
}

/// What llama.cpp's `llama_tensor_get_type` would give each tensor for `to` (llama.cpp
/// `src/llama-quant.cpp`, restricted to the dense Llama/Qwen2 decoders bakeoff runs):
///
/// - one-dimensional tensors (norms, biases) stay F32;
/// - unless `pure`, the output head (`output.weight`, or the token embedding when the head is
///   tied to it) becomes Q6_K for Q4_0/Q4_K/Q5_K/Q6_K and stays Q8_0 for Q8_0 (Q8_0 when its rows
///   do not fit the base type's blocks), and the Q4_K/Q5_K files are llama.cpp's `_M` mixes:
///   `attn_v` and `ffn_down` of the first and last eighth of the layers and of every third layer
///   between become Q6_K;
/// - a K-quant whose row length is not a multiple of 256 falls back, as `tensor_type_fallback`
///   does, Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0; a row that does not fit 32-value blocks
///   either becomes F16.
///
/// `tensors` is `(gguf_name, shape)` in file order (the attn_v counter follows it, as in
/// llama.cpp). Returns each tensor's type and whether it is a fallback.
pub fn plan_types(
    tensors: &[(String, Vec<usize>)],
    to: QuantType,
    pure: bool,
) -> Vec<(WeightType, bool)> {
    let base = to.base();
    let tied = !tensors.iter().any(|(n, _)| n == "output.weight");
    let n_attn_v = tensors
        .iter()
        .filter(|(n, _)| n.contains("attn_v.weight"))
        .count();
    let n_layers = tensors
        .iter()
        .filter_map(|(n, _)| {
            n.strip_prefix("blk.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |m| m + 1);
    let mut i_attn_v = 0;
    let mut i_ffn_down = 0;
    let more_bits = |i: usize, n: usize| i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
    tensors
        .iter()
        .map(|(name, shape)| {
            if shape.len() < 2 {
                return (WeightType::F32, false);
            }
            if !to.is_quantized() {
                return (base, false);
            }
            let cols = shape.last().copied().unwrap_or(0);
            let mut t = base;
            if !pure {
                let is_head = name == "output.weight" || (tied && name == "token_embd.weight");
                if is_head {
                    if !cols.is_multiple_of(base.block_size()) {
                        t = WeightType::Q8_0;
                    } else if base != WeightType::Q8_0 {
                        t = WeightType::Q6K;
                    }
                } else if name.contains("attn_v.weight") {
                    if matches!(to, QuantType::Q4K | QuantType::Q5K)
                        && more_bits(i_attn_v, n_attn_v)
                    {
                        t = WeightType::Q6K;
                    }
                    i_attn_v += 1;
                } else if name.contains("ffn_down") {
                    if matches!(to, QuantType::Q4K | QuantType::Q5K)
                        && more_bits(i_ffn_down, n_layers)
                    {
                        t = WeightType::Q6K;
                    }
                    i_ffn_down += 1;
                }
            }
            if cols.is_multiple_of(t.block_size()) {
                return (t, false);
            }
            let fb = match t {
                WeightType::Q4K => WeightType::Q5_0,
                WeightType::Q5K => WeightType::Q5_1,
                WeightType::Q6K => WeightType::Q8_0,
                other => other,
            };
            if cols.is_multiple_of(fb.block_size()) {
                (fb, true)
            } else {
                (WeightType::F16, true)
            }
        })
        .collect()
}

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
        let size = storage_bytes(p.to, p.elems()).ok_or_else(|| {
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
        .num_threads(opts.threads.unwrap_or_else(crate::loader::default_threads))
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
    let row_in = storage_bytes(raw.dtype, cols)
        .ok_or_else(|| Error::tensor(&p.hf_name, "rows do not fill whole blocks"))?;
    let row_out = storage_bytes(p.to, cols)
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
                    crate::kernels::dequant::dequantize_into(
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

/// Hugging Face names of the tensors a model with `cfg` has, in llama.cpp's file order.
fn tensor_names(cfg: &DecoderConfig) -> Vec<String> {
    let mut names = vec!["model.embed_tokens.weight".to_string()];
    for i in 0..cfg.n_layers {
        names.extend(layer_tensor_names(i, cfg.qkv_bias));
    }
    names.push("model.norm.weight".into());
    if !cfg.tied_embeddings {
        names.push("lm_head.weight".into());
    }
    names
}

fn open_source(model: &str) -> Result<Source> {
    let path = match ModelSource::parse(model, None)? {
        ModelSource::Dir(p) | ModelSource::Gguf(p) => p,
        ModelSource::Hub { id, .. } => hub::fetch_hf_model(&id)?,
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
        let content = crate::loader::gguf::GgufContent::read_file(&path)?;
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn listing(cfg: &DecoderConfig) -> Vec<(String, Vec<usize>)> {
        let h = cfg.hidden_size;
        let kv = cfg.n_kv_heads * cfg.head_dim;
        tensor_names(cfg)
            .iter()
            .map(|n| {
                let shape = if n.ends_with("norm.weight") || n.ends_with("bias") {
                    vec![h]
                } else if n.contains("k_proj") || n.contains("v_proj") {
                    vec![kv, h]
                } else if n.contains("gate_proj") || n.contains("up_proj") {
                    vec![cfg.intermediate_size, h]
                } else if n.contains("down_proj") {
                    vec![h, cfg.intermediate_size]
                } else if n.contains("embed") || n.contains("lm_head") {
                    vec![cfg.vocab_size, h]
                } else {
                    vec![h, h]
                };
                (gguf_tensor_name(n).unwrap(), shape)
            })
            .collect()
    }

    fn types_of(cfg: &DecoderConfig, to: QuantType, pure: bool) -> HashMap<String, WeightType> {
        let l = listing(cfg);
        l.iter()
            .map(|(n, _)| n.clone())
            .zip(plan_types(&l, to, pure).into_iter().map(|t| t.0))
            .collect()
    }

    /// The mixes for TinyLlama-1.1B (22 layers, untied head), worked out by hand from
    /// llama.cpp's `use_more_bits` (i < n/8, i ≥ 7n/8, or (i - n/8) % 3 == 2): Q4_K_M and Q5_K_M
    /// have Q6_K attn_v/ffn_down in layers 0, 1, 4, 7, 10, 13, 16, 19, 20, 21. (The interop
    /// script checks the types against files llama-quantize wrote.)
    #[test]
    fn tinyllama_mixes_follow_llama_cpp_rules() {
        let cfg = crate::synth::Preset::TinyLlama1B.config(0);
        let q6_layers = [0, 1, 4, 7, 10, 13, 16, 19, 20, 21];
        for to in [QuantType::Q4K, QuantType::Q5K] {
            let t = types_of(&cfg, to, false);
            assert_eq!(t["output.weight"], WeightType::Q6K);
            assert_eq!(t["token_embd.weight"], to.base());
            assert_eq!(t["output_norm.weight"], WeightType::F32);
            for l in 0..22 {
                let want = if q6_layers.contains(&l) {
                    WeightType::Q6K
                } else {
                    to.base()
                };
                assert_eq!(t[&format!("blk.{l}.attn_v.weight")], want, "{to} layer {l}");
                assert_eq!(
                    t[&format!("blk.{l}.ffn_down.weight")],
                    want,
                    "{to} layer {l}"
                );
                assert_eq!(t[&format!("blk.{l}.attn_q.weight")], to.base());
            }
        }
        let t = types_of(&cfg, QuantType::Q8_0, false);
        assert!(t.iter().all(|(n, ty)| *ty
            == if n.ends_with("norm.weight") {
                WeightType::F32
            } else {
                WeightType::Q8_0
            }));
        let t = types_of(&cfg, QuantType::Q4_0, false);
        assert_eq!(t["output.weight"], WeightType::Q6K);
        assert_eq!(t["blk.3.ffn_down.weight"], WeightType::Q4_0);
        // --pure: one type everywhere but the norms.
        let t = types_of(&cfg, QuantType::Q4K, true);
        assert_eq!(t["output.weight"], WeightType::Q4K);
        assert_eq!(t["blk.0.attn_v.weight"], WeightType::Q4K);
    }

    /// Qwen2.5-1.5B ties its head to the embedding, so the embedding takes the head's type;
    /// ffn_down rows are 8960 long (35 × 256), so they fit K-quants; biases stay F32.
    #[test]
    fn qwen25_tied_embedding_takes_the_head_type() {
        let cfg = crate::synth::Preset::Qwen25_1B5.config(0);
        let t = types_of(&cfg, QuantType::Q4_0, false);
        assert_eq!(t["token_embd.weight"], WeightType::Q6K);
        assert!(!t.contains_key("output.weight"));
        assert_eq!(t["blk.0.attn_q.bias"], WeightType::F32);
        let t = types_of(&cfg, QuantType::Q8_0, false);
        assert_eq!(t["token_embd.weight"], WeightType::Q8_0);
        let t = types_of(&cfg, QuantType::Q4K, false);
        assert_eq!(t["blk.27.ffn_down.weight"], WeightType::Q6K);
        assert_eq!(t["blk.4.ffn_down.weight"], WeightType::Q4K);
    }

    /// Tiny models (hidden 64, intermediate 192) fit no K-quant: llama.cpp's fallbacks apply.
    #[test]
    fn short_rows_fall_back_as_llama_cpp_does() {
        let cfg = crate::synth::Preset::TinyQwen2.config(259);
        let l = listing(&cfg);
        for (to, want) in [
            (QuantType::Q4K, WeightType::Q5_0),
            (QuantType::Q5K, WeightType::Q5_1),
            (QuantType::Q6K, WeightType::Q8_0),
        ] {
            let plan = plan_types(&l, to, true);
            for ((n, s), (t, fb)) in l.iter().zip(&plan) {
                if s.len() == 2 {
                    assert_eq!((*t, *fb), (want, true), "{to} {n}");
                }
            }
        }
        // Rows that fit no 32-value block become F16.
        let odd = vec![("blk.0.attn_q.weight".to_string(), vec![8, 40])];
        assert_eq!(
            plan_types(&odd, QuantType::Q4K, true),
            vec![(WeightType::F16, true)]
        );
        assert_eq!(
            plan_types(&odd, QuantType::Q8_0, true),
            vec![(WeightType::F16, true)]
        );
    }
}
