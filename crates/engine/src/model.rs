//! A loaded model: the decoder behind [`CausalLm`], its tokenizer, chat template and identity.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::models::{Arch, DecoderConfig};
use crate::template::{ChatTemplate, Message};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// One model behind one contract, whatever its architecture, format or device.
pub trait CausalLm: Send {
    fn config(&self) -> &DecoderConfig;
    /// Runs `ids` after the cached positions; returns the logits of the last token
    /// (`vocab` values) or of every token (`ids.len() × vocab`).
    fn forward(&mut self, ids: &[u32], all_logits: bool) -> Result<Vec<f32>>;
    /// Tokens held in the KV cache.
    fn position(&self) -> usize;
    /// Forgets cached positions from `len` on (0 resets).
    fn truncate(&mut self, len: usize);
    fn kv_cache_bytes(&self) -> usize;
    fn describe(&self) -> String;

    /// A new, empty KV-cache slot for an independent sequence (slot 0 is the one `forward`
    /// uses). Slots let a server batch several conversations through one pass.
    fn alloc_slot(&mut self) -> Result<usize>;
    /// Releases a slot's memory; its number may be reused.
    fn free_slot(&mut self, slot: usize);
    fn slot_position(&self, slot: usize) -> usize;
    fn truncate_slot(&mut self, slot: usize, len: usize);
    /// Runs each `(slot, ids)` after that slot's cached positions, all in one pass so every
    /// weight is read once per step; returns the last-token logits of each item.
    fn forward_batch(&mut self, items: &[(usize, &[u32])]) -> Result<Vec<Vec<f32>>>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Safetensors,
    Gguf,
}

/// What a results file needs to say which model was measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The `--model` argument as given.
    pub source: String,
    /// Hub revision, when the model came from the hub.
    pub revision: Option<String>,
    pub path: PathBuf,
    pub format: ModelFormat,
    pub arch: Arch,
    pub config: DecoderConfig,
    /// Storage type of the weight matrices, e.g. `q8_0`, or `mixed(q4_k,q6_k)`.
    pub weight_dtype: String,
    /// Every storage type among the model's tensors, with its tensor count and bytes, most
    /// bytes first.
    #[serde(default)]
    pub weight_types: Vec<WeightTypeUse>,
    /// Parameters counted from the tensors in the files.
    pub parameters: u64,
    pub file_bytes: u64,
    pub files: Vec<PathBuf>,
    pub eos_token_ids: Vec<u32>,
    pub chat_template: Option<String>,
    pub device: String,
    pub load_s: f64,
}

/// One storage type's share of a model's tensors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightTypeUse {
    /// ggml's name: `q4_k`, `f32`, `iq4_xs`.
    pub dtype: String,
    pub tensors: usize,
    pub bytes: u64,
}

/// Sampling defaults from `generation_config.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GenerationDefaults {
    pub do_sample: Option<bool>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub repetition_penalty: Option<f32>,
}

pub struct LoadedModel {
    pub model: Box<dyn CausalLm>,
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    pub info: ModelInfo,
    pub defaults: GenerationDefaults,
    /// Whether plain (non-chat) prompts start with BOS, as the tokenizer config asks.
    pub add_bos: bool,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Token ids currently in the KV cache, so a follow-up prompt reuses their prefix.
    pub history: Vec<u32>,
}

impl LoadedModel {
    /// Renders messages with the model's own chat template.
    pub fn render_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let t = self.template.as_ref().ok_or_else(|| {
            Error::Template(format!(
                "{} has no chat template; use a plain prompt",
                self.info.source
            ))
        })?;
        t.render(
            messages,
            add_generation_prompt,
            self.bos_token.as_deref(),
            self.eos_token.as_deref(),
        )
    }

    /// Token ids of a chat: the rendered template already holds any BOS it wants, so no special
    /// tokens are added (as transformers' `apply_chat_template` does).
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let text = self.render_chat(messages, true)?;
        self.tokenizer.encode(&text, false)
    }

    /// Token ids of a plain prompt, with BOS where the model expects one.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text, self.add_bos)
    }
}
