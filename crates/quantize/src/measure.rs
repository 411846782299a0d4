//! What quantization costs in quality: perplexity, Δ ln PPL, KL divergence and same-top-token
//! rate against a reference model, as llama.cpp's `llama-perplexity --kl-divergence` reports them,
//! plus a short timed generation for speed and memory.
//!
//! Method (llama.cpp's): the text is tokenized once (with BOS where the model adds one) and cut
//! into chunks of `ctx` tokens; each chunk is evaluated from an empty cache with its first token
//! replaced by BOS when the model uses one, and only the second half is scored (positions
//! `ctx/2 .. ctx-2` predict the next token), so every scored token sees at least `ctx/2` tokens
//! of context. The reference's log-probabilities for the scored positions are computed once and
//! kept in a temporary file; each quantized model is then run over the same chunks.
//!
//! Two deliberate differences from llama.cpp: the reference's log-probabilities are kept as f32
//! (llama.cpp stores them in 16 bits over a 16-nat range, which limits its KL resolution to
//! about 1e-4 per token and drops tokens below e^-16), and the KL sum runs over the whole
//! vocabulary. The statistics (means with their standard errors, the percentile interpolation,
//! the covariance term of the Δ ln PPL uncertainty) are llama.cpp's formulas.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use bakeoff_record::quantize::{Quality, Speed, ValueErr};

use bakeoff_engine::generate::LoadedModel;
use bakeoff_engine::generate::{Flow, GenParams, generate};
use bakeoff_engine::model::CausalLm;
use bakeoff_engine::sampling::log_softmax;
use bakeoff_engine::tokenizer::Tokenizer;
use bakeoff_engine::{Error, Result};

/// The first index of the largest value (llama.cpp's argmax tie rule).
fn first_argmax<T: PartialOrd + Copy>(xs: &[T]) -> usize {
    let mut best = 0;
    for (i, &v) in xs.iter().enumerate().skip(1) {
        if v > xs[best] {
            best = i;
        }
    }
    best
}

/// One scored position compared against the reference.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Position {
    /// −ln q(token) of the model under test.
    pub nll: f64,
    /// −ln p(token) of the reference.
    pub nll_base: f64,
    /// KL(p ‖ q) = Σ p (ln p − ln q) over the vocabulary.
    pub kld: f64,
    /// Whether both put their highest probability on the same token.
    pub same_top: bool,
    /// q(token) − p(token).
    pub p_diff: f64,
}

/// Compares the logits of the model under test with the reference's log-probabilities at one
/// position whose next token is `token`.
pub fn compare_position(base_logp: &[f32], logits: &[f32], token: usize) -> Position {
    let logq = log_softmax(logits);
    let mut kld = 0.0;
    for (&lp, &lq) in base_logp.iter().zip(&logq) {
        let lp = lp as f64;
        kld += lp.exp() * (lp - lq);
    }
    let nll = -logq[token];
    let nll_base = -(base_logp[token] as f64);
    Position {
        nll,
        nll_base,
        // Rounding can make a zero divergence a hair negative.
        kld: kld.max(0.0),
        same_top: first_argmax(logits) == first_argmax(base_logp),
        p_diff: (-nll).exp() - (-nll_base).exp(),
    }
}

/// Running sums, as llama.cpp's `kl_divergence_result`, plus every value for percentiles.
#[derive(Clone, Debug, Default)]
pub struct Accumulator {
    sum_nll: f64,
    sum_nll2: f64,
    sum_nll_base: f64,
    sum_nll_base2: f64,
    sum_nll_nll_base: f64,
    sum_kld: f64,
    sum_kld2: f64,
    sum_p_diff2: f64,
    sum_p_diff4: f64,
    n_same_top: usize,
    klds: Vec<f64>,
}

/// llama.cpp's `mean_and_uncertainty`: the mean and the standard error of the mean (zero for
/// ten values or fewer).
fn mean_and_stderr(sum: f64, sum2: f64, n: usize) -> ValueErr {
    if n == 0 {
        return ValueErr {
            value: 0.0,
            stderr: 0.0,
        };
    }
    let f = sum / n as f64;
    let var = sum2 / n as f64 - f * f;
    let stderr = if var > 0.0 && n > 10 {
        (var / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    ValueErr { value: f, stderr }
}

/// llama.cpp's percentile: linear interpolation at `fraction × (n − 1)` of the sorted values.
pub fn percentile(sorted: &[f64], fraction: f64) -> f64 {
    match sorted {
        [] => 0.0,
        _ if fraction <= 0.0 => sorted[0],
        _ if fraction >= 1.0 => sorted[sorted.len() - 1],
        _ => {
            let p = fraction * (sorted.len() - 1) as f64;
            let ip = p as usize;
            let frac = p - ip as f64;
            let next = sorted[(ip + 1).min(sorted.len() - 1)];
            (1.0 - frac) * sorted[ip] + frac * next
        }
    }
}

impl Accumulator {
    pub fn push(&mut self, p: &Position) {
        self.sum_nll += p.nll;
        self.sum_nll2 += p.nll * p.nll;
        self.sum_nll_base += p.nll_base;
        self.sum_nll_base2 += p.nll_base * p.nll_base;
        self.sum_nll_nll_base += p.nll * p.nll_base;
        self.sum_kld += p.kld;
        self.sum_kld2 += p.kld * p.kld;
        let d2 = p.p_diff * p.p_diff;
        self.sum_p_diff2 += d2;
        self.sum_p_diff4 += d2 * d2;
        self.n_same_top += usize::from(p.same_top);
        self.klds.push(p.kld);
    }

    pub fn count(&self) -> usize {
        self.klds.len()
    }

    pub fn summary(&self) -> Quality {
        let n = self.count();
        let log_ppl = mean_and_stderr(self.sum_nll, self.sum_nll2, n);
        let log_ppl_base = mean_and_stderr(self.sum_nll_base, self.sum_nll_base2, n);
        // llama.cpp's covariance of the two mean log-perplexities (zero below ten values).
        let cov = if n < 10 {
            0.0
        } else {
            let nf = n as f64;
            (self.sum_nll_nll_base / nf - (self.sum_nll / nf) * (self.sum_nll_base / nf))
                / (nf - 1.0)
        };
        let ratio_var =
            log_ppl.stderr * log_ppl.stderr + log_ppl_base.stderr * log_ppl_base.stderr - 2.0 * cov;
        let mut sorted = self.klds.clone();
        sorted.sort_by(f64::total_cmp);
        let median = match n {
            0 => 0.0,
            _ if n.is_multiple_of(2) => 0.5 * (sorted[n / 2] + sorted[n / 2 - 1]),
            _ => sorted[n / 2],
        };
        let top = if n == 0 {
            0.0
        } else {
            self.n_same_top as f64 / n as f64
        };
        let top_err = if n > 1 {
            (top * (1.0 - top) / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        let p_diff_mse = mean_and_stderr(self.sum_p_diff2, self.sum_p_diff4, n);
        Quality {
            tokens: n,
            ppl: ValueErr {
                value: log_ppl.value.exp(),
                stderr: log_ppl.value.exp() * log_ppl.stderr,
            },
            ppl_base: ValueErr {
                value: log_ppl_base.value.exp(),
                stderr: log_ppl_base.value.exp() * log_ppl_base.stderr,
            },
            ln_ppl_ratio: ValueErr {
                value: log_ppl.value - log_ppl_base.value,
                stderr: ratio_var.max(0.0).sqrt(),
            },
            kld_mean: mean_and_stderr(self.sum_kld, self.sum_kld2, n),
            kld_median: median,
            kld_p99: percentile(&sorted, 0.99),
            kld_max: sorted.last().copied().unwrap_or(0.0),
            same_top_pct: ValueErr {
                value: 100.0 * top,
                stderr: 100.0 * top_err,
            },
            rms_dp_pct: 100.0 * p_diff_mse.value.max(0.0).sqrt(),
        }
    }
}

/// The evaluation tokens cut into chunks.
#[derive(Clone, Debug)]
pub struct Chunks {
    /// `count × ctx` tokens; chunk `i` is `tokens[i*ctx .. (i+1)*ctx]`.
    pub tokens: Vec<u32>,
    pub ctx: usize,
    pub count: usize,
    /// Written over each chunk's first token, as llama.cpp does when the model adds BOS.
    pub bos: Option<u32>,
}

impl Chunks {
    /// At most `max_tokens` of `tokens` (whole chunks only), as llama.cpp's `--chunks`.
    pub fn new(tokens: &[u32], ctx: usize, max_tokens: usize, bos: Option<u32>) -> Result<Self> {
        if ctx < 4 || !ctx.is_multiple_of(2) {
            return Err(Error::InvalidArgument(format!(
                "--ctx {ctx}: use an even context of at least 4 tokens"
            )));
        }
        let count = tokens.len().min(max_tokens) / ctx;
        if count == 0 {
            return Err(Error::InvalidArgument(format!(
                "{} tokens (of {} available) do not fill one chunk of {ctx}",
                tokens.len().min(max_tokens),
                tokens.len()
            )));
        }
        Ok(Chunks {
            tokens: tokens[..count * ctx].to_vec(),
            ctx,
            count,
            bos,
        })
    }

    /// The first scored position of a chunk.
    pub fn first(&self) -> usize {
        self.ctx / 2
    }

    /// Scored positions per chunk.
    pub fn scored(&self) -> usize {
        self.ctx - 1 - self.first()
    }

    fn chunk(&self, i: usize) -> Vec<u32> {
        let mut ids = self.tokens[i * self.ctx..(i + 1) * self.ctx].to_vec();
        if let Some(b) = self.bos {
            ids[0] = b;
        }
        ids
    }
}

/// The logits of positions `first ..` of one chunk, from an empty cache: the first half runs
/// without computing logits (only the scored half needs the output head).
fn chunk_logits(model: &mut dyn CausalLm, ids: &[u32], first: usize) -> Result<Vec<f32>> {
    model.truncate(0);
    model.forward(&ids[..first], false)?;
    model.forward(&ids[first..], true)
}

fn check_vocab(model: &dyn CausalLm, logits: &[f32], rows: usize, vocab: usize) -> Result<()> {
    if logits.len() != rows * vocab {
        return Err(Error::InvalidArgument(format!(
            "{}: {} logits for {rows} positions, expected a vocabulary of {vocab}",
            model.describe(),
            logits.len()
        )));
    }
    Ok(())
}

/// The reference's log-probabilities at every scored position, in a temporary file (f32;
/// 155 MB per 512-token chunk for Qwen2.5's 151936-entry vocabulary), deleted on drop.
pub struct Reference {
    path: PathBuf,
    pub vocab: usize,
    pub chunks: usize,
    pub scored: usize,
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Runs the reference over every chunk and keeps its log-probabilities. `on_chunk(i, n)` is
/// called after each chunk.
pub fn reference_pass(
    model: &mut dyn CausalLm,
    chunks: &Chunks,
    mut on_chunk: impl FnMut(usize, usize),
) -> Result<Reference> {
    let vocab = model.config().vocab_size;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let path = std::env::temp_dir().join(format!(
        "bakeoff-reference-logprobs-{}-{nanos}.f32",
        std::process::id()
    ));
    let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
    let reference = Reference {
        path: path.clone(),
        vocab,
        chunks: chunks.count,
        scored: chunks.scored(),
    };
    let mut w = BufWriter::with_capacity(1 << 22, file);
    let (first, scored) = (chunks.first(), chunks.scored());
    for i in 0..chunks.count {
        let ids = chunks.chunk(i);
        let logits = chunk_logits(model, &ids, first)?;
        check_vocab(model, &logits, ids.len() - first, vocab)?;
        let rows: Vec<Vec<u8>> = logits
            .par_chunks_exact(vocab)
            .take(scored)
            .map(|row| {
                log_softmax(row)
                    .iter()
                    .flat_map(|&v| (v as f32).to_le_bytes())
                    .collect()
            })
            .collect();
        for r in rows {
            w.write_all(&r).map_err(|e| Error::io(&path, e))?;
        }
        on_chunk(i + 1, chunks.count);
    }
    w.flush().map_err(|e| Error::io(&path, e))?;
    Ok(reference)
}

/// Perplexity of one model over the chunks, as `llama-perplexity` reports it (its final
/// estimate, with the standard error of the mean log-probability carried through `exp`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Perplexity {
    /// Scored positions.
    pub tokens: usize,
    pub ppl: ValueErr,
    /// The running estimate after each chunk, as llama-perplexity prints it (`[1]8.1,[2]9.3,…`).
    pub per_chunk: Vec<f64>,
}

/// Runs `model` over every chunk and accumulates the negative log-likelihood of each scored
/// token. `on_chunk(i, n)` is called after each chunk.
pub fn perplexity_pass(
    model: &mut dyn CausalLm,
    chunks: &Chunks,
    mut on_chunk: impl FnMut(usize, usize),
) -> Result<Perplexity> {
    let vocab = model.config().vocab_size;
    let (first, scored) = (chunks.first(), chunks.scored());
    let (mut sum, mut sum2, mut n) = (0f64, 0f64, 0usize);
    let mut per_chunk = Vec::with_capacity(chunks.count);
    for i in 0..chunks.count {
        let ids = chunks.chunk(i);
        let logits = chunk_logits(model, &ids, first)?;
        check_vocab(model, &logits, ids.len() - first, vocab)?;
        let nlls: Vec<f64> = (0..scored)
            .into_par_iter()
            .map(|j| {
                let row = &logits[j * vocab..(j + 1) * vocab];
                -log_softmax(row)[ids[first + j + 1] as usize]
            })
            .collect();
        for v in nlls {
            sum += v;
            sum2 += v * v;
            n += 1;
        }
        per_chunk.push((sum / n as f64).exp());
        on_chunk(i + 1, chunks.count);
    }
    let lp = mean_and_stderr(sum, sum2, n);
    Ok(Perplexity {
        tokens: n,
        ppl: ValueErr {
            value: lp.value.exp(),
            stderr: lp.value.exp() * lp.stderr,
        },
        per_chunk,
    })
}

/// Runs `model` over the same chunks and compares every scored position with the reference.
pub fn compare_pass(
    model: &mut dyn CausalLm,
    chunks: &Chunks,
    reference: &Reference,
    mut on_chunk: impl FnMut(usize, usize),
) -> Result<Quality> {
    let vocab = reference.vocab;
    if model.config().vocab_size != vocab {
        return Err(Error::InvalidArgument(format!(
            "{} has a vocabulary of {} but the reference has {vocab}",
            model.describe(),
            model.config().vocab_size
        )));
    }
    if reference.chunks != chunks.count || reference.scored != chunks.scored() {
        return Err(Error::InvalidArgument(
            "the reference was computed over different chunks".into(),
        ));
    }
    let file = std::fs::File::open(&reference.path).map_err(|e| Error::io(&reference.path, e))?;
    let mut r = BufReader::with_capacity(1 << 22, file);
    let (first, scored) = (chunks.first(), chunks.scored());
    let mut acc = Accumulator::default();
    let mut raw = vec![0u8; scored * vocab * 4];
    for i in 0..chunks.count {
        let ids = chunks.chunk(i);
        let logits = chunk_logits(model, &ids, first)?;
        check_vocab(model, &logits, ids.len() - first, vocab)?;
        r.read_exact(&mut raw)
            .map_err(|e| Error::io(&reference.path, e))?;
        let base: Vec<f32> = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let positions: Vec<Position> = (0..scored)
            .into_par_iter()
            .map(|j| {
                let tok = ids[first + j + 1] as usize;
                compare_position(
                    &base[j * vocab..(j + 1) * vocab],
                    &logits[j * vocab..(j + 1) * vocab],
                    tok,
                )
            })
            .collect();
        for p in &positions {
            acc.push(p);
        }
        on_chunk(i + 1, chunks.count);
    }
    Ok(acc.summary())
}

/// Tokens of the first part of `text` (cut at a line end), at least `need` of them when the
/// text has that many: tokenizing a prefix instead of a 1.3 MB file keeps the Llama
/// tokenizer's single-piece BPE fast, and 512 tokens of slack keep the cut from changing any
/// token that is used.
pub fn tokenize_prefix(
    tok: &Tokenizer,
    add_bos: bool,
    text: &str,
    need: usize,
) -> Result<Vec<u32>> {
    let mut len = (need + 512).saturating_mul(8).min(text.len());
    loop {
        let mut cut = len;
        while cut < text.len() && !text.is_char_boundary(cut) {
            cut += 1;
        }
        if cut < text.len()
            && let Some(nl) = text[cut..].find('\n')
        {
            cut += nl + 1;
        }
        let ids = tok.encode(&text[..cut.min(text.len())], add_bos)?;
        if cut >= text.len() {
            return Ok(ids);
        }
        if ids.len() >= need + 512 {
            return Ok(ids[..need].to_vec());
        }
        len = len.saturating_mul(2);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// One unmeasured warm-up, then `runs` greedy generations of `gen_tokens` from `prompt`, each
/// from an empty cache.
pub fn speed_runs(
    lm: &mut LoadedModel,
    prompt: &[u32],
    gen_tokens: usize,
    runs: usize,
) -> Result<Speed> {
    let params = GenParams {
        max_tokens: gen_tokens,
        ignore_eos: true,
        ..GenParams::default()
    };
    let warm = GenParams {
        max_tokens: gen_tokens.min(4),
        ..params.clone()
    };
    let mut prefill = Vec::new();
    let mut decode = Vec::new();
    let mut generated = 0;
    for i in 0..=runs {
        lm.reset_cache();
        let g = generate(lm, prompt, if i == 0 { &warm } else { &params }, |_| {
            Flow::Continue
        })?;
        if i > 0 {
            prefill.push(g.done.timings.prefill_tok_s);
            decode.push(g.done.timings.decode_tok_s);
            generated = g.done.usage.completion_tokens;
        }
    }
    Ok(Speed {
        load_s: lm.info.load_s,
        prompt_tokens: prompt.len(),
        generated_tokens: generated,
        prefill_tok_s: median(prefill),
        decode_tok_s: median(decode),
        runs,
        peak_rss_bytes: bakeoff_engine::memory::peak_rss_bytes(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// Two-token distributions worked by hand: p = (0.8, 0.2), q = (0.6, 0.4).
    /// KL(p‖q) = 0.8 ln(0.8/0.6) + 0.2 ln(0.2/0.4) = 0.8 × 0.287682 − 0.2 × 0.693147
    /// = 0.230146 − 0.138629 = 0.091517.
    #[test]
    fn kl_divergence_of_two_token_distributions() {
        let base = [0.8f32.ln(), 0.2f32.ln()];
        // Logits need not be normalized: q = softmax(ln 0.6 + 5, ln 0.4 + 5).
        let logits = [0.6f32.ln() + 5.0, 0.4f32.ln() + 5.0];
        let p = compare_position(&base, &logits, 1);
        assert!(close(p.kld, 0.091517, 1e-6), "{}", p.kld);
        assert!(close(p.nll, -(0.4f64.ln()), 1e-6));
        assert!(close(p.nll_base, -(0.2f64.ln()), 1e-6));
        assert!(close(p.p_diff, 0.4 - 0.2, 1e-6));
        assert!(p.same_top);
        // Identical distributions: zero divergence.
        let same = compare_position(&base, &[0.8f32.ln(), 0.2f32.ln()], 0);
        assert!(same.kld.abs() < 1e-7);
        // A different top token.
        let flipped = compare_position(&base, &[0.3f32.ln(), 0.7f32.ln()], 0);
        assert!(!flipped.same_top);
        // KL(p‖q) with q = (0.3, 0.7): 0.8 ln(0.8/0.3) + 0.2 ln(0.2/0.7) = 0.784663 − 0.250553.
        assert!(close(flipped.kld, 0.534110, 1e-5), "{}", flipped.kld);
    }

    /// Perplexity is exp(mean NLL): tokens with probabilities 1/2, 1/4, 1/8 and 1/8 under the
    /// model give NLLs ln 2, ln 4, ln 8, ln 8, a mean of 2.25 ln 2, so PPL = 2^2.25 = 4.756828.
    /// The reference gives every token 1/4: PPL 4, so ln(PPL(Q)/PPL(base)) = 2.25 ln 2 − ln 4
    /// = 0.25 ln 2 = 0.173287.
    #[test]
    fn perplexity_and_log_ratio() {
        let mut acc = Accumulator::default();
        let base = [0.25f32.ln(); 4];
        for q in [0.5f32, 0.25, 0.125, 0.125] {
            // Four tokens: token 0 gets q, the rest share 1 − q.
            let rest = (1.0 - q) / 3.0;
            let logits = [q.ln(), rest.ln(), rest.ln(), rest.ln()];
            acc.push(&compare_position(&base, &logits, 0));
        }
        let s = acc.summary();
        assert_eq!(s.tokens, 4);
        assert!(close(s.ppl.value, 4.756828, 1e-5), "{}", s.ppl.value);
        assert!(close(s.ppl_base.value, 4.0, 1e-5));
        assert!(close(s.ln_ppl_ratio.value, 0.173287, 1e-5));
        // Ten values or fewer: no uncertainty, as in llama.cpp.
        assert_eq!(s.ppl.stderr, 0.0);
    }

    /// Same-top-token rate: 3 of 4 positions agree → 75 %, with llama.cpp's binomial error
    /// sqrt(0.75 × 0.25 / 3) = 25 %.
    #[test]
    fn same_top_token_rate() {
        let mut acc = Accumulator::default();
        let base = [0.7f32.ln(), 0.2f32.ln(), 0.1f32.ln()];
        for logits in [
            [2.0f32, 1.0, 0.0],
            [2.0, 1.9, 0.0],
            [0.0, 3.0, 0.0],
            [5.0, 0.0, 4.0],
        ] {
            acc.push(&compare_position(&base, &logits, 1));
        }
        let s = acc.summary();
        assert!(close(s.same_top_pct.value, 75.0, 1e-9));
        assert!(close(s.same_top_pct.stderr, 25.0, 1e-9));
    }

    /// Statistics over many positions: known KL values 0.00, 0.01, …, 0.99 (one hundred).
    /// Mean 0.495; llama.cpp's 99th percentile interpolates at 0.99 × 99 = 98.01 →
    /// 0.98 + 0.01 × 0.01 = 0.9801; median (0.49 + 0.50) / 2 = 0.495.
    #[test]
    fn percentiles_and_means_follow_llama_cpp() {
        let mut acc = Accumulator::default();
        for i in 0..100 {
            acc.push(&Position {
                nll: 1.0,
                nll_base: 1.0,
                kld: i as f64 / 100.0,
                same_top: true,
                p_diff: 0.0,
            });
        }
        let s = acc.summary();
        assert!(close(s.kld_mean.value, 0.495, 1e-12));
        assert!(close(s.kld_p99, 0.9801, 1e-12), "{}", s.kld_p99);
        assert!(close(s.kld_median, 0.495, 1e-12));
        assert!(close(s.kld_max, 0.99, 1e-12));
        // Standard error of the mean of 0..0.99: population variance 0.083325, /99 → 0.0290115.
        assert!(close(s.kld_mean.stderr, (0.083325f64 / 99.0).sqrt(), 1e-9));
        // Identical NLLs: Δ ln PPL exactly 0 with zero uncertainty.
        assert_eq!(s.ln_ppl_ratio.value, 0.0);
        assert!(s.ln_ppl_ratio.stderr.abs() < 1e-12);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
    }

    #[test]
    fn log_softmax_is_normalized_and_stable() {
        let l = log_softmax(&[1000.0, 1000.0, 999.0]);
        let total: f64 = l.iter().map(|v| v.exp()).sum();
        assert!(close(total, 1.0, 1e-12));
        assert!(close(l[0], l[1], 0.0));
        assert!(close(l[0] - l[2], 1.0, 1e-9));
    }

    #[test]
    fn chunks_replace_the_first_token_with_bos() {
        let tokens: Vec<u32> = (10..30).collect();
        let c = Chunks::new(&tokens, 8, 100, Some(1)).unwrap();
        assert_eq!(c.count, 2);
        assert_eq!(c.chunk(1), vec![1, 19, 20, 21, 22, 23, 24, 25]);
        assert_eq!((c.first(), c.scored()), (4, 3));
        let c = Chunks::new(&tokens, 8, 9, None).unwrap();
        assert_eq!(c.count, 1);
        assert_eq!(c.chunk(0)[0], 10);
        assert!(Chunks::new(&tokens, 8, 7, None).is_err());
        assert!(Chunks::new(&tokens, 7, 100, None).is_err());
    }
}
