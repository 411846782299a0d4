//! The generation loop shared by the CLI, bench, eval and server. Prefill runs the prompt in one
//! batch; decode runs one token at a time on the KV cache. The final [`Summary`] carries the
//! timings, so every consumer measures the same way.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::detok::Detokenizer;
use crate::model::LoadedModel;
use crate::sampling::{Sampler, SamplingParams};
use crate::{Error, Result};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GenParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops before the first occurrence of any of these strings.
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens (for timing runs, as llama-bench does).
    pub ignore_eos: bool,
}

impl Default for GenParams {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampling: SamplingParams::greedy(),
            stop: Vec::new(),
            ignore_eos: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The context window is full.
    ContextFull,
    /// The consumer asked to stop (Ctrl-C, client gone).
    Cancelled,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContextFull => "context_full",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// What the consumer sees for each generated token.
#[derive(Clone, Debug)]
pub struct TokenEvent<'a> {
    pub id: u32,
    /// Newly complete text (may be empty while a multi-byte character is pending).
    pub text: &'a str,
    pub logprob: f32,
    pub index: usize,
}

/// The timing summary every stream ends with.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub prompt_tokens: usize,
    /// Prompt tokens actually computed (the rest came from the KV cache).
    pub prefilled_tokens: usize,
    pub generated_tokens: usize,
    pub load_s: f64,
    pub ttft_ms: f64,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    pub finish_reason: FinishReason,
    pub peak_rss_bytes: u64,
}

#[derive(Clone, Debug)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    pub ids: Vec<u32>,
    pub text: String,
    pub logprobs: Vec<f32>,
    /// Seconds from the start of the request to each token (the first is the TTFT).
    pub token_times: Vec<f64>,
    /// Seconds spent computing the prompt.
    pub prefill_s: f64,
    pub summary: Summary,
}

/// Flow control returned by the token callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

/// Holds back text that might be the start of a stop string, so nothing past one is streamed.
/// Shared by the generation loop and the server's batched scheduler.
pub struct StopMatcher {
    stops: Vec<String>,
    text: String,
    emitted: usize,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops,
            text: String::new(),
            emitted: 0,
        }
    }

    /// Adds text; returns (text safe to emit, whether a stop string was hit).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        self.text.push_str(piece);
        if self.stops.is_empty() {
            let out = self.text[self.emitted..].to_string();
            self.emitted = self.text.len();
            return (out, false);
        }
        let max_stop = self.stops.iter().map(|s| s.len()).max().unwrap_or(0);
        let from = floor_char(&self.text, self.emitted.saturating_sub(max_stop));
        let hit = self
            .stops
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min();
        if let Some(at) = hit {
            let out = self.text[self.emitted..at.max(self.emitted)].to_string();
            self.text.truncate(at);
            self.emitted = self.text.len();
            return (out, true);
        }
        // Longest suffix that is a proper prefix of a stop string stays pending.
        let mut hold = 0;
        for s in &self.stops {
            for k in (1..s.len()).rev() {
                if k <= self.text.len() - self.emitted
                    && s.is_char_boundary(k)
                    && self.text.ends_with(&s[..k])
                {
                    hold = hold.max(k);
                    break;
                }
            }
        }
        let end = self.text.len() - hold;
        let out = self.text[self.emitted..end].to_string();
        self.emitted = end;
        (out, false)
    }

    /// Releases any text still held back (at the end of generation).
    pub fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Generates from `prompt`, reusing the longest cached prefix, calling `on_token` per token.
pub fn generate(
    lm: &mut LoadedModel,
    prompt: &[u32],
    params: &GenParams,
    mut on_token: impl FnMut(&TokenEvent<'_>) -> Flow,
) -> Result<Generation> {
    let ctx = lm.model.config().max_context;
    check_request(prompt, params, ctx)?;
    let mut sampler = Sampler::new(params.sampling.clone())?;
    let eos: Vec<u32> = if params.ignore_eos {
        Vec::new()
    } else {
        lm.info.eos_token_ids.clone()
    };
    let start = Instant::now();

    let mut reuse = common_prefix(&lm.history, prompt).min(lm.model.position());
    if reuse == prompt.len() {
        reuse -= 1; // at least one token must run to produce logits
    }
    lm.model.truncate(reuse);
    lm.history.truncate(reuse);
    let mut logits = match lm.model.forward(&prompt[reuse..], false) {
        Ok(l) => l,
        Err(e) => {
            lm.model.truncate(0);
            lm.history.clear();
            return Err(e);
        }
    };
    lm.history.extend_from_slice(&prompt[reuse..]);
    let prefill_s = start.elapsed().as_secs_f64();

    let mut detok = Detokenizer::new(&lm.tokenizer);
    let mut stops = StopMatcher::new(params.stop.clone());
    let mut context: Vec<u32> = prompt.to_vec();
    let (mut ids, mut logprobs, mut times) = (Vec::new(), Vec::new(), Vec::new());
    let mut text = String::new();
    let finish = loop {
        let s = sampler.sample(&mut logits, &context);
        let now = start.elapsed().as_secs_f64();
        if eos.contains(&s.id) {
            break FinishReason::Stop;
        }
        ids.push(s.id);
        logprobs.push(s.logprob);
        times.push(now);
        context.push(s.id);
        let piece = detok.push(s.id)?.unwrap_or_default();
        let (out, hit) = stops.push(&piece);
        text.push_str(&out);
        let flow = on_token(&TokenEvent {
            id: s.id,
            text: &out,
            logprob: s.logprob,
            index: ids.len() - 1,
        });
        if hit {
            break FinishReason::Stop;
        }
        if flow == Flow::Stop {
            break FinishReason::Cancelled;
        }
        if ids.len() >= params.max_tokens {
            break FinishReason::Length;
        }
        if lm.model.position() >= ctx {
            break FinishReason::ContextFull;
        }
        logits = lm.model.forward(&[s.id], false)?;
        lm.history.push(s.id);
    };
    if finish != FinishReason::Stop || params.stop.is_empty() {
        let tail = detok.finish()?.unwrap_or_default();
        let (mut out, _) = stops.push(&tail);
        out.push_str(&stops.flush());
        if !out.is_empty() {
            text.push_str(&out);
            on_token(&TokenEvent {
                id: u32::MAX,
                text: &out,
                logprob: 0.0,
                index: ids.len(),
            });
        }
    }
    let ttft = times.first().copied().unwrap_or(prefill_s);
    let decode_tok_s = match (times.first(), times.last()) {
        (Some(a), Some(b)) if times.len() > 1 && b > a => (times.len() - 1) as f64 / (b - a),
        _ => 0.0,
    };
    let prefilled = prompt.len() - reuse;
    let summary = Summary {
        prompt_tokens: prompt.len(),
        prefilled_tokens: prefilled,
        generated_tokens: ids.len(),
        load_s: lm.info.load_s,
        ttft_ms: ttft * 1e3,
        prefill_tok_s: if prefill_s > 0.0 {
            prefilled as f64 / prefill_s
        } else {
            0.0
        },
        decode_tok_s,
        finish_reason: finish,
        peak_rss_bytes: crate::memory::peak_rss_bytes(),
    };
    Ok(Generation {
        prompt_ids: prompt.to_vec(),
        ids,
        text,
        logprobs,
        token_times: times,
        prefill_s,
        summary,
    })
}

/// One sequence of [`generate_batch`].
struct BatchSeq<'t> {
    slot: usize,
    prompt: Vec<u32>,
    max_tokens: usize,
    sampler: Sampler,
    eos: Vec<u32>,
    detok: Detokenizer<'t>,
    stops: StopMatcher,
    has_stops: bool,
    context: Vec<u32>,
    ids: Vec<u32>,
    logprobs: Vec<f32>,
    times: Vec<f64>,
    text: String,
    prefill_s: f64,
    logits: Vec<f32>,
    finish: Option<FinishReason>,
}

fn check_request(prompt: &[u32], params: &GenParams, ctx: usize) -> Result<()> {
    if prompt.is_empty() {
        return Err(Error::InvalidArgument(
            "the prompt is empty (no tokens)".into(),
        ));
    }
    if params.max_tokens == 0 {
        return Err(Error::InvalidArgument(
            "max_tokens must be at least 1".into(),
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

/// Generates from several prompts at once, each in a KV-cache slot of its own. Every decode step
/// runs all unfinished sequences through one forward pass, so each weight is read once per step
/// for all of them: on a memory-bound CPU that is several times the throughput of running them
/// one after another (what batched evaluation needs). Slot 0 and its cached prefix are left as
/// they were. Token times count from the start of the batch. The tokens equal [`generate`]'s up
/// to the rounding of the batched matrix kernels, which can flip a near-tie between two tokens.
pub fn generate_batch(
    lm: &mut LoadedModel,
    requests: &[(&[u32], &GenParams)],
) -> Result<Vec<Generation>> {
    let ctx = lm.model.config().max_context;
    for (prompt, params) in requests {
        check_request(prompt, params, ctx)?;
    }
    let mut slots = Vec::with_capacity(requests.len());
    let result = (|| {
        for _ in requests {
            slots.push(lm.model.alloc_slot()?);
        }
        run_batch(lm, requests, &slots)
    })();
    for &s in &slots {
        lm.model.free_slot(s);
    }
    result
}

fn run_batch(
    lm: &mut LoadedModel,
    requests: &[(&[u32], &GenParams)],
    slots: &[usize],
) -> Result<Vec<Generation>> {
    let ctx = lm.model.config().max_context;
    let start = Instant::now();
    let model = &mut lm.model;
    let tokenizer = &lm.tokenizer;
    let eos_ids = &lm.info.eos_token_ids;
    let mut seqs = Vec::with_capacity(requests.len());
    for (&(prompt, params), &slot) in requests.iter().zip(slots) {
        // Prompts run one at a time: a prompt is already a matrix, and this bounds the activations.
        let t0 = start.elapsed().as_secs_f64();
        let logits = model
            .forward_batch(&[(slot, prompt)])?
            .pop()
            .unwrap_or_default();
        seqs.push(BatchSeq {
            slot,
            prompt: prompt.to_vec(),
            max_tokens: params.max_tokens,
            sampler: Sampler::new(params.sampling.clone())?,
            eos: if params.ignore_eos {
                Vec::new()
            } else {
                eos_ids.clone()
            },
            detok: Detokenizer::new(tokenizer),
            stops: StopMatcher::new(params.stop.clone()),
            has_stops: !params.stop.is_empty(),
            context: prompt.to_vec(),
            ids: Vec::new(),
            logprobs: Vec::new(),
            times: Vec::new(),
            text: String::new(),
            prefill_s: start.elapsed().as_secs_f64() - t0,
            logits,
            finish: None,
        });
    }
    loop {
        for q in seqs.iter_mut().filter(|q| q.finish.is_none()) {
            let s = q.sampler.sample(&mut q.logits, &q.context);
            let now = start.elapsed().as_secs_f64();
            if q.eos.contains(&s.id) {
                q.finish = Some(FinishReason::Stop);
                continue;
            }
            q.ids.push(s.id);
            q.logprobs.push(s.logprob);
            q.times.push(now);
            q.context.push(s.id);
            let piece = q.detok.push(s.id)?.unwrap_or_default();
            let (out, hit) = q.stops.push(&piece);
            q.text.push_str(&out);
            q.finish = if hit {
                Some(FinishReason::Stop)
            } else if q.ids.len() >= q.max_tokens {
                Some(FinishReason::Length)
            } else if model.slot_position(q.slot) >= ctx {
                Some(FinishReason::ContextFull)
            } else {
                None
            };
        }
        let active: Vec<usize> = (0..seqs.len())
            .filter(|&i| seqs[i].finish.is_none())
            .collect();
        if active.is_empty() {
            break;
        }
        let last: Vec<[u32; 1]> = active
            .iter()
            .map(|&i| [*seqs[i].ids.last().unwrap_or(&0)])
            .collect();
        let items: Vec<(usize, &[u32])> = active
            .iter()
            .zip(&last)
            .map(|(&i, t)| (seqs[i].slot, &t[..]))
            .collect();
        let outs = model.forward_batch(&items)?;
        for (&i, l) in active.iter().zip(outs) {
            seqs[i].logits = l;
        }
    }
    let peak = crate::memory::peak_rss_bytes();
    let mut gens = Vec::with_capacity(seqs.len());
    for mut q in seqs {
        let finish = q.finish.unwrap_or(FinishReason::Length);
        if finish != FinishReason::Stop || !q.has_stops {
            let tail = q.detok.finish()?.unwrap_or_default();
            let (out, _) = q.stops.push(&tail);
            q.text.push_str(&out);
            q.text.push_str(&q.stops.flush());
        }
        let ttft = q.times.first().copied().unwrap_or(q.prefill_s);
        let decode_tok_s = match (q.times.first(), q.times.last()) {
            (Some(a), Some(b)) if q.times.len() > 1 && b > a => {
                (q.times.len() - 1) as f64 / (b - a)
            }
            _ => 0.0,
        };
        let summary = Summary {
            prompt_tokens: q.prompt.len(),
            prefilled_tokens: q.prompt.len(),
            generated_tokens: q.ids.len(),
            load_s: lm.info.load_s,
            ttft_ms: ttft * 1e3,
            prefill_tok_s: if q.prefill_s > 0.0 {
                q.prompt.len() as f64 / q.prefill_s
            } else {
                0.0
            },
            decode_tok_s,
            finish_reason: finish,
            peak_rss_bytes: peak,
        };
        gens.push(Generation {
            prompt_ids: q.prompt,
            ids: q.ids,
            text: q.text,
            logprobs: q.logprobs,
            token_times: q.times,
            prefill_s: q.prefill_s,
            summary,
        });
    }
    Ok(gens)
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::StopMatcher;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher {
            stops: stops.iter().map(|s| s.to_string()).collect(),
            text: String::new(),
            emitted: 0,
        };
        let mut out = String::new();
        for p in pieces {
            let (o, hit) = m.push(p);
            out.push_str(&o);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_string_split_across_pieces_is_cut() {
        assert_eq!(
            run(&["\nUser:"], &["Hello", "\nUs", "er:", " more"]),
            ("Hello".into(), true)
        );
    }

    #[test]
    fn partial_match_is_released_when_it_diverges() {
        assert_eq!(run(&["STOP"], &["ST", "OP?"]), ("".into(), true));
        assert_eq!(run(&["STOP"], &["ST", "ART"]), ("START".into(), false));
    }

    #[test]
    fn multibyte_text_near_stops_is_safe() {
        assert_eq!(
            run(&["é!"], &["café", " ok é", "!"]),
            ("café ok ".into(), true)
        );
    }
}
