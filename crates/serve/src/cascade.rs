//! The cascade's judgement: the fast tier's whole answer is read (within a time limit), judged
//! by its mean log-probability, its shape and its degeneracy, and either replayed to the client
//! or handed to the strong tier.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::backend::{StreamEvent, TokenOut};
use crate::error::ApiError;
use crate::router::{RouteInfo, Served};

/// Reads a stream to its end (or error, or time limit).
pub(crate) async fn collect(
    served: Served,
    limit: Duration,
) -> (Vec<StreamEvent>, Result<(), ApiError>) {
    let Served {
        first,
        mut rx,
        lease,
        ..
    } = served;
    let mut events = vec![first];
    let read = async {
        if let Some(StreamEvent::Done(_)) = events.last() {
            return Ok(());
        }
        while let Some(ev) = rx.recv().await {
            match ev {
                StreamEvent::Error(e) => return Err(e),
                StreamEvent::Done(d) => {
                    events.push(StreamEvent::Done(d));
                    return Ok(());
                }
                t => events.push(t),
            }
        }
        Err(ApiError::upstream(
            "the fast tier's stream ended without finishing",
        ))
    };
    let outcome = match tokio::time::timeout(limit, read).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::timeout(format!(
            "the fast tier did not finish within {} s",
            limit.as_secs_f32()
        ))),
    };
    if let (Err(e), Some(l)) = (&outcome, &lease) {
        l.failed(e.kind);
    }
    drop(lease);
    (events, outcome)
}

pub(crate) fn mean_logprob(events: &[StreamEvent]) -> Option<f32> {
    let lps: Vec<f32> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Token(TokenOut {
                logprob: Some(l), ..
            }) => Some(*l),
            _ => None,
        })
        .collect();
    (!lps.is_empty()).then(|| lps.iter().sum::<f32>() / lps.len() as f32)
}

pub(crate) fn text_of(events: &[StreamEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Token(t) => Some(t.text.as_str()),
            _ => None,
        })
        .collect()
}

/// The cascade's acceptance test: confident enough, not empty, not stuck in a loop, and valid
/// JSON when JSON was asked for. Ok carries the reason for accepting, Err for rejecting.
pub fn judge(events: &[StreamEvent], threshold: f32, json: bool) -> Result<String, String> {
    let calls = events
        .iter()
        .filter(|e| matches!(e, StreamEvent::ToolCall(_)))
        .count();
    if calls > 0 {
        // Well-formed by construction (only calls that parse become events); whether the
        // call is the right one is the tool's and the strong tier's business.
        return Ok(format!("{calls} tool call(s)"));
    }
    let text = text_of(events);
    if text.trim().is_empty() {
        return Err("empty answer".into());
    }
    if is_degenerate(&text) {
        return Err("the answer repeats itself".into());
    }
    if json && serde_json::from_str::<serde_json::Value>(text.trim()).is_err() {
        return Err("not valid JSON".into());
    }
    match mean_logprob(events) {
        Some(m) if m < threshold => Err(format!("mean logprob {m:.3} < {threshold:.3}")),
        Some(m) => Ok(format!("mean logprob {m:.3} >= {threshold:.3}")),
        None => Ok("no logprobs from the fast tier; checks passed".into()),
    }
}

/// Whether the text ends in the same short pattern many times over (a decoding loop).
pub fn is_degenerate(text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    for p in 1..=40 {
        let need = (p * 4).max(32);
        if chars.len() < need {
            break;
        }
        let tail = &chars[chars.len() - need..];
        if tail.iter().enumerate().all(|(i, c)| *c == tail[i % p])
            && tail[..p].iter().any(|c| !c.is_whitespace())
        {
            return true;
        }
    }
    false
}

/// Serves collected events as if they streamed now.
pub(crate) fn replay(
    events: Vec<StreamEvent>,
    keep_logprobs: bool,
    route: RouteInfo,
) -> Result<Served, ApiError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut it = events.into_iter().map(|e| match e {
        StreamEvent::Token(mut t) if !keep_logprobs => {
            t.logprob = None;
            t.token = None;
            t.top.clear();
            StreamEvent::Token(t)
        }
        e => e,
    });
    let first = it
        .next()
        .ok_or_else(|| ApiError::internal("the cascade collected no events"))?;
    for e in it {
        let _ = tx.send(e);
    }
    Ok(Served {
        route,
        first,
        rx,
        lease: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(t: &str, lp: f32) -> StreamEvent {
        StreamEvent::Token(TokenOut {
            text: t.into(),
            token: Some(t.into()),
            logprob: Some(lp),
            top: vec![],
            tail: false,
        })
    }

    #[test]
    fn judge_uses_logprob_and_checks() {
        assert!(judge(&[tok("Paris", -0.1), tok(".", -0.2)], -1.0, false).is_ok());
        assert!(
            judge(&[tok("Paris", -3.0)], -1.0, false)
                .unwrap_err()
                .contains("mean logprob")
        );
        assert!(
            judge(&[tok("  ", -0.1)], -1.0, false)
                .unwrap_err()
                .contains("empty")
        );
        assert!(
            judge(&[tok("not json", -0.1)], -1.0, true)
                .unwrap_err()
                .contains("JSON")
        );
        assert!(judge(&[tok("{\"a\": 1}", -0.1)], -1.0, true).is_ok());
        let looped = "the cat ".repeat(10);
        assert!(
            judge(&[tok(&looped, -0.1)], -1.0, false)
                .unwrap_err()
                .contains("repeats")
        );
    }

    #[test]
    fn degenerate_detection_ignores_normal_text() {
        assert!(!is_degenerate(
            "The quick brown fox jumps over the lazy dog, and then it rests for a while."
        ));
        assert!(is_degenerate(&format!("Answer: {}", "ha".repeat(30))));
        assert!(!is_degenerate(&" ".repeat(50)));
    }
}
