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
use super::{SynthOptions, SynthQuant, Vocab, write_tensor_data};
use bakeoff_engine::models::{Arch, DecoderConfig, gguf_tensor_name};
use bakeoff_engine::{Error, Result};
use bakeoff_quantize::gguf_write::{
    ALIGNMENT, TensorEntry, arch_metadata, encode_header, write_atomically,
};

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
