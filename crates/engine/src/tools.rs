//! Function calling: offering tools to a model in the way its chat template does, holding its
//! answer to a call when a call is required, and reading the calls back out of the text it
//! writes, while it streams.
//!
//! Templates differ in how they offer tools. Qwen2.5's (and the Hermes family's) lists them in
//! the system turn and asks for `<tool_call>{"name": …, "arguments": …}</tool_call>` blocks;
//! Llama 3.1's asks for a bare `{"name": …, "parameters": …}` object; most small models'
//! templates (SmolLM2, TinyLlama) know no tools at all, and then bakeoff describes the tools in
//! the system turn itself and asks for `<tool_call>` blocks, which a required call enforces.

use serde_json::{Value, json};

use crate::constrain::{OutputConstraint, json_style};
use crate::prompt::Prompter;
use crate::template::{ChatTemplate, Message};
use crate::{Error, Result};

/// How a model's template offers tools and how its answer calls them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolFormat {
    /// The template lists the tools and asks for `<tool_call>` blocks (Qwen2.5, Hermes).
    Hermes,
    /// The template asks for one bare JSON object `{"name": …, "parameters": …}` (Llama 3.1+).
    Llama3Json,
    /// The template ignores tools: bakeoff describes them in the system turn and asks for
    /// `<tool_call>` blocks.
    Injected,
}

impl ToolFormat {
    /// Read off the template's source.
    pub fn of(template: Option<&ChatTemplate>) -> Self {
        let Some(src) = template.map(ChatTemplate::source) else {
            return ToolFormat::Injected;
        };
        if !src.contains("tools") {
            ToolFormat::Injected
        } else if src.contains("<tool_call>") {
            ToolFormat::Hermes
        } else if src.contains("\"parameters\"") || src.contains("<|python_tag|>") {
            ToolFormat::Llama3Json
        } else {
            ToolFormat::Injected
        }
    }

    /// A `<tool_call>` block format (native or injected).
    fn blocks(self) -> bool {
        self != ToolFormat::Llama3Json
    }
}

/// Which calls the answer may or must make.
#[derive(Clone, Debug, PartialEq)]
pub enum ToolChoice {
    /// The model decides whether to call.
    Auto,
    /// At least one call, of any of the tools.
    Required,
    /// A call of this function.
    Function(String),
}

/// The tools of a request: OpenAI tool objects (`{"type": "function", "function": {"name",
/// "description", "parameters"}}`), checked, as templates print them.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSet {
    pub tools: Vec<Value>,
    pub choice: ToolChoice,
    /// More than one call in an answer.
    pub parallel: bool,
}

impl ToolSet {
    fn functions(&self) -> impl Iterator<Item = (&str, Value)> {
        self.tools.iter().filter_map(|t| {
            let f = t.get("function")?;
            let name = f.get("name")?.as_str()?;
            let params = f
                .get("parameters")
                .cloned()
                .filter(|p| !p.is_null())
                .unwrap_or_else(|| json!({"type": "object"}));
            Some((name, params))
        })
    }

    /// The grammar a required or named call holds the answer to; None for `auto`.
    pub fn constraint(&self, format: ToolFormat) -> Option<OutputConstraint> {
        let only = match &self.choice {
            ToolChoice::Auto => return None,
            ToolChoice::Required => None,
            ToolChoice::Function(name) => Some(name.as_str()),
        };
        let mut rules = Vec::new();
        let mut alts = Vec::new();
        for (i, (name, params)) in self.functions().enumerate() {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let (open, close) = match format {
                ToolFormat::Llama3Json => (
                    format!("{{\"name\": {}, \"parameters\": ", json!(name)),
                    "}".to_string(),
                ),
                _ => (
                    format!("<tool_call>\n{{\"name\": {}, \"arguments\": ", json!(name)),
                    "}\n</tool_call>".to_string(),
                ),
            };
            rules.push(format!(
                "call{i}: {} args{i} {}\nargs{i}: %json {}",
                json!(open),
                json!(close),
                json_style(params)
            ));
            alts.push(format!("call{i}"));
        }
        let any = alts.join(" | ");
        let start = if self.parallel && format.blocks() {
            "start: call (\"\\n\" call)*".to_string()
        } else {
            "start: call".to_string()
        };
        Some(OutputConstraint::Lark {
            grammar: format!("{start}\ncall: {any}\n{}\n", rules.join("\n")),
        })
    }
}

impl Prompter {
    /// How this model's template offers tools.
    pub fn tool_format(&self) -> ToolFormat {
        ToolFormat::of(self.template())
    }

    /// The chat prompt with tools offered the model's way (see [`ToolFormat`]).
    pub fn render_chat_with_tools(
        &self,
        messages: &[Message],
        tools: &ToolSet,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let t = self.template().ok_or_else(|| {
            Error::Template("the model has no chat template; tools need one".into())
        })?;
        match self.tool_format() {
            ToolFormat::Injected => {
                let messages = injected(messages, tools);
                t.render(
                    &messages,
                    add_generation_prompt,
                    self.bos_token(),
                    self.eos_token(),
                )
            }
            _ => t.render_with_tools(
                messages,
                &tools.tools,
                add_generation_prompt,
                self.bos_token(),
                self.eos_token(),
            ),
        }
    }

    /// Token ids of a chat with tools.
    pub fn encode_chat_with_tools(
        &self,
        messages: &[Message],
        tools: &ToolSet,
    ) -> Result<Vec<u32>> {
        let text = self.render_chat_with_tools(messages, tools, true)?;
        self.tokenizer().encode(&text, false)
    }
}

/// The conversation for a template that knows no tools: the tools described in the system
/// turn, earlier calls written as the `<tool_call>` blocks they were, and tool results as user
/// turns, since such templates know no `tool` role.
fn injected(messages: &[Message], tools: &ToolSet) -> Vec<Message> {
    let mut listing = String::new();
    for t in &tools.tools {
        listing.push_str(&t.to_string());
        listing.push('\n');
    }
    let mut rule = match &tools.choice {
        ToolChoice::Auto => "Call a function when it helps to answer; otherwise answer directly.",
        ToolChoice::Required => "Answer by calling one or more of the functions.",
        ToolChoice::Function(_) => "Answer by calling the function.",
    }
    .to_string();
    if !tools.parallel {
        rule.push_str(" Make at most one call.");
    }
    let describe = format!(
        "You can call these functions, each described by a JSON schema:\n<tools>\n{listing}</tools>\n\
         To call a function, write a JSON object with its name and arguments between \
         <tool_call> and </tool_call>:\n<tool_call>\n{{\"name\": \"function name\", \"arguments\": \
         {{\"argument\": \"value\"}}}}\n</tool_call>\nThe result comes back between \
         <tool_response> and </tool_response>. {rule}"
    );
    let mut out = Vec::with_capacity(messages.len() + 1);
    match messages.first() {
        Some(m) if m.role == "system" => {
            out.push(Message::system(format!("{}\n\n{describe}", m.content)));
        }
        _ => out.push(Message::system(describe)),
    }
    for m in messages.iter().skip(usize::from(
        messages.first().is_some_and(|m| m.role == "system"),
    )) {
        match m.role.as_str() {
            "assistant" if !m.tool_calls.is_empty() => {
                let mut text = m.content.clone();
                for c in &m.tool_calls {
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    // Name first, as the instructions show it (a JSON map would sort the keys).
                    text.push_str(&format!(
                        "<tool_call>\n{{\"name\": {}, \"arguments\": {}}}\n</tool_call>",
                        json!(c.function.name),
                        c.function.arguments
                    ));
                }
                out.push(Message::assistant(text));
            }
            "tool" => out.push(Message::user(format!(
                "<tool_response>\n{}\n</tool_response>",
                m.content
            ))),
            _ => out.push(m.clone()),
        }
    }
    out
}

/// A call read from the answer: the function's name and its arguments as JSON text.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedCall {
    pub name: String,
    pub arguments: String,
}

/// What one piece of streamed text turns into: text to show, and calls that just completed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parsed {
    pub content: String,
    pub calls: Vec<ParsedCall>,
}

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// Reads calls out of an answer as it streams. Text that may still turn out to be a call is
/// held back until it is known; a block that is not valid JSON is shown as the text it was.
#[derive(Debug)]
pub struct ToolCallParser {
    format: ToolFormat,
    buf: String,
    in_call: bool,
    /// Whitespace not yet shown: dropped if calls follow (an answer that only calls has no
    /// text), shown before the next text otherwise.
    ws: String,
    /// Whether the answer is a bare JSON object or a fenced block, held whole and read as calls
    /// at the end (None: not known yet). Llama 3 calls look so, and so do those of models that
    /// leave out the `<tool_call>` tags their template asks for (Qwen2.5-Coder-0.5B).
    json_answer: Option<bool>,
    calls: usize,
}

impl ToolCallParser {
    pub fn new(format: ToolFormat) -> Self {
        ToolCallParser {
            format,
            buf: String::new(),
            in_call: false,
            ws: String::new(),
            json_answer: None,
            calls: 0,
        }
    }

    /// Feeds newly generated text.
    pub fn push(&mut self, text: &str) -> Parsed {
        let mut out = Parsed::default();
        self.buf.push_str(text);
        self.step(&mut out, false);
        out
    }

    /// The answer is over: releases what was held back.
    pub fn finish(&mut self) -> Parsed {
        let mut out = Parsed::default();
        self.step(&mut out, true);
        if self.calls == 0 {
            out.content.push_str(&std::mem::take(&mut self.ws));
        }
        out
    }

    fn step(&mut self, out: &mut Parsed, end: bool) {
        if self.json_answer.is_none() {
            let t = self.buf.trim_start();
            let undecided =
                t.is_empty() || (t.len() < 3 && ("```".starts_with(t) || "[{".starts_with(t)));
            if undecided && !end {
                return;
            }
            self.json_answer =
                Some(t.starts_with('{') || t.starts_with("[{") || t.starts_with("```"));
        }
        if self.json_answer == Some(true) {
            if !end {
                return;
            }
            let calls = whole_answer_calls(&self.buf);
            if !calls.is_empty() {
                self.buf.clear();
                for c in calls {
                    self.call(out, c);
                }
                return;
            }
        }
        if self.format.blocks() {
            self.blocks(out, end);
        } else {
            let text = std::mem::take(&mut self.buf);
            self.show(out, &text);
        }
    }

    /// Shows text, holding back its trailing whitespace: whether that is shown depends on what
    /// follows, and deciding it the same way for any chunking keeps the stream equal to the
    /// whole answer.
    fn show(&mut self, out: &mut Parsed, text: &str) {
        let body = text.trim_end().len();
        if body == 0 {
            self.ws.push_str(text);
            return;
        }
        if self.calls == 0 {
            out.content.push_str(&std::mem::take(&mut self.ws));
        } else {
            self.ws.clear();
        }
        out.content.push_str(&text[..body]);
        self.ws.push_str(&text[body..]);
    }

    fn call(&mut self, out: &mut Parsed, c: ParsedCall) {
        self.calls += 1;
        self.ws.clear();
        out.calls.push(c);
    }

    fn blocks(&mut self, out: &mut Parsed, end: bool) {
        loop {
            if self.in_call {
                let Some(stop) = self.buf.find(CLOSE) else {
                    if end {
                        // The answer ended inside the block (at end of sequence, or cut).
                        let body = std::mem::take(&mut self.buf);
                        self.in_call = false;
                        match parse_call(&body) {
                            Some(c) => self.call(out, c),
                            None => self.show(out, &format!("{OPEN}{body}")),
                        }
                    }
                    return;
                };
                let body = self.buf[..stop].to_string();
                self.buf.drain(..stop + CLOSE.len());
                self.in_call = false;
                match parse_call(&body) {
                    Some(c) => self.call(out, c),
                    None => self.show(out, &format!("{OPEN}{body}{CLOSE}")),
                }
            } else if let Some(start) = self.buf.find(OPEN) {
                let before = self.buf[..start].to_string();
                self.show(out, &before);
                self.buf.drain(..start + OPEN.len());
                self.in_call = true;
            } else {
                // Hold back a tail that may be the start of `<tool_call>`.
                let keep = if end {
                    0
                } else {
                    partial_suffix(&self.buf, OPEN)
                };
                let cut = self.buf.len() - keep;
                let shown = self.buf[..cut].to_string();
                self.buf.drain(..cut);
                if !shown.is_empty() {
                    self.show(out, &shown);
                }
                return;
            }
        }
    }
}

/// The length of the longest proper suffix of `s` that starts `pattern`.
fn partial_suffix(s: &str, pattern: &str) -> usize {
    (1..pattern.len().min(s.len() + 1))
        .rev()
        .find(|&n| s.is_char_boundary(s.len() - n) && pattern.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
}

/// A whole answer that is one call object, or a list of them, bare or in a ``` fence.
fn whole_answer_calls(text: &str) -> Vec<ParsedCall> {
    let t = text.trim();
    let t = match t.strip_prefix("```") {
        Some(rest) => {
            let rest = rest.strip_prefix("json").unwrap_or(rest);
            rest.strip_suffix("```").unwrap_or(rest).trim()
        }
        None => t,
    };
    match serde_json::from_str::<Value>(t) {
        Ok(Value::Array(items)) => {
            let calls: Vec<ParsedCall> = items.iter().filter_map(|v| call_of(v, true)).collect();
            if calls.len() == items.len() {
                calls
            } else {
                Vec::new()
            }
        }
        Ok(v) => call_of(&v, true).into_iter().collect(),
        Err(_) => Vec::new(),
    }
}

/// `{"name": …, "arguments" | "parameters": …}`; arguments given as an object or as JSON text.
fn parse_call(body: &str) -> Option<ParsedCall> {
    call_of(&serde_json::from_str(body.trim()).ok()?, false)
}

/// `whole`: the object is the whole answer, where only one with both a name and arguments is
/// taken for a call (an answer about a person may well have a `name`).
fn call_of(v: &Value, whole: bool) -> Option<ParsedCall> {
    let name = v.get("name")?.as_str()?.to_string();
    let args = v.get("arguments").or_else(|| v.get("parameters"));
    if whole && args.is_none() {
        return None;
    }
    let args = args.cloned().unwrap_or_else(|| json!({}));
    let arguments = match args {
        Value::String(s) => s,
        other => other.to_string(),
    };
    Some(ParsedCall { name, arguments })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::{FunctionCall, QWEN25_TEMPLATE, TINYLLAMA_TEMPLATE, ToolCall};

    fn weather() -> ToolSet {
        ToolSet {
            tools: vec![json!({"type": "function", "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
            }})],
            choice: ToolChoice::Auto,
            parallel: true,
        }
    }

    /// Feeds `text` in pieces of `step` bytes (on character boundaries).
    fn run(format: ToolFormat, text: &str, step: usize) -> Parsed {
        let mut p = ToolCallParser::new(format);
        let mut all = Parsed::default();
        let mut rest = text;
        while !rest.is_empty() {
            let mut n = step.min(rest.len());
            while !rest.is_char_boundary(n) {
                n += 1;
            }
            let got = p.push(&rest[..n]);
            all.content.push_str(&got.content);
            all.calls.extend(got.calls);
            rest = &rest[n..];
        }
        let got = p.finish();
        all.content.push_str(&got.content);
        all.calls.extend(got.calls);
        all
    }

    #[test]
    fn calls_are_read_out_of_streamed_text_whatever_the_chunking() {
        let text = "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";
        for step in [1, 2, 3, 7, 100] {
            let p = run(ToolFormat::Hermes, text, step);
            assert_eq!(p.content, "Let me look.", "step {step}");
            assert_eq!(
                p.calls,
                vec![
                    ParsedCall {
                        name: "get_weather".into(),
                        arguments: r#"{"city":"Paris"}"#.into()
                    },
                    ParsedCall {
                        name: "get_weather".into(),
                        arguments: r#"{"city":"Oslo"}"#.into()
                    }
                ]
            );
        }
        // Plain answers come through unchanged, "<" and "<tool" included.
        let plain = "a < b, and <tool is not a call.\n";
        for step in [1, 4, 50] {
            let p = run(ToolFormat::Hermes, plain, step);
            assert_eq!(p.content, plain);
            assert!(p.calls.is_empty());
        }
        // A block that is not JSON stays text; one cut off by the end still counts if it parses.
        let p = run(
            ToolFormat::Injected,
            "<tool_call>\nnot json\n</tool_call>",
            3,
        );
        assert_eq!(p.content, "<tool_call>\nnot json\n</tool_call>");
        let p = run(
            ToolFormat::Injected,
            "<tool_call>\n{\"name\": \"f\", \"arguments\": \"{}\"}",
            5,
        );
        assert_eq!(p.calls[0].name, "f");
        assert_eq!(p.calls[0].arguments, "{}");
        assert_eq!(p.content, "");
    }

    #[test]
    fn llama3_answers_are_a_call_when_they_are_one_json_object() {
        let p = run(
            ToolFormat::Llama3Json,
            " {\"name\": \"get_weather\", \"parameters\": {\"city\": \"Rome\"}}",
            4,
        );
        assert_eq!(p.calls.len(), 1);
        assert_eq!(p.calls[0].arguments, r#"{"city":"Rome"}"#);
        let p = run(ToolFormat::Llama3Json, "It is sunny {probably}.", 4);
        assert_eq!(p.content, "It is sunny {probably}.");
        let p = run(ToolFormat::Llama3Json, "{not a call}", 4);
        assert_eq!(p.content, "{not a call}");
    }

    #[test]
    fn block_formats_also_take_a_whole_answer_that_is_a_call() {
        // Qwen2.5-Coder-0.5B answers so, without the tags its template asks for.
        for text in [
            "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
            "```json\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n```",
            "[{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}]",
        ] {
            let p = run(ToolFormat::Hermes, text, 3);
            assert_eq!(p.content, "", "{text}");
            assert_eq!(p.calls.len(), 1, "{text}");
            assert_eq!(p.calls[0].arguments, r#"{"city":"Paris"}"#);
        }
        // JSON that is not a call, and code, stay the answer.
        for text in [
            "{\"name\": \"Alice\", \"age\": 30}",
            "```python\nprint(1)\n```",
            "`x` is a variable",
        ] {
            let p = run(ToolFormat::Hermes, text, 3);
            assert_eq!(p.content, text);
            assert!(p.calls.is_empty());
        }
    }

    #[test]
    fn the_format_comes_from_the_template() {
        let t = |s: &str| ChatTemplate::new(s).unwrap();
        assert_eq!(
            ToolFormat::of(Some(&t(QWEN25_TEMPLATE))),
            ToolFormat::Hermes
        );
        assert_eq!(
            ToolFormat::of(Some(&t(TINYLLAMA_TEMPLATE))),
            ToolFormat::Injected
        );
        assert_eq!(
            ToolFormat::of(Some(&t(
                "{% if tools %}{{ '{\"name\": function name, \"parameters\": ...}' }}{% endif %}"
            ))),
            ToolFormat::Llama3Json
        );
        assert_eq!(ToolFormat::of(None), ToolFormat::Injected);
    }

    #[test]
    fn injected_conversations_carry_the_tools_the_calls_and_the_results() {
        let mut set = weather();
        set.choice = ToolChoice::Required;
        let messages = vec![
            Message::user("Weather in Paris?"),
            Message {
                role: "assistant".into(),
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: "get_weather".into(),
                        arguments: json!({"city": "Paris"}),
                    },
                }],
                ..Default::default()
            },
            Message {
                role: "tool".into(),
                content: "18 C, sunny".into(),
                tool_call_id: Some("call_1".into()),
                ..Default::default()
            },
        ];
        let out = injected(&messages, &set);
        assert_eq!(out[0].role, "system");
        assert!(out[0].content.contains("\"name\":\"get_weather\""));
        assert!(out[0].content.contains("Answer by calling"));
        assert_eq!(out[1], messages[0]);
        assert_eq!(
            out[2].content,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call>"
        );
        assert_eq!(out[3].role, "user");
        assert!(out[3].content.contains("<tool_response>\n18 C, sunny\n"));
        // Qwen2.5's template renders the same conversation with its own tools section.
        let qwen = ChatTemplate::new(QWEN25_TEMPLATE).unwrap();
        let text = qwen
            .render_with_tools(&messages, &set.tools, true, None, None)
            .unwrap();
        assert!(text.contains("<tools>"), "{text}");
        assert!(text.contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"), "{text}");
        assert!(
            text.contains("<tool_response>\n18 C, sunny\n</tool_response>"),
            "{text}"
        );
    }

    #[test]
    fn required_and_named_calls_become_grammars() {
        let mut set = weather();
        assert_eq!(set.constraint(ToolFormat::Hermes), None);
        set.choice = ToolChoice::Required;
        let Some(OutputConstraint::Lark { grammar }) = set.constraint(ToolFormat::Hermes) else {
            panic!("no grammar");
        };
        assert!(grammar.contains("start: call (\"\\n\" call)*"), "{grammar}");
        assert!(grammar.contains("<tool_call>"), "{grammar}");
        set.choice = ToolChoice::Function("get_weather".into());
        set.parallel = false;
        let Some(OutputConstraint::Lark { grammar }) = set.constraint(ToolFormat::Llama3Json)
        else {
            panic!("no grammar");
        };
        assert!(grammar.starts_with("start: call\n"), "{grammar}");
        assert!(grammar.contains("\\\"parameters\\\": "), "{grammar}");
        // Both compile against a real vocabulary layout.
        let tok =
            crate::tokenizer::Tokenizer::tiny(crate::tokenizer::TokenizerFamily::Qwen2).unwrap();
        let g = crate::constrain::Grammars::new(&tok, tok.eos_ids()).unwrap();
        for format in [ToolFormat::Hermes, ToolFormat::Llama3Json] {
            for choice in [
                ToolChoice::Required,
                ToolChoice::Function("get_weather".into()),
            ] {
                set.choice = choice;
                g.start(&set.constraint(format).unwrap()).unwrap();
            }
        }
    }
}
