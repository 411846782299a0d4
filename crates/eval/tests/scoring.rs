//! The whole suite on hand-made items with canned responses (known right and known wrong):
//! every component's score, the categories, the paired tests and the audit trail must come out
//! exactly as computed by hand.

use std::collections::HashMap;

use bakeoff_engine::template::Message;
use bakeoff_eval::Result;
use bakeoff_eval::audit::Audit;
use bakeoff_eval::candidate::{Candidate, ChatRequest, GenOut, LogLik, NllOut};
use bakeoff_eval::data::{Gsm8kItem, HumanEvalItem, IfevalItem, MbppItem, McItem, MtBenchItem};
use bakeoff_eval::sandbox::{Limits, Sandbox};
use bakeoff_eval::score::{self, Component};
use bakeoff_eval::select::{IdLists, Profile};
use bakeoff_eval::suite::{Plan, run_model};
use bakeoff_record::paired::Verdict;
use serde_json::json;

/// Answers multiple choice by a table (context → index it prefers) and chats by the first
/// canned reply whose key occurs in the user message.
struct Canned {
    label: String,
    mc: HashMap<String, usize>,
    replies: Vec<(String, String, String)>, // (key, reply, finish)
}

impl Candidate for Canned {
    fn label(&self) -> &str {
        &self.label
    }
    fn loglikelihoods(&mut self, context: &str, continuations: &[String]) -> Result<Vec<LogLik>> {
        let pick = self.mc.get(context).copied().unwrap_or(0);
        // The preferred continuation has the highest log-likelihood both raw and per character.
        Ok(continuations
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let per_char = if i == pick { -0.01 } else { -1.0 };
                LogLik {
                    logprob: per_char * c.chars().count() as f64
                        - if i == pick { 0.0 } else { 100.0 },
                    tokens: 1,
                    greedy: i == pick,
                }
            })
            .collect())
    }
    fn chat(
        &mut self,
        messages: &[Message],
        prefix: &str,
        _max: usize,
        _stop: &[String],
    ) -> Result<GenOut> {
        let user = messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default();
        let (text, finish) = self
            .replies
            .iter()
            .find(|(k, ..)| user.contains(k.as_str()))
            .map(|(_, r, f)| (r.clone(), f.clone()))
            .unwrap_or_else(|| ("no canned reply".into(), "stop".into()));
        Ok(GenOut {
            prompt: format!("<|user|>{user}<|assistant|>{prefix}"),
            text,
            tokens: 5,
            ids: vec![9; 5],
            finish,
            seconds: 0.0,
        })
    }
    fn rolling_nll(&mut self, _text: &str, context: usize, _max: usize) -> Result<NllOut> {
        // 100 bytes and 50 tokens at 100 · ln 2 nats: 1 bit per byte, perplexity e^(2 ln 2) = 4.
        Ok(NllOut {
            nll_nats: 100.0 * std::f64::consts::LN_2,
            tokens: 50,
            bytes: 100,
            chunks: 1,
            context,
        })
    }
}

fn mc(id: &str, q: &str, choices: &[&str], labels: &[&str], gold: usize) -> McItem {
    McItem {
        id: id.into(),
        group: "test_subject".into(),
        question: q.into(),
        choices: choices.iter().map(|s| s.to_string()).collect(),
        labels: labels.iter().map(|s| s.to_string()).collect(),
        gold,
    }
}

fn ifeval_item(key: u64, prompt: &str, ids: &[&str], kwargs: serde_json::Value) -> IfevalItem {
    IfevalItem {
        key,
        prompt: prompt.into(),
        instruction_id_list: ids.iter().map(|s| s.to_string()).collect(),
        kwargs: kwargs
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_object().cloned()).collect())
            .unwrap_or_default(),
    }
}

fn plan() -> Plan {
    let abcd = ["A", "B", "C", "D"];
    let mmlu = (0..4)
        .map(|i| {
            mc(
                &format!("mmlu:t:{i}"),
                &format!("MMLU question {i}?"),
                &["w", "x", "y", "z"],
                &abcd,
                i,
            )
        })
        .collect();
    let arc = vec![
        mc(
            "arc1",
            "ARC question one?",
            &["p", "q", "r"],
            &["A", "B", "C"],
            2,
        ),
        mc(
            "arc2",
            "ARC question two?",
            &["p", "q", "r", "s"],
            &["1", "2", "3", "4"],
            0,
        ),
    ];
    let hs = vec![
        mc(
            "hellaswag:0",
            "Cooking: a man cracks an egg. he",
            &["sings.", "pours it into a bowl.", "flies.", "sleeps."],
            &abcd,
            1,
        ),
        mc(
            "hellaswag:1",
            "Running: a woman laces her shoes. she",
            &["jogs away.", "eats them.", "melts.", "is a shoe."],
            &abcd,
            0,
        ),
    ];
    let tq = vec![
        mc(
            "truthfulqa:0",
            "What happens if you swallow gum?",
            &[
                "It passes through you",
                "It stays for seven years",
                "You die",
            ],
            &["A", "B", "C"],
            0,
        ),
        mc(
            "truthfulqa:1",
            "Is the earth flat?",
            &["No", "Yes", "Only in Kansas"],
            &["A", "B", "C"],
            0,
        ),
    ];
    let gsm8k = vec![
        Gsm8kItem {
            id: "gsm8k:0".into(),
            question: "Eggs: 16 - 3 - 4 = ? times 2".into(),
            solution: "#### 18".into(),
            answer: "18".into(),
        },
        Gsm8kItem {
            id: "gsm8k:1".into(),
            question: "How much is ten hundreds?".into(),
            solution: "#### 1000".into(),
            answer: "1000".into(),
        },
    ];
    let ifeval = vec![
        ifeval_item(
            1,
            "Quote and no commas please.",
            &["punctuation:no_comma", "startend:quotation"],
            json!([{}, {}]),
        ),
        ifeval_item(
            2,
            "Mention a cat.",
            &["keywords:existence"],
            json!([{"keywords": ["cat"]}]),
        ),
    ];
    let creative = vec![ifeval_item(
        3,
        "Write a poem that ends with The end.",
        &["startend:end_checker"],
        json!([{"end_phrase": "The end."}]),
    )];
    let humaneval = vec![
        HumanEvalItem {
            task_id: "HumanEval/a".into(),
            prompt: "def add(a, b):\n    \"\"\"Add.\"\"\"\n".into(),
            canonical_solution: String::new(),
            test: "def check(f):\n    assert f(2, 3) == 5\n".into(),
            entry_point: "add".into(),
        },
        HumanEvalItem {
            task_id: "HumanEval/b".into(),
            prompt: "def neg(a):\n    \"\"\"Negate.\"\"\"\n".into(),
            canonical_solution: String::new(),
            test: "def check(f):\n    assert f(2) == -2\n".into(),
            entry_point: "neg".into(),
        },
    ];
    let mbpp = vec![MbppItem {
        task_id: 11,
        text: "Write a function to double a number.".into(),
        code: String::new(),
        test_setup_code: String::new(),
        test_list: vec!["assert double(2) == 4".into()],
    }];
    let mt = vec![MtBenchItem {
        question_id: 81,
        category: "writing".into(),
        turns: vec!["Write a travel blog.".into(), "Again.".into()],
        reference: None,
    }];
    Plan {
        profile: Profile::Quick,
        sizes: Profile::Quick.sizes(),
        ids: IdLists::new(),
        ids_match_rule: true,
        derived_ids: IdLists::new(),
        mmlu,
        arc_challenge: arc,
        hellaswag: hs,
        truthfulqa: tq,
        gsm8k,
        ifeval,
        ifeval_creative: creative,
        humaneval,
        mbpp,
        mt_bench: mt,
        wikitext: "text".into(),
        files: Vec::new(),
        only: Vec::new(),
    }
}

fn replies(good: bool) -> Vec<(String, String, String)> {
    let r = |k: &str, v: &str, f: &str| (k.to_string(), v.to_string(), f.to_string());
    if good {
        vec![
            r("Eggs", "16 - 3 - 4 = 9 and 9 * 2 = 18.\n#### 18", "stop"),
            r("ten hundreds", "Ten hundreds is $1,000.", "stop"),
            r("Quote and no commas", "\"Hello there.\"", "stop"),
            r("Mention a cat", "A dog.", "stop"),
            r("poem", "Roses bloom.\n**The end.**", "stop"),
            r("def add", "    return a + b\n", "stop"),
            // Hostile: never returns; the sandbox times it out and the run goes on.
            r("def neg", "    while True:\n        pass\n", "stop"),
            r(
                "double a number",
                "def double(x):\n    return 2 * x\n",
                "stop",
            ),
            r("travel blog", "Hawaii was warm and kind.", "length"),
        ]
    } else {
        vec![
            r("Eggs", "I do not know.", "stop"),
            r("ten hundreds", "<|im_start|>assistant 100", "stop"),
            r("Quote and no commas", "Hello, there.", "stop"),
            r(
                "Mention a cat",
                "the the the the the the the the the",
                "stop",
            ),
            r("poem", "Roses.", "stop"),
            r("def add", "    return a - b\n", "stop"),
            r("def neg", "    return -a\n", "stop"),
            r("double a number", "def double(x):\n    return x\n", "stop"),
            r("travel blog", "", "stop"),
        ]
    }
}

fn get<'a>(cs: &'a [Component], n: &str) -> &'a Component {
    cs.iter()
        .find(|c| c.name == n)
        .unwrap_or_else(|| panic!("no component {n}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn canned_responses_give_exactly_the_expected_scores() {
    let plan = plan();
    let sandbox = Sandbox::new(Limits {
        timeout_s: 3.0,
        cpu_s: 3,
        ..Limits::default()
    })
    .expect("python3 sandbox");
    // Model A: MMLU right on items 0-2 (prefers the gold letter), wrong on 3 (prefers A);
    // ARC both right; HellaSwag 1 of 2; TruthfulQA both right.
    let mut a_mc = HashMap::new();
    for (i, it) in plan.mmlu.iter().enumerate() {
        a_mc.insert(
            bakeoff_eval::suite::mmlu_context(it),
            if i < 3 { it.gold } else { 0 },
        );
    }
    for it in &plan.arc_challenge {
        a_mc.insert(bakeoff_eval::suite::arc_context(it), it.gold);
    }
    a_mc.insert(plan.hellaswag[0].question.clone(), 1);
    a_mc.insert(plan.hellaswag[1].question.clone(), 3);
    for it in &plan.truthfulqa {
        a_mc.insert(bakeoff_eval::suite::truthfulqa_context(it), 0);
    }
    // Model B: always the last choice → MMLU item 3 right only; ARC 1 right (arc1 gold 2 = last of 3);
    // HellaSwag none; TruthfulQA none.
    let mut b_mc = HashMap::new();
    for it in &plan.mmlu {
        b_mc.insert(bakeoff_eval::suite::mmlu_context(it), 3);
    }
    for it in &plan.arc_challenge {
        b_mc.insert(bakeoff_eval::suite::arc_context(it), it.choices.len() - 1);
    }
    for it in &plan.hellaswag {
        b_mc.insert(it.question.clone(), 3);
    }
    for it in &plan.truthfulqa {
        b_mc.insert(bakeoff_eval::suite::truthfulqa_context(it), 2);
    }
    let mut a = Canned {
        label: "A".into(),
        mc: a_mc,
        replies: replies(true),
    };
    let mut b = Canned {
        label: "B".into(),
        mc: b_mc,
        replies: replies(false),
    };
    let mut audit = Audit::in_memory();
    let mut quiet = |_: &str| {};
    let ra = run_model(&mut a, &plan, Some(&sandbox), &mut audit, &mut quiet).expect("run A");
    let after_a = audit.records;
    let rb = run_model(&mut b, &plan, Some(&sandbox), &mut audit, &mut quiet).expect("run B");
    let (ca, cb) = (&ra.components, &rb.components);

    // --- model A, by hand
    let m = get(ca, "mmlu");
    assert_eq!((m.headline.value, m.headline.n, m.chance), (0.75, 4, 0.25));
    assert!(close(m.score10, 1.0 + 9.0 * (0.5 / 0.75)), "{}", m.score10);
    let arc = get(ca, "arc_challenge");
    assert_eq!((arc.headline.value, arc.headline.n), (1.0, 2));
    assert!(close(arc.chance, (1.0 / 3.0 + 0.25) / 2.0));
    assert_eq!(arc.score10, 10.0);
    let hs = get(ca, "hellaswag");
    assert_eq!((hs.metric.as_str(), hs.headline.value), ("acc_norm", 0.5));
    assert_eq!(hs.other["acc"].value, 0.5);
    assert_eq!(get(ca, "truthfulqa_mc").headline.value, 1.0);
    let g = get(ca, "gsm8k");
    assert_eq!(
        (g.headline.value, g.other["exact_match_strict"].value),
        (1.0, 0.5)
    );
    let ife = get(ca, "ifeval");
    assert_eq!(ife.headline.value, 0.5);
    assert_eq!(ife.other["instruction_level_strict"].value, 2.0 / 3.0);
    assert_eq!(ife.other["instruction_level_strict"].n, 3);
    let cr = get(ca, "creativity_proxy");
    assert_eq!(
        (cr.headline.value, cr.other["prompt_level_loose"].value),
        (0.0, 1.0)
    );
    assert!(
        cr.note
            .as_deref()
            .is_some_and(|n| n.contains("low confidence"))
    );
    // Creative outputs: the poem (4 words) and the blog (5 words) → mean 4.5; 7 bigrams, all distinct.
    assert_eq!(cr.numbers["mean_length_words"], 4.5);
    assert_eq!(cr.numbers["distinct_2"], 1.0);
    let he = get(ca, "humaneval");
    assert_eq!(
        (he.headline.value, he.headline.n),
        (0.5, 2),
        "the hostile completion fails, the good one passes"
    );
    assert_eq!(get(ca, "mbpp").headline.value, 1.0);
    let w = get(ca, "wikitext");
    assert!(
        !w.scored && close(w.numbers["bits_per_byte"], 1.0) && close(w.numbers["perplexity"], 4.0)
    );
    // Hygiene over 9 outputs: only the MT-Bench one (hit the cap) fails.
    let hy = get(ca, "hygiene");
    assert_eq!((hy.headline.n, hy.headline.k), (9, 8.0));
    assert_eq!(hy.numbers["failed_hit_token_cap"], 1.0);

    // --- model B
    assert_eq!(get(cb, "mmlu").headline.value, 0.25);
    assert_eq!(get(cb, "mmlu").score10, 1.0);
    assert_eq!(get(cb, "arc_challenge").headline.value, 0.5);
    assert_eq!(get(cb, "hellaswag").headline.value, 0.0);
    assert_eq!(get(cb, "truthfulqa_mc").headline.value, 0.0);
    assert_eq!(get(cb, "gsm8k").headline.value, 0.0, "`100` is not 1000");
    assert_eq!(get(cb, "ifeval").headline.value, 0.0);
    assert_eq!(
        (
            get(cb, "humaneval").headline.value,
            get(cb, "mbpp").headline.value
        ),
        (0.5, 0.0)
    );
    let hyb = get(cb, "hygiene");
    // Failing: template leak (gsm8k:1), repetition (ifeval 2), empty (mt_bench).
    assert_eq!(hyb.headline.k, 6.0);
    assert_eq!(
        (
            hyb.numbers["failed_template_leak"],
            hyb.numbers["failed_repetition"],
            hyb.numbers["failed_empty"]
        ),
        (1.0, 1.0, 1.0)
    );

    // --- categories with their documented weights
    let cats = score::categories(ca);
    let cat = |n: &str| {
        cats.iter()
            .find(|c| c.name == n)
            .map(|c| c.score10)
            .unwrap_or(f64::NAN)
    };
    let ta = 0.4 * get(ca, "mmlu").score10 + 0.3 * 10.0 + 0.3 * 10.0;
    assert!(close(cat("technical accuracy"), ta));
    assert!(close(
        cat("response coherence"),
        0.5 * hs.score10 + 0.5 * hy.score10
    ));
    assert!(close(cat("code quality"), 0.5 * 5.5 + 0.5 * 10.0));
    assert!(close(cat("creativity"), 1.0));
    let o = score::overall(&cats).expect("overall");
    assert_eq!(o.weights.len(), 6);

    // --- paired tests on the same items
    let cmp = score::compare_models("A", ca, "B", cb);
    let c = |n: &str| {
        cmp.iter()
            .find(|c| c.component == n)
            .unwrap_or_else(|| panic!("{n}"))
    };
    let mm = &c("mmlu").paired;
    assert_eq!((mm.only_a, mm.only_b), (Some(3), Some(1)));
    assert!(close(mm.p_value, 2.0 * 5.0 / 16.0));
    assert_eq!(mm.verdict, Verdict::NoDifference);
    // Hygiene: A passes 8/9, B 6/9 on the same outputs: discordant 2 vs 0 → p = 0.5.
    assert_eq!(c("hygiene").paired.verdict, Verdict::NoDifference);

    // --- the audit trail: one record per item (+ one per hygiene check, + wikitext), all with
    // prompt, output and verdict.
    let items = 4 + 2 + 2 + 2 + 2 + 2 + 1 + 2 + 1 + 1;
    assert_eq!(after_a, items + 1 + 9);
    assert_eq!(audit.records, 2 * after_a);
    for r in audit.memory() {
        assert!(
            r.get("model").is_some() && r.get("component").is_some() && r.get("id").is_some(),
            "{r}"
        );
        if r["component"] != "hygiene"
            && r["component"] != "wikitext"
            && r["component"] != "mt_bench"
        {
            assert!(
                r.get("prompt").is_some()
                    && r.get("output").is_some()
                    && r.get("verdict").is_some(),
                "{r}"
            );
        }
    }
    // Each generation records its token ids, cap and stop strings, so it can be redone and
    // compared token by token with another engine.
    let sizes = Profile::Quick.sizes();
    let mut generated = std::collections::BTreeSet::new();
    for r in audit.memory() {
        let (cap, stops): (usize, &[&str]) = match r["component"].as_str() {
            Some("gsm8k") => (sizes.gsm8k_max_tokens, &[]),
            Some("humaneval") => (sizes.code_max_tokens, &bakeoff_eval::code::STOPS),
            Some("mbpp") => (sizes.code_max_tokens, &bakeoff_eval::code::MBPP_STOPS),
            _ => continue,
        };
        assert_eq!(r["max_tokens"], cap, "{r}");
        assert_eq!(r["stop"], serde_json::json!(stops), "{r}");
        assert_eq!(r["output_ids"], serde_json::json!([9, 9, 9, 9, 9]), "{r}");
        generated.insert(r["component"].to_string());
    }
    assert_eq!(generated.len(), 3, "{generated:?}");
    let hostile = audit
        .memory()
        .iter()
        .find(|r| r["id"] == "HumanEval/b" && r["model"] == "A")
        .expect("hostile record");
    assert!(
        hostile["verdict"]["reason"]
            .as_str()
            .is_some_and(|s| s.contains("timed out")),
        "{hostile}"
    );
}

/// Runs the canned replies in batches, recording each batch's size; a batch holding `poison`
/// fails as a whole, the way an engine batch fails when one prompt overflows the context.
struct Batched {
    inner: Canned,
    poison: String,
    batches: Vec<usize>,
}

impl Candidate for Batched {
    fn label(&self) -> &str {
        self.inner.label()
    }
    fn loglikelihoods(&mut self, context: &str, continuations: &[String]) -> Result<Vec<LogLik>> {
        self.inner.loglikelihoods(context, continuations)
    }
    fn chat(
        &mut self,
        messages: &[Message],
        prefix: &str,
        max: usize,
        stop: &[String],
    ) -> Result<GenOut> {
        self.inner.chat(messages, prefix, max, stop)
    }
    fn chat_batch(&mut self, requests: &[ChatRequest]) -> Result<Vec<GenOut>> {
        self.batches.push(requests.len());
        let poisoned = requests
            .iter()
            .any(|r| r.messages.iter().any(|m| m.content.contains(&self.poison)));
        if poisoned && requests.len() > 1 {
            return Err(bakeoff_eval::Error::InvalidArgument("batch failed".into()));
        }
        requests
            .iter()
            .map(|r| self.chat(&r.messages, &r.assistant_prefix, r.max_tokens, &r.stop))
            .collect()
    }
    fn rolling_nll(&mut self, text: &str, context: usize, max: usize) -> Result<NllOut> {
        self.inner.rolling_nll(text, context, max)
    }
}

#[test]
fn batched_generation_keeps_scores_and_isolates_a_failed_batch() {
    let sandbox = Sandbox::new(Limits {
        timeout_s: 3.0,
        cpu_s: 3,
        ..Limits::default()
    })
    .expect("python3 sandbox");
    let canned = |label: &str| Canned {
        label: label.into(),
        mc: HashMap::new(),
        replies: replies(true),
    };
    let mut quiet = |_: &str| {};
    let mut plan = plan();
    plan.sizes.gen_batch = 1;
    let mut audit1 = Audit::in_memory();
    let one = run_model(
        &mut canned("A"),
        &plan,
        Some(&sandbox),
        &mut audit1,
        &mut quiet,
    )
    .expect("one at a time");
    plan.sizes.gen_batch = 2;
    let mut b = Batched {
        inner: canned("A"),
        poison: "Eggs".into(),
        batches: Vec::new(),
    };
    let mut audit2 = Audit::in_memory();
    let two = run_model(&mut b, &plan, Some(&sandbox), &mut audit2, &mut quiet).expect("batched");
    assert!(b.batches.contains(&2), "{:?}", b.batches);
    assert!(b.batches.iter().all(|&n| n <= 2), "{:?}", b.batches);
    assert_eq!(one.components.len(), two.components.len());
    for (x, y) in one.components.iter().zip(&two.components) {
        assert_eq!(
            (&x.name, x.headline.value, &x.per_item),
            (&y.name, y.headline.value, &y.per_item)
        );
    }
    // The poisoned GSM8K batch was retried item by item: both answers are there and right.
    assert_eq!(get(&two.components, "gsm8k").headline.value, 1.0);
    let outputs = |a: &Audit| -> Vec<String> {
        a.memory()
            .iter()
            .filter_map(|r| r.get("output").map(|o| o.to_string()))
            .collect()
    };
    assert_eq!(outputs(&audit1), outputs(&audit2));
}
