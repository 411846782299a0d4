"""What structured output costs per token: the same model, prompt and answer length, decoded
with and without a JSON schema, in alternating pairs through `bakeoff serve`.

The unconstrained run ignores end-of-sequence; the constrained one asks for an array of more
integers than fit in `--tokens`, so both generate exactly `--tokens` tokens. Prints per model
the median decode rates, their ratio (min-max over the pairs) and the overhead in ms per token,
and the extra latency of the model's first structured request (building its vocabulary trie).

  python scripts/constraint_overhead.py --bakeoff target/release/bakeoff MODEL.gguf [MODEL.gguf ...]
"""

import argparse
import json
import statistics
import sys
import time
import urllib.request

from serve_proc import start_server

SCHEMA = {
    "type": "object",
    "properties": {"values": {"type": "array", "items": {"type": "integer"}, "minItems": 1000}},
    "required": ["values"],
}


def ask(addr, body):
    req = urllib.request.Request(
        f"http://{addr}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.load(r)
    return out, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bakeoff", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()
    base = {
        "model": "fast",
        "messages": [{"role": "user", "content": "List some numbers as JSON."}],
        "temperature": 0,
        "max_tokens": a.tokens,
    }
    free = dict(base, ignore_eos=True)
    held = dict(
        base,
        response_format={"type": "json_schema", "json_schema": {"name": "numbers", "schema": SCHEMA}},
    )
    print("| model | tokens | free tok/s | schema tok/s | ratio (min-max) | overhead ms/token | first structured request, extra ms |")
    print("|---|---|---|---|---|---|---|")
    for model in a.models:
        p, addr = start_server(a.bakeoff, model, a.threads)
        try:
            ask(addr, free)  # warm-up: weights paged in
            _, warm = ask(addr, dict(free, max_tokens=1))
            _, first = ask(addr, dict(held, max_tokens=1))
            _, again = ask(addr, dict(held, max_tokens=1))
            rates = {"free": [], "held": []}
            for _ in range(a.pairs):
                for kind, body in (("free", free), ("held", held)):
                    out, _ = ask(addr, body)
                    n = out["usage"]["completion_tokens"]
                    if n != a.tokens:
                        print(f"{model}: {kind} run made {n} tokens, not {a.tokens}", file=sys.stderr)
                        sys.exit(1)
                    text = out["choices"][0]["message"]["content"]
                    if kind == "held" and not text.startswith('{"values": ['):
                        print(f"{model}: the schema was not followed: {text[:80]!r}", file=sys.stderr)
                        sys.exit(1)
                    rates[kind].append(out["timings"]["decode_tok_s"])
        finally:
            p.terminate()
            p.wait()
        f, h = statistics.median(rates["free"]), statistics.median(rates["held"])
        ratios = [y / x for x, y in zip(rates["free"], rates["held"])]
        name = model.rsplit("/", 1)[-1]
        print(
            f"| {name} | {a.tokens} | {f:.1f} | {h:.1f} | {statistics.median(ratios):.3f} "
            f"({min(ratios):.3f}-{max(ratios):.3f}) | {1000 / h - 1000 / f:+.2f} | {1000 * (first - again):.0f} |"
        )


if __name__ == "__main__":
    main()
