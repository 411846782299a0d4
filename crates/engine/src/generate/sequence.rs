//! One request being generated: its sampler, detokenizer, stop matcher, finish logic and
//! timings. The scheduler hands it the logits of each step; it decides the token, the text to
//! stream and whether the answer is over, the same way for every consumer.

use std::time::Instant;

use bakeoff_record::{FinishReason, Timings, Usage, decode_rate};

use super::stop::StopMatcher;
use super::{Done, Event, Flow, GenParams, PromptToken, Token};
use crate::constrain::Constraint;
use crate::detok::Detokenizer;
use crate::prompt::Prompter;
use crate::sampling::{Sampler, log_softmax_at, top_logprobs};
use crate::{Error, Result};

pub(crate) struct Sequence {
    pub(crate) prompt: Vec<u32>,
    params: GenParams,
    sampler: Sampler,
    /// Ids the tokenizer knows: embedding rows past them (padding) are never sampled.
    vocab: usize,
    detok: Detokenizer,
    stops: StopMatcher,
    eos: Vec<u32>,
    /// Prompt and answer, for the repetition penalty (empty when it is off).
    context: Vec<u32>,
    pub(crate) generated: usize,
    pub(crate) last: u32,
    /// Prompt tokens whose KV-cache entries were reused.
    pub(crate) cached: usize,
    /// The prompt scored so far, when asked for.
    prompt_scores: Vec<PromptToken>,
    /// The grammar the answer must follow, when there is one.
    constraint: Option<Constraint>,
    submitted: Instant,
    admitted: Option<Instant>,
    prefilled_at: Option<Instant>,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
}

impl Sequence {
    pub(crate) fn new(
        prompt: Vec<u32>,
        mut params: GenParams,
        prompter: &Prompter,
        submitted: Instant,
    ) -> Result<Self> {
        let sampler = Sampler::new(params.sampling.clone())?;
        let constraint = match &params.response_format {
            Some(_) if params.ignore_eos => {
                return Err(Error::InvalidArgument(
                    "a response format ends the answer where its grammar does; it cannot be \
                     combined with ignore_eos"
                        .into(),
                ));
            }
            Some(c) => match params.compiled_format.take() {
                Some(ready) => Some(ready),
                None => Some(prompter.constraint(c)?),
            },
            None => None,
        };
        let eos = if params.ignore_eos {
            Vec::new()
        } else {
            prompter.eos_ids().to_vec()
        };
        let context = if params.sampling.repetition_penalty != 1.0 {
            prompt.clone()
        } else {
            Vec::new()
        };
        Ok(Sequence {
            stops: StopMatcher::new(params.stop.clone()),
            detok: prompter.detokenizer(),
            prompt,
            params,
            sampler,
            vocab: prompter.tokenizer().vocab_size(),
            eos,
            context,
            generated: 0,
            last: 0,
            cached: 0,
            prompt_scores: Vec::new(),
            constraint,
            submitted,
            admitted: None,
            prefilled_at: None,
            first_at: None,
            last_at: None,
        })
    }

    /// Whether the prompt is scored: every position's logits are needed.
    pub(crate) fn scores_prompt(&self) -> bool {
        self.params.prompt_logprobs.is_some()
    }

    /// Scores the prompt tokens that `rows` (the logits of `rows.len() / width` positions from
    /// `start` on) predict: row j gives the log-probability of prompt token `start + j + 1`.
    pub(crate) fn score_prompt(&mut self, rows: &[f32], width: usize, start: usize) {
        let Some(k) = self.params.prompt_logprobs else {
            return;
        };
        if start == 0
            && let Some(&first) = self.prompt.first()
        {
            self.prompt_scores.push(PromptToken {
                id: first,
                logprob: None,
                top: Vec::new(),
            });
        }
        let keep = if self.vocab > 0 {
            self.vocab.min(width)
        } else {
            width
        };
        for (j, row) in rows.chunks_exact(width.max(1)).enumerate() {
            let Some(&next) = self.prompt.get(start + j + 1) else {
                break;
            };
            let row = &row[..keep];
            // With at least one alternative listed, the token's own value comes from the same
            // computation as the list, so a client testing "is it the most likely token" by
            // equality (lm-evaluation-harness's is_greedy) is not misled by the last bit.
            let top = top_logprobs(row, k.max(1));
            let logprob = top
                .iter()
                .find(|&&(id, _)| id == next)
                .map_or_else(|| log_softmax_at(row, next as usize) as f32, |&(_, l)| l);
            self.prompt_scores.push(PromptToken {
                id: next,
                logprob: Some(logprob),
                top: if k == 0 { Vec::new() } else { top },
            });
        }
    }

    /// The scored prompt, once, when it was asked for.
    pub(crate) fn take_prompt_scores(&mut self) -> Option<Vec<PromptToken>> {
        self.params
            .prompt_logprobs
            .map(|_| std::mem::take(&mut self.prompt_scores))
    }

    pub(crate) fn admit(&mut self, cached: usize, at: Instant) {
        self.cached = cached;
        self.admitted = Some(at);
    }

    /// The prompt's last chunk has been computed.
    pub(crate) fn prefilled(&mut self, at: Instant) {
        self.prefilled_at.get_or_insert(at);
    }

    /// Samples the next token from `logits` and streams what it adds. `context_full` says the
    /// KV cache has no room for another token. Returns the finish reason when the answer ends;
    /// the last event sent is then [`Event::Done`].
    pub(crate) fn accept(
        &mut self,
        mut logits: Vec<f32>,
        context_full: bool,
        sink: &mut dyn FnMut(Event) -> Flow,
    ) -> Result<Option<FinishReason>> {
        if self.params.max_tokens == 0 {
            // Only the prompt was wanted (its scores went out before).
            return Ok(Some(self.finish(FinishReason::Length, false, sink)?));
        }
        if logits.len() > self.vocab && self.vocab > 0 {
            logits.truncate(self.vocab);
        }
        let top = match self.params.top_logprobs {
            0 => Vec::new(),
            k => top_logprobs(&logits, k),
        };
        let mut s = match &mut self.constraint {
            None => self.sampler.sample(&mut logits, &self.context),
            Some(c) => {
                let model = logits.clone();
                c.restrict(&mut logits)?;
                let mut s = self.sampler.sample(&mut logits, &self.context);
                s.logprob = log_softmax_at(&model, s.id as usize) as f32;
                if !self.eos.contains(&s.id) {
                    c.commit(s.id)?;
                }
                s
            }
        };
        // As for prompt tokens: a token in the listed alternatives reports the list's value, so
        // "is it the most likely" holds by equality.
        if let Some(&(_, l)) = top.iter().find(|&&(id, _)| id == s.id) {
            s.logprob = l;
        }
        let now = Instant::now();
        self.first_at.get_or_insert(now);
        if self.eos.contains(&s.id) {
            if self.params.report_stop_token {
                sink(Event::Token(Token {
                    id: s.id,
                    text: String::new(),
                    logprob: s.logprob,
                    top,
                    index: self.generated,
                }));
            }
            return Ok(Some(self.finish(FinishReason::Stop, false, sink)?));
        }
        self.last_at = Some(now);
        self.generated += 1;
        self.last = s.id;
        if !self.context.is_empty() {
            self.context.push(s.id);
        }
        let piece = self.detok.push(s.id)?.unwrap_or_default();
        let (text, hit) = self.stops.push(&piece);
        let flow = sink(Event::Token(Token {
            id: s.id,
            text,
            logprob: s.logprob,
            top,
            index: self.generated - 1,
        }));
        let reason = if hit {
            return Ok(Some(self.finish(FinishReason::Stop, true, sink)?));
        } else if flow == Flow::Stop {
            FinishReason::Cancelled
        } else if self.constraint.as_ref().is_some_and(Constraint::finished) {
            // Nothing may follow but the end: ending here saves the step that would sample it.
            FinishReason::Stop
        } else if self.generated >= self.params.max_tokens {
            FinishReason::Length
        } else if context_full {
            FinishReason::ContextFull
        } else {
            return Ok(None);
        };
        Ok(Some(self.finish(reason, false, sink)?))
    }

    /// Releases the text still held back (unless a stop string cut the answer) and sends
    /// [`Event::Done`]. Held-back text that completes a stop string makes the reason `Stop`.
    fn finish(
        &mut self,
        mut reason: FinishReason,
        cut_by_stop: bool,
        sink: &mut dyn FnMut(Event) -> Flow,
    ) -> Result<FinishReason> {
        if !cut_by_stop {
            let tail = self.detok.finish()?.unwrap_or_default();
            let (mut out, hit) = self.stops.push(&tail);
            if hit {
                reason = FinishReason::Stop;
            } else {
                out.push_str(&self.stops.flush());
            }
            if !out.is_empty() {
                sink(Event::Tail(out));
            }
        }
        sink(Event::Done(self.done(reason)));
        Ok(reason)
    }

    /// The record of a finished (or failed) sequence.
    pub(crate) fn done(&self, finish_reason: FinishReason) -> Done {
        let ms = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64() * 1e3,
            _ => 0.0,
        };
        let usage = Usage {
            prompt_tokens: self.prompt.len(),
            cached_tokens: self.cached,
            completion_tokens: self.generated,
        };
        let prefill_ms = ms(self.admitted, self.prefilled_at);
        let rel = |t: Option<Instant>| {
            t.map_or(0.0, |t| {
                t.saturating_duration_since(self.submitted).as_secs_f64()
            })
        };
        Done {
            finish_reason,
            usage,
            timings: Timings {
                queue_ms: ms(Some(self.submitted), self.admitted),
                prefill_ms,
                ttft_ms: ms(Some(self.submitted), self.first_at),
                prefill_tok_s: if prefill_ms > 0.0 {
                    usage.prefilled_tokens() as f64 / (prefill_ms / 1e3)
                } else {
                    0.0
                },
                decode_tok_s: decode_rate(self.generated, rel(self.first_at), rel(self.last_at)),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::prompt::PrompterParts;
    use crate::tokenizer::{Tokenizer, TokenizerFamily};

    /// Qwen2's tiny tokenizer with no template, ending on `eos_ids`; and its vocabulary size.
    fn tiny_prompter(eos_ids: Vec<u32>) -> (Prompter, usize) {
        let tokenizer = Tokenizer::tiny(TokenizerFamily::Qwen2).unwrap();
        let vocab = tokenizer.vocab_size();
        let prompter = Prompter::new(PrompterParts {
            tokenizer,
            template: None,
            add_bos: false,
            bos_token: None,
            eos_token: None,
            eos_ids,
            source: "test".into(),
        });
        (prompter, vocab)
    }

    /// A model whose embedding has more rows than its tokenizer has tokens (Qwen2.5 folders pad
    /// 151,665 tokens to 151,936 rows) must never emit a padding id, however likely: it decodes
    /// to nothing, and a server used to answer 500.
    #[test]
    fn padding_rows_past_the_tokenizer_are_never_sampled() {
        let (prompter, vocab) = tiny_prompter(Vec::new());
        let params = GenParams {
            max_tokens: 1,
            top_logprobs: 3,
            ..GenParams::default()
        };
        let mut seq = Sequence::new(vec![1], params, &prompter, Instant::now()).unwrap();
        let mut logits = vec![0f32; vocab + 8];
        logits[vocab + 3] = 50.0;
        logits[5] = 1.0;
        let mut tokens = Vec::new();
        let reason = seq
            .accept(logits, false, &mut |ev| {
                if let Event::Token(t) = ev {
                    tokens.push(t);
                }
                Flow::Continue
            })
            .unwrap();
        assert_eq!(reason, Some(FinishReason::Length));
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].id, 5);
        assert!(tokens[0].top.iter().all(|&(id, _)| (id as usize) < vocab));
    }

    /// With `report_stop_token`, the end-of-sequence token that ends the answer is sent as a token
    /// with no text (the completions API lists it; lm-evaluation-harness counts on it), and it is
    /// still not counted as generated.
    #[test]
    fn the_stop_token_is_reported_when_asked() {
        for report in [false, true] {
            let (prompter, vocab) = tiny_prompter(vec![7]);
            let params = GenParams {
                max_tokens: 4,
                top_logprobs: 1,
                report_stop_token: report,
                ..GenParams::default()
            };
            let mut seq = Sequence::new(vec![1], params, &prompter, Instant::now()).unwrap();
            let mut logits = vec![0f32; vocab];
            logits[7] = 9.0;
            let mut events = Vec::new();
            let reason = seq
                .accept(logits, false, &mut |ev| {
                    events.push(ev);
                    Flow::Continue
                })
                .unwrap();
            assert_eq!(reason, Some(FinishReason::Stop));
            let tokens: Vec<&Token> = events
                .iter()
                .filter_map(|e| match e {
                    Event::Token(t) => Some(t),
                    _ => None,
                })
                .collect();
            if report {
                assert_eq!(tokens.len(), 1);
                assert_eq!((tokens[0].id, tokens[0].text.as_str()), (7, ""));
                assert_eq!(tokens[0].top[0].0, 7);
                assert!(tokens[0].logprob <= 0.0);
            } else {
                assert!(tokens.is_empty());
            }
            let Some(Event::Done(d)) = events.last() else {
                panic!("{events:?}")
            };
            assert_eq!(d.usage.completion_tokens, 0);
        }
    }
}
