#!/usr/bin/env python3
"""Render the engine's chat templates with transformers' own apply_chat_template
and write crates/engine/tests/fixtures/templates/cases.json.

    .venv-ref/bin/python scripts/reference/make_template_fixtures.py

Each case: {"template": "tinyllama"|"qwen2.5", "messages": [...],
            "add_generation_prompt": bool, "bos_token": str|null,
            "eos_token": str, "expected": str}
"""
import json
import os

import transformers
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TEMPLATES = os.path.join(REPO, "crates", "engine", "src", "templates")
OUT = os.path.join(REPO, "crates", "engine", "tests", "fixtures", "templates", "cases.json")

# name -> (file, bos_token, eos_token), as in the models' tokenizer_config.json
SPECS = {
    "tinyllama": ("tinyllama.jinja", "<s>", "</s>"),
    "qwen2.5": ("qwen2.5.jinja", None, "<|im_end|>"),
}

UNICODE = "  Café crème, 中文测试, emoji 🦙🚀\nsecond line\n\n  indented third line  "

CASES = [
    # (messages, add_generation_prompt)
    ([{"role": "system", "content": "You are a helpful assistant."},
      {"role": "user", "content": "What is the capital of France?"}], True),
    ([{"role": "user", "content": "Hello!"}], True),
    ([{"role": "user", "content": "Hello!"}], False),
    ([{"role": "user", "content": "Hi, who are you?"},
      {"role": "assistant", "content": "I am a small language model."},
      {"role": "user", "content": "Tell me a joke."}], True),
    ([{"role": "user", "content": "Hi, who are you?"},
      {"role": "assistant", "content": "I am a small language model."},
      {"role": "user", "content": "Tell me a joke."}], False),
    ([{"role": "system", "content": "Be brief."},
      {"role": "user", "content": "Hi, who are you?"},
      {"role": "assistant", "content": "I am a small language model."},
      {"role": "user", "content": "Tell me a joke."}], True),
    ([{"role": "system", "content": " Système: réponds en français. \n"},
      {"role": "user", "content": UNICODE}], True),
    ([{"role": "user", "content": UNICODE},
      {"role": "assistant", "content": "\n 好的 👍 \n"},
      {"role": "user", "content": "  trailing spaces   "}], True),
]


def tokenizer_with(bos, eos):
    vocab = {"<unk>": 0, eos: 1}
    if bos is not None:
        vocab[bos] = 2
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    kwargs = {"tokenizer_object": tok, "eos_token": eos, "unk_token": "<unk>"}
    if bos is not None:
        kwargs["bos_token"] = bos
    t = PreTrainedTokenizerFast(**kwargs)
    assert t.bos_token == bos and t.eos_token == eos
    return t


def main():
    cases = []
    for name, (fname, bos, eos) in SPECS.items():
        with open(os.path.join(TEMPLATES, fname), encoding="utf-8") as f:
            template = f.read()
        tok = tokenizer_with(bos, eos)
        for messages, agp in CASES:
            expected = tok.apply_chat_template(
                messages, chat_template=template, tokenize=False, add_generation_prompt=agp
            )
            cases.append({
                "template": name,
                "messages": messages,
                "add_generation_prompt": agp,
                "bos_token": bos,
                "eos_token": eos,
                "expected": expected,
            })
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(cases, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {OUT} (transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
