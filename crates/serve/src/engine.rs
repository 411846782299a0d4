//! A local model on its own OS thread, behind a handle with a bounded queue, generating for
//! many requests at once with continuous batching.
//!
//! Each step, the worker builds one batch from every active sequence: a decoding sequence
//! contributes its last token, a new one a chunk of its prompt. `forward_batch` runs them in a
//! single pass, so each weight matrix is read once per step however many sequences there are;
//! on a memory-bound CPU decode that is where the aggregate throughput comes from. Sequences
//! join between steps as soon as a slot is free and leave as soon as they finish, so a short
//! answer never waits for a long one. Each sequence has its own KV-cache slot, sampler,
//! incremental detokenizer and stop-string matcher. A slot keeps its tokens after its request
//! ends, and a new request takes the free slot whose history shares the longest prefix with its
//! prompt, so the next turn of a chat recomputes only the new messages.
//!
//! A request whose receiver is dropped (the client disconnected, or the router timed it out)
//! is removed before the next step and counted in `bakeoff_engine_cancelled_total`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bakeoff_engine::detok::Detokenizer;
use bakeoff_engine::generate::StopMatcher;
use bakeoff_engine::model::{LoadedModel, ModelInfo};
use bakeoff_engine::sampling::{Sampler, SamplingParams};
use bakeoff_engine::template::ChatTemplate;
use bakeoff_engine::tokenizer::Tokenizer;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use crate::backend::{
    Backend, DoneOut, EngineTimings, Event, EventRx, GenRequest, Input, Load, TokenOut, TopLogprob,
};
use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;

#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Sequences generated together (and KV-cache slots kept).
    pub max_batch: usize,
    /// Requests waiting for a batch slot; past this, 429.
    pub queue_capacity: usize,
    /// Prompt tokens computed per step across all new sequences, so a long prompt delays the
    /// sequences already decoding by a bounded amount.
    pub prefill_chunk: usize,
    /// Seconds suggested in Retry-After when the queue is full.
    pub retry_after_s: u64,
    /// A pause after every step. Zero in service; tests set it to make a generation last long
    /// enough to disconnect from or to fill a queue, whatever the machine's speed.
    pub step_delay: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_batch: 8,
            queue_capacity: 64,
            prefill_chunk: 512,
            retry_after_s: 1,
            step_delay: Duration::ZERO,
        }
    }
}

/// Turns requests into token ids on the async side, so a prompt that does not fit is refused
/// before it takes a queue place. The worker keeps its own tokenizer for detokenizing.
struct Preprocessor {
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    bos: Option<String>,
    eos: Option<String>,
    add_bos: bool,
    model: String,
}

impl Preprocessor {
    fn encode(&self, input: &Input) -> Result<Vec<u32>, ApiError> {
        match input {
            Input::Chat(messages) => {
                let t = self.template.as_ref().ok_or_else(|| {
                    ApiError::invalid(format!(
                        "model `{}` has no chat template; use /v1/completions with a plain prompt",
                        self.model
                    ))
                })?;
                let text = t.render(messages, true, self.bos.as_deref(), self.eos.as_deref())?;
                // The rendered template holds any BOS it wants, as transformers does it.
                Ok(self.tokenizer.encode(&text, false)?)
            }
            Input::Text(text) => Ok(self.tokenizer.encode(text, self.add_bos)?),
        }
    }
}

struct Job {
    prompt: Vec<u32>,
    max_tokens: usize,
    sampling: SamplingParams,
    stop: Vec<String>,
    ignore_eos: bool,
    logprobs: Option<usize>,
    tx: mpsc::UnboundedSender<Event>,
    enqueued: Instant,
}

#[derive(Default)]
struct Shared {
    active: AtomicUsize,
}

/// A handle to a model running on its own thread. Cheap to share behind an `Arc`; the thread
/// stops when the handle is dropped and the last request has finished.
pub struct LocalModel {
    id: String,
    tx: mpsc::Sender<Job>,
    pre: Arc<Preprocessor>,
    ctx: usize,
    shared: Arc<Shared>,
    opts: EngineOptions,
    info: ModelInfo,
}

impl LocalModel {
    /// Moves `lm` onto a new thread named after `id`.
    pub fn spawn(
        id: &str,
        lm: LoadedModel,
        opts: EngineOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ApiError> {
        if opts.max_batch == 0 || opts.queue_capacity == 0 || opts.prefill_chunk == 0 {
            return Err(ApiError::invalid(
                "max_batch, queue and prefill_chunk must be at least 1",
            ));
        }
        // A second template instance for the async side: the worker owns the LoadedModel.
        let template = match &lm.info.chat_template {
            Some(src) => Some(ChatTemplate::new(src)?),
            None => None,
        };
        let pre = Arc::new(Preprocessor {
            tokenizer: lm.tokenizer.clone(),
            template,
            bos: lm.bos_token.clone(),
            eos: lm.eos_token.clone(),
            add_bos: lm.add_bos,
            model: id.to_string(),
        });
        let ctx = lm.model.config().max_context;
        let info = lm.info.clone();
        let (tx, rx) = mpsc::channel(opts.queue_capacity);
        let shared = Arc::new(Shared::default());
        let worker = Worker {
            id: id.to_string(),
            opts: opts.clone(),
            metrics,
            shared: shared.clone(),
        };
        std::thread::Builder::new()
            .name(format!("engine-{id}"))
            .spawn(move || worker.run(lm, rx))
            .map_err(|e| {
                ApiError::internal(format!("cannot start the engine thread for `{id}`: {e}"))
            })?;
        Ok(LocalModel {
            id: id.to_string(),
            tx,
            pre,
            ctx,
            shared,
            opts,
            info,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Token ids of a request's input, as the engine would compute them.
    pub fn encode(&self, input: &Input) -> Result<Vec<u32>, ApiError> {
        self.pre.encode(input)
    }

    async fn submit(&self, req: GenRequest) -> Result<EventRx, ApiError> {
        req.sampling.validate()?;
        let pre = self.pre.clone();
        let input = req.input.clone();
        // Template rendering and tokenizing a long prompt take milliseconds: off the reactor.
        let ids = tokio::task::spawn_blocking(move || pre.encode(&input))
            .await
            .map_err(|e| ApiError::internal(format!("tokenizer task failed: {e}")))??;
        if ids.is_empty() {
            return Err(ApiError::invalid_param(
                "messages",
                "the prompt is empty (it encodes to no tokens)",
            ));
        }
        if ids.len() >= self.ctx {
            return Err(ApiError::context_length(ids.len(), self.ctx, &self.id));
        }
        let room = self.ctx - ids.len();
        // max_tokens is capped by the context: the answer ends with `length` when it is full.
        let max_tokens = req.max_tokens.map_or(room, |m| m.min(room));
        let (tx, rx) = mpsc::unbounded_channel();
        let job = Job {
            prompt: ids,
            max_tokens,
            sampling: req.sampling,
            stop: req.stop,
            ignore_eos: req.ignore_eos,
            logprobs: req.logprobs,
            tx,
            enqueued: Instant::now(),
        };
        match self.tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Err(ApiError::overloaded(&self.id, self.opts.retry_after_s))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ApiError::new(
                ErrorKind::Unavailable,
                format!("the engine of `{}` has stopped", self.id),
            )),
        }
    }
}

impl Backend for LocalModel {
    fn model_id(&self) -> &str {
        &self.id
    }
    fn kind(&self) -> &'static str {
        "local"
    }
    fn context_len(&self) -> Option<usize> {
        Some(self.ctx)
    }
    fn start(&self, req: GenRequest) -> BoxFuture<'_, Result<EventRx, ApiError>> {
        Box::pin(self.submit(req))
    }
    fn health(&self, _timeout: Duration) -> BoxFuture<'_, bool> {
        let alive = !self.tx.is_closed();
        Box::pin(async move { alive })
    }
    fn load(&self) -> Option<Load> {
        Some(Load {
            queued: self.tx.max_capacity() - self.tx.capacity(),
            active: self.shared.active.load(Ordering::Relaxed),
        })
    }
}

/// A KV-cache slot of the model and the tokens it holds.
struct Slot {
    id: usize,
    history: Vec<u32>,
    busy: bool,
    last_used: Instant,
}

/// One request being generated.
struct Seq<'t> {
    job: Job,
    slot: usize,
    /// Prompt tokens not computed yet start here.
    next_prompt: usize,
    /// Tokens in this sequence's KV cache.
    fed: Vec<u32>,
    cached: usize,
    sampler: Sampler,
    detok: Detokenizer<'t>,
    stops: StopMatcher,
    /// Prompt and answer, for the repetition penalty (empty when it is off).
    context: Vec<u32>,
    last: u32,
    generated: usize,
    admitted: Instant,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
}

impl Seq<'_> {
    fn send(&self, ev: Event) {
        // A closed channel is noticed before the next step; nothing to do here.
        let _ = self.job.tx.send(ev);
    }

    fn timings(&self) -> EngineTimings {
        let queue = self
            .admitted
            .duration_since(self.job.enqueued)
            .as_secs_f64();
        let prefill = self
            .first_at
            .map_or(0.0, |f| f.duration_since(self.admitted).as_secs_f64());
        let decode_tok_s = match (self.first_at, self.last_at) {
            (Some(a), Some(b)) if self.generated > 1 && b > a => {
                (self.generated - 1) as f64 / (b - a).as_secs_f64()
            }
            _ => 0.0,
        };
        EngineTimings {
            queue_ms: queue * 1e3,
            prefill_ms: prefill * 1e3,
            decode_tok_s,
        }
    }

    /// Samples the next token from `logits`; returns the finish reason when the sequence ends.
    fn step(
        &mut self,
        mut logits: Vec<f32>,
        eos: &[u32],
        tokenizer: &Tokenizer,
        ctx: usize,
    ) -> Option<&'static str> {
        let top = match self.job.logprobs {
            Some(k) if k > 0 => top_logprobs(&logits, k)
                .into_iter()
                .map(|(id, lp)| TopLogprob {
                    token: token_text(tokenizer, id),
                    logprob: lp,
                })
                .collect(),
            _ => Vec::new(),
        };
        let s = self.sampler.sample(&mut logits, &self.context);
        let now = Instant::now();
        if self.first_at.is_none() {
            self.first_at = Some(now);
        }
        if !self.job.ignore_eos && eos.contains(&s.id) {
            return Some(self.finish("stop", false));
        }
        self.last_at = Some(now);
        self.generated += 1;
        self.last = s.id;
        if !self.context.is_empty() {
            self.context.push(s.id);
        }
        let piece = match self.detok.push(s.id) {
            Ok(p) => p.unwrap_or_default(),
            Err(e) => {
                self.send(Event::Error(ApiError::internal(format!(
                    "detokenizer: {e}"
                ))));
                return Some("error");
            }
        };
        let (text, hit) = self.stops.push(&piece);
        let logprob = self.job.logprobs.map(|_| s.logprob);
        let token = self.job.logprobs.map(|_| token_text(tokenizer, s.id));
        self.send(Event::Token(TokenOut {
            text,
            token,
            logprob,
            top,
            tail: false,
        }));
        if hit {
            return Some(self.finish("stop", true));
        }
        if self.generated >= self.job.max_tokens || self.fed.len() >= ctx {
            return Some(self.finish("length", false));
        }
        None
    }

    /// Flushes held-back text (unless a stop string cut it) and sends the final event.
    fn finish(&mut self, mut reason: &'static str, cut_by_stop: bool) -> &'static str {
        if !cut_by_stop {
            let tail = self.detok.finish().ok().flatten().unwrap_or_default();
            let (mut out, hit) = self.stops.push(&tail);
            if hit {
                // The held-back end of the text completed a stop string.
                reason = "stop";
            } else {
                out.push_str(&self.stops.flush());
            }
            if !out.is_empty() {
                self.send(Event::Token(TokenOut {
                    text: out,
                    token: None,
                    logprob: None,
                    top: Vec::new(),
                    tail: true,
                }));
            }
        }
        self.send(Event::Done(DoneOut {
            finish_reason: reason,
            prompt_tokens: self.job.prompt.len(),
            completion_tokens: self.generated,
            cached_tokens: self.cached,
            timings: Some(self.timings()),
        }));
        reason
    }
}

struct Worker {
    id: String,
    opts: EngineOptions,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
}

impl Worker {
    fn run(self, mut lm: LoadedModel, mut rx: mpsc::Receiver<Job>) {
        // The detokenizers borrow this copy while the model is borrowed mutably for forward passes.
        let tokenizer = lm.tokenizer.clone();
        let eos = lm.info.eos_token_ids.clone();
        let ctx = lm.model.config().max_context;
        let model_label = self.id.clone();
        let labels = [("model", model_label.as_str())];
        let mut slots = vec![Slot {
            id: 0,
            history: Vec::new(),
            busy: false,
            last_used: Instant::now(),
        }];
        let mut active: Vec<Seq<'_>> = Vec::new();
        loop {
            if active.is_empty() {
                self.shared.active.store(0, Ordering::Relaxed);
                match rx.blocking_recv() {
                    Some(job) => self.admit(job, &mut lm, &mut slots, &mut active, &tokenizer),
                    None => return,
                }
            }
            while active.len() < self.opts.max_batch {
                match rx.try_recv() {
                    Ok(job) => self.admit(job, &mut lm, &mut slots, &mut active, &tokenizer),
                    Err(_) => break,
                }
            }
            // Clients that went away: stop before spending a step on them.
            active.retain(|s| {
                if s.job.tx.is_closed() {
                    self.metrics.inc("bakeoff_engine_cancelled_total", &labels);
                    release(&mut slots, s);
                    false
                } else {
                    true
                }
            });
            self.shared.active.store(active.len(), Ordering::Relaxed);
            if active.is_empty() {
                continue;
            }

            let mut budget = self.opts.prefill_chunk;
            let mut items: Vec<(usize, Vec<u32>)> = Vec::with_capacity(active.len());
            for (i, s) in active.iter().enumerate() {
                if s.next_prompt < s.job.prompt.len() {
                    if budget == 0 {
                        continue;
                    }
                    let n = (s.job.prompt.len() - s.next_prompt).min(budget);
                    budget -= n;
                    items.push((i, s.job.prompt[s.next_prompt..s.next_prompt + n].to_vec()));
                } else {
                    items.push((i, vec![s.last]));
                }
            }
            let batch: Vec<(usize, &[u32])> = items
                .iter()
                .map(|(i, toks)| (slots[active[*i].slot].id, toks.as_slice()))
                .collect();
            self.metrics
                .observe("bakeoff_engine_batch_size", &labels, batch.len() as f64);
            let result = lm.model.forward_batch(&batch);
            drop(batch);
            let mut done = vec![false; active.len()];
            match result {
                Err(e) => {
                    // The pass failed for every sequence in it; their caches are in an unknown state.
                    for (i, _) in &items {
                        let s = &mut active[*i];
                        s.send(Event::Error(ApiError::internal(format!(
                            "model `{}` failed: {e}",
                            self.id
                        ))));
                        s.fed.clear();
                        done[*i] = true;
                    }
                }
                Ok(logits) => {
                    for ((i, toks), lg) in items.into_iter().zip(logits) {
                        let s = &mut active[i];
                        s.fed.extend_from_slice(&toks);
                        if s.next_prompt < s.job.prompt.len() {
                            s.next_prompt += toks.len();
                            if s.next_prompt < s.job.prompt.len() {
                                continue; // more prompt to compute before sampling
                            }
                        }
                        if s.step(lg, &eos, &tokenizer, ctx).is_some() {
                            done[i] = true;
                        }
                    }
                }
            }
            let mut k = 0;
            active.retain(|s| {
                let d = done[k];
                k += 1;
                if d {
                    release(&mut slots, s);
                }
                !d
            });
            for s in &slots {
                if !s.busy && s.history.is_empty() {
                    lm.model.truncate_slot(s.id, 0);
                }
            }
            if !self.opts.step_delay.is_zero() {
                std::thread::sleep(self.opts.step_delay);
            }
        }
    }

    /// Gives a job a KV-cache slot (reusing the longest cached prefix) and starts its sequence.
    fn admit<'t>(
        &self,
        job: Job,
        lm: &mut LoadedModel,
        slots: &mut Vec<Slot>,
        active: &mut Vec<Seq<'t>>,
        tokenizer: &'t Tokenizer,
    ) {
        if job.tx.is_closed() {
            self.metrics
                .inc("bakeoff_engine_cancelled_total", &[("model", &self.id)]);
            return;
        }
        let admitted = Instant::now();
        let sampler = match Sampler::new(job.sampling.clone()) {
            Ok(s) => s,
            Err(e) => {
                let _ = job.tx.send(Event::Error(e.into()));
                return;
            }
        };
        let free = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.busy)
            .max_by_key(|(_, s)| {
                (
                    common_prefix(&s.history, &job.prompt),
                    std::cmp::Reverse(s.last_used),
                )
            })
            .map(|(i, _)| i);
        let idx = match free {
            Some(i) => i,
            None => match lm.model.alloc_slot() {
                Ok(id) => {
                    slots.push(Slot {
                        id,
                        history: Vec::new(),
                        busy: false,
                        last_used: admitted,
                    });
                    slots.len() - 1
                }
                Err(e) => {
                    let _ = job.tx.send(Event::Error(ApiError::internal(format!(
                        "no KV-cache slot: {e}"
                    ))));
                    return;
                }
            },
        };
        let slot = &mut slots[idx];
        let pos = lm.model.slot_position(slot.id);
        // At least one prompt token must run to produce the logits of the first answer token.
        let reuse = common_prefix(&slot.history, &job.prompt)
            .min(pos)
            .min(job.prompt.len() - 1);
        lm.model.truncate_slot(slot.id, reuse);
        slot.busy = true;
        slot.history.clear();
        let fed = job.prompt[..reuse].to_vec();
        self.metrics.add(
            "bakeoff_engine_cached_tokens_total",
            &[("model", &self.id)],
            reuse as f64,
        );
        self.metrics.add(
            "bakeoff_engine_prefilled_tokens_total",
            &[("model", &self.id)],
            (job.prompt.len() - reuse) as f64,
        );
        let context = if job.sampling.repetition_penalty != 1.0 {
            job.prompt.clone()
        } else {
            Vec::new()
        };
        let stops = StopMatcher::new(job.stop.clone());
        active.push(Seq {
            slot: idx,
            next_prompt: reuse,
            fed,
            cached: reuse,
            sampler,
            detok: Detokenizer::new(tokenizer),
            stops,
            context,
            last: 0,
            generated: 0,
            admitted,
            first_at: None,
            last_at: None,
            job,
        });
    }
}

/// Frees a sequence's slot, remembering what its cache holds for prefix reuse.
fn release(slots: &mut [Slot], s: &Seq<'_>) {
    if let Some(slot) = slots.get_mut(s.slot) {
        slot.busy = false;
        slot.history = s.fed.clone();
        slot.last_used = Instant::now();
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The `k` most likely tokens and their log-probabilities, most likely first.
pub fn top_logprobs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    if logits.is_empty() || k == 0 {
        return Vec::new();
    }
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let lse = logits
        .iter()
        .map(|v| ((v - m) as f64).exp())
        .sum::<f64>()
        .ln() as f32
        + m;
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(idx.len());
    let desc = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    idx.select_nth_unstable_by(k - 1, desc);
    idx.truncate(k);
    idx.sort_unstable_by(desc);
    idx.into_iter()
        .map(|i| (i, logits[i as usize] - lse))
        .collect()
}

/// A token's text on its own, as logprobs report it.
fn token_text(t: &Tokenizer, id: u32) -> String {
    t.decode(&[id], false).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_logprobs_are_sorted_and_normalised() {
        let l = vec![1.0, 3.0, 2.0, 3.0];
        let t = top_logprobs(&l, 3);
        assert_eq!(t.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        let total: f32 = (0..4)
            .map(|i| (l[i] - l.iter().map(|v| v.exp()).sum::<f32>().ln()).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-5);
        assert!((t[0].1 - t[1].1).abs() < 1e-6);
    }
}
