//! What the suite needs from a model, and its implementation on a loaded bakeoff-engine model.
//! The trait lets scorer tests replay canned responses.

use std::time::Instant;

use bakeoff_engine::generate::LoadedModel;
use bakeoff_engine::generate::{
    Flow, GenParams, Generation, common_prefix, generate, generate_batch,
};
use bakeoff_engine::sampling::{SamplingParams, argmax, log_softmax_at};
use bakeoff_engine::template::Message;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// log P(continuation | context) of one continuation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LogLik {
    pub logprob: f64,
    pub tokens: usize,
    /// Every continuation token was the argmax (lm-evaluation-harness's `is_greedy`).
    pub greedy: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GenOut {
    /// The exact text the model was given (chat template applied, assistant prefix included).
    pub prompt: String,
    pub text: String,
    pub tokens: usize,
    /// The generated token ids (end-of-sequence left out), so another engine's answer can be
    /// compared token by token. Empty in journals written before it was recorded.
    #[serde(default)]
    pub ids: Vec<u32>,
    /// `stop`, `length`, `context_full`, `cancelled` (or `error`).
    pub finish: String,
    pub seconds: f64,
}

impl GenOut {
    /// Ended by end-of-sequence or a stop string, not by the token cap.
    pub fn stopped(&self) -> bool {
        self.finish == "stop"
    }
}

/// Negative log-likelihood of WikiText-style text, scored in chunks.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NllOut {
    pub nll_nats: f64,
    pub tokens: usize,
    pub bytes: usize,
    pub chunks: usize,
    pub context: usize,
}

/// One greedy chat completion request (see [`Candidate::chat`]).
#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub assistant_prefix: String,
    pub max_tokens: usize,
    pub stop: Vec<String>,
}

pub trait Candidate {
    fn label(&self) -> &str;
    /// For each continuation, log P(continuation | context) with the model's own tokenizer.
    fn loglikelihoods(&mut self, context: &str, continuations: &[String]) -> Result<Vec<LogLik>>;
    /// Greedy chat completion: `messages` through the chat template with the generation prompt,
    /// then `assistant_prefix` (pre-filled answer start), then generation.
    fn chat(
        &mut self,
        messages: &[Message],
        assistant_prefix: &str,
        max_tokens: usize,
        stop: &[String],
    ) -> Result<GenOut>;
    /// Several completions; a model that can batch runs them together. An error fails the whole
    /// call (the caller retries the items one by one to find the culprit).
    fn chat_batch(&mut self, requests: &[ChatRequest]) -> Result<Vec<GenOut>> {
        requests
            .iter()
            .map(|r| self.chat(&r.messages, &r.assistant_prefix, r.max_tokens, &r.stop))
            .collect()
    }
    /// llama-perplexity style: chunks of `context` tokens, each scoring its second half.
    fn rolling_nll(&mut self, text: &str, context: usize, max_chunks: usize) -> Result<NllOut>;
}

/// A model loaded by bakeoff-engine.
pub struct EngineCandidate {
    pub lm: LoadedModel,
    pub label: String,
    /// Whether the model has its own chat template (else a plain "User:/Assistant:" format is used).
    pub has_template: bool,
}

fn gen_out(prompt: String, g: Generation, seconds: f64) -> GenOut {
    GenOut {
        prompt,
        text: g.text,
        tokens: g.ids.len(),
        ids: g.ids,
        finish: g.done.finish_reason.as_str().into(),
        seconds,
    }
}

impl EngineCandidate {
    pub fn new(lm: LoadedModel, label: impl Into<String>) -> Self {
        let has_template = lm.prompter.has_template();
        Self {
            lm,
            label: label.into(),
            has_template,
        }
    }

    fn reset(&mut self) {
        self.lm.reset_cache();
    }

    /// Runs `ids` so that the cache holds exactly `ids` and returns the last token's logits,
    /// reusing the cached prefix.
    fn prefill(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        Ok(self.lm.prefill(ids)?)
    }

    fn render(&self, messages: &[Message]) -> Result<String> {
        if self.has_template {
            return Ok(self.lm.prompter.render_chat(messages, true)?);
        }
        let mut s = String::new();
        if let Some(b) = self
            .lm
            .prompter
            .bos_token()
            .filter(|_| self.lm.prompter.add_bos())
        {
            s.push_str(b);
        }
        for m in messages {
            let role = match m.role.as_str() {
                "system" => "System",
                "assistant" => "Assistant",
                _ => "User",
            };
            s.push_str(&format!("{role}: {}\n", m.content));
        }
        s.push_str("Assistant:");
        Ok(s)
    }
}

impl Candidate for EngineCandidate {
    fn label(&self) -> &str {
        &self.label
    }

    fn loglikelihoods(&mut self, context: &str, continuations: &[String]) -> Result<Vec<LogLik>> {
        let ctx = self.lm.prompter.encode_prompt(context)?;
        let wholes: Vec<Vec<u32>> = continuations
            .iter()
            .map(|c| self.lm.prompter.encode_prompt(&format!("{context}{c}")))
            .collect::<std::result::Result<_, _>>()?;
        // Tokens shared by the context and every context+continuation encoding run once.
        let starts: Vec<usize> = wholes
            .iter()
            .map(|w| common_prefix(&ctx, w).min(w.len().saturating_sub(1)))
            .collect();
        let k = starts.iter().copied().min().unwrap_or(0).max(1);
        let max_ctx = self.lm.model.config().max_context;
        if let Some(w) = wholes.iter().find(|w| w.len() > max_ctx) {
            return Err(Error::InvalidArgument(format!(
                "{} tokens exceed the context of {max_ctx}",
                w.len()
            )));
        }
        let first = wholes
            .first()
            .ok_or_else(|| Error::InvalidArgument("no continuations".into()))?;
        let shared = first[..k.min(first.len())].to_vec();
        if wholes.iter().any(|w| w.len() < k || w[..k] != shared[..]) {
            return Err(Error::InvalidArgument(
                "continuations do not share the context tokens".into(),
            ));
        }
        let last = self.prefill(&shared)?;
        let mut out = Vec::with_capacity(wholes.len());
        for (w, &start) in wholes.iter().zip(&starts) {
            let start = start.max(k);
            self.lm.truncate(k)?;
            let rest = &w[k..];
            let rows = if rest.len() > 1 {
                match self.lm.extend(&rest[..rest.len() - 1], true) {
                    Ok(r) => r,
                    Err(e) => {
                        self.reset();
                        return Err(e.into());
                    }
                }
            } else {
                Vec::new()
            };
            let vocab = last.len();
            let (mut lp, mut greedy) = (0.0, true);
            for p in start..w.len() {
                // Logits predicting position p come from position p − 1.
                let row: &[f32] = if p == k {
                    &last
                } else {
                    &rows[(p - 1 - k) * vocab..(p - k) * vocab]
                };
                let (l, g) = (log_softmax_at(row, w[p] as usize), argmax(row) == w[p]);
                lp += l;
                greedy &= g;
            }
            out.push(LogLik {
                logprob: lp,
                tokens: w.len() - start,
                greedy,
            });
        }
        self.lm.truncate(k)?;
        Ok(out)
    }

    fn chat(
        &mut self,
        messages: &[Message],
        assistant_prefix: &str,
        max_tokens: usize,
        stop: &[String],
    ) -> Result<GenOut> {
        let prompt = format!("{}{assistant_prefix}", self.render(messages)?);
        let ids = self.lm.prompter.tokenizer().encode(&prompt, false)?;
        let params = GenParams {
            max_tokens,
            sampling: SamplingParams::greedy(),
            stop: stop.to_vec(),
            ignore_eos: false,
            top_logprobs: 0,
            prompt_logprobs: None,
            report_stop_token: false,
            response_format: None,
            compiled_format: None,
        };
        let t = Instant::now();
        let g = generate(&mut self.lm, &ids, &params, |_| Flow::Continue)?;
        Ok(gen_out(prompt, g, t.elapsed().as_secs_f64()))
    }

    fn chat_batch(&mut self, requests: &[ChatRequest]) -> Result<Vec<GenOut>> {
        if let [r] = requests {
            // A single request keeps slot 0's cached prefix.
            return Ok(vec![self.chat(
                &r.messages,
                &r.assistant_prefix,
                r.max_tokens,
                &r.stop,
            )?]);
        }
        let mut prompts = Vec::with_capacity(requests.len());
        let mut ids = Vec::with_capacity(requests.len());
        let mut params = Vec::with_capacity(requests.len());
        for r in requests {
            let prompt = format!("{}{}", self.render(&r.messages)?, r.assistant_prefix);
            ids.push(self.lm.prompter.tokenizer().encode(&prompt, false)?);
            prompts.push(prompt);
            params.push(GenParams {
                max_tokens: r.max_tokens,
                sampling: SamplingParams::greedy(),
                stop: r.stop.clone(),
                ignore_eos: false,
                top_logprobs: 0,
                prompt_logprobs: None,
                report_stop_token: false,
                response_format: None,
                compiled_format: None,
            });
        }
        let reqs: Vec<(&[u32], &GenParams)> =
            ids.iter().map(|i| &i[..]).zip(params.iter()).collect();
        let gens = generate_batch(&mut self.lm, &reqs)?;
        Ok(prompts
            .into_iter()
            .zip(gens)
            .map(|(p, g)| {
                // Each item's time is from the batch start to its last token.
                let secs = g
                    .token_times
                    .last()
                    .copied()
                    .unwrap_or(g.done.timings.prefill_ms / 1e3);
                gen_out(p, g, secs)
            })
            .collect())
    }

    fn rolling_nll(&mut self, text: &str, context: usize, max_chunks: usize) -> Result<NllOut> {
        let context = context.min(self.lm.model.config().max_context).max(4);
        // Tokenize only as much text as the chunks need (about 4 bytes per token, generously).
        let want_bytes = if max_chunks == usize::MAX {
            text.len()
        } else {
            (context * max_chunks * 8).min(text.len())
        };
        let mut end = want_bytes;
        while end < text.len() && !text.is_char_boundary(end) {
            end += 1;
        }
        let tokens = self.lm.prompter.tokenizer().encode(&text[..end], false)?;
        let bos = self
            .lm
            .prompter
            .tokenizer()
            .bos_id()
            .filter(|_| self.lm.prompter.add_bos());
        let n_chunks = (tokens.len() / context).min(max_chunks);
        let mut out = NllOut {
            context,
            ..Default::default()
        };
        let first = context / 2;
        for c in 0..n_chunks {
            let orig = &tokens[c * context..(c + 1) * context];
            let mut ids = orig.to_vec();
            if let Some(b) = bos {
                ids[0] = b;
            }
            self.reset();
            let last = self.prefill(&ids[..first])?;
            let rows = match self.lm.extend(&ids[first..context - 1], true) {
                Ok(r) => r,
                Err(e) => {
                    self.reset();
                    return Err(e.into());
                }
            };
            let vocab = last.len();
            for p in first..context {
                let row: &[f32] = if p == first {
                    &last
                } else {
                    &rows[(p - 1 - first) * vocab..(p - first) * vocab]
                };
                out.nll_nats -= log_softmax_at(row, ids[p] as usize);
                out.tokens += 1;
            }
            let full = self.lm.prompter.tokenizer().decode(orig, false)?.len();
            let head = self
                .lm
                .prompter
                .tokenizer()
                .decode(&orig[..first], false)?
                .len();
            out.bytes += full.saturating_sub(head);
            out.chunks += 1;
        }
        self.reset();
        if out.chunks == 0 {
            return Err(Error::InvalidArgument(format!(
                "text too short for one chunk of {context} tokens"
            )));
        }
        Ok(out)
    }
}
