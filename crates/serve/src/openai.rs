//! The OpenAI wire format: request bodies parsed with the path of any field at fault, checked,
//! and turned into a [`GenRequest`]; response bodies and stream chunks built from events.
//!
//! Accepted beyond OpenAI's own fields, as vLLM accepts them: `top_k`, `min_p`,
//! `repetition_penalty`, `ignore_eos`. Unknown fields are ignored, as OpenAI does, except the
//! OpenAI fields bakeoff does not implement whose silent omission would change the answer
//! (logit biases, audio…): those are refused by name ([`refuse_unsupported`]).

use bakeoff_engine::sampling::SamplingParams;
use bakeoff_engine::template::{FunctionCall, Message, ToolCall};
use bakeoff_engine::tools::{ToolChoice, ToolSet};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use bakeoff_engine::constrain::OutputConstraint;

use crate::backend::{DoneOut, GenRequest, Input, ResponseFormat, TopLogprob};
use crate::error::ApiError;

/// Roles the chat templates understand. `developer` (OpenAI's newer name) becomes `system`.
pub const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];
/// OpenAI's limit on stop sequences.
const MAX_STOPS: usize = 4;
/// OpenAI's limit on `top_logprobs`.
const MAX_TOP_LOGPROBS: usize = 20;

/// Parses a JSON body, naming the field at fault: `messages[0].content: invalid type: ...`.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    from_value(&parse_json(bytes)?)
}

/// The body as a JSON object; syntax errors say where they are.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ApiError::invalid(format!(
            "the request body is not valid UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    if text.trim().is_empty() {
        return Err(ApiError::invalid(
            "the request body is empty; send a JSON object",
        ));
    }
    let v: Value = serde_json::from_str(text)
        .map_err(|e| ApiError::invalid(format!("malformed JSON in the request body: {e}")))?;
    if !v.is_object() {
        return Err(ApiError::invalid(format!(
            "the request body must be a JSON object, not {}",
            json_type(&v)
        )));
    }
    Ok(v)
}

/// Typed view of a JSON value, with the path of a field of the wrong type.
fn from_value<T: DeserializeOwned>(v: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::invalid(format!("invalid request body: {inner}"))
        } else {
            ApiError::invalid_param(path.clone(), format!("`{path}`: {inner}"))
        }
    })
}

/// Chat request: its own fields, then the shared ones from the same object. (Not one struct
/// with `#[serde(flatten)]`: flattening loses the path of the field at fault.)
pub fn parse_chat(bytes: &[u8]) -> Result<ChatCompletionRequest, ApiError> {
    let v = parse_json(bytes)?;
    refuse_unsupported(&v, UNSUPPORTED_CHAT)?;
    let mut r: ChatCompletionRequest = from_value(&v)?;
    r.common = from_value(&v)?;
    Ok(r)
}

pub fn parse_completion(bytes: &[u8]) -> Result<CompletionRequest, ApiError> {
    let v = parse_json(bytes)?;
    refuse_unsupported(&v, UNSUPPORTED_COMPLETION)?;
    let mut r: CompletionRequest = from_value(&v)?;
    r.common = from_value(&v)?;
    Ok(r)
}

/// OpenAI chat fields that change what the answer must be and that bakeoff does not implement,
/// with why. Sent with a value that asks for nothing (null, an empty list, `tool_choice: "none"`,
/// `modalities: ["text"]`, `parallel_tool_calls`), they are accepted.
const UNSUPPORTED_CHAT: &[(&str, &str)] = &[
    (
        "functions",
        "the legacy `functions` field is not supported; use `tools`",
    ),
    (
        "function_call",
        "the legacy `function_call` field is not supported; use `tool_choice`",
    ),
    ("logit_bias", "logit biases are not supported"),
    ("audio", "audio output is not supported"),
    ("modalities", "only text output is supported"),
    ("prediction", "predicted outputs are not supported"),
    ("web_search_options", "web search is not supported"),
];

/// The same for `/v1/completions`.
const UNSUPPORTED_COMPLETION: &[(&str, &str)] = &[
    ("logit_bias", "logit biases are not supported"),
    ("best_of", "`best_of` above 1 is not supported"),
];

/// Refuses, by name, a field of `unsupported` that asks for something.
pub fn refuse_unsupported(body: &Value, unsupported: &[(&str, &str)]) -> Result<(), ApiError> {
    for &(field, why) in unsupported {
        let asks = match (field, body.get(field)) {
            (_, None | Some(Value::Null)) => false,
            ("tool_choice", Some(Value::String(s))) => s != "none",
            ("modalities", Some(Value::Array(a))) => a.iter().any(|m| m != "text"),
            ("best_of", Some(v)) => v.as_u64() != Some(1),
            (_, Some(Value::Array(a))) => !a.is_empty(),
            (_, Some(Value::Object(o))) => !o.is_empty(),
            _ => true,
        };
        if asks {
            return Err(ApiError::invalid_param(field, format!("`{field}`: {why}")));
        }
    }
    Ok(())
}

#[derive(Deserialize, Debug, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// `stop`: a string or a list of strings.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Debug)]
pub struct ChatMessageIn {
    pub role: String,
    /// A string, or a list of content parts of which only `text` parts are supported.
    #[serde(default)]
    pub content: Value,
    #[serde(default)]
    pub name: Option<String>,
    /// An assistant turn's calls: `[{"id", "type": "function", "function": {"name", "arguments"}}]`.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallIn>>,
    /// A `tool` turn's answer to this call.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

#[derive(Deserialize, Debug)]
pub struct ToolCallIn {
    #[serde(default)]
    pub id: Option<String>,
    pub function: FunctionIn,
}

#[derive(Deserialize, Debug)]
pub struct FunctionIn {
    pub name: String,
    /// JSON text, as OpenAI sends it.
    #[serde(default)]
    pub arguments: Option<String>,
}

/// Sampling and length fields shared by both endpoints.
#[derive(Deserialize, Debug, Default)]
pub struct Common {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub n: Option<u32>,
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub min_p: Option<f32>,
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub ignore_eos: Option<bool>,
}

#[derive(Deserialize, Debug)]
pub struct ChatCompletionRequest {
    pub messages: Vec<ChatMessageIn>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    #[serde(default)]
    pub response_format: Option<Value>,
    #[serde(default)]
    pub tools: Option<Value>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(skip)]
    pub common: Common,
}

#[derive(Deserialize, Debug)]
pub struct CompletionRequest {
    pub prompt: Value,
    /// For completions, the number of top log-probabilities (0 = only the chosen token's).
    #[serde(default)]
    pub logprobs: Option<u32>,
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(default)]
    pub suffix: Option<String>,
    /// Not OpenAI's for completions; accepted as for chat (llama.cpp and vLLM take one too).
    #[serde(default)]
    pub response_format: Option<Value>,
    #[serde(skip)]
    pub common: Common,
}

/// What the HTTP layer needs besides the generation request.
#[derive(Clone, Debug)]
pub struct Shape {
    pub stream: bool,
    pub include_usage: bool,
    /// The client asked for log-probabilities (the cascade may compute them anyway).
    pub logprobs: bool,
    /// Completions with `echo`: the prompt's text (and log-probabilities) come first.
    pub echo: bool,
    /// Choices to generate (`n`) per prompt, each with a seed of its own.
    pub n: usize,
    /// The prompts after the first of a completions request that sends several; each gets `n`
    /// choices, numbered on from the first prompt's (OpenAI's order).
    pub prompts: Vec<Input>,
}

fn content_text(c: &Value, i: usize, role: &str) -> Result<String, ApiError> {
    let param = format!("messages[{i}].content");
    match c {
        Value::String(s) => Ok(s.clone()),
        // Assistant turns that only called tools have no content.
        Value::Null if role == "assistant" || role == "tool" => Ok(String::new()),
        Value::Null => Err(ApiError::invalid_param(
            &param,
            format!("`{param}` is missing"),
        )),
        Value::Array(parts) => {
            let mut out = String::new();
            for (j, p) in parts.iter().enumerate() {
                let kind = p.get("type").and_then(Value::as_str).unwrap_or("");
                match (kind, p.get("text")) {
                    ("text", Some(Value::String(t))) => out.push_str(t),
                    ("text", _) => {
                        return Err(ApiError::invalid_param(
                            format!("{param}[{j}].text"),
                            format!("`{param}[{j}].text` must be a string"),
                        ));
                    }
                    (other, _) => {
                        return Err(ApiError::invalid_param(
                            format!("{param}[{j}].type"),
                            format!(
                                "`{param}[{j}]`: content parts of type `{other}` are not supported (text only)"
                            ),
                        ));
                    }
                }
            }
            Ok(out)
        }
        other => Err(ApiError::invalid_param(
            &param,
            format!(
                "`{param}` must be a string or a list of text parts, not {}",
                json_type(other)
            ),
        )),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `zero_tokens`: `max_tokens: 0` is allowed (completions with `echo`, which score the prompt).
/// Most choices one request may ask for (each is a sequence in the batch).
pub const MAX_CHOICES: u32 = 16;

fn check_common(
    c: &Common,
    zero_tokens: bool,
) -> Result<(String, Option<usize>, SamplingParams, Vec<String>), ApiError> {
    if let Some(n) = c.n
        && !(1..=MAX_CHOICES).contains(&n)
    {
        return Err(ApiError::invalid_param(
            "n",
            format!("`n` must be from 1 to {MAX_CHOICES}, got {n}"),
        ));
    }
    for (name, v) in [
        ("frequency_penalty", c.frequency_penalty),
        ("presence_penalty", c.presence_penalty),
    ] {
        if let Some(v) = v
            && v != 0.0
        {
            return Err(ApiError::invalid_param(
                name,
                format!("`{name}` is not supported (use `repetition_penalty`); got {v}"),
            ));
        }
    }
    let max_tokens = match (c.max_completion_tokens, c.max_tokens) {
        (Some(m), _) | (None, Some(m)) => {
            if m == 0 && !zero_tokens {
                return Err(ApiError::invalid_param(
                    "max_tokens",
                    "`max_tokens` must be at least 1 (0 only with `echo` on /v1/completions)",
                ));
            }
            Some(usize::try_from(m).unwrap_or(usize::MAX))
        }
        (None, None) => None,
    };
    let stop = match &c.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stop.len() > MAX_STOPS {
        return Err(ApiError::invalid_param(
            "stop",
            format!("at most {MAX_STOPS} stop sequences, got {}", stop.len()),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid_param(
            "stop",
            "stop sequences must not be empty strings",
        ));
    }
    // OpenAI's default temperature is 1; 0 is greedy.
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid_param(
            "temperature",
            format!("`temperature` must be in [0, 2], got {temperature}"),
        ));
    }
    let sampling = SamplingParams {
        temperature,
        top_k: c.top_k.unwrap_or(0),
        top_p: c.top_p.unwrap_or(1.0),
        min_p: c.min_p.unwrap_or(0.0),
        repetition_penalty: c.repetition_penalty.unwrap_or(1.0),
        seed: match c.seed {
            Some(s) => s as u64,
            None => fresh_seed(),
        },
    };
    sampling.validate().map_err(|e| {
        let msg = e.to_string();
        let msg = msg
            .strip_prefix("invalid argument: ")
            .unwrap_or(&msg)
            .to_string();
        ApiError::invalid(msg)
    })?;
    let model = c.model.clone().unwrap_or_else(|| "auto".to_string());
    if model.trim().is_empty() {
        return Err(ApiError::invalid_param(
            "model",
            "`model` must not be empty (use \"auto\" to let the router choose)",
        ));
    }
    Ok((model, max_tokens, sampling, stop))
}

/// Without a seed, sampled answers differ from call to call, as with OpenAI.
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

fn shape(c: &Common, logprobs: bool) -> Shape {
    let stream = c.stream.unwrap_or(false);
    Shape {
        stream,
        include_usage: stream
            && c.stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
        logprobs,
        echo: false,
        n: c.n.map_or(1, |n| n as usize),
        prompts: Vec::new(),
    }
}

impl ChatCompletionRequest {
    pub fn validate(self) -> Result<(GenRequest, Shape), ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid_param(
                "messages",
                "`messages` is empty; send at least one message",
            ));
        }
        let mut messages = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.iter().enumerate() {
            if !ROLES.contains(&m.role.as_str()) {
                return Err(ApiError::invalid_param(
                    format!("messages[{i}].role"),
                    format!(
                        "`messages[{i}].role` is `{}`; use one of {}",
                        m.role,
                        ROLES.join(", ")
                    ),
                ));
            }
            let role = if m.role == "developer" {
                "system"
            } else {
                m.role.as_str()
            };
            let mut msg = Message::new(role, content_text(&m.content, i, &m.role)?);
            for (j, c) in m.tool_calls.iter().flatten().enumerate() {
                let text = c.function.arguments.as_deref().unwrap_or("{}");
                // Templates print the arguments with `tojson`: an object, not a string of one.
                let arguments = serde_json::from_str(text).unwrap_or(Value::String(text.into()));
                msg.tool_calls.push(ToolCall {
                    id: c.id.clone().unwrap_or_else(|| format!("call_{i}_{j}")),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: c.function.name.clone(),
                        arguments,
                    },
                });
            }
            msg.tool_call_id = m.tool_call_id.clone();
            msg.name = m.name.clone().filter(|_| m.role == "tool");
            messages.push(msg);
        }
        let top = self.top_logprobs.map(|k| k as usize);
        if let Some(k) = top {
            if k > MAX_TOP_LOGPROBS {
                return Err(ApiError::invalid_param(
                    "top_logprobs",
                    format!("`top_logprobs` must be at most {MAX_TOP_LOGPROBS}"),
                ));
            }
            if self.logprobs != Some(true) {
                return Err(ApiError::invalid_param(
                    "top_logprobs",
                    "`top_logprobs` needs `logprobs: true`",
                ));
            }
        }
        let response_format = response_format(self.response_format.as_ref())?;
        let tools = tool_set(
            self.tools.as_ref(),
            self.tool_choice.as_ref(),
            self.parallel_tool_calls,
        )?;
        let (model, max_tokens, sampling, stop) = check_common(&self.common, false)?;
        let logprobs = self.logprobs == Some(true);
        let req = GenRequest {
            model,
            input: Input::Chat(messages),
            max_tokens,
            sampling,
            stop,
            ignore_eos: self.common.ignore_eos.unwrap_or(false),
            logprobs: logprobs.then_some(top.unwrap_or(0)),
            response_format,
            tools,
            echo: false,
        };
        Ok((req, shape(&self.common, logprobs)))
    }
}

/// `response_format`: `text`, `json_object` (with an optional `schema`, as llama.cpp takes
/// it), `json_schema` (OpenAI's structured outputs; enforced whether `strict` or not), and two
/// bakeoff extensions: `{"type": "regex", "pattern": …}` and `{"type": "grammar", "grammar": …}`
/// (a Lark grammar in llguidance's dialect). Whether a schema or grammar compiles is checked
/// when the request reaches its model.
fn response_format(v: Option<&Value>) -> Result<Option<ResponseFormat>, ApiError> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let field = |name: &str| -> Result<&Value, ApiError> {
        v.get(name).ok_or_else(|| {
            ApiError::invalid_param(
                format!("response_format.{name}"),
                format!("`response_format.{name}` is missing"),
            )
        })
    };
    let string = |name: &str| -> Result<String, ApiError> {
        field(name)?.as_str().map(str::to_string).ok_or_else(|| {
            ApiError::invalid_param(
                format!("response_format.{name}"),
                format!("`response_format.{name}` must be a string"),
            )
        })
    };
    let schema = |s: &Value, param: &str| -> Result<Value, ApiError> {
        if s.is_object() || s.is_boolean() {
            Ok(s.clone())
        } else {
            Err(ApiError::invalid_param(
                param,
                format!(
                    "`{param}` must be a JSON schema (an object), not {}",
                    json_type(s)
                ),
            ))
        }
    };
    let constraint = match v.get("type").and_then(Value::as_str) {
        Some("text") => return Ok(None),
        Some("json_object") => match v.get("schema") {
            None | Some(Value::Null) => OutputConstraint::JsonObject,
            Some(s) => OutputConstraint::JsonSchema {
                schema: schema(s, "response_format.schema")?,
            },
        },
        Some("json_schema") => {
            let js = field("json_schema")?;
            if !js.is_object() {
                return Err(ApiError::invalid_param(
                    "response_format.json_schema",
                    "`response_format.json_schema` must be an object with `name` and `schema`",
                ));
            }
            OutputConstraint::JsonSchema {
                // OpenAI's `schema` is optional: without one, any JSON value.
                schema: match js.get("schema") {
                    None | Some(Value::Null) => Value::Object(Default::default()),
                    Some(s) => schema(s, "response_format.json_schema.schema")?,
                },
            }
        }
        Some("regex") => OutputConstraint::Regex {
            pattern: string("pattern")?,
        },
        Some("grammar") => OutputConstraint::Lark {
            grammar: string("grammar")?,
        },
        _ => {
            return Err(ApiError::invalid_param(
                "response_format.type",
                "`response_format.type` must be `text`, `json_object`, `json_schema`, `regex` or `grammar`",
            ));
        }
    };
    Ok(Some(ResponseFormat {
        constraint,
        wire: v.clone(),
    }))
}

/// `tools`, `tool_choice` and `parallel_tool_calls`. No tools, or `tool_choice: "none"`, is
/// None: the model is not offered any.
fn tool_set(
    tools: Option<&Value>,
    choice: Option<&Value>,
    parallel: Option<bool>,
) -> Result<Option<ToolSet>, ApiError> {
    let list = match tools {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(other) => {
            return Err(ApiError::invalid_param(
                "tools",
                format!("`tools` must be a list, not {}", json_type(other)),
            ));
        }
    };
    let mut names = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let param = format!("tools[{i}]");
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::invalid_param(
                format!("{param}.type"),
                format!("`{param}.type` must be `function` (the only kind of tool)"),
            ));
        }
        let f = t.get("function").filter(|f| f.is_object()).ok_or_else(|| {
            ApiError::invalid_param(
                format!("{param}.function"),
                format!("`{param}.function` must be an object with a `name`"),
            )
        })?;
        let name = f.get("name").and_then(Value::as_str).unwrap_or("");
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(ApiError::invalid_param(
                format!("{param}.function.name"),
                format!(
                    "`{param}.function.name` must be 1 to 64 letters, digits, `_` or `-`, got {name:?}"
                ),
            ));
        }
        if names.contains(&name) {
            return Err(ApiError::invalid_param(
                format!("{param}.function.name"),
                format!("two tools are named `{name}`"),
            ));
        }
        names.push(name);
        if let Some(p) = f
            .get("parameters")
            .filter(|p| !p.is_null() && !p.is_object())
        {
            return Err(ApiError::invalid_param(
                format!("{param}.function.parameters"),
                format!(
                    "`{param}.function.parameters` must be a JSON schema (an object), not {}",
                    json_type(p)
                ),
            ));
        }
    }
    let choice = match choice {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) if s == "auto" => ToolChoice::Auto,
        Some(Value::String(s)) if s == "none" => return Ok(None),
        Some(Value::String(s)) if s == "required" => ToolChoice::Required,
        Some(v) => match v.pointer("/function/name").and_then(Value::as_str) {
            Some(name) if v.get("type").and_then(Value::as_str) == Some("function") => {
                if !names.contains(&name) {
                    return Err(ApiError::invalid_param(
                        "tool_choice",
                        format!("`tool_choice` names `{name}`, which is not among `tools`"),
                    ));
                }
                ToolChoice::Function(name.to_string())
            }
            _ => {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    "`tool_choice` must be `none`, `auto`, `required` or {\"type\": \"function\", \"function\": {\"name\": …}}",
                ));
            }
        },
    };
    if list.is_empty() {
        if choice != ToolChoice::Auto {
            return Err(ApiError::invalid_param(
                "tool_choice",
                "`tool_choice` asks for a call but `tools` is empty",
            ));
        }
        return Ok(None);
    }
    Ok(Some(ToolSet {
        tools: list,
        choice,
        parallel: parallel.unwrap_or(true),
    }))
}

/// Most prompts one completions request may carry (each is a sequence, times `n`).
pub const MAX_PROMPTS: usize = 64;

/// A completions `prompt`: a string, token ids, or a list of either (several prompts, as
/// lm-evaluation-harness sends with `batch_size` above 1).
fn completion_prompts(v: &Value) -> Result<Vec<Input>, ApiError> {
    let bad_ids =
        |p: &str| ApiError::invalid_param(p, "token ids must be integers from 0 to 2^32-1");
    let ids = |a: &[Value], p: &str| -> Result<Vec<u32>, ApiError> {
        a.iter()
            .map(|x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| bad_ids(p))
    };
    let inputs = match v {
        Value::String(s) => vec![Input::Text(s.clone())],
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_number) => {
            vec![Input::Tokens(ids(a, "prompt")?)]
        }
        Value::Array(a) if !a.is_empty() && a.iter().all(|x| x.is_string() || x.is_array()) => {
            let mut out = Vec::with_capacity(a.len());
            for (i, x) in a.iter().enumerate() {
                let p = format!("prompt[{i}]");
                out.push(match x {
                    Value::String(s) => Input::Text(s.clone()),
                    Value::Array(inner) => Input::Tokens(ids(inner, &p)?),
                    _ => unreachable!("filtered above"),
                });
            }
            out
        }
        other => {
            return Err(ApiError::invalid_param(
                "prompt",
                format!(
                    "`prompt` must be a string, token ids, or a list of either, not {}",
                    if matches!(other, Value::Array(a) if a.is_empty()) {
                        "an empty list"
                    } else {
                        json_type(other)
                    }
                ),
            ));
        }
    };
    if inputs.len() > MAX_PROMPTS {
        return Err(ApiError::invalid_param(
            "prompt",
            format!(
                "at most {MAX_PROMPTS} prompts per request, got {}",
                inputs.len()
            ),
        ));
    }
    for (i, input) in inputs.iter().enumerate() {
        let empty = match input {
            Input::Text(t) => t.is_empty(),
            Input::Tokens(t) => t.is_empty(),
            Input::Chat(m) => m.is_empty(),
        };
        if empty {
            let p = if inputs.len() == 1 {
                "prompt".to_string()
            } else {
                format!("prompt[{i}]")
            };
            return Err(ApiError::invalid_param(&p, format!("`{p}` is empty")));
        }
    }
    Ok(inputs)
}

impl CompletionRequest {
    pub fn validate(self) -> Result<(GenRequest, Shape), ApiError> {
        let mut inputs = completion_prompts(&self.prompt)?.into_iter();
        let Some(input) = inputs.next() else {
            return Err(ApiError::invalid_param("prompt", "`prompt` is empty"));
        };
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::invalid_param(
                "suffix",
                "`suffix` is not supported",
            ));
        }
        let top = self.logprobs.map(|k| k as usize);
        if top.is_some_and(|k| k > 5) {
            return Err(ApiError::invalid_param(
                "logprobs",
                "`logprobs` must be at most 5 for completions",
            ));
        }
        let echo = self.echo == Some(true);
        let (model, max_tokens, sampling, stop) = check_common(&self.common, echo)?;
        // The completions API defaults to 16 tokens.
        let max_tokens = max_tokens.or(Some(16));
        let req = GenRequest {
            model,
            input,
            max_tokens,
            sampling,
            stop,
            ignore_eos: self.common.ignore_eos.unwrap_or(false),
            logprobs: top,
            response_format: response_format(self.response_format.as_ref())?,
            tools: None,
            echo,
        };
        let mut sh = shape(&self.common, top.is_some());
        sh.echo = echo;
        sh.prompts = inputs.collect();
        if (sh.prompts.len() + 1) * sh.n > MAX_PROMPTS {
            return Err(ApiError::invalid_param(
                "n",
                format!("prompts times `n` must be at most {MAX_PROMPTS}"),
            ));
        }
        Ok((req, sh))
    }
}

// ---------------------------------------------------------------- responses

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ApiUsage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptDetails,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct PromptDetails {
    pub cached_tokens: usize,
}

impl ApiUsage {
    pub fn from_done(d: &DoneOut) -> Self {
        ApiUsage {
            prompt_tokens: d.usage.prompt_tokens,
            completion_tokens: d.usage.completion_tokens,
            total_tokens: d.usage.prompt_tokens + d.usage.completion_tokens,
            prompt_tokens_details: PromptDetails {
                cached_tokens: d.usage.cached_tokens,
            },
        }
    }
}

/// One token in a chat `logprobs.content` list.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ChatLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

impl ChatLogprob {
    pub fn new(token: &str, logprob: f32, top: &[TopLogprob]) -> Self {
        ChatLogprob {
            token: token.to_string(),
            logprob,
            bytes: token.as_bytes().to_vec(),
            top_logprobs: top
                .iter()
                .map(|t| ChatTopLogprob {
                    token: t.token.clone(),
                    logprob: t.logprob,
                    bytes: t.token.as_bytes().to_vec(),
                })
                .collect(),
        }
    }
}

/// The legacy completions `logprobs` object.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    /// `null` for an echoed prompt's first token, which nothing predicts.
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<serde_json::Map<String, Value>>>,
    pub text_offset: Vec<usize>,
}

/// A random-looking id, unique within the process (`chatcmpl-…`, `cmpl-…`).
pub fn new_id(prefix: &str) -> String {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let h = RandomState::new().hash_one((n, std::time::SystemTime::now()));
    format!("{prefix}-{h:016x}{n:04x}")
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<(GenRequest, Shape), ApiError> {
        parse_chat(body.as_bytes())?.validate()
    }

    #[test]
    fn fields_that_change_the_answer_are_refused_by_name() {
        let legacy = r#"{"messages": [{"role": "user", "content": "weather?"}],
            "functions": [{"name": "get_weather", "parameters": {}}]}"#;
        let e = chat(legacy).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("functions"));
        assert!(e.message.contains("use `tools`"), "{e:?}");
        let e = chat(
            r#"{"messages": [{"role": "user", "content": "x"}], "logit_bias": {"50256": -100}}"#,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("logit_bias"));
        let e = chat(
            r#"{"messages": [{"role": "user", "content": "x"}], "modalities": ["text", "audio"]}"#,
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("modalities"));
        // Values that ask for nothing pass.
        for ok in [
            r#"{"messages": [{"role": "user", "content": "x"}], "tools": []}"#,
            r#"{"messages": [{"role": "user", "content": "x"}], "tool_choice": "none"}"#,
            r#"{"messages": [{"role": "user", "content": "x"}], "tools": null, "logit_bias": {}}"#,
            r#"{"messages": [{"role": "user", "content": "x"}], "modalities": ["text"]}"#,
        ] {
            assert!(chat(ok).is_ok(), "{ok}");
        }
        let e = parse_completion(br#"{"prompt": "x", "best_of": 3}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("best_of"));
        assert!(parse_completion(br#"{"prompt": "x", "best_of": 1}"#).is_ok());
    }

    #[test]
    fn errors_name_the_field_at_fault() {
        let e = chat(r#"{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}"#)
            .unwrap_err();
        assert!(
            e.message.contains("temperature") && e.message.contains("invalid type"),
            "{e:?}"
        );
        let e = chat(r#"{"messages": [{"role": "wizard", "content": "hi"}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        assert!(e.message.contains("wizard"), "{e:?}");
        let e = chat(r#"{"messages": []}"#).unwrap_err();
        assert!(e.message.contains("empty"), "{e:?}");
        let e = chat(r#"{"messages": [{"role": "user", "content": "hi"}"#).unwrap_err();
        assert!(e.message.contains("malformed JSON"), "{e:?}");
        let e = parse_chat(b"{\"messages\": \"\xff\"}").unwrap_err();
        assert!(e.message.contains("UTF-8"), "{e:?}");
        let e = chat(r#"{"messages": [{"role": "user", "content": 3}]}"#).unwrap_err();
        assert!(e.message.contains("messages[0].content"), "{e:?}");
        let e = chat(r#"{"messages": [{"role": "user", "content": "x"}], "n": 17}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("n"));
        let e = chat(r#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}"#)
            .unwrap_err();
        assert!(e.message.contains("at least 1"), "{e:?}");
        let e =
            chat(r#"{"messages": [{"role": "user", "content": "x"}], "top_p": 0}"#).unwrap_err();
        assert!(e.message.contains("top_p"), "{e:?}");
    }

    #[test]
    fn valid_requests_keep_every_field() {
        let (r, s) = chat(
            r#"{"model": "fast", "messages": [{"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
                "max_completion_tokens": 7, "temperature": 0, "stop": "x", "seed": 3, "stream": true,
                "stream_options": {"include_usage": true}, "logprobs": true, "top_logprobs": 2}"#,
        )
        .unwrap();
        assert_eq!(r.model, "fast");
        assert_eq!(
            r.input,
            Input::Chat(vec![Message::system("be brief"), Message::user("ab")])
        );
        assert_eq!(r.max_tokens, Some(7));
        assert_eq!(r.stop, vec!["x".to_string()]);
        assert_eq!(r.sampling.seed, 3);
        assert_eq!(r.logprobs, Some(2));
        assert!(s.stream && s.include_usage && s.logprobs);
        let (r, s) = parse_completion(br#"{"prompt": ["once"], "logprobs": 1}"#)
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(
            (r.model.as_str(), r.max_tokens, r.logprobs, s.stream),
            ("auto", Some(16), Some(1), false)
        );
    }
}
