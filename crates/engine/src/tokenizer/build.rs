//! Assembles Hugging Face `tokenizers` pipelines for the two families bakeoff runs, from a plain
//! vocabulary (token strings, scores, types, merges). Both the GGUF path and the tiny synthetic
//! vocabularies go through here, so a GGUF-built tokenizer and a tokenizer.json written from it
//! are the same object.

use std::collections::HashMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence, unicode::NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
};

use crate::{Error, Result};

/// Qwen2's pre-tokenizer regex, as in its tokenizer.json and llama.cpp's `qwen2` pre-type.
pub(crate) const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp `llama_token_type`).
pub(crate) mod token_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

fn tok_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{what}: {e}"))
}

/// A token that must be matched in raw text before the model sees it.
pub(crate) struct Added {
    pub id: u32,
    pub content: String,
    pub special: bool,
}

impl Added {
    fn to_added_token(&self) -> AddedToken {
        // normalized=false: the token is matched in the raw text, as HF's converters and
        // llama.cpp both do for control and user-defined tokens.
        AddedToken::from(self.content.clone(), self.special).normalized(false)
    }
}

/// Registers added tokens, checking that each landed on the id the vocabulary gives it. A
/// duplicate token string would otherwise silently map to another id.
fn add_tokens(tk: &mut tokenizers::Tokenizer, added: &[Added]) -> Result<()> {
    let (special, plain): (Vec<&Added>, Vec<&Added>) = added.iter().partition(|a| a.special);
    let special: Vec<AddedToken> = special.iter().map(|a| a.to_added_token()).collect();
    let plain: Vec<AddedToken> = plain.iter().map(|a| a.to_added_token()).collect();
    tk.add_special_tokens(&special);
    tk.add_tokens(&plain);
    for a in added {
        match tk.token_to_id(&a.content) {
            Some(id) if id == a.id => {}
            got => {
                return Err(Error::Tokenizer(format!(
                    "added token {:?} should have id {} but got {got:?} (duplicate token text?)",
                    a.content, a.id
                )));
            }
        }
    }
    Ok(())
}

fn vocab_map(tokens: &[String]) -> Vocab {
    let mut v = Vocab::default();
    v.reserve(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        // First occurrence wins so that a duplicated string keeps its lowest id, as llama.cpp
        // resolves text to token.
        v.entry(t.clone()).or_insert(i as u32);
    }
    v
}

/// SentencePiece BPE merges recovered from the vocabulary and scores, the way transformers'
/// GGUF converter does: every split of a piece into two pieces that are themselves in the
/// vocabulary is a merge, ranked by the merged piece's score (higher first). Within one piece the
/// splits are ordered by the scores of their halves. Only normal pieces are merge targets:
/// SentencePiece never produces control, byte or unknown pieces by merging.
pub(crate) fn spm_merges(tokens: &[String], scores: &[f32], types: &[i32]) -> Merges {
    let index: HashMap<&str, usize> = {
        let mut m = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            m.entry(t.as_str()).or_insert(i);
        }
        m
    };
    let score = |i: usize| scores.get(i).copied().unwrap_or(0.0);
    let mut merges: Vec<(usize, usize, usize)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        let ty = types.get(id).copied().unwrap_or(token_type::NORMAL);
        if ty != token_type::NORMAL {
            continue;
        }
        let mut local: Vec<(usize, usize, usize)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let l = *index.get(&piece[..at])?;
                let r = *index.get(&piece[at..])?;
                Some((l, r, id))
            })
            .collect();
        local.sort_by(|a, b| {
            score(b.0)
                .total_cmp(&score(a.0))
                .then(score(b.1).total_cmp(&score(a.1)))
        });
        merges.extend(local);
    }
    // Stable: equal scores keep vocabulary order, as Python's sorted() does.
    merges.sort_by(|a, b| score(b.2).total_cmp(&score(a.2)));
    merges
        .into_iter()
        .map(|(l, r, _)| (tokens[l].clone(), tokens[r].clone()))
        .collect()
}

/// The Llama-2 "legacy" SentencePiece layout, identical to Llama-2's and TinyLlama's
/// tokenizer.json. A Metaspace pre-tokenizer would drop the `▁` of text that starts with a space.
pub(crate) fn llama_spm(
    tokens: &[String],
    merges: Merges,
    unk: Option<&str>,
    added: &[Added],
    bos: Option<(u32, &str)>,
    eos: Option<(u32, &str)>,
) -> Result<tokenizers::Tokenizer> {
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab_map(tokens), merges)
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(u) = unk {
        builder = builder.unk_token(u.to_string());
    }
    let bpe = builder
        .build()
        .map_err(|e| tok_err("building the SentencePiece BPE model", e))?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    let replace =
        |a: &str, b: &str| Replace::new(a, b).map_err(|e| tok_err("building a Replace step", e));
    tk.with_normalizer(Some(NormalizerWrapper::Sequence(NormalizerSequence::new(
        vec![
            NormalizerWrapper::Prepend(Prepend::new("▁".to_string())),
            NormalizerWrapper::Replace(replace(" ", "▁")?),
        ],
    ))));
    tk.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(vec![
        DecoderWrapper::Replace(replace("▁", " ")?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
        DecoderWrapper::Strip(Strip::new(' ', 1, 0)),
    ]))));
    add_tokens(&mut tk, added)?;
    if let Some(pp) = bos_eos_processor(bos, eos)? {
        tk.with_post_processor(Some(pp));
    }
    Ok(tk)
}

/// A post-processor that adds BOS and/or EOS around the text, as Llama-2's tokenizer.json does
/// for `add_special_tokens=True`.
fn bos_eos_processor(
    bos: Option<(u32, &str)>,
    eos: Option<(u32, &str)>,
) -> Result<Option<TemplateProcessing>> {
    if bos.is_none() && eos.is_none() {
        return Ok(None);
    }
    let mut single = String::new();
    let mut pair = String::new();
    let mut specials: Vec<(String, u32)> = Vec::new();
    if let Some((id, t)) = bos {
        single.push_str(&format!("{t}:0 "));
        pair.push_str(&format!("{t}:0 "));
        specials.push((t.to_string(), id));
    }
    single.push_str("$A:0");
    pair.push_str("$A:0");
    if let Some((id, t)) = eos {
        single.push_str(&format!(" {t}:0"));
        pair.push_str(&format!(" {t}:0"));
        if !specials.iter().any(|(s, _)| s == t) {
            specials.push((t.to_string(), id));
        }
    }
    if let Some((_, t)) = bos {
        pair.push_str(&format!(" {t}:1"));
    }
    pair.push_str(" $B:1");
    if let Some((_, t)) = eos {
        pair.push_str(&format!(" {t}:1"));
    }
    let tp = TemplateProcessing::builder()
        .try_single(single.as_str())
        .map_err(|e| tok_err("BOS/EOS template", e))?
        .try_pair(pair.as_str())
        .map_err(|e| tok_err("BOS/EOS template", e))?
        .special_tokens(specials)
        .build()
        .map_err(|e| tok_err("BOS/EOS template", e))?;
    Ok(Some(tp))
}

/// Qwen2's byte-level BPE, identical to Qwen2/Qwen2.5's tokenizer.json.
pub(crate) fn qwen2_bpe(
    tokens: &[String],
    merges: Merges,
    added: &[Added],
) -> Result<tokenizers::Tokenizer> {
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_map(tokens), merges)
        .build()
        .map_err(|e| tok_err("building the byte-level BPE model", e))?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    tk.with_normalizer(Some(NormalizerWrapper::NFC(NFC)));
    let split = Split::new(
        SplitPattern::Regex(QWEN2_PATTERN.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| tok_err("compiling the Qwen2 pre-tokenizer regex", e))?;
    tk.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(
        PreTokenizerSequence::new(vec![
            PreTokenizerWrapper::Split(split),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, false)),
        ]),
    )));
    tk.with_post_processor(Some(ByteLevel::new(false, false, false)));
    tk.with_decoder(Some(ByteLevel::new(false, false, false)));
    add_tokens(&mut tk, added)?;
    Ok(tk)
}

/// GPT-2's reversible byte-to-character map (`bytes_to_unicode`), in its own order: printable
/// bytes first, then the rest mapped to U+0100 onwards. Byte-level vocabularies such as Qwen2's
/// start with these 256 characters in exactly this order.
pub(crate) fn gpt2_byte_alphabet() -> Vec<(u8, char)> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut out: Vec<(u8, char)> = (0..=255u8)
        .filter(|&b| printable(b))
        .map(|b| (b, char::from(b)))
        .collect();
    let mut n = 0u32;
    for b in 0..=255u8 {
        if !printable(b) {
            // 256 + n stays below the surrogate range, so the conversion never fails.
            out.push((
                b,
                char::from_u32(256 + n).unwrap_or(char::REPLACEMENT_CHARACTER),
            ));
            n += 1;
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_alphabet_is_a_bijection() {
        let a = gpt2_byte_alphabet();
        assert_eq!(a.len(), 256);
        assert_eq!(a[0], (b'!', '!'));
        let bytes: std::collections::HashSet<u8> = a.iter().map(|p| p.0).collect();
        let chars: std::collections::HashSet<char> = a.iter().map(|p| p.1).collect();
        assert_eq!((bytes.len(), chars.len()), (256, 256));
        // Space is the famous `Ġ`, newline `Ċ`.
        assert!(a.contains(&(b' ', 'Ġ')) && a.contains(&(b'\n', 'Ċ')));
    }

    #[test]
    fn spm_merges_rank_by_merged_score() {
        let t = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let tokens = t(&["a", "b", "c", "ab", "bc", "abc"]);
        let scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0];
        let types = [1; 6];
        let m = spm_merges(&tokens, &scores, &types);
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(m, vec![("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c")]);
    }
}
