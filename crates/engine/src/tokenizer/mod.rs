//! Text to token ids and back, on Hugging Face `tokenizers`.
//!
//! A tokenizer comes from a model folder's tokenizer.json (tokenizing as transformers does), or is
//! rebuilt from a GGUF file's `tokenizer.ggml.*` metadata into a pipeline that tokenizes as
//! llama.cpp does on that file: SentencePiece with byte fallback (`llama`, with or without
//! `add_space_prefix`), or byte-level BPE (`gpt2`) with one of llama.cpp's named pre-tokenizers
//! (`llama-bpe`, `qwen2`, `smollm`, `deepseek-llm`, `tekken`, ...; see [`BPE_PRE_TOKENIZERS`]).
//! Either way the result can be saved as tokenizer.json, which is how synthetic Hugging Face
//! models get a real vocabulary.

mod build;
mod config;
mod gguf;

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;

use crate::loader::gguf::GgufContent;
use serde::{Deserialize, Serialize};

pub use build::{BPE_PRE_TOKENIZERS, BpePre, bpe_pre};
pub use config::{ChatTemplateField, NamedTemplate, TokenField, TokenizerConfig};
pub use gguf::{QWEN25_TOKENIZER_SIZE, qwen25_special_tokens, upgrade_to_qwen25};

use crate::{Error, Result};

/// The tokenizer layouts bakeoff can rebuild from GGUF or synthesize.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerFamily {
    /// SentencePiece BPE with byte fallback, in Llama-2's legacy layout (TinyLlama).
    Llama,
    /// Byte-level BPE with Qwen2's pre-tokenizer regex (Qwen2, Qwen2.5).
    Qwen2,
}

/// What kind of tokenizer this is, in GGUF terms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "kebab-case")]
pub enum TokenizerKind {
    /// SentencePiece BPE with byte fallback (GGUF `tokenizer.ggml.model = "llama"`: Llama 2,
    /// TinyLlama, Mistral 7B v0.1). `add_space_prefix`: a `▁` goes before the text; `legacy`:
    /// also before the text after every special token (llama.cpp, Llama-2's tokenizer.json),
    /// rather than only at the start of the input (transformers' LlamaTokenizer with
    /// `legacy: false`).
    SentencePiece {
        add_space_prefix: bool,
        legacy: bool,
    },
    /// Byte-level BPE (GGUF `"gpt2"`) with a named pre-tokenizer (`tokenizer.ggml.pre`, as
    /// llama.cpp names it; `tokenizer.json` when a Hugging Face file's own regexes are used).
    ByteLevelBpe { pre: String },
}

impl TokenizerKind {
    /// `tokenizer.ggml.model`.
    pub fn gguf_model(&self) -> &'static str {
        match self {
            TokenizerKind::SentencePiece { .. } => "llama",
            TokenizerKind::ByteLevelBpe { .. } => "gpt2",
        }
    }

    /// One line for people: `SentencePiece BPE (add_space_prefix)`, `byte-level BPE, pre-tokenizer smollm`.
    pub fn describe(&self) -> String {
        match self {
            TokenizerKind::SentencePiece {
                add_space_prefix: true,
                legacy: true,
            } => {
                "SentencePiece BPE with byte fallback, space prefix after special tokens too".into()
            }
            TokenizerKind::SentencePiece {
                add_space_prefix: true,
                legacy: false,
            } => "SentencePiece BPE with byte fallback, space prefix at the start only".into(),
            TokenizerKind::SentencePiece {
                add_space_prefix: false,
                ..
            } => "SentencePiece BPE with byte fallback, no space prefix".into(),
            TokenizerKind::ByteLevelBpe { pre } => {
                format!("byte-level BPE, pre-tokenizer {pre}")
            }
        }
    }
}

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// `inner` with special-token text left as text, made on first use (llama.cpp's
    /// `parse_special = false`).
    literal: std::sync::OnceLock<tokenizers::Tokenizer>,
    family: Option<TokenizerFamily>,
    kind: Option<TokenizerKind>,
    add_eos: bool,
    bos: Option<u32>,
    eos: Vec<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("family", &self.family)
            .field("kind", &self.kind)
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish_non_exhaustive()
    }
}

fn tok_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{what}: {e}"))
}

impl Tokenizer {
    fn assemble(
        inner: tokenizers::Tokenizer,
        family: Option<TokenizerFamily>,
        bos: Option<u32>,
        eos: Vec<u32>,
        unk: Option<u32>,
        add_bos: bool,
        vocab_size: usize,
    ) -> Self {
        let kind = detect_kind(&inner);
        Tokenizer {
            inner,
            literal: std::sync::OnceLock::new(),
            family,
            kind,
            add_eos: false,
            bos,
            eos,
            unk,
            pad: None,
            add_bos,
            vocab_size,
        }
    }

    /// One past the largest id of `inner`'s vocabulary, added tokens included: ids, not a
    /// count, since added tokens may sit past the model vocabulary.
    fn id_bound(inner: &tokenizers::Tokenizer) -> usize {
        inner
            .get_vocab(true)
            .values()
            .copied()
            .max()
            .map_or(0, |m| m as usize + 1)
    }

    /// Wraps an existing `tokenizers::Tokenizer`; special ids are guessed from token names as in
    /// [`Tokenizer::from_file`].
    pub fn from_inner(inner: tokenizers::Tokenizer) -> Self {
        let family = detect_family(&inner);
        // Only special added tokens count: Qwen2's vocabulary has plain-text "<s>" and "</s>"
        // entries that must not become BOS/EOS.
        let added = inner.get_added_vocabulary();
        let id = |t: &str| inner.token_to_id(t).filter(|_| added.is_special_token(t));
        let bos = ["<s>", "<|begin_of_text|>"].iter().find_map(|t| id(t));
        let eos: Vec<u32> = [
            "</s>",
            "<|im_end|>",
            "<|endoftext|>",
            "<|eot_id|>",
            "<|end_of_text|>",
        ]
        .iter()
        .filter_map(|t| id(t))
        .collect();
        let unk = ["<unk>"].iter().find_map(|t| id(t));
        // Whether encode(add_special=true) puts BOS first is the post-processor's business;
        // probe it rather than parse it.
        let add_bos = match (bos, inner.encode("a", true)) {
            (Some(b), Ok(e)) => e.get_ids().first() == Some(&b),
            _ => false,
        };
        let n = Self::id_bound(&inner);
        Self::assemble(inner, family, bos, eos, unk, add_bos, n)
    }

    /// Loads a tokenizer.json. BOS is `<s>` when it is a special token; EOS ids are every one of
    /// `</s>`, `<|im_end|>`, `<|endoftext|>` that is one (use [`Tokenizer::apply_config`] to take
    /// the names from tokenizer_config.json instead).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::format(path, format!("not a valid tokenizer.json: {e}")))?;
        Ok(Self::from_inner(inner))
    }

    /// Rebuilds the tokenizer a GGUF file describes. `path` names the file in errors.
    pub fn from_gguf(content: &GgufContent, path: &Path) -> Result<Self> {
        gguf::from_metadata(&content.metadata, path)
    }

    /// As [`Tokenizer::from_gguf`], taking the vocabulary and merges out of the file's metadata
    /// (`tokenizer.ggml.tokens` and `tokenizer.ggml.merges` are gone from it afterwards, even
    /// on an error): the loader's way, which moves their strings instead of copying them.
    pub fn from_gguf_taking(content: &mut GgufContent, path: &Path) -> Result<Self> {
        gguf::from_metadata_taking(&mut content.metadata, path)
    }

    /// As [`Tokenizer::from_gguf`], from the metadata map alone.
    pub fn from_gguf_metadata(metadata: &HashMap<String, Value>, path: &Path) -> Result<Self> {
        gguf::from_metadata(metadata, path)
    }

    /// A vocabulary for tiny synthetic models: every text is encodable and round-trips, with
    /// the family's real pipeline and special tokens but no learned merges.
    ///
    /// Llama: `<unk>`, `<s>`, `</s>` (0, 1, 2), byte tokens `<0x00>`..`<0xFF>` (3..=258) and
    /// `▁` (259; without it the byte-fallback `▁` would decode as a literal `▁`, since the
    /// decoder replaces `▁` before it fuses bytes). Qwen2: the 256 GPT-2 byte characters in
    /// Qwen2's order, then `<|endoftext|>`, `<|im_start|>`, `<|im_end|>` (256, 257, 258).
    pub fn tiny(family: TokenizerFamily) -> Result<Self> {
        match family {
            TokenizerFamily::Llama => {
                let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
                tokens.push("▁".to_string());
                let added = [(0, "<unk>"), (1, "<s>"), (2, "</s>")].map(|(id, t)| build::Added {
                    id,
                    content: t.to_string(),
                    special: true,
                });
                let n = tokens.len();
                let inner = build::llama_spm(
                    tokens,
                    Vec::new(),
                    Some("<unk>"),
                    &added,
                    true,
                    Some((1, "<s>")),
                    None,
                )?;
                Ok(Self::assemble(
                    inner,
                    Some(family),
                    Some(1),
                    vec![2],
                    Some(0),
                    true,
                    n,
                ))
            }
            TokenizerFamily::Qwen2 => {
                let mut tokens: Vec<String> = build::gpt2_byte_alphabet()
                    .into_iter()
                    .map(|(_, c)| c.to_string())
                    .collect();
                let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
                let added: Vec<build::Added> = specials
                    .iter()
                    .enumerate()
                    .map(|(i, t)| build::Added {
                        id: 256 + i as u32,
                        content: t.to_string(),
                        special: true,
                    })
                    .collect();
                tokens.extend(specials.iter().map(|s| s.to_string()));
                let n = tokens.len();
                let inner = build::qwen2_bpe(tokens, Vec::new(), &added)?;
                // As Qwen2.5-Instruct's generation_config: end of turn, then end of text.
                let mut t =
                    Self::assemble(inner, Some(family), None, vec![258, 256], None, false, n);
                t.pad = Some(256);
                Ok(t)
            }
        }
    }

    /// Takes BOS/EOS/UNK/PAD and `add_bos_token` from tokenizer_config.json where it names them.
    pub fn apply_config(&mut self, cfg: &TokenizerConfig) {
        if let Some(b) = &cfg.bos_token {
            self.bos = self.inner.token_to_id(b.content());
        }
        if let Some(e) = cfg
            .eos_token
            .as_ref()
            .and_then(|e| self.inner.token_to_id(e.content()))
        {
            self.eos.retain(|&x| x != e);
            self.eos.insert(0, e);
        }
        if let Some(u) = &cfg.unk_token {
            self.unk = self.inner.token_to_id(u.content());
        }
        if let Some(p) = &cfg.pad_token {
            self.pad = self.inner.token_to_id(p.content());
        }
        if let Some(a) = cfg.add_bos_token {
            self.add_bos = a && self.bos.is_some();
        }
        if matches!(
            cfg.tokenizer_class.as_deref(),
            Some("LlamaTokenizer" | "LlamaTokenizerFast")
        ) && matches!(self.kind, Some(TokenizerKind::SentencePiece { .. }))
        {
            self.llama_tokenizer_layout(
                cfg.add_prefix_space.unwrap_or(true),
                cfg.legacy.unwrap_or(false),
            );
        }
    }

    /// What transformers 5's LlamaTokenizer does with a tokenizer.json: it keeps the vocabulary,
    /// merges, added tokens and post-processor but rebuilds the rest: no normalizer, a Metaspace
    /// pre-tokenizer that prepends `▁` always (`legacy`), only at the start of the input
    /// (`legacy: false`, its default; then no `▁` follows a special token) or never
    /// (`add_prefix_space: false`), and a decoder that strips the prepended space.
    fn llama_tokenizer_layout(&mut self, add_prefix_space: bool, legacy: bool) {
        use tokenizers::decoders::{
            byte_fallback::ByteFallback, fuse::Fuse, sequence::Sequence, strip::Strip,
        };
        use tokenizers::normalizers::replace::Replace;
        use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
        let scheme = match (add_prefix_space, legacy) {
            (false, _) => PrependScheme::Never,
            (true, true) => PrependScheme::Always,
            (true, false) => PrependScheme::First,
        };
        let Ok(replace) = Replace::new("▁", " ") else {
            return;
        };
        let mut decode = vec![
            tokenizers::DecoderWrapper::Replace(replace),
            tokenizers::DecoderWrapper::ByteFallback(ByteFallback::new()),
            tokenizers::DecoderWrapper::Fuse(Fuse::new()),
        ];
        if add_prefix_space {
            decode.push(tokenizers::DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
        }
        self.inner
            .with_normalizer(None::<tokenizers::NormalizerWrapper>)
            .with_pre_tokenizer(Some(Metaspace::new('▁', scheme, false)))
            .with_decoder(Some(Sequence::new(decode)));
        self.literal = std::sync::OnceLock::new();
        self.kind = Some(TokenizerKind::SentencePiece {
            add_space_prefix: add_prefix_space,
            legacy,
        });
    }

    /// Token ids of `text`. Special-token text such as `<|im_start|>` or `</s>` becomes its one
    /// token. `add_special` adds what the family adds for a new sequence: BOS for Llama, nothing
    /// for Qwen2.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        self.encode_with(text, add_special, true)
    }

    /// As llama.cpp's `llama_tokenize(text, add_special, parse_special)`: with `parse_special`
    /// false, control-token text such as `<|im_start|>` is tokenized as plain text (user-defined
    /// tokens are still matched, as in llama.cpp and transformers).
    pub fn encode_with(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>> {
        let tk = if parse_special {
            &self.inner
        } else {
            self.literal.get_or_init(|| {
                let mut t = self.inner.clone();
                t.set_encode_special_tokens(true);
                t
            })
        };
        let enc = tk
            .encode_fast(text, add_special)
            .map_err(|e| tok_err("encode", e))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(Error::Tokenizer(format!(
                "cannot decode token id {bad}: the vocabulary has {} tokens",
                self.vocab_size
            )));
        }
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| tok_err("decode", e))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Whether `id` is a special (control) token, which `decode(.., skip_special = true)` drops.
    pub fn is_special(&self, id: u32) -> bool {
        self.inner
            .get_added_vocabulary()
            .simple_id_to_token(id)
            .is_some_and(|t| self.inner.get_added_vocabulary().is_special_token(&t))
    }

    /// The bytes each token id stands for, as a constrained decoder needs them: the raw bytes of
    /// a byte-level or SentencePiece piece (`▁` as a space, `<0x0A>` as its byte), an added
    /// token's text, and for special (control) tokens that text after a 0xFF byte, which no
    /// UTF-8 text contains, so that no grammar over text can produce them. Ids without a token
    /// get no bytes.
    pub fn token_bytes(&self) -> Result<Vec<Vec<u8>>> {
        let byte_level = match &self.kind {
            Some(TokenizerKind::ByteLevelBpe { .. }) => true,
            Some(TokenizerKind::SentencePiece { .. }) => false,
            None => {
                return Err(Error::Tokenizer(
                    "this vocabulary is neither byte-level BPE nor SentencePiece, so the bytes \
                     of its tokens are unknown"
                        .into(),
                ));
            }
        };
        let alphabet: HashMap<char, u8> = build::gpt2_byte_alphabet()
            .into_iter()
            .map(|(b, c)| (c, b))
            .collect();
        let mut out = vec![Vec::new(); self.vocab_size];
        for (piece, id) in self.inner.get_vocab(false) {
            let Some(slot) = out.get_mut(id as usize) else {
                continue;
            };
            *slot = if byte_level {
                // A piece outside the byte alphabet (none in a well-formed file) is its text.
                piece
                    .chars()
                    .map(|c| {
                        alphabet
                            .get(&c)
                            .copied()
                            .map_or_else(|| c.to_string().into_bytes(), |b| vec![b])
                    })
                    .collect::<Vec<_>>()
                    .concat()
            } else if let Some(b) = sentencepiece_byte(&piece) {
                vec![b]
            } else {
                piece.replace('▁', " ").into_bytes()
            };
        }
        for (id, added) in self.inner.get_added_tokens_decoder() {
            let Some(slot) = out.get_mut(id as usize) else {
                continue;
            };
            let mut bytes = Vec::with_capacity(added.content.len() + 1);
            if added.special {
                bytes.push(0xFF);
            }
            bytes.extend_from_slice(added.content.as_bytes());
            *slot = bytes;
        }
        Ok(out)
    }

    /// One past the largest token id (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn family(&self) -> Option<TokenizerFamily> {
        self.family
    }

    /// SentencePiece or byte-level BPE with which pre-tokenizer; None for a tokenizer.json of
    /// another model type (WordPiece, Unigram...).
    pub fn kind(&self) -> Option<&TokenizerKind> {
        self.kind.as_ref()
    }

    /// Whether `encode(text, true)` ends with EOS.
    pub fn adds_eos(&self) -> bool {
        self.add_eos
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence ids, the primary one first.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    pub fn unk_id(&self) -> Option<u32> {
        self.unk
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// Whether `encode(text, true)` starts with BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    pub fn bos_token(&self) -> Option<String> {
        self.bos.and_then(|id| self.id_to_token(id))
    }

    pub fn eos_token(&self) -> Option<String> {
        self.eos.first().and_then(|&id| self.id_to_token(id))
    }

    /// The tokenizer.json text (pretty-printed when `pretty`).
    pub fn to_json_string(&self, pretty: bool) -> Result<String> {
        self.inner
            .to_string(pretty)
            .map_err(|e| tok_err("serializing tokenizer.json", e))
    }

    /// Writes tokenizer.json.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = self.to_json_string(true)?;
        bakeoff_record::fsio::write_atomic(path, text.as_bytes()).map_err(|e| Error::io(path, e))
    }

    /// `tokenizer.ggml.*` metadata from which [`Tokenizer::from_gguf`] rebuilds this tokenizer
    /// (Llama and Qwen2 families only).
    pub fn to_gguf_metadata(&self) -> Result<Vec<(String, Value)>> {
        gguf::to_metadata(self)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// The kind of a tokenizer.json: SentencePiece when its BPE falls back to bytes, byte-level
/// when it decodes bytes; a byte-level one is named after the llama.cpp pre-tokenizer whose
/// regexes it carries, or "tokenizer.json".
/// The byte of a SentencePiece byte-fallback piece such as `<0x0A>`.
fn sentencepiece_byte(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok())?
}

fn detect_kind(inner: &tokenizers::Tokenizer) -> Option<TokenizerKind> {
    use tokenizers::{DecoderWrapper, ModelWrapper, NormalizerWrapper, PreTokenizerWrapper};
    match (inner.get_model(), inner.get_decoder()) {
        (ModelWrapper::BPE(b), _) if b.byte_fallback => {
            let prepends = |n: &NormalizerWrapper| matches!(n, NormalizerWrapper::Prepend(_));
            let normalizer_prepends = match inner.get_normalizer() {
                Some(NormalizerWrapper::Sequence(seq)) => {
                    serde_json::to_value(seq).ok().is_some_and(|v| {
                        v["normalizers"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|n| n["type"] == "Prepend"))
                    })
                }
                Some(n) => prepends(n),
                None => false,
            };
            let metaspace_prepends = match inner.get_pre_tokenizer() {
                Some(PreTokenizerWrapper::Metaspace(m)) => {
                    m.get_prepend_scheme()
                        != tokenizers::pre_tokenizers::metaspace::PrependScheme::Never
                }
                _ => false,
            };
            let metaspace_first = matches!(
                inner.get_pre_tokenizer(),
                Some(PreTokenizerWrapper::Metaspace(m))
                    if m.get_prepend_scheme() == tokenizers::pre_tokenizers::metaspace::PrependScheme::First
            );
            Some(TokenizerKind::SentencePiece {
                add_space_prefix: normalizer_prepends || metaspace_prepends,
                legacy: !metaspace_first,
            })
        }
        (ModelWrapper::BPE(_), Some(DecoderWrapper::ByteLevel(_))) => {
            let pre = serde_json::to_value(inner.get_pre_tokenizer())
                .ok()
                .map(|v| {
                    let mut regexes = Vec::new();
                    collect_regexes(&v, &mut regexes);
                    regexes
                })
                .and_then(|r| build::bpe_pre_for_regexes(&r))
                .unwrap_or("tokenizer.json");
            Some(TokenizerKind::ByteLevelBpe {
                pre: pre.to_string(),
            })
        }
        _ => None,
    }
}

fn collect_regexes(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(o) => {
            if let Some(r) = o
                .get("pattern")
                .and_then(|p| p.get("Regex"))
                .and_then(|r| r.as_str())
            {
                out.push(r.to_string());
            }
            for x in o.values() {
                collect_regexes(x, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_regexes(x, out)),
        _ => {}
    }
}

fn detect_family(inner: &tokenizers::Tokenizer) -> Option<TokenizerFamily> {
    use tokenizers::{DecoderWrapper, ModelWrapper};
    match (inner.get_model(), inner.get_decoder()) {
        (ModelWrapper::BPE(b), _) if b.byte_fallback => Some(TokenizerFamily::Llama),
        (ModelWrapper::BPE(_), Some(DecoderWrapper::ByteLevel(_))) => Some(TokenizerFamily::Qwen2),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tiny_llama_round_trips() {
        let t = Tokenizer::tiny(TokenizerFamily::Llama).unwrap();
        assert_eq!(t.vocab_size(), 260);
        let ids = t.encode(" Hi 你</s>", true).unwrap();
        // BOS, ▁, ▁ (the space), then bytes.
        assert_eq!(&ids[..3], &[1, 259, 259]);
        assert_eq!(*ids.last().unwrap(), 2);
        assert_eq!(t.decode(&ids, true).unwrap(), " Hi 你");
        assert_eq!(t.decode(&ids, false).unwrap(), "<s>  Hi 你</s>");
        assert_eq!(t.bos_token().as_deref(), Some("<s>"));
        assert_eq!(t.eos_token().as_deref(), Some("</s>"));
    }

    #[test]
    fn tiny_qwen_round_trips() {
        let t = Tokenizer::tiny(TokenizerFamily::Qwen2).unwrap();
        assert_eq!(t.vocab_size(), 259);
        let ids = t.encode("<|im_start|>user\nhé<|im_end|>", true).unwrap();
        assert_eq!(ids[0], 257);
        assert_eq!(*ids.last().unwrap(), 258);
        assert_eq!(ids.len(), 1 + 5 + 3 + 1);
        assert_eq!(t.decode(&ids, true).unwrap(), "user\nhé");
        assert_eq!(t.bos_id(), None);
        assert_eq!(t.eos_ids(), &[258, 256]);
        assert!(t.is_special(257) && !t.is_special(5));
    }

    #[test]
    fn decode_rejects_out_of_range_ids() {
        let t = Tokenizer::tiny(TokenizerFamily::Qwen2).unwrap();
        assert!(matches!(
            t.decode(&[1_000_000], false),
            Err(Error::Tokenizer(_))
        ));
    }
}
