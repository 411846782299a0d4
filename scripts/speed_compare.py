#!/usr/bin/env python3
"""bakeoff against llama.cpp (GGUF) and transformers (HF folders) on the same files, alternating
A/B in one run so the shared machine's drift hits both sides alike. Prints a Markdown table of
medians and of per-pair ratios (median, min, max).

  .venv-ref/bin/python scripts/speed_compare.py --bakeoff target/release/bakeoff \
      --gguf "TinyLlama Q4_0=models/tl-q4_0.gguf" --hf "TinyLlama bf16=models/tl-hf" --reps 5
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bakeoff(a, model, ids, max_tokens, dtype=None):
    cmd = [a.bakeoff, "generate", "--model", model, "--prompt-ids", json.dumps(ids),
           "--max-tokens", str(max_tokens), "--ignore-eos", "--json", "--threads", str(a.threads)]
    if dtype:
        cmd += ["--dtype", dtype]
    s = run(cmd)["summary"]
    return {"load_s": s["load_s"], "prefill_tok_s": s["prefill_tok_s"], "decode_tok_s": s["decode_tok_s"]}


def peer(a, engine, model, ids, max_tokens, dtype="bf16"):
    return run([sys.executable, os.path.join(HERE, "peer_bench.py"), engine, "--model", model,
                "--prompt-ids", json.dumps(ids), "--max-tokens", str(max_tokens),
                "--threads", str(a.threads), "--dtype", dtype])


def compare(a, label, model, engine, rows, dtype=None, peer_model=None):
    tests = [("decode", list(range(1000, 1000 + a.short)), a.gen, "decode_tok_s"),
             ("prefill", list(range(1000, 1000 + a.long)), 1, "prefill_tok_s")]
    for test, ids, gen, key in tests:
        ours, theirs = [], []
        for rep in range(a.reps):
            # Alternate who goes first so slow drifts do not favour one side.
            order = [0, 1] if rep % 2 == 0 else [1, 0]
            res = [None, None]
            for side in order:
                if side == 0:
                    res[0] = bakeoff(a, model, ids, gen, dtype)
                else:
                    res[1] = peer(a, engine, peer_model or model, ids, gen, dtype or "bf16")
            ours.append(res[0])
            theirs.append(res[1])
        o = [r[key] for r in ours]
        t = [r[key] for r in theirs]
        ratios = sorted(x / y for x, y in zip(o, t))
        rows.append({"model": label, "test": test, "peer": engine,
                     "bakeoff": statistics.median(o), "peer_value": statistics.median(t),
                     "ratio_median": statistics.median(ratios), "ratio_min": ratios[0], "ratio_max": ratios[-1],
                     "bakeoff_load_s": statistics.median(r["load_s"] for r in ours),
                     "peer_load_s": statistics.median(r["load_s"] for r in theirs),
                     "bakeoff_samples": o, "peer_samples": t})
        r = rows[-1]
        print(f"{label:24} {test:8} bakeoff {r['bakeoff']:7.1f} tok/s  {engine} {r['peer_value']:7.1f} tok/s  "
              f"ratio {r['ratio_median']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})", file=sys.stderr)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bakeoff", default="target/release/bakeoff")
    p.add_argument("--gguf", action="append", default=[], help="LABEL=PATH, compared with llama.cpp")
    p.add_argument("--hf", action="append", default=[], help="LABEL=DIR, compared with transformers (bf16)")
    p.add_argument("--vs-transformers", action="append", default=[],
                   help="LABEL=PATH,HF_DIR: bakeoff on PATH (any format it loads) against transformers "
                        "bf16 on HF_DIR (same architecture); the issue's 'whatever format' prefill check")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--short", type=int, default=16, help="prompt tokens for the decode test")
    p.add_argument("--long", type=int, default=512, help="prompt tokens for the prefill test")
    p.add_argument("--gen", type=int, default=128, help="generated tokens for the decode test")
    p.add_argument("--out", help="write all samples as JSON here")
    a = p.parse_args()
    rows = []
    for spec in a.gguf:
        label, path = spec.split("=", 1)
        compare(a, label, path, "llama.cpp", rows)
    for spec in a.hf:
        label, path = spec.split("=", 1)
        compare(a, label, path, "transformers", rows, dtype="bf16")
    for spec in a.vs_transformers:
        label, paths = spec.split("=", 1)
        ours, theirs = paths.split(",", 1)
        compare(a, label, ours, "transformers", rows, peer_model=theirs)
    print(f"Measured {time.strftime('%Y-%m-%d')}, {a.threads} threads, {a.reps} alternating pairs "
          f"per cell; decode = {a.gen} tokens after a {a.short}-token prompt, prefill = {a.long}-token prompt.\n")
    print("| model | test | bakeoff tok/s | peer | peer tok/s | ratio (median, min-max) | load s (bakeoff / peer) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['test']} | {r['bakeoff']:.1f} | {r['peer']} | {r['peer_value']:.1f} | "
              f"{r['ratio_median']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | "
              f"{r['bakeoff_load_s']:.2f} / {r['peer_load_s']:.2f} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"threads": a.threads, "reps": a.reps, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
