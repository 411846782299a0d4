//! The text side of a model, apart from its weights: tokenizer, chat template and special
//! tokens. It is a cheap, cloneable handle, so a server encodes requests on its async side with
//! the same tokenizer the generation core detokenizes with, one per model.

use std::sync::{Arc, OnceLock};

use crate::constrain::{Constraint, Grammars, OutputConstraint};
use crate::detok::Detokenizer;
use crate::template::{ChatTemplate, Message};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// How a model turns messages and text into token ids and back.
#[derive(Clone)]
pub struct Prompter {
    inner: Arc<Inner>,
}

struct Inner {
    tokenizer: Arc<Tokenizer>,
    template: Option<Arc<ChatTemplate>>,
    /// Whether plain (non-chat) prompts start with BOS, as the tokenizer config asks.
    add_bos: bool,
    bos_token: Option<String>,
    eos_token: Option<String>,
    eos_ids: Vec<u32>,
    /// The model's source, for error messages.
    source: String,
    /// The vocabulary as the constraint engine needs it, built on the first structured request
    /// (it walks every token once).
    grammars: OnceLock<std::result::Result<Arc<Grammars>, String>>,
}

/// What [`Prompter::new`] is made from.
pub struct PrompterParts {
    pub tokenizer: Tokenizer,
    pub template: Option<ChatTemplate>,
    pub add_bos: bool,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    /// Token ids that end an answer.
    pub eos_ids: Vec<u32>,
    pub source: String,
}

impl Prompter {
    pub fn new(p: PrompterParts) -> Self {
        Prompter {
            inner: Arc::new(Inner {
                tokenizer: Arc::new(p.tokenizer),
                template: p.template.map(Arc::new),
                add_bos: p.add_bos,
                bos_token: p.bos_token,
                eos_token: p.eos_token,
                eos_ids: p.eos_ids,
                source: p.source,
                grammars: OnceLock::new(),
            }),
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }

    pub fn template(&self) -> Option<&ChatTemplate> {
        self.inner.template.as_deref()
    }

    pub fn has_template(&self) -> bool {
        self.inner.template.is_some()
    }

    pub fn add_bos(&self) -> bool {
        self.inner.add_bos
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.inner.bos_token.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.inner.eos_token.as_deref()
    }

    /// Token ids that end an answer.
    /// The same prompt side with other end-of-sequence ids (tokenizer and template shared): what
    /// a caller that stops on its own tokens, or a test that makes a token the end, needs.
    pub fn with_eos_ids(&self, eos_ids: Vec<u32>) -> Prompter {
        let i = &self.inner;
        Prompter {
            inner: Arc::new(Inner {
                tokenizer: Arc::clone(&i.tokenizer),
                template: i.template.clone(),
                add_bos: i.add_bos,
                bos_token: i.bos_token.clone(),
                eos_token: i.eos_token.clone(),
                eos_ids,
                source: i.source.clone(),
                grammars: OnceLock::new(),
            }),
        }
    }

    pub fn eos_ids(&self) -> &[u32] {
        &self.inner.eos_ids
    }

    /// Renders messages with the model's own chat template.
    pub fn render_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let t = self.template().ok_or_else(|| {
            Error::Template(format!(
                "{} has no chat template; use a plain prompt",
                self.inner.source
            ))
        })?;
        t.render(
            messages,
            add_generation_prompt,
            self.bos_token(),
            self.eos_token(),
        )
    }

    /// Token ids of a chat: the rendered template already holds any BOS it wants, so no special
    /// tokens are added (as transformers' `apply_chat_template` does).
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let text = self.render_chat(messages, true)?;
        self.tokenizer().encode(&text, false)
    }

    /// Token ids of a plain prompt, with BOS where the model expects one.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer().encode(text, self.add_bos())
    }

    /// A token's text on its own, as log-probabilities report it.
    pub fn token_text(&self, id: u32) -> String {
        self.tokenizer().decode(&[id], false).unwrap_or_default()
    }

    /// Compiles a response format for one answer of this model.
    pub fn constraint(&self, c: &OutputConstraint) -> Result<Constraint> {
        let grammars = self
            .inner
            .grammars
            .get_or_init(|| {
                Grammars::new(self.tokenizer(), self.eos_ids())
                    .map(Arc::new)
                    .map_err(|e| match e {
                        Error::Constraint(m) => m,
                        other => other.to_string(),
                    })
            })
            .as_ref()
            .map_err(|e| Error::Constraint(e.clone()))?;
        grammars.start(c)
    }

    /// A streaming detokenizer that leaves special tokens out of the text.
    pub fn detokenizer(&self) -> Detokenizer {
        Detokenizer::new(self.inner.tokenizer.clone())
    }
}
