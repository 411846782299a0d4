//! `bakeoff synth`: random-weight models with the exact architectures of the real ones.
//!
//! Decode speed depends on shapes and storage types, not on weight values, so a synthetic
//! TinyLlama-1.1B-Chat or Qwen2.5-1.5B-Instruct benchmarks like the real one without a download.
//! The tiny presets (hidden 64, 2 layers) are for tests.
//!
//! Weights are generated in the Hugging Face layout from the seed (`weights.rs`) and written either
//! as a Hugging Face folder (`hf.rs`: config.json, safetensors, tokenizer and generation files) or
//! as one self-contained llama.cpp-style GGUF file (`gguf.rs`). A folder and a file written with
//! the same seed hold the same weights, which is how the tests check the GGUF path (Q/K
//! permutation, interleaved RoPE) against the Hugging Face one.
//!
//! The tokenizer is the real one when a GGUF vocabulary file is given (`--vocab`, e.g.
//! `ggml-vocab-llama-spm.gguf`), otherwise the family's tiny byte-level stand-in; the chat
//! template is always the family's real one.

mod gguf;
mod hf;
mod weights;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use bakeoff_engine::WeightType;
use candle_core::quantized::gguf_file::Value;

use bakeoff_engine::models::{Arch, DecoderConfig, RopeScaling, RopeStyle};
use bakeoff_engine::tokenizer::{Tokenizer, TokenizerFamily, upgrade_to_qwen25};
use bakeoff_engine::{Error, Result};
use bakeoff_quantize::gguf_write::pad_vocab;

/// The models `bakeoff synth` can imitate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Preset {
    /// TinyLlama/TinyLlama-1.1B-Chat-v1.0.
    TinyLlama1B,
    /// Qwen/Qwen2.5-1.5B-Instruct.
    Qwen25_1B5,
    /// A 2-layer Llama with TinyLlama's conventions, for tests.
    TinyLlama,
    /// A 2-layer Qwen2 with Qwen2.5's conventions, for tests.
    TinyQwen2,
}

impl Preset {
    pub const ALL: [Preset; 4] = [
        Preset::TinyLlama1B,
        Preset::Qwen25_1B5,
        Preset::TinyLlama,
        Preset::TinyQwen2,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Preset::TinyLlama1B => "tinyllama-1.1b",
            Preset::Qwen25_1B5 => "qwen2.5-1.5b",
            Preset::TinyLlama => "tiny-llama",
            Preset::TinyQwen2 => "tiny-qwen2",
        }
    }

    /// The Hugging Face repository whose architecture the preset copies.
    pub fn reference(self) -> &'static str {
        match self {
            Preset::TinyLlama1B | Preset::TinyLlama => "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
            Preset::Qwen25_1B5 | Preset::TinyQwen2 => "Qwen/Qwen2.5-1.5B-Instruct",
        }
    }

    pub fn arch(self) -> Arch {
        match self {
            Preset::TinyLlama1B | Preset::TinyLlama => Arch::Llama,
            Preset::Qwen25_1B5 | Preset::TinyQwen2 => Arch::Qwen2,
        }
    }

    pub fn family(self) -> TokenizerFamily {
        match self.arch() {
            Arch::Llama => TokenizerFamily::Llama,
            Arch::Qwen2 => TokenizerFamily::Qwen2,
        }
    }

    pub fn is_tiny(self) -> bool {
        matches!(self, Preset::TinyLlama | Preset::TinyQwen2)
    }

    /// The family's real chat template (Qwen2.5's, not the older Qwen2 one in GGUF vocab files).
    pub fn chat_template(self) -> &'static str {
        match self.arch() {
            Arch::Llama => bakeoff_engine::template::TINYLLAMA_TEMPLATE,
            Arch::Qwen2 => bakeoff_engine::template::QWEN25_TEMPLATE,
        }
    }

    /// The model's shape in the Hugging Face layout (NEOX rotary pairs; a Llama GGUF file loads
    /// with [`RopeStyle::Interleaved`] instead).
    ///
    /// `tokenizer_vocab` sizes the embedding of the tiny presets; the full-size ones keep the
    /// real embedding (32000 rows for TinyLlama, 151936 for Qwen2.5, whose tokenizer has only
    /// 151665 tokens) and [`synth`] pads a smaller tokenizer up to it. Special-token ids are the
    /// real models' (the tiny tokenizers' for the tiny presets); [`synth`] sets them from the
    /// tokenizer it writes.
    pub fn config(self, tokenizer_vocab: usize) -> DecoderConfig {
        let llama = |vocab, hidden, inter, layers, heads, kv, ctx| DecoderConfig {
            arch: Arch::Llama,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: inter,
            n_layers: layers,
            n_heads: heads,
            n_kv_heads: kv,
            head_dim: hidden / heads,
            max_context: ctx,
            rope_theta: 10_000.0,
            rms_eps: 1e-5,
            qkv_bias: false,
            tied_embeddings: false,
            rope_style: RopeStyle::Neox,
            rope_scaling: RopeScaling::None,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
        };
        let qwen =
            |vocab, hidden, inter, layers, heads, kv, ctx, bos, eos: Vec<u32>| DecoderConfig {
                arch: Arch::Qwen2,
                vocab_size: vocab,
                hidden_size: hidden,
                intermediate_size: inter,
                n_layers: layers,
                n_heads: heads,
                n_kv_heads: kv,
                head_dim: hidden / heads,
                max_context: ctx,
                rope_theta: 1_000_000.0,
                rms_eps: 1e-6,
                qkv_bias: true,
                tied_embeddings: true,
                rope_style: RopeStyle::Neox,
                rope_scaling: RopeScaling::None,
                bos_token_id: Some(bos),
                eos_token_ids: eos,
            };
        match self {
            Preset::TinyLlama1B => llama(32000, 2048, 5632, 22, 32, 4, 2048),
            Preset::Qwen25_1B5 => qwen(
                151936,
                1536,
                8960,
                28,
                12,
                2,
                32768,
                151643,
                vec![151645, 151643],
            ),
            Preset::TinyLlama => llama(tokenizer_vocab, 64, 192, 2, 4, 2, 512),
            // The tiny Qwen2 tokenizer: <|endoftext|> 256, <|im_end|> 258.
            Preset::TinyQwen2 => qwen(tokenizer_vocab, 64, 192, 2, 4, 2, 512, 256, vec![258, 256]),
        }
    }

    /// Qwen2's `max_window_layers` as the real config.json states it (unused: sliding window off).
    fn max_window_layers(self) -> usize {
        match self {
            Preset::Qwen25_1B5 => 21,
            _ => self.config(0).n_layers,
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Preset::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
                Error::InvalidArgument(format!("unknown preset `{s}` ({})", names.join(", ")))
            })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynthFormat {
    /// A Hugging Face folder: config.json, model.safetensors, tokenizer and generation files.
    Hf,
    /// One self-contained llama.cpp-style `.gguf` file.
    Gguf,
}

impl fmt::Display for SynthFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SynthFormat::Hf => "hf",
            SynthFormat::Gguf => "gguf",
        })
    }
}

impl FromStr for SynthFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "hf" | "safetensors" => Ok(SynthFormat::Hf),
            "gguf" => Ok(SynthFormat::Gguf),
            _ => Err(Error::InvalidArgument(format!(
                "unknown format `{s}` (hf, gguf)"
            ))),
        }
    }
}

/// Storage type of the weight matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynthQuant {
    F32,
    F16,
    Bf16,
    /// GGUF only.
    Q8_0,
    /// GGUF only.
    Q4_0,
}

impl SynthQuant {
    pub fn name(self) -> &'static str {
        match self {
            SynthQuant::F32 => "f32",
            SynthQuant::F16 => "f16",
            SynthQuant::Bf16 => "bf16",
            SynthQuant::Q8_0 => "q8_0",
            SynthQuant::Q4_0 => "q4_0",
        }
    }

    pub fn ggml(self) -> WeightType {
        match self {
            SynthQuant::F32 => WeightType::F32,
            SynthQuant::F16 => WeightType::F16,
            SynthQuant::Bf16 => WeightType::BF16,
            SynthQuant::Q8_0 => WeightType::Q8_0,
            SynthQuant::Q4_0 => WeightType::Q4_0,
        }
    }

    pub fn is_quantized(self) -> bool {
        matches!(self, SynthQuant::Q8_0 | SynthQuant::Q4_0)
    }
}

impl fmt::Display for SynthQuant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SynthQuant {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(SynthQuant::F32),
            "f16" => Ok(SynthQuant::F16),
            "bf16" => Ok(SynthQuant::Bf16),
            "q8_0" => Ok(SynthQuant::Q8_0),
            "q4_0" => Ok(SynthQuant::Q4_0),
            _ => Err(Error::InvalidArgument(format!(
                "unknown weight type `{s}` (f32, f16, bf16, q8_0, q4_0)"
            ))),
        }
    }
}

#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub preset: Preset,
    /// HF: the folder. GGUF: the file, or a folder to put `synthetic-{preset}-{quant}.gguf` in.
    pub out: PathBuf,
    pub format: SynthFormat,
    pub quant: SynthQuant,
    /// A GGUF vocabulary (`tokenizer.ggml.*`) for the real tokenizer; the tiny one when `None`.
    pub vocab: Option<PathBuf>,
    pub seed: u64,
}

#[derive(Clone, Debug)]
pub struct SynthReport {
    /// Every file written, the weights last.
    pub files: Vec<PathBuf>,
    /// Their total size.
    pub bytes: u64,
    /// Parameters in the weights (an untied head counted, a tied one not).
    pub parameters: u64,
    pub seconds: f64,
    /// The model's shape in the Hugging Face layout, special ids as written.
    pub config: DecoderConfig,
}

/// The tokenizer a synthetic model gets, as GGUF metadata and as a built tokenizer.
pub(crate) struct Vocab {
    /// `tokenizer.ggml.*` keys, sorted (the chat template is added by the GGUF writer).
    pub metadata: Vec<(String, Value)>,
    pub tokenizer: Tokenizer,
    pub ids: SpecialIds,
}

/// Special-token ids looked up by name in the written vocabulary.
#[derive(Clone, Debug)]
pub(crate) struct SpecialIds {
    pub bos: u32,
    /// End of turn first (`</s>`, `<|im_end|>`), then Qwen's `<|endoftext|>`.
    pub eos: Vec<u32>,
    /// generation_config.json's `pad_token_id`.
    pub gen_pad: u32,
    /// tokenizer_config.json's and GGUF's padding token.
    pub pad: u32,
}

/// Writes the model `opts` describes; see the module documentation.
pub fn synth(opts: &SynthOptions, progress: bool) -> Result<SynthReport> {
    let start = Instant::now();
    if opts.format == SynthFormat::Hf && opts.quant.is_quantized() {
        return Err(Error::InvalidArgument(format!(
            "{} weights need --format gguf (Hugging Face folders hold f32, f16 or bf16)",
            opts.quant
        )));
    }
    let vocab = build_vocab(opts.preset, opts.vocab.as_deref())?;
    let mut cfg = opts.preset.config(vocab.tokenizer.vocab_size());
    cfg.bos_token_id = Some(vocab.ids.bos);
    cfg.eos_token_ids = vocab.ids.eos.clone();
    cfg.validate()?;
    let specs = weights::specs(&cfg, opts.seed);
    let total: u64 = specs.iter().map(|s| s.elems() as u64).sum();
    debug_assert_eq!(total, cfg.parameter_count());
    let files = match opts.format {
        SynthFormat::Hf => hf::write(opts, &cfg, &vocab, &specs, progress)?,
        SynthFormat::Gguf => vec![gguf::write(opts, &cfg, &vocab, &specs, progress)?],
    };
    let bytes = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    Ok(SynthReport {
        files,
        bytes,
        parameters: total,
        seconds: start.elapsed().as_secs_f64(),
        config: cfg,
    })
}

/// The tokenizer metadata for `preset`: copied from `vocab_file` (Qwen2's placeholders renamed
/// to Qwen2.5's special tokens) or the family's tiny tokenizer, padded with unused `[PAD{id}]`
/// entries up to the embedding size, with the preset's special ids.
fn build_vocab(preset: Preset, vocab_file: Option<&Path>) -> Result<Vocab> {
    let family = preset.family();
    let (mut md, origin): (HashMap<String, Value>, PathBuf) = match vocab_file {
        Some(path) => (read_vocab_file(path, preset)?, path.to_path_buf()),
        None => {
            let tiny = Tokenizer::tiny(family)?;
            (
                tiny.to_gguf_metadata()?.into_iter().collect(),
                PathBuf::from(format!("<tiny {family:?} tokenizer>")),
            )
        }
    };
    let n_tokens = match md.get("tokenizer.ggml.tokens") {
        Some(Value::Array(a)) => a.len(),
        _ => return Err(Error::format(&origin, "no tokenizer.ggml.tokens array")),
    };
    let rows = preset.config(n_tokens).vocab_size;
    if n_tokens > rows {
        return Err(Error::format(
            &origin,
            format!(
                "the vocabulary has {n_tokens} tokens but {preset}'s embedding has only {rows} rows"
            ),
        ));
    }
    pad_vocab(&mut md, rows, &origin)?;

    let tokens = match md.get("tokenizer.ggml.tokens") {
        Some(Value::Array(a)) => a,
        _ => return Err(Error::format(&origin, "no tokenizer.ggml.tokens array")),
    };
    let find = |name: &str| -> Result<u32> {
        tokens
            .iter()
            .position(|t| matches!(t, Value::String(s) if s == name))
            .map(|i| i as u32)
            .ok_or_else(|| {
                Error::format(
                    &origin,
                    format!("the vocabulary has no `{name}` token, which {preset} needs"),
                )
            })
    };
    let ids = match family {
        // TinyLlama: generation_config pads with <unk> (0), tokenizer_config with </s>.
        TokenizerFamily::Llama => {
            let (bos, eos) = (find("<s>")?, find("</s>")?);
            SpecialIds {
                bos,
                eos: vec![eos],
                gen_pad: find("<unk>")?,
                pad: eos,
            }
        }
        // Qwen2.5-Instruct: <|endoftext|> is BOS (never added) and padding, <|im_end|> ends a turn.
        TokenizerFamily::Qwen2 => {
            let (text, im_end) = (find("<|endoftext|>")?, find("<|im_end|>")?);
            SpecialIds {
                bos: text,
                eos: vec![im_end, text],
                gen_pad: text,
                pad: text,
            }
        }
    };
    // As llama.cpp's converter writes them for the real models, whatever the vocab file said.
    md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(ids.bos));
    md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(ids.eos[0]));
    md.insert(
        "tokenizer.ggml.padding_token_id".into(),
        Value::U32(ids.pad),
    );
    md.insert(
        "tokenizer.ggml.add_bos_token".into(),
        Value::Bool(family == TokenizerFamily::Llama),
    );
    md.insert("tokenizer.ggml.add_eos_token".into(), Value::Bool(false));

    let tokenizer = Tokenizer::from_gguf_metadata(&md, &origin)?;
    if tokenizer.vocab_size() != rows {
        return Err(Error::format(
            &origin,
            format!(
                "the rebuilt tokenizer has {} tokens, expected {rows}",
                tokenizer.vocab_size()
            ),
        ));
    }
    let mut metadata: Vec<(String, Value)> = md.into_iter().collect();
    // Sorted, so that the same options always give the same file.
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Vocab {
        metadata,
        tokenizer,
        ids,
    })
}

/// The `tokenizer.*` keys of a GGUF vocabulary file, after checking its family.
fn read_vocab_file(path: &Path, preset: Preset) -> Result<HashMap<String, Value>> {
    let content = bakeoff_engine::loader::gguf::GgufContent::read_file(path)?;
    let model = match content.metadata.get("tokenizer.ggml.model") {
        Some(Value::String(m)) => m.clone(),
        _ => {
            return Err(Error::format(
                path,
                "no tokenizer.ggml.model: this GGUF file carries no tokenizer",
            ));
        }
    };
    let family = match model.as_str() {
        "llama" => TokenizerFamily::Llama,
        "gpt2" => TokenizerFamily::Qwen2,
        other => {
            return Err(Error::format(
                path,
                format!("tokenizer model `{other}` is neither Llama's nor Qwen2's"),
            ));
        }
    };
    if family != preset.family() {
        let (have, want) = match family {
            TokenizerFamily::Llama => ("a Llama SentencePiece", "ggml-vocab-qwen2.gguf"),
            TokenizerFamily::Qwen2 => (
                "a byte-level BPE (Qwen2-style)",
                "ggml-vocab-llama-spm.gguf",
            ),
        };
        return Err(Error::InvalidArgument(format!(
            "--vocab {}: {have} vocabulary does not fit preset {preset} ({} tokenizer); use {want}",
            path.display(),
            preset.reference()
        )));
    }
    let mut md: HashMap<String, Value> = content
        .metadata
        .into_iter()
        .filter(|(k, _)| k.starts_with("tokenizer.ggml."))
        .collect();
    if family == TokenizerFamily::Qwen2 {
        // Qwen2-era vocabularies hold [PAD…] where Qwen2.5 names its tool and vision tokens.
        upgrade_to_qwen25(&mut md).map_err(|e| Error::format(path, e.to_string()))?;
    }
    Ok(md)
}

/// A bar over the bytes of tensor data, when asked for.
fn bytes_bar(show: bool, total: u64) -> Option<indicatif::ProgressBar> {
    if !show {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {elapsed}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("synth");
    Some(bar)
}

/// Writes every tensor's data in `specs` order, with the bar advancing per chunk.
fn write_tensor_data(
    w: &mut dyn std::io::Write,
    specs: &[&weights::Spec],
    quant_of: &dyn Fn(&weights::Spec) -> SynthQuant,
    permute_of: &dyn Fn(&weights::Spec) -> Option<usize>,
    after_each: &dyn Fn(&mut dyn std::io::Write, u64) -> Result<()>,
    progress: bool,
) -> Result<()> {
    let mut total = 0u64;
    for s in specs {
        total += (weights::row_bytes(quant_of(s), s.cols)? * s.rows) as u64;
    }
    let bar = bytes_bar(progress, total);
    let tick = |n: u64| {
        if let Some(b) = &bar {
            b.inc(n);
        }
    };
    for s in specs {
        let n = weights::write_tensor(w, s, quant_of(s), permute_of(s), &tick)?;
        after_each(w, n)?;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(())
}
