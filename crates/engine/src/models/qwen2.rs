//! Qwen2 (`model_type: qwen2`): Qwen2 and Qwen2.5 Instruct.
//!
//! Llama's layout plus biases on the Q, K and V projections, RoPE θ = 1e6, RMSNorm ε = 1e-6 and
//! (for the small models) an output head tied to the token embeddings. Reference:
//! `transformers/models/qwen2/modeling_qwen2.py`. The forward pass lives in [`super::decoder`].

use super::{Arch, DecoderConfig, GgufMeta, HfCommon, RopeStyle, llama::common_from_gguf};
use crate::{Error, Result};

pub fn config_from_hf(json: &serde_json::Value) -> Result<DecoderConfig> {
    let c = HfCommon::parse(json)?;
    if json.get("use_sliding_window").and_then(|v| v.as_bool()) == Some(true) {
        return Err(Error::InvalidArgument(
            "config.json: Qwen2 sliding-window attention is not supported".into(),
        ));
    }
    Ok(DecoderConfig {
        arch: Arch::Qwen2,
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        n_layers: c.num_hidden_layers,
        n_heads: c.num_attention_heads,
        n_kv_heads: c.num_key_value_heads.unwrap_or(c.num_attention_heads),
        head_dim: c.head_dim(),
        max_context: c.max_position_embeddings.unwrap_or(32768),
        rope_theta: c.rope_theta.unwrap_or(1_000_000.0),
        rms_eps: c.rms_norm_eps.unwrap_or(1e-6),
        qkv_bias: true,
        tied_embeddings: c.tie_word_embeddings.unwrap_or(false),
        rope_style: RopeStyle::Neox,
        rope_scaling: c.rope_scaling()?,
        bos_token_id: c.bos_token_id,
        eos_token_ids: c.eos_ids(),
    })
}

/// Qwen2 GGUF files keep Hugging Face's rotary layout (llama.cpp runs them with NEOX RoPE).
pub fn config_from_gguf(md: &GgufMeta<'_>) -> Result<DecoderConfig> {
    common_from_gguf(md, "qwen2", Arch::Qwen2, RopeStyle::Neox, 1_000_000.0, true)
}

/// Qwen2.5-Instruct's generation_config lists both of these as end-of-generation tokens; GGUF
/// metadata names only one, so they are added by text.
pub const END_OF_TURN_TOKENS: &[&str] = &["<|im_end|>", "<|endoftext|>"];
