//! The one generation core. Every token bakeoff generates, for the CLI, bench, eval and the
//! server, comes out of [`Scheduler::step`]:
//!
//! - a `Sequence` (`sequence.rs`) owns one request's sampler, detokenizer, stop matcher, finish
//!   logic and timings;
//! - the [`Scheduler`] owns the KV-cache slots, prefix reuse, chunked prefill and the batched
//!   forward pass;
//! - every consumer receives the same [`Event`]s: a token (with its log-probability and, when
//!   asked, the most likely alternatives), the text held back until the end, and [`Done`] with
//!   the finish reason, usage and timings.
//!
//! [`generate`] is "submit one, step until done", [`generate_batch`] is "submit N"; the
//! server's worker submits as requests arrive and keeps only queueing, cancellation and metrics.

mod loaded;
mod scheduler;
pub(crate) mod sequence;
mod stop;

use std::time::Instant;

pub use bakeoff_record::{FinishReason, Timings, Usage};
use serde::{Deserialize, Serialize};

pub use loaded::LoadedModel;
pub use scheduler::{
    DEFAULT_PREFILL_CHUNK, Scheduler, SchedulerOptions, SeqId, StepStats, common_prefix,
};
pub use stop::StopMatcher;

use crate::constrain::{Constraint, OutputConstraint};
use crate::sampling::SamplingParams;
use crate::{Error, Result};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops before the first occurrence of any of these strings.
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens (for timing runs, as llama-bench does).
    pub ignore_eos: bool,
    /// How many of the most likely tokens each [`Token`] lists with their log-probabilities.
    #[serde(default)]
    pub top_logprobs: usize,
    /// Score the prompt too: `Some(k)` sends an [`Event::Prompt`] with each prompt token's
    /// log-probability given the tokens before it and the `k` most likely tokens there. Such a
    /// sequence computes its whole prompt (no cached prefix: the logits of every position are
    /// needed). With `max_tokens` 0 it ends after the prompt without generating.
    #[serde(default)]
    pub prompt_logprobs: Option<usize>,
    /// Send the end-of-sequence token that ends the answer as a [`Token`] too (empty text, not
    /// counted in the usage), with its log-probability: the completions API lists it, and clients
    /// that score `echo` prompts (lm-evaluation-harness) expect the one token they asked for.
    #[serde(default)]
    pub report_stop_token: bool,
    /// What the answer must be (a JSON schema, any JSON object, a regex, a grammar): tokens
    /// that cannot continue it are masked before sampling, and the answer ends where the
    /// grammar does. Log-probabilities stay the model's own, before the mask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<OutputConstraint>,
    /// `response_format` already compiled for this answer (a server compiles it while checking
    /// the request, off the generation thread); compiled when the sequence starts otherwise.
    #[serde(skip)]
    pub compiled_format: Option<Constraint>,
}

impl Default for GenParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampling: SamplingParams::greedy(),
            stop: Vec::new(),
            ignore_eos: false,
            top_logprobs: 0,
            prompt_logprobs: None,
            report_stop_token: false,
            response_format: None,
            compiled_format: None,
        }
    }
}

/// One generated token.
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    pub id: u32,
    /// Newly complete text: empty while a multi-byte character or a possible stop string is
    /// pending.
    pub text: String,
    /// Log-probability under the model, before any sampling filter.
    pub logprob: f32,
    /// The `top_logprobs` most likely tokens and their log-probabilities, most likely first.
    pub top: Vec<(u32, f32)>,
    /// Position in the answer, from 0.
    pub index: usize,
}

/// One prompt token, scored by the model given the tokens before it.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptToken {
    pub id: u32,
    /// None for the first token, which nothing predicts.
    pub logprob: Option<f32>,
    /// The most likely tokens at this position, most likely first (empty for the first).
    pub top: Vec<(u32, f32)>,
}

/// How a finished sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Done {
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
}

/// What every consumer of the generation core receives, in order: tokens, then possibly the
/// text held back until the end, then `Done`.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The scored prompt, once it is computed, before any token (only when
    /// [`GenParams::prompt_logprobs`] asks for it).
    Prompt(Vec<PromptToken>),
    Token(Token),
    /// Text released at the end (an unfinished character, or the start of a stop string that
    /// never completed).
    Tail(String),
    Done(Done),
}

impl Event {
    /// The text this event adds to the answer (none for `Done`).
    pub fn text(&self) -> &str {
        match self {
            Event::Token(t) => &t.text,
            Event::Tail(s) => s,
            Event::Done(_) | Event::Prompt(_) => "",
        }
    }
}

/// Flow control returned by an event consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Stop this sequence: it ends with [`FinishReason::Cancelled`].
    Stop,
}

/// A whole answer, collected from its events.
#[derive(Clone, Debug)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    /// The scored prompt, when [`GenParams::prompt_logprobs`] asked for it.
    pub prompt_logprobs: Vec<PromptToken>,
    pub ids: Vec<u32>,
    pub text: String,
    pub logprobs: Vec<f32>,
    /// Seconds from submission to each token (the first is the time to first token).
    pub token_times: Vec<f64>,
    pub done: Done,
}

impl Generation {
    pub fn finish_reason(&self) -> FinishReason {
        self.done.finish_reason
    }
}

/// Builds a [`Generation`] from a sequence's events.
struct Collector {
    start: Instant,
    prompt: Vec<u32>,
    prompt_logprobs: Vec<PromptToken>,
    ids: Vec<u32>,
    text: String,
    logprobs: Vec<f32>,
    times: Vec<f64>,
    done: Option<Done>,
}

impl Collector {
    fn new(prompt: &[u32], start: Instant) -> Self {
        Collector {
            start,
            prompt: prompt.to_vec(),
            prompt_logprobs: Vec::new(),
            ids: Vec::new(),
            text: String::new(),
            logprobs: Vec::new(),
            times: Vec::new(),
            done: None,
        }
    }

    fn push(&mut self, ev: &Event) {
        match ev {
            Event::Token(t) => {
                self.times.push(self.start.elapsed().as_secs_f64());
                self.ids.push(t.id);
                self.logprobs.push(t.logprob);
                self.text.push_str(&t.text);
            }
            Event::Tail(s) => self.text.push_str(s),
            Event::Done(d) => self.done = Some(*d),
            Event::Prompt(p) => self.prompt_logprobs = p.clone(),
        }
    }

    fn finish(self) -> Result<Generation> {
        let done = self.done.ok_or_else(|| {
            Error::Generation("the sequence ended without its final event".into())
        })?;
        Ok(Generation {
            prompt_ids: self.prompt,
            prompt_logprobs: self.prompt_logprobs,
            ids: self.ids,
            text: self.text,
            logprobs: self.logprobs,
            token_times: self.times,
            done,
        })
    }
}

/// Generates from `prompt`, reusing the longest cached prefix, calling `on_event` per event.
pub fn generate(
    lm: &mut LoadedModel,
    prompt: &[u32],
    params: &GenParams,
    mut on_event: impl FnMut(&Event) -> Flow,
) -> Result<Generation> {
    let start = Instant::now();
    let id = lm.submit(prompt.to_vec(), params.clone(), start)?;
    let mut col = Collector::new(prompt, start);
    while col.done.is_none() {
        let stats = lm.step(&mut |sid, ev| {
            debug_assert_eq!(sid, id);
            col.push(&ev);
            on_event(&ev)
        });
        if let Some((_, e)) = stats.failed.into_iter().next() {
            return Err(e);
        }
        if col.done.is_none() && lm.scheduler.is_idle() {
            return Err(Error::Generation(
                "the sequence left the scheduler without finishing".into(),
            ));
        }
    }
    col.finish()
}

/// Generates from several prompts at once, each in a KV-cache slot of its own. Every decode step
/// runs all unfinished sequences through one forward pass, so each weight is read once per step
/// for all of them: on a memory-bound CPU that is several times the throughput of running them
/// one after another (what batched evaluation needs). Token times count from the start of the
/// batch. The tokens equal [`generate`]'s up to the rounding of the batched matrix kernels, which
/// can flip a near-tie between two tokens. The batch's extra KV caches are freed at the end.
pub fn generate_batch(
    lm: &mut LoadedModel,
    requests: &[(&[u32], &GenParams)],
) -> Result<Vec<Generation>> {
    let ctx = lm.model.config().max_context;
    for (prompt, params) in requests {
        check_request(prompt, params, ctx)?;
    }
    let start = Instant::now();
    let mut ids = Vec::with_capacity(requests.len());
    for (prompt, params) in requests {
        ids.push(lm.submit(prompt.to_vec(), (*params).clone(), start)?);
    }
    let mut cols: Vec<Collector> = requests
        .iter()
        .map(|(p, _)| Collector::new(p, start))
        .collect();
    let result = (|| {
        while cols.iter().any(|c| c.done.is_none()) {
            let stats = lm.step(&mut |sid, ev| {
                if let Some(i) = ids.iter().position(|&x| x == sid) {
                    cols[i].push(&ev);
                }
                Flow::Continue
            });
            if let Some((_, e)) = stats.failed.into_iter().next() {
                return Err(e);
            }
            if lm.scheduler.is_idle() && cols.iter().any(|c| c.done.is_none()) {
                return Err(Error::Generation(
                    "a sequence left the scheduler without finishing".into(),
                ));
            }
        }
        Ok(())
    })();
    for &id in &ids {
        lm.scheduler.cancel(id);
    }
    lm.scheduler.shrink(lm.model.as_mut());
    result?;
    cols.into_iter().map(Collector::finish).collect()
}

pub(crate) fn check_request(prompt: &[u32], params: &GenParams, ctx: usize) -> Result<()> {
    if prompt.is_empty() {
        return Err(Error::InvalidArgument(
            "the prompt is empty (no tokens)".into(),
        ));
    }
    if params.max_tokens == 0 && params.prompt_logprobs.is_none() {
        return Err(Error::InvalidArgument(
            "max_tokens must be at least 1 (0 only when scoring the prompt)".into(),
        ));
    }
    if prompt.len() > ctx {
        return Err(Error::ContextOverflow {
            prompt_tokens: prompt.len(),
            context: ctx,
        });
    }
    Ok(())
}
