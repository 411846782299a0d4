//! A Hugging Face model folder as the real repositories ship it: config.json,
//! generation_config.json, tokenizer.json, tokenizer_config.json and one model.safetensors.
//!
//! The safetensors file is streamed like the GGUF one (its header only needs shapes and types).
//! Tensors are laid out in name order, as the `safetensors` library itself writes a file whose
//! tensors share one type; norms take the same type as the matrices, as in the real bf16 repos.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value as Json, json};

use super::weights::{Spec, row_bytes};
use super::{Preset, SynthOptions, SynthQuant, Vocab, write_tensor_data};
use bakeoff_engine::models::{Arch, DecoderConfig};
use bakeoff_engine::{Error, Result};
use bakeoff_quantize::gguf_write::write_atomically;

fn torch_dtype(q: SynthQuant) -> &'static str {
    match q {
        SynthQuant::F32 => "float32",
        SynthQuant::F16 => "float16",
        _ => "bfloat16",
    }
}

fn safetensors_dtype(q: SynthQuant) -> Result<&'static str> {
    match q {
        SynthQuant::F32 => Ok("F32"),
        SynthQuant::F16 => Ok("F16"),
        SynthQuant::Bf16 => Ok("BF16"),
        other => Err(Error::InvalidArgument(format!(
            "safetensors cannot hold {other} weights"
        ))),
    }
}

pub(super) fn write(
    opts: &SynthOptions,
    cfg: &DecoderConfig,
    vocab: &Vocab,
    specs: &[Spec],
    progress: bool,
) -> Result<Vec<PathBuf>> {
    let dir = &opts.out;
    if dir.is_file() {
        return Err(Error::InvalidArgument(format!(
            "{} is a file; --format hf writes a folder",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    let mut put_json = |name: &str, v: &Json| -> Result<()> {
        let p = dir.join(name);
        let text = serde_json::to_string_pretty(v)
            .map_err(|e| Error::InvalidArgument(format!("{name}: {e}")))?;
        std::fs::write(&p, text + "\n").map_err(|e| Error::io(&p, e))?;
        files.push(p);
        Ok(())
    };
    put_json("config.json", &config_json(opts.preset, cfg, opts.quant))?;
    put_json("generation_config.json", &generation_config(cfg, vocab))?;
    put_json(
        "tokenizer_config.json",
        &tokenizer_config(opts.preset, cfg, vocab),
    )?;
    let tok = dir.join("tokenizer.json");
    vocab.tokenizer.save(&tok)?;
    files.push(tok);
    let weights = dir.join("model.safetensors");
    write_safetensors(&weights, specs, opts.quant, progress)?;
    files.push(weights);
    Ok(files)
}

fn write_safetensors(path: &Path, specs: &[Spec], q: SynthQuant, progress: bool) -> Result<()> {
    let dtype = safetensors_dtype(q)?;
    let mut order: Vec<&Spec> = specs.iter().collect();
    order.sort_by(|a, b| a.name.cmp(&b.name));
    let mut header: BTreeMap<String, Json> = BTreeMap::new();
    header.insert("__metadata__".into(), json!({ "format": "pt" }));
    let mut offset = 0usize;
    for s in &order {
        let len = row_bytes(q, s.cols)? * s.rows;
        header.insert(
            s.name.clone(),
            json!({ "dtype": dtype, "shape": s.shape(), "data_offsets": [offset, offset + len] }),
        );
        offset += len;
    }
    let mut text = serde_json::to_string(&header)
        .map_err(|e| Error::InvalidArgument(format!("safetensors header: {e}")))?;
    // The data must start 8-byte aligned; the format pads the header with spaces.
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    write_atomically(path, |w| {
        let io = |e: std::io::Error| Error::io(path, e);
        w.write_all(&(text.len() as u64).to_le_bytes())
            .map_err(io)?;
        w.write_all(text.as_bytes()).map_err(io)?;
        write_tensor_data(w, &order, &|_| q, &|_| None, &|_, _| Ok(()), progress)
    })
}

/// The real config.json's fields (keys in the alphabetical order transformers writes).
fn config_json(preset: Preset, cfg: &DecoderConfig, q: SynthQuant) -> Json {
    let bos = cfg.bos_token_id;
    let eos = cfg.eos_token_ids.first().copied();
    match cfg.arch {
        Arch::Llama => json!({
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": false,
            "attention_dropout": 0.0,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "hidden_act": "silu",
            "hidden_size": cfg.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": cfg.intermediate_size,
            "max_position_embeddings": cfg.max_context,
            "model_type": "llama",
            "num_attention_heads": cfg.n_heads,
            "num_hidden_layers": cfg.n_layers,
            "num_key_value_heads": cfg.n_kv_heads,
            "pretraining_tp": 1,
            "rms_norm_eps": cfg.rms_eps as f64,
            "rope_scaling": null,
            "rope_theta": cfg.rope_theta as f64,
            "tie_word_embeddings": cfg.tied_embeddings,
            "torch_dtype": torch_dtype(q),
            "use_cache": true,
            "vocab_size": cfg.vocab_size,
        }),
        Arch::Qwen2 => json!({
            "architectures": ["Qwen2ForCausalLM"],
            "attention_dropout": 0.0,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "hidden_act": "silu",
            "hidden_size": cfg.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": cfg.intermediate_size,
            "max_position_embeddings": cfg.max_context,
            "max_window_layers": preset.max_window_layers(),
            "model_type": "qwen2",
            "num_attention_heads": cfg.n_heads,
            "num_hidden_layers": cfg.n_layers,
            "num_key_value_heads": cfg.n_kv_heads,
            "rms_norm_eps": cfg.rms_eps as f64,
            "rope_theta": cfg.rope_theta as f64,
            "sliding_window": cfg.max_context,
            "tie_word_embeddings": cfg.tied_embeddings,
            "torch_dtype": torch_dtype(q),
            "use_cache": true,
            "use_sliding_window": false,
            "vocab_size": cfg.vocab_size,
        }),
    }
}

/// The real generation_config.json, with ids from the written tokenizer.
fn generation_config(cfg: &DecoderConfig, vocab: &Vocab) -> Json {
    let ids = &vocab.ids;
    match cfg.arch {
        Arch::Llama => json!({
            "bos_token_id": ids.bos,
            "eos_token_id": ids.eos[0],
            "max_length": cfg.max_context,
            "pad_token_id": ids.gen_pad,
        }),
        Arch::Qwen2 => json!({
            "bos_token_id": ids.bos,
            "do_sample": true,
            "eos_token_id": ids.eos,
            "pad_token_id": ids.gen_pad,
            "repetition_penalty": 1.05,
            "temperature": 0.7,
            "top_k": 20,
            "top_p": 0.8,
        }),
    }
}

/// The real tokenizer_config.json's fields, chat template included.
fn tokenizer_config(preset: Preset, cfg: &DecoderConfig, vocab: &Vocab) -> Json {
    let name = |id: u32| vocab.tokenizer.id_to_token(id);
    let template = preset.chat_template();
    match cfg.arch {
        Arch::Llama => json!({
            "add_bos_token": true,
            "add_eos_token": false,
            "bos_token": name(vocab.ids.bos),
            "chat_template": template,
            "clean_up_tokenization_spaces": false,
            "eos_token": name(vocab.ids.eos[0]),
            "legacy": false,
            "model_max_length": cfg.max_context,
            "pad_token": name(vocab.ids.pad),
            "padding_side": "right",
            "sp_model_kwargs": {},
            "tokenizer_class": "LlamaTokenizer",
            "unk_token": vocab.tokenizer.unk_id().and_then(name),
            "use_default_system_prompt": false,
        }),
        Arch::Qwen2 => json!({
            "add_bos_token": false,
            "add_prefix_space": false,
            "bos_token": null,
            "chat_template": template,
            "clean_up_tokenization_spaces": false,
            "eos_token": name(vocab.ids.eos[0]),
            "errors": "replace",
            "model_max_length": 131072,
            "pad_token": name(vocab.ids.pad),
            "split_special_tokens": false,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": null,
        }),
    }
}
