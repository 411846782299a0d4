//! `tokenizer_config.json`: the chat template and special-token names that transformers keeps
//! beside tokenizer.json.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A special token as tokenizer_config.json writes it: a bare string, or an AddedToken object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum TokenField {
    Text(String),
    Added {
        content: String,
        #[serde(flatten)]
        rest: serde_json::Map<String, serde_json::Value>,
    },
}

impl TokenField {
    pub fn content(&self) -> &str {
        match self {
            TokenField::Text(s) => s,
            TokenField::Added { content, .. } => content,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct NamedTemplate {
    pub name: String,
    pub template: String,
}

/// `chat_template` is one template, or (for models with a tool-use variant) a list of named ones.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum ChatTemplateField {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct TokenizerConfig {
    #[serde(default)]
    pub chat_template: Option<ChatTemplateField>,
    #[serde(default)]
    pub bos_token: Option<TokenField>,
    #[serde(default)]
    pub eos_token: Option<TokenField>,
    #[serde(default)]
    pub unk_token: Option<TokenField>,
    #[serde(default)]
    pub pad_token: Option<TokenField>,
    #[serde(default)]
    pub add_bos_token: Option<bool>,
    #[serde(default)]
    pub add_eos_token: Option<bool>,
    /// transformers' class name, e.g. "LlamaTokenizer" (whose pipeline transformers rebuilds
    /// from the vocabulary, whatever tokenizer.json says; see [`crate::tokenizer::Tokenizer::apply_config`]).
    #[serde(default)]
    pub tokenizer_class: Option<String>,
    /// LlamaTokenizer: `true` puts `▁` before the text after every special token too (Llama-2's
    /// old behaviour); `false`, transformers 5's default, only at the start of the input.
    #[serde(default)]
    pub legacy: Option<bool>,
    /// LlamaTokenizer: whether a `▁` is put before the text at all (default true).
    #[serde(default)]
    pub add_prefix_space: Option<bool>,
}

impl TokenizerConfig {
    /// Reads tokenizer_config.json. Newer transformers versions save the chat template in a
    /// sibling `chat_template.jinja` instead, so that file is used when the JSON has none.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut cfg = Self::from_json_str(&text).map_err(|e| match e {
            Error::Tokenizer(msg) => Error::format(path, msg),
            other => other,
        })?;
        if cfg.chat_template.is_none()
            && let Some(dir) = path.parent()
        {
            let jinja = dir.join("chat_template.jinja");
            if jinja.is_file() {
                let t = std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?;
                cfg.chat_template = Some(ChatTemplateField::One(t));
            }
        }
        Ok(cfg)
    }

    pub fn from_json_str(text: &str) -> Result<Self> {
        serde_json::from_str(text)
            .map_err(|e| Error::Tokenizer(format!("invalid tokenizer_config.json: {e}")))
    }

    /// The default chat template: the only one, or the one named "default" in a list (the
    /// first entry when none is called that).
    pub fn chat_template(&self) -> Option<String> {
        match self.chat_template.as_ref()? {
            ChatTemplateField::One(s) => Some(s.clone()),
            ChatTemplateField::Named(list) => list
                .iter()
                .find(|t| t.name == "default")
                .or_else(|| list.first())
                .map(|t| t.template.clone()),
        }
    }

    /// A named template from a list ("tool_use", "rag", ...); a single template answers to
    /// "default".
    pub fn chat_template_named(&self, name: &str) -> Option<String> {
        match self.chat_template.as_ref()? {
            ChatTemplateField::One(s) => (name == "default").then(|| s.clone()),
            ChatTemplateField::Named(list) => list
                .iter()
                .find(|t| t.name == name)
                .map(|t| t.template.clone()),
        }
    }

    pub fn bos_token(&self) -> Option<String> {
        self.bos_token.as_ref().map(|t| t.content().to_string())
    }

    pub fn eos_token(&self) -> Option<String> {
        self.eos_token.as_ref().map(|t| t.content().to_string())
    }

    pub fn unk_token(&self) -> Option<String> {
        self.unk_token.as_ref().map(|t| t.content().to_string())
    }

    pub fn pad_token(&self) -> Option<String> {
        self.pad_token.as_ref().map(|t| t.content().to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn string_and_object_tokens() {
        let c = TokenizerConfig::from_json_str(
            r#"{"bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false},
                "eos_token": "</s>", "pad_token": null, "add_bos_token": true,
                "chat_template": "{{ x }}", "model_max_length": 2048}"#,
        )
        .unwrap();
        assert_eq!(c.bos_token().as_deref(), Some("<s>"));
        assert_eq!(c.eos_token().as_deref(), Some("</s>"));
        assert_eq!(c.pad_token(), None);
        assert_eq!(c.add_bos_token, Some(true));
        assert_eq!(c.add_eos_token, None);
        assert_eq!(c.chat_template().as_deref(), Some("{{ x }}"));
    }

    #[test]
    fn named_template_list() {
        let c = TokenizerConfig::from_json_str(
            r#"{"chat_template": [{"name": "tool_use", "template": "T"},
                                  {"name": "default", "template": "D"}]}"#,
        )
        .unwrap();
        assert_eq!(c.chat_template().as_deref(), Some("D"));
        assert_eq!(c.chat_template_named("tool_use").as_deref(), Some("T"));
        assert_eq!(c.bos_token(), None);
    }
}
