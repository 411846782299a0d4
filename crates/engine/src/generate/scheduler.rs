//! The scheduler: KV-cache slots, prefix reuse, chunked prefill and batched steps.
//!
//! Each [`Scheduler::step`] builds one batch from every running sequence: a decoding sequence
//! contributes its last token, a new one a chunk of its prompt (all new prompts together get at
//! most `prefill_chunk` tokens per step, so a long prompt delays the sequences already decoding
//! by a bounded amount). `forward_batch` runs them in a single pass, so each weight matrix is
//! read once per step however many sequences there are; on a memory-bound CPU decode that is
//! where the aggregate throughput comes from. Sequences join between steps as soon as a slot is
//! free and leave as soon as they finish. A slot keeps its tokens after its sequence ends, and
//! a new sequence takes the free slot whose history shares the longest prefix with its prompt,
//! so the next turn of a chat recomputes only the new messages.

use std::collections::VecDeque;
use std::time::Instant;

use super::sequence::Sequence;
use super::{Event, Flow};
use crate::model::CausalLm;
use crate::{Error, Result};

/// A submitted sequence, as the scheduler names it in its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

#[derive(Clone, Copy, Debug)]
pub struct SchedulerOptions {
    /// Sequences generated together; more wait their turn.
    pub max_batch: usize,
    /// Prompt tokens computed per step across all new sequences.
    pub prefill_chunk: usize,
}

/// Prompt tokens per step unless the caller says otherwise: as llama.cpp's default micro-batch,
/// enough for the prompt tiles to run at full speed, while a long prompt's activations (a
/// `[tokens, intermediate]` matrix per projection, 147 MB for 4096 tokens of a 1.5B model) stay
/// those of 512 tokens.
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

impl Default for SchedulerOptions {
    /// No batch limit (a library caller decides the batch by what it submits); prompts in
    /// chunks of [`DEFAULT_PREFILL_CHUNK`].
    fn default() -> Self {
        Self {
            max_batch: usize::MAX,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
        }
    }
}

/// What one step did, for metrics and for the callers that wait on a sequence.
#[derive(Debug, Default)]
pub struct StepStats {
    /// Sequences in the forward pass.
    pub batch: usize,
    /// For each sequence admitted this step: prompt tokens reused from a slot's cache and
    /// prompt tokens to compute.
    pub admitted: Vec<(SeqId, usize, usize)>,
    /// Sequences that ended with an error instead of [`Event::Done`]; their slots are reset.
    pub failed: Vec<(SeqId, Error)>,
}

/// A KV-cache slot of the model and the tokens it holds.
struct Slot {
    id: usize,
    history: Vec<u32>,
    busy: bool,
    last_used: Instant,
}

struct Running {
    id: SeqId,
    seq: Sequence,
    /// Index into `Scheduler::slots`.
    slot: usize,
    /// Prompt tokens not computed yet start here.
    next_prompt: usize,
    /// Tokens in this sequence's KV cache.
    fed: Vec<u32>,
}

pub struct Scheduler {
    opts: SchedulerOptions,
    /// `slots[0]` is the model's slot 0, the one `CausalLm::forward` uses.
    slots: Vec<Slot>,
    waiting: VecDeque<(SeqId, Sequence)>,
    running: Vec<Running>,
    next_id: u64,
}

impl Scheduler {
    pub fn new(opts: SchedulerOptions) -> Self {
        Scheduler {
            opts: SchedulerOptions {
                max_batch: opts.max_batch.max(1),
                prefill_chunk: opts.prefill_chunk.max(1),
            },
            slots: vec![Slot {
                id: 0,
                history: Vec::new(),
                busy: false,
                last_used: Instant::now(),
            }],
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_id: 0,
        }
    }

    pub fn options(&self) -> SchedulerOptions {
        self.opts
    }

    pub(crate) fn push(&mut self, seq: Sequence) -> SeqId {
        let id = SeqId(self.next_id);
        self.next_id += 1;
        self.waiting.push_back((id, seq));
        id
    }

    /// Sequences submitted and not finished.
    pub fn pending(&self) -> usize {
        self.waiting.len() + self.running.len()
    }

    /// Sequences in the batch (admitted to a slot).
    pub fn running(&self) -> usize {
        self.running.len()
    }

    pub fn is_idle(&self) -> bool {
        self.pending() == 0
    }

    /// Ids of the sequences not finished, in submission order.
    pub fn ids(&self) -> Vec<SeqId> {
        let mut v: Vec<SeqId> = self
            .waiting
            .iter()
            .map(|(id, _)| *id)
            .chain(self.running.iter().map(|r| r.id))
            .collect();
        v.sort();
        v
    }

    /// Drops a sequence without a final event (its consumer is gone). Its slot keeps what was
    /// computed, for prefix reuse. Returns whether it was there.
    pub fn cancel(&mut self, id: SeqId) -> bool {
        if let Some(i) = self.waiting.iter().position(|(w, _)| *w == id) {
            self.waiting.remove(i);
            return true;
        }
        if let Some(i) = self.running.iter().position(|r| r.id == id) {
            let r = self.running.remove(i);
            self.release(&r);
            return true;
        }
        false
    }

    /// Runs one batched step: admits waiting sequences, computes one chunk of prompt or one
    /// token for each running sequence, and streams what each produced through `sink`.
    pub fn step(
        &mut self,
        model: &mut dyn CausalLm,
        sink: &mut dyn FnMut(SeqId, Event) -> Flow,
    ) -> StepStats {
        let mut stats = StepStats::default();
        self.admit(model, &mut stats);
        if self.running.is_empty() {
            return stats;
        }
        let ctx = model.config().max_context;
        let mut budget = self.opts.prefill_chunk;
        let mut items: Vec<(usize, Vec<u32>)> = Vec::with_capacity(self.running.len());
        for (i, r) in self.running.iter().enumerate() {
            let plen = r.seq.prompt.len();
            if r.next_prompt < plen {
                if budget == 0 {
                    continue;
                }
                let mut n = (plen - r.next_prompt).min(budget);
                if r.seq.scores_prompt() {
                    // Every position's logits are kept (vocabulary × 4 bytes each).
                    n = n.min(SCORED_CHUNK);
                }
                budget -= n;
                items.push((i, r.seq.prompt[r.next_prompt..r.next_prompt + n].to_vec()));
            } else {
                items.push((i, vec![r.seq.last]));
            }
        }
        stats.batch = items.len();
        let prompt_tokens: usize = items.iter().map(|(_, t)| t.len()).sum::<usize>() - items.len();
        let batch: Vec<(usize, &[u32])> = items
            .iter()
            .map(|(i, toks)| (self.slots[self.running[*i].slot].id, toks.as_slice()))
            .collect();
        let all: Vec<bool> = items
            .iter()
            .map(|(i, _)| {
                let r = &self.running[*i];
                r.seq.scores_prompt() && r.next_prompt < r.seq.prompt.len()
            })
            .collect();
        let result = if all.iter().any(|&a| a) {
            model.forward_batch_with(&batch, &all)
        } else {
            model.forward_batch(&batch)
        };
        drop(batch);
        if prompt_tokens >= TRIM_AFTER {
            // A prompt's megabyte-sized activations are free now; returned to the system, the
            // decode that follows (and its growing KV cache) does not sit on top of them.
            crate::memory::release_free_heap();
        }
        let mut done = vec![false; self.running.len()];
        match result {
            Err(e) => {
                // The pass failed for every sequence in it; their caches are in an unknown state.
                // The first keeps the typed error, the others a copy of its message.
                let msg = e.to_string();
                let mut first = Some(e);
                for (i, _) in &items {
                    let r = &mut self.running[*i];
                    r.fed.clear();
                    done[*i] = true;
                    let err = first
                        .take()
                        .unwrap_or_else(|| Error::Generation(msg.clone()));
                    stats.failed.push((r.id, err));
                }
            }
            Ok(logits) => {
                let now = Instant::now();
                let width = model.config().vocab_size;
                for (((i, toks), mut lg), every) in items.into_iter().zip(logits).zip(all) {
                    let r = &mut self.running[i];
                    r.fed.extend_from_slice(&toks);
                    let id = r.id;
                    if every {
                        r.seq.score_prompt(&lg, width, r.next_prompt);
                        // The last row goes on to sample the first token.
                        lg.drain(..lg.len().saturating_sub(width));
                    }
                    if r.next_prompt < r.seq.prompt.len() {
                        r.next_prompt += toks.len();
                        if r.next_prompt < r.seq.prompt.len() {
                            continue; // more prompt to compute before sampling
                        }
                        r.seq.prefilled(now);
                        if let Some(scores) = r.seq.take_prompt_scores() {
                            sink(id, Event::Prompt(scores));
                        }
                    }
                    let full = r.fed.len() >= ctx;
                    match r.seq.accept(lg, full, &mut |ev| sink(id, ev)) {
                        Ok(Some(_)) => done[i] = true,
                        Ok(None) => {}
                        Err(e) => {
                            done[i] = true;
                            stats.failed.push((id, e));
                        }
                    }
                }
            }
        }
        let mut k = 0;
        let mut finished = Vec::new();
        self.running.retain_mut(|r| {
            let d = done[k];
            k += 1;
            if d {
                finished.push((r.slot, std::mem::take(&mut r.fed)));
            }
            !d
        });
        for (slot, fed) in finished {
            self.free(slot, fed);
        }
        for s in &self.slots {
            if !s.busy && s.history.is_empty() {
                model.truncate_slot(s.id, 0);
            }
        }
        stats
    }

    /// Gives waiting sequences a slot each (reusing the longest cached prefix), up to the
    /// batch size.
    fn admit(&mut self, model: &mut dyn CausalLm, stats: &mut StepStats) {
        while self.running.len() < self.opts.max_batch {
            // A prompt that a running sequence is still computing (the choices of an `n > 1`
            // request, the same long system prompt) waits for it and then copies its cache,
            // instead of computing the same positions beside it.
            if let Some((_, next)) = self.waiting.front()
                && !next.scores_prompt()
                && self.running.iter().any(|r| {
                    r.next_prompt < r.seq.prompt.len()
                        && worth_waiting(
                            common_prefix(&r.seq.prompt, &next.prompt),
                            next.prompt.len(),
                        )
                })
            {
                break;
            }
            let Some((id, mut seq)) = self.waiting.pop_front() else {
                break;
            };
            let now = Instant::now();
            let free = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.busy)
                .max_by_key(|(_, s)| {
                    (
                        common_prefix(&s.history, &seq.prompt),
                        std::cmp::Reverse(s.last_used),
                    )
                })
                .map(|(i, _)| i);
            let idx = match free {
                Some(i) => i,
                None => match model.alloc_slot() {
                    Ok(sid) => {
                        self.slots.push(Slot {
                            id: sid,
                            history: Vec::new(),
                            busy: false,
                            last_used: now,
                        });
                        self.slots.len() - 1
                    }
                    Err(e) => {
                        stats.failed.push((id, e));
                        continue;
                    }
                },
            };
            // The longest prefix a running sequence has computed already, if worth copying.
            let shared = self
                .running
                .iter()
                .filter(|r| r.next_prompt >= r.seq.prompt.len())
                .map(|r| {
                    let n = common_prefix(&r.fed, &seq.prompt)
                        .min(model.slot_position(self.slots[r.slot].id))
                        .min(seq.prompt.len().saturating_sub(1));
                    (n, self.slots[r.slot].id)
                })
                .max_by_key(|&(n, _)| n)
                .filter(|&(n, _)| n >= MIN_SHARED);
            let slot = &mut self.slots[idx];
            // A scored prompt needs the logits of every position, so nothing of it is reused.
            let mut reuse = if seq.scores_prompt() {
                0
            } else {
                reusable(&slot.history, model.slot_position(slot.id), &seq.prompt)
            };
            if let Some((n, src)) = shared.filter(|&(n, _)| n > reuse && !seq.scores_prompt()) {
                if let Err(e) = model.copy_slot(src, slot.id, n) {
                    stats.failed.push((id, e));
                    continue;
                }
                reuse = n;
            }
            model.truncate_slot(slot.id, reuse);
            slot.busy = true;
            slot.history.clear();
            seq.admit(reuse, now);
            stats
                .admitted
                .push((id, reuse, seq.prompt.len().saturating_sub(reuse)));
            let fed = seq.prompt[..reuse].to_vec();
            self.running.push(Running {
                id,
                seq,
                slot: idx,
                next_prompt: reuse,
                fed,
            });
        }
    }

    fn release(&mut self, r: &Running) {
        self.free(r.slot, r.fed.clone());
    }

    /// Frees a slot, remembering what its cache holds for prefix reuse.
    fn free(&mut self, slot: usize, fed: Vec<u32>) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.busy = false;
            s.history = fed;
            s.last_used = Instant::now();
        }
    }

    /// Gives back the memory of every idle slot but slot 0 (after a batch, so a library caller
    /// does not keep a batch's KV caches).
    pub fn shrink(&mut self, model: &mut dyn CausalLm) {
        let mut i = 1;
        while i < self.slots.len() {
            if self.slots[i].busy {
                i += 1;
                continue;
            }
            let s = self.slots.remove(i);
            model.free_slot(s.id);
            // Indices of running sequences past `i` move down by one.
            for r in &mut self.running {
                if r.slot > i {
                    r.slot -= 1;
                }
            }
        }
    }

    /// Gives back the KV-cache memory of every idle slot, slot 0 included, forgetting what they
    /// held (a server idle for a while after a burst).
    pub fn release_idle(&mut self, model: &mut dyn CausalLm) {
        self.shrink(model);
        if let Some(s) = self.slots.first_mut().filter(|s| !s.busy) {
            s.history.clear();
            model.free_slot(0);
        }
    }

    /// Drops every sequence and frees every slot, busy or not: after a worker panicked in the
    /// middle of a step, nothing the scheduler held is trusted, and the slots' memory would
    /// otherwise stay allocated in the model with no scheduler knowing of it.
    pub fn abandon(&mut self, model: &mut dyn CausalLm) {
        self.waiting.clear();
        self.running.clear();
        for s in self.slots.drain(1..) {
            model.free_slot(s.id);
        }
        if let Some(s) = self.slots.first_mut() {
            s.busy = false;
            s.history.clear();
            model.free_slot(0);
        }
    }

    /// Forgets what every idle slot holds.
    pub fn reset(&mut self, model: &mut dyn CausalLm) {
        for s in self.slots.iter_mut().filter(|s| !s.busy) {
            s.history.clear();
            model.truncate_slot(s.id, 0);
        }
    }

    fn slot0(&mut self) -> Result<&mut Slot> {
        match self.slots.first_mut() {
            Some(s) if !s.busy => Ok(s),
            _ => Err(Error::InvalidArgument(
                "slot 0 is generating; finish or cancel its sequence first".into(),
            )),
        }
    }

    /// Makes slot 0 hold exactly `ids`, computing only what its cache does not already hold;
    /// returns the last token's logits (scoring, which needs no sampling).
    pub fn prefill(&mut self, model: &mut dyn CausalLm, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(Error::InvalidArgument("empty context".into()));
        }
        let slot = self.slot0()?;
        let reuse = reusable(&slot.history, model.position(), ids);
        model.truncate(reuse);
        slot.history.truncate(reuse);
        match model.forward(&ids[reuse..], false) {
            Ok(l) => {
                slot.history.extend_from_slice(&ids[reuse..]);
                Ok(l)
            }
            Err(e) => {
                model.truncate(0);
                slot.history.clear();
                Err(e)
            }
        }
    }

    /// Runs `ids` after what slot 0 holds; returns the logits of the last or of every token.
    pub fn extend(
        &mut self,
        model: &mut dyn CausalLm,
        ids: &[u32],
        all_logits: bool,
    ) -> Result<Vec<f32>> {
        let slot = self.slot0()?;
        slot.history.truncate(model.position());
        match model.forward(ids, all_logits) {
            Ok(l) => {
                slot.history.extend_from_slice(ids);
                Ok(l)
            }
            Err(e) => {
                model.truncate(0);
                slot.history.clear();
                Err(e)
            }
        }
    }

    /// Keeps the first `len` tokens of slot 0.
    pub fn truncate(&mut self, model: &mut dyn CausalLm, len: usize) -> Result<()> {
        let slot = self.slot0()?;
        model.truncate(len);
        slot.history.truncate(len);
        Ok(())
    }

    /// Tokens slot 0 holds.
    pub fn cached(&self) -> &[u32] {
        self.slots.first().map_or(&[], |s| &s.history)
    }
}

/// Shortest prefix copied from a running sequence's cache (shorter ones cost about as much to
/// compute again).
const MIN_SHARED: usize = 16;

/// Whether a prompt should wait for a running sequence that is computing `common` of its
/// `len` tokens: most of it, and enough to matter.
fn worth_waiting(common: usize, len: usize) -> bool {
    common >= 2 * MIN_SHARED && common * 4 >= len * 3
}

/// Prompt tokens per step of a sequence whose prompt is scored: its logits are kept for every
/// position (Qwen2.5's 151,936-entry vocabulary: 0.6 MB per token).
const SCORED_CHUNK: usize = 128;

/// Prompt tokens in one step past which the freed heap is handed back afterwards (a trim costs
/// well under a millisecond; a 64-token prompt takes tens).
const TRIM_AFTER: usize = 64;

/// Prompt tokens whose cache entries can be kept: the common prefix, bounded by what the cache
/// holds, and at least one token short of the prompt, which must run to give logits.
fn reusable(history: &[u32], position: usize, prompt: &[u32]) -> usize {
    common_prefix(history, prompt)
        .min(position)
        .min(prompt.len().saturating_sub(1))
}

/// Length of the common prefix of two token sequences.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
