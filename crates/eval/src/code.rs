//! HumanEval and MBPP: prompts, completion clean-up and the programs run in the sandbox.
//!
//! Protocol (as evalplus and the Qwen2.5 reports do for chat models): the user turn asks for the
//! function in a Markdown code block, and the assistant turn is pre-filled with
//! "```python\n" + the function signature and docstring (HumanEval) or with "```python\n" (MBPP),
//! so greedy decoding continues the code. Generation stops at the code fence's end or at the
//! next top-level statement.

use crate::data::{HumanEvalItem, MbppItem};

/// Where a HumanEval completion (a function body) ends.
pub const STOPS: [&str; 5] = ["\n```", "\ndef ", "\nclass ", "\nif __name__", "\nprint("];
/// Where an MBPP completion (whole functions, helpers allowed) ends.
pub const MBPP_STOPS: [&str; 4] = ["\n```", "\nif __name__", "\nprint(", "\nassert "];

pub fn humaneval_user(item: &HumanEvalItem) -> String {
    format!(
        "Complete the following Python function. Reply with the complete function in a Markdown code block.\n\n```python\n{}\n```",
        item.prompt.trim_end()
    )
}

/// The assistant-turn prefix the model continues.
pub fn humaneval_prefix(item: &HumanEvalItem) -> String {
    format!("```python\n{}", item.prompt)
}

pub fn mbpp_user(item: &MbppItem) -> String {
    format!(
        "You are an expert Python programmer, and here is your task: {} Your code should pass these tests:\n\n{}\n\nReply with the code in a Markdown code block.",
        item.text.trim(),
        item.test_list.join("\n")
    )
}

pub const MBPP_PREFIX: &str = "```python\n";

/// Cuts a completion at the first stop sequence (generation already stops there; this also
/// handles completions that come from elsewhere, e.g. canned test responses).
pub fn truncate<'a>(completion: &'a str, stops: &[&str]) -> &'a str {
    let end = stops
        .iter()
        .filter_map(|s| completion.find(s))
        .min()
        .unwrap_or(completion.len());
    &completion[..end]
}

/// [`truncate`] for a completion that continues `prefix`: where the prefix ends a line, a stop
/// that starts with a newline also matches at the completion's first character (a model that
/// closes the code block at once writes "```" with the newline already in the prompt).
pub fn truncate_continuation<'a>(prefix: &str, completion: &'a str, stops: &[&str]) -> &'a str {
    let at_start = prefix.ends_with('\n')
        && stops
            .iter()
            .filter_map(|s| s.strip_prefix('\n'))
            .any(|s| completion.starts_with(s));
    if at_start {
        ""
    } else {
        truncate(completion, stops)
    }
}

/// prompt + completion + tests + `check(entry_point)`.
pub fn humaneval_program(item: &HumanEvalItem, completion: &str) -> String {
    format!(
        "{}{}\n\n{}\n\ncheck({})\n",
        item.prompt,
        truncate_continuation(&item.prompt, completion, &STOPS),
        item.test,
        item.entry_point
    )
}

/// setup + completion + the three asserts.
pub fn mbpp_program(item: &MbppItem, completion: &str) -> String {
    let code = truncate_continuation(MBPP_PREFIX, completion, &MBPP_STOPS).replace("\r\n", "\n");
    let mut p = String::new();
    if !item.test_setup_code.trim().is_empty() {
        p.push_str(&item.test_setup_code.replace("\r\n", "\n"));
        p.push('\n');
    }
    p.push_str(&code);
    p.push_str("\n\n");
    for t in &item.test_list {
        p.push_str(t);
        p.push('\n');
    }
    p
}

/// pass@k unbiased estimator 1 − C(n − c, k) / C(n, k) (Chen et al. 2021); with greedy decoding
/// n = k = 1 and it is the pass rate.
pub fn pass_at_k(n: u64, c: u64, k: u64) -> f64 {
    if n < k || c > n {
        return f64::NAN;
    }
    if n - c < k {
        return 1.0;
    }
    // 1 − Π_{i = n−c+1}^{n} (1 − k / i)
    let mut prod = 1.0;
    for i in (n - c + 1)..=n {
        prod *= 1.0 - k as f64 / i as f64;
    }
    1.0 - prod
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation() {
        assert_eq!(truncate("    return x\n```\nmore", &STOPS), "    return x");
        assert_eq!(
            truncate("    return x\n\ndef other():\n    pass", &STOPS),
            "    return x\n"
        );
        assert_eq!(
            truncate("    return x\nprint(f(1))", &STOPS),
            "    return x"
        );
        assert_eq!(truncate("    return x", &STOPS), "    return x");
        assert_eq!(
            truncate("def a():\n    pass\ndef b():\n    pass\n```", &MBPP_STOPS),
            "def a():\n    pass\ndef b():\n    pass"
        );
    }

    #[test]
    fn a_completion_that_closes_the_block_at_once_is_empty() {
        // The prefilled prompt ends with a newline, so "```" at the start is "\n```".
        assert_eq!(truncate_continuation("\"\"\"\n", "```", &STOPS), "");
        assert_eq!(
            truncate_continuation(MBPP_PREFIX, "```\nmore", &MBPP_STOPS),
            ""
        );
        assert_eq!(
            truncate_continuation("\"\"\"\n", "    return 1\n```", &STOPS),
            "    return 1"
        );
        // Without a newline before it, "```" at the start is part of the code.
        assert_eq!(truncate_continuation("x = ", "```", &STOPS), "```");
    }

    #[test]
    fn pass_at_k_values() {
        assert_eq!(pass_at_k(1, 1, 1), 1.0);
        assert_eq!(pass_at_k(1, 0, 1), 0.0);
        // n = 10, c = 3, k = 1 → 0.3.
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12);
        // n = 4, c = 2, k = 2 → 1 − C(2,2)/C(4,2) = 1 − 1/6.
        assert!((pass_at_k(4, 2, 2) - 5.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn programs() {
        let he = HumanEvalItem {
            task_id: "HumanEval/0".into(),
            prompt: "def add(a, b):\n    \"\"\"Add.\"\"\"\n".into(),
            canonical_solution: "    return a + b\n".into(),
            test: "def check(f):\n    assert f(1, 2) == 3\n".into(),
            entry_point: "add".into(),
        };
        let p = humaneval_program(&he, "    return a + b\n```");
        assert!(
            p.starts_with("def add(a, b):")
                && p.contains("    return a + b\n\ndef check")
                && p.ends_with("check(add)\n")
        );
        let mb = MbppItem {
            task_id: 11,
            text: "Add.".into(),
            code: String::new(),
            test_setup_code: String::new(),
            test_list: vec!["assert add(1, 2) == 3".into()],
        };
        assert_eq!(
            mbpp_program(&mb, "def add(a, b):\r\n    return a + b\n```"),
            "def add(a, b):\n    return a + b\n\nassert add(1, 2) == 3\n"
        );
    }
}
