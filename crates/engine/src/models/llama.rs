//! Llama (`model_type: llama`): TinyLlama-1.1B-Chat, Llama-2 and relatives.
//!
//! Pre-norm decoder with RMSNorm, rotary embeddings (θ = 10000 for TinyLlama), grouped-query
//! attention without biases, a SwiGLU MLP and an untied output head. Reference:
//! `transformers/models/llama/modeling_llama.py`. The forward pass lives in [`super::decoder`].

use super::{Arch, DecoderConfig, GgufMeta, HfCommon, RopeScaling, RopeStyle};
use crate::Result;

pub fn config_from_hf(json: &serde_json::Value) -> Result<DecoderConfig> {
    let c = HfCommon::parse(json)?;
    Ok(DecoderConfig {
        arch: Arch::Llama,
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        n_layers: c.num_hidden_layers,
        n_heads: c.num_attention_heads,
        n_kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
        head_dim: c.head_dim(),
        max_context: c.max_position_embeddings.unwrap_or(2048),
        rope_theta: c.rope_theta.unwrap_or(10_000.0),
        rms_eps: c.rms_norm_eps.unwrap_or(1e-6),
        qkv_bias: json
            .get("attention_bias")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        tied_embeddings: c.tie_word_embeddings.unwrap_or(false),
        rope_style: RopeStyle::Neox,
        rope_scaling: c.rope_scaling()?,
        bos_token_id: c.bos_token_id,
        eos_token_ids: c.eos_ids(),
    })
}

/// llama.cpp's converter permutes Llama's Q and K rows for interleaved RoPE, hence the style.
pub fn config_from_gguf(md: &GgufMeta<'_>) -> Result<DecoderConfig> {
    common_from_gguf(
        md,
        "llama",
        Arch::Llama,
        RopeStyle::Interleaved,
        10_000.0,
        false,
    )
}

/// Shared by both architectures: llama.cpp names the keys after `general.architecture`.
pub(crate) fn common_from_gguf(
    md: &GgufMeta<'_>,
    prefix: &str,
    arch: Arch,
    rope_style: RopeStyle,
    default_theta: f32,
    qkv_bias: bool,
) -> Result<DecoderConfig> {
    let k = |s: &str| format!("{prefix}.{s}");
    let hidden = md.usize(&k("embedding_length"))?;
    let n_heads = md.usize(&k("attention.head_count"))?;
    let n_kv_heads = md
        .opt_usize(&k("attention.head_count_kv"))?
        .unwrap_or(n_heads);
    let head_dim = md
        .opt_usize(&k("attention.key_length"))?
        .unwrap_or(hidden / n_heads.max(1));
    // Partial rotary embeddings (a rope dimension below the head size) belong to other
    // architectures; refusing them is better than rotating the wrong number of dimensions.
    if let Some(rd) = md.opt_usize(&k("rope.dimension_count"))?
        && rd != head_dim
    {
        return Err(crate::Error::InvalidArgument(format!(
            "GGUF metadata `{prefix}.rope.dimension_count` is {rd} but heads have {head_dim} \
             dimensions: partial rotary embeddings are not supported"
        )));
    }
    let vocab_size = match md.opt_usize(&k("vocab_size"))? {
        Some(v) => v,
        None => match md.map.get("tokenizer.ggml.tokens") {
            Some(candle_core::quantized::gguf_file::Value::Array(a)) => a.len(),
            _ => 0,
        },
    };
    let eos = md.opt_usize("tokenizer.ggml.eos_token_id")?;
    let mut eos_token_ids: Vec<u32> = eos.into_iter().map(|e| e as u32).collect();
    if let Some(eot) = md.opt_usize("tokenizer.ggml.eot_token_id")?
        && !eos_token_ids.contains(&(eot as u32))
    {
        eos_token_ids.push(eot as u32);
    }
    Ok(DecoderConfig {
        arch,
        vocab_size,
        hidden_size: hidden,
        intermediate_size: md.usize(&k("feed_forward_length"))?,
        n_layers: md.usize(&k("block_count"))?,
        n_heads,
        n_kv_heads,
        head_dim,
        max_context: md.opt_usize(&k("context_length"))?.unwrap_or(2048),
        rope_theta: md.opt_f32(&k("rope.freq_base"))?.unwrap_or(default_theta),
        rms_eps: md.f32(&k("attention.layer_norm_rms_epsilon"))?,
        qkv_bias,
        // Decided by the loader from whether `output.weight` exists.
        tied_embeddings: false,
        rope_style,
        rope_scaling: rope_scaling_from_gguf(md, prefix)?,
        bos_token_id: md
            .opt_usize("tokenizer.ggml.bos_token_id")?
            .map(|b| b as u32),
        eos_token_ids,
    })
}

/// `{arch}.rope.scaling.*` of GGUF metadata. Llama 3.x scaling usually arrives as the
/// `rope_freqs.weight` tensor instead, which the loader reads (see `loader::apply_rope_freqs`).
fn rope_scaling_from_gguf(md: &GgufMeta<'_>, prefix: &str) -> Result<RopeScaling> {
    let key = format!("{prefix}.rope.scaling.type");
    if !md.map.contains_key(&key) {
        return Ok(RopeScaling::None);
    }
    let factor = || -> Result<f32> {
        md.opt_f32(&format!("{prefix}.rope.scaling.factor"))?
            .ok_or_else(|| {
                crate::Error::InvalidArgument(format!(
                    "GGUF metadata has `{key}` but no `{prefix}.rope.scaling.factor`"
                ))
            })
    };
    match md.str(&key)? {
        "none" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear { factor: factor()? }),
        other => Err(crate::Error::InvalidArgument(format!(
            "GGUF metadata `{key}` is `{other}`: bakeoff runs `none` and `linear` (and Llama 3 \
             scaling given as the rope_freqs.weight tensor)"
        ))),
    }
}
