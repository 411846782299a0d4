//! Chat templates: Hugging Face Jinja templates rendered with minijinja, set up the way
//! transformers' `apply_chat_template` sets up Jinja2 (trim_blocks, lstrip_blocks, Python string
//! methods, `raise_exception`, a `tojson` that is Python's `json.dumps`, `strftime_now`), so a
//! model's own template produces byte-identical prompts.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// TinyLlama-1.1B-Chat's template (Zephyr style).
pub const TINYLLAMA_TEMPLATE: &str = include_str!("templates/tinyllama.jinja");
/// Qwen2.5-Instruct's template, with its tools branch and default system prompt.
pub const QWEN25_TEMPLATE: &str = include_str!("templates/qwen2.5.jinja");

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// The functions an assistant turn called (OpenAI's `tool_calls`), their arguments as JSON
    /// values: chat templates print them with `tojson`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a `tool` turn, the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// For a `tool` turn, the function's name, where the client gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One function call, as chat templates read it (`tool_call.function.name`, `.arguments`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: serde_json::Value,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
            ..Default::default()
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

const NAME: &str = "chat_template";

pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .finish()
    }
}

/// The source of an error raised by the template itself, so that its message reaches the user
/// unadorned ("Conversation roles must alternate ...").
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

/// Instructions one rendering may run. Real chat templates take a few thousand for a long
/// conversation with tools; a template from an untrusted file with nested `range` loops could
/// otherwise run for hours (minijinja bounds each `range`, not their product).
pub const TEMPLATE_FUEL: u64 = 2_000_000;

fn template_error(e: minijinja::Error) -> Error {
    if e.kind() == ErrorKind::OutOfFuel {
        return Error::Template(format!(
            "the chat template ran more than {TEMPLATE_FUEL} instructions (an endless or huge loop) and was stopped"
        ));
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = src {
        if let Some(r) = s.downcast_ref::<Raised>() {
            return Error::Template(r.0.clone());
        }
        src = s.source();
    }
    Error::Template(e.to_string())
}

impl ChatTemplate {
    /// Compiles a template; a syntax error is reported with its line.
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, minijinja::Error> {
                Err(
                    minijinja::Error::new(ErrorKind::InvalidOperation, msg.clone())
                        .with_source(Raised(msg)),
                )
            },
        );
        env.add_function(
            "strftime_now",
            |fmt: String| -> std::result::Result<String, minijinja::Error> {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                Ok(strftime(&fmt, secs))
            },
        );
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(template_error)?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages` as transformers' `apply_chat_template(..., tokenize=False)` would. A
    /// `None` BOS/EOS is left undefined in the template, as transformers omits unset tokens.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<String> {
        self.render_with(
            Value::from_serialize(messages),
            None,
            add_generation_prompt,
            bos_token,
            eos_token,
        )
    }

    /// As [`ChatTemplate::render`] with tool definitions (JSON schemas). serde_json objects
    /// iterate in sorted key order, so `tojson` prints their keys sorted; pass tools parsed
    /// with [`json_value`] to [`ChatTemplate::render_with`] to keep the document's order as
    /// Python would.
    pub fn render_with_tools(
        &self,
        messages: &[Message],
        tools: &[serde_json::Value],
        add_generation_prompt: bool,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<String> {
        self.render_with(
            Value::from_serialize(messages),
            Some(Value::from_serialize(tools)),
            add_generation_prompt,
            bos_token,
            eos_token,
        )
    }

    /// The general form: messages and tools as template values, e.g. from [`json_value`] for
    /// messages with `tool_calls` or other fields beyond role and content.
    pub fn render_with(
        &self,
        messages: Value,
        tools: Option<Value>,
        add_generation_prompt: bool,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<String> {
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", messages),
            ("tools", tools.unwrap_or(Value::from(()))),
            ("documents", Value::from(())),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
        ];
        if let Some(b) = bos_token {
            ctx.push(("bos_token", Value::from(b)));
        }
        if let Some(e) = eos_token {
            ctx.push(("eos_token", Value::from(e)));
        }
        let ctx: Value = ctx.into_iter().collect();
        let tmpl = self.env.get_template(NAME).map_err(template_error)?;
        tmpl.render(ctx).map_err(template_error)
    }
}

/// Parses JSON into a template value, keeping object keys in document order (serde_json's
/// own `Value` would sort them, and `tojson` would then print them sorted).
pub fn json_value(text: &str) -> Result<Value> {
    serde_json::from_str::<Value>(text).map_err(|e| Error::Template(format!("invalid JSON: {e}")))
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`. Jinja's own filter would HTML-escape `<`, `>`, `&` and `'`.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match (v.as_i64(), v.as_str()) {
            (Some(n), _) => Some(" ".repeat(n.max(0) as usize)),
            (_, Some(s)) => Some(s.to_string()),
            _ => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                ));
            }
        },
    };
    let (item_sep, key_sep) = match separators {
        Some(v) if !v.is_none() && !v.is_undefined() => {
            let parts: Vec<String> = v
                .try_iter()?
                .map(|p| p.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .filter(|p| p.len() == 2)
                .ok_or_else(|| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be two strings",
                    )
                })?;
            (parts[0].clone(), parts[1].clone())
        }
        // Python drops the trailing space of the item separator when indenting.
        _ if indent.is_some() => (",".to_string(), ": ".to_string()),
        _ => (", ".to_string(), ": ".to_string()),
    };
    let opts = JsonOpts {
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    write_json(&mut out, &value, &opts, 0)?;
    Ok(Value::from(out))
}

struct JsonOpts {
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

fn newline(out: &mut String, opts: &JsonOpts, depth: usize) {
    if let Some(ind) = &opts.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(ind);
        }
    }
}

fn write_json(
    out: &mut String,
    v: &Value,
    opts: &JsonOpts,
    depth: usize,
) -> std::result::Result<(), minijinja::Error> {
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let f = f64::try_from(v.clone())?;
                out.push_str(&py_float_repr(f));
            }
        }
        ValueKind::String => write_json_str(out, v.as_str().unwrap_or_default(), opts.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(out, opts, depth + 1);
                write_json(out, item, opts, depth + 1)?;
            }
            newline(out, opts, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for key in v.try_iter()? {
                let val = v.get_item(&key)?;
                entries.push((json_key(&key), val));
            }
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (k, val)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                newline(out, opts, depth + 1);
                write_json_str(out, k, opts.ensure_ascii);
                out.push_str(&opts.key_sep);
                write_json(out, val, opts, depth + 1)?;
            }
            newline(out, opts, depth);
            out.push('}');
        }
        _ => write_json_str(out, &v.to_string(), opts.ensure_ascii),
    }
    Ok(())
}

/// Python converts non-string keys: True -> "true", None -> "null", numbers via repr.
fn json_key(k: &Value) -> String {
    match k.kind() {
        ValueKind::String => k.as_str().unwrap_or_default().to_string(),
        ValueKind::Bool => (if k.is_true() { "true" } else { "false" }).to_string(),
        ValueKind::None | ValueKind::Undefined => "null".to_string(),
        ValueKind::Number if !k.is_integer() => f64::try_from(k.clone())
            .map(py_float_repr)
            .unwrap_or_else(|_| k.to_string()),
        _ => k.to_string(),
    }
}

fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && (c as u32) > 0x7E => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: shortest round-trip digits, positional for exponents -4..16,
/// otherwise `1.5e+16` style; `NaN`/`Infinity` as `json.dumps` writes them.
fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let sci = format!("{f:e}");
    let (mant, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (neg, mant) = match mant.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mant),
    };
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let sign = if neg { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n = digits.len() as i32;
        let body = if exp < 0 {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        } else if exp + 1 >= n {
            format!("{}{}.0", digits, "0".repeat((exp + 1 - n) as usize))
        } else {
            let (a, b) = digits.split_at((exp + 1) as usize);
            format!("{a}.{b}")
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{m}e{esign}{:02}", exp.abs())
    }
}

/// A small strftime (UTC) for `strftime_now`, covering what chat templates use for dates.
fn strftime(fmt: &str, unix_secs: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let days = unix_secs.div_euclid(86_400);
    let secs = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let wday = (days + 3).rem_euclid(7) as usize;
    let yday = days - days_from_civil(y, 1, 1) + 1;
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(spec) = it.next() else {
            out.push('%');
            break;
        };
        let _ = match spec {
            'Y' => write!(out, "{y}"),
            'y' => write!(out, "{:02}", y.rem_euclid(100)),
            'm' => write!(out, "{m:02}"),
            'd' => write!(out, "{d:02}"),
            'e' => write!(out, "{d:>2}"),
            '-' => match it.next() {
                Some('d') => write!(out, "{d}"),
                Some('m') => write!(out, "{m}"),
                Some('H') => write!(out, "{hh}"),
                Some(o) => write!(out, "%-{o}"),
                None => write!(out, "%-"),
            },
            'H' => write!(out, "{hh:02}"),
            'I' => write!(out, "{:02}", if hh % 12 == 0 { 12 } else { hh % 12 }),
            'p' => write!(out, "{}", if hh < 12 { "AM" } else { "PM" }),
            'M' => write!(out, "{mm:02}"),
            'S' => write!(out, "{ss:02}"),
            'j' => write!(out, "{yday:03}"),
            'B' => write!(out, "{month}"),
            'b' | 'h' => write!(out, "{}", &month[..3]),
            'A' => write!(out, "{}", DAYS[wday]),
            'a' => write!(out, "{}", &DAYS[wday][..3]),
            'u' => write!(out, "{}", wday + 1),
            'w' => write!(out, "{}", (wday + 1) % 7),
            'F' => write!(out, "{y}-{m:02}-{d:02}"),
            'T' => write!(out, "{hh:02}:{mm:02}:{ss:02}"),
            'Z' => write!(out, "UTC"),
            'z' => write!(out, "+0000"),
            '%' => write!(out, "%"),
            o => write!(out, "%{o}"),
        };
    }
    out
}

/// Howard Hinnant's days-to-civil-date algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn render_expr(src: &str) -> String {
        ChatTemplate::new(src)
            .unwrap()
            .render(&[], false, None, None)
            .unwrap()
    }

    #[test]
    fn python_floats() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (-2.25, "-2.25"),
            (1e16, "1e+16"),
            (1.5e-5, "1.5e-05"),
            (0.0001, "0.0001"),
            (123456789.125, "123456789.125"),
            (0.1, "0.1"),
            (1e-7, "1e-07"),
            (f64::NAN, "NaN"),
        ] {
            assert_eq!(py_float_repr(f), s, "{f}");
        }
    }

    #[test]
    fn tojson_matches_json_dumps() {
        let t =
            ChatTemplate::new("{{ tools | tojson }}|{{ tools[0] | tojson(indent=2) }}").unwrap();
        let tools = json_value(
            r#"[{"name": "w", "z": [1, 2.5, true, null], "a": "é<&>\n\"", "e": {}, "l": []}]"#,
        )
        .unwrap();
        let out = t
            .render_with(
                Value::from(Vec::<Value>::new()),
                Some(tools),
                false,
                None,
                None,
            )
            .unwrap();
        assert_eq!(
            out,
            "[{\"name\": \"w\", \"z\": [1, 2.5, true, null], \"a\": \"é<&>\\n\\\"\", \"e\": {}, \"l\": []}]|{\n  \"name\": \"w\",\n  \"z\": [\n    1,\n    2.5,\n    true,\n    null\n  ],\n  \"a\": \"é<&>\\n\\\"\",\n  \"e\": {},\n  \"l\": []\n}"
        );
    }

    #[test]
    fn tojson_ensure_ascii_and_sort_keys() {
        assert_eq!(
            render_expr("{{ {'b': 'é😀', 'a': 1} | tojson(ensure_ascii=true, sort_keys=true) }}"),
            r#"{"a": 1, "b": "\u00e9\ud83d\ude00"}"#
        );
    }

    #[test]
    fn python_string_methods() {
        assert_eq!(
            render_expr(
                "{{ '  hi  '.strip() }}|{{ 'abc'.startswith('ab') }}|{{ 'a,b'.split(',') | join('+') }}"
            ),
            "hi|True|a+b"
        );
    }

    #[test]
    fn raise_exception_is_a_template_error() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}").unwrap();
        match t.render(&[], false, None, None) {
            Err(Error::Template(m)) => assert_eq!(m, "roles must alternate"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn syntax_errors_name_the_line() {
        match ChatTemplate::new("ok\n{% if %}") {
            Err(Error::Template(m)) => {
                assert!(m.contains("syntax error") && m.contains(":2"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %a %b %j", t),
            "2024-02-29 13:05:09 Thu Feb 060"
        );
        assert_eq!(strftime("%d %B %Y", 0), "01 January 1970");
        assert!(!render_expr("{{ strftime_now('%Y') }}").is_empty());
    }
}
