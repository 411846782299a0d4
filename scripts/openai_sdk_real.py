"""The official `openai` SDK against `bakeoff serve` on real models, as an application uses it:
structured output parsed into a pydantic model (`beta.chat.completions.parse`, and streamed),
a streamed tool-call round trip (call, tool result, final answer) with the SDK's
`pydantic_function_tool`, `n=3`; on each tier, and through the tiered router with a fast tier
that is down, so that fallback serves them.

  python scripts/openai_sdk_real.py --bakeoff BIN --model SMOLLM2.gguf --strong QWEN.gguf

The fast tier is SmolLM2-135M (its template knows no tools: bakeoff offers them), the strong
one Qwen2.5-Coder-0.5B (its template's `<tool_call>` format). Prints each answer; exits
non-zero on the first failed check; the last line is "all checks passed".
"""

import argparse
import json
import sys

import openai
from pydantic import BaseModel, Field

from serve_proc import start_server


class Person(BaseModel):
    name: str = Field(max_length=40)
    age: int = Field(ge=0, le=120)
    hobbies: list[str] = Field(max_length=3)


class GetWeather(BaseModel):
    """Current weather in a city."""

    city: str = Field(description="City name, e.g. Paris")


ASK_PERSON = [
    {"role": "system", "content": "You answer in JSON."},
    {"role": "user", "content": "Describe a fictional person: name, age and hobbies."},
]
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]
TOOLS = [openai.pydantic_function_tool(GetWeather, name="get_weather")]


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}")
        sys.exit(1)


def parsed_person(client, model):
    r = client.beta.chat.completions.parse(
        model=model, messages=ASK_PERSON, response_format=Person, temperature=0, max_tokens=200
    )
    m = r.choices[0].message
    print(f"parse {model}: {m.content}")
    check(isinstance(m.parsed, Person), f"{model}: parsed is {m.parsed!r}")
    return r


def streamed_person(client, model):
    with client.beta.chat.completions.stream(
        model=model, messages=ASK_PERSON, response_format=Person, temperature=0, max_tokens=200
    ) as s:
        for _ in s:
            pass
        final = s.get_final_completion()
    check(isinstance(final.choices[0].message.parsed, Person), f"{model}: streamed parse {final}")


def stream_turn(client, model, messages, **kw):
    """One streamed answer: its text, its calls (assembled from deltas) and finish reason."""
    text, calls, finish, route = "", {}, None, None
    stream = client.chat.completions.create(
        model=model, messages=messages, tools=TOOLS, temperature=0, max_tokens=120, stream=True, **kw
    )
    for chunk in stream:
        extra = chunk.model_extra or {}
        route = extra.get("route", route)
        for ch in chunk.choices:
            text += ch.delta.content or ""
            for d in ch.delta.tool_calls or []:
                c = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                c["id"] = d.id or c["id"]
                if d.function:
                    c["name"] += d.function.name or ""
                    c["arguments"] += d.function.arguments or ""
            finish = ch.finish_reason or finish
    return text, [calls[k] for k in sorted(calls)], finish, route


def round_trip(client, model, choice, **kw):
    text, calls, finish, route = stream_turn(client, model, ASK_WEATHER, tool_choice=choice, **kw)
    print(f"tools {model} ({choice}): text={text!r} calls={calls} finish={finish}")
    check(finish == "tool_calls" and calls, f"{model}: no tool call ({finish}, {text!r})")
    check(calls[0]["name"] == "get_weather", f"{model}: called {calls[0]}")
    args = json.loads(calls[0]["arguments"])
    check("paris" in args.get("city", "").lower(), f"{model}: arguments {args}")
    messages = ASK_WEATHER + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in calls
            ],
        },
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": json.dumps({"temperature_c": 18, "sky": "sunny"})},
    ]
    text, calls2, finish, _ = stream_turn(client, model, messages, tool_choice="none")
    print(f"tools {model}, after the result: {text!r} ({finish})")
    check(text.strip() and not calls2 and finish in ("stop", "length"), f"{model}: final answer {text!r}")
    return route


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bakeoff", required=True)
    ap.add_argument("--model", required=True, help="the fast tier (SmolLM2-135M-Instruct)")
    ap.add_argument("--strong", required=True, help="the strong tier (Qwen2.5-Coder-0.5B-Instruct)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", help="unused (the test harness passes it)")
    a = ap.parse_args()

    p, addr = start_server(a.bakeoff, None, a.threads, models=[f"fast={a.model}", f"strong={a.strong}"])
    try:
        client = openai.OpenAI(base_url=f"http://{addr}/v1", api_key="none", max_retries=0, timeout=300)
        for model in ("fast", "strong"):
            parsed_person(client, model)
        streamed_person(client, "strong")
        round_trip(client, "strong", "auto")
        # A 135M model keeps calling when it may call again: one call, as small models are run.
        round_trip(client, "fast", "required", parallel_tool_calls=False)
        r = client.chat.completions.create(
            model="strong", messages=ASK_PERSON, n=3, temperature=1, seed=7, max_tokens=200,
            response_format={"type": "json_object"},
        )
        check([c.index for c in r.choices] == [0, 1, 2], f"n=3: {r.choices}")
        for c in r.choices:
            print(f"n=3 choice {c.index}: {c.message.content}")
            if c.finish_reason == "stop":
                check(isinstance(json.loads(c.message.content), dict), f"n=3: {c.message.content}")
    finally:
        p.terminate()
        p.wait()

    # The router, with the fast tier down: a request for `fast` falls back to `strong`, and
    # `auto` is served whichever tier it picks.
    dead = "openai:http://127.0.0.1:9/v1"
    p, addr = start_server(a.bakeoff, None, a.threads, models=[f"fast={dead}", f"strong={a.strong}"])
    try:
        client = openai.OpenAI(base_url=f"http://{addr}/v1", api_key="none", max_retries=0, timeout=300)
        for model in ("fast", "auto"):
            r = parsed_person(client, model)
            route = (r.model_extra or {}).get("route", {})
            print(f"route for {model}: {route}")
            check(route.get("tier") == "strong", f"{model}: route {route}")
            check(model == "auto" or route.get("fallback") is True, f"{model}: no fallback in {route}")
            route = round_trip(client, model, "auto")
            check(route and route.get("tier") == "strong", f"{model} tools: route {route}")
    finally:
        p.terminate()
        p.wait()
    print("openai SDK on real models: all checks passed")


if __name__ == "__main__":
    main()
