//! A local model on its own OS thread, behind a handle with a bounded queue, generating for
//! many requests at once with continuous batching.
//!
//! The generation itself is the engine's one core (`bakeoff_engine::generate`): the worker
//! submits each request to the model's scheduler, which batches every running sequence into
//! one forward pass per step, reuses cached prefixes and ends each sequence the same way the
//! CLI and eval do. This file keeps only what a server adds: the bounded queue (429 past it),
//! cancellation, the translation of the core's events into the API's, and metrics.
//!
//! A request whose receiver is dropped (the client disconnected, or the router timed it out)
//! is removed before the next step and counted in `bakeoff_engine_cancelled_total`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use bakeoff_engine::generate::LoadedModel;
use bakeoff_engine::generate::{
    Event as CoreEvent, Flow, GenParams, PromptToken, SchedulerOptions, SeqId,
};
use bakeoff_engine::model::ModelInfo;
use bakeoff_engine::prompt::Prompter;
use bakeoff_engine::tools::{ToolCallParser, ToolFormat, ToolSet};
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use crate::backend::{
    DoneOut, EventRx, GenRequest, Input, Load, PromptOut, PromptTokenOut, StreamEvent, TokenOut,
    ToolCallOut, TopLogprob, Upstream,
};
use crate::error::{ApiError, ErrorKind};
use crate::metrics::Metrics;
use crate::openai::new_id;

/// Called before each generation step. Only tests set one, to make the worker panic on cue
/// (with requests in flight) and check that it recovers.
#[derive(Clone)]
pub struct FaultHook(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for FaultHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaultHook")
    }
}

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
    /// New tokens for a request that sets no `max_tokens` (always capped by the context).
    pub default_max_tokens: usize,
    /// KV-cache memory the running sequences may reserve together, in bytes, counted as each
    /// sequence's prompt plus its `max_tokens` at the model's cache precision. A request that
    /// cannot fit even alone is refused (400); one that fits waits until running ones finish.
    pub kv_budget_bytes: u64,
    /// How long an idle engine keeps its KV-cache slots for prefix reuse before giving their
    /// memory back; zero keeps them.
    pub kv_idle_release: Duration,
    #[doc(hidden)]
    pub fault_hook: Option<FaultHook>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            max_batch: 8,
            queue_capacity: 64,
            prefill_chunk: bakeoff_engine::generate::DEFAULT_PREFILL_CHUNK,
            retry_after_s: 1,
            step_delay: Duration::ZERO,
            default_max_tokens: 2048,
            kv_budget_bytes: 4 << 30,
            kv_idle_release: Duration::from_secs(30),
            fault_hook: None,
        }
    }
}

/// Token ids of a request's input, on the async side, with the same tokenizer the worker
/// detokenizes with, so a prompt that does not fit is refused before it takes a queue place.
fn encode(
    prompter: &Prompter,
    model: &str,
    input: &Input,
    tools: Option<&ToolSet>,
) -> Result<Vec<u32>, ApiError> {
    match input {
        Input::Chat(messages) => {
            if !prompter.has_template() {
                return Err(ApiError::invalid(format!(
                    "model `{model}` has no chat template; use /v1/completions with a plain prompt"
                )));
            }
            Ok(match tools {
                Some(t) => prompter.encode_chat_with_tools(messages, t)?,
                None => prompter.encode_chat(messages)?,
            })
        }
        Input::Text(text) => Ok(prompter.encode_prompt(text)?),
        Input::Tokens(ids) => {
            let vocab = prompter.tokenizer().vocab_size();
            if let Some((i, id)) = ids
                .iter()
                .enumerate()
                .find(|(_, id)| **id as usize >= vocab)
            {
                return Err(ApiError::invalid_param(
                    "prompt",
                    format!(
                        "`prompt[{i}]` = {id} is not a token id of model `{model}` (its vocabulary has {vocab})"
                    ),
                ));
            }
            Ok(ids.clone())
        }
    }
}

/// The most likely tokens of a position, with their texts.
fn top_out(top: Vec<(u32, f32)>, prompter: &Prompter) -> Vec<TopLogprob> {
    top.into_iter()
        .map(|(id, logprob)| TopLogprob {
            token: prompter.token_text(id),
            logprob,
        })
        .collect()
}

/// The echoed prompt: each token's text where the detokenized prompt has it, and its scores.
fn prompt_out(scores: Vec<PromptToken>, prompter: &Prompter) -> PromptOut {
    let mut detok = prompter.detokenizer();
    let mut out = PromptOut::default();
    for p in scores {
        let text_offset = out.text.len();
        // A piece that cannot be decoded alone (part of a character) adds text with a later
        // token; the offsets stay those of the text so far.
        if let Ok(Some(piece)) = detok.push(p.id) {
            out.text.push_str(&piece);
        }
        out.tokens.push(PromptTokenOut {
            token: prompter.token_text(p.id),
            text_offset,
            logprob: p.logprob,
            top: top_out(p.top, prompter),
        });
    }
    if let Ok(Some(tail)) = detok.finish() {
        out.text.push_str(&tail);
    }
    out
}

struct Job {
    prompt: Vec<u32>,
    params: GenParams,
    /// `Some` when the response carries log-probabilities.
    logprobs: Option<usize>,
    /// `Some` when the request offered tools: how calls appear in the answer.
    tools: Option<ToolFormat>,
    tx: mpsc::UnboundedSender<StreamEvent>,
    enqueued: Instant,
    /// KV-cache bytes reserved while it runs: prompt plus `max_tokens` positions.
    kv_bytes: u64,
}

#[derive(Default)]
struct Shared {
    active: AtomicUsize,
    /// Generation steps run so far.
    steps: std::sync::atomic::AtomicU64,
}

/// A handle to a model running on its own thread. Cheap to share behind an `Arc`; the thread
/// stops when the handle is dropped and the last request has finished.
pub struct LocalModel {
    id: String,
    tx: mpsc::Sender<Job>,
    prompter: Prompter,
    ctx: usize,
    /// KV-cache bytes one position takes in every layer (keys and values, f32).
    kv_bytes_per_token: u64,
    shared: Arc<Shared>,
    opts: EngineOptions,
    info: ModelInfo,
}

impl LocalModel {
    /// Moves `lm` onto a new thread named after `id`.
    pub fn spawn(
        id: &str,
        mut lm: LoadedModel,
        opts: EngineOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ApiError> {
        if opts.max_batch == 0 || opts.queue_capacity == 0 || opts.prefill_chunk == 0 {
            return Err(ApiError::invalid(
                "max_batch, queue and prefill_chunk must be at least 1",
            ));
        }
        if !lm.scheduler.is_idle() {
            return Err(ApiError::internal(format!(
                "model `{id}` still has sequences of an earlier use"
            )));
        }
        lm.scheduler = bakeoff_engine::generate::Scheduler::new(SchedulerOptions {
            max_batch: opts.max_batch,
            prefill_chunk: opts.prefill_chunk,
        });
        let prompter = lm.prompter.clone();
        let cfg = lm.model.config();
        let ctx = cfg.max_context;
        let kv_bytes_per_token = lm.model.kv_bytes_per_token() as u64;
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
            .spawn(move || worker.supervise(lm, rx))
            .map_err(|e| {
                ApiError::internal(format!("cannot start the engine thread for `{id}`: {e}"))
            })?;
        Ok(LocalModel {
            id: id.to_string(),
            tx,
            prompter,
            ctx,
            kv_bytes_per_token,
            shared,
            opts,
            info,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Token ids of a request's input, as the engine would compute them.
    pub fn encode(&self, input: &Input, tools: Option<&ToolSet>) -> Result<Vec<u32>, ApiError> {
        encode(&self.prompter, &self.id, input, tools)
    }

    async fn submit(&self, req: GenRequest) -> Result<EventRx, ApiError> {
        req.sampling.validate()?;
        // A queue place first: past the bound a request costs a 429 and nothing else, not a
        // template rendering and a tokenization.
        let permit = match self.tx.try_reserve() {
            Ok(p) => p,
            Err(mpsc::error::TrySendError::Full(())) => {
                return Err(ApiError::overloaded(&self.id, self.opts.retry_after_s));
            }
            Err(mpsc::error::TrySendError::Closed(())) => {
                return Err(ApiError::new(
                    ErrorKind::Unavailable,
                    format!("the engine of `{}` has stopped", self.id),
                ));
            }
        };
        let prompter = self.prompter.clone();
        let model = self.id.clone();
        let input = req.input.clone();
        let tools = req.tools.clone();
        let tool_format = self.prompter.tool_format();
        // A required or named call holds the answer to the calls' grammar, in place of any
        // response format (which then applies to no answer of this request).
        let format = match tools.as_ref().and_then(|t| t.constraint(tool_format)) {
            Some(c) => Some(c),
            None => req.response_format.as_ref().map(|f| f.constraint.clone()),
        };
        let checked = format.clone();
        // Template rendering, tokenizing a long prompt and compiling a schema take milliseconds:
        // off the reactor. A schema that does not compile is the client's error, before any
        // stream starts.
        let (ids, compiled) = tokio::task::spawn_blocking(move || {
            let ids = encode(&prompter, &model, &input, tools.as_ref())?;
            let compiled = checked
                .as_ref()
                .map(|c| prompter.constraint(c))
                .transpose()
                .map_err(ApiError::from)?;
            Ok::<_, ApiError>((ids, compiled))
        })
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
        let max_tokens = req
            .max_tokens
            .unwrap_or(self.opts.default_max_tokens)
            .min(room);
        let kv_bytes = (ids.len() + max_tokens) as u64 * self.kv_bytes_per_token;
        if kv_bytes > self.opts.kv_budget_bytes {
            return Err(ApiError::kv_budget(
                ids.len(),
                max_tokens,
                kv_bytes,
                self.opts.kv_budget_bytes,
                &self.id,
            ));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let job = Job {
            prompt: ids,
            params: GenParams {
                max_tokens,
                sampling: req.sampling,
                stop: req.stop,
                ignore_eos: req.ignore_eos,
                top_logprobs: req.logprobs.unwrap_or(0),
                prompt_logprobs: req.echo.then_some(req.logprobs.unwrap_or(0)),
                // The completions API lists the end-of-text token among the logprobs.
                report_stop_token: req.logprobs.is_some() && !matches!(req.input, Input::Chat(_)),
                response_format: format,
                compiled_format: compiled,
            },
            logprobs: req.logprobs,
            tools: req.tools.as_ref().map(|_| tool_format),
            tx,
            enqueued: Instant::now(),
            kv_bytes,
        };
        permit.send(job);
        Ok(rx)
    }
}

impl Upstream for LocalModel {
    fn prompter(&self) -> Option<&Prompter> {
        Some(&self.prompter)
    }
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
    fn progress(&self) -> Option<u64> {
        Some(self.shared.steps.load(Ordering::Relaxed))
    }
    fn load(&self) -> Option<Load> {
        Some(Load {
            queued: self.tx.max_capacity() - self.tx.capacity(),
            active: self.shared.active.load(Ordering::Relaxed),
        })
    }
}

/// Where a sequence's events go.
struct Client {
    tx: mpsc::UnboundedSender<StreamEvent>,
    logprobs: Option<usize>,
    kv_bytes: u64,
    /// Reads calls out of the answer when tools were offered.
    calls: Option<ToolCallParser>,
}

impl Client {
    fn send(&self, ev: StreamEvent) {
        // A closed channel is noticed before the next step; nothing to do here.
        let _ = self.tx.send(ev);
    }

    /// Sends a core event in the API's form; with tools, text that turns out to be a call
    /// goes out as a [`StreamEvent::ToolCall`] instead.
    fn deliver(&mut self, ev: CoreEvent, prompter: &Prompter) {
        let Some(parser) = self.calls.as_mut() else {
            self.send(api_event(ev, self.logprobs, prompter));
            return;
        };
        let (parsed, done) = match ev {
            CoreEvent::Token(t) => {
                let parsed = parser.push(&t.text);
                let mut out = api_event(CoreEvent::Token(t), self.logprobs, prompter);
                if let StreamEvent::Token(tok) = &mut out {
                    tok.text.clone_from(&parsed.content);
                }
                self.send(out);
                (parsed, None)
            }
            CoreEvent::Tail(text) => {
                let mut parsed = parser.push(&text);
                self.send_text(std::mem::take(&mut parsed.content));
                (parsed, None)
            }
            CoreEvent::Done(d) => {
                let mut parsed = parser.finish();
                self.send_text(std::mem::take(&mut parsed.content));
                (parsed, Some(d))
            }
            other => {
                self.send(api_event(other, self.logprobs, prompter));
                return;
            }
        };
        for c in parsed.calls {
            self.send(StreamEvent::ToolCall(ToolCallOut {
                id: new_id("call").replace('-', "_"),
                name: c.name,
                arguments: c.arguments,
            }));
        }
        if let Some(d) = done {
            self.send(api_event(CoreEvent::Done(d), self.logprobs, prompter));
        }
    }

    /// Text released at the end, with no token of its own.
    fn send_text(&self, text: String) {
        if !text.is_empty() {
            self.send(StreamEvent::Token(TokenOut {
                text,
                token: None,
                logprob: None,
                top: Vec::new(),
                tail: true,
            }));
        }
    }
}

/// The API's form of one of the core's events.
fn api_event(ev: CoreEvent, logprobs: Option<usize>, prompter: &Prompter) -> StreamEvent {
    match ev {
        CoreEvent::Token(t) => StreamEvent::Token(TokenOut {
            text: t.text,
            token: logprobs.map(|_| prompter.token_text(t.id)),
            logprob: logprobs.map(|_| t.logprob),
            top: top_out(t.top, prompter),
            tail: false,
        }),
        CoreEvent::Tail(text) => StreamEvent::Token(TokenOut {
            text,
            token: None,
            logprob: None,
            top: Vec::new(),
            tail: true,
        }),
        CoreEvent::Prompt(scores) => StreamEvent::Prompt(prompt_out(scores, prompter)),
        CoreEvent::Done(d) => StreamEvent::Done(DoneOut {
            finish_reason: d.finish_reason,
            usage: d.usage,
            timings: Some(d.timings),
        }),
    }
}

struct Worker {
    id: String,
    opts: EngineOptions,
    metrics: Arc<Metrics>,
    shared: Arc<Shared>,
}

impl Worker {
    /// Runs the loop, and after a panic in it (a bug in a kernel, the sampler, a detokenizer)
    /// fails the requests it was serving with a 500, drops their sequences and KV caches, and
    /// starts again: the weights are read-only, so the model itself is intact, and the queue
    /// and later requests are served as before.
    fn supervise(self, mut lm: LoadedModel, mut rx: mpsc::Receiver<Job>) {
        let mut clients: HashMap<SeqId, Client> = HashMap::new();
        // The next job when it waits for KV-cache room (running sequences to finish).
        let mut held: Option<Job> = None;
        // Only for the idle wait's timeout; the worker itself stays a plain thread.
        let idle_timer = if self.opts.kv_idle_release.is_zero() {
            None
        } else {
            match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(rt) => Some(rt),
                Err(e) => {
                    eprintln!(
                        "engine `{}`: no timer for releasing idle KV-cache slots ({e}); they are kept",
                        self.id
                    );
                    None
                }
            }
        };
        loop {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.run(
                    &mut lm,
                    &mut rx,
                    &mut clients,
                    &mut held,
                    idle_timer.as_ref(),
                )
            }));
            let Err(panic) = run else { return };
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            self.metrics
                .inc("bakeoff_engine_restarts_total", &[("model", &self.id)]);
            eprintln!(
                "engine `{}`: the worker panicked ({what}); {} request(s) failed, restarting",
                self.id,
                clients.len()
            );
            for (_, c) in clients.drain() {
                c.send(StreamEvent::Error(ApiError::internal(format!(
                    "the engine of `{}` failed while generating this answer ({what}) and was restarted; retry the request",
                    self.id
                ))));
            }
            // A job waiting for KV room was not started: it stays queued for the restarted loop.
            lm.scheduler.abandon(lm.model.as_mut());
            lm.scheduler = bakeoff_engine::generate::Scheduler::new(SchedulerOptions {
                max_batch: self.opts.max_batch,
                prefill_chunk: self.opts.prefill_chunk,
            });
        }
    }

    fn run(
        &self,
        lm: &mut LoadedModel,
        rx: &mut mpsc::Receiver<Job>,
        clients: &mut HashMap<SeqId, Client>,
        held: &mut Option<Job>,
        idle_timer: Option<&tokio::runtime::Runtime>,
    ) {
        let prompter = lm.prompter.clone();
        let labels = [("model", self.id.as_str())];
        loop {
            if lm.scheduler.is_idle() && held.is_none() {
                self.shared.active.store(0, Ordering::Relaxed);
                let kv = lm.model.kv_cache_bytes();
                self.metrics
                    .set("bakeoff_engine_kv_cache_bytes", &labels, kv as f64);
                let next = match idle_timer.filter(|_| kv > 0) {
                    Some(rt) => rt.block_on(async {
                        tokio::time::timeout(self.opts.kv_idle_release, rx.recv()).await
                    }),
                    None => Ok(rx.blocking_recv()),
                };
                match next {
                    Ok(Some(job)) => *held = Some(job),
                    Ok(None) => return,
                    Err(_) => {
                        // Idle past the delay: a burst's slots would otherwise hold their
                        // memory until the next burst.
                        lm.scheduler.release_idle(lm.model.as_mut());
                        bakeoff_engine::memory::release_free_heap();
                        continue;
                    }
                }
            }
            // Jobs past the batch stay in the channel, where they count against the queue bound.
            while lm.scheduler.pending() < self.opts.max_batch {
                let Some(job) = held.take().or_else(|| rx.try_recv().ok()) else {
                    break;
                };
                let reserved: u64 = clients.values().map(|c| c.kv_bytes).sum();
                // Admission already refused a job that cannot fit alone, so an idle engine
                // always takes the next one.
                if !clients.is_empty() && reserved + job.kv_bytes > self.opts.kv_budget_bytes {
                    *held = Some(job);
                    break;
                }
                self.submit(job, lm, clients);
            }
            // Clients that went away: stop before spending a step on them.
            clients.retain(|id, c| {
                if c.tx.is_closed() {
                    self.metrics.inc("bakeoff_engine_cancelled_total", &labels);
                    lm.scheduler.cancel(*id);
                    false
                } else {
                    true
                }
            });
            self.shared
                .active
                .store(lm.scheduler.pending(), Ordering::Relaxed);
            if lm.scheduler.is_idle() {
                continue;
            }
            if let Some(h) = &self.opts.fault_hook {
                (h.0)();
            }
            self.shared.steps.fetch_add(1, Ordering::Relaxed);
            let stats = lm.step(&mut |id, ev| {
                let done = matches!(ev, CoreEvent::Done(_));
                if let Some(c) = clients.get_mut(&id) {
                    c.deliver(ev, &prompter);
                }
                if done {
                    clients.remove(&id);
                }
                Flow::Continue
            });
            if stats.batch > 0 {
                self.metrics
                    .observe("bakeoff_engine_batch_size", &labels, stats.batch as f64);
            }
            for (_, cached, prefilled) in &stats.admitted {
                self.metrics.add(
                    "bakeoff_engine_cached_tokens_total",
                    &labels,
                    *cached as f64,
                );
                self.metrics.add(
                    "bakeoff_engine_prefilled_tokens_total",
                    &labels,
                    *prefilled as f64,
                );
            }
            for (id, e) in stats.failed {
                if let Some(c) = clients.remove(&id) {
                    c.send(StreamEvent::Error(ApiError::internal(format!(
                        "model `{}` failed: {e}",
                        self.id
                    ))));
                }
            }
            if !self.opts.step_delay.is_zero() {
                std::thread::sleep(self.opts.step_delay);
            }
        }
    }

    /// Hands a job to the generation core.
    fn submit(&self, job: Job, lm: &mut LoadedModel, clients: &mut HashMap<SeqId, Client>) {
        if job.tx.is_closed() {
            self.metrics
                .inc("bakeoff_engine_cancelled_total", &[("model", &self.id)]);
            return;
        }
        match lm.submit(job.prompt, job.params, job.enqueued) {
            Ok(id) => {
                clients.insert(
                    id,
                    Client {
                        tx: job.tx,
                        logprobs: job.logprobs,
                        kv_bytes: job.kv_bytes,
                        calls: job.tools.map(ToolCallParser::new),
                    },
                );
            }
            Err(e) => {
                let _ = job.tx.send(StreamEvent::Error(e.into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bakeoff_engine::sampling::top_logprobs;

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
