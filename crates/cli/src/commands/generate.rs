use std::io::Write;

use anyhow::{Context, Result};
use bakeoff_engine::generate::{Done, Flow, generate};
use bakeoff_engine::memory::peak_rss_bytes;
use bakeoff_engine::template::Message;
use clap::Args;

use crate::args::{ModelArgs, SamplingArgs, gib, read_stdin};

/// Generation stops at any end-of-sequence id (tokenizer, config and generation_config), at a
/// --stop string, at --max-tokens, or when the context window is full (finish reason
/// `context_full`). A prompt longer than the context is an error: nothing is truncated.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// The prompt (read from stdin when neither --prompt nor --messages is given).
    #[arg(long, short = 'p')]
    pub prompt: Option<String>,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// System message (implies --chat).
    #[arg(long)]
    pub system: Option<String>,
    /// A JSON file with an OpenAI-style list of {role, content} messages (implies --chat).
    #[arg(long)]
    pub messages: Option<std::path::PathBuf>,
    /// The prompt as a JSON array of token ids, used as given (for timing runs that must feed
    /// every engine the same tokens).
    #[arg(long, conflicts_with_all = ["prompt", "messages", "chat", "system"])]
    pub prompt_ids: Option<String>,
    /// Print one JSON object (prompt_ids, generated_ids, text, summary) instead of streaming.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    let params = a.sampling.params()?;
    let given_ids: Option<Vec<u32>> = match &a.prompt_ids {
        Some(s) => Some(
            serde_json::from_str(s).context("--prompt-ids expects a JSON array of token ids")?,
        ),
        None => None,
    };
    let messages = if given_ids.is_some() {
        None
    } else {
        build_messages(&a)?
    };
    let prompt_text = match (&given_ids, &messages, &a.prompt) {
        (Some(_), _, _) | (None, Some(_), _) => None,
        (None, None, Some(p)) => Some(p.clone()),
        (None, None, None) => Some(read_stdin()?),
    };
    let mut lm = a.model.load(!a.json)?;
    let ids = match (given_ids, &messages, &prompt_text) {
        (Some(ids), _, _) => {
            let vocab = lm.model.config().vocab_size as u32;
            if let Some(bad) = ids.iter().find(|&&i| i >= vocab) {
                anyhow::bail!(
                    "--prompt-ids: token id {bad} is outside the vocabulary of {vocab} tokens"
                );
            }
            ids
        }
        (None, Some(m), _) => lm.prompter.encode_chat(m)?,
        (None, None, Some(p)) => lm.prompter.encode_prompt(p)?,
        (None, None, None) => anyhow::bail!("no prompt given"),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut write_err = None;
    let gen_result = generate(&mut lm, &ids, &params, |ev| {
        if a.json {
            return Flow::Continue;
        }
        if let Err(e) = out
            .write_all(ev.text().as_bytes())
            .and_then(|_| out.flush())
        {
            write_err = Some(e);
            return Flow::Stop;
        }
        Flow::Continue
    })?;
    if let Some(e) = write_err {
        return Err(e).context("cannot write to stdout");
    }
    if a.json {
        let v = serde_json::json!({
            "prompt_ids": gen_result.prompt_ids,
            "generated_ids": gen_result.ids,
            "text": gen_result.text,
            "summary": summary_json(&gen_result.done, lm.info.load_s),
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(out)?;
        drop(out);
        eprintln!("{}", format_summary(&gen_result.done, lm.info.load_s));
    }
    Ok(())
}

fn build_messages(a: &GenerateArgs) -> Result<Option<Vec<Message>>> {
    if let Some(path) = &a.messages {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut msgs: Vec<Message> = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: expected a JSON list of {{\"role\", \"content\"}} objects",
                path.display()
            )
        })?;
        if msgs.is_empty() {
            anyhow::bail!("{}: the message list is empty", path.display());
        }
        for m in &msgs {
            if !["system", "user", "assistant", "tool"].contains(&m.role.as_str()) {
                anyhow::bail!(
                    "{}: unknown role `{}` (system, user, assistant, tool)",
                    path.display(),
                    m.role
                );
            }
        }
        if let Some(s) = &a.system {
            msgs.insert(0, Message::system(s.clone()));
        }
        return Ok(Some(msgs));
    }
    if !a.chat && a.system.is_none() {
        return Ok(None);
    }
    let user = match &a.prompt {
        Some(p) => p.clone(),
        None => read_stdin()?,
    };
    let mut msgs = Vec::new();
    if let Some(s) = &a.system {
        msgs.push(Message::system(s.clone()));
    }
    msgs.push(Message::user(user));
    Ok(Some(msgs))
}

/// The `summary` object of `generate --json`, flat as scripts read it.
fn summary_json(d: &Done, load_s: f64) -> serde_json::Value {
    serde_json::json!({
        "prompt_tokens": d.usage.prompt_tokens,
        "prefilled_tokens": d.usage.prefilled_tokens(),
        "generated_tokens": d.usage.completion_tokens,
        "load_s": load_s,
        "ttft_ms": d.timings.ttft_ms,
        "prefill_tok_s": d.timings.prefill_tok_s,
        "decode_tok_s": d.timings.decode_tok_s,
        "finish_reason": d.finish_reason,
        "peak_rss_bytes": peak_rss_bytes(),
    })
}

/// The line printed after an answer: the generation core's record plus the model's load time
/// and the process's peak memory.
pub fn format_summary(d: &Done, load_s: f64) -> String {
    format!(
        "-- prompt {} tok ({} computed) | generated {} tok | load {:.2} s | ttft {:.1} ms | prefill {:.1} tok/s | decode {:.1} tok/s | finish {} | peak rss {}",
        d.usage.prompt_tokens,
        d.usage.prefilled_tokens(),
        d.usage.completion_tokens,
        load_s,
        d.timings.ttft_ms,
        d.timings.prefill_tok_s,
        d.timings.decode_tok_s,
        d.finish_reason.as_str(),
        gib(peak_rss_bytes())
    )
}
