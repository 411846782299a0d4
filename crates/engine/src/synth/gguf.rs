//! One self-contained GGUF file, as llama.cpp's `convert_hf_to_gguf.py` (and `llama-quantize
//! --pure`) would write the real model.
//!
//! candle's `gguf_file::write` needs every tensor in memory at once (6 GB for Qwen2.5-1.5B in
//! f32), so this writer streams instead: tensor sizes follow from shapes and types, which fixes
//! every offset before the first byte of data is generated. Format: GGUF v3, 32-byte alignment.

use std::io::Write;
use std::path::PathBuf;

use candle_core::quantized::gguf_file::Value;

use super::weights::{Spec, row_bytes};
use super::{SynthOptions, SynthQuant, Vocab, write_atomically, write_tensor_data};
use crate::models::{Arch, DecoderConfig, gguf_tensor_name};
use crate::{Error, Result};

pub(crate) const ALIGNMENT: u64 = 32;

/// llama.cpp's `llama_ftype` for a file whose matrices are all `q`.
fn file_type(q: SynthQuant) -> u32 {
    match q {
        SynthQuant::F32 => 0,
        SynthQuant::F16 => 1,
        SynthQuant::Q4_0 => 2,
        SynthQuant::Q8_0 => 7,
        SynthQuant::Bf16 => 32,
    }
}

/// ggml's type ids (`enum ggml_type`).
fn ggml_type_id(q: SynthQuant) -> u32 {
    match q {
        SynthQuant::F32 => 0,
        SynthQuant::F16 => 1,
        SynthQuant::Q4_0 => 2,
        SynthQuant::Q8_0 => 8,
        SynthQuant::Bf16 => 30,
    }
}

/// Where the file goes: `out` itself, or a default name inside `out` when it is a folder.
pub(super) fn output_path(opts: &SynthOptions) -> PathBuf {
    let as_dir = opts.out.is_dir()
        || opts
            .out
            .as_os_str()
            .to_string_lossy()
            .ends_with(std::path::MAIN_SEPARATOR);
    if as_dir {
        opts.out
            .join(format!("synthetic-{}-{}.gguf", opts.preset, opts.quant))
    } else {
        opts.out.clone()
    }
}

/// The storage type of one tensor.
///
/// This is llama.cpp's `--pure` layout: every 2-D matrix, the token embedding and the output
/// head included, takes the requested type (llama-quantize's default mixes would keep the head
/// at a higher precision and so would not measure one type); 1-D tensors (norms, biases) stay
/// F32 as llama.cpp always keeps them.
fn tensor_type(s: &Spec, q: SynthQuant) -> SynthQuant {
    if s.one_d { SynthQuant::F32 } else { q }
}

/// For Llama, Q and K rows are permuted into llama.cpp's interleaved rotary layout; Qwen2 runs
/// NEOX RoPE in llama.cpp and keeps Hugging Face's layout.
fn permutation(s: &Spec, cfg: &DecoderConfig) -> Option<usize> {
    if cfg.arch != Arch::Llama {
        return None;
    }
    if s.name.ends_with("self_attn.q_proj.weight") {
        Some(cfg.n_heads)
    } else if s.name.ends_with("self_attn.k_proj.weight") {
        Some(cfg.n_kv_heads)
    } else {
        None
    }
}

pub(super) fn write(
    opts: &SynthOptions,
    cfg: &DecoderConfig,
    vocab: &Vocab,
    specs: &[Spec],
    progress: bool,
) -> Result<PathBuf> {
    let path = output_path(opts);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let metadata = metadata(opts, cfg, vocab);
    let mut infos = Vec::with_capacity(specs.len());
    let mut offset = 0u64;
    for s in specs {
        let name =
            gguf_tensor_name(&s.name).ok_or_else(|| Error::tensor(&s.name, "has no GGUF name"))?;
        let t = tensor_type(s, opts.quant);
        let size = (row_bytes(t, s.cols).map_err(|e| Error::tensor(&s.name, e.to_string()))?
            * s.rows) as u64;
        infos.push((name, s, t, offset, size));
        offset += size.div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    write_atomically(&path, |w| {
        let io = |e: std::io::Error| Error::io(&path, e);
        let entries: Vec<TensorEntry<'_>> = infos
            .iter()
            .map(|(name, s, t, off, _)| TensorEntry {
                name,
                dims: s.shape(),
                type_id: ggml_type_id(*t),
                offset: *off,
            })
            .collect();
        let header = encode_header(&metadata, &entries).map_err(|m| Error::format(&path, m))?;
        w.write_all(&header).map_err(io)?;
        let order: Vec<&Spec> = infos.iter().map(|i| i.1).collect();
        let pad = |w: &mut dyn Write, n: u64| -> Result<()> {
            let fill = (n.div_ceil(ALIGNMENT) * ALIGNMENT - n) as usize;
            w.write_all(&[0u8; ALIGNMENT as usize][..fill]).map_err(io)
        };
        write_tensor_data(
            w,
            &order,
            &|s| tensor_type(s, opts.quant),
            &|s| permutation(s, cfg),
            &pad,
            progress,
        )
    })?;
    Ok(path)
}

/// llama.cpp's keys for the architecture, then the tokenizer's, then the real chat template.
fn metadata(opts: &SynthOptions, cfg: &DecoderConfig, vocab: &Vocab) -> Vec<(String, Value)> {
    let arch = cfg.arch.name();
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (
            "general.name".into(),
            Value::String(format!(
                "synthetic {} (random weights, seed {})",
                opts.preset.reference(),
                opts.seed
            )),
        ),
        (
            "general.file_type".into(),
            Value::U32(file_type(opts.quant)),
        ),
        ("general.quantization_version".into(), Value::U32(2)),
        ("general.alignment".into(), Value::U32(ALIGNMENT as u32)),
        (
            "bakeoff.synth.preset".into(),
            Value::String(opts.preset.name().into()),
        ),
        ("bakeoff.synth.seed".into(), Value::U64(opts.seed)),
    ];
    md.extend(arch_metadata(cfg));
    md.extend(vocab.metadata.iter().cloned());
    md.push((
        "tokenizer.chat_template".into(),
        Value::String(opts.preset.chat_template().into()),
    ));
    md
}

/// llama.cpp's `{arch}.*` hyper-parameter keys for `cfg` (shared with `bakeoff quantize`).
pub(crate) fn arch_metadata(cfg: &DecoderConfig) -> Vec<(String, Value)> {
    let arch = cfg.arch.name();
    let u = |v: usize| Value::U32(v as u32);
    let k = |s: &str| format!("{arch}.{s}");
    vec![
        (k("vocab_size"), u(cfg.vocab_size)),
        (k("context_length"), u(cfg.max_context)),
        (k("embedding_length"), u(cfg.hidden_size)),
        (k("block_count"), u(cfg.n_layers)),
        (k("feed_forward_length"), u(cfg.intermediate_size)),
        (k("attention.head_count"), u(cfg.n_heads)),
        (k("attention.head_count_kv"), u(cfg.n_kv_heads)),
        (k("rope.freq_base"), Value::F32(cfg.rope_theta)),
        (k("rope.dimension_count"), u(cfg.head_dim)),
        (
            k("attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_eps),
        ),
    ]
}

/// One entry of a GGUF file's tensor table.
pub(crate) struct TensorEntry<'a> {
    pub name: &'a str,
    /// Row-major (outermost first), as bakeoff addresses tensors.
    pub dims: Vec<usize>,
    /// ggml's `enum ggml_type` id.
    pub type_id: u32,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

/// A GGUF v3 header (magic, counts, metadata, tensor table), padded to [`ALIGNMENT`] so the
/// tensor data can follow directly (shared with `bakeoff quantize`).
pub(crate) fn encode_header(
    metadata: &[(String, Value)],
    tensors: &[TensorEntry<'_>],
) -> std::result::Result<Vec<u8>, String> {
    let mut header = Vec::new();
    header.extend_from_slice(b"GGUF");
    header.extend_from_slice(&3u32.to_le_bytes());
    header.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    header.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_string(&mut header, k);
        match v {
            // An empty array has no element to take its type from, and llama.cpp checks the
            // type of the tokenizer arrays (a BPE vocabulary without merges still needs an
            // empty *string* array), so the type comes from the key.
            Value::Array(a) if a.is_empty() => {
                header.extend_from_slice(&type_id(v).to_le_bytes());
                header.extend_from_slice(&empty_array_type(k).to_le_bytes());
                header.extend_from_slice(&0u64.to_le_bytes());
            }
            _ => put_value(&mut header, v, true).map_err(|m| format!("metadata `{k}`: {m}"))?,
        }
    }
    for t in tensors {
        put_string(&mut header, t.name);
        header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        // ggml lists dimensions innermost first.
        for d in t.dims.iter().rev() {
            header.extend_from_slice(&(*d as u64).to_le_bytes());
        }
        header.extend_from_slice(&t.type_id.to_le_bytes());
        header.extend_from_slice(&t.offset.to_le_bytes());
    }
    header.resize(
        (header.len() as u64).div_ceil(ALIGNMENT) as usize * ALIGNMENT as usize,
        0,
    );
    Ok(header)
}

/// The element type of an empty array under `key`: the GGUF spec's for the tokenizer arrays,
/// U32 (as candle writes empty arrays) otherwise.
fn empty_array_type(key: &str) -> u32 {
    match key {
        "tokenizer.ggml.tokens" | "tokenizer.ggml.merges" => type_id(&Value::String(String::new())),
        "tokenizer.ggml.scores" => type_id(&Value::F32(0.0)),
        "tokenizer.ggml.token_type" => type_id(&Value::I32(0)),
        _ => type_id(&Value::U32(0)),
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// GGUF's value type ids.
fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

/// A value with its type id (`tagged`) or, inside an array, without.
fn put_value(out: &mut Vec<u8>, v: &Value, tagged: bool) -> std::result::Result<(), String> {
    if tagged {
        out.extend_from_slice(&type_id(v).to_le_bytes());
    }
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::Array(a) => {
            // An empty array's element type is arbitrary; U32 as candle writes it.
            let ty = a.first().map_or(4, type_id);
            if a.iter().any(|x| type_id(x) != ty) {
                return Err("array elements of different types".into());
            }
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for x in a {
                // Nested arrays carry their own element type and length, but no tag.
                put_value(out, x, false)?;
            }
        }
    }
    Ok(())
}
