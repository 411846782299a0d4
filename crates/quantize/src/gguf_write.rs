//! Writing GGUF files as llama.cpp does: the v3 header with its metadata and tensor table,
//! llama.cpp's architecture keys, vocabulary padding, Llama's Q/K row order, and an atomic
//! write. Shared by `bakeoff quantize` and `bakeoff synth`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bakeoff_engine::models::DecoderConfig;
use bakeoff_engine::{Error, Result};
use candle_core::quantized::gguf_file::Value;

pub const ALIGNMENT: u64 = 32;

/// llama.cpp's `{arch}.*` hyper-parameter keys for `cfg` (shared with `bakeoff quantize`).
pub fn arch_metadata(cfg: &DecoderConfig) -> Vec<(String, Value)> {
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
pub struct TensorEntry<'a> {
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
pub fn encode_header(
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
/// Token type of padding entries (llama.cpp's `LLAMA_TOKEN_TYPE_UNUSED`).
const TOKEN_TYPE_UNUSED: i32 = 5;

/// Appends unused `[PAD{id}]` tokens until there are `rows`: with random weights the model can
/// emit any embedding row, and every emitted id must decode.
pub fn pad_vocab(md: &mut HashMap<String, Value>, rows: usize, origin: &Path) -> Result<()> {
    let n = match md.get("tokenizer.ggml.tokens") {
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    };
    if n >= rows {
        return Ok(());
    }
    let extend = |md: &mut HashMap<String, Value>,
                  key: &str,
                  make: &dyn Fn(usize, Option<&Value>) -> Value|
     -> Result<()> {
        match md.get_mut(key) {
            Some(Value::Array(a)) if a.len() == n => {
                let first = a.first().cloned();
                a.extend((n..rows).map(|id| make(id, first.as_ref())));
                Ok(())
            }
            Some(_) => Err(Error::format(
                origin,
                format!("{key} does not have one entry per token"),
            )),
            None => Ok(()),
        }
    };
    extend(md, "tokenizer.ggml.tokens", &|id, _| {
        Value::String(format!("[PAD{id}]"))
    })?;
    // GGUF arrays are homogeneous: pad with the integer type the file already uses.
    extend(md, "tokenizer.ggml.token_type", &|_, first| match first {
        Some(Value::U32(_)) => Value::U32(TOKEN_TYPE_UNUSED as u32),
        Some(Value::I8(_)) => Value::I8(TOKEN_TYPE_UNUSED as i8),
        Some(Value::U8(_)) => Value::U8(TOKEN_TYPE_UNUSED as u8),
        _ => Value::I32(TOKEN_TYPE_UNUSED),
    })?;
    extend(md, "tokenizer.ggml.scores", &|_, first| match first {
        Some(Value::F64(_)) => Value::F64(0.0),
        _ => Value::F32(0.0),
    })?;
    Ok(())
}

/// Writes `path` through `{path}.partial` and a rename, so an interrupted run never leaves a
/// file that looks complete (the demo reuses existing files).
pub fn write_atomically(
    path: &Path,
    f: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<()>,
) -> Result<()> {
    use std::io::Write;
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let file = std::fs::File::create(&partial).map_err(|e| Error::io(&partial, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let result = f(&mut w).and_then(|()| w.flush().map_err(|e| Error::io(&partial, e)));
    drop(w);
    match result {
        Ok(()) => std::fs::rename(&partial, path).map_err(|e| Error::io(path, e)),
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// The row of the Hugging Face Q or K weight that lands at row `r` of the GGUF tensor.
///
/// llama.cpp's `convert_hf_to_gguf.py` stores Llama's Q and K as
/// `w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2).reshape(rows, cols)`, which turns
/// Hugging Face's half-split rotary pairs (`i`, `i + d/2`) into adjacent ones (`2i`, `2i+1`) for
/// llama.cpp's interleaved RoPE. Output row `(h, i, j)` of shape `(n_head, d/2, 2)` is input row
/// `(h, j, i)` of shape `(n_head, 2, d/2)`.
pub fn llama_qk_source_row(r: usize, rows: usize, n_head: usize) -> usize {
    let hd = rows / n_head;
    let half = hd / 2;
    let (h, within) = (r / hd, r % hd);
    let (i, j) = (within / 2, within % 2);
    h * hd + j * half + i
}
