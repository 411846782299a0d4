//! From raw samples to metrics. A [`RunSample`] is what one repetition recorded (per-token
//! timestamps and counters); [`Stats`] is derived from a list of them by pure functions, so any
//! results file can be re-analysed from its raw samples.

use serde::{Deserialize, Serialize};

use crate::generation::decode_rate;
use crate::stats::{Estimate, Percentiles, median};

/// Tokens in the window of the "peak" rate and in the warm-up excluded from the "sustained" rate.
pub const WINDOW: usize = 16;

/// What one measured repetition recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSample {
    pub repetition: usize,
    /// Which prompt of the scenario's set was used.
    pub prompt_index: usize,
    pub prompt_tokens: usize,
    /// Tokens actually generated (for remote engines, from `usage` when the server sends it).
    pub generated_tokens: usize,
    pub finish_reason: String,
    /// Seconds from the start of the request to each token (local) or content chunk (remote).
    pub token_times_s: Vec<f64>,
    /// Seconds spent computing the prompt (local engines only).
    pub prefill_s: Option<f64>,
    /// Wall time around the whole request, as the bench saw it.
    pub wall_s: f64,
    /// Process user + system CPU seconds during the request (local engines only).
    pub cpu_s: Option<f64>,
    /// Package energy from RAPL during the request, where readable.
    pub energy_j: Option<f64>,
    /// Seconds the bench's own per-token callback took, plus the clock reads that time it.
    pub bench_overhead_s: f64,
}

impl RunSample {
    pub fn ttft_s(&self) -> Option<f64> {
        self.token_times_s.first().copied()
    }

    pub fn e2e_s(&self) -> Option<f64> {
        self.token_times_s.last().copied()
    }

    /// Seconds between the first and the last token: the decode phase.
    pub fn decode_span_s(&self) -> Option<f64> {
        match (self.token_times_s.first(), self.token_times_s.last()) {
            (Some(a), Some(b)) if b > a => Some(b - a),
            _ => None,
        }
    }

    /// Tokens after the first over the time after the first: the first token's cost is prefill.
    pub fn decode_tok_s(&self) -> Option<f64> {
        let (first, last) = (self.token_times_s.first()?, self.token_times_s.last()?);
        (self.generated_tokens > 1 && last > first)
            .then(|| decode_rate(self.generated_tokens, *first, *last))
    }

    /// Inter-token latencies in seconds.
    pub fn itl_s(&self) -> Vec<f64> {
        self.token_times_s.windows(2).map(|w| w[1] - w[0]).collect()
    }

    /// Rate from the median inter-token latency: robust to a single stall.
    pub fn median_tok_s(&self) -> Option<f64> {
        let m = median(&self.itl_s());
        (m > 0.0).then(|| 1.0 / m)
    }

    /// Best rate over any window of [`WINDOW`] consecutive intervals (the whole run if shorter).
    pub fn peak_tok_s(&self) -> Option<f64> {
        let t = &self.token_times_s;
        if t.len() <= WINDOW {
            return self.decode_tok_s();
        }
        t.windows(WINDOW + 1)
            .map(|w| w[WINDOW] - w[0])
            .filter(|d| *d > 0.0)
            .map(|d| WINDOW as f64 / d)
            .fold(None, |best: Option<f64>, r| {
                Some(best.map_or(r, |b| b.max(r)))
            })
    }

    /// Rate from the median latency after the first [`WINDOW`] tokens: the steady state, once
    /// caches and the branch predictor have settled.
    pub fn sustained_tok_s(&self) -> Option<f64> {
        let itl = self.itl_s();
        if itl.len() <= WINDOW {
            return None;
        }
        let m = median(&itl[WINDOW..]);
        (m > 0.0).then(|| 1.0 / m)
    }

    pub fn prefill_tok_s(&self) -> Option<f64> {
        self.prefill_s
            .filter(|s| *s > 0.0)
            .map(|s| self.prompt_tokens as f64 / s)
    }

    /// The tokens arrived as one burst (a server that buffered its stream): at least 8 tokens,
    /// all within 2% of the request's time. Their timestamps then say nothing of first-token
    /// latency or decode speed, only of the end-to-end time.
    pub fn buffered(&self) -> bool {
        match (self.decode_span_s(), self.e2e_s()) {
            (Some(span), Some(e2e)) => self.generated_tokens >= 8 && span < 0.02 * e2e,
            (None, Some(_)) => self.generated_tokens >= 8,
            _ => false,
        }
    }

    /// CPU seconds over wall seconds over cores: 1.0 means every core busy for the whole request.
    pub fn cpu_util(&self, cores: usize) -> Option<f64> {
        let cpu = self.cpu_s?;
        (self.wall_s > 0.0 && cores > 0).then(|| cpu / self.wall_s / cores as f64)
    }

    pub fn energy_j_per_token(&self) -> Option<f64> {
        let e = self.energy_j?;
        (self.generated_tokens > 0).then(|| e / self.generated_tokens as f64)
    }
}

/// Metrics of one scenario or depth over its repetitions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub repetitions: usize,
    pub prompt_tokens: usize,
    pub generated_tokens_min: usize,
    pub generated_tokens_max: usize,
    pub ttft_ms: Option<Estimate>,
    pub prefill_tok_s: Option<Estimate>,
    /// Per repetition: (tokens − 1) / (last − first token time). Its `cv` is the stability figure.
    pub decode_tok_s: Option<Estimate>,
    pub median_tok_s: Option<Estimate>,
    pub peak_tok_s: Option<Estimate>,
    pub sustained_tok_s: Option<Estimate>,
    /// Request start to last token.
    pub e2e_s: Option<Estimate>,
    /// Inter-token latency percentiles, pooled over all repetitions.
    pub itl_ms: Option<Percentiles>,
    pub cpu_util: Option<Estimate>,
    pub energy_j_per_token: Option<Estimate>,
    /// The bench's bookkeeping inside the timed region over the decode time, over all repetitions.
    pub overhead_fraction: f64,
    /// Repetitions whose tokens arrived in one burst ([`RunSample::buffered`]): left out of
    /// every timing figure except the end-to-end time.
    #[serde(default)]
    pub buffered: usize,
}

fn est(samples: &[RunSample], f: impl Fn(&RunSample) -> Option<f64>) -> Option<Estimate> {
    let v: Vec<f64> = samples.iter().filter_map(f).collect();
    Estimate::of(&v)
}

impl Stats {
    pub fn of(all: &[RunSample], cores: usize) -> Stats {
        let streamed: Vec<RunSample> = all.iter().filter(|s| !s.buffered()).cloned().collect();
        let samples = &streamed[..];
        let itl_ms: Vec<f64> = samples
            .iter()
            .flat_map(|s| s.itl_s())
            .map(|x| x * 1e3)
            .collect();
        let overhead: f64 = samples.iter().map(|s| s.bench_overhead_s).sum();
        let decode: f64 = samples.iter().filter_map(RunSample::decode_span_s).sum();
        Stats {
            repetitions: all.len(),
            prompt_tokens: all.first().map_or(0, |s| s.prompt_tokens),
            generated_tokens_min: all.iter().map(|s| s.generated_tokens).min().unwrap_or(0),
            generated_tokens_max: all.iter().map(|s| s.generated_tokens).max().unwrap_or(0),
            ttft_ms: est(samples, |s| s.ttft_s().map(|t| t * 1e3)),
            prefill_tok_s: est(samples, RunSample::prefill_tok_s),
            decode_tok_s: est(samples, RunSample::decode_tok_s),
            median_tok_s: est(samples, RunSample::median_tok_s),
            peak_tok_s: est(samples, RunSample::peak_tok_s),
            sustained_tok_s: est(samples, RunSample::sustained_tok_s),
            e2e_s: est(all, RunSample::e2e_s),
            itl_ms: Percentiles::of(&itl_ms),
            cpu_util: est(all, |s| s.cpu_util(cores)),
            energy_j_per_token: est(all, RunSample::energy_j_per_token),
            overhead_fraction: if decode > 0.0 { overhead / decode } else { 0.0 },
            buffered: all.len() - samples.len(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample(times: Vec<f64>) -> RunSample {
        RunSample {
            repetition: 0,
            prompt_index: 0,
            prompt_tokens: 10,
            generated_tokens: times.len(),
            finish_reason: "length".into(),
            token_times_s: times,
            prefill_s: Some(0.5),
            wall_s: 2.0,
            cpu_s: Some(3.0),
            energy_j: None,
            bench_overhead_s: 0.0,
        }
    }

    #[test]
    fn rates_from_token_times() {
        // First token at 0.5 s, then 40 tokens every 0.1 s except one 1 s stall at the end.
        let mut t = vec![0.5];
        for i in 1..=40 {
            t.push(0.5 + 0.1 * i as f64);
        }
        t.push(t[t.len() - 1] + 1.0);
        let s = sample(t);
        assert_eq!(s.ttft_s(), Some(0.5));
        let decode = s.decode_tok_s().unwrap();
        assert!((decode - 41.0 / 5.0).abs() < 1e-9, "{decode}");
        assert!((s.median_tok_s().unwrap() - 10.0).abs() < 1e-6);
        assert!((s.peak_tok_s().unwrap() - 10.0).abs() < 1e-6);
        assert!((s.sustained_tok_s().unwrap() - 10.0).abs() < 1e-6);
        assert!((s.prefill_tok_s().unwrap() - 20.0).abs() < 1e-9);
        assert_eq!(s.cpu_util(2), Some(0.75));
        let st = Stats::of(&[s.clone(), s], 2);
        assert_eq!(st.repetitions, 2);
        assert_eq!(st.decode_tok_s.unwrap().stddev, 0.0);
        let itl = st.itl_ms.unwrap();
        assert!((itl.p50 - 100.0).abs() < 1e-6 && (itl.max - 1000.0).abs() < 1e-6);
    }

    #[test]
    fn a_buffered_stream_is_left_out_of_the_timing_figures() {
        let steady: Vec<f64> = (0..20).map(|i| 0.5 + 0.1 * i as f64).collect();
        // The same 20 tokens, all arriving within 10 ms at the end of a 2.4 s request.
        let burst: Vec<f64> = (0..20).map(|i| 2.39 + 0.0005 * i as f64).collect();
        let (a, b) = (sample(steady.clone()), sample(burst));
        assert!(!a.buffered() && b.buffered());
        assert!(
            !sample(steady[..5].to_vec()).buffered(),
            "too few tokens to tell"
        );
        let st = Stats::of(&[a.clone(), b.clone(), a.clone()], 2);
        assert_eq!((st.repetitions, st.buffered), (3, 1));
        let d = st.decode_tok_s.unwrap();
        assert_eq!(d.n, 2);
        assert!((d.mean - 10.0).abs() < 1e-6, "{}", d.mean);
        assert_eq!(st.ttft_ms.unwrap().n, 2);
        assert_eq!(st.itl_ms.unwrap().n, 38);
        assert_eq!(st.e2e_s.unwrap().n, 3, "end-to-end time still counts");
    }

    #[test]
    fn short_runs_have_no_sustained_rate() {
        let s = sample(vec![0.1, 0.2, 0.3]);
        assert!(s.sustained_tok_s().is_none());
        assert_eq!(s.peak_tok_s(), s.decode_tok_s());
        assert!(sample(vec![0.1]).decode_tok_s().is_none());
    }
}
