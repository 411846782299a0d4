#!/usr/bin/env python3
"""Warm load time of bakeoff (with and without its packed-weights file) against llama.cpp on the
same GGUF files, alternating in one run. After one warm-up load of each, every round loads with
the packed-weights file, with llama.cpp, and with repacking; prints a Markdown table of medians
with min-max.

  .venv-ref/bin/python scripts/load_compare.py --bakeoff target/release/bakeoff --reps 3 \
      models/tl-q4_0.gguf models/qwen-q8_0.gguf
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
IDS = json.dumps([1000, 1001, 1002, 1003])


def last_json(cmd, env=None):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bakeoff(a, model, cache):
    env = dict(os.environ, BAKEOFF_WEIGHT_CACHE=cache)
    cmd = [a.bakeoff, "generate", "--model", model, "--prompt-ids", IDS, "--max-tokens", "1",
           "--ignore-eos", "--json", "--threads", str(a.threads)]
    return last_json(cmd, env)["summary"]["load_s"]


def llama(a, model):
    cmd = [sys.executable, os.path.join(HERE, "peer_bench.py"), "llama.cpp", "--model", model,
           "--prompt-ids", IDS, "--max-tokens", "1", "--threads", str(a.threads)]
    return last_json(cmd)["load_s"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bakeoff", default="target/release/bakeoff")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--cache", help="packed-weights folder (default: a temporary one)")
    p.add_argument("gguf", nargs="+")
    a = p.parse_args()
    tmp = None
    if not a.cache:
        tmp = tempfile.TemporaryDirectory()
        a.cache = tmp.name
    print("| model | bakeoff, packed-weights file | llama.cpp | bakeoff, repacking |")
    print("|---|---|---|---|")
    for m in a.gguf:
        # The first load writes the packed-weights file; all three warm the page cache.
        bakeoff(a, m, a.cache)
        llama(a, m)
        bakeoff(a, m, "off")
        runs = {"cache": [], "llama": [], "repack": []}
        for _ in range(a.reps):
            runs["cache"].append(bakeoff(a, m, a.cache))
            runs["llama"].append(llama(a, m))
            runs["repack"].append(bakeoff(a, m, "off"))
        cells = [f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})" for v in runs.values()]
        print(f"| {os.path.basename(m)} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
