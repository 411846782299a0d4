//! Remote engines: any OpenAI-compatible server (llama-server, vLLM, Ollama, mlx_lm.server,
//! bakeoff's own), measured from its `/v1/chat/completions` stream. Each content chunk's arrival
//! is a token timestamp; token counts come from the final `usage` chunk that
//! `stream_options.include_usage` asks for (or, failing that, from the number of content chunks).
//! Only loopback hosts, or hosts the user names with `--allow-host`, are contacted: a benchmark
//! must not send prompts anywhere by accident.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bakeoff_record::stream::{SseData, StreamChunk, sse_data};
use serde_json::json;

use crate::error::{BenchError, Result};
use bakeoff_record::bench::RunSample;

/// The host of an `http(s)://host[:port]/path` URL, lower-cased and without brackets.
pub fn parse_host(url: &str) -> Result<String> {
    let shown = || bakeoff_record::redact::redact_url(url);
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| {
            BenchError::InvalidArgument(format!(
                "`{}`: remote engines need an http:// or https:// URL",
                shown()
            ))
        })?;
    if rest.contains('?') {
        return Err(BenchError::InvalidArgument(format!(
            "`{}`: a query in a remote engine's URL is not supported (chat requests go to \
             BASE/chat/completions)",
            shown()
        )));
    }
    let authority = rest.split(['/', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        hostport.split(':').next().unwrap_or("")
    };
    if host.is_empty() {
        return Err(BenchError::InvalidArgument(format!(
            "`{}`: no host in the URL",
            shown()
        )));
    }
    Ok(host.to_ascii_lowercase())
}

pub fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses hosts that are neither loopback nor named with `--allow-host`.
pub fn check_host(url: &str, allowed: &[String]) -> Result<()> {
    let host = parse_host(url)?;
    if is_loopback(&host) || allowed.iter().any(|a| a.eq_ignore_ascii_case(&host)) {
        return Ok(());
    }
    Err(BenchError::remote(
        url,
        format!("`{host}` is not a loopback address; pass --allow-host {host} to benchmark it"),
    ))
}

/// A streaming chat-completions client for one server and model.
pub struct Client {
    agent: ureq::Agent,
    url: String,
    model: String,
}

/// What one streamed request showed.
#[derive(Clone, Debug, PartialEq)]
pub struct Streamed {
    /// Seconds from sending the request to each chunk that carried content.
    pub chunk_times_s: Vec<f64>,
    pub text: String,
    pub prompt_tokens: Option<usize>,
    pub completion_tokens: Option<usize>,
    pub finish_reason: Option<String>,
    pub wall_s: f64,
    /// Seconds spent parsing chunks: the client's own cost inside the stream.
    pub overhead_s: f64,
}

impl Client {
    pub fn new(base_url: &str, model: &str, timeout_s: u64, allowed: &[String]) -> Result<Client> {
        check_host(base_url, allowed)?;
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(timeout_s.max(1)))
            .build();
        Ok(Client {
            agent,
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            model: model.to_string(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends one greedy request for `max_tokens` tokens with EOS ignored (honoured by
    /// llama-server and vLLM; other servers may stop early, and the count says so).
    pub fn stream(&self, content: &str, max_tokens: usize) -> Result<Streamed> {
        let body = json!({
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "ignore_eos": true,
        });
        let err = |m: String| BenchError::remote(&self.url, m);
        let start = Instant::now();
        let resp = match self
            .agent
            .post(&self.url)
            .set("Content-Type", "application/json")
            .set("Accept", "text/event-stream")
            .send_string(&body.to_string())
        {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                return Err(err(format!(
                    "HTTP {code}: {}",
                    text.chars().take(400).collect::<String>()
                )));
            }
            Err(ureq::Error::Transport(t)) => return Err(err(transport_message(&t))),
        };
        let mut out = Streamed {
            chunk_times_s: Vec::new(),
            text: String::new(),
            prompt_tokens: None,
            completion_tokens: None,
            finish_reason: None,
            wall_s: 0.0,
            overhead_s: 0.0,
        };
        for line in BufReader::new(resp.into_reader()).lines() {
            let line = line.map_err(|e| err(format!("reading the stream: {e}")))?;
            let now = start.elapsed().as_secs_f64();
            let data = match sse_data(&line) {
                None => continue,
                Some(SseData::Done) => break,
                Some(SseData::Payload(data)) => data,
            };
            let c = StreamChunk::parse(data, true).map_err(|e| err(format!("{e}: `{data}`")))?;
            if !c.text.is_empty() {
                out.chunk_times_s.push(now);
                out.text.push_str(&c.text);
            }
            if c.finish_reason.is_some() {
                out.finish_reason = c.finish_reason;
            }
            if let Some(u) = c.usage {
                out.prompt_tokens = u.prompt_tokens;
                out.completion_tokens = u.completion_tokens;
            }
            out.overhead_s += start.elapsed().as_secs_f64() - now;
        }
        out.wall_s = start.elapsed().as_secs_f64();
        if out.chunk_times_s.is_empty() {
            return Err(err("the stream carried no content".into()));
        }
        Ok(out)
    }
}

impl Streamed {
    /// The sample a remote repetition records; `estimated_prompt` stands in when the server
    /// sends no `usage`.
    pub fn into_sample(
        self,
        repetition: usize,
        prompt_index: usize,
        estimated_prompt: usize,
    ) -> RunSample {
        RunSample {
            repetition,
            prompt_index,
            prompt_tokens: self.prompt_tokens.unwrap_or(estimated_prompt),
            generated_tokens: self.completion_tokens.unwrap_or(self.chunk_times_s.len()),
            finish_reason: self.finish_reason.unwrap_or_else(|| "unknown".into()),
            token_times_s: self.chunk_times_s,
            prefill_s: None,
            wall_s: self.wall_s,
            cpu_s: None,
            energy_j: None,
            bench_overhead_s: self.overhead_s,
        }
    }
}

/// ureq's own message names the URL, credentials included; this one names what failed.
fn transport_message(t: &ureq::Transport) -> String {
    let mut m = t.kind().to_string();
    if let Some(detail) = t.message() {
        m.push_str(&format!(": {detail}"));
    }
    if let Some(cause) = std::error::Error::source(t) {
        m.push_str(&format!(": {cause}"));
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_url_stay_out_of_errors_and_records() {
        let url = "http://alice:s3cret@127.0.0.1:1/v1";
        let m = crate::job::ModelRef::parse(&format!("openai:{url}#m"), None).unwrap();
        assert_eq!(m.shown_source(), "openai:http://127.0.0.1:1/v1#m");
        let e = Client::new(url, "m", 5, &[])
            .unwrap()
            .stream("hi", 1)
            .unwrap_err();
        let shown = e.to_string();
        assert!(
            !shown.contains("s3cret") && !shown.contains("alice"),
            "{shown}"
        );
        assert!(shown.contains("http://127.0.0.1:1/v1"), "{shown}");
        let e = Client::new("http://bob:pw@example.com/v1", "m", 5, &[])
            .err()
            .unwrap();
        assert!(!e.to_string().contains("pw@"), "{e}");
        let e = parse_host("http://127.0.0.1/v1?key=k3y")
            .unwrap_err()
            .to_string();
        assert!(e.contains("query") && !e.contains("k3y"), "{e}");
        let e = crate::job::ModelRef::parse("openai:ftp://u:s3cret@h/v1#m", None).unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn hosts_are_parsed_and_checked() {
        assert_eq!(
            parse_host("http://127.0.0.1:8080/v1").ok().as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            parse_host("http://[::1]:8080/v1").ok().as_deref(),
            Some("::1")
        );
        assert_eq!(
            parse_host("https://user@Example.org/v1").ok().as_deref(),
            Some("example.org")
        );
        assert!(parse_host("http:///v1").is_err());
        assert!(check_host("http://localhost:1/v1", &[]).is_ok());
        assert!(check_host("http://[::1]:1/v1", &[]).is_ok());
        let refused = check_host("http://10.0.0.5:8000/v1", &[])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(refused.contains("--allow-host 10.0.0.5"), "{refused}");
        assert!(check_host("http://10.0.0.5:8000/v1", &["10.0.0.5".into()]).is_ok());
    }
}
