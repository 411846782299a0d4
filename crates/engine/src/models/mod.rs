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

// Defined beside the rotary kernel that reads it, so the kernels need nothing from here.
pub use crate::kernels::ops::RopeStyle;

/// How rotary frequencies are stretched for contexts longer than the model was trained on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RopeScaling {
    #[default]
    None,
    /// Positions divided by `factor` (Hugging Face `rope_type: linear`, GGUF
    /// `rope.scaling.type = linear`).
    Linear { factor: f32 },
    /// Llama 3.x: low frequencies divided by `factor`, high ones kept, a smooth blend between
    /// (transformers' `_compute_llama3_parameters`).
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
    /// One divisor per frequency: how llama.cpp's converter stores Llama 3.x scaling in a GGUF
    /// file (the `rope_freqs.weight` tensor).
    Factors { factors: Vec<f32> },
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
    #[serde(default)]
    pub rope_scaling: RopeScaling,
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
        let half = self.head_dim / 2;
        match &self.rope_scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                if !(factor.is_finite() && *factor > 0.0) {
                    return bad(format!("rope scaling factor {factor} must be positive"));
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let pos = |x: f32| x.is_finite() && x > 0.0;
                if !(pos(*factor) && pos(*low_freq_factor) && pos(*high_freq_factor))
                    || high_freq_factor <= low_freq_factor
                    || *original_max_position_embeddings == 0
                {
                    return bad(format!(
                        "llama3 rope scaling needs positive factors with high_freq_factor > \
                         low_freq_factor and original_max_position_embeddings > 0, got \
                         {:?}",
                        self.rope_scaling
                    ));
                }
            }
            RopeScaling::Factors { factors } => {
                if factors.len() != half || factors.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
                    return bad(format!(
                        "rope_freqs.weight must hold {half} positive factors (head_dim {} / 2), \
                         got {} values",
                        self.head_dim,
                        factors.len()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The rotary inverse frequencies of one head (`head_dim / 2` values), scaling applied, in
    /// f32 as transformers computes them.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        let base = (0..d / 2).map(|i| 1.0 / self.rope_theta.powf((2 * i) as f32 / d as f32));
        match &self.rope_scaling {
            RopeScaling::None => base.collect(),
            RopeScaling::Linear { factor } => base.map(|f| f / factor).collect(),
            RopeScaling::Factors { factors } => base.zip(factors).map(|(f, k)| f / k).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings,
            } => {
                let old = *original_max_position_embeddings as f32;
                let (low_wavelen, high_wavelen) = (old / low, old / high);
                base.map(|f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
            }
        }
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
        c.rope_scaling()?;
        Ok(c)
    }

    /// `rope_scaling` of config.json: absent, null, `default`, `linear` or `llama3`. Other
    /// kinds (yarn, dynamic, longrope) change attention beyond the frequencies and are refused
    /// by name rather than run wrongly.
    pub fn rope_scaling(&self) -> Result<RopeScaling> {
        let Some(s) = self.rope_scaling.as_ref().filter(|s| !s.is_null()) else {
            return Ok(RopeScaling::None);
        };
        let kind = s
            .get("rope_type")
            .or_else(|| s.get("type"))
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let num = |k: &str| s.get(k).and_then(|v| v.as_f64());
        let need = |k: &str| {
            num(k).ok_or_else(|| {
                Error::InvalidArgument(format!("config.json: rope_scaling {s} has no number `{k}`"))
            })
        };
        match kind {
            "default" => Ok(RopeScaling::None),
            "linear" => Ok(RopeScaling::Linear {
                factor: need("factor")? as f32,
            }),
            "llama3" => Ok(RopeScaling::Llama3 {
                factor: need("factor")? as f32,
                low_freq_factor: need("low_freq_factor")? as f32,
                high_freq_factor: need("high_freq_factor")? as f32,
                original_max_position_embeddings: need("original_max_position_embeddings")?
                    as usize,
            }),
            other => Err(Error::InvalidArgument(format!(
                "config.json: rope_scaling type `{other}` is not supported (bakeoff runs \
                 `default`, `linear` and `llama3`)"
            ))),
        }
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
        "rope_freqs.weight" => Some("rope_freqs.weight"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(scaling: RopeScaling) -> DecoderConfig {
        DecoderConfig {
            arch: Arch::Llama,
            vocab_size: 10,
            hidden_size: 64,
            intermediate_size: 8,
            n_layers: 1,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 16,
            max_context: 256,
            rope_theta: 500_000.0,
            rms_eps: 1e-5,
            qkv_bias: false,
            tied_embeddings: false,
            rope_style: RopeStyle::Neox,
            rope_scaling: scaling,
            bos_token_id: None,
            eos_token_ids: vec![],
        }
    }

    /// llama.cpp's converter turns `rope_type: llama3` into per-frequency divisors
    /// (`rope_freqs.weight`); both forms must give the same frequencies.
    #[test]
    fn llama3_scaling_equals_its_gguf_factors() {
        let (factor, low, high, old) = (8.0f32, 1.0f32, 4.0f32, 64usize);
        let llama3 = cfg(RopeScaling::Llama3 {
            factor,
            low_freq_factor: low,
            high_freq_factor: high,
            original_max_position_embeddings: old,
        });
        llama3.validate().unwrap();
        let plain = cfg(RopeScaling::None).rope_inv_freq();
        // convert_hf_to_gguf.py's LlamaModel.generate_extra_tensors, in f64 as numpy does.
        let factors: Vec<f32> = plain
            .iter()
            .map(|&f| {
                let wavelen = 2.0 * std::f64::consts::PI / f as f64;
                let (lw, hw) = (old as f64 / low as f64, old as f64 / high as f64);
                if wavelen < hw {
                    1.0
                } else if wavelen > lw {
                    factor
                } else {
                    let smooth = (old as f64 / wavelen - low as f64) / (high - low) as f64;
                    (1.0 / ((1.0 - smooth) / factor as f64 + smooth)) as f32
                }
            })
            .collect();
        assert!(factors.contains(&1.0) && factors.contains(&factor));
        assert!(factors.iter().any(|&f| f > 1.0 && f < factor));
        let from_factors = cfg(RopeScaling::Factors { factors }).rope_inv_freq();
        for (a, b) in llama3.rope_inv_freq().iter().zip(&from_factors) {
            assert!((a - b).abs() <= 1e-6 * a.abs(), "{a} vs {b}");
        }
    }

    #[test]
    fn bad_scaling_is_refused() {
        assert!(cfg(RopeScaling::Linear { factor: 0.0 }).validate().is_err());
        assert!(
            cfg(RopeScaling::Factors {
                factors: vec![1.0; 3]
            })
            .validate()
            .is_err()
        );
        let c = HfCommon::parse(&serde_json::json!({
            "vocab_size": 10, "hidden_size": 64, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 4,
            "rope_scaling": {"rope_type": "yarn", "factor": 4.0}
        }));
        let e = c.unwrap_err().to_string();
        assert!(e.contains("yarn"), "{e}");
    }
}
