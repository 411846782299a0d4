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

/// The vocabulary's map from piece to id, taking the pieces (a Qwen vocabulary is 151,665 of
/// them, and copying them was a visible part of a load).
fn vocab_map(tokens: Vec<String>) -> Vocab {
    let mut v = Vocab::default();
    v.reserve(tokens.len());
    for (i, t) in tokens.into_iter().enumerate() {
        // First occurrence wins so that a duplicated string keeps its lowest id, as llama.cpp
        // resolves text to token.
        v.entry(t).or_insert(i as u32);
    }
    v
}

/// SentencePiece BPE merges recovered from the vocabulary and scores, the way transformers'
/// GGUF converter does: every split of a piece into two pieces that are themselves in the
/// vocabulary is a merge, ranked by the merged piece's score (higher first). Within one piece the
/// splits are ordered by the scores of their halves. Only normal pieces are merge targets:
/// SentencePiece never produces control, byte or unknown pieces by merging.
pub(crate) fn spm_merges(tokens: &[String], scores: &[f32], types: &[i32]) -> Result<Merges> {
    let index = PieceIndex::new(tokens);
    let score = |i: usize| scores.get(i).copied().unwrap_or(0.0);
    let mut merges: Vec<(usize, usize, usize)> = Vec::new();
    let mut merge_bytes = 0usize;
    let mut prefix = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        let ty = types.get(id).copied().unwrap_or(token_type::NORMAL);
        if ty != token_type::NORMAL {
            continue;
        }
        index.prefix_hashes(piece, &mut prefix);
        let mut local: Vec<(usize, usize, usize)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let l = index.find(piece, &prefix, 0, at)?;
                let r = index.find(piece, &prefix, at, piece.len())?;
                Some((l, r, id))
            })
            .collect();
        // Each merge holds both halves: a crafted vocabulary ("a", "aa", "aaa", …) makes the
        // merge list grow with the square of its size.
        merge_bytes += local.len() * (piece.len() + 2 * std::mem::size_of::<String>());
        if merge_bytes > MAX_SPM_MERGE_BYTES {
            return Err(Error::Tokenizer(format!(
                "the SentencePiece vocabulary's merges would take more than {} MiB (at token \
                 {id} of {}); no real vocabulary comes near this",
                MAX_SPM_MERGE_BYTES >> 20,
                tokens.len()
            )));
        }
        local.sort_by(|a, b| {
            score(b.0)
                .total_cmp(&score(a.0))
                .then(score(b.1).total_cmp(&score(a.1)))
        });
        merges.extend(local);
    }
    // Stable: equal scores keep vocabulary order, as Python's sorted() does.
    merges.sort_by(|a, b| score(b.2).total_cmp(&score(a.2)));
    Ok(merges
        .into_iter()
        .map(|(l, r, _)| (tokens[l].clone(), tokens[r].clone()))
        .collect())
}

/// Bound on the merges recovered from a SentencePiece vocabulary (Llama-2's 32,000 pieces give
/// about 61,000 merges, a few MiB).
const MAX_SPM_MERGE_BYTES: usize = 512 << 20;

/// Which substrings of a piece are tokens, in time linear in the piece: a polynomial hash of
/// every token, and prefix hashes of the piece, so each candidate split costs O(1) and only a
/// hash hit is compared byte for byte. Hashing each half anew made a vocabulary with long
/// pieces cost the square of their length (a crafted file with 10,000-byte pieces hung the
/// loader).
struct PieceIndex<'a> {
    /// Hash → the first token with that text (or a colliding one, told apart by comparing).
    by_hash: HashMap<u64, Vec<usize>>,
    tokens: &'a [String],
    /// base^i mod p, up to the longest token.
    powers: Vec<u64>,
    base: u64,
}

/// 2^61 - 1: products of two residues fit in u128, and no crafted collisions can be planned
/// without knowing the base.
const HASH_P: u64 = (1 << 61) - 1;

impl<'a> PieceIndex<'a> {
    fn new(tokens: &'a [String]) -> Self {
        use std::hash::BuildHasher;
        // A per-load random base (std's keyed hasher): deterministic results, since every hit is
        // checked, but unpredictable collisions.
        let base = std::collections::hash_map::RandomState::new().hash_one(tokens.len())
            % (HASH_P - 256)
            + 256;
        let mut idx = PieceIndex {
            by_hash: HashMap::with_capacity(tokens.len()),
            tokens,
            powers: Vec::new(),
            base,
        };
        let longest = tokens.iter().map(String::len).max().unwrap_or(0);
        idx.powers = std::iter::successors(Some(1u64), |&p| Some(mulmod(p, base)))
            .take(longest + 1)
            .collect();
        for (i, t) in tokens.iter().enumerate() {
            let h = t.bytes().fold(0u64, |h, b| idx.step(h, b));
            let ids = idx.by_hash.entry(h).or_default();
            // First occurrence wins, as llama.cpp resolves text to token.
            if !ids.iter().any(|&j| tokens[j] == *t) {
                ids.push(i);
            }
        }
        idx
    }

    fn step(&self, h: u64, b: u8) -> u64 {
        mulmod(h, self.base).wrapping_add(u64::from(b) + 1) % HASH_P
    }

    fn prefix_hashes(&self, piece: &str, out: &mut Vec<u64>) {
        out.clear();
        out.push(0);
        let mut h = 0;
        for b in piece.bytes() {
            h = self.step(h, b);
            out.push(h);
        }
    }

    /// The token whose text is `piece[a..b]`, if any.
    fn find(&self, piece: &str, prefix: &[u64], a: usize, b: usize) -> Option<usize> {
        let h = (prefix[b] + HASH_P - mulmod(prefix[a], self.powers[b - a])) % HASH_P;
        let sub = &piece[a..b];
        self.by_hash
            .get(&h)?
            .iter()
            .copied()
            .find(|&i| self.tokens[i] == sub)
    }
}

fn mulmod(a: u64, b: u64) -> u64 {
    ((u128::from(a) * u128::from(b)) % u128::from(HASH_P)) as u64
}

/// The Llama-2 "legacy" SentencePiece layout, identical to Llama-2's and TinyLlama's
/// tokenizer.json, and to llama.cpp, which puts a space before every stretch of text that starts
/// the input or follows a special token (`add_space_prefix`). A Metaspace pre-tokenizer would
/// drop the `▁` of text that starts with a space. Without `add_space_prefix` nothing is
/// prepended.
pub(crate) fn llama_spm(
    tokens: Vec<String>,
    merges: Merges,
    unk: Option<&str>,
    added: &[Added],
    add_space_prefix: bool,
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
    let mut steps = Vec::with_capacity(2);
    if add_space_prefix {
        steps.push(NormalizerWrapper::Prepend(Prepend::new("▁".to_string())));
    }
    steps.push(NormalizerWrapper::Replace(replace(" ", "▁")?));
    tk.with_normalizer(Some(NormalizerWrapper::Sequence(NormalizerSequence::new(
        steps,
    ))));
    let mut decode = vec![
        DecoderWrapper::Replace(replace("▁", " ")?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    // The space the encoder put first is not part of the text.
    if add_space_prefix {
        decode.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    tk.with_decoder(Some(DecoderWrapper::Sequence(DecoderSequence::new(decode))));
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

/// Qwen2's byte-level BPE, identical to Qwen2/Qwen2.5's tokenizer.json (NFC normalizer
/// included, which llama.cpp does not apply; the GGUF path leaves it out).
pub(crate) fn qwen2_bpe(
    tokens: Vec<String>,
    merges: Merges,
    added: &[Added],
) -> Result<tokenizers::Tokenizer> {
    let mut tk = byte_level_bpe(tokens, merges, added, &[QWEN2_PATTERN], false, None, None)?;
    tk.with_normalizer(Some(NormalizerWrapper::NFC(NFC)));
    Ok(tk)
}

/// A byte-level BPE whose text is split by `patterns` in turn (each one splits the pieces the
/// previous ones left, keeping matches and gaps alike), which is how llama.cpp's
/// `unicode_regex_split` applies a pre-tokenizer's regex list. `ignore_merges` takes a whole
/// piece that is itself a token as that token without merging (llama.cpp and Llama-3's
/// tokenizer.json both do this). No normalizer: llama.cpp applies none to byte-level vocabularies.
pub(crate) fn byte_level_bpe(
    tokens: Vec<String>,
    merges: Merges,
    added: &[Added],
    patterns: &[&str],
    ignore_merges: bool,
    bos: Option<(u32, &str)>,
    eos: Option<(u32, &str)>,
) -> Result<tokenizers::Tokenizer> {
    let bpe = BPE::builder()
        .vocab_and_merges(vocab_map(tokens), merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| tok_err("building the byte-level BPE model", e))?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    let mut steps = Vec::with_capacity(patterns.len() + 1);
    for p in patterns {
        let split = Split::new(
            SplitPattern::Regex(p.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| tok_err(&format!("compiling the pre-tokenizer regex {p:?}"), e))?;
        steps.push(PreTokenizerWrapper::Split(split));
    }
    steps.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
        false, false, false,
    )));
    tk.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(
        PreTokenizerSequence::new(steps),
    )));
    match bos_eos_processor(bos, eos)? {
        Some(pp) => tk.with_post_processor(Some(pp)),
        None => tk.with_post_processor(Some(ByteLevel::new(false, false, false))),
    };
    tk.with_decoder(Some(ByteLevel::new(false, false, false)));
    add_tokens(&mut tk, added)?;
    Ok(tk)
}

/// What llama.cpp does with a byte-level vocabulary's `tokenizer.ggml.pre` (the
/// `llm_tokenizer_bpe` constructor and `llama_vocab::impl::load` in src/llama-vocab.cpp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BpePre {
    /// The names llama.cpp accepts for this behaviour; the first is the one bakeoff writes.
    pub names: &'static [&'static str],
    /// The split regexes, in llama.cpp's form (which spells `(?i:'s|…)` as `'[sS]|…` so that
    /// Unicode case folding cannot widen the contractions).
    pub patterns: &'static [&'static str],
    pub ignore_merges: bool,
    /// Whether BOS is added when the file does not say (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
}

const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_GGUF_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_PATTERN: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_PATTERN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
// Non-ASCII characters as \x{..} escapes: several (Greek with oxia, the Kelvin and Ohm signs)
// have canonical equivalents that an editor or a copy may silently substitute.
const DEEPSEEK_LETTERS: &str = r"\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF}\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1}\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5}\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A}\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B}\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC}\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107}\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134}\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4}\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787}\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A}\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2}\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+";
const CJK_HANGUL: &str = r"[\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+";

/// The byte-level pre-tokenizers bakeoff implements: every llama.cpp pre-type of Llama- and
/// Qwen2-architecture models, and the other pre-types that share their regexes.
pub const BPE_PRE_TOKENIZERS: &[BpePre] = &[
    BpePre {
        names: &[
            "llama-bpe",
            "llama3",
            "llama-v3",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
        ],
        patterns: &[LLAMA3_PATTERN],
        ignore_merges: true,
        add_bos: true,
    },
    BpePre {
        names: &["dbrx", "smaug-bpe"],
        patterns: &[LLAMA3_PATTERN],
        ignore_merges: false,
        add_bos: false,
    },
    BpePre {
        names: &[
            "qwen2",
            "deepseek-r1-qwen",
            "stablelm2",
            "megrez",
            "hunyuan",
            "solar-open",
            "kormo",
            "f2llmv2",
        ],
        patterns: &[QWEN2_GGUF_PATTERN],
        ignore_merges: false,
        add_bos: false,
    },
    BpePre {
        names: &["qwen35"],
        patterns: &[QWEN35_PATTERN],
        ignore_merges: false,
        add_bos: false,
    },
    BpePre {
        names: &[
            "smollm",
            "starcoder",
            "refact",
            "command-r",
            "codeshell",
            "exaone",
            "minerva-7b",
            "mellum2",
        ],
        patterns: &[r"\p{N}", GPT2_PATTERN],
        ignore_merges: false,
        add_bos: false,
    },
    BpePre {
        names: &[
            "gpt-2",
            "phi-2",
            "mpt",
            "olmo",
            "jais",
            "trillion",
            "granite-docling",
            "exaone4",
            "a.x-4.0",
            "mellum",
            "gigachat",
        ],
        patterns: &[GPT2_PATTERN],
        ignore_merges: false,
        add_bos: false,
    },
    BpePre {
        names: &["deepseek-llm"],
        patterns: &[
            r"[\r\n]",
            DEEPSEEK_LETTERS,
            r"\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+",
            r"\s+$",
            CJK_HANGUL,
            r"\p{N}+",
        ],
        ignore_merges: false,
        add_bos: false,
    },
    BpePre {
        names: &["deepseek-coder"],
        patterns: &[r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK_HANGUL, r"\p{N}"],
        ignore_merges: false,
        add_bos: false,
    },
    BpePre {
        names: &["falcon"],
        patterns: &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2_PATTERN, "[0-9][0-9][0-9]"],
        ignore_merges: false,
        add_bos: false,
    },
    BpePre {
        names: &["tekken"],
        patterns: &[TEKKEN_PATTERN],
        ignore_merges: true,
        add_bos: true,
    },
    BpePre {
        names: &["default"],
        patterns: &[
            r"[\p{P}\$\+<=>\^~\|]+",
            GPT2_PATTERN,
            r"\p{N}+",
            "[0-9][0-9][0-9]",
        ],
        ignore_merges: false,
        add_bos: false,
    },
];

/// The pre-tokenizer llama.cpp uses for `tokenizer.ggml.pre = name`, if bakeoff has it.
pub fn bpe_pre(name: &str) -> Option<&'static BpePre> {
    BPE_PRE_TOKENIZERS.iter().find(|p| p.names.contains(&name))
}

/// Llama-3's tokenizer.json regex (llama.cpp's `llama-bpe` spells the contractions out).
const LLAMA3_HF_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The llama.cpp name of a tokenizer.json's split regexes: its own form or the Hugging Face
/// form of Qwen2's and Llama-3's.
pub(crate) fn bpe_pre_for_regexes(regexes: &[String]) -> Option<&'static str> {
    let r: Vec<&str> = regexes.iter().map(String::as_str).collect();
    match r.as_slice() {
        [p] if *p == QWEN2_PATTERN => return Some("qwen2"),
        [p] if *p == LLAMA3_HF_PATTERN => return Some("llama-bpe"),
        _ => {}
    }
    BPE_PRE_TOKENIZERS
        .iter()
        .find(|p| p.patterns == r.as_slice())
        .map(|p| p.names[0])
}

/// Every accepted pre-tokenizer name, for error messages.
pub fn bpe_pre_names() -> Vec<&'static str> {
    BPE_PRE_TOKENIZERS
        .iter()
        .flat_map(|p| p.names.iter().copied())
        .collect()
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
        let m = spm_merges(&tokens, &scores, &types).unwrap();
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(m, vec![("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c")]);
    }

    #[test]
    fn long_pieces_are_split_in_linear_time() {
        // 64 pieces of 20,000 bytes: hashing both halves of every split, as before, is 2.6e10
        // byte steps (minutes); the prefix hashes make it 1.3 million.
        let mut tokens: Vec<String> = (b'a'..=b'z').map(|c| (c as char).to_string()).collect();
        for i in 0..64u32 {
            let piece: String = (0..20_000u32)
                .map(|j| (b'a' + ((j * 7 + i * 13 + j / 5) % 26) as u8) as char)
                .collect();
            tokens.push(piece);
        }
        tokens.push("ab".into());
        tokens.push("abc".into());
        let scores = vec![0.0; tokens.len()];
        let types = vec![token_type::NORMAL; tokens.len()];
        let start = std::time::Instant::now();
        let m = spm_merges(&tokens, &scores, &types).unwrap();
        // A guard against a hang, not a speed target.
        assert!(start.elapsed().as_secs() < 60, "{:?}", start.elapsed());
        let m: Vec<(&str, &str)> = m.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(m, vec![("a", "b"), ("ab", "c")]);
    }

    #[test]
    fn a_vocabulary_whose_merges_explode_is_refused() {
        // "a", "aa", …: every split of every piece is a merge, so the list grows with the cube
        // of the longest piece (3,000 pieces: 4.5 million merges holding 9 GB of text).
        let tokens: Vec<String> = (1..=3000).map(|k| "a".repeat(k)).collect();
        let scores = vec![0.0; tokens.len()];
        let types = vec![token_type::NORMAL; tokens.len()];
        let e = spm_merges(&tokens, &scores, &types)
            .unwrap_err()
            .to_string();
        assert!(e.contains("merges would take more than 512 MiB"), "{e}");
    }
}
