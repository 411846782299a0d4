//! The optional judge (Zheng et al. 2023, MT-Bench): single-answer 1-10 grading and pairwise
//! comparison run in both orders, a win counting only when both orders agree. The judge is a
//! local model or an OpenAI-compatible endpoint, always at temperature 0; it may not be a
//! candidate nor of a candidate's family. Its identity and prompts go into the results.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use bakeoff_engine::template::Message;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::Audit;
use crate::candidate::{Candidate, EngineCandidate};
use crate::data::{JudgePrompt, MtBenchItem};
use crate::score::{Component, Metric};
use crate::suite::Generated;
use crate::{Error, Result};
use bakeoff_record::paired as stats;

pub enum JudgeBackend {
    Local(Box<EngineCandidate>),
    Endpoint {
        url: String,
        model: String,
        api_key: Option<String>,
    },
}

pub struct Judge {
    pub backend: JudgeBackend,
    /// What the results file names as the judge (model source or endpoint + model).
    pub identity: String,
    pub max_tokens: usize,
}

/// Model families by name; a judge may share none with a candidate.
pub fn family_of(name: &str) -> Option<&'static str> {
    let n = name.to_lowercase();
    const FAMILIES: [(&str, &str); 12] = [
        ("qwen", "qwen"),
        ("llama", "llama"),
        ("mistral", "mistral"),
        ("mixtral", "mistral"),
        ("gemma", "gemma"),
        ("phi", "phi"),
        ("smollm", "smollm"),
        ("deepseek", "deepseek"),
        ("gpt", "gpt"),
        ("claude", "claude"),
        ("yi-", "yi"),
        ("olmo", "olmo"),
    ];
    FAMILIES
        .iter()
        .find(|(k, _)| n.contains(k))
        .map(|(_, f)| *f)
}

/// Refuses a judge that is a candidate or of a candidate's family. `candidates` are the names
/// (sources, architectures) known for each candidate.
pub fn check_independent(judge_names: &[String], candidates: &[Vec<String>]) -> Result<()> {
    for cand in candidates {
        for j in judge_names {
            for c in cand {
                if j == c {
                    return Err(Error::InvalidArgument(format!(
                        "the judge `{j}` is one of the candidates"
                    )));
                }
                if let (Some(fj), Some(fc)) = (family_of(j), family_of(c))
                    && fj == fc
                {
                    return Err(Error::InvalidArgument(format!(
                        "the judge `{j}` is of the same family ({fj}) as candidate `{c}`; self-preference bias makes it unfit"
                    )));
                }
            }
        }
    }
    Ok(())
}

impl Judge {
    /// One completion at temperature 0.
    pub fn complete(&mut self, system: &str, user: &str) -> Result<String> {
        match &mut self.backend {
            JudgeBackend::Local(c) => {
                let mut msgs = Vec::new();
                if !system.is_empty() {
                    msgs.push(Message::system(system));
                }
                msgs.push(Message::user(user));
                Ok(c.chat(&msgs, "", self.max_tokens, &[])?.text)
            }
            JudgeBackend::Endpoint {
                url,
                model,
                api_key,
            } => {
                let mut msgs = Vec::new();
                if !system.is_empty() {
                    msgs.push(json!({"role": "system", "content": system}));
                }
                msgs.push(json!({"role": "user", "content": user}));
                let body = json!({"model": model, "messages": msgs, "temperature": 0, "max_tokens": self.max_tokens});
                let endpoint = format!("{}/chat/completions", url.trim_end_matches('/'));
                let mut req = ureq::post(&endpoint).timeout(std::time::Duration::from_secs(600));
                if let Some(k) = api_key {
                    req = req.set("Authorization", &format!("Bearer {k}"));
                }
                let resp = req
                    .send_json(body)
                    .map_err(|e| Error::Judge(format!("{endpoint}: {e}")))?;
                let v: serde_json::Value = resp
                    .into_json()
                    .map_err(|e| Error::Judge(format!("{endpoint}: {e}")))?;
                v["choices"][0]["message"]["content"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| {
                        Error::Judge(format!(
                            "{endpoint}: no choices[0].message.content in the reply"
                        ))
                    })
            }
        }
    }
}

fn rating_re() -> Option<&'static (Regex, Regex)> {
    static RE: OnceLock<Option<(Regex, Regex)>> = OnceLock::new();
    RE.get_or_init(|| {
        Some((
            Regex::new(r"\[\[(\d+\.?\d*)\]\]").ok()?,
            Regex::new(r"\[(\d+\.?\d*)\]").ok()?,
        ))
    })
    .as_ref()
}

/// The rating in `[[x]]` (or `[x]`), as FastChat parses it; `None` when absent or out of 1-10.
pub fn parse_rating(text: &str) -> Option<f64> {
    let (two, one) = rating_re()?;
    let cap = two
        .captures_iter(text)
        .last()
        .or_else(|| one.captures_iter(text).last())?;
    cap.get(1)?
        .as_str()
        .parse::<f64>()
        .ok()
        .filter(|r| (1.0..=10.0).contains(r))
}

/// `[[A]]`, `[[B]]` or `[[C]]` (tie), as in FastChat's pair prompts.
pub fn parse_pair(text: &str) -> Option<char> {
    let a = text.rfind("[[A]]");
    let b = text.rfind("[[B]]");
    let c = text.rfind("[[C]]");
    [(a, 'A'), (b, 'B'), (c, 'C')]
        .into_iter()
        .filter_map(|(p, k)| p.map(|p| (p, k)))
        .max()
        .map(|(_, k)| k)
}

fn fill(template: &str, vars: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in vars {
        s = s.replace(&format!("{{{k}}}"), v);
    }
    s
}

fn needs_reference(category: &str) -> bool {
    matches!(category, "math" | "reasoning" | "coding")
}

fn prompt<'a>(prompts: &'a [JudgePrompt], name: &str) -> Result<&'a JudgePrompt> {
    prompts
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| Error::MissingData(format!("judge prompt `{name}`")))
}

/// MT-Bench single-answer grading of each model's first-turn answers. The component's score
/// is the mean rating itself (already 1-10); its interval is a bootstrap of the mean.
pub fn grade_single(
    judge: &mut Judge,
    prompts: &[JudgePrompt],
    questions: &[MtBenchItem],
    references: &BTreeMap<u64, Vec<String>>,
    model: &str,
    gens: &[Generated],
    audit: &mut Audit,
) -> Result<Option<Component>> {
    let mut ratings = Vec::new();
    let mut per_item = BTreeMap::new();
    for q in questions {
        let Some((_, _, _, g)) = gens
            .iter()
            .find(|(c, id, ..)| c == "mt_bench" && *id == q.id())
        else {
            continue;
        };
        let Some(turn) = q.turns.first() else {
            continue;
        };
        let reference = references.get(&q.question_id).and_then(|r| r.first());
        let (p, user) = match reference {
            Some(r) if needs_reference(&q.category) => {
                let p = prompt(prompts, "single-math-v1")?;
                (
                    p,
                    fill(
                        &p.prompt_template,
                        &[("question", turn), ("answer", &g.text), ("ref_answer_1", r)],
                    ),
                )
            }
            _ => {
                let p = prompt(prompts, "single-v1")?;
                (
                    p,
                    fill(
                        &p.prompt_template,
                        &[("question", turn), ("answer", &g.text)],
                    ),
                )
            }
        };
        let out = judge.complete(&p.system_prompt, &user)?;
        let rating = parse_rating(&out);
        if let Some(r) = rating {
            ratings.push(r);
            per_item.insert(q.id(), r / 10.0);
        }
        audit.record(json!({
            "component": "mt_bench_judge", "model": model, "id": q.id(), "judge": judge.identity,
            "judge_prompt": p.name, "prompt": user, "output": out, "extracted": rating, "verdict": rating,
        }))?;
    }
    if ratings.is_empty() {
        return Ok(None);
    }
    let n = ratings.len();
    let mean = ratings.iter().sum::<f64>() / n as f64;
    let bs = stats::paired_bootstrap(&ratings, &vec![0.0; n], 10_000, 0);
    let mut c = Component::new(
        "mt_bench_judge",
        "MT-Bench first turns (lm-sys/FastChat questions)",
        "single-answer grading (single-v1; single-math-v1 with the reference for math/reasoning/coding), judge at temperature 0",
        "mean_rating/10",
        Metric {
            value: mean / 10.0,
            k: 0.0,
            n,
            ci95: (bs.low / 10.0, bs.high / 10.0),
        },
        0.0,
    );
    c.score10 = mean;
    c.score10_ci = (bs.low, bs.high);
    c.per_item = per_item;
    let words: usize = gens
        .iter()
        .filter(|(k, ..)| k == "mt_bench")
        .map(|(.., g)| g.text.split_whitespace().count())
        .sum();
    c.numbers
        .insert("mean_answer_words".into(), words as f64 / n as f64);
    c.note = Some(format!(
        "judge: {}; ratings are 1-10, the interval is a bootstrap of the mean",
        judge.identity
    ));
    Ok(Some(c))
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct PairwiseSummary {
    pub a: String,
    pub b: String,
    pub a_wins: usize,
    pub b_wins: usize,
    /// Ties, plus every question where the two orders disagreed.
    pub ties: usize,
    pub inconsistent: usize,
}

/// Pairwise comparison of two models' first-turn answers, each question judged with A first and
/// with B first; a win counts only when both orders name the same model.
#[allow(clippy::too_many_arguments)]
pub fn pairwise(
    judge: &mut Judge,
    prompts: &[JudgePrompt],
    questions: &[MtBenchItem],
    references: &BTreeMap<u64, Vec<String>>,
    (a_name, a_gens): (&str, &[Generated]),
    (b_name, b_gens): (&str, &[Generated]),
    audit: &mut Audit,
) -> Result<PairwiseSummary> {
    let mut s = PairwiseSummary {
        a: a_name.into(),
        b: b_name.into(),
        ..Default::default()
    };
    let find = |gens: &[Generated], id: &str| {
        gens.iter()
            .find(|(c, i, ..)| c == "mt_bench" && i == id)
            .map(|(.., g)| g.text.clone())
    };
    for q in questions {
        let (Some(ta), Some(tb), Some(turn)) = (
            find(a_gens, &q.id()),
            find(b_gens, &q.id()),
            q.turns.first(),
        ) else {
            continue;
        };
        let reference = references
            .get(&q.question_id)
            .and_then(|r| r.first())
            .filter(|_| needs_reference(&q.category));
        let p = prompt(
            prompts,
            if reference.is_some() {
                "pair-math-v1"
            } else {
                "pair-v2"
            },
        )?;
        let mut verdicts = Vec::new();
        for (first, second, swapped) in [(&ta, &tb, false), (&tb, &ta, true)] {
            let mut vars = vec![
                ("question", turn.as_str()),
                ("answer_a", first.as_str()),
                ("answer_b", second.as_str()),
            ];
            if let Some(r) = reference {
                vars.push(("ref_answer_1", r.as_str()));
            }
            let user = fill(&p.prompt_template, &vars);
            let out = judge.complete(&p.system_prompt, &user)?;
            let v = parse_pair(&out);
            // Map the position verdict back to the model.
            let winner = match (v, swapped) {
                (Some('A'), false) | (Some('B'), true) => "A",
                (Some('B'), false) | (Some('A'), true) => "B",
                _ => "tie",
            };
            verdicts.push(winner);
            audit.record(json!({
                "component": "mt_bench_pairwise", "id": q.id(), "a": a_name, "b": b_name, "order": if swapped { "B first" } else { "A first" },
                "judge": judge.identity, "judge_prompt": p.name, "prompt": user, "output": out, "extracted": v.map(String::from), "verdict": winner,
            }))?;
        }
        match (verdicts[0], verdicts[1]) {
            ("A", "A") => s.a_wins += 1,
            ("B", "B") => s.b_wins += 1,
            (x, y) => {
                s.ties += 1;
                if x != y {
                    s.inconsistent += 1;
                }
            }
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fastchat_formats() {
        assert_eq!(parse_rating("Good answer. Rating: [[7]]"), Some(7.0));
        assert_eq!(parse_rating("Rating: [8.5]"), Some(8.5));
        assert_eq!(parse_rating("no rating"), None);
        assert_eq!(parse_rating("[[11]]"), None);
        assert_eq!(parse_pair("A is better. [[A]]"), Some('A'));
        assert_eq!(
            parse_pair("[[A]] at first, but final verdict: [[C]]"),
            Some('C')
        );
        assert_eq!(parse_pair("unclear"), None);
    }

    #[test]
    fn judge_must_be_independent() {
        let cands = vec![
            vec![
                "TinyLlama/TinyLlama-1.1B-Chat-v1.0".to_string(),
                "llama".into(),
            ],
            vec!["Qwen/Qwen2.5-1.5B-Instruct".to_string(), "qwen2".into()],
        ];
        assert!(check_independent(&["Qwen/Qwen2.5-7B-Instruct".into()], &cands).is_err());
        assert!(check_independent(&["meta-llama/Llama-3.1-8B-Instruct".into()], &cands).is_err());
        assert!(check_independent(&["TinyLlama/TinyLlama-1.1B-Chat-v1.0".into()], &cands).is_err());
        assert!(check_independent(&["mistralai/Mistral-7B-Instruct-v0.3".into()], &cands).is_ok());
    }

    #[test]
    fn templates_fill() {
        assert_eq!(
            fill(
                "Q {question} A {answer}",
                &[("question", "q"), ("answer", "a")]
            ),
            "Q q A a"
        );
    }
}
