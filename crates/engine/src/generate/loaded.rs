//! A model ready to generate: the decoder, its prompt side, its identity, and the scheduler that
//! owns its KV-cache slots.

use std::time::Instant;

use super::sequence::Sequence;
use super::{Event, Flow, GenParams, Scheduler, SeqId, StepStats, check_request};
use crate::Result;
use crate::model::{CausalLm, GenerationDefaults, ModelInfo};
use crate::prompt::Prompter;

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
