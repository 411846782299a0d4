//! The OpenAI streaming format as a client reads it: the `data:` lines of server-sent events and
//! the chunk of a chat or text completion each carries. bench's remote client and serve's remote
//! upstreams both read streams through this, so they agree on what a chunk says.

use serde_json::Value;

/// What one server-sent-event line carries.
#[derive(Clone, Debug, PartialEq)]
pub enum SseData<'a> {
    /// A `data:` payload (JSON for OpenAI-compatible servers).
    Payload(&'a str),
    /// `data: [DONE]`, the end of the stream.
    Done,
}

/// The data of one SSE line; `None` for comments, blank lines and other fields.
pub fn sse_data(line: &str) -> Option<SseData<'_>> {
    let data = line
        .trim_end_matches(['\r', '\n'])
        .strip_prefix("data:")?
        .trim();
    Some(if data == "[DONE]" {
        SseData::Done
    } else {
        SseData::Payload(data)
    })
}

/// One streamed token with its log-probabilities, when the server sent them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChunkToken {
    pub token: Option<String>,
    pub logprob: Option<f32>,
    /// The most likely alternatives, most likely first.
    pub top: Vec<(String, f32)>,
}

/// Token counts from a chunk's `usage` (sent with the last chunk when asked for).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkUsage {
    pub prompt_tokens: Option<usize>,
    pub completion_tokens: Option<usize>,
    pub cached_tokens: Option<usize>,
}

/// What one chunk of a completion stream says (choice 0).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamChunk {
    /// `delta.content` of a chat chunk, `text` of a text-completion chunk.
    pub text: String,
    /// One entry per token when the chunk carries log-probabilities.
    pub tokens: Vec<ChunkToken>,
    pub finish_reason: Option<String>,
    pub usage: Option<ChunkUsage>,
}

/// Why a payload is not a chunk.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ChunkError {
    #[error("a chunk that is not JSON ({0})")]
    NotJson(String),
    /// The server reported an error inside the stream.
    #[error("an error in the stream: {0}")]
    Server(String),
}

impl StreamChunk {
    /// Reads one `data:` payload of a chat (`chat`) or text completion stream.
    pub fn parse(payload: &str, chat: bool) -> Result<StreamChunk, ChunkError> {
        let v: Value =
            serde_json::from_str(payload).map_err(|e| ChunkError::NotJson(e.to_string()))?;
        if let Some(e) = v.get("error") {
            let msg = e
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| e.to_string(), str::to_string);
            return Err(ChunkError::Server(msg));
        }
        let mut out = StreamChunk {
            usage: v
                .get("usage")
                .filter(|u| u.is_object())
                .map(|u| ChunkUsage {
                    prompt_tokens: count(u, "/prompt_tokens"),
                    completion_tokens: count(u, "/completion_tokens"),
                    cached_tokens: count(u, "/prompt_tokens_details/cached_tokens"),
                }),
            ..StreamChunk::default()
        };
        let Some(c) = v.pointer("/choices/0") else {
            return Ok(out);
        };
        let text = if chat {
            c.pointer("/delta/content")
        } else {
            c.get("text")
        };
        out.text = text.and_then(Value::as_str).unwrap_or("").to_string();
        out.finish_reason = c
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string);
        if chat {
            for t in c
                .pointer("/logprobs/content")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let top = t
                    .get("top_logprobs")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|x| {
                        Some((
                            x.get("token")?.as_str()?.to_string(),
                            x.get("logprob")?.as_f64()? as f32,
                        ))
                    })
                    .collect();
                out.tokens.push(ChunkToken {
                    token: t.get("token").and_then(Value::as_str).map(str::to_string),
                    logprob: t.get("logprob").and_then(Value::as_f64).map(|x| x as f32),
                    top,
                });
            }
        } else if let Some(lps) = c
            .pointer("/logprobs/token_logprobs")
            .and_then(Value::as_array)
        {
            let toks = c.pointer("/logprobs/tokens").and_then(Value::as_array);
            for (i, lp) in lps.iter().enumerate() {
                out.tokens.push(ChunkToken {
                    token: toks
                        .and_then(|t| t.get(i))
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    logprob: lp.as_f64().map(|x| x as f32),
                    top: Vec::new(),
                });
            }
        }
        Ok(out)
    }
}

fn count(u: &Value, pointer: &str) -> Option<usize> {
    u.pointer(pointer)
        .and_then(Value::as_u64)
        .map(|x| x as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_give_payloads_and_the_end() {
        assert_eq!(sse_data("data: {}\r\n"), Some(SseData::Payload("{}")));
        assert_eq!(sse_data("data:[DONE]"), Some(SseData::Done));
        assert_eq!(sse_data(": keep-alive"), None);
        assert_eq!(sse_data(""), None);
    }

    #[test]
    fn chat_chunks_carry_text_tokens_finish_and_usage() {
        let c = StreamChunk::parse(
            r#"{"choices":[{"delta":{"content":"Hi"},"logprobs":{"content":[{"token":"Hi","logprob":-0.5,"top_logprobs":[{"token":"Hi","logprob":-0.5},{"token":"Ho","logprob":-1.5}]}]},"finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":2}}}"#,
            true,
        )
        .unwrap();
        assert_eq!(c.text, "Hi");
        assert_eq!(c.finish_reason.as_deref(), Some("length"));
        assert_eq!(
            c.tokens,
            vec![ChunkToken {
                token: Some("Hi".into()),
                logprob: Some(-0.5),
                top: vec![("Hi".into(), -0.5), ("Ho".into(), -1.5)],
            }]
        );
        assert_eq!(
            c.usage,
            Some(ChunkUsage {
                prompt_tokens: Some(3),
                completion_tokens: Some(1),
                cached_tokens: Some(2),
            })
        );
    }

    #[test]
    fn text_chunks_read_text_and_token_logprobs() {
        let c = StreamChunk::parse(
            r#"{"choices":[{"text":"ab","logprobs":{"tokens":["a","b"],"token_logprobs":[-0.1,-0.2]}}]}"#,
            false,
        )
        .unwrap();
        assert_eq!(c.text, "ab");
        assert_eq!(c.tokens.len(), 2);
        assert_eq!(c.tokens[1].token.as_deref(), Some("b"));
        assert_eq!(c.usage, None);
    }

    #[test]
    fn errors_and_garbage_are_named() {
        assert_eq!(
            StreamChunk::parse(r#"{"error":{"message":"overloaded"}}"#, true),
            Err(ChunkError::Server("overloaded".into()))
        );
        assert!(matches!(
            StreamChunk::parse("{not json", true),
            Err(ChunkError::NotJson(_))
        ));
    }
}
