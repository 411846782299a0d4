//! Chat templates rendered byte-for-byte as transformers renders them
//! (tests/fixtures/templates/cases.json, from scripts/reference/make_fixtures.py), and the
//! Jinja2 behaviours Hugging Face templates lean on.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use bakeoff_engine::Error;
use bakeoff_engine::template::{
    ChatTemplate, Message, QWEN25_TEMPLATE, TINYLLAMA_TEMPLATE, json_value,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    template: String,
    messages: Vec<Message>,
    add_generation_prompt: bool,
    bos_token: Option<String>,
    eos_token: Option<String>,
    expected: String,
}

fn cases() -> Vec<Case> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/templates/cases.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn golden_cases_render_byte_equal() {
    let tiny = ChatTemplate::new(TINYLLAMA_TEMPLATE).unwrap();
    let qwen = ChatTemplate::new(QWEN25_TEMPLATE).unwrap();
    let cases = cases();
    assert!(cases.iter().any(|c| c.template == "tinyllama"));
    assert!(cases.iter().any(|c| c.template == "qwen2.5"));
    for (i, c) in cases.iter().enumerate() {
        let t = match c.template.as_str() {
            "tinyllama" => &tiny,
            "qwen2.5" => &qwen,
            other => panic!("case {i}: unknown template {other}"),
        };
        let got = t
            .render(
                &c.messages,
                c.add_generation_prompt,
                c.bos_token.as_deref(),
                c.eos_token.as_deref(),
            )
            .unwrap_or_else(|e| panic!("case {i}: {e}"));
        assert_eq!(got, c.expected, "case {i} ({})", c.template);
    }
}

#[test]
fn raise_exception_surfaces_the_templates_message() {
    let t = ChatTemplate::new(
        "{% for m in messages %}{% if m.role == 'user' and loop.index0 % 2 == 1 %}\
         {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\
         {% endif %}{{ m.content }}{% endfor %}",
    )
    .unwrap();
    let ok = [Message::user("a"), Message::assistant("b")];
    assert_eq!(t.render(&ok, false, None, None).unwrap(), "ab");
    let bad = [Message::user("a"), Message::user("b")];
    match t.render(&bad, false, None, None) {
        Err(Error::Template(m)) => {
            assert_eq!(
                m,
                "Conversation roles must alternate user/assistant/user/assistant/..."
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn hf_whitespace_control() {
    // trim_blocks drops the newline after a block tag; lstrip_blocks the indent before one.
    let t = ChatTemplate::new("{% for m in messages %}\n    {% if m.role %}\n[{{ m.content }}]\n    {% endif %}\n{% endfor %}").unwrap();
    let out = t
        .render(&[Message::user("x"), Message::user("y")], false, None, None)
        .unwrap();
    assert_eq!(out, "[x]\n[y]\n");
}

#[test]
fn unset_bos_is_undefined_and_eos_is_passed() {
    let t =
        ChatTemplate::new("{{ bos_token is defined }}|{{ eos_token }}|{{ add_generation_prompt }}")
            .unwrap();
    assert_eq!(
        t.render(&[], true, None, Some("</s>")).unwrap(),
        "False|</s>|True"
    );
    assert_eq!(
        t.render(&[], false, Some("<s>"), Some("</s>")).unwrap(),
        "True|</s>|False"
    );
}

#[test]
fn qwen_tools_branch_uses_python_json() {
    let t = ChatTemplate::new(QWEN25_TEMPLATE).unwrap();
    let tool = serde_json::json!({
        "type": "function",
        "function": {"name": "get_weather", "description": "Météo à <ville>",
                     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    });
    let out = t
        .render_with_tools(
            &[Message::user("Weather in Paris?")],
            &[tool],
            true,
            None,
            Some("<|im_end|>"),
        )
        .unwrap();
    assert!(out.starts_with("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools"), "{out}");
    // Python json.dumps: ", " and ": " separators, non-ASCII and <> kept as is.
    assert!(out.contains(r#""description": "Météo à <ville>""#), "{out}");
    assert!(
        out.ends_with("<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"),
        "{out}"
    );
}

#[test]
fn tool_calls_render_from_json_messages() {
    let t = ChatTemplate::new(QWEN25_TEMPLATE).unwrap();
    let msgs = json_value(
        r#"[{"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "add", "arguments": {"b": 2, "a": 2}}}]},
            {"role": "tool", "content": "4"}]"#,
    )
    .unwrap();
    let out = t
        .render_with(msgs, None, true, None, Some("<|im_end|>"))
        .unwrap();
    // Key order is the document's, as Python dicts keep it.
    assert!(out.contains("<tool_call>\n{\"name\": \"add\", \"arguments\": {\"b\": 2, \"a\": 2}}\n</tool_call><|im_end|>"), "{out}");
    assert!(
        out.contains("<|im_start|>user\n<tool_response>\n4\n</tool_response><|im_end|>\n"),
        "{out}"
    );
}

#[test]
fn syntax_and_runtime_errors_are_template_errors() {
    assert!(matches!(
        ChatTemplate::new("{% for %}"),
        Err(Error::Template(_))
    ));
    let t = ChatTemplate::new("{{ messages[0].content.nosuchmethod() }}").unwrap();
    assert!(matches!(
        t.render(&[Message::user("x")], false, None, None),
        Err(Error::Template(_))
    ));
}

/// A template whose loops multiply to billions of steps (each `range` alone is within
/// minijinja's bound) is stopped by the fuel limit with a clear error, in well under a second.
#[test]
fn a_runaway_template_runs_out_of_fuel() {
    let t = ChatTemplate::new(
        "{% for a in range(10000) %}{% for b in range(10000) %}{% for c in range(10000) %}x{% endfor %}{% endfor %}{% endfor %}",
    )
    .unwrap();
    let start = std::time::Instant::now();
    let e = t
        .render(&[Message::user("hi")], true, None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("instructions") && e.contains("stopped"), "{e}");
    assert!(start.elapsed() < std::time::Duration::from_secs(30));
    // A long real conversation stays far inside the budget.
    let qwen = ChatTemplate::new(QWEN25_TEMPLATE).unwrap();
    let turns: Vec<Message> = (0..400)
        .map(|i| {
            if i % 2 == 0 {
                Message::user(format!("question {i}"))
            } else {
                Message::assistant(format!("answer {i}"))
            }
        })
        .collect();
    qwen.render(&turns, true, None, None).unwrap();
}
