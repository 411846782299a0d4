//! Which type each tensor of the output takes: llama.cpp's file types (`--to`) and its rules
//! per tensor (`llama_tensor_get_type`), with the fallbacks for rows that do not fit a type's
//! blocks.

use std::fmt;
use std::str::FromStr;

use bakeoff_engine::WeightType;
use bakeoff_engine::models::{DecoderConfig, layer_tensor_names};
use bakeoff_engine::{Error, Result};

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
        self.to.storage_bytes(self.elems()).unwrap_or(0)
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

/// Hugging Face names of the tensors a model with `cfg` has, in llama.cpp's file order.
pub(crate) fn tensor_names(cfg: &DecoderConfig) -> Vec<String> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bakeoff_engine::models::gguf_tensor_name;
    use std::collections::HashMap;

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
        let cfg = bakeoff_synth::Preset::TinyLlama1B.config(0);
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
        let cfg = bakeoff_synth::Preset::Qwen25_1B5.config(0);
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
        let cfg = bakeoff_synth::Preset::TinyQwen2.config(259);
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
