//! Readers for the upstream data formats, from a folder laid out like `../shared/evaldata/`.
//!
//! Every file read is hashed (SHA-256) and checked against the known checksums in
//! `known-sha256sums.txt` (a copy of the data folder's `SHA256SUMS`: hashes only, no data).
//! The data itself is never copied into the repository.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

pub use bakeoff_record::eval::FileRecord;
use bakeoff_record::hash::sha256_hex;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

const KNOWN_SHA256: &str = include_str!("../known-sha256sums.txt");

/// The data folder and a log of every file read from it.
pub struct DataDir {
    pub root: PathBuf,
    pub files: Vec<FileRecord>,
    known: BTreeMap<String, String>,
}

fn known_sums() -> BTreeMap<String, String> {
    KNOWN_SHA256
        .lines()
        .filter_map(|l| {
            let (h, p) = l.split_once("  ")?;
            Some((p.trim_start_matches("./").to_string(), h.to_string()))
        })
        .collect()
}

impl DataDir {
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(Error::MissingData(format!(
                "{} is not a folder; pass --data-dir pointing at a copy of ../shared/evaldata",
                root.display()
            )));
        }
        Ok(Self {
            root,
            files: Vec::new(),
            known: known_sums(),
        })
    }

    /// Reads a file, recording its size and hash.
    pub fn read(&mut self, rel: &str) -> Result<Vec<u8>> {
        let path = self.root.join(rel);
        if !path.is_file() {
            return Err(Error::MissingData(format!(
                "{} (expected under --data-dir {})",
                rel,
                self.root.display()
            )));
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let sha = sha256_hex(&bytes);
        let known_match = self.known.get(rel).map(|k| *k == sha);
        if !self.files.iter().any(|f| f.path == rel) {
            self.files.push(FileRecord {
                path: rel.to_string(),
                bytes: bytes.len() as u64,
                sha256: sha,
                known_match,
            });
        }
        Ok(bytes)
    }

    pub fn read_text(&mut self, rel: &str) -> Result<String> {
        let bytes = self.read(rel)?;
        let path = self.root.join(rel);
        String::from_utf8(bytes).map_err(|e| Error::format(&path, format!("not UTF-8: {e}")))
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn jsonl<T: for<'de> Deserialize<'de>>(&self, rel: &str, text: &str) -> Result<Vec<T>> {
        let path = self.path(rel);
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l)
                    .map_err(|e| Error::format(&path, format!("line {}: {e}", i + 1)))
            })
            .collect()
    }

    /// Files below `rel` (one level), sorted by name.
    fn list(&self, rel: &str, suffix: &str) -> Result<Vec<String>> {
        let dir = self.path(rel);
        let rd = std::fs::read_dir(&dir).map_err(|_| {
            Error::MissingData(format!(
                "{rel}/ (expected under --data-dir {})",
                self.root.display()
            ))
        })?;
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n.ends_with(suffix))
            .collect();
        names.sort();
        Ok(names)
    }
}

// ---------------------------------------------------------------- CSV

/// RFC 4180 CSV: comma-separated, `"` quotes, `""` escapes, newlines allowed inside quotes.
pub fn parse_csv(text: &str) -> std::result::Result<Vec<Vec<String>>, String> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut in_quotes = false;
    let mut field_started_quoted = false;
    let mut chars = text.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        any = true;
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    field.push('"');
                    chars.next();
                } else {
                    in_quotes = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            '"' if field.is_empty() && !field_started_quoted => {
                in_quotes = true;
                field_started_quoted = true;
            }
            ',' => {
                row.push(std::mem::take(&mut field));
                field_started_quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                field_started_quoted = false;
                rows.push(std::mem::take(&mut row));
                any = false;
            }
            _ => field.push(c),
        }
    }
    if in_quotes {
        return Err("unterminated quoted field".into());
    }
    if any {
        row.push(field);
        rows.push(row);
    }
    Ok(rows)
}

// ---------------------------------------------------------------- item types

/// A multiple-choice item scored by log-likelihood.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct McItem {
    pub id: String,
    /// MMLU subject, ARC set, HellaSwag activity, TruthfulQA category.
    pub group: String,
    pub question: String,
    pub choices: Vec<String>,
    /// Letters shown for the choices in letter format (ARC uses A-E or 1-4).
    pub labels: Vec<String>,
    pub gold: usize,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Gsm8kItem {
    pub id: String,
    pub question: String,
    /// The full reference solution (for the audit trail).
    pub solution: String,
    /// The normalised number after `####`.
    pub answer: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IfevalItem {
    pub key: u64,
    pub prompt: String,
    pub instruction_id_list: Vec<String>,
    pub kwargs: Vec<serde_json::Map<String, serde_json::Value>>,
}

impl IfevalItem {
    pub fn id(&self) -> String {
        self.key.to_string()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HumanEvalItem {
    pub task_id: String,
    pub prompt: String,
    pub canonical_solution: String,
    pub test: String,
    pub entry_point: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MbppItem {
    pub task_id: u64,
    pub text: String,
    pub code: String,
    #[serde(default)]
    pub test_setup_code: String,
    pub test_list: Vec<String>,
}

impl MbppItem {
    pub fn id(&self) -> String {
        format!("mbpp:{}", self.task_id)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MtBenchItem {
    pub question_id: u64,
    pub category: String,
    pub turns: Vec<String>,
    #[serde(default)]
    pub reference: Option<Vec<String>>,
}

impl MtBenchItem {
    pub fn id(&self) -> String {
        format!("mt_bench:{}", self.question_id)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JudgePrompt {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub system_prompt: String,
    pub prompt_template: String,
    pub output_format: String,
}

// ---------------------------------------------------------------- loaders

pub const LETTERS: [&str; 5] = ["A", "B", "C", "D", "E"];

/// MMLU test split: `mmlu/test/<subject>_test.csv`, rows `question,A,B,C,D,answer`.
/// Ids are `mmlu:<subject>:<row>` (row from 0).
pub fn load_mmlu(d: &mut DataDir) -> Result<Vec<McItem>> {
    let mut out = Vec::new();
    for name in d.list("mmlu/test", "_test.csv")? {
        let subject = name.trim_end_matches("_test.csv").to_string();
        let rel = format!("mmlu/test/{name}");
        let text = d.read_text(&rel)?;
        let rows = parse_csv(&text).map_err(|e| Error::format(d.path(&rel), e))?;
        for (i, r) in rows.iter().enumerate() {
            if r.len() != 6 {
                return Err(Error::format(
                    d.path(&rel),
                    format!("row {}: expected 6 fields, got {}", i + 1, r.len()),
                ));
            }
            let gold = LETTERS[..4]
                .iter()
                .position(|l| *l == r[5].trim())
                .ok_or_else(|| {
                    Error::format(
                        d.path(&rel),
                        format!("row {}: answer `{}` is not A-D", i + 1, r[5]),
                    )
                })?;
            out.push(McItem {
                id: format!("mmlu:{subject}:{i}"),
                group: subject.clone(),
                question: r[0].clone(),
                choices: r[1..5].to_vec(),
                labels: LETTERS[..4].iter().map(|s| s.to_string()).collect(),
                gold,
            });
        }
    }
    if out.is_empty() {
        return Err(Error::MissingData("mmlu/test/*_test.csv".into()));
    }
    Ok(out)
}

#[derive(Deserialize)]
struct ArcRow {
    id: String,
    question: ArcQuestion,
    #[serde(rename = "answerKey")]
    answer_key: String,
}
#[derive(Deserialize)]
struct ArcQuestion {
    stem: String,
    choices: Vec<ArcChoice>,
}
#[derive(Deserialize)]
struct ArcChoice {
    text: String,
    label: String,
}

/// ARC (AI2 JSONL): `arc/ARC-Challenge-Test.jsonl` or `arc/ARC-Easy-Test.jsonl`. Labels may be A-E
/// or 1-4 and items may have 3-5 choices.
pub fn load_arc(d: &mut DataDir, set: &str) -> Result<Vec<McItem>> {
    let rel = format!("arc/ARC-{set}-Test.jsonl");
    let text = d.read_text(&rel)?;
    let rows: Vec<ArcRow> = d.jsonl(&rel, &text)?;
    rows.into_iter()
        .map(|r| {
            let gold = r
                .question
                .choices
                .iter()
                .position(|c| c.label == r.answer_key)
                .ok_or_else(|| {
                    Error::format(
                        d.path(&rel),
                        format!("{}: answerKey {} not among labels", r.id, r.answer_key),
                    )
                })?;
            Ok(McItem {
                id: r.id,
                group: format!("ARC-{set}"),
                question: r.question.stem,
                labels: r.question.choices.iter().map(|c| c.label.clone()).collect(),
                choices: r.question.choices.into_iter().map(|c| c.text).collect(),
                gold,
            })
        })
        .collect()
}

/// HellaSwag in llama.cpp's text format (bz2): 6 lines per task: context, gold (0-3), 4 endings.
/// Ids are `hellaswag:<task>` (from 0).
pub fn load_hellaswag(d: &mut DataDir) -> Result<Vec<McItem>> {
    let rel = "hellaswag/hellaswag_val_full.txt.bz2";
    let raw = d.read(rel)?;
    let mut text = String::new();
    bzip2::read::BzDecoder::new(raw.as_slice())
        .read_to_string(&mut text)
        .map_err(|e| Error::format(d.path(rel), format!("bzip2: {e}")))?;
    let lines: Vec<&str> = text.lines().collect();
    if !lines.len().is_multiple_of(6) {
        return Err(Error::format(
            d.path(rel),
            format!("{} lines is not a multiple of 6", lines.len()),
        ));
    }
    lines
        .chunks(6)
        .enumerate()
        .map(|(i, c)| {
            let gold: usize = c[1].trim().parse().ok().filter(|g| *g < 4).ok_or_else(|| {
                Error::format(d.path(rel), format!("task {i}: gold `{}` is not 0-3", c[1]))
            })?;
            let group = c[0]
                .split_once(':')
                .map(|(a, _)| a.to_string())
                .unwrap_or_default();
            Ok(McItem {
                id: format!("hellaswag:{i}"),
                group,
                question: c[0].to_string(),
                choices: c[2..6].iter().map(|s| s.to_string()).collect(),
                labels: LETTERS[..4].iter().map(|s| s.to_string()).collect(),
                gold,
            })
        })
        .collect()
}

/// TruthfulQA (CSV with a header). The multiple-choice task is the Best Answer against the
/// first three Incorrect Answers (fewer when fewer exist); the best answer is choice 0.
/// Ids are `truthfulqa:<row>` (from 0).
pub fn load_truthfulqa(d: &mut DataDir) -> Result<Vec<McItem>> {
    let rel = "truthfulqa/TruthfulQA.csv";
    let text = d.read_text(rel)?;
    let rows = parse_csv(&text).map_err(|e| Error::format(d.path(rel), e))?;
    let header = rows
        .first()
        .ok_or_else(|| Error::format(d.path(rel), "empty file"))?;
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| Error::format(d.path(rel), format!("no `{name}` column")))
    };
    let (cat, q, best, bad) = (
        col("Category")?,
        col("Question")?,
        col("Best Answer")?,
        col("Incorrect Answers")?,
    );
    let mut out = Vec::new();
    for (i, r) in rows.iter().skip(1).enumerate() {
        if r.len() < header.len() {
            continue;
        }
        let incorrect: Vec<String> = r[bad]
            .split(';')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .take(3)
            .collect();
        if incorrect.is_empty() {
            continue;
        }
        let mut choices = vec![r[best].trim().to_string()];
        choices.extend(incorrect);
        out.push(McItem {
            id: format!("truthfulqa:{i}"),
            group: r[cat].clone(),
            question: r[q].trim().to_string(),
            labels: LETTERS[..choices.len()]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            choices,
            gold: 0,
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
struct Gsm8kRow {
    question: String,
    answer: String,
}

/// GSM8K test split (JSONL); ids `gsm8k:<row>` (from 0).
pub fn load_gsm8k(d: &mut DataDir) -> Result<Vec<Gsm8kItem>> {
    let rel = "gsm8k/test.jsonl";
    let text = d.read_text(rel)?;
    let rows: Vec<Gsm8kRow> = d.jsonl(rel, &text)?;
    rows.into_iter()
        .enumerate()
        .map(|(i, r)| {
            let ans = r
                .answer
                .rsplit_once("####")
                .map(|(_, a)| crate::gsm8k::normalize_number(a))
                .ok_or_else(|| Error::format(d.path(rel), format!("row {i}: no `####` answer")))?;
            Ok(Gsm8kItem {
                id: format!("gsm8k:{i}"),
                question: r.question,
                solution: r.answer,
                answer: ans,
            })
        })
        .collect()
}

pub fn load_ifeval(d: &mut DataDir) -> Result<Vec<IfevalItem>> {
    let rel = "ifeval/input_data.jsonl";
    let text = d.read_text(rel)?;
    d.jsonl(rel, &text)
}

/// HumanEval (gzip-compressed JSONL).
pub fn load_humaneval(d: &mut DataDir) -> Result<Vec<HumanEvalItem>> {
    let rel = "humaneval/HumanEval.jsonl.gz";
    let raw = d.read(rel)?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(raw.as_slice())
        .read_to_string(&mut text)
        .map_err(|e| Error::format(d.path(rel), format!("gzip: {e}")))?;
    d.jsonl(rel, &text)
}

/// MBPP test split: task ids 11-510.
pub fn load_mbpp(d: &mut DataDir) -> Result<Vec<MbppItem>> {
    let rel = "mbpp/mbpp.jsonl";
    let text = d.read_text(rel)?;
    let rows: Vec<MbppItem> = d.jsonl(rel, &text)?;
    Ok(rows
        .into_iter()
        .filter(|r| (11..=510).contains(&r.task_id))
        .collect())
}

pub fn load_mt_bench(d: &mut DataDir) -> Result<Vec<MtBenchItem>> {
    let rel = "mt_bench/question.jsonl";
    let text = d.read_text(rel)?;
    d.jsonl(rel, &text)
}

pub fn load_judge_prompts(d: &mut DataDir) -> Result<Vec<JudgePrompt>> {
    let rel = "mt_bench/judge_prompts.jsonl";
    let text = d.read_text(rel)?;
    d.jsonl(rel, &text)
}

#[derive(Deserialize)]
struct RefRow {
    question_id: u64,
    choices: Vec<RefChoice>,
}
#[derive(Deserialize)]
struct RefChoice {
    turns: Vec<String>,
}

/// GPT-4 reference answers for MT-Bench math, reasoning and coding, by question id.
pub fn load_mt_bench_references(d: &mut DataDir) -> Result<BTreeMap<u64, Vec<String>>> {
    let rel = "mt_bench/reference_answer/gpt-4.jsonl";
    let text = d.read_text(rel)?;
    let rows: Vec<RefRow> = d.jsonl(rel, &text)?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            r.choices
                .into_iter()
                .next()
                .map(|c| (r.question_id, c.turns))
        })
        .collect())
}

/// WikiText-2 raw test text.
pub fn load_wikitext(d: &mut DataDir) -> Result<String> {
    d.read_text("wikitext-2-raw/wiki.test.raw")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_commas_and_newlines() {
        let rows =
            parse_csv("a,\"b, c\",\"say \"\"hi\"\"\"\r\n\"multi\nline\",x,\n").unwrap_or_default();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0], vec!["a", "b, c", "say \"hi\""]);
        assert_eq!(rows[1], vec!["multi\nline", "x", ""]);
        assert!(parse_csv("\"open").is_err());
        assert_eq!(
            parse_csv("last,row").unwrap_or_default(),
            vec![vec!["last", "row"]]
        );
    }

    #[test]
    fn known_sums_parse() {
        let k = known_sums();
        assert_eq!(
            k.get("wikitext-2-raw/wiki.test.raw").map(String::as_str),
            Some("173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08")
        );
    }
}
