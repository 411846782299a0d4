#!/usr/bin/env python3
"""lm-evaluation-harness, pointed at `bakeoff serve`, against `bakeoff eval` on the same items.

1. `bakeoff eval --model FILE --only COMPONENTS --limit N` scores the multiple-choice items and keeps, in
   its audit trail, each item's prompt, its continuations and their log-likelihoods.
2. The same prompts and continuations become lm-eval tasks over local JSON files (one per component,
   `output_type: multiple_choice`, `target_delimiter: ""` since the continuations carry their leading
   space): the hub's data sets are not needed.
3. `bakeoff serve --model fast=FILE` answers lm-eval's `local-completions` model with
   `tokenizer_backend=remote` (bakeoff's /tokenize, /detokenize and /tokenizer_info, so lm-eval needs no
   copy of the tokenizer): each choice is a /v1/completions request with token ids, `echo`, `logprobs: 1`.
4. Per item, the choice with the highest log-likelihood (acc) and per character (acc_norm) must be the
   same in both, on at least --min-agree (98%) of the items that are not near-ties (best and second best
   within --tie, 0.01 nats, in bakeoff eval's scores); the largest log-likelihood difference is reported.

    /tmp/venv-lm/bin/python scripts/lm_eval_parity.py --bakeoff target/debug/bakeoff \\
        --model ~/.cache/bakeoff/real-models/smollm2-135m-instruct-q4_1.gguf --limit 20

Needs `lm_eval` (pip install "lm-eval[api]") in the Python that runs this script. Exit status: 0 when
every check passes, 1 on a mismatch, 2 when the setup fails.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from serve_proc import start_server


TASK = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{ctx}}}}"
doc_to_choice: "{{{{choices}}}}"
target_delimiter: ""
doc_to_target: 0
metric_list:
  - metric: acc
"""


def argmax(xs):
    return max(range(len(xs)), key=lambda i: xs[i])


def margin(xs):
    s = sorted(xs, reverse=True)
    return s[0] - s[1] if len(s) > 1 else float("inf")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bakeoff", required=True)
    ap.add_argument("--model", required=True, help="a .gguf file")
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "evaldata"))
    ap.add_argument("--only", default="arc_challenge,hellaswag")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--profile", default="quick",
                    help="bakeoff eval's profile (quick holds 30 items per component, standard more)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1,
                    help="lm-eval's batch_size: prompts per /v1/completions request")
    ap.add_argument("--tie", type=float, default=0.01)
    ap.add_argument("--min-agree", type=float, default=0.98)
    ap.add_argument("--out", help="keep the eval run, tasks and lm-eval output here")
    args = ap.parse_args()
    try:
        import lm_eval  # noqa: F401
    except ImportError as e:
        sys.exit(f"setup: {e} (pip install 'lm-eval[api]')")

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="lm-eval-parity-"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    r = subprocess.run([args.bakeoff, "eval", "--model", args.model, "--only", args.only, "--limit",
                        str(args.limit), "--profile", args.profile, "--threads", str(args.threads), "--data-dir", args.data_dir,
                        "--out", str(out / "eval")], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"setup: bakeoff eval failed:\n{r.stderr}")
    t_eval = time.time() - t0
    ours = {}
    by_component = {}
    for line in open(out / "eval" / "audit.jsonl", encoding="utf-8"):
        rec = json.loads(line)
        if "continuations" not in rec or not isinstance(rec.get("output"), list):
            continue
        ours[rec["id"]] = (rec["continuations"], [o["logprob"] for o in rec["output"]])
        by_component.setdefault(rec["component"], []).append(
            {"id": rec["id"], "ctx": rec["prompt"], "choices": rec["continuations"]})
    if not ours:
        sys.exit("setup: no multiple-choice items in the audit trail")
    tasks = out / "tasks"
    tasks.mkdir(exist_ok=True)
    names = []
    for comp, docs in by_component.items():
        data = tasks / f"{comp}.jsonl"
        data.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
        name = f"bakeoff_{comp}"
        (tasks / f"{name}.yaml").write_text(TASK.format(name=name, data=data), encoding="utf-8")
        names.append(name)

    server, addr = start_server(args.bakeoff, args.model, args.threads)
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    try:
        t0 = time.time()
        r = subprocess.run(
            [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args",
             f"model=fast,base_url=http://{addr}/v1/completions,tokenizer_backend=remote,"
             "tokenized_requests=True,num_concurrent=1,max_retries=1",
             "--tasks", ",".join(names), "--include_path", str(tasks), "--output_path", str(out / "lm-eval"),
             "--batch_size", str(args.batch_size), "--log_samples"], capture_output=True, text=True, env=env)
        t_lm = time.time() - t0
    finally:
        server.terminate()
        server.wait(timeout=30)
    if r.returncode != 0:
        print(r.stdout[-3000:], r.stderr[-3000:], sep="\n")
        sys.exit(1)

    theirs = {}
    for f in (out / "lm-eval").rglob("samples_*.jsonl"):
        for line in open(f, encoding="utf-8"):
            s = json.loads(line)
            theirs[s["doc"]["id"]] = [float(x[0][0]) if isinstance(x[0], list) else float(x[0])
                                      for x in s["resps"]]
    failures, rows = [], []
    for metric in ("acc", "acc_norm"):
        same = ties = n = 0
        worst = 0.0
        for item, (conts, ll) in ours.items():
            if item not in theirs:
                failures.append(f"{item}: lm-eval has no answer")
                continue
            other = theirs[item]
            worst = max(worst, max(abs(a - b) for a, b in zip(ll, other)))
            if metric == "acc_norm":
                ll = [x / len(c) for x, c in zip(ll, conts)]
                other = [x / len(c) for x, c in zip(other, conts)]
            n += 1
            if margin(ll) < args.tie:
                ties += 1
                continue
            same += argmax(ll) == argmax(other)
        decided = n - ties
        rows.append(f"| {metric} | {n} | {ties} | {same}/{decided} | {worst:.2e} |")
        if decided and same / decided < args.min_agree:
            failures.append(f"{metric}: same choice on {same}/{decided} non-tied items")
    print(f"{Path(args.model).name}: components {', '.join(sorted(by_component))}, "
          f"bakeoff eval {t_eval:.0f} s, lm-eval through bakeoff serve {t_lm:.0f} s")
    print("| metric | items | near-ties | same choice (non-tied) | max abs diff of a choice's log-likelihood |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    print("all checks passed" if not failures else "FAILED: " + "; ".join(failures[:10]))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
