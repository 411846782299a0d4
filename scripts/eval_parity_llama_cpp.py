#!/usr/bin/env python3
"""bakeoff eval's log-likelihood choices against llama.cpp's on the same GGUF file.

For every multiple-choice item a `bakeoff eval` run recorded in its audit trail (mmlu, arc_challenge,
hellaswag, truthfulqa_mc: the prompt and each continuation), llama.cpp (llama-cpp-python, f32 KV cache)
scores the same strings the same way: context and context+continuation tokenized by llama.cpp (BOS as the
vocabulary says), the shared prefix evaluated once, log P(continuation tokens | prefix) summed from
llama.cpp's logits. Both sides then choose as bakeoff does: acc = the highest log-likelihood, acc_norm =
the highest log-likelihood per character of the continuation.

An item is a near-tie when llama.cpp's best and second-best choices are within --tie (nats, or nats per
character for acc_norm); near-ties are counted and reported, and agreement is computed over the rest. The
target (issue 17) is >= 98% of the non-tied items.

  .venv-ci/bin/python scripts/eval_parity_llama_cpp.py --audit OUT/eval/audit.jsonl \
      --model smollm2-135m-instruct-q4_1=~/.cache/bakeoff/real-models/smollm2-135m-instruct-q4_1.gguf \
      --model qwen2.5-coder-0.5b-instruct-q4_k_m=~/.cache/bakeoff/real-models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf

Exit status 1 when agreement is below --min-agree on any model.
"""
import argparse
import json
import math
import os
import sys
from collections import defaultdict


def common_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class LlamaScorer:
    def __init__(self, path, threads, n_ctx):
        import llama_cpp
        import numpy as np

        self.np = np
        self.llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_batch=512,
                                   logits_all=True, verbose=False,
                                   type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)

    def tok(self, text):
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)

    def loglikelihoods(self, context, continuations):
        """Mirrors crates/eval/src/candidate.rs: the tokens shared by the context and every
        context+continuation encoding run once; each continuation's tokens are scored from the
        first token that differs from the context's encoding."""
        np = self.np
        ctx = self.tok(context)
        wholes = [self.tok(context + c) for c in continuations]
        starts = [min(common_prefix(ctx, w), len(w) - 1) for w in wholes]
        k = max(1, min(starts))
        shared = wholes[0][:k]
        self.llm.reset()
        self.llm.eval(shared)
        last = np.array(self.llm.scores[k - 1], dtype=np.float64)
        out = []
        for w, start in zip(wholes, starts):
            start = max(start, k)
            self.llm.n_tokens = k
            rest = w[k:]
            if len(rest) > 1:
                self.llm.eval(rest[:-1])
            lp = 0.0
            for p in range(start, len(w)):
                row = last if p == k else np.array(self.llm.scores[p - 1], dtype=np.float64)
                m = row.max()
                lp += float(row[w[p]] - m - math.log(np.exp(row - m).sum()))
            out.append(lp)
        return out


def choose(scores, conts, norm):
    vals = [s / max(1, len(c)) if norm else s for s, c in zip(scores, conts)]
    best = max(range(len(vals)), key=lambda j: (vals[j], -j))
    # bakeoff's fold keeps the first of equal values: the same as the key above.
    ordered = sorted(vals, reverse=True)
    margin = ordered[0] - ordered[1] if len(ordered) > 1 else float("inf")
    return best, margin


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--audit", required=True, help="audit.jsonl of a bakeoff eval run")
    p.add_argument("--model", action="append", required=True, help="LABEL=PATH.gguf (LABEL as in the audit)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tie", type=float, default=0.01, help="near-tie margin (nats; nats/char for acc_norm)")
    p.add_argument("--min-agree", type=float, default=0.98)
    p.add_argument("--limit", type=int, default=0, help="first N items per component and model (0: all)")
    p.add_argument("--json", help="write per-item results here")
    a = p.parse_args()

    models = dict(m.split("=", 1) for m in a.model)
    records = defaultdict(list)
    with open(a.audit) as f:
        for line in f:
            r = json.loads(line)
            if "continuations" in r and r.get("model") in models and isinstance(r.get("output"), list):
                records[r["model"]].append(r)
    if not records:
        sys.exit(f"no log-likelihood records for {sorted(models)} in {a.audit}")
    failed = False
    rows = []
    print("| model | metric | items | near-ties (llama.cpp margin < %g) | same choice (non-tied) | agreement | max abs diff of a continuation's log-likelihood, nats |" % a.tie)
    print("|---|---|---|---|---|---|---|")
    for label, recs in records.items():
        path = os.path.expanduser(models[label])
        scorer = LlamaScorer(path, a.threads, n_ctx=4096)
        per_comp = defaultdict(int)
        stats = {m: {"n": 0, "ties": 0, "same": 0} for m in ("acc", "acc_norm")}
        max_diff = 0.0
        for r in recs:
            if a.limit and per_comp[r["component"]] >= a.limit:
                continue
            per_comp[r["component"]] += 1
            conts = r["continuations"]
            ours = [o["logprob"] for o in r["output"]]
            theirs = scorer.loglikelihoods(r["prompt"], conts)
            max_diff = max(max_diff, max(abs(x - y) for x, y in zip(ours, theirs)))
            item = {"model": label, "component": r["component"], "id": r["id"],
                    "bakeoff": ours, "llama_cpp": theirs}
            for m, norm in (("acc", False), ("acc_norm", True)):
                b, _ = choose(ours, conts, norm)
                l, margin = choose(theirs, conts, norm)
                st = stats[m]
                st["n"] += 1
                tie = margin < a.tie
                st["ties"] += tie
                if not tie:
                    st["same"] += b == l
                item[m] = {"bakeoff": b, "llama_cpp": l, "margin": margin, "near_tie": tie}
            rows.append(item)
        for m, st in stats.items():
            judged = st["n"] - st["ties"]
            agree = st["same"] / judged if judged else 1.0
            failed |= agree < a.min_agree
            print(f"| {label} | {m} | {st['n']} | {st['ties']} | {st['same']}/{judged} | {agree:.1%} | {max_diff:.4f} |")
        print(f"<!-- {label}: components {dict(per_comp)} -->")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    print("all checks passed" if not failed else f"FAILED: agreement below {a.min_agree:.0%}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
