//! Structured output: an answer held to a JSON schema, to any JSON object, to a regular
//! expression or to a Lark grammar, by masking at every step the tokens that cannot continue
//! it. The grammar work is llguidance's (an Earley parser over a derivative-based lexer, walked
//! against a trie of the vocabulary's bytes); this module gives it a model's vocabulary, once
//! per model, and keeps one matcher per sequence.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{
    ApproximateTokEnv, InferenceCapabilities, SimpleVob, TokRxInfo, TokTrie,
};
use llguidance::{Matcher, ParserFactory};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// What an answer must be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputConstraint {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// A JSON value that this JSON schema accepts.
    JsonSchema { schema: Value },
    /// Text that this regular expression matches as a whole.
    Regex { pattern: String },
    /// A grammar in llguidance's Lark dialect, which can embed JSON schemas (`%json { … }`).
    Lark { grammar: String },
}

impl OutputConstraint {
    /// Whether a complete answer is JSON (the cascade checks such answers parse).
    pub fn is_json(&self) -> bool {
        matches!(
            self,
            OutputConstraint::JsonObject | OutputConstraint::JsonSchema { .. }
        )
    }

    fn grammar(&self) -> TopLevelGrammar {
        match self {
            OutputConstraint::JsonObject => {
                TopLevelGrammar::from_json_schema(json_style(json!({"type": "object"})))
            }
            OutputConstraint::JsonSchema { schema } => {
                TopLevelGrammar::from_json_schema(json_style(schema.clone()))
            }
            OutputConstraint::Regex { pattern } => TopLevelGrammar::from_regex(pattern),
            OutputConstraint::Lark { grammar } => TopLevelGrammar::from_lark(grammar.clone()),
        }
    }
}

/// How generated JSON is laid out unless the schema says otherwise (llguidance's `x-guidance`
/// key): `", "` and `": "` between items, and no other whitespace. Free whitespace lets a small
/// model pad an answer with newlines until `max_tokens`; one fixed layout, the one Python's
/// `json.dumps` writes, is what models saw most.
pub fn json_style(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema
        && !map.contains_key("x-guidance")
    {
        map.insert(
            "x-guidance".into(),
            json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}

/// A model's vocabulary as the constraint engine sees it; built once per model (it walks every
/// token) and shared by its sequences.
pub struct Grammars {
    factory: ParserFactory,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars")
            .field("vocab", &self.factory.tok_env().tok_trie().vocab_size())
            .finish()
    }
}

fn constraint_err(e: impl std::fmt::Display) -> Error {
    Error::Constraint(e.to_string())
}

impl Grammars {
    /// `eos`: the ids that end an answer; the mask allows them once the grammar is complete.
    pub fn new(tokenizer: &Tokenizer, eos: &[u32]) -> Result<Self> {
        let words = tokenizer.token_bytes()?;
        let Some(&first_eos) = eos.first() else {
            return Err(Error::Constraint(
                "the model has no end-of-sequence token, so a constrained answer could not end"
                    .into(),
            ));
        };
        if let Some(&bad) = eos.iter().find(|&&e| e as usize >= words.len()) {
            return Err(Error::Constraint(format!(
                "end-of-sequence id {bad} is outside the vocabulary of {} tokens",
                words.len()
            )));
        }
        let vocab_size = u32::try_from(words.len())
            .map_err(|_| Error::Constraint("the vocabulary has too many tokens".into()))?;
        let info = TokRxInfo {
            vocab_size,
            tok_eos: first_eos,
            tok_bos: tokenizer.bos_id(),
            tok_pad: tokenizer.pad_id(),
            tok_unk: tokenizer.unk_id(),
            tok_end_of_turn: None,
        };
        let trie = TokTrie::from(&info, &words).with_eos_tokens(eos);
        // Not the model's own tokenizer: llguidance then never forces tokens by re-tokenizing
        // text (which, with a SentencePiece space prefix, would add a space), it only masks.
        let env = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new(
            &(env as llguidance::toktrie::TokEnv),
            InferenceCapabilities::default(),
            &llguidance::earley::SlicedBiasComputer::general_slices(),
        )
        .map_err(constraint_err)?;
        factory.quiet();
        Ok(Grammars { factory })
    }

    /// Compiles `c` for a new answer; an invalid or unsupported schema or grammar is an error
    /// that says why.
    pub fn start(&self, c: &OutputConstraint) -> Result<Constraint> {
        let parser = self
            .factory
            .create_parser(c.grammar())
            .map_err(constraint_err)?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(Error::Constraint(e));
        }
        Ok(Constraint {
            matcher,
            json: c.is_json(),
        })
    }
}

/// One answer's progress through its grammar.
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
    json: bool,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("json", &self.json)
            .field("stopped", &self.matcher.is_stopped())
            .finish()
    }
}

impl Constraint {
    /// Sets to minus infinity the logits of the tokens that cannot come next (end-of-sequence
    /// ids are allowed only where the grammar may end).
    pub fn restrict(&mut self, logits: &mut [f32]) -> Result<()> {
        let mask = self.matcher.compute_mask_or_eos().map_err(constraint_err)?;
        apply(&mask, logits);
        if logits.iter().all(|l| *l == f32::NEG_INFINITY) {
            return Err(Error::Constraint(
                "no token of the vocabulary can continue the answer".into(),
            ));
        }
        Ok(())
    }

    /// Moves past a token the mask allowed.
    pub fn commit(&mut self, id: u32) -> Result<()> {
        self.matcher.consume_token(id).map_err(constraint_err)
    }

    /// The grammar is complete and nothing may follow: the answer is over.
    pub fn finished(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// Whether the answer is JSON.
    pub fn is_json(&self) -> bool {
        self.json
    }
}

fn apply(mask: &SimpleVob, logits: &mut [f32]) {
    for (i, l) in logits.iter_mut().enumerate() {
        if !mask.is_allowed(i as u32) {
            *l = f32::NEG_INFINITY;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::TokenizerFamily;

    /// Greedy decoding where the "model" always prefers the same byte: the mask alone decides
    /// what comes out, and the answer must parse as the schema says.
    fn drive(tok: &Tokenizer, c: &OutputConstraint, prefer: u32, steps: usize) -> String {
        let g = Grammars::new(tok, tok.eos_ids()).unwrap();
        let mut con = g.start(c).unwrap();
        let mut ids = Vec::new();
        for _ in 0..steps {
            let mut logits: Vec<f32> = (0..tok.vocab_size())
                .map(|i| if i as u32 == prefer { 1.0 } else { 0.0 })
                .collect();
            con.restrict(&mut logits).unwrap();
            let best = logits
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i as u32)
                .unwrap();
            if tok.eos_ids().contains(&best) {
                break;
            }
            con.commit(best).unwrap();
            ids.push(best);
            if con.finished() {
                break;
            }
        }
        tok.decode(&ids, false).unwrap()
    }

    #[test]
    fn masks_hold_answers_to_the_schema_in_both_vocabulary_families() {
        let schema = OutputConstraint::JsonSchema {
            schema: json!({
                "type": "object",
                "properties": {
                    "n": {"type": "integer", "minimum": 0, "maximum": 9},
                    "ok": {"type": "boolean"}
                },
                "required": ["n", "ok"],
                "additionalProperties": false
            }),
        };
        for family in [TokenizerFamily::Llama, TokenizerFamily::Qwen2] {
            let tok = Tokenizer::tiny(family).unwrap();
            // The model would say "7" forever; the grammar makes an object of it.
            let seven = *tok.encode("7", false).unwrap().last().unwrap();
            let out = drive(&tok, &schema, seven, 200);
            let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{out:?}: {e}"));
            assert!(v["n"].is_i64(), "{out}");
            assert!(v["ok"].is_boolean(), "{out}");
            assert!(out.starts_with("{\"n\": 7"), "{family:?}: {out}");
        }
    }

    #[test]
    fn a_regex_and_a_json_object_end_where_the_grammar_does() {
        let tok = Tokenizer::tiny(TokenizerFamily::Qwen2).unwrap();
        let a = *tok.encode("a", false).unwrap().last().unwrap();
        let re = OutputConstraint::Regex {
            pattern: "a{3}b".into(),
        };
        assert_eq!(drive(&tok, &re, a, 50), "aaab");
        let obj = drive(&tok, &OutputConstraint::JsonObject, a, 200);
        assert!(
            serde_json::from_str::<serde_json::Map<String, Value>>(&obj).is_ok(),
            "{obj}"
        );
    }

    #[test]
    fn special_tokens_never_appear_inside_constrained_text() {
        let tok = Tokenizer::tiny(TokenizerFamily::Qwen2).unwrap();
        let g = Grammars::new(&tok, tok.eos_ids()).unwrap();
        let mut c = g
            .start(&OutputConstraint::Regex {
                pattern: "(.|\n)*".into(),
            })
            .unwrap();
        let mut logits = vec![0.0; tok.vocab_size()];
        c.restrict(&mut logits).unwrap();
        // <|im_start|> (257) is a control token: not text, never allowed; the end-of-turn
        // and end-of-text ids are allowed, since the grammar may end here.
        assert_eq!(logits[257], f32::NEG_INFINITY);
        assert_eq!(logits[258], 0.0);
        assert_eq!(logits[256], 0.0);
    }

    #[test]
    fn bad_schemas_and_grammars_are_errors_that_say_why() {
        let tok = Tokenizer::tiny(TokenizerFamily::Qwen2).unwrap();
        let g = Grammars::new(&tok, tok.eos_ids()).unwrap();
        for (c, needle) in [
            (
                OutputConstraint::JsonSchema {
                    schema: json!({"type": "no-such-type"}),
                },
                "no-such-type",
            ),
            (
                OutputConstraint::Regex {
                    pattern: "(unclosed".into(),
                },
                "",
            ),
            (
                OutputConstraint::Lark {
                    grammar: "start: undefined_rule".into(),
                },
                "undefined_rule",
            ),
        ] {
            let e = g.start(&c).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
        let e = Grammars::new(&tok, &[]).unwrap_err().to_string();
        assert!(e.contains("no end-of-sequence"), "{e}");
    }
}
