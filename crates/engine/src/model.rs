//! The decoder behind one contract ([`CausalLm`]) and what a results file says of the model
//! ([`ModelInfo`]). The model ready to generate, with its prompt side and scheduler, is
//! [`crate::generate::LoadedModel`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use bakeoff_record::{EngineKind, FileDigest, ModelIdentity};

use crate::models::{Arch, DecoderConfig};

use crate::Result;

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
    /// Bytes one more cached position takes (all layers, keys and values).
    fn kv_bytes_per_token(&self) -> usize;
    fn describe(&self) -> String;

    /// A new, empty KV-cache slot for an independent sequence (slot 0 is the one `forward`
    /// uses). Slots let a server batch several conversations through one pass.
    fn alloc_slot(&mut self) -> Result<usize>;
    /// Releases a slot's memory; its number may be reused.
    fn free_slot(&mut self, slot: usize);
    fn slot_position(&self, slot: usize) -> usize;
    fn truncate_slot(&mut self, slot: usize, len: usize);
    /// Makes slot `dst` hold the first `len` positions of slot `src`.
    fn copy_slot(&mut self, src: usize, dst: usize, len: usize) -> Result<()>;
    /// Runs each `(slot, ids)` after that slot's cached positions, all in one pass so every
    /// weight is read once per step; returns the last-token logits of each item.
    fn forward_batch(&mut self, items: &[(usize, &[u32])]) -> Result<Vec<Vec<f32>>>;
    /// As [`CausalLm::forward_batch`], with the logits of every token of the items whose `all`
    /// flag is set (`ids.len() × vocab` values; a scored prompt needs them).
    fn forward_batch_with(
        &mut self,
        items: &[(usize, &[u32])],
        all: &[bool],
    ) -> Result<Vec<Vec<f32>>>;
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

impl ModelFormat {
    /// The name results files use: `gguf`, `safetensors`.
    pub fn name(self) -> &'static str {
        match self {
            ModelFormat::Gguf => "gguf",
            ModelFormat::Safetensors => "safetensors",
        }
    }
}

impl ModelInfo {
    /// What a results file records of this model (the one place a loaded model becomes a
    /// [`ModelIdentity`]): `source` as the user named it, and `files` with whatever digests the
    /// caller computed (hashing reads every byte, so it is the caller's choice).
    pub fn identity(&self, source: &str, files: Vec<FileDigest>) -> ModelIdentity {
        ModelIdentity {
            source: source.to_string(),
            engine: EngineKind::Local,
            path: Some(self.path.clone()),
            revision: self.revision.clone(),
            format: self.format.name().to_string(),
            arch: Some(self.arch.name().to_string()),
            dtype: Some(self.weight_dtype.clone()),
            parameters: Some(self.parameters),
            file_bytes: Some(self.file_bytes),
            files,
            max_context: Some(self.config.max_context),
            synthetic: None,
            chat_template: Some(self.chat_template.is_some()),
        }
    }
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
