#!/usr/bin/env python3
"""Token ids llama.cpp gives for a fixed, varied set of texts, for bakeoff's tokenizer tests.

    python scripts/reference/llama_tokenize.py FILE.gguf [FILE.gguf ...] > ids.json

Each GGUF file is opened with llama_cpp.Llama(model_path=..., vocab_only=True) (tokenizer only,
no weights) and every text below is tokenized four ways: tokenize(text.encode(), add_bos,
special) for add_bos and special in {False, True} (llama-cpp-python's add_bos is llama.cpp's
add_special: BOS and EOS as the file asks). Output, one JSON object:

  {"llama_cpp_version": str,
   "files": {path: {"cases": [{"name": str, "text": str, "add_special": bool,
                               "parse_special": bool, "ids": [int]}]}}}

crates/engine/tests/llama_cpp_tokenize.rs runs this and compares bakeoff's
Tokenizer::encode_with(text, add_special, parse_special) with every case. The texts are written
for this project.
"""
import json
import sys

CHATML = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\nParis.<|im_end|>\n"
    "<|im_start|>user\nAnd of Italy? Answer in one word.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
ZEPHYR = (
    "<|system|>\nBe brief.</s>\n<|user|>\nHi there!</s>\n<|assistant|>\nHello.</s>\n"
    "<|user|>\nWhat's 2+2?</s>\n<|assistant|>\n"
)
LLAMA3 = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)

TEXTS = [
    ("empty", ""),
    ("space", " "),
    ("spaces_3", "   "),
    ("newline", "\n"),
    ("newlines_3", "\n\n\n"),
    ("tab", "\t"),
    ("hello", "Hello world"),
    ("hello_leading_space", " Hello world"),
    ("hello_two_leading_spaces", "  Hello world"),
    ("trailing_spaces", "Hello world   "),
    ("multiple_inner_spaces", "a  b   c    d"),
    ("sentence", "The quick brown fox packed twelve jugs of maple syrup before noon."),
    ("contractions", "I'm sure they'll say it's fine; we've done what we'd planned. DON'T YOU'RE It'S"),
    ("contractions_spaced", "it ' s  's 't 're 've 'm 'll 'd"),
    ("punctuation", "Wait... really?! Yes -- (mostly) [sure] {ok} <fine> \"quoted\" 'single' #1 $2 %3 ^&*"),
    ("numbers", "1 12 123 1234 12345 123456 1234567 3.14159 -42 1,000,000 0x1F 2024-12-02"),
    ("long_number", "98765432109876543210"),
    ("code_python", "def add(a, b):\n    \"\"\"Sum.\"\"\"\n    return a + b\n\n\nif __name__ == '__main__':\n\tprint(add(1, 2))\n"),
    ("code_c", "int main(void) {\n\tfor (int i = 0; i < 10; ++i) {\n\t\tprintf(\"%d\\n\", i);\n\t}\n\treturn 0;\n}"),
    ("indent_mixed", "    four\n\ttab\n  \t mixed\n        eight"),
    ("accents", "Café crème brûlée, à la façon de Zoë: naïve résumé, Ångström, São Paulo"),
    ("decomposed_accent", "cafe\u0301 and re\u0301sume\u0301"),
    ("cjk_chinese", "我们今天去公园散步，天气很好。"),
    ("cjk_japanese", "東京は日本の首都です。ひらがなとカタカナ"),
    ("korean", "안녕하세요, 만나서 반갑습니다"),
    ("cyrillic_greek", "Привет, мир! Γειά σου Κόσμε"),
    ("arabic_hebrew", "مرحبا بالعالم שלום עולם"),
    ("emoji", "I 💖 🦙 and 🚀!"),
    ("emoji_zwj", "👩‍👩‍👧 👍🏽 🏳️‍🌈"),
    ("rare_chars", "\u00a0nbsp \u3000ideographic \u200bzero-width \u2028sep \ufeffbom \U0001d400 \u0300combining"),
    ("control_like_bytes", "bell\x07 esc\x1b[0m del\x7f nul-free"),
    ("math", "∀x∈ℝ: x² ≥ 0 ⇒ √(x²) = |x| ≈ ∞ ∑ ∫"),
    ("url_email", "See https://example.com/a/b?c=1&d=2#frag or mail me@example.org."),
    ("repeated", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa ================ ----------"),
    ("mixed_case_words", "HELLO hello HeLLo hELLO camelCaseWord snake_case_word"),
    ("crlf", "line one\r\nline two\r\n\r\nline four"),
    ("im_tokens_inline", "<|im_start|>user\nhi<|im_end|>"),
    ("endoftext_inline", "before<|endoftext|>after"),
    ("s_tokens_inline", "<s>[INST] hello [/INST] End of answer</s> Next part"),
    ("chat_chatml", CHATML),
    ("chat_zephyr", ZEPHYR),
    ("chat_llama3", LLAMA3),
    ("fake_special", "<|im_start |> <|notatoken|> </ s> <s >"),
]


def main():
    import llama_cpp

    out = {"llama_cpp_version": llama_cpp.__version__, "files": {}}
    for path in sys.argv[1:]:
        llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
        cases = []
        for name, text in TEXTS:
            for add_special in (False, True):
                for parse_special in (False, True):
                    ids = llm.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)
                    cases.append(
                        {
                            "name": name,
                            "text": text,
                            "add_special": add_special,
                            "parse_special": parse_special,
                            "ids": list(ids),
                        }
                    )
        out["files"][path] = {"cases": cases}
        del llm
    json.dump(out, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
