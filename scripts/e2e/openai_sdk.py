"""The official OpenAI Python SDK against a running `bakeoff serve` (tiny synthetic models).

Usage: openai_sdk.py BASE_URL API_KEY. Exits non-zero with a message on the first failure.
Run by crates/cli/tests/serve_e2e.rs.
"""
import json
import sys
import urllib.request

import openai

base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, api_key=key, max_retries=0, timeout=60)
msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]

# Models.
ids = [m.id for m in client.models.list().data]
assert ids[:3] == ["auto", "fast", "strong"], ids

# Non-streaming chat, with logprobs.
r = client.chat.completions.create(model="auto", messages=msgs, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2)
c = r.choices[0]
assert r.object == "chat.completion", r
assert c.message.role == "assistant" and isinstance(c.message.content, str), c
assert c.finish_reason in ("stop", "length"), c.finish_reason
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage
assert len(c.logprobs.content) == r.usage.completion_tokens, c.logprobs
assert len(c.logprobs.content[0].top_logprobs) == 2
# The route is in the body (an extra field the SDK keeps) and in a header.
extra = r.model_extra or {}
assert extra["route"]["tier"] == "fast", extra
raw = client.chat.completions.with_raw_response.create(model="strong", messages=msgs, max_tokens=4, temperature=0)
assert raw.headers["x-bakeoff-route"].startswith("tier=strong"), raw.headers
assert raw.parse().model == "tiny-qwen2"

# Streaming chat with usage: the same text as non-streaming.
whole = client.chat.completions.create(model="fast", messages=msgs, max_tokens=12, temperature=0, extra_body={"ignore_eos": True})
parts, usage, finish = [], None, None
with client.chat.completions.create(
    model="fast", messages=msgs, max_tokens=12, temperature=0, stream=True,
    stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
) as stream:
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            if ch.delta.content:
                parts.append(ch.delta.content)
            if ch.finish_reason:
                finish = ch.finish_reason
assert "".join(parts) == whole.choices[0].message.content, (parts, whole)
assert finish == "length" and usage.completion_tokens == 12, (finish, usage)

# Legacy completions, streaming and not.
r = client.completions.create(model="fast", prompt="Once upon a time", max_tokens=5, temperature=0)
assert r.object == "text_completion" and isinstance(r.choices[0].text, str), r
text = "".join(ch.choices[0].text for ch in client.completions.create(model="fast", prompt="Once upon a time", max_tokens=5, temperature=0, stream=True) if ch.choices)
assert text == r.choices[0].text, (text, r.choices[0].text)

# n choices, each with its own seed, through the router (`auto`), streaming and not.
r = client.chat.completions.create(model="auto", messages=msgs, n=3, max_tokens=6, temperature=1, seed=11,
                                   extra_body={"ignore_eos": True})
assert [c.index for c in r.choices] == [0, 1, 2], r.choices
assert r.usage.completion_tokens == 18, r.usage
again = client.chat.completions.create(model="auto", messages=msgs, n=3, max_tokens=6, temperature=1, seed=11,
                                       extra_body={"ignore_eos": True})
assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]
texts = ["", "", ""]
with client.chat.completions.create(model="auto", messages=msgs, n=3, max_tokens=6, temperature=1, seed=11,
                                    stream=True, extra_body={"ignore_eos": True}) as stream:
    for chunk in stream:
        for ch in chunk.choices:
            texts[ch.index] += ch.delta.content or ""
assert texts == [c.message.content for c in r.choices], (texts, r.choices)

# Prompt log-probabilities: echo, token ids, max_tokens=0 (what lm-evaluation-harness sends).
# /tokenize sits beside /v1, outside the SDK's API.
req = urllib.request.Request(base.removesuffix("/v1") + "/tokenize", method="POST",
                             data=json.dumps({"content": "Once upon a time", "add_special": True,
                                              "model": "fast"}).encode(),
                             headers={"content-type": "application/json", "authorization": f"Bearer {key}"})
ids = json.load(urllib.request.urlopen(req, timeout=60))["tokens"]
r = client.completions.create(model="fast", prompt=ids, echo=True, logprobs=1, max_tokens=0)
lp = r.choices[0].logprobs
assert len(lp.token_logprobs) == len(ids) and lp.token_logprobs[0] is None, lp
assert all(x <= 0 for x in lp.token_logprobs[1:]), lp
assert r.usage.completion_tokens == 0 and r.choices[0].finish_reason == "length", r

# Errors arrive as the SDK's exceptions with the server's message.
try:
    client.chat.completions.create(model="auto", messages=[{"role": "wizard", "content": "x"}])
    raise SystemExit("an unknown role was accepted")
except openai.BadRequestError as e:
    assert "wizard" in str(e), e
try:
    client.chat.completions.create(model="no-such-model", messages=msgs)
    raise SystemExit("an unknown model was accepted")
except openai.NotFoundError as e:
    assert "does not exist" in str(e), e
try:
    client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "word " * 2000}])
    raise SystemExit("a prompt longer than the context was accepted")
except openai.BadRequestError as e:
    assert "context" in str(e), e
bad = openai.OpenAI(base_url=base, api_key="wrong", max_retries=0)
try:
    bad.models.list()
    raise SystemExit("a wrong API key was accepted")
except openai.AuthenticationError:
    pass

print("openai SDK: all checks passed")
