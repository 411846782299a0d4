//! The suite: which items a profile runs (the [`Plan`]) and how one model is put through them
//! ([`run_model`]). Every item leaves an audit record.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use bakeoff_engine::template::Message;
use serde_json::json;

use crate::audit::Audit;
use crate::candidate::{Candidate, ChatRequest, GenOut};
use crate::data::{
    self, DataDir, FileRecord, Gsm8kItem, HumanEvalItem, IfevalItem, MbppItem, McItem, MtBenchItem,
};
use crate::hygiene;
use crate::sandbox::Sandbox;
use crate::score::{Component, Metric};
use crate::select::{self, Candidates, IdLists, Profile, Sizes};
use crate::{Error, Result, code, gsm8k, ifeval};

/// Every component key, in run order.
pub const COMPONENTS: [&str; 12] = [
    "mmlu",
    "arc_challenge",
    "hellaswag",
    "truthfulqa_mc",
    "wikitext",
    "gsm8k",
    "ifeval",
    "creativity_proxy",
    "mt_bench",
    "humaneval",
    "mbpp",
    "hygiene",
];

pub struct Plan {
    pub profile: Profile,
    pub sizes: Sizes,
    pub ids: IdLists,
    /// Whether the frozen lists equal what the rule derives from this data.
    pub ids_match_rule: bool,
    /// What the rule derives from this data (equal to `ids` when they match).
    pub derived_ids: IdLists,
    pub mmlu: Vec<McItem>,
    pub arc_challenge: Vec<McItem>,
    pub hellaswag: Vec<McItem>,
    pub truthfulqa: Vec<McItem>,
    pub gsm8k: Vec<Gsm8kItem>,
    pub ifeval: Vec<IfevalItem>,
    pub ifeval_creative: Vec<IfevalItem>,
    pub humaneval: Vec<HumanEvalItem>,
    pub mbpp: Vec<MbppItem>,
    pub mt_bench: Vec<MtBenchItem>,
    pub wikitext: String,
    pub files: Vec<FileRecord>,
    /// Components to run (all when empty).
    pub only: Vec<String>,
}

fn take<T: Clone>(
    items: &[T],
    ids: &[String],
    id_of: impl Fn(&T) -> String,
    what: &str,
) -> Result<Vec<T>> {
    let by_id: BTreeMap<String, &T> = items.iter().map(|i| (id_of(i), i)).collect();
    ids.iter()
        .map(|id| {
            by_id.get(id).map(|i| (*i).clone()).ok_or_else(|| {
                Error::MissingData(format!(
                    "{what}: frozen id `{id}` is not in the data (different data version?)"
                ))
            })
        })
        .collect()
}

impl Plan {
    /// Reads the data sets and resolves the profile's frozen id lists.
    pub fn load(data_dir: &Path, profile: Profile) -> Result<Self> {
        let mut d = DataDir::open(data_dir)?;
        let mmlu = data::load_mmlu(&mut d)?;
        let arc = data::load_arc(&mut d, "Challenge")?;
        let hellaswag = data::load_hellaswag(&mut d)?;
        let truthfulqa = data::load_truthfulqa(&mut d)?;
        let gsm8k = data::load_gsm8k(&mut d)?;
        let ifeval = data::load_ifeval(&mut d)?;
        let humaneval = data::load_humaneval(&mut d)?;
        let mbpp = data::load_mbpp(&mut d)?;
        let mt_bench = data::load_mt_bench(&mut d)?;
        let wikitext = data::load_wikitext(&mut d)?;
        let derived = select::derive(
            profile,
            &Candidates {
                mmlu: &mmlu,
                arc_challenge: &arc,
                hellaswag: &hellaswag,
                truthfulqa: &truthfulqa,
                gsm8k_ids: gsm8k.iter().map(|g| g.id.clone()).collect(),
                ifeval: &ifeval,
                humaneval_ids: humaneval.iter().map(|h| h.task_id.clone()).collect(),
                mbpp_ids: mbpp.iter().map(|m| m.id()).collect(),
                mt_bench: &mt_bench,
            },
        );
        let (ids, ids_match_rule) = match select::frozen(profile)? {
            Some(f) => {
                let same = f == derived;
                (f, same)
            }
            None => (derived.clone(), true),
        };
        let list = |k: &str| ids.get(k).cloned().unwrap_or_default();
        Ok(Plan {
            profile,
            sizes: profile.sizes(),
            mmlu: take(&mmlu, &list("mmlu"), |i| i.id.clone(), "mmlu")?,
            arc_challenge: take(&arc, &list("arc_challenge"), |i| i.id.clone(), "arc")?,
            hellaswag: take(
                &hellaswag,
                &list("hellaswag"),
                |i| i.id.clone(),
                "hellaswag",
            )?,
            truthfulqa: take(
                &truthfulqa,
                &list("truthfulqa_mc"),
                |i| i.id.clone(),
                "truthfulqa",
            )?,
            gsm8k: take(&gsm8k, &list("gsm8k"), |i| i.id.clone(), "gsm8k")?,
            ifeval: take(&ifeval, &list("ifeval"), |i| i.id(), "ifeval")?,
            ifeval_creative: take(&ifeval, &list("ifeval_creative"), |i| i.id(), "ifeval")?,
            humaneval: take(
                &humaneval,
                &list("humaneval"),
                |i| i.task_id.clone(),
                "humaneval",
            )?,
            mbpp: take(&mbpp, &list("mbpp"), |i| i.id(), "mbpp")?,
            mt_bench: take(&mt_bench, &list("mt_bench"), |i| i.id(), "mt_bench")?,
            wikitext,
            files: d.files,
            ids,
            ids_match_rule,
            derived_ids: derived,
            only: Vec::new(),
        })
    }

    fn wants(&self, c: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == c)
    }

    /// Item counts per component.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        m.insert("mmlu".into(), self.mmlu.len());
        m.insert("arc_challenge".into(), self.arc_challenge.len());
        m.insert("hellaswag".into(), self.hellaswag.len());
        m.insert("truthfulqa_mc".into(), self.truthfulqa.len());
        m.insert("gsm8k".into(), self.gsm8k.len());
        m.insert("ifeval".into(), self.ifeval.len());
        m.insert("creativity_proxy".into(), self.ifeval_creative.len());
        m.insert("mt_bench".into(), self.mt_bench.len());
        m.insert("humaneval".into(), self.humaneval.len());
        m.insert("mbpp".into(), self.mbpp.len());
        m.insert(
            "wikitext".into(),
            self.sizes.wikitext_chunks.unwrap_or(usize::MAX),
        );
        m
    }
}

// ---------------------------------------------------------------- prompts

/// MMLU in lm-evaluation-harness's zero-shot letter format.
pub fn mmlu_context(it: &McItem) -> String {
    let mut s = format!(
        "The following are multiple choice questions (with answers) about {}.\n\n{}\n",
        it.group.replace('_', " "),
        it.question.trim()
    );
    for (l, c) in it.labels.iter().zip(&it.choices) {
        s.push_str(&format!("{l}. {}\n", c.trim()));
    }
    s.push_str("Answer:");
    s
}

/// ARC in letter format (its own labels: A-E or 1-4).
pub fn arc_context(it: &McItem) -> String {
    let mut s = format!("Question: {}\n", it.question.trim());
    for (l, c) in it.labels.iter().zip(&it.choices) {
        s.push_str(&format!("{l}. {}\n", c.trim()));
    }
    s.push_str("Answer:");
    s
}

pub fn truthfulqa_context(it: &McItem) -> String {
    format!("Q: {}\nA:", it.question)
}

// ---------------------------------------------------------------- running

/// One generated output: component, item id, the user prompt, and the generation.
pub type Generated = (String, String, String, GenOut);

/// What the run of one model produced.
pub struct ModelRun {
    pub components: Vec<Component>,
    /// Every generated output (for hygiene and for a judge).
    pub generations: Vec<Generated>,
}

/// How multiple-choice continuations are scored.
#[derive(Clone, Copy, PartialEq)]
enum McFormat {
    Letter,
    Cloze,
}

struct Run<'a> {
    cand: &'a mut dyn Candidate,
    audit: &'a mut Audit,
    progress: &'a mut dyn FnMut(&str),
    sandbox: Option<&'a Sandbox>,
    sizes: Sizes,
    model: String,
    gens: Vec<Generated>,
}

fn request(user: &str, prefix: &str, max_tokens: usize, stop: Vec<String>) -> ChatRequest {
    ChatRequest {
        messages: vec![Message::user(user.to_string())],
        assistant_prefix: prefix.to_string(),
        max_tokens,
        stop,
    }
}

fn bit(b: bool) -> f64 {
    f64::from(u8::from(b))
}

/// The token ids, cap and stop strings go with the output so a generation can be redone and
/// compared token by token elsewhere (scripts/eval_parity_llama_cpp.py, with llama.cpp).
fn gen_record(component: &str, id: &str, req: &ChatRequest, g: &GenOut) -> serde_json::Value {
    json!({
        "component": component, "id": id, "prompt": g.prompt, "output": g.text,
        "tokens": g.tokens, "output_ids": g.ids, "finish": g.finish, "seconds": g.seconds,
        "max_tokens": req.max_tokens, "stop": req.stop,
    })
}

impl Run<'_> {
    fn record(&mut self, mut v: serde_json::Value) -> Result<()> {
        if let Some(o) = v.as_object_mut() {
            o.insert("model".into(), json!(self.model));
        }
        self.audit.record(v)
    }

    /// A generation; an engine error (e.g. a prompt longer than the context) becomes an empty
    /// output with finish reason `error: …`, so the item fails and the run goes on.
    fn chat(
        &mut self,
        messages: &[Message],
        prefix: &str,
        max_tokens: usize,
        stop: &[String],
    ) -> GenOut {
        match self.cand.chat(messages, prefix, max_tokens, stop) {
            Ok(g) => g,
            Err(e) => GenOut {
                prompt: messages
                    .iter()
                    .map(|m| m.content.as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
                text: String::new(),
                tokens: 0,
                ids: Vec::new(),
                finish: format!("error: {e}"),
                seconds: 0.0,
            },
        }
    }

    /// Every request of a component, `sizes.gen_batch` at a time through the model's batched
    /// generation. A batch that fails is retried item by item, so one bad item (a prompt longer
    /// than the context) fails alone and the others keep their outputs.
    fn chat_all(&mut self, comp: &str, reqs: &[ChatRequest]) -> Vec<GenOut> {
        let mut outs = Vec::with_capacity(reqs.len());
        for chunk in reqs.chunks(self.sizes.gen_batch.max(1)) {
            match self.cand.chat_batch(chunk) {
                Ok(g) if g.len() == chunk.len() => outs.extend(g),
                _ => {
                    for r in chunk {
                        outs.push(self.chat(
                            &r.messages,
                            &r.assistant_prefix,
                            r.max_tokens,
                            &r.stop,
                        ));
                    }
                }
            }
            let done = outs.len();
            if done == reqs.len() || chunk.len() >= 10 || (done / 10) > ((done - chunk.len()) / 10)
            {
                (self.progress)(&format!(
                    "{}: {comp} {done}/{} generated",
                    self.model,
                    reqs.len()
                ));
            }
        }
        outs
    }

    fn tick(&mut self, comp: &str, i: usize, n: usize) {
        if n > 0 && (i + 1 == n || (i + 1).is_multiple_of(10)) {
            (self.progress)(&format!("{}: {comp} {}/{n}", self.model, i + 1));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn mc(
        &mut self,
        name: &str,
        dataset: &str,
        items: &[McItem],
        format: McFormat,
        context: &dyn Fn(&McItem) -> String,
        headline_norm: bool,
    ) -> Result<Component> {
        let t = Instant::now();
        let (mut acc, mut acc_norm, mut chance) = (Vec::new(), Vec::new(), 0.0);
        let mut per_item = BTreeMap::new();
        for (i, it) in items.iter().enumerate() {
            let ctx = context(it);
            let conts: Vec<String> = match format {
                McFormat::Letter => it.labels.iter().map(|l| format!(" {l}")).collect(),
                McFormat::Cloze => it
                    .choices
                    .iter()
                    .map(|c| format!(" {}", c.trim()))
                    .collect(),
            };
            let lls = self.cand.loglikelihoods(&ctx, &conts);
            let (pred, pred_norm, detail) = match &lls {
                Ok(lls) => {
                    let argmax = |f: &dyn Fn(usize) -> f64| {
                        (0..lls.len()).fold(0, |b, j| if f(j) > f(b) { j } else { b })
                    };
                    let p = argmax(&|j| lls[j].logprob);
                    let pn = argmax(&|j| lls[j].logprob / conts[j].chars().count().max(1) as f64);
                    (Some(p), Some(pn), json!(lls))
                }
                Err(e) => (None, None, json!({"error": e.to_string()})),
            };
            let a = bit(pred == Some(it.gold));
            let an = bit(pred_norm == Some(it.gold));
            acc.push(a);
            acc_norm.push(an);
            chance += 1.0 / it.choices.len().max(1) as f64;
            let head = if headline_norm { an } else { a };
            per_item.insert(it.id.clone(), head);
            self.record(json!({
                "component": name, "id": it.id, "prompt": ctx, "continuations": conts,
                "output": detail,
                "extracted": {"acc": pred.map(|p| it.labels[p].clone()), "acc_norm": pred_norm.map(|p| it.labels[p].clone())},
                "gold": it.labels[it.gold], "verdict": head == 1.0,
            }))?;
            self.tick(name, i, items.len());
        }
        let chance = if items.is_empty() {
            0.0
        } else {
            chance / items.len() as f64
        };
        let method = match format {
            McFormat::Letter => {
                "log-likelihood multiple choice, letter format (score \" A\", \" B\", … after \"Answer:\"), 0-shot, no chat template"
            }
            McFormat::Cloze => {
                "log-likelihood multiple choice, cloze format (score each answer text), 0-shot, no chat template; acc_norm divides the log-likelihood by the answer's length in characters"
            }
        };
        let mut c = if headline_norm {
            let mut c = Component::new(
                name,
                dataset,
                method,
                "acc_norm",
                Metric::from_binary(&acc_norm),
                chance,
            );
            c.other.insert("acc".into(), Metric::from_binary(&acc));
            c
        } else {
            Component::new(
                name,
                dataset,
                method,
                "acc",
                Metric::from_binary(&acc),
                chance,
            )
        };
        c.per_item = per_item;
        c.seconds = t.elapsed().as_secs_f64();
        Ok(c)
    }

    fn wikitext(&mut self, text: &str) -> Result<Component> {
        let t = Instant::now();
        let chunks = self.sizes.wikitext_chunks.unwrap_or(usize::MAX);
        let r = self
            .cand
            .rolling_nll(text, self.sizes.wikitext_context, chunks);
        let mut c = Component::new(
            "wikitext",
            "WikiText-2 raw test",
            "llama-perplexity style: chunks of 512 tokens (BOS first where the model uses one), each scoring its second half; bits per byte = NLL / (ln 2 × UTF-8 bytes of the scored text)",
            "bits_per_byte",
            Metric::from_counts(0.0, 0),
            0.0,
        );
        c.scored = false;
        c.note = Some("diagnostic, not scored: per-token perplexity is not comparable across tokenizers; bits per byte is".into());
        match &r {
            Ok(o) => {
                let bpb = o.nll_nats / (std::f64::consts::LN_2 * o.bytes.max(1) as f64);
                c.numbers.insert(
                    "perplexity".into(),
                    (o.nll_nats / o.tokens.max(1) as f64).exp(),
                );
                c.numbers.insert("bits_per_byte".into(), bpb);
                c.numbers.insert("scored_tokens".into(), o.tokens as f64);
                c.numbers.insert("scored_bytes".into(), o.bytes as f64);
                c.numbers.insert("chunks".into(), o.chunks as f64);
                c.headline = Metric {
                    value: bpb,
                    k: 0.0,
                    n: o.chunks,
                    ci95: (f64::NAN, f64::NAN),
                };
            }
            Err(e) => c.note = Some(format!("failed: {e}")),
        }
        c.score10 = f64::NAN;
        c.score10_ci = (f64::NAN, f64::NAN);
        c.seconds = t.elapsed().as_secs_f64();
        let (ok, err) = (
            r.as_ref().ok().cloned(),
            r.as_ref().err().map(|e| e.to_string()),
        );
        self.record(
            json!({"component": "wikitext", "id": "wikitext-2:test", "output": ok, "error": err}),
        )?;
        (self.progress)(&format!("{}: wikitext done", self.model));
        Ok(c)
    }

    fn gsm8k(&mut self, items: &[Gsm8kItem]) -> Result<Component> {
        let t = Instant::now();
        let (mut strict, mut flex, mut per_item) = (Vec::new(), Vec::new(), BTreeMap::new());
        let users: Vec<String> = items
            .iter()
            .map(|it| format!("{}\n\n{}", it.question, gsm8k::INSTRUCTION))
            .collect();
        let reqs: Vec<ChatRequest> = users
            .iter()
            .map(|u| request(u, "", self.sizes.gsm8k_max_tokens, Vec::new()))
            .collect();
        let outs = self.chat_all("gsm8k", &reqs);
        for (((it, user), req), g) in items.iter().zip(users).zip(&reqs).zip(outs) {
            let es = gsm8k::extract_strict(&g.text);
            let ef = gsm8k::extract_flexible(&g.text);
            let (vs, vf) = (
                es.as_deref() == Some(it.answer.as_str()),
                ef.as_deref() == Some(it.answer.as_str()),
            );
            strict.push(bit(vs));
            flex.push(bit(vf));
            per_item.insert(it.id.clone(), bit(vf));
            let mut r = gen_record("gsm8k", &it.id, req, &g);
            r["extracted"] = json!({"strict": es, "flexible": ef});
            r["gold"] = json!(it.answer);
            r["verdict"] = json!({"strict": vs, "flexible": vf});
            self.record(r)?;
            self.gens.push(("gsm8k".into(), it.id.clone(), user, g));
        }
        let mut c = Component::new(
            "gsm8k",
            "GSM8K test",
            "0-shot chat, chain of thought, greedy; exact match of the normalised number (flexible = last number in the text, the headline; strict = the number after ####)",
            "exact_match_flexible",
            Metric::from_binary(&flex),
            0.0,
        );
        c.other
            .insert("exact_match_strict".into(), Metric::from_binary(&strict));
        c.per_item = per_item;
        c.seconds = t.elapsed().as_secs_f64();
        Ok(c)
    }

    fn ifeval(&mut self, name: &str, items: &[IfevalItem]) -> Result<Component> {
        let t = Instant::now();
        let (mut ps, mut pl, mut per_item) = (Vec::new(), Vec::new(), BTreeMap::new());
        let (mut is_k, mut il_k, mut i_n) = (0.0, 0.0, 0usize);
        let reqs: Vec<ChatRequest> = items
            .iter()
            .map(|it| request(&it.prompt, "", self.sizes.ifeval_max_tokens, Vec::new()))
            .collect();
        let outs = self.chat_all(name, &reqs);
        for ((it, req), g) in items.iter().zip(&reqs).zip(outs) {
            let r = ifeval::evaluate(it, &g.text);
            ps.push(bit(r.prompt_strict));
            pl.push(bit(r.prompt_loose));
            is_k += r.instructions.iter().filter(|x| x.strict).count() as f64;
            il_k += r.instructions.iter().filter(|x| x.loose).count() as f64;
            i_n += r.instructions.len();
            per_item.insert(it.id(), bit(r.prompt_strict));
            let mut a = gen_record(name, &it.id(), req, &g);
            a["instructions"] = json!(it.instruction_id_list);
            a["kwargs"] = json!(it.kwargs);
            a["verdict"] = json!(r);
            self.record(a)?;
            self.gens
                .push((name.to_string(), it.id(), it.prompt.clone(), g));
        }
        let mut c = Component::new(
            name,
            "IFEval (google-research input_data.jsonl)",
            "0-shot chat, greedy; IFEval's 25 instruction checkers re-implemented in Rust; prompt-level strict is the headline",
            "prompt_level_strict",
            Metric::from_binary(&ps),
            0.0,
        );
        c.other
            .insert("prompt_level_loose".into(), Metric::from_binary(&pl));
        c.other.insert(
            "instruction_level_strict".into(),
            Metric::from_counts(is_k, i_n),
        );
        c.other.insert(
            "instruction_level_loose".into(),
            Metric::from_counts(il_k, i_n),
        );
        c.per_item = per_item;
        c.seconds = t.elapsed().as_secs_f64();
        Ok(c)
    }

    fn mt_bench_first_turns(&mut self, items: &[MtBenchItem]) -> Result<()> {
        let firsts: Vec<(&MtBenchItem, &String)> = items
            .iter()
            .filter_map(|q| q.turns.first().map(|t| (q, t)))
            .collect();
        let reqs: Vec<ChatRequest> = firsts
            .iter()
            .map(|(_, t)| request(t, "", self.sizes.mt_bench_max_tokens, Vec::new()))
            .collect();
        let outs = self.chat_all("mt_bench", &reqs);
        for (((q, turn), req), g) in firsts.into_iter().zip(&reqs).zip(outs) {
            let mut r = gen_record("mt_bench", &q.id(), req, &g);
            r["category"] = json!(q.category);
            self.record(r)?;
            self.gens.push(("mt_bench".into(), q.id(), turn.clone(), g));
        }
        Ok(())
    }

    fn code(&mut self, plan: &Plan, name: &str) -> Result<Option<Component>> {
        let t = Instant::now();
        let Some(sb) = self.sandbox else {
            (self.progress)(&format!(
                "{}: {name} skipped (no python3 sandbox)",
                self.model
            ));
            return Ok(None);
        };
        let n = if name == "humaneval" {
            plan.humaneval.len()
        } else {
            plan.mbpp.len()
        };
        let (mut passed, mut per_item) = (Vec::new(), BTreeMap::new());
        let mut meta = Vec::with_capacity(n);
        let mut reqs = Vec::with_capacity(n);
        for i in 0..n {
            let (id, user, prefix, stops) = if name == "humaneval" {
                let it = &plan.humaneval[i];
                (
                    it.task_id.clone(),
                    code::humaneval_user(it),
                    code::humaneval_prefix(it),
                    code::STOPS.to_vec(),
                )
            } else {
                let it = &plan.mbpp[i];
                (
                    it.id(),
                    code::mbpp_user(it),
                    code::MBPP_PREFIX.to_string(),
                    code::MBPP_STOPS.to_vec(),
                )
            };
            let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
            reqs.push(request(&user, &prefix, self.sizes.code_max_tokens, stops));
            meta.push((id, user));
        }
        let outs = self.chat_all(name, &reqs);
        for (i, (((id, user), req), g)) in meta.into_iter().zip(&reqs).zip(outs).enumerate() {
            let prog = if name == "humaneval" {
                code::humaneval_program(&plan.humaneval[i], &g.text)
            } else {
                code::mbpp_program(&plan.mbpp[i], &g.text)
            };
            let outcome = sb.run_python(&prog);
            let ok = matches!(&outcome, Ok(o) if o.passed);
            passed.push(bit(ok));
            per_item.insert(id.clone(), bit(ok));
            let mut r = gen_record(name, &id, req, &g);
            r["extracted"] = json!(prog);
            r["verdict"] = match &outcome {
                Ok(o) => json!({"passed": o.passed, "reason": o.reason(), "run": o}),
                Err(e) => json!({"passed": false, "reason": e.to_string()}),
            };
            self.record(r)?;
            self.gens.push((name.to_string(), id, user, g));
            self.tick(name, i, n);
        }
        let mut c = Component::new(
            name,
            if name == "humaneval" {
                "HumanEval (openai/human-eval)"
            } else {
                "MBPP test (task ids 11-510)"
            },
            "0-shot chat, the assistant turn pre-filled with the start of a python code block; greedy pass@1; program + tests run by python3 in the sandbox",
            "pass@1",
            Metric::from_binary(&passed),
            0.0,
        );
        c.per_item = per_item;
        c.seconds = t.elapsed().as_secs_f64();
        Ok(Some(c))
    }

    fn hygiene(&mut self) -> Result<Component> {
        let mut vals = Vec::new();
        let mut per_item = BTreeMap::new();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        let mut records = Vec::new();
        for (comp, id, prompt, g) in &self.gens {
            let h = hygiene::check(prompt, &g.text, g.stopped());
            let ok = h.pass();
            vals.push(bit(ok));
            per_item.insert(format!("{comp}/{id}"), bit(ok));
            for (k, failed) in [
                ("empty", !h.non_empty),
                ("hit_token_cap", !h.stopped),
                ("repetition", !h.no_repetition),
                ("template_leak", !h.no_template_leak),
                ("script_switch", !h.same_script),
            ] {
                if failed {
                    *counts.entry(k).or_default() += 1;
                }
            }
            records.push(json!({"component": "hygiene", "id": format!("{comp}/{id}"), "verdict": h, "pass": ok}));
        }
        for r in records {
            self.record(r)?;
        }
        let mut c = Component::new(
            "hygiene",
            "every generated output of this run",
            "deterministic checks per output: non-empty, stopped before the token cap, no degenerate repetition (an n-gram 4× in a row, or zlib ratio < 0.25 over 200 chars), no chat-template markers, same script as the prompt",
            "pass_rate",
            Metric::from_binary(&vals),
            0.0,
        );
        for (k, v) in counts {
            c.numbers.insert(format!("failed_{k}"), v as f64);
        }
        c.per_item = per_item;
        Ok(c)
    }
}

/// Runs `cand` through the plan. Sandbox failures are per item (counted as failures); a missing
/// sandbox (no python3) skips the code components with a note in the progress output.
pub fn run_model(
    cand: &mut dyn Candidate,
    plan: &Plan,
    sandbox: Option<&Sandbox>,
    audit: &mut Audit,
    progress: &mut dyn FnMut(&str),
) -> Result<ModelRun> {
    let model = cand.label().to_string();
    let mut r = Run {
        cand,
        audit,
        progress,
        sandbox,
        sizes: plan.sizes.clone(),
        model,
        gens: Vec::new(),
    };
    let mut comps = Vec::new();
    if plan.wants("mmlu") && !plan.mmlu.is_empty() {
        comps.push(r.mc(
            "mmlu",
            "MMLU test (57 subjects)",
            &plan.mmlu,
            McFormat::Letter,
            &mmlu_context,
            false,
        )?);
    }
    if plan.wants("arc_challenge") && !plan.arc_challenge.is_empty() {
        comps.push(r.mc(
            "arc_challenge",
            "ARC-Challenge test",
            &plan.arc_challenge,
            McFormat::Letter,
            &arc_context,
            false,
        )?);
    }
    if plan.wants("hellaswag") && !plan.hellaswag.is_empty() {
        let ctx = |i: &McItem| i.question.clone();
        comps.push(r.mc(
            "hellaswag",
            "HellaSwag validation (llama.cpp text format)",
            &plan.hellaswag,
            McFormat::Cloze,
            &ctx,
            true,
        )?);
    }
    if plan.wants("truthfulqa_mc") && !plan.truthfulqa.is_empty() {
        let ds = "TruthfulQA: Best Answer vs up to 3 Incorrect Answers";
        comps.push(r.mc(
            "truthfulqa_mc",
            ds,
            &plan.truthfulqa,
            McFormat::Cloze,
            &truthfulqa_context,
            true,
        )?);
    }
    if plan.wants("wikitext") && plan.sizes.wikitext_chunks != Some(0) {
        comps.push(r.wikitext(&plan.wikitext)?);
    }
    if plan.wants("gsm8k") && !plan.gsm8k.is_empty() {
        comps.push(r.gsm8k(&plan.gsm8k)?);
    }
    if plan.wants("ifeval") && !plan.ifeval.is_empty() {
        comps.push(r.ifeval("ifeval", &plan.ifeval)?);
    }
    let creative = if plan.wants("creativity_proxy") && !plan.ifeval_creative.is_empty() {
        Some(r.ifeval("creativity_proxy", &plan.ifeval_creative)?)
    } else {
        None
    };
    if plan.wants("mt_bench") && !plan.mt_bench.is_empty() {
        r.mt_bench_first_turns(&plan.mt_bench)?;
    }
    if let Some(mut c) = creative {
        let texts: Vec<&str> = r
            .gens
            .iter()
            .filter(|(k, ..)| k == "creativity_proxy" || k == "mt_bench")
            .map(|(_, _, _, g)| g.text.as_str())
            .collect();
        c.dataset = "IFEval creative prompts (poem/story/song/riddle/…) + MT-Bench writing/roleplay first turns".into();
        c.method = "NO JUDGE, low-confidence proxy: prompt-level strict pass rate of the creative IFEval prompts; distinct-2 and mean length (words) over all creative outputs are shown, never scored".into();
        c.numbers.insert(
            "distinct_2".into(),
            hygiene::distinct_2(texts.iter().copied()),
        );
        let words: usize = texts.iter().map(|t| t.split_whitespace().count()).sum();
        c.numbers.insert(
            "mean_length_words".into(),
            if texts.is_empty() {
                0.0
            } else {
                words as f64 / texts.len() as f64
            },
        );
        c.note = Some("low confidence: a proxy for creativity, not a judgment of it".into());
        comps.push(c);
    }
    for name in ["humaneval", "mbpp"] {
        let n = if name == "humaneval" {
            plan.humaneval.len()
        } else {
            plan.mbpp.len()
        };
        if plan.wants(name)
            && n > 0
            && let Some(c) = r.code(plan, name)?
        {
            comps.push(c);
        }
    }
    if plan.wants("hygiene") && !r.gens.is_empty() {
        comps.push(r.hygiene()?);
    }
    r.audit.flush()?;
    Ok(ModelRun {
        components: comps,
        generations: r.gens,
    })
}
