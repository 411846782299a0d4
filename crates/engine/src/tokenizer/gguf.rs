//! Rebuilding a Hugging Face tokenizer from GGUF `tokenizer.ggml.*` metadata, and the reverse
//! (metadata from a tokenizer, for synthetic GGUF models).

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;

use super::build::{self, Added, token_type};
use super::{Tokenizer, TokenizerFamily, TokenizerKind};
use crate::{Error, Result};

/// The special tokens Qwen2.5 names at ids 151646..=151664, where Qwen2-era vocabularies hold
/// `[PAD…]` placeholders: `(id, content, special)`. `special == false` marks the tokens that are
/// added tokens but not special in Hugging Face's sense (kept by `skip_special_tokens`); in GGUF
/// they are user-defined (type 4) rather than control (type 3).
pub fn qwen25_special_tokens() -> &'static [(u32, &'static str, bool)] {
    &[
        (151646, "<|object_ref_start|>", true),
        (151647, "<|object_ref_end|>", true),
        (151648, "<|box_start|>", true),
        (151649, "<|box_end|>", true),
        (151650, "<|quad_start|>", true),
        (151651, "<|quad_end|>", true),
        (151652, "<|vision_start|>", true),
        (151653, "<|vision_end|>", true),
        (151654, "<|vision_pad|>", true),
        (151655, "<|image_pad|>", true),
        (151656, "<|video_pad|>", true),
        (151657, "<tool_call>", false),
        (151658, "</tool_call>", false),
        (151659, "<|fim_prefix|>", false),
        (151660, "<|fim_middle|>", false),
        (151661, "<|fim_suffix|>", false),
        (151662, "<|fim_pad|>", false),
        (151663, "<|repo_name|>", false),
        (151664, "<|file_sep|>", false),
    ]
}

/// Number of tokens in Qwen2.5's tokenizer (its embedding matrix is padded further, to 151936).
pub const QWEN25_TOKENIZER_SIZE: usize = 151665;

/// Rewrites Qwen2-era `tokenizer.ggml.tokens`/`token_type` in place into Qwen2.5's, naming the
/// placeholders at 151646..=151664. Everything else (merges, padding tokens past 151664) stays.
pub fn upgrade_to_qwen25(metadata: &mut HashMap<String, Value>) -> Result<()> {
    let bad = |m: &str| Error::Tokenizer(format!("cannot upgrade to Qwen2.5: {m}"));
    match metadata.get("tokenizer.ggml.model") {
        Some(Value::String(m)) if m == "gpt2" => {}
        other => {
            return Err(bad(&format!(
                "tokenizer.ggml.model is {other:?}, not \"gpt2\""
            )));
        }
    }
    let n = match metadata.get("tokenizer.ggml.tokens") {
        Some(Value::Array(a)) => a.len(),
        _ => return Err(bad("no tokenizer.ggml.tokens array")),
    };
    if n < QWEN25_TOKENIZER_SIZE {
        return Err(bad(&format!(
            "only {n} tokens, Qwen2.5 needs {QWEN25_TOKENIZER_SIZE}"
        )));
    }
    if let Some(Value::Array(tokens)) = metadata.get_mut("tokenizer.ggml.tokens") {
        for &(id, content, _) in qwen25_special_tokens() {
            tokens[id as usize] = Value::String(content.to_string());
        }
    }
    match metadata.get_mut("tokenizer.ggml.token_type") {
        Some(Value::Array(types)) if types.len() == n => {
            for &(id, _, special) in qwen25_special_tokens() {
                let t = if special {
                    token_type::CONTROL
                } else {
                    token_type::USER_DEFINED
                };
                types[id as usize] = Value::I32(t);
            }
        }
        _ => {
            return Err(bad(
                "tokenizer.ggml.token_type missing or of the wrong length",
            ));
        }
    }
    Ok(())
}

struct Meta<'a> {
    md: &'a HashMap<String, Value>,
    path: &'a Path,
    /// Values taken out of the file's metadata, whose strings move into the tokenizer instead
    /// of being copied (the vocabulary and merges: 151,665 each in a Qwen file).
    taken: std::cell::RefCell<Vec<(&'static str, Value)>>,
}

impl Meta<'_> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::format(self.path, msg)
    }

    fn str(&self, key: &str) -> Result<Option<&str>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(format!(
                "{key}: expected a string, found {:?}",
                v.value_type()
            ))),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&[Value]>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.not_array(key, v)),
        }
    }

    fn not_array(&self, key: &str, v: &Value) -> Error {
        self.err(format!(
            "{key}: expected an array, found {:?}",
            v.value_type()
        ))
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<String>>> {
        let taken = {
            let mut t = self.taken.borrow_mut();
            t.iter()
                .position(|(k, _)| *k == key)
                .map(|i| t.swap_remove(i).1)
        };
        // A taken array's strings move out; one still in the metadata is copied.
        let values = match taken {
            Some(Value::Array(a)) => a,
            Some(v) => return Err(self.not_array(key, &v)),
            None => match self.array(key)? {
                Some(a) => a.to_vec(),
                None => return Ok(None),
            },
        };
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                v => Err(self.err(format!(
                    "{key}[{i}]: expected a string, found {:?}",
                    v.value_type()
                ))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn numbers<T>(&self, key: &str, conv: impl Fn(&Value) -> Option<T>) -> Result<Option<Vec<T>>> {
        let Some(a) = self.array(key)? else {
            return Ok(None);
        };
        a.iter()
            .enumerate()
            .map(|(i, v)| {
                conv(v).ok_or_else(|| {
                    self.err(format!(
                        "{key}[{i}]: expected a number, found {:?}",
                        v.value_type()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.err(format!(
                "{key}: expected a bool, found {:?}",
                v.value_type()
            ))),
        }
    }

    /// A token id, checked against the vocabulary size.
    fn token_id(&self, key: &str, n_tokens: usize) -> Result<Option<u32>> {
        let Some(v) = self.md.get(key) else {
            return Ok(None);
        };
        let id = as_i64(v).ok_or_else(|| {
            self.err(format!(
                "{key}: expected an integer, found {:?}",
                v.value_type()
            ))
        })?;
        if id < 0 || id as u64 >= n_tokens as u64 {
            return Err(self.err(format!(
                "{key} = {id} is outside the vocabulary (0..{n_tokens})"
            )));
        }
        Ok(Some(id as u32))
    }
}

fn as_i64(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}

fn as_f32(v: &Value) -> Option<f32> {
    match v {
        Value::F32(x) => Some(*x),
        Value::F64(x) => Some(*x as f32),
        other => as_i64(other).map(|x| x as f32),
    }
}

/// Token names llama.cpp treats as control tokens whatever type the file gives them (its
/// EOT/EOM/FIM/end-of-generation auto-detection in `llama_vocab::impl::load`): they are then
/// matched in text as special tokens, and the end-of-generation ones stop generation.
const LLAMA_CPP_CONTROL_NAMES: &[&str] = &[
    // end of generation
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
    // fill-in-the-middle
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "[PAD]",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];

/// The subset of [`LLAMA_CPP_CONTROL_NAMES`] that llama.cpp adds to its end-of-generation set
/// (besides the file's EOS/EOT/EOM ids): the names of the end-of-generation loop and the
/// FIM pad/repo/file-separator tokens.
const LLAMA_CPP_EOG_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

pub(super) fn from_metadata(md: &HashMap<String, Value>, path: &Path) -> Result<Tokenizer> {
    build(md, path, Vec::new())
}

/// [`from_metadata`], taking the vocabulary and merges out of `md` so that their strings move
/// into the tokenizer.
pub(super) fn from_metadata_taking(
    md: &mut HashMap<String, Value>,
    path: &Path,
) -> Result<Tokenizer> {
    let taken = ["tokenizer.ggml.tokens", "tokenizer.ggml.merges"]
        .into_iter()
        .filter_map(|k| md.remove(k).map(|v| (k, v)))
        .collect();
    build(md, path, taken)
}

fn build(
    md: &HashMap<String, Value>,
    path: &Path,
    taken: Vec<(&'static str, Value)>,
) -> Result<Tokenizer> {
    let m = Meta {
        md,
        path,
        taken: std::cell::RefCell::new(taken),
    };
    let model = m
        .str("tokenizer.ggml.model")?
        .ok_or_else(|| m.err("no tokenizer.ggml.model: this GGUF file carries no tokenizer"))?;
    let pre = m.str("tokenizer.ggml.pre")?;
    // llama.cpp ignores tokenizer.ggml.pre for SentencePiece vocabularies, and takes a missing
    // one on a byte-level vocabulary as "default" (with a warning about quality).
    let (kind, bpe) = match model {
        "llama" => {
            let add_space_prefix = m.bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
            // llama.cpp puts the space after every special token as well.
            (
                TokenizerKind::SentencePiece {
                    add_space_prefix,
                    legacy: true,
                },
                None,
            )
        }
        "gpt2" => {
            let name = pre.unwrap_or("default");
            let spec = build::bpe_pre(name).ok_or_else(|| {
                m.err(format!(
                    "unsupported tokenizer: byte-level BPE (model \"gpt2\") with pre-tokenizer \
                     \"{name}\"; bakeoff supports the pre-tokenizers {}",
                    build::bpe_pre_names()
                        .iter()
                        .map(|n| format!("\"{n}\""))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            (
                TokenizerKind::ByteLevelBpe {
                    pre: name.to_string(),
                },
                Some(spec),
            )
        }
        other => {
            return Err(m.err(format!(
                "unsupported tokenizer model \"{other}\" (bakeoff supports \"llama\" \
                 SentencePiece and \"gpt2\" byte-level BPE)"
            )));
        }
    };
    let tokens = m
        .strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| m.err("no tokenizer.ggml.tokens"))?;
    let n = tokens.len();
    if n == 0 || n > u32::MAX as usize {
        return Err(m.err(format!("tokenizer.ggml.tokens has {n} entries")));
    }
    let mut types = m
        .numbers("tokenizer.ggml.token_type", |v| as_i64(v).map(|x| x as i32))?
        .unwrap_or_else(|| vec![token_type::NORMAL; n]);
    if types.len() != n {
        return Err(m.err(format!(
            "tokenizer.ggml.token_type has {} entries for {n} tokens",
            types.len()
        )));
    }
    let bos = m.token_id("tokenizer.ggml.bos_token_id", n)?;
    let eos_id = m.token_id("tokenizer.ggml.eos_token_id", n)?;
    let eot_id = m.token_id("tokenizer.ggml.eot_token_id", n)?;
    let eom_id = m.token_id("tokenizer.ggml.eom_token_id", n)?;
    let unk = m.token_id("tokenizer.ggml.unknown_token_id", n)?;
    let pad = m.token_id("tokenizer.ggml.padding_token_id", n)?;
    let add_bos = m
        .bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(bpe.is_none_or(|p| p.add_bos));
    let add_eos = m.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    if add_bos && bos.is_none() {
        return Err(m.err("tokenizer.ggml.add_bos_token is true but there is no bos_token_id"));
    }
    if add_eos && eos_id.is_none() {
        return Err(m.err("tokenizer.ggml.add_eos_token is true but there is no eos_token_id"));
    }

    // As llama.cpp: control-looking names become control tokens; a "</s>" is a plain token
    // again where the vocabulary has Gemma-4's or PLaMo-2's own end marker.
    let plain_s = tokens
        .iter()
        .any(|t| t == "<|tool_response>" || t == "<|plamo:eos|>");
    let mut eog: Vec<u32> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if plain_s && t == "</s>" {
            if types[i] == token_type::CONTROL {
                types[i] = token_type::NORMAL;
            }
            continue;
        }
        if LLAMA_CPP_CONTROL_NAMES.contains(&t.as_str())
            && !matches!(types[i], token_type::CONTROL | token_type::UNKNOWN)
        {
            types[i] = token_type::CONTROL;
        }
        if LLAMA_CPP_EOG_NAMES.contains(&t.as_str())
            || matches!(
                t.as_str(),
                "<|fim_pad|>" | "<fim-pad>" | "<fim_pad>" | "<PAD>" | "[PAD]"
            )
            || matches!(
                t.as_str(),
                "<|fim_repo|>" | "<|repo_name|>" | "<fim-repo>" | "<REPO>" | "<reponame>"
            )
            || t == "<|file_sep|>"
        {
            eog.push(i as u32);
        }
    }
    // The file's EOS first (the primary stop token), then its EOT/EOM, then the rest.
    let mut eos: Vec<u32> = Vec::new();
    for id in [eos_id, eot_id, eom_id]
        .into_iter()
        .flatten()
        .chain(eog.iter().copied())
    {
        if !eos.contains(&id) {
            eos.push(id);
        }
    }

    let mut added: Vec<Added> = Vec::new();
    for (i, (t, &ty)) in tokens.iter().zip(&types).enumerate() {
        // Control and unknown pieces are matched in text only when special tokens are parsed;
        // user-defined ones always (llama.cpp's tokenizer_st_partition), which is what
        // tokenizers' special and non-special added tokens do.
        let special = match ty {
            token_type::CONTROL | token_type::UNKNOWN => true,
            token_type::USER_DEFINED => false,
            _ => continue,
        };
        if t.is_empty() {
            continue;
        }
        added.push(Added {
            id: i as u32,
            content: t.clone(),
            special,
        });
    }

    // Owned, as the vocabulary's pieces go to the tokenizer.
    let bos_p = bos
        .filter(|_| add_bos)
        .map(|b| (b, tokens[b as usize].clone()));
    let eos_p = eos_id
        .filter(|_| add_eos)
        .map(|e| (e, tokens[e as usize].clone()));
    let bos_p = bos_p.as_ref().map(|(b, t)| (*b, t.as_str()));
    let eos_p = eos_p.as_ref().map(|(e, t)| (*e, t.as_str()));
    let inner = match bpe {
        None => {
            let add_space_prefix = matches!(
                kind,
                TokenizerKind::SentencePiece {
                    add_space_prefix: true,
                    ..
                }
            );
            let scores = m.numbers("tokenizer.ggml.scores", as_f32)?.ok_or_else(|| {
                m.err("no tokenizer.ggml.scores (a SentencePiece vocabulary needs them)")
            })?;
            if scores.len() < n {
                return Err(m.err(format!(
                    "tokenizer.ggml.scores has {} entries for {n} tokens",
                    scores.len()
                )));
            }
            let merges = build::spm_merges(&tokens, &scores, &types)?;
            let unk_tok = unk.map(|u| tokens[u as usize].clone());
            build::llama_spm(
                tokens,
                merges,
                unk_tok.as_deref(),
                &added,
                add_space_prefix,
                bos_p,
                eos_p,
            )
        }
        Some(spec) => {
            let raw = m
                .strings("tokenizer.ggml.merges")?
                .ok_or_else(|| m.err("no tokenizer.ggml.merges (a byte-level BPE needs them)"))?;
            let merges = raw
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    // As llama.cpp: split at the first space after the first byte, so that a
                    // merge whose left half is a space-like piece still parses.
                    s.char_indices()
                        .skip(1)
                        .find(|&(_, c)| c == ' ')
                        .map(|(at, _)| (s[..at].to_string(), s[at + 1..].to_string()))
                        .ok_or_else(|| {
                            m.err(format!("tokenizer.ggml.merges[{i}] = {s:?} is not \"a b\""))
                        })
                })
                .collect::<Result<Vec<_>>>()?;
            build::byte_level_bpe(
                tokens,
                merges,
                &added,
                spec.patterns,
                spec.ignore_merges,
                bos_p,
                eos_p,
            )
        }
    }
    .map_err(|e| match e {
        Error::Tokenizer(msg) => m.err(msg),
        other => other,
    })?;
    let family = match (&kind, bpe) {
        (TokenizerKind::SentencePiece { .. }, _) => Some(TokenizerFamily::Llama),
        (TokenizerKind::ByteLevelBpe { .. }, Some(p)) if p.names[0] == "qwen2" => {
            Some(TokenizerFamily::Qwen2)
        }
        _ => None,
    };
    // Every id, added tokens included, indexes the file's vocabulary.
    let mut t = Tokenizer::assemble(inner, family, bos, eos, unk, add_bos, n);
    t.pad = pad;
    t.kind = Some(kind);
    t.add_eos = add_eos;
    Ok(t)
}

/// `tokenizer.ggml.*` metadata describing `tok`, for writing a GGUF file that [`from_metadata`]
/// turns back into the same tokenizer. SentencePiece scores are recovered from the merge ranks
/// (the merged piece of the rank-r merge scores -r), which orders merges exactly as before.
pub(super) fn to_metadata(tok: &Tokenizer) -> Result<Vec<(String, Value)>> {
    let kind = tok.kind().cloned().ok_or_else(|| {
        Error::Tokenizer(
            "only SentencePiece and byte-level BPE tokenizers can be written to GGUF".into(),
        )
    })?;
    if let TokenizerKind::ByteLevelBpe { pre } = &kind
        && build::bpe_pre(pre).is_none()
    {
        return Err(Error::Tokenizer(format!(
            "this byte-level tokenizer's pre-tokenizer ({pre}) has no llama.cpp name, so it \
             cannot be written as tokenizer.ggml.pre"
        )));
    }
    let spm = matches!(kind, TokenizerKind::SentencePiece { .. });
    let json: serde_json::Value = serde_json::from_str(&tok.to_json_string(false)?)
        .map_err(|e| Error::Tokenizer(format!("re-reading tokenizer JSON: {e}")))?;
    let merges = parse_json_merges(&json["model"]["merges"])?;
    let n = tok.vocab_size();
    let added = tok.inner().get_added_tokens_decoder();
    let mut tokens = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for id in 0..n as u32 {
        let t = tok.id_to_token(id).unwrap_or_else(|| format!("[PAD{id}]"));
        let ty = match added.get(&id) {
            Some(a) if a.special && Some(id) == tok.unk_id() => token_type::UNKNOWN,
            Some(a) if a.special => token_type::CONTROL,
            Some(_) => token_type::USER_DEFINED,
            None if tok.inner().id_to_token(id).is_none() => token_type::UNUSED,
            None if spm && is_byte_token(&t) => token_type::BYTE,
            None => token_type::NORMAL,
        };
        tokens.push(t);
        types.push(ty);
    }
    let mut md: Vec<(String, Value)> = Vec::new();
    let s = |v: &str| Value::String(v.to_string());
    match &kind {
        // transformers' non-legacy layout (no space after special tokens) has no GGUF form;
        // llama.cpp's convert_hf_to_gguf.py writes such vocabularies as plain SentencePiece too.
        TokenizerKind::SentencePiece {
            add_space_prefix, ..
        } => {
            md.push(("tokenizer.ggml.model".into(), s("llama")));
            md.push(("tokenizer.ggml.pre".into(), s("default")));
            if !*add_space_prefix {
                md.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false)));
            }
            let index: HashMap<&str, usize> = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| (t.as_str(), i))
                .collect();
            let mut scores = vec![0f32; n];
            let mut seen = vec![false; n];
            for (rank, (a, b)) in merges.iter().enumerate() {
                if let Some(&i) = index.get(format!("{a}{b}").as_str())
                    && !seen[i]
                {
                    seen[i] = true;
                    scores[i] = -(rank as f32) - 1.0;
                }
            }
            md.push((
                "tokenizer.ggml.scores".into(),
                Value::Array(scores.into_iter().map(Value::F32).collect()),
            ));
        }
        TokenizerKind::ByteLevelBpe { pre } => {
            md.push(("tokenizer.ggml.model".into(), s("gpt2")));
            md.push(("tokenizer.ggml.pre".into(), s(pre)));
            md.push((
                "tokenizer.ggml.merges".into(),
                Value::Array(
                    merges
                        .iter()
                        .map(|(a, b)| Value::String(format!("{a} {b}")))
                        .collect(),
                ),
            ));
        }
    }
    md.push((
        "tokenizer.ggml.tokens".into(),
        Value::Array(tokens.into_iter().map(Value::String).collect()),
    ));
    md.push((
        "tokenizer.ggml.token_type".into(),
        Value::Array(types.into_iter().map(Value::I32).collect()),
    ));
    if let Some(b) = tok.bos_id() {
        md.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(b)));
    }
    if let Some(&e) = tok.eos_ids().first() {
        md.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(e)));
    }
    if let Some(u) = tok.unk_id() {
        md.push(("tokenizer.ggml.unknown_token_id".into(), Value::U32(u)));
    }
    if let Some(p) = tok.pad_id() {
        md.push(("tokenizer.ggml.padding_token_id".into(), Value::U32(p)));
    }
    md.push((
        "tokenizer.ggml.add_bos_token".into(),
        Value::Bool(tok.adds_bos()),
    ));
    md.push((
        "tokenizer.ggml.add_eos_token".into(),
        Value::Bool(tok.adds_eos()),
    ));
    Ok(md)
}

fn is_byte_token(t: &str) -> bool {
    t.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && t[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

/// tokenizer.json stores merges either as "a b" strings (older) or as ["a", "b"] pairs (newer).
fn parse_json_merges(v: &serde_json::Value) -> Result<Vec<(String, String)>> {
    let Some(arr) = v.as_array() else {
        return Ok(Vec::new());
    };
    arr.iter()
        .map(|m| match m {
            serde_json::Value::String(s) => s
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| Error::Tokenizer(format!("merge {s:?} is not \"a b\""))),
            serde_json::Value::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                (Some(a), Some(b)) => Ok((a.to_string(), b.to_string())),
                _ => Err(Error::Tokenizer(format!(
                    "merge {m} is not a pair of strings"
                ))),
            },
            other => Err(Error::Tokenizer(format!(
                "merge {other} is not a pair of strings"
            ))),
        })
        .collect()
}
