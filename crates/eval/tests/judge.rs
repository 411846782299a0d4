//! The judge path against a stand-in OpenAI-compatible endpoint on loopback: single-answer
//! grading parses the rating, pairwise runs both orders and counts a win only when they agree,
//! temperature 0 is sent, and every exchange is audited.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use bakeoff_eval::audit::Audit;
use bakeoff_eval::candidate::GenOut;
use bakeoff_eval::data::{JudgePrompt, MtBenchItem};
use bakeoff_eval::judge::{self, Judge, JudgeBackend};
use bakeoff_eval::suite::Generated;
use serde_json::{Value, json};

/// Serves `n` requests; the reply depends on the prompt: a rating for single grading, and for
/// pairs "[[A]]" whenever the answer shown first contains `FIRST_WINS`, else the answer that
/// contains "good".
fn serve(n: usize, bodies: Arc<Mutex<Vec<Value>>>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for _ in 0..n {
            let Ok((mut s, _)) = l.accept() else { return };
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).expect("body");
            let req: Value = serde_json::from_slice(&body).expect("json body");
            let user = req["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["content"].as_str())
                .unwrap_or("")
                .to_string();
            bodies.lock().expect("lock").push(req);
            let reply = if user.contains("[The Start of Assistant A's Answer]") {
                let a_part = user
                    .split("[The Start of Assistant B's Answer]")
                    .next()
                    .unwrap_or("");
                if a_part.contains("FIRST_WINS") || a_part.contains("good") {
                    "Verdict: [[A]]"
                } else {
                    "Verdict: [[B]]"
                }
            } else if user.contains("good") {
                "Fine answer. Rating: [[8]]"
            } else {
                "Weak. Rating: [[3]]"
            };
            let out = json!({"choices": [{"message": {"role": "assistant", "content": reply}}]})
                .to_string();
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{out}",
                out.len()
            );
        }
    });
    format!("http://{addr}/v1")
}

fn prompts() -> Vec<JudgePrompt> {
    let p = |name: &str, kind: &str, tpl: &str| JudgePrompt {
        name: name.into(),
        kind: kind.into(),
        system_prompt: "You are a judge.".into(),
        prompt_template: tpl.into(),
        output_format: String::new(),
    };
    vec![
        p(
            "single-v1",
            "single",
            "[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]",
        ),
        p(
            "pair-v2",
            "pairwise",
            "[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]",
        ),
    ]
}

fn generated(id: &str, text: &str) -> Generated {
    (
        "mt_bench".into(),
        id.into(),
        "q".into(),
        GenOut {
            prompt: "q".into(),
            text: text.into(),
            tokens: 3,
            ids: vec![1, 2, 3],
            finish: "stop".into(),
            seconds: 0.0,
        },
    )
}

#[test]
fn endpoint_judge_single_and_pairwise() {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    // 2 single grades + 2 questions × 2 orders.
    let url = serve(6, bodies.clone());
    let mut j = Judge {
        backend: JudgeBackend::Endpoint {
            url: url.clone(),
            model: "judge-x".into(),
            api_key: None,
        },
        identity: format!("judge-x at {url}"),
        max_tokens: 64,
    };
    let qs = vec![
        MtBenchItem {
            question_id: 81,
            category: "writing".into(),
            turns: vec!["Write a poem.".into()],
            reference: None,
        },
        MtBenchItem {
            question_id: 82,
            category: "writing".into(),
            turns: vec!["Write a letter.".into()],
            reference: None,
        },
    ];
    let refs = Default::default();
    let mut audit = Audit::in_memory();
    let a = vec![
        generated("mt_bench:81", "a good poem"),
        generated("mt_bench:82", "FIRST_WINS letter"),
    ];
    let b = vec![
        generated("mt_bench:81", "a dull poem"),
        generated("mt_bench:82", "FIRST_WINS letter too"),
    ];
    let c = judge::grade_single(&mut j, &prompts(), &qs, &refs, "A", &a, &mut audit)
        .expect("grade")
        .expect("component");
    assert_eq!(c.name, "mt_bench_judge");
    // Ratings 8 (contains "good") and 3: the mean rating is the 1-10 score itself.
    assert_eq!(c.score10, 5.5);
    assert_eq!(c.headline.n, 2);
    let s = judge::pairwise(
        &mut j,
        &prompts(),
        &qs,
        &refs,
        ("A", &a),
        ("B", &b),
        &mut audit,
    )
    .expect("pairwise");
    // q81: the good answer wins in both orders → A wins. q82: the judge always picks the first
    // shown (position bias) → the orders disagree → a tie, counted inconsistent.
    assert_eq!((s.a_wins, s.b_wins, s.ties, s.inconsistent), (1, 0, 1, 1));
    let sent = bodies.lock().expect("lock");
    assert_eq!(sent.len(), 6);
    assert!(
        sent.iter()
            .all(|b| b["temperature"] == 0 && b["model"] == "judge-x")
    );
    assert_eq!(audit.records, 6);
    assert!(audit.memory().iter().all(|r| {
        r["judge"]
            .as_str()
            .is_some_and(|j| j.starts_with("judge-x"))
    }));
}
