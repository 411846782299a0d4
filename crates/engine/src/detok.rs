//! Incremental detokenization for streaming output.
//!
//! Decoding one token at a time is wrong for both families: a SentencePiece piece's leading `▁`
//! is stripped at the start of a decode, and a character split over byte tokens (`<0xE4>`
//! `<0xBD>` `<0xA0>`, or byte-level pieces) is not text until its last byte arrives. So each
//! step decodes a short window: the tokens already emitted since the previous step (the
//! prefix) plus the new ones, and emits what the new ones added to the prefix's text. Text
//! that ends in U+FFFD is held back until the character completes. This is the prefix-offset
//! scheme of text-generation-inference; each step costs a couple of window decodes, never the
//! whole sequence.

use std::sync::Arc;

use crate::Result;
use crate::tokenizer::Tokenizer;

/// Owns a handle on the tokenizer (not a borrow), so a sequence that streams text can live
/// apart from the model whose weights are borrowed mutably for forward passes.
pub struct Detokenizer {
    tokenizer: Arc<Tokenizer>,
    skip_special: bool,
    ids: Vec<u32>,
    /// Start of the window decoded for context.
    prefix_offset: usize,
    /// Start of the tokens whose text is not emitted yet.
    read_offset: usize,
    /// `decode(ids[prefix_offset..read_offset])`, kept to avoid decoding it again.
    prefix_text: String,
}

impl Detokenizer {
    /// A detokenizer that leaves special tokens out of the text, as chat output wants.
    pub fn new(tokenizer: Arc<Tokenizer>) -> Self {
        Self::with_options(tokenizer, true)
    }

    pub fn with_options(tokenizer: Arc<Tokenizer>, skip_special: bool) -> Self {
        Detokenizer {
            tokenizer,
            skip_special,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            prefix_text: String::new(),
        }
    }

    /// Adds one token; returns the text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        if text.len() <= self.prefix_text.len() || text.ends_with(char::REPLACEMENT_CHARACTER) {
            return Ok(None);
        }
        let new = self.new_text(&text);
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        self.prefix_text = self.tokenizer.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        self.compact();
        Ok(Some(new).filter(|s| !s.is_empty()))
    }

    /// Flushes text held back at the end of the stream (an unfinished character, as U+FFFD).
    pub fn finish(&mut self) -> Result<Option<String>> {
        if self.read_offset == self.ids.len() {
            return Ok(None);
        }
        let text = self
            .tokenizer
            .decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        let new = self.new_text(&text);
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        self.prefix_text.clear();
        Ok(Some(new).filter(|s| !s.is_empty()))
    }

    /// All ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// What `text` (the window's decode) adds to the prefix's text. The window normally
    /// extends the prefix; when a decoder rewrites earlier text instead (byte fallback turning
    /// an invalid byte run into U+FFFD), the common part is skipped rather than panicking.
    fn new_text(&self, text: &str) -> String {
        if let Some(rest) = text.strip_prefix(self.prefix_text.as_str()) {
            return rest.to_string();
        }
        let common = text
            .char_indices()
            .zip(self.prefix_text.chars())
            .take_while(|((_, a), b)| a == b)
            .last()
            .map_or(0, |((i, a), _)| i + a.len_utf8());
        text[common..].to_string()
    }

    /// Drops ids that no window will look at again, so a long stream keeps a short buffer.
    fn compact(&mut self) {
        if self.prefix_offset > 4096 {
            self.ids.drain(..self.prefix_offset);
            self.read_offset -= self.prefix_offset;
            self.prefix_offset = 0;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tokenizer::TokenizerFamily;

    fn stream(t: &Tokenizer, ids: &[u32], skip: bool) -> (Vec<String>, String) {
        let mut d = Detokenizer::with_options(Arc::new(t.clone()), skip);
        let mut pieces = Vec::new();
        for &id in ids {
            if let Some(p) = d.push(id).unwrap() {
                pieces.push(p);
            }
        }
        if let Some(p) = d.finish().unwrap() {
            pieces.push(p);
        }
        let all = pieces.concat();
        (pieces, all)
    }

    #[test]
    fn byte_fallback_waits_for_whole_characters() {
        let t = Tokenizer::tiny(TokenizerFamily::Llama).unwrap();
        let ids = t.encode(" 你好 a", false).unwrap();
        let (pieces, all) = stream(&t, &ids, true);
        assert_eq!(all, t.decode(&ids, true).unwrap());
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        assert!(pieces.contains(&"你".to_string()), "{pieces:?}");
    }

    #[test]
    fn leading_spaces_survive_in_continuations() {
        let t = Tokenizer::tiny(TokenizerFamily::Llama).unwrap();
        let ids = t.encode("a b</s> c", true).unwrap();
        for skip in [true, false] {
            let (_, all) = stream(&t, &ids, skip);
            assert_eq!(all, t.decode(&ids, skip).unwrap());
        }
    }

    #[test]
    fn unfinished_character_is_flushed() {
        let t = Tokenizer::tiny(TokenizerFamily::Qwen2).unwrap();
        let mut ids = t.encode("ok ü", false).unwrap();
        ids.pop();
        let (_, all) = stream(&t, &ids, true);
        assert_eq!(all, t.decode(&ids, true).unwrap());
        assert!(all.ends_with('\u{FFFD}'));
    }

    #[test]
    fn long_streams_stay_consistent_after_compaction() {
        let t = Tokenizer::tiny(TokenizerFamily::Qwen2).unwrap();
        let text = "héllo wörld 你好 ".repeat(600);
        let ids = t.encode(&text, false).unwrap();
        let (_, all) = stream(&t, &ids, true);
        assert_eq!(all, text);
    }
}
