//! Architecture code. Each supported Hugging Face `model_type` has one file that turns its
//! `config.json` or GGUF metadata into a [`DecoderConfig`]; the transformer itself is written once
//! in [`decoder`] and serves every architecture, file format and backend.

pub mod decoder;
pub mod llama;
pub mod qwen2;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Qwen2,
}

impl Arch {
    /// Maps a Hugging Face `model_type` or GGUF `general.architecture` to an architecture.
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            other => Err(Error::UnsupportedArch(other.to_string())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeStyle {
    /// Hugging Face layout: dimension `i` rotates with `i + head_dim/2`.
    Neox,
    /// GPT-J layout: dimension `2i` rotates with `2i+1`. llama.cpp's converter permutes the Q and K
    /// weights of Llama models into this layout, so Llama GGUF files need it.
    Interleaved,
}

/// Everything the shared decoder needs to know about a model's shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecoderConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub max_context: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    pub qkv_bias: bool,
    pub tied_embeddings: bool,
    pub rope_style: RopeStyle,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl DecoderConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidArgument(format!("model config: {msg}")));
        if self.vocab_size == 0 || self.hidden_size == 0 || self.n_layers == 0 {
            return bad("vocab_size, hidden_size and num_hidden_layers must be positive".into());
        }
        if self.n_heads == 0
            || self.n_kv_heads == 0
            || !self.n_heads.is_multiple_of(self.n_kv_heads)
        {
            return bad(format!(
                "num_attention_heads ({}) must be a positive multiple of num_key_value_heads ({})",
                self.n_heads, self.n_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim ({}) must be even", self.head_dim));
        }
        if self.rope_theta.is_nan()
            || self.rope_theta <= 0.0
            || self.rms_eps.is_nan()
            || self.rms_eps <= 0.0
        {
            return bad("rope_theta and rms_norm_eps must be positive".into());
        }
        Ok(())
    }

    /// Parameters counted from the shapes (what the weights hold, biases included).
    pub fn parameter_count(&self) -> u64 {
        let h = self.hidden_size as u64;
        let q = (self.n_heads * self.head_dim) as u64;
        let kv = (self.n_kv_heads * self.head_dim) as u64;
        let i = self.intermediate_size as u64;
        let v = self.vocab_size as u64;
        let attn = h * q + 2 * h * kv + q * h + if self.qkv_bias { q + 2 * kv } else { 0 };
        let mlp = 3 * h * i;
        let per_layer = attn + mlp + 2 * h;
        let head = if self.tied_embeddings { 0 } else { v * h };
        v * h + self.n_layers as u64 * per_layer + h + head
    }

    /// Reads the architecture from a parsed `config.json` and hands it to the right file.
    pub fn from_hf_json(json: &serde_json::Value) -> Result<Self> {
        let model_type = json
            .get("model_type")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::InvalidArgument("config.json has no `model_type`".into()))?;
        let cfg = match Arch::from_name(model_type)? {
            Arch::Llama => llama::config_from_hf(json)?,
            Arch::Qwen2 => qwen2::config_from_hf(json)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads the architecture from GGUF metadata and hands it to the right file.
    pub fn from_gguf(md: &GgufMeta<'_>) -> Result<Self> {
        let arch = md.str("general.architecture")?;
        let cfg = match Arch::from_name(arch)? {
            Arch::Llama => llama::config_from_gguf(md)?,
            Arch::Qwen2 => qwen2::config_from_gguf(md)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Typed access to GGUF metadata with errors that name the missing key.
pub struct GgufMeta<'a> {
    pub map: &'a std::collections::HashMap<String, candle_core::quantized::gguf_file::Value>,
}

impl GgufMeta<'_> {
    fn get(&self, key: &str) -> Result<&candle_core::quantized::gguf_file::Value> {
        self.map
            .get(key)
            .ok_or_else(|| Error::InvalidArgument(format!("GGUF metadata has no `{key}`")))
    }
    pub fn str(&self, key: &str) -> Result<&str> {
        self.get(key)?
            .to_string()
            .map(|s| s.as_str())
            .map_err(|_| Error::InvalidArgument(format!("GGUF metadata `{key}` is not a string")))
    }
    pub fn usize(&self, key: &str) -> Result<usize> {
        use candle_core::quantized::gguf_file::Value as V;
        let v = self.get(key)?;
        let n: Option<u64> = match v {
            V::U8(x) => Some(*x as u64),
            V::U16(x) => Some(*x as u64),
            V::U32(x) => Some(*x as u64),
            V::U64(x) => Some(*x),
            V::I8(x) => u64::try_from(*x).ok(),
            V::I16(x) => u64::try_from(*x).ok(),
            V::I32(x) => u64::try_from(*x).ok(),
            V::I64(x) => u64::try_from(*x).ok(),
            _ => None,
        };
        n.map(|n| n as usize).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "GGUF metadata `{key}` is not a non-negative integer"
            ))
        })
    }
    pub fn f32(&self, key: &str) -> Result<f32> {
        use candle_core::quantized::gguf_file::Value as V;
        match self.get(key)? {
            V::F32(x) => Ok(*x),
            V::F64(x) => Ok(*x as f32),
            _ => Err(Error::InvalidArgument(format!(
                "GGUF metadata `{key}` is not a float"
            ))),
        }
    }
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        if self.map.contains_key(key) {
            self.usize(key).map(Some)
        } else {
            Ok(None)
        }
    }
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        if self.map.contains_key(key) {
            self.f32(key).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Fields that Llama-style `config.json` files share; each architecture file adds its own.
#[derive(Debug, Deserialize)]
pub(crate) struct HfCommon {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub max_position_embeddings: Option<usize>,
    pub rope_theta: Option<f32>,
    pub rms_norm_eps: Option<f32>,
    pub tie_word_embeddings: Option<bool>,
    pub hidden_act: Option<String>,
    pub rope_scaling: Option<serde_json::Value>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<serde_json::Value>,
}

impl HfCommon {
    pub fn parse(json: &serde_json::Value) -> Result<Self> {
        let c: HfCommon = serde_json::from_value(json.clone())
            .map_err(|e| Error::InvalidArgument(format!("config.json: {e}")))?;
        if let Some(act) = &c.hidden_act
            && act != "silu"
        {
            return Err(Error::InvalidArgument(format!(
                "config.json: hidden_act `{act}` is not supported (only silu)"
            )));
        }
        if let Some(s) = &c.rope_scaling
            && !s.is_null()
        {
            return Err(Error::InvalidArgument(format!(
                "config.json: rope_scaling {s} is not supported yet"
            )));
        }
        Ok(c)
    }

    pub fn eos_ids(&self) -> Vec<u32> {
        eos_ids_from_json(self.eos_token_id.as_ref())
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
}

/// `eos_token_id` is an integer or a list of integers in Hugging Face configs.
pub fn eos_ids_from_json(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|n| vec![n as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|n| n as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// GGUF names of the per-model tensors, identical for both architectures.
pub fn gguf_tensor_name(hf_name: &str) -> Option<String> {
    let fixed = match hf_name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (idx, leaf) = rest.split_once('.')?;
    let idx: usize = idx.parse().ok()?;
    let g = match leaf {
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" => "attn_q.bias",
        "self_attn.k_proj.bias" => "attn_k.bias",
        "self_attn.v_proj.bias" => "attn_v.bias",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{idx}.{g}"))
}

/// Hugging Face names of one layer's tensors, in load order.
pub fn layer_tensor_names(i: usize, qkv_bias: bool) -> Vec<String> {
    let p = format!("model.layers.{i}");
    let mut v = vec![
        format!("{p}.input_layernorm.weight"),
        format!("{p}.self_attn.q_proj.weight"),
        format!("{p}.self_attn.k_proj.weight"),
        format!("{p}.self_attn.v_proj.weight"),
        format!("{p}.self_attn.o_proj.weight"),
        format!("{p}.post_attention_layernorm.weight"),
        format!("{p}.mlp.gate_proj.weight"),
        format!("{p}.mlp.up_proj.weight"),
        format!("{p}.mlp.down_proj.weight"),
    ];
    if qkv_bias {
        v.push(format!("{p}.self_attn.q_proj.bias"));
        v.push(format!("{p}.self_attn.k_proj.bias"));
        v.push(format!("{p}.self_attn.v_proj.bias"));
    }
    v
}
