//! Choosing the next token: greedy, or temperature sampling with top-k, top-p, min-p and a
//! repetition penalty, in the order transformers applies them. A seed makes sampling repeatable.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches p (1 = off).
    pub top_p: f32,
    /// Drop tokens less likely than min_p × the most likely one (0 = off).
    pub min_p: f32,
    /// Penalise tokens already in the context (1 = off), as in the CTRL paper and transformers.
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self::default()
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad(format!("temperature must be ≥ 0, got {}", self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad(format!("min_p must be in [0, 1], got {}", self.min_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(format!(
                "repetition_penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        Ok(())
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// The probabilities of the whole vocabulary at the sampling temperature, by token id.
    dist: Vec<f32>,
    /// The tokens the filters look at, with their probabilities.
    probs: Vec<(u32, f32)>,
    /// A bit per token of the vocabulary: already penalised in this call (all clear between).
    seen: Vec<u64>,
}

/// The chosen token and its log-probability under the model (before any sampling filter).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampled {
    pub id: u32,
    pub logprob: f32,
}

/// Index of the largest value; the first one on ties, as `torch.argmax` does.
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in xs.iter().enumerate() {
        if v > xs[best] {
            best = i;
        }
    }
    best as u32
}

/// ln Σ exp(logits), summed in f64 after shifting by the maximum so large logits cannot
/// overflow: the log-sum-exp of scoring (eval, quantize, prompt log-probabilities). The
/// log-probability reported with a sampled token sums with the vector `exp` instead
/// (`kernels::ops::sum_exp`, within about 1e-6).
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    m + logits
        .iter()
        .map(|&v| (v as f64 - m).exp())
        .sum::<f64>()
        .ln()
}

/// log-softmax of one row of logits.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let lse = log_sum_exp(logits);
    logits.iter().map(|&v| v as f64 - lse).collect()
}

/// The log-probability of token `id` under softmax(`logits`); −∞ for an id outside the row.
pub fn log_softmax_at(logits: &[f32], id: usize) -> f64 {
    logits
        .get(id)
        .map_or(f64::NEG_INFINITY, |&v| v as f64 - log_sum_exp(logits))
}

/// The log-probability of a sampled token: as [`log_softmax_at`], with the sum of exponentials
/// taken by [`crate::kernels::ops::sum_exp`] (vectorised where the processor allows); `m` is
/// the largest logit (NaNs aside), which the caller has already found.
fn sampled_logprob(logits: &[f32], id: u32, m: f32) -> f32 {
    let Some(&v) = logits.get(id as usize) else {
        return f32::NEG_INFINITY;
    };
    (v as f64 - (m as f64 + crate::kernels::ops::sum_exp(logits, m).ln())) as f32
}

/// The `k` most likely tokens and their log-probabilities, most likely first (ties by id).
pub fn top_logprobs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    if logits.is_empty() || k == 0 {
        return Vec::new();
    }
    let lse = log_sum_exp(logits) as f32;
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

/// The share of the likeliest token's probability above which tokens are sorted first when a
/// filter applies ([`Sampler::keep`]): the heads that top-p, min-p and small top-k keep are
/// almost always inside it.
const HEAD_SHARE: f32 = 1.0 / 4096.0;

/// The order of the filters: likeliest first, ties by token id.
fn by_prob(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// `out ←` softmax(`logits` / T), `m` their maximum: the vector `exp`
/// (`kernels::ops::exp_in_place`), whose f64 sum is that of the scalar one within about 1e-6.
/// Divided, not multiplied by 1/T: at T = 1e-40 the inverse is infinite and 0 · ∞ is NaN, while
/// 0 / T keeps the most likely token at probability 1 (greedy, as the limit is). Returns the
/// likeliest token's probability (its `exp` is 1).
fn softmax_at(logits: &[f32], m: f32, t: f32, out: &mut Vec<f32>) -> f32 {
    out.clear();
    out.extend(logits.iter().map(|&l| (l - m) / t));
    let inv = (1.0 / crate::kernels::ops::exp_in_place(out)) as f32;
    out.iter_mut().for_each(|p| *p *= inv);
    inv
}

/// A token drawn from `probs` in their order, in proportion to their probabilities (the last
/// one where rounding leaves the draw past them all).
fn pick(rng: &mut StdRng, probs: impl Iterator<Item = (u32, f32)> + Clone) -> u32 {
    let total: f32 = probs.clone().map(|p| p.1).sum();
    let mut r = rng.random::<f32>() * total;
    let mut id = 0;
    for (i, p) in probs {
        id = i;
        if r < p {
            break;
        }
        r -= p;
    }
    id
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = StdRng::seed_from_u64(params.seed);
        Ok(Self {
            params,
            rng,
            dist: Vec::new(),
            probs: Vec::new(),
            seen: Vec::new(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// How many of the most likely tokens top-k, top-p and min-p keep (at least one), given
    /// the first `head.len()` of the `n` probabilities sorted; `None` if that head is too short
    /// to tell.
    fn cut(&self, head: &[(u32, f32)], n: usize) -> Option<usize> {
        let m = head.len();
        let mut keep = n;
        if self.params.top_k > 0 {
            keep = keep.min(self.params.top_k);
        }
        if self.params.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, p) in head.iter().enumerate().take(keep) {
                acc += p.1;
                if acc >= self.params.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if self.params.min_p > 0.0 {
            let floor = head[0].1 * self.params.min_p;
            let above = head.iter().take_while(|p| p.1 >= floor).count();
            // All of the head above the floor: more may be further on.
            if above < m || m == n {
                keep = keep.min(above.max(1));
            }
        }
        (keep <= m).then_some(keep.max(1))
    }

    /// How many tokens the filters keep, from the candidates in `probs` (a prefix of the
    /// vocabulary of `n` tokens in the order of [`by_prob`], not yet sorted), which it leaves
    /// with that many sorted first; `None` if the candidates are too few to tell. Sorting all
    /// 150k entries of Qwen2.5's vocabulary took longer than a small model's forward pass, so
    /// the head is sorted in growing prefixes, each selected in linear time, until the cut
    /// falls inside one; the order is total, so every prefix is that of the full sort.
    fn keep(&mut self, n: usize) -> Option<usize> {
        let c = self.probs.len();
        if c == 0 {
            return None;
        }
        let mut m = 64.min(c);
        loop {
            if m < c {
                self.probs.select_nth_unstable_by(m - 1, by_prob);
            }
            self.probs[..m].sort_unstable_by(by_prob);
            match self.cut(&self.probs[..m], n) {
                Some(keep) => return Some(keep),
                None if m == c => return None,
                None => m = (m * 8).min(c),
            }
        }
    }

    /// Picks a token from `logits` (modified in place); `context` feeds the repetition penalty.
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32]) -> Sampled {
        if self.params.repetition_penalty != 1.0 {
            let p = self.params.repetition_penalty;
            // Each token once, however often the context holds it: marked in a bit per token
            // of the vocabulary, kept between calls and cleared after each (a hash set per call
            // cost more the longer the context).
            self.seen
                .resize(self.seen.len().max(logits.len().div_ceil(64)), 0);
            for &t in context {
                let (w, bit) = (t as usize / 64, 1u64 << (t % 64));
                if let Some(l) = logits.get_mut(t as usize)
                    && self.seen[w] & bit == 0
                {
                    self.seen[w] |= bit;
                    // Kept finite: a tiny penalty would otherwise make a logit infinite, and
                    // the softmax of infinities is NaN.
                    let v = if *l > 0.0 { *l / p } else { *l * p };
                    *l = v.clamp(-f32::MAX, f32::MAX);
                }
            }
            for &t in context {
                if let Some(w) = self.seen.get_mut(t as usize / 64) {
                    *w = 0;
                }
            }
        }
        if self.params.temperature == 0.0 {
            let id = argmax(logits);
            // The largest logit (with a NaN among them the sum is NaN either way).
            let m = logits
                .get(id as usize)
                .copied()
                .unwrap_or(f32::NEG_INFINITY);
            return Sampled {
                id,
                logprob: sampled_logprob(logits, id, m),
            };
        }
        let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let top = softmax_at(logits, m, self.params.temperature, &mut self.dist);
        let needs_sort =
            self.params.top_k > 0 || self.params.top_p < 1.0 || self.params.min_p > 0.0;
        let id = if needs_sort && !self.dist.is_empty() {
            let n = self.dist.len();
            // The kept tokens are a short head of the sorted vocabulary. First only the tokens at
            // least HEAD_SHARE as likely as the likeliest are sorted: every token left out is
            // less likely than every one in, so they are a prefix of the full order, which
            // decides the cut unless the filters reach past it (a flat distribution, a large
            // top-k); then the whole vocabulary does.
            let floor = top * HEAD_SHARE;
            self.probs.clear();
            self.probs.extend(
                (0..n as u32)
                    .zip(self.dist.iter().copied())
                    .filter(|&(_, p)| p >= floor),
            );
            let keep = match self.keep(n) {
                Some(keep) => keep,
                None => {
                    self.probs.clear();
                    self.probs
                        .extend((0..n as u32).zip(self.dist.iter().copied()));
                    self.keep(n).unwrap_or(n)
                }
            };
            self.probs.truncate(keep);
            pick(&mut self.rng, self.probs.iter().copied())
        } else {
            pick(&mut self.rng, (0..).zip(self.dist.iter().copied()))
        };
        // The reported log-probability is the model's, at temperature 1.
        Sampled {
            id,
            logprob: sampled_logprob(logits, id, m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Extreme but valid values sample like their limits instead of turning every probability
    /// into NaN (which made the sampler always pick the last id).
    #[test]
    fn tiny_temperature_and_penalty_stay_finite() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let best = argmax(&logits);
        let mut s = Sampler::new(SamplingParams {
            temperature: 1e-40,
            seed: 1,
            ..Default::default()
        })
        .unwrap();
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits.clone(), &[]).id, best);
        }
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.7,
            repetition_penalty: 1e-38,
            seed: 1,
            ..Default::default()
        })
        .unwrap();
        let positive = (0..50u32).find(|&i| logits[i as usize] > 0.0).unwrap();
        for _ in 0..20 {
            let got = s.sample(&mut logits.clone(), &[positive]);
            assert_eq!(got.id, positive, "the penalised-up token dominates");
            assert!(got.logprob.is_finite());
        }
    }

    /// The filters as first written, on the whole vocabulary sorted: what the partial sorts must
    /// reproduce, token for token.
    fn full_sort_sample(params: &SamplingParams, rng: &mut StdRng, logits: &[f32]) -> u32 {
        let m = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut dist = Vec::new();
        softmax_at(logits, m, params.temperature, &mut dist);
        let mut probs: Vec<(u32, f32)> = (0..).zip(dist).collect();
        probs.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut keep = probs.len();
        if params.top_k > 0 {
            keep = keep.min(params.top_k);
        }
        if params.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, p) in probs.iter().enumerate().take(keep) {
                acc += p.1;
                if acc >= params.top_p {
                    keep = i + 1;
                    break;
                }
            }
        }
        if params.min_p > 0.0 {
            let floor = probs[0].1 * params.min_p;
            keep = keep.min(probs.iter().take_while(|p| p.1 >= floor).count().max(1));
        }
        probs.truncate(keep.max(1));
        let total: f32 = probs.iter().map(|p| p.1).sum();
        let mut r = rng.random::<f32>() * total;
        let mut id = probs[probs.len() - 1].0;
        for &(i, p) in &probs {
            if r < p {
                id = i;
                break;
            }
            r -= p;
        }
        id
    }

    /// Sorting only the head the filters keep picks what sorting everything picked, for heads
    /// inside the first prefix and past several (flat distributions keep thousands of tokens).
    #[test]
    fn partial_sorts_pick_what_the_full_sort_picked() {
        for vocab in [7usize, 300, 5000, 151_936] {
            // A spread of 40 leaves fewer tokens near the likeliest than a top-k of 1000 keeps.
            for (spread, temperature) in [(8.0f32, 0.7f32), (0.5, 1.0), (0.0, 1.3), (40.0, 0.7)] {
                let logits: Vec<f32> = (0..vocab)
                    .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * spread)
                    .collect();
                for (top_k, top_p, min_p) in [
                    (0, 0.9, 0.0),
                    (0, 0.999, 0.0),
                    (40, 1.0, 0.0),
                    (1000, 0.95, 0.0),
                    (0, 1.0, 0.05),
                    (0, 1.0, 0.9),
                    (50, 0.8, 0.1),
                ] {
                    let params = SamplingParams {
                        temperature,
                        top_k,
                        top_p,
                        min_p,
                        seed: vocab as u64 + top_k as u64,
                        ..Default::default()
                    };
                    let mut s = Sampler::new(params.clone()).unwrap();
                    let mut rng = StdRng::seed_from_u64(params.seed);
                    for step in 0..5 {
                        let got = s.sample(&mut logits.clone(), &[]).id;
                        let want = full_sort_sample(&params, &mut rng, &logits);
                        assert_eq!(got, want, "vocab {vocab}, {params:?}, step {step}");
                    }
                }
            }
        }
    }

    #[test]
    fn greedy_takes_first_maximum() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        let mut l = vec![0.1, 2.0, 2.0, -1.0];
        assert_eq!(s.sample(&mut l, &[]).id, 1);
    }

    #[test]
    fn same_seed_same_tokens_and_filters_apply() {
        let p = SamplingParams {
            temperature: 0.8,
            top_k: 3,
            top_p: 0.9,
            seed: 42,
            ..Default::default()
        };
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let run = |p: SamplingParams| {
            let mut s = Sampler::new(p).unwrap();
            (0..200)
                .map(|_| s.sample(&mut logits.clone(), &[]).id)
                .collect::<Vec<_>>()
        };
        let a = run(p.clone());
        assert_eq!(a, run(p.clone()));
        let mut sorted: Vec<u32> = (0..50).collect();
        sorted.sort_by(|&x, &y| logits[y as usize].total_cmp(&logits[x as usize]));
        let top3: Vec<u32> = sorted[..3].to_vec();
        assert!(
            a.iter().all(|t| top3.contains(t)),
            "top-k=3 must keep only the 3 best"
        );
        assert_ne!(
            a,
            run(SamplingParams { seed: 7, ..p }),
            "another seed should differ"
        );
    }

    #[test]
    fn min_p_and_top_p_keep_only_the_head() {
        let logits = vec![5.0, 4.9, 0.0, -3.0];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            min_p: 0.5,
            seed: 1,
            ..Default::default()
        })
        .unwrap();
        for _ in 0..100 {
            assert!(s.sample(&mut logits.clone(), &[]).id < 2);
        }
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.3,
            seed: 1,
            ..Default::default()
        })
        .unwrap();
        for _ in 0..100 {
            assert_eq!(s.sample(&mut logits.clone(), &[]).id, 0);
        }
    }

    #[test]
    fn repetition_penalty_follows_transformers() {
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..Default::default()
        })
        .unwrap();
        let mut l = vec![3.0, 2.0, -1.0];
        // token 0 seen twice is penalised once: 3/2 = 1.5 < 2.0, so greedy picks 1; an id
        // past the vocabulary is ignored.
        assert_eq!(s.sample(&mut l, &[0, 0, 2, 70]).id, 1);
        assert_eq!(l, vec![1.5, 2.0, -2.0]);
        // The next call starts afresh: only its own context counts, once per token.
        let mut l = vec![3.0, 2.0, -1.0];
        assert_eq!(s.sample(&mut l, &[0, 1, 1]).id, 0);
        assert_eq!(l, vec![1.5, 1.0, -1.0]);
        // Ids 64 and 128 apart share no bit.
        let mut l = vec![1.0f32; 200];
        s.sample(&mut l, &[5, 69, 133, 69]);
        let hit: Vec<usize> = (0..200).filter(|&i| l[i] != 1.0).collect();
        assert_eq!(hit, vec![5, 69, 133]);
    }

    #[test]
    fn invalid_values_are_refused() {
        for p in [
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplingParams {
                top_p: 1.5,
                ..Default::default()
            },
            SamplingParams {
                min_p: 2.0,
                ..Default::default()
            },
            SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            },
            SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            },
        ] {
            let e = Sampler::new(p).err().expect("must fail").to_string();
            assert!(e.contains("must be"), "{e}");
        }
    }

    #[test]
    fn sampled_logprobs_match_the_f64_log_softmax() {
        // A Qwen-sized vocabulary of spread-out logits.
        let l: Vec<f32> = (0..151_936)
            .map(|i| ((i as f32 * 0.754_877_7).fract() - 0.7) * 30.0)
            .collect();
        for temperature in [0.0, 0.8] {
            let mut s = Sampler::new(SamplingParams {
                temperature,
                ..Default::default()
            })
            .unwrap();
            for _ in 0..3 {
                let got = s.sample(&mut l.clone(), &[]);
                let want = log_softmax_at(&l, got.id as usize);
                assert!(
                    (got.logprob as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "T={temperature}: {} vs {want}",
                    got.logprob
                );
            }
        }
    }

    #[test]
    fn logprob_is_normalised() {
        let l = vec![1.0f32, 2.0, 3.0];
        let total: f32 = (0..3).map(|i| log_softmax_at(&l, i).exp() as f32).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}
