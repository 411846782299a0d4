//! What one generated answer ends with: why it stopped, how many tokens it used, how long it took.

use serde::{Deserialize, Serialize};

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

    /// The value of OpenAI's `finish_reason`, which has no word for a full context: the
    /// answer was cut for length either way.
    pub fn openai(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length | FinishReason::ContextFull | FinishReason::Cancelled => "length",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            "context_full" => FinishReason::ContextFull,
            "cancelled" => FinishReason::Cancelled,
            _ => return None,
        })
    }
}

impl std::fmt::Display for FinishReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Tokens a request used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV-cache entries were reused instead of computed.
    pub cached_tokens: usize,
    pub completion_tokens: usize,
}

impl Usage {
    /// Prompt tokens actually computed.
    pub fn prefilled_tokens(&self) -> usize {
        self.prompt_tokens - self.cached_tokens.min(self.prompt_tokens)
    }
}

/// How long a request took, measured by the generation core the same way for every consumer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Waiting for a batch slot.
    pub queue_ms: f64,
    /// From admission to the first sampled token: computing the prompt.
    pub prefill_ms: f64,
    /// From submission to the first sampled token.
    pub ttft_ms: f64,
    /// Prompt tokens computed per second of prefill.
    pub prefill_tok_s: f64,
    /// Tokens per second after the first (see [`decode_rate`]).
    pub decode_tok_s: f64,
}

/// Decode rate from the times (seconds, any origin) of the first and last of `tokens` generated
/// tokens: the first token's time belongs to the prefill, so the rate counts the `tokens - 1`
/// intervals after it. Zero when there is no interval to measure.
pub fn decode_rate(tokens: usize, first_s: f64, last_s: f64) -> f64 {
    if tokens > 1 && last_s > first_s {
        (tokens - 1) as f64 / (last_s - first_s)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reason_round_trips_and_maps_to_openai() {
        for r in [
            FinishReason::Stop,
            FinishReason::Length,
            FinishReason::ContextFull,
            FinishReason::Cancelled,
        ] {
            assert_eq!(FinishReason::parse(r.as_str()), Some(r));
        }
        assert_eq!(FinishReason::ContextFull.openai(), "length");
        assert_eq!(FinishReason::parse("error"), None);
    }

    #[test]
    fn decode_rate_counts_intervals_after_the_first_token() {
        assert_eq!(decode_rate(5, 1.0, 3.0), 2.0);
        assert_eq!(decode_rate(1, 1.0, 3.0), 0.0);
        assert_eq!(decode_rate(3, 2.0, 2.0), 0.0);
    }
}
