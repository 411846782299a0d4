//! The one generation core, pinned from its three consumers: the CLI's `generate`, eval's
//! batched path (`EngineCandidate::chat_batch`, which runs `generate_batch`) and the server's
//! worker give the same text, finish reason and token count for the same request, with and
//! without stop strings, ending by length, by a stop string, and by end-of-sequence with text
//! held back for a stop string that never completes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use bakeoff_engine::generate::LoadedModel;
use bakeoff_engine::generate::{FinishReason, Flow, GenParams, generate};
use bakeoff_engine::template::Message;
use bakeoff_eval::candidate::{Candidate, ChatRequest, EngineCandidate};
use bakeoff_serve::backend::{GenRequest, Input, StreamEvent, Upstream};
use bakeoff_serve::engine::{EngineOptions, LocalModel};
use bakeoff_serve::metrics::Metrics;

/// What each consumer reports for one request.
#[derive(Debug, PartialEq)]
struct Outcome {
    text: String,
    finish: &'static str,
    tokens: usize,
}

const MAX_TOKENS: usize = 12;

fn messages() -> Vec<Message> {
    vec![Message::user("Tell me about the sea.")]
}

/// `tiny-llama` with `eos` as its only end-of-sequence id (random weights never pick the real one
/// on purpose, so a test makes a token it will generate the end).
fn model(eos: Option<u32>) -> LoadedModel {
    let mut lm = common::tiny("tiny-llama");
    if let Some(id) = eos {
        lm.prompter = lm.prompter.with_eos_ids(vec![id]);
    }
    lm
}

fn cli(lm: &mut LoadedModel, stop: &[String]) -> (Outcome, Vec<u32>) {
    let ids = lm.prompter.encode_chat(&messages()).unwrap();
    let params = GenParams {
        max_tokens: MAX_TOKENS,
        stop: stop.to_vec(),
        ..Default::default()
    };
    let g = generate(lm, &ids, &params, |_| Flow::Continue).unwrap();
    let out = Outcome {
        text: g.text.clone(),
        finish: g.done.finish_reason.openai(),
        tokens: g.done.usage.completion_tokens,
    };
    assert_eq!(g.ids.len(), out.tokens);
    (out, g.ids)
}

fn eval_batch(lm: LoadedModel, stop: &[String]) -> Outcome {
    let mut c = EngineCandidate::new(lm, "tiny");
    let req = ChatRequest {
        messages: messages(),
        assistant_prefix: String::new(),
        max_tokens: MAX_TOKENS,
        stop: stop.to_vec(),
    };
    // A second, different request so the batched path really batches.
    let other = ChatRequest {
        messages: vec![Message::user("Something else entirely, please.")],
        ..req.clone()
    };
    let mut outs = c.chat_batch(&[req, other]).unwrap();
    let o = outs.remove(0);
    let finish = FinishReason::parse(&o.finish).unwrap().openai();
    Outcome {
        text: o.text,
        finish,
        tokens: o.tokens,
    }
}

async fn server(lm: LoadedModel, stop: &[String]) -> Outcome {
    let metrics = Arc::new(Metrics::new());
    let local = LocalModel::spawn("tiny", lm, EngineOptions::default(), metrics).unwrap();
    let req = GenRequest {
        model: "tiny".into(),
        input: Input::Chat(messages()),
        max_tokens: Some(MAX_TOKENS),
        sampling: bakeoff_engine::sampling::SamplingParams::greedy(),
        stop: stop.to_vec(),
        ignore_eos: false,
        logprobs: None,
        response_format: None,
        tools: None,
        echo: false,
    };
    let mut rx = local.start(req).await.unwrap();
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            StreamEvent::Token(t) => text.push_str(&t.text),
            StreamEvent::Done(d) => {
                return Outcome {
                    text,
                    finish: d.finish_reason.openai(),
                    tokens: d.usage.completion_tokens,
                };
            }
            StreamEvent::Error(e) => panic!("{e:?}"),
            StreamEvent::Prompt(_) => panic!("a prompt event without echo"),
            StreamEvent::ToolCall(_) => panic!("a tool call without tools"),
        }
    }
    panic!("the stream ended without Done")
}

async fn all_agree(eos: Option<u32>, stop: &[String]) -> Outcome {
    let (a, _) = cli(&mut model(eos), stop);
    let b = eval_batch(model(eos), stop);
    let c = server(model(eos), stop).await;
    assert_eq!(
        a, b,
        "CLI and eval's batched path differ (stop {stop:?}, eos {eos:?})"
    );
    assert_eq!(
        a, c,
        "CLI and the server differ (stop {stop:?}, eos {eos:?})"
    );
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_eval_and_server_give_the_same_answer() {
    // Ends by length.
    let base = all_agree(None, &[]).await;
    assert_eq!((base.finish, base.tokens), ("length", MAX_TOKENS));
    let (_, ids) = cli(&mut model(None), &[]);
    let chars: Vec<char> = base.text.chars().collect();
    assert!(
        chars.len() >= 6,
        "random weights gave too little text: {base:?}"
    );

    // Ends by a stop string from the middle of the answer: the text is cut before it.
    let stop: String = chars[3..5].iter().collect();
    let cut = all_agree(None, std::slice::from_ref(&stop)).await;
    assert_eq!(cut.finish, "stop");
    assert_eq!(cut.text, base.text[..base.text.find(&stop).unwrap()]);

    // Ends by end-of-sequence at the sixth token (the first time its id comes up).
    let eos = ids[5];
    let first = ids.iter().position(|&t| t == eos).unwrap();
    let by_eos = all_agree(Some(eos), &[]).await;
    assert_eq!((by_eos.finish, by_eos.tokens), ("stop", first));

    // The same, with a stop string whose start ends the answer: the held-back start is text
    // after all, and every consumer keeps it.
    let last = by_eos.text.chars().last().unwrap();
    let never = format!("{last}\u{7}never");
    let held = all_agree(Some(eos), &[never]).await;
    assert_eq!(held, by_eos);
}
