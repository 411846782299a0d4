#!/usr/bin/env python3
"""`bakeoff serve`'s prompt log-probabilities (/v1/completions with echo) against llama.cpp's on the
same GGUF file, through the official `openai` SDK, the way lm-evaluation-harness's
`local-completions` model asks for log-likelihoods.

For the first --items questions of ARC-Easy (../shared/evaldata/arc/ARC-Easy-Test.jsonl), each
choice is one request as lm-eval builds it: context "Question: {stem}\\nAnswer:" and continuation
" {choice}", each tokenized by llama.cpp (BOS before the context where the vocabulary adds one)
and sent as token ids with echo=True, logprobs=1, max_tokens=0. The continuation's log-likelihood
is the sum of `token_logprobs[ctxlen:]`, and lm-eval's `is_greedy` asks whether each of those
tokens is the top alternative. llama.cpp (llama-cpp-python, logits_all, f32 KV cache) scores the
same ids from its logits.

Pass: the first token's logprob null, every other token's log-probability within --token-bound
(1.0 nat) of llama.cpp's and their mean absolute difference within --mean-bound (0.1), and the same
chosen answer (highest log-likelihood) on at least --min-agree (95%) of the items whose two best
choices are more than --tie (0.01 nats) apart in llama.cpp's scores; near-ties are counted and
reported. The bounds are those of bakeoff's forward pass against llama.cpp's on these files
(docs/real-models.md: the engines round differently, by a few hundredths to a few tenths of a nat
per token on SmolLM2's Q4_1 weights); the echo path itself adds nothing to them
(crates/engine/tests/synth.rs checks it against a full forward pass to 2e-3).

    .venv-ci/bin/python scripts/echo_parity.py --bakeoff target/release/bakeoff \\
        --model ~/.cache/bakeoff/real-models/smollm2-135m-instruct-q4_1.gguf --items 25

Exit status: 0 when every check passes, 1 on a mismatch, 2 when the setup fails.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path

from serve_proc import start_server

try:
    import numpy as np
    import openai
    from llama_cpp import Llama
except ImportError as e:  # pragma: no cover - setup problem, not a mismatch
    print(f"setup: {e} (run scripts/ci-python.sh)", file=sys.stderr)
    sys.exit(2)

F32_KV = {"type_k": 0, "type_v": 0}


def items(data_dir, n):
    out = []
    with open(Path(data_dir) / "arc" / "ARC-Easy-Test.jsonl", encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)
            out.append((q["question"]["stem"], [c["text"] for c in q["question"]["choices"]]))
            if len(out) == n:
                break
    return out


def log_softmax(rows):
    rows = rows.astype(np.float64)
    m = rows.max(axis=-1, keepdims=True)
    return rows - m - np.log(np.exp(rows - m).sum(axis=-1, keepdims=True))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bakeoff", required=True)
    ap.add_argument("--model", required=True, help="a .gguf file")
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "evaldata"))
    ap.add_argument("--items", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--token-bound", type=float, default=1.0)
    ap.add_argument("--mean-bound", type=float, default=0.1)
    ap.add_argument("--tie", type=float, default=0.01)
    ap.add_argument("--min-agree", type=float, default=0.95)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    llm = Llama(model_path=args.model, n_ctx=512, n_batch=512, logits_all=True,
                n_threads=args.threads, n_threads_batch=args.threads, verbose=False, **F32_KV)
    add_bos = bool(llm._model.add_bos_token())
    server, addr = start_server(args.bakeoff, args.model, args.threads)
    client = openai.OpenAI(base_url=f"http://{addr}/v1", api_key="unused")
    failures, diffs, worst = [], [], (0.0, None)
    agree, ties, n_items, greedy_same, greedy_total = 0, 0, 0, 0, 0
    t_ours = t_theirs = 0.0
    try:
        for qi, (stem, choices) in enumerate(items(args.data_dir, args.items)):
            context = f"Question: {stem}\nAnswer:"
            ctx_ids = llm.tokenize(context.encode(), add_bos=add_bos, special=False)
            ours_ll, theirs_ll = [], []
            for c in choices:
                cont_ids = llm.tokenize(f" {c}".encode(), add_bos=False, special=False)
                ids = ctx_ids + cont_ids
                t0 = time.time()
                r = client.completions.create(model="fast", prompt=ids, echo=True, logprobs=1,
                                              max_tokens=0, temperature=0)
                t_ours += time.time() - t0
                lp = r.choices[0].logprobs
                if r.usage.prompt_tokens != len(ids) or len(lp.token_logprobs) != len(ids):
                    failures.append(f"item {qi}: {len(lp.token_logprobs)} logprobs for {len(ids)} tokens")
                    continue
                if lp.token_logprobs[0] is not None:
                    failures.append(f"item {qi}: the first token's logprob is {lp.token_logprobs[0]}, not null")
                t0 = time.time()
                llm.reset()
                llm.eval(ids)
                ref = log_softmax(np.array(llm.scores[:len(ids) - 1], dtype=np.float32))
                t_theirs += time.time() - t0
                want = [float(ref[j - 1, ids[j]]) for j in range(1, len(ids))]
                got = lp.token_logprobs[1:]
                for j, (g, w) in enumerate(zip(got, want), start=1):
                    d = abs(g - w)
                    diffs.append(d)
                    if d > worst[0]:
                        worst = (d, f"item {qi} token {j}")
                n_ctx = len(ctx_ids)
                ours_ll.append(sum(lp.token_logprobs[n_ctx:]))
                theirs_ll.append(sum(want[n_ctx - 1:]))
                # lm-eval's is_greedy: each continuation token is the top alternative.
                ours_greedy = all(
                    tok_lp >= max(top.values()) - 1e-6
                    for tok_lp, top in zip(lp.token_logprobs[n_ctx:], lp.top_logprobs[n_ctx:]))
                theirs_greedy = all(int(np.argmax(ref[j - 1])) == ids[j] for j in range(n_ctx, len(ids)))
                greedy_total += 1
                greedy_same += ours_greedy == theirs_greedy
            if len(ours_ll) != len(choices):
                continue
            n_items += 1
            order = sorted(range(len(choices)), key=lambda i: -theirs_ll[i])
            if theirs_ll[order[0]] - theirs_ll[order[1]] <= args.tie:
                ties += 1
                continue
            if int(np.argmax(ours_ll)) == order[0]:
                agree += 1
            else:
                margin = theirs_ll[order[0]] - theirs_ll[order[1]]
                print(f"  item {qi}: bakeoff chose {int(np.argmax(ours_ll))}, llama.cpp {order[0]}"
                      f" (llama.cpp margin {margin:.3f} nats)")
    finally:
        server.terminate()
        server.wait(timeout=30)

    mean = sum(diffs) / len(diffs) if diffs else math.nan
    if worst[0] > args.token_bound:
        failures.append(f"largest token difference {worst[0]:.4f} at {worst[1]} > {args.token_bound}")
    if not mean <= args.mean_bound:
        failures.append(f"mean token difference {mean:.5f} > {args.mean_bound}")
    decided = n_items - ties
    if decided and agree / decided < args.min_agree:
        failures.append(f"same choice on {agree}/{decided} non-tied items, below {args.min_agree:.0%}")
    print(f"{Path(args.model).name}: {n_items} items, {len(diffs)} scored tokens; "
          f"|Δ logprob| mean {mean:.5f}, max {worst[0]:.4f} ({worst[1]}); "
          f"same choice on {agree}/{decided} items ({ties} near-ties); "
          f"is_greedy equal on {greedy_same}/{greedy_total} requests; "
          f"seconds bakeoff {t_ours:.1f} (HTTP, SDK) llama.cpp {t_theirs:.1f} (in-process)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": args.model, "items": n_items, "tokens": len(diffs), "mean_abs_diff": mean,
            "max_abs_diff": worst[0], "agree": agree, "decided": decided, "near_ties": ties,
            "is_greedy_equal": greedy_same, "requests": greedy_total,
            "seconds_bakeoff": t_ours, "seconds_llama_cpp": t_theirs, "failures": failures,
        }, indent=2) + "\n")
    print("all checks passed" if not failures else "FAILED: " + "; ".join(failures[:10]))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
