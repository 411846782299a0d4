#!/usr/bin/env python3
"""Record reference token ids for bakeoff's tokenizer tests.

    .venv-ref/bin/python scripts/reference/make_tokenizer_fixtures.py [--vocab-dir DIR] [--out DIR]

For each vocabulary GGUF in ../shared/vocab (llama-spm, qwen2) and each test text below, this
records ids from three tokenizers:

  llama_cpp       llama_cpp.Llama(model_path=..., vocab_only=True)
                      .tokenize(text.encode(), add_bos=False, special=True)
  transformers    AutoTokenizer.from_pretrained(dir, gguf_file=name)
                      .encode(text, add_special_tokens=False)
  tokenizer_json  transformers' converted tokenizer (same vocabulary, merges and added tokens)
                  with the normalizer and pre-tokenizer set to those of the tokenizer.json the
                  model family ships with, i.e. what transformers gives for the real model:
                    llama-spm: Llama-2's legacy layout, normalizer Prepend("\u2581") +
                               Replace(" ", "\u2581") and no pre-tokenizer. transformers'
                               GGUF conversion uses a Metaspace pre-tokenizer with
                               prepend_scheme "first" instead, which drops the dummy-prefix
                               space of text that starts with a space or follows a special token.
                    qwen2:     normalizer NFC, as Qwen2/Qwen2.5's tokenizer.json has; the GGUF
                               conversion leaves it out, and llama.cpp does not normalize.
                               llama.cpp also promotes the plain vocabulary entry "</s>"
                               (128247) to a control token and matches it in text; Qwen2's
                               tokenizer.json and transformers treat it as ordinary text.

into crates/engine/tests/fixtures/tokenizer/{llama-spm,qwen2}.json:

  {"vocab": str, "llama_cpp_version": str, "transformers_version": str,
   "tokenizers_version": str, "ids_from": "tokenizer_json", "layout": str,
   "cases": [{"name": str, "text": str,
              "ids": [int],            # what bakeoff must produce (= tokenizer_json)
              "llama_cpp": [int], "transformers": [int],
              "agree": bool,           # all three gave the same ids
              "decoded": str,          # decode(ids, skip_special_tokens=False) by tokenizer_json
              "note": str}]}           # present when they do not all agree

Every disagreement stays visible in the fixture, with the pieces each side produced.

The texts are written for this project (no third-party data).
"""
import argparse
import json
import os
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_VOCAB_DIR = os.path.abspath(os.path.join(REPO, "..", "shared", "vocab"))
DEFAULT_OUT = os.path.join(REPO, "crates", "engine", "tests", "fixtures", "tokenizer")

VOCABS = [("llama-spm", "ggml-vocab-llama-spm.gguf"), ("qwen2", "ggml-vocab-qwen2.gguf")]

# The normalizer/pre-tokenizer of each family's own tokenizer.json (see the docstring).
LAYOUTS = {
    "llama-spm": {
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                {"type": "Prepend", "prepend": "\u2581"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
            ],
        },
        "pre_tokenizer": None,
    },
    "qwen2": {"normalizer": {"type": "NFC"}},
}

# (name, text). Written for bakeoff; they exercise the normalizers, pre-tokenizer regex,
# byte fallback and added-token matching rather than any particular corpus.
TEXTS = [
    ("empty", ""),
    ("single_space", " "),
    ("hello", "Hello world"),
    ("hello_leading_space", " Hello world"),
    ("hello_two_leading_spaces", "  Hello world"),
    ("sentence", "The quick brown fox packed twelve jugs of maple syrup before noon."),
    ("punctuation", "Wait... really?! Yes -- (mostly) [sure] {ok} <fine> \"quoted\" 'single'"),
    ("contractions", "I'm sure they'll say it's fine; we've done what we'd planned. DON'T WON'T"),
    ("accents", "Café crème brûlée, à la façon de Zoë: naïve résumé, Ångström, São Paulo"),
    ("decomposed_accent", "cafe\u0301 and re\u0301sume\u0301"),
    ("german_turkish", "Straße, Größe, İstanbul, ığdır"),
    ("cjk_chinese", "我们今天下午去公园散步，顺便买一杯咖啡。"),
    ("cjk_japanese", "東京の天気はどうですか？ひらがなとカタカナも混ぜます。"),
    ("cjk_korean", "안녕하세요, 오늘 회의는 세 시에 시작합니다."),
    ("cyrillic", "Привет, как дела? Всё хорошо, спасибо! Ёлка и щётка."),
    ("arabic", "مرحبا بالعالم، كيف حالك اليوم؟"),
    ("hebrew_hindi_thai", "שלום עולם | नमस्ते दुनिया | สวัสดีชาวโลก"),
    ("greek_math", "Σύμφωνα με τον τύπο: ∑ xᵢ² ≤ ∞, α→β, ∀x∃y"),
    ("emoji", "I love pizza 🍕🍕 and coffee ☕! 😀😂🙃"),
    ("emoji_zwj", "Family: 👨‍👩‍👧‍👦, technologist: 👩🏽‍💻, rainbow flag: 🏳️‍🌈"),
    ("emoji_flags_skin", "Flags 🇫🇷🇯🇵🇧🇷🇺🇦 and thumbs 👍🏻👍🏽👍🏿"),
    ("rare_symbols", "𝓕𝓪𝓷𝓬𝔂 ½ ﬁ ™ ℃ № ⅷ 𐍈 \U0001F9EC"),
    ("code_python", "def add(a, b):\n\treturn a + b\n\n\nif __name__ == \"__main__\":\n    print(add(2, 3))\n"),
    ("code_rust", "fn main() {\n    let xs: Vec<u32> = (0..10).map(|i| i * i).collect();\n    println!(\"{xs:?}\");\n}\n"),
    ("code_json", "{\"name\": \"bakeoff\", \"ids\": [1, 22, 333], \"ok\": true, \"nested\": {\"k\": null}}"),
    ("tabs", "\t\tTabs\there\tand\t\t\tthere\t"),
    ("space_runs", "a  b   c    d     e          f"),
    ("leading_trailing_spaces", "   padded on both sides   "),
    ("newline_runs", "line one\n\nline two\n\n\n  indented line\n    deeper\n"),
    ("only_newlines", "\n\n\n"),
    ("crlf", "windows\r\nline\rold mac\n"),
    ("mixed_whitespace", " \t \n \u00a0 \u3000 end"),
    ("digits", "12345 and 3.14159 and 1,000,000 and 2024-06-01 and 007"),
    ("long_number", "Call 18005551234 or 9999999999999999999 now"),
    ("url", "See https://example.com/a/b?query=1&x=y#frag or mail me@example.org"),
    ("mixed_scripts", "日本語 and English 混合 text with Ελληνικά and русский"),
    ("im_chat", "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"),
    ("im_inline", "text before<|im_end|>text after <|endoftext|> done"),
    ("eos_inline", "End of answer</s>Next part"),
    ("bos_inst", "<s>[INST] hello [/INST]"),
    ("zephyr_chat", "<|system|>\nBe brief.</s>\n<|user|>\nWhat is 2+2?</s>\n<|assistant|>\n"),
    ("byte_token_text", "literal <0x41> and <0x0A> text"),
    ("unk_text", "an <unk> inside"),
    ("repeat", "ha" * 40),
    ("long_word", "Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism"),
]

def load_refs(vocab_dir, fixture, gguf_name):
    import llama_cpp
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    path = os.path.join(vocab_dir, gguf_name)
    if not os.path.isfile(path):
        sys.exit(f"missing vocabulary file {path}")
    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    hf = AutoTokenizer.from_pretrained(vocab_dir, gguf_file=gguf_name)
    j = json.loads(hf.backend_tokenizer.to_str())
    j.update(LAYOUTS[fixture])
    model_json = Tokenizer.from_str(json.dumps(j))
    return llm, hf, model_json


def dumps_one_case_per_line(out):
    """JSON with one case per line, so diffs of regenerated fixtures stay readable."""
    head = {k: v for k, v in out.items() if k != "cases"}
    text = json.dumps(head, ensure_ascii=False, indent=1)[:-2]
    lines = [json.dumps(c, ensure_ascii=False) for c in out["cases"]]
    return text + ',\n "cases": [\n  ' + ",\n  ".join(lines) + "\n ]\n}\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab-dir", default=DEFAULT_VOCAB_DIR)
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()

    import llama_cpp
    import tokenizers
    import transformers

    names = [n for n, _ in TEXTS]
    assert len(set(names)) == len(names), "duplicate case names"
    os.makedirs(args.out, exist_ok=True)
    for fixture, gguf_name in VOCABS:
        llm, hf, model_json = load_refs(args.vocab_dir, fixture, gguf_name)
        cases = []
        for name, text in TEXTS:
            ids = model_json.encode(text, add_special_tokens=False).ids
            a = list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
            b = list(hf.encode(text, add_special_tokens=False))
            case = {
                "name": name,
                "text": text,
                "ids": ids,
                "llama_cpp": a,
                "transformers": b,
                "agree": a == ids and b == ids,
                "decoded": model_json.decode(ids, skip_special_tokens=False),
            }
            if not case["agree"]:
                odd = [n for n, x in (("llama_cpp", a), ("transformers", b)) if x != ids]
                case["note"] = (
                    f"{' and '.join(odd)} differ from tokenizer_json. pieces: "
                    f"tokenizer_json {[model_json.id_to_token(i) for i in ids]}, "
                    f"llama_cpp {[llm.detokenize([i], special=True).decode('utf-8', 'replace') for i in a]}, "
                    f"transformers {hf.convert_ids_to_tokens(b)}"
                )
            cases.append(case)
        out = {
            "vocab": gguf_name,
            "llama_cpp_version": llama_cpp.__version__,
            "transformers_version": transformers.__version__,
            "tokenizers_version": tokenizers.__version__,
            "ids_from": "tokenizer_json",
            "layout": LAYOUTS[fixture],
            "cases": cases,
        }
        dest = os.path.join(args.out, f"{fixture}.json")
        with open(dest, "w", encoding="utf-8") as f:
            f.write(dumps_one_case_per_line(out))
        n_lc = sum(c["llama_cpp"] != c["ids"] for c in cases)
        n_tf = sum(c["transformers"] != c["ids"] for c in cases)
        print(f"{dest}: {len(cases)} cases; llama.cpp differs on {n_lc}, transformers(GGUF) on {n_tf}")
        for c in cases:
            if not c["agree"]:
                print(f"  {c['name']}: ids {c['ids']}\n    llama.cpp {c['llama_cpp']}\n    transformers {c['transformers']}")


if __name__ == "__main__":
    main()
