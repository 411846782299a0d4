//! A loaded model: the decoder behind [`CausalLm`], its text side, identity and scheduler.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::models::{Arch, DecoderConfig};
use std::time::Instant;

use crate::Result;
use crate::generate::sequence::Sequence;
use crate::generate::{Event, Flow, GenParams, Scheduler, SeqId, StepStats, check_request};
use crate::prompt::Prompter;

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

/// A model ready to generate: the decoder, the text side, and the generation core's scheduler
/// that owns the decoder's KV-cache slots.
pub struct LoadedModel {
    pub model: Box<dyn CausalLm>,
    /// Tokenizer, chat template and special tokens: a cheap handle a server clones.
    pub prompter: Prompter,
    pub info: ModelInfo,
    pub defaults: GenerationDefaults,
    pub scheduler: Scheduler,
}

impl LoadedModel {
    /// Queues a sequence; [`LoadedModel::step`] generates it. `submitted` is when the request
    /// arrived, for the queue time.
    pub fn submit(
        &mut self,
        prompt: Vec<u32>,
        params: GenParams,
        submitted: Instant,
    ) -> Result<SeqId> {
        check_request(&prompt, &params, self.model.config().max_context)?;
        let seq = Sequence::new(prompt, params, &self.prompter, submitted)?;
        Ok(self.scheduler.push(seq))
    }

    /// One batched step of every submitted sequence (see [`Scheduler::step`]).
    pub fn step(&mut self, sink: &mut dyn FnMut(SeqId, Event) -> Flow) -> StepStats {
        self.scheduler.step(self.model.as_mut(), sink)
    }

    /// Makes slot 0 hold exactly `ids`, reusing its cached prefix; returns the last logits.
    pub fn prefill(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.scheduler.prefill(self.model.as_mut(), ids)
    }

    /// Runs `ids` after what slot 0 holds; the logits of the last or of every token.
    pub fn extend(&mut self, ids: &[u32], all_logits: bool) -> Result<Vec<f32>> {
        self.scheduler.extend(self.model.as_mut(), ids, all_logits)
    }

    /// Keeps the first `len` tokens of slot 0.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        self.scheduler.truncate(self.model.as_mut(), len)
    }

    /// Forgets every cached token (a cold start for a measurement).
    pub fn reset_cache(&mut self) {
        self.scheduler.reset(self.model.as_mut());
    }
}
