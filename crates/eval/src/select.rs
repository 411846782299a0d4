//! Profiles and the frozen item-selection rule.
//!
//! Rule (`quality-suite-v1`): sort the candidate ids of a data set by
//! `sha256("quality-suite-v1:" + id)` (hex, ascending) and take the first N; for MMLU, the first
//! N of each subject. The ids each profile picks are frozen in `profiles/<profile>.json`, checked
//! in, so every model (and every later run) sees the same items; a test re-derives them from the
//! data and fails if the rule and the lists disagree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use bakeoff_record::eval::{DEFAULT_GEN_BATCH, Sizes};
use bakeoff_record::hash::sha256_hex;

use crate::data::{IfevalItem, McItem, MtBenchItem};
use crate::{Error, Result};

pub const RULE_SALT: &str = "quality-suite-v1:";

pub fn rule_key(id: &str) -> String {
    sha256_hex(format!("{RULE_SALT}{id}").as_bytes())
}

/// The first `n` ids by the hash rule (all, sorted by the rule, when `n` is `None`).
pub fn pick(ids: impl IntoIterator<Item = String>, n: Option<usize>) -> Vec<String> {
    let mut v: Vec<(String, String)> = ids.into_iter().map(|id| (rule_key(&id), id)).collect();
    v.sort();
    v.into_iter()
        .take(n.unwrap_or(usize::MAX))
        .map(|(_, id)| id)
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Quick,
    Standard,
    Full,
}

impl std::str::FromStr for Profile {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "quick" => Ok(Profile::Quick),
            "standard" => Ok(Profile::Standard),
            "full" => Ok(Profile::Full),
            o => Err(Error::InvalidArgument(format!(
                "unknown profile `{o}` (quick, standard, full)"
            ))),
        }
    }
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Quick => "quick",
            Profile::Standard => "standard",
            Profile::Full => "full",
        }
    }
}

impl Profile {
    pub fn sizes(self) -> Sizes {
        match self {
            Profile::Quick => Sizes {
                mmlu_per_subject: Some(1),
                arc_challenge: Some(30),
                hellaswag: Some(30),
                truthfulqa: Some(40),
                gsm8k: Some(5),
                ifeval: Some(8),
                ifeval_creative: Some(3),
                humaneval: Some(6),
                mbpp: Some(0),
                mt_bench: Some(3),
                wikitext_chunks: Some(2),
                wikitext_context: 512,
                gsm8k_max_tokens: 256,
                ifeval_max_tokens: 256,
                code_max_tokens: 256,
                mt_bench_max_tokens: 200,
                gen_batch: DEFAULT_GEN_BATCH,
            },
            Profile::Standard => Sizes {
                mmlu_per_subject: Some(10),
                arc_challenge: Some(300),
                hellaswag: Some(300),
                truthfulqa: Some(200),
                gsm8k: Some(50),
                ifeval: Some(60),
                ifeval_creative: Some(10),
                humaneval: Some(40),
                mbpp: Some(40),
                mt_bench: Some(10),
                wikitext_chunks: Some(20),
                wikitext_context: 512,
                gsm8k_max_tokens: 384,
                ifeval_max_tokens: 512,
                code_max_tokens: 384,
                mt_bench_max_tokens: 384,
                gen_batch: DEFAULT_GEN_BATCH,
            },
            Profile::Full => Sizes {
                mmlu_per_subject: None,
                arc_challenge: None,
                hellaswag: None,
                truthfulqa: None,
                gsm8k: None,
                ifeval: None,
                ifeval_creative: None,
                humaneval: None,
                mbpp: None,
                mt_bench: None,
                wikitext_chunks: None,
                wikitext_context: 512,
                gsm8k_max_tokens: 512,
                ifeval_max_tokens: 1024,
                code_max_tokens: 512,
                mt_bench_max_tokens: 1024,
                gen_batch: DEFAULT_GEN_BATCH,
            },
        }
    }
}

/// IFEval items fit for short generations: no `repeat_prompt` or `response_language`, no
/// minimum above 120 words, prompts of at most 600 characters (no long pasted passages).
pub fn ifeval_short(item: &IfevalItem) -> bool {
    if item.prompt.chars().count() > 600 {
        return false;
    }
    item.instruction_id_list.iter().enumerate().all(|(i, id)| {
        if id == "combination:repeat_prompt" || id == "language:response_language" {
            return false;
        }
        if id == "length_constraints:number_words" {
            let kw = item.kwargs.get(i);
            let rel = kw.and_then(|k| k.get("relation")).and_then(|v| v.as_str());
            let n = kw
                .and_then(|k| k.get("num_words"))
                .and_then(|v| v.as_u64())
                .unwrap_or(0);
            if rel == Some("at least") && n > 120 {
                return false;
            }
        }
        true
    })
}

/// The frozen id lists of a profile, one list per component.
pub type IdLists = BTreeMap<String, Vec<String>>;

/// Everything the rule needs, to derive the lists.
pub struct Candidates<'a> {
    pub mmlu: &'a [McItem],
    pub arc_challenge: &'a [McItem],
    pub hellaswag: &'a [McItem],
    pub truthfulqa: &'a [McItem],
    pub gsm8k_ids: Vec<String>,
    pub ifeval: &'a [IfevalItem],
    pub humaneval_ids: Vec<String>,
    pub mbpp_ids: Vec<String>,
    pub mt_bench: &'a [MtBenchItem],
}

/// Applies the rule. The full profile takes everything (IFEval: all 541, no short filter).
pub fn derive(profile: Profile, c: &Candidates<'_>) -> IdLists {
    let s = profile.sizes();
    let full = profile == Profile::Full;
    let mut out = IdLists::new();
    let mut subjects: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for it in c.mmlu {
        subjects.entry(&it.group).or_default().push(it.id.clone());
    }
    let mut mmlu = Vec::new();
    for ids in subjects.into_values() {
        mmlu.extend(pick(ids, s.mmlu_per_subject));
    }
    out.insert("mmlu".into(), mmlu);
    let ids = |v: &[McItem]| v.iter().map(|i| i.id.clone()).collect::<Vec<_>>();
    out.insert(
        "arc_challenge".into(),
        pick(ids(c.arc_challenge), s.arc_challenge),
    );
    out.insert("hellaswag".into(), pick(ids(c.hellaswag), s.hellaswag));
    out.insert(
        "truthfulqa_mc".into(),
        pick(ids(c.truthfulqa), s.truthfulqa),
    );
    out.insert("gsm8k".into(), pick(c.gsm8k_ids.clone(), s.gsm8k));
    let ifeval_pool: Vec<&IfevalItem> = c
        .ifeval
        .iter()
        .filter(|i| full || ifeval_short(i))
        .collect();
    let general = pick(ifeval_pool.iter().map(|i| i.id()), s.ifeval);
    out.insert("ifeval".into(), general.clone());
    let creative_pool = ifeval_pool
        .iter()
        .filter(|i| crate::ifeval::is_creative(&i.prompt))
        .map(|i| i.id())
        .filter(|id| full || !general.contains(id));
    out.insert(
        "ifeval_creative".into(),
        pick(creative_pool, s.ifeval_creative),
    );
    out.insert(
        "humaneval".into(),
        pick(c.humaneval_ids.clone(), s.humaneval),
    );
    out.insert("mbpp".into(), pick(c.mbpp_ids.clone(), s.mbpp));
    let mt = c
        .mt_bench
        .iter()
        .filter(|q| full || q.category == "writing" || q.category == "roleplay")
        .map(|q| q.id());
    out.insert("mt_bench".into(), pick(mt, s.mt_bench));
    out
}

/// The checked-in lists (quick and standard; full is "everything" and not frozen).
pub fn frozen(profile: Profile) -> Result<Option<IdLists>> {
    let text = match profile {
        Profile::Quick => include_str!("../profiles/quick.json"),
        Profile::Standard => include_str!("../profiles/standard.json"),
        Profile::Full => return Ok(None),
    };
    if text.trim().is_empty() || text.trim() == "{}" {
        return Ok(None);
    }
    Ok(Some(serde_json::from_str(text)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_is_stable() {
        // Documented in eval-methods.md: HumanEval's quick set starts with /139, /27, /90.
        let ids: Vec<String> = (0..164).map(|i| format!("HumanEval/{i}")).collect();
        assert_eq!(
            pick(ids, Some(3)),
            vec!["HumanEval/139", "HumanEval/27", "HumanEval/90"]
        );
        let g: Vec<String> = (0..1319).map(|i| format!("gsm8k:{i}")).collect();
        assert_eq!(
            pick(g, Some(5)),
            vec![
                "gsm8k:41",
                "gsm8k:1292",
                "gsm8k:122",
                "gsm8k:898",
                "gsm8k:382"
            ]
        );
    }

    #[test]
    fn frozen_lists_parse() {
        for p in [Profile::Quick, Profile::Standard] {
            let lists = frozen(p).ok().flatten();
            assert!(lists.is_some_and(|l| l.contains_key("mmlu")), "{p:?}");
        }
    }
}
