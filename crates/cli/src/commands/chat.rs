//! `bakeoff chat`: an interactive streaming chat in the terminal. Each model keeps its own
//! conversation (its own earlier answers), rendered with its chat template; the engine reuses
//! the KV cache of the previous turn, so a follow-up computes only the new messages.
//!
//! With `--vs B`, every prompt is answered by both models one after the other (not at the
//! same time: they would share the CPU and each measure slower than it is), then their
//! numbers are shown side by side. From a pipe, each line is one prompt.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use bakeoff_engine::generate::LoadedModel;
use bakeoff_engine::generate::{Done, FinishReason, Flow, GenParams, generate};
use bakeoff_engine::template::Message;
use clap::Args;
use serde::Serialize;

use crate::args::{ModelArgs, SamplingArgs};

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A second model that answers every prompt too, with the numbers side by side.
    #[arg(long)]
    pub vs: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// System message at the start of the conversation (change it with /system).
    #[arg(long)]
    pub system: Option<String>,
    /// Pause after each token; makes answers slow enough to interrupt in scripted tests.
    #[arg(long, hide = true, default_value_t = 0)]
    pub pace_ms: u64,
}

const HELP: &str = "commands: /reset (forget the conversation), /system TEXT (set the system message; \
/system alone clears it), /stats, /save FILE (JSON transcript), /quit. Ctrl-C stops an answer.";

#[derive(Serialize)]
struct Answer {
    model: String,
    text: String,
    stopped: bool,
    done: Done,
}

#[derive(Serialize)]
struct Turn {
    user: String,
    answers: Vec<Answer>,
}

struct Side {
    name: String,
    lm: LoadedModel,
}

struct Session {
    sides: Vec<Side>,
    system: Option<String>,
    turns: Vec<Turn>,
    params: GenParams,
    pace: Duration,
    interrupted: Arc<AtomicBool>,
}

pub fn run(a: ChatArgs) -> Result<()> {
    let params = a.sampling.params()?;
    let interactive = std::io::stdin().is_terminal();
    let mut sides = vec![Side {
        name: short_name(&a.model.model),
        lm: a.model.load_with(true, true)?,
    }];
    if let Some(vs) = &a.vs {
        let b = ModelArgs {
            model: vs.clone(),
            ..a.model.clone()
        };
        let mut name = short_name(vs);
        if name == sides[0].name {
            name.push_str(" (B)");
        }
        sides.push(Side {
            name,
            lm: b.load_with(true, true)?,
        });
    }
    // The line editor installs its own SIGINT handler when it is created (and keeps it until
    // dropped), so it comes first and ours replaces it.
    let mut editor = if interactive {
        Some(rustyline::DefaultEditor::new().context("cannot open the terminal line editor")?)
    } else {
        None
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    // Ctrl-C while an answer streams stops that answer; at the prompt the line editor reads
    // the key itself (raw mode), so this handler only sees it during generation.
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    let mut s = Session {
        sides,
        system: a.system.clone(),
        turns: Vec::new(),
        params,
        pace: Duration::from_millis(a.pace_ms),
        interrupted,
    };
    if let Some(rl) = editor.as_mut() {
        let names: Vec<&str> = s.sides.iter().map(|x| x.name.as_str()).collect();
        println!("chatting with {} — {HELP}", names.join(" vs "));
        loop {
            match rl.readline("you> ") {
                Ok(line) => {
                    let _ = rl.add_history_entry(line.as_str());
                    if !s.handle(&line)? {
                        break;
                    }
                }
                Err(rustyline::error::ReadlineError::Interrupted) => {
                    println!("(Ctrl-C stops an answer; /quit or Ctrl-D leaves)");
                }
                Err(rustyline::error::ReadlineError::Eof) => break,
                Err(e) => return Err(e).context("cannot read the terminal"),
            }
        }
    } else {
        for line in std::io::stdin().lock().lines() {
            let line = line.context("cannot read standard input")?;
            if !s.handle(&line)? {
                break;
            }
        }
    }
    Ok(())
}

fn short_name(source: &str) -> String {
    let p = std::path::Path::new(source.trim_end_matches('/'));
    let stem = if p.extension().is_some_and(|e| e == "gguf") {
        p.file_stem()
    } else {
        p.file_name()
    };
    stem.map_or_else(|| source.to_string(), |s| s.to_string_lossy().into_owned())
}

impl Session {
    /// Handles one input line; false means quit.
    fn handle(&mut self, line: &str) -> Result<bool> {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            return Ok(true);
        }
        if let Some(cmd) = line.strip_prefix('/') {
            let (name, rest) = cmd.split_once(' ').unwrap_or((cmd, ""));
            match name {
                "quit" | "exit" | "q" => return Ok(false),
                "reset" => {
                    self.turns.clear();
                    println!("(conversation cleared)");
                }
                "system" => {
                    let text = rest.trim();
                    self.system = (!text.is_empty()).then(|| text.to_string());
                    match &self.system {
                        Some(t) => println!("(system message set: {t})"),
                        None => println!("(system message cleared)"),
                    }
                }
                "stats" => self.stats(),
                "save" => {
                    let path = rest.trim();
                    if path.is_empty() {
                        println!("(usage: /save FILE)");
                    } else {
                        self.save(&PathBuf::from(path))?;
                    }
                }
                "help" | "?" => println!("{HELP}"),
                other => println!("(unknown command /{other}; {HELP})"),
            }
            return Ok(true);
        }
        self.ask(line)?;
        Ok(true)
    }

    fn messages(&self, side: usize, user: &str) -> Vec<Message> {
        let mut m = Vec::new();
        if let Some(s) = &self.system {
            m.push(Message::system(s.clone()));
        }
        for t in &self.turns {
            m.push(Message::user(t.user.clone()));
            let a = t.answers.get(side).map_or("", |a| a.text.as_str());
            m.push(Message::assistant(a));
        }
        m.push(Message::user(user));
        m
    }

    fn ask(&mut self, user: &str) -> Result<()> {
        let vs = self.sides.len() > 1;
        let mut answers = Vec::new();
        for i in 0..self.sides.len() {
            let msgs = self.messages(i, user);
            let side = &mut self.sides[i];
            let (ids, stop) = match encode(&side.lm, &msgs) {
                Ok(x) => x,
                Err(e) => {
                    println!("({}: {e:#})", side.name);
                    return Ok(());
                }
            };
            let ctx = side.lm.model.config().max_context;
            if ids.len() >= ctx {
                println!(
                    "(the conversation has {} tokens, more than {}'s context of {ctx}; nothing was cut: /reset to start over)",
                    ids.len(),
                    side.name
                );
                return Ok(());
            }
            let mut params = self.params.clone();
            params.max_tokens = params.max_tokens.min(ctx - ids.len());
            params.stop.extend(stop);
            if vs {
                println!("[{}]", side.name);
            }
            self.interrupted.store(false, Ordering::SeqCst);
            let flag = self.interrupted.clone();
            let pace = self.pace;
            let mut out = std::io::stdout().lock();
            let mut write_err = None;
            let g = generate(&mut side.lm, &ids, &params, |ev| {
                if let Err(e) = out
                    .write_all(ev.text().as_bytes())
                    .and_then(|_| out.flush())
                {
                    write_err = Some(e);
                    return Flow::Stop;
                }
                if !pace.is_zero() {
                    std::thread::sleep(pace);
                }
                if flag.load(Ordering::SeqCst) {
                    Flow::Stop
                } else {
                    Flow::Continue
                }
            })?;
            if let Some(e) = write_err {
                return Err(e).context("cannot write to stdout");
            }
            let stopped = g.done.finish_reason == FinishReason::Cancelled;
            if stopped {
                write!(out, " [stopped]")?;
            }
            writeln!(out)?;
            out.flush()?;
            drop(out);
            eprintln!("{}", stats_line(&side.name, &g.done));
            answers.push(Answer {
                model: side.name.clone(),
                text: g.text,
                stopped,
                done: g.done,
            });
        }
        if vs {
            side_by_side(&answers);
        }
        self.turns.push(Turn {
            user: user.to_string(),
            answers,
        });
        Ok(())
    }

    fn stats(&self) {
        println!(
            "{} turn(s){}",
            self.turns.len(),
            self.system
                .as_ref()
                .map_or(String::new(), |s| format!(", system: {s}"))
        );
        for (i, side) in self.sides.iter().enumerate() {
            let sums: Vec<&Done> = self
                .turns
                .iter()
                .filter_map(|t| t.answers.get(i))
                .map(|a| &a.done)
                .collect();
            let n = sums.len().max(1) as f64;
            let tokens: usize = sums.iter().map(|s| s.usage.completion_tokens).sum();
            let ttft = sums.iter().map(|s| s.timings.ttft_ms).sum::<f64>() / n;
            let speed = sums.iter().map(|s| s.timings.decode_tok_s).sum::<f64>() / n;
            println!(
                "  {}: {tokens} tokens generated, mean ttft {ttft:.1} ms, mean decode {speed:.1} tok/s, context {} / {} tokens",
                side.name,
                side.lm.scheduler.cached().len(),
                side.lm.model.config().max_context
            );
        }
    }

    fn save(&self, path: &std::path::Path) -> Result<()> {
        let v = serde_json::json!({
            "models": self.sides.iter().map(|s| serde_json::json!({"name": s.name, "info": s.lm.info})).collect::<Vec<_>>(),
            "system": self.system,
            "sampling": self.params,
            "turns": self.turns,
        });
        bakeoff_record::fsio::write_atomic(path, serde_json::to_string_pretty(&v)?.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("(saved {} turn(s) to {})", self.turns.len(), path.display());
        Ok(())
    }
}

/// Token ids through the chat template; a model without one gets a plain transcript and
/// stops at the next `User:` line.
fn encode(lm: &LoadedModel, msgs: &[Message]) -> Result<(Vec<u32>, Vec<String>)> {
    if lm.prompter.has_template() {
        return Ok((lm.prompter.encode_chat(msgs)?, Vec::new()));
    }
    let mut text = String::new();
    for m in msgs {
        let who = match m.role.as_str() {
            "system" => "System",
            "assistant" => "Assistant",
            _ => "User",
        };
        text.push_str(&format!("{who}: {}\n", m.content));
    }
    text.push_str("Assistant:");
    Ok((
        lm.prompter.encode_prompt(&text)?,
        vec!["\nUser:".to_string()],
    ))
}

fn stats_line(name: &str, s: &Done) -> String {
    format!(
        "-- {name}: {} tok | ttft {:.1} ms | {:.1} tok/s | prompt {} tok ({} computed) | {}",
        s.usage.completion_tokens,
        s.timings.ttft_ms,
        s.timings.decode_tok_s,
        s.usage.prompt_tokens,
        s.usage.prefilled_tokens(),
        s.finish_reason.as_str()
    )
}

fn side_by_side(answers: &[Answer]) {
    let w = answers
        .iter()
        .map(|a| a.model.chars().count())
        .max()
        .unwrap_or(8)
        .max(12);
    let row = |label: &str, f: &dyn Fn(&Answer) -> String| {
        let cells: Vec<String> = answers.iter().map(|a| format!("{:>w$}", f(a))).collect();
        eprintln!("  {label:<8}{}", cells.join("  "));
    };
    row("", &|a| a.model.clone());
    row("ttft", &|a| format!("{:.1} ms", a.done.timings.ttft_ms));
    row("decode", &|a| {
        format!("{:.1} tok/s", a.done.timings.decode_tok_s)
    });
    row("tokens", &|a| a.done.usage.completion_tokens.to_string());
    row("finish", &|a| a.done.finish_reason.as_str().to_string());
}
