#!/usr/bin/env python3
"""bakeoff eval's answers against llama.cpp's on the same GGUF file, item by item from the audit trail.

choices  For every multiple-choice item a `bakeoff eval` run recorded (mmlu, arc_challenge, hellaswag,
         truthfulqa_mc: the prompt and each continuation), llama.cpp (llama-cpp-python, f32 KV cache)
         scores the same strings the same way: context and context+continuation tokenized by llama.cpp
         (BOS as the vocabulary says), the shared prefix evaluated once, log P(continuation tokens |
         prefix) summed from llama.cpp's logits. Both sides then choose as bakeoff does: acc = the
         highest log-likelihood, acc_norm = the highest log-likelihood per character of the continuation.
         An item is a near-tie when llama.cpp's best and second-best choices are within --tie (nats, or
         nats per character for acc_norm); near-ties are counted and reported, and agreement is computed
         over the rest. The target (issue 17) is >= 98% of the non-tied items.

greedy   For every generated answer of gsm8k, humaneval and mbpp (the record's `prompt`: the exact text
         bakeoff gave the model, chat template and assistant prefix applied), llama.cpp regenerates it
         greedily: the prompt tokenized by llama.cpp with special tokens parsed and BOS as the GGUF's
         add_bos_token says (checked against `bakeoff tokenize` on the same text), then one token at a
         time (eval + argmax of the logits, f32 KV cache), ending where bakeoff's generation ends: at
         bakeoff's end-of-sequence ids (`bakeoff info --json`), at the first stop string, or after the
         token cap the run used (the record's `stop` and `max_tokens`; in audit trails written before
         the records carried them, the stop strings of crates/eval/src/code.rs and the caps of the run's
         results.json). The two texts must be identical.
         Where they differ, the first differing token is found by token ids: the record's
         `output_ids`, or for older audit trails those of `bakeoff generate` from the same prompt ids
         when it gives the record's text. Only failing that, from the text: llama.cpp's first token
         whose text leaves bakeoff's, or the step after bakeoff's token count (a shorter token that
         still spells bakeoff's text hides the real step, so the text method can point one or two
         steps late); when no step is found so, the smallest margin of the run decides. The item is
         a near-tie when llama.cpp's top-1/top-2 logit margin at that step is below --gen-tie: 1.0
         by default, above the largest change between the two engines of a top-1/top-2 margin under
         1 that was measured on these files (--engine-margins; docs/eval.md: 0.92 on SmolLM2-135M's
         Q4_1 weights, 0.46 on Qwen2.5-Coder-0.5B's), so a divergence at a wider margin is not the
         engines' rounding. Near-ties are counted and reported; every other item must be identical.
         --engine-margins N asks `bakeoff serve` for the first N answers per model again, with
         log-probabilities and as many requests at a time as the run's batch, and prints how far its
         top-1/top-2 margins are from llama.cpp's at every step where the two runs agree, and both
         engines' margins where they part.

  .venv-ci/bin/python scripts/eval_parity_llama_cpp.py --audit OUT/eval/audit.jsonl --bakeoff target/release/bakeoff \\
      --model smollm2-135m-instruct-q4_1=~/.cache/bakeoff/real-models/smollm2-135m-instruct-q4_1.gguf \\
      --model qwen2.5-coder-0.5b-instruct-q4_k_m=~/.cache/bakeoff/real-models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf

Without --audit, runs `bakeoff eval --only ONLY --limit N --max-new-tokens T` on the --model files
itself first (a label is the file's stem, as bakeoff eval names it). Exit status 1 when agreement is
below --min-agree on any model or a non-tied generated answer differs, 2 when the setup fails.
"""
import argparse
import atexit
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from real_parity import F32_KV, eog_test, last_logits, llama_greedy, run, top2_margin

GENERATIVE = ("gsm8k", "humaneval", "mbpp")
# For audit trails written before the records carried `stop` and `max_tokens`: the stop strings of
# crates/eval/src/code.rs (STOPS, MBPP_STOPS) and the results.json `sizes` key of each cap.
LEGACY_STOPS = {
    "gsm8k": [],
    "humaneval": ["\n```", "\ndef ", "\nclass ", "\nif __name__", "\nprint("],
    "mbpp": ["\n```", "\nif __name__", "\nprint(", "\nassert "],
}
LEGACY_CAP = {"gsm8k": "gsm8k_max_tokens", "humaneval": "code_max_tokens", "mbpp": "code_max_tokens"}

# crates/eval/src/gsm8k.rs's two extractions, to tell whether a differing answer changes the score.
STRICT_RE = re.compile(r"####\s*\$?\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)")
NUMBER_RE = re.compile(r"-?\$?[0-9][0-9,]*(?:\.[0-9]+)?")


def normalize_number(s):
    t = "".join(c for c in s.strip() if c not in "$, ").rstrip(".")
    if "." in t:
        t = t.rstrip("0").rstrip(".")
    return "0" if t == "-0" else t


def gsm8k_answers(text):
    strict = [m.group(1) for m in STRICT_RE.finditer(text)]
    flexible = [normalize_number(m.group(0)) for m in NUMBER_RE.finditer(text)]
    flexible = flexible[-1] if flexible and flexible[-1] not in ("", "-") else None
    return {"strict": normalize_number(strict[-1]) if strict else None, "flexible": flexible}


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

        self.llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_batch=512,
                                   logits_all=True, verbose=False,
                                   type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)

    def tok(self, text):
        return self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)

    def loglikelihoods(self, context, continuations):
        """Mirrors crates/eval/src/candidate.rs: the tokens shared by the context and every
        context+continuation encoding run once; each continuation's tokens are scored from the
        first token that differs from the context's encoding."""
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


def check_choices(a, models, records):
    """The log-likelihood check; returns (failed, per-item rows)."""
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
        del scorer
    if failed:
        print(f"choices: agreement below {a.min_agree:.0%}")
    return failed, rows


# ---------------------------------------------------------------- greedy answers


class Pieces:
    """Token texts (bytes, special tokens empty, as bakeoff's detokenizer leaves them out), to
    find the tokens that could have continued bakeoff's text."""

    def __init__(self, llm):
        self.llm = llm
        self.by_text = None

    def continuing(self, rest, tail_ok=None):
        """Ids of the tokens whose text is a non-empty prefix of `rest`, or `rest` and then a tail
        that `tail_ok` accepts."""
        if self.by_text is None:
            self.by_text = defaultdict(list)
            for t in range(self.llm.n_vocab()):
                p = self.llm.detokenize([t], special=False)
                if p:
                    self.by_text[p].append(t)
            self.longest = max(map(len, self.by_text))
        ids = [t for n in range(1, min(len(rest), self.longest) + 1) for t in self.by_text.get(rest[:n], ())]
        if tail_ok is not None:
            ids += [t for p, ts in self.by_text.items()
                    if len(p) > len(rest) and p.startswith(rest) and tail_ok(p[len(rest):]) for t in ts]
        return ids


class Follow:
    """bakeoff's end rules over llama.cpp's greedy tokens (the `ends` of llama_greedy), and the
    first step where llama.cpp's text leaves bakeoff's recorded answer."""

    def __init__(self, llm, pieces, want, want_finish, want_tokens, stops, eos, eog):
        self.llm, self.pieces = llm, pieces
        self.want = want.encode("utf-8")
        self.want_tokens = want_tokens
        self.want_stopped = want_finish == "stop"
        self.stops = [s.encode("utf-8") for s in stops if s]
        self.eos, self.eog = set(eos), eog
        self.raw = b""
        self.text = b""
        self.finish = "length"
        self.diverged = None
        self.eog_elsewhere = None
        self.top2 = []

    def stop_compatible(self, extra):
        # Past a stop string bakeoff's text is cut: what follows the recorded answer may be any
        # start of a stop string, or a stop string and more.
        return self.want_stopped and any(s.startswith(extra) or extra.startswith(s) for s in self.stops)

    def __call__(self, tokens, logits):
        tok, step = tokens[-1], len(tokens) - 1
        top = np.argpartition(logits, -2)[-2:]
        a, b = (int(top[1]), int(top[0])) if logits[top[1]] >= logits[top[0]] else (int(top[0]), int(top[1]))
        self.top2.append((a, float(logits[a]), b, float(logits[b])))
        prev = self.raw
        end = tok in self.eos
        if end:
            raw, text = prev, prev
        else:
            if self.eog_elsewhere is None and self.eog(tok):
                self.eog_elsewhere = step
            raw = self.llm.detokenize(tokens, special=False)
            hits = [i for i in (raw.find(s) for s in self.stops) if i >= 0]
            end = bool(hits)
            text = raw[:min(hits)] if hits else raw
        if end:
            self.finish = "stop"
            same = text == self.want
        else:
            same = self.want.startswith(raw) or (
                raw.startswith(self.want) and self.stop_compatible(raw[len(self.want):]))
            # A token with no text (a special token outside bakeoff's end set) leaves the text
            # unchanged: bakeoff's token count says where its answer ended.
            same &= not (self.want_stopped and step == self.want_tokens)
        if not same and self.diverged is None:
            if self.want.startswith(prev):
                rest = self.want[len(prev):]
                alts = self.pieces.continuing(rest, self.stop_compatible if self.want_stopped else None)
                if not rest and self.want_stopped:
                    alts += sorted(self.eos)
            else:
                # llama.cpp's text already runs into what may be a stop string.
                extra = prev[len(self.want):]
                alts = self.pieces.continuing(b"", lambda t: self.stop_compatible(extra + t))
            alts = [t for t in alts if t != tok]
            self.diverged = {
                "step": step,
                "margin": top2_margin(logits),
                # How far below llama.cpp's choice the best token that continues bakeoff's text is.
                "gap": float(logits[tok] - max(logits[t] for t in alts)) if alts else None,
                "llama_cpp_token": tok,
            }
        self.raw, self.text = raw, text
        return end


def first_token_difference(toks, want_ids, eos):
    """The first step where llama.cpp's tokens (its end-of-sequence token last, if it ended so)
    and bakeoff's (without theirs) differ; None when they agree to both ends."""
    for j, t in enumerate(toks):
        if j == len(want_ids):
            # bakeoff ended here; with the same tokens so far only an end of sequence ends it.
            return None if t in eos else j
        if t != want_ids[j]:
            return j
    return None if len(toks) == len(want_ids) else len(toks)


def bakeoff_regenerated_ids(bakeoff, path, ids, r, stops, cap, threads):
    """bakeoff's token ids for an audit record that lacks them: `bakeoff generate` (one sequence)
    from the same ids, used only if it gives the same text as the record."""
    cmd = [bakeoff, "generate", "--model", path, "--prompt-ids", json.dumps(ids), "--json",
           "--max-tokens", str(cap), "--threads", str(threads)]
    for s in stops:
        cmd += ["--stop", s]
    g = json.loads(run(cmd).strip().splitlines()[-1])
    return g["generated_ids"] if g["text"] == r["output"] else None


def bakeoff_info(bakeoff, path):
    return json.loads(run([bakeoff, "info", "--json", "--model", path]))


def bakeoff_ids(bakeoff, path, text):
    return json.loads(run([bakeoff, "tokenize", "--model", path, "--text", text]))


def results_sizes(audit):
    f = Path(audit).with_name("results.json")
    return (json.loads(f.read_text()).get("sizes") or {}) if f.is_file() else {}


def generation_rules(r, sizes):
    comp = r["component"]
    stops = r.get("stop", LEGACY_STOPS[comp])
    cap = r.get("max_tokens", sizes.get(LEGACY_CAP[comp]))
    if cap is None:
        raise SystemExit(f"{comp} {r['id']}: the record has no max_tokens and there is no results.json "
                         "with the run's sizes next to the audit trail")
    return stops, cap


def by_text(counts):
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"


def stats(xs):
    if not xs:
        return "-"
    xs = sorted(xs)
    return f"{xs[0]} / {xs[len(xs) // 2]} / {xs[-1]}"


def locate(llm, ids, toks, step_margins, f, r, stops, cap, a, path):
    """Where llama.cpp's answer first differs from bakeoff's: by token ids (the record's
    `output_ids`, or for older audit trails those of `bakeoff generate` when it gives the same
    text), else from the text (Follow)."""
    want_ids = r.get("output_ids")
    by = "audit ids"
    if not (isinstance(want_ids, list) and len(want_ids) == r.get("tokens")):
        want_ids = bakeoff_regenerated_ids(a.bakeoff, path, ids, r, stops, cap, a.threads)
        by = "regenerated ids"
    if want_ids is None:
        d = f.diverged or {"step": None, "margin": min(step_margins), "gap": None}
        return {**d, "by": "text"}
    j = first_token_difference(toks, want_ids, f.eos)
    if j is None:
        # The same tokens and not the same text: the end or detokenization rules differ.
        return {"step": None, "margin": float("inf"), "gap": None, "by": by}
    # The same calls as the run (prompt, then one token at a time), so the same logits: a prompt
    # evaluation of the answer's tokens rounds differently and can even swap a near-tie.
    llm.reset()
    llm.eval(ids)
    for t in toks[:j]:
        llm.eval([t])
    logits = last_logits(llm)
    theirs = [want_ids[j]] if j < len(want_ids) else sorted(f.eos)
    return {"step": j, "margin": step_margins[j], "by": by, "llama_cpp_token": toks[j],
            "bakeoff_token": theirs[0] if j < len(want_ids) else None,
            # How far below llama.cpp's choice bakeoff's token is in llama.cpp's logits.
            "gap": float(logits[toks[j]] - max(logits[t] for t in theirs))}


def check_greedy(a, models, records):
    """The greedy-answer check; returns (failed, per-item rows, the regenerations for --engine-margins)."""
    from llama_cpp import Llama

    sizes = results_sizes(a.audit)
    rows, failed, noise_jobs, table = [], False, defaultdict(list), []
    table.append(f"\n| model | component | items | bakeoff's answer, tokens min / median / max | identical "
                 f"| near-ties (llama.cpp margin < {a.gen_tie:g}) | failed: differing, not tied (or prompt ids differ) "
                 "| first differing token: step min / median / max | llama.cpp margin there, min–max "
                 "| gsm8k: same answer where the text differs; exact match bakeoff / llama.cpp "
                 "| first difference located by | same token count where identical "
                 "| llama.cpp's own end-of-generation set would have ended it |")
    table.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, recs in records.items():
        path = os.path.expanduser(models[label])
        eos = bakeoff_info(a.bakeoff, path)["eos_token_ids"]
        per_comp = defaultdict(list)
        for r in recs:
            if a.limit and len(per_comp[r["component"]]) >= a.limit:
                continue
            per_comp[r["component"]].append(r)
        llm = Llama(model_path=path, n_ctx=4096, n_batch=512, n_threads=a.threads,
                    n_threads_batch=a.threads, logits_all=False, verbose=False, **F32_KV)
        add_bos = bool(llm._model.add_bos_token())
        pieces, eog = Pieces(llm), eog_test(llm)
        for comp in GENERATIVE:
            items = per_comp.get(comp, [])
            if not items:
                continue
            n = same = ties = bad = 0
            caps = {generation_rules(r, sizes)[1] for r in items}
            steps, margins, gsm_same, gsm_diff, count_same, right = [], [], 0, 0, 0, [0, 0]
            elsewhere, located = 0, defaultdict(int)
            t0 = time.time()
            for r in items:
                if str(r.get("finish", "")).startswith("error"):
                    # bakeoff produced no answer (e.g. a prompt longer than its context): nothing to compare.
                    print(f"  {label} {r['id']}: skipped, bakeoff's generation failed: {r['finish']}")
                    continue
                stops, cap = generation_rules(r, sizes)
                ids = llm.tokenize(r["prompt"].encode("utf-8"), add_bos=add_bos, special=True)
                if len(ids) + cap > llm.n_ctx():
                    raise SystemExit(f"{label} {r['id']}: {len(ids)} prompt tokens + {cap} exceed n_ctx {llm.n_ctx()}")
                ours_ids = bakeoff_ids(a.bakeoff, path, r["prompt"]) if not a.no_ids_check else ids
                item = {"model": label, "component": comp, "id": r["id"], "prompt_tokens": len(ids),
                        "max_tokens": cap, "bakeoff_tokens": r.get("tokens"), "bakeoff_finish": r.get("finish")}
                n += 1
                if ours_ids != ids:
                    k = common_prefix(ours_ids, ids)
                    item["verdict"] = f"PROMPT IDS DIFFER at {k}"
                    print(f"  {label} {r['id']}: prompt ids differ at {k}: bakeoff {ours_ids[k:k + 5]} llama.cpp {ids[k:k + 5]}")
                    bad += 1
                    rows.append(item)
                    continue
                f = Follow(llm, pieces, r["output"], r.get("finish"), r.get("tokens"), stops, eos, eog)
                toks, step_margins = llama_greedy(llm, ids, cap, ends=f)
                gen = [t for t in toks if t not in f.eos]
                noise_jobs[label].append((ids, stops, cap, gen, f.top2))
                text = f.text.decode("utf-8", errors="replace")
                item.update(llama_cpp_tokens=len(gen), llama_cpp_finish=f.finish, identical=text == r["output"],
                            llama_cpp_eog_elsewhere=f.eog_elsewhere)
                elsewhere += f.eog_elsewhere is not None
                if comp == "gsm8k":
                    item["answers"] = {"bakeoff": gsm8k_answers(r["output"]), "llama_cpp": gsm8k_answers(text)}
                    for k, side in enumerate(("bakeoff", "llama_cpp")):
                        right[k] += item["answers"][side]["flexible"] == r.get("gold")
                    if "extracted" in r and r["extracted"] != item["answers"]["bakeoff"]:
                        print(f"  {label} {r['id']}: this script extracts {item['answers']['bakeoff']} from bakeoff's "
                              f"answer, the audit {r['extracted']} (the port of gsm8k.rs is out of date)")
                        bad += 1
                if text == r["output"]:
                    same += 1
                    count_same += r.get("tokens") == len(gen)
                    item["verdict"] = "identical"
                else:
                    d = locate(llm, ids, toks, step_margins, f, r, stops, cap, a, path)
                    located[d["by"]] += 1
                    item.update(first_difference=d, llama_cpp_output=text)
                    if d["step"] is not None:
                        steps.append(d["step"])
                    margins.append(d["margin"])
                    tie = d["margin"] < a.gen_tie
                    ties += tie
                    bad += not tie
                    if comp == "gsm8k":
                        ans = item["answers"]
                        gsm_diff += 1
                        gsm_same += ans["bakeoff"]["flexible"] == ans["llama_cpp"]["flexible"]
                    item["verdict"] = "near-tie" if tie else "DIFFERS"
                    if d["step"] is not None:
                        where = f"step {d['step']} (from the {d['by']})"
                    elif d["by"] == "text":
                        where = "no step located from the text (smallest margin of the run)"
                    else:
                        where = f"no step: the same tokens ({d['by']}) give a different text"
                    gap = f", bakeoff's token {d['gap']:.3f} below" if d.get("gap") is not None else ""
                    print(f"  {label} {r['id']}: {item['verdict']} at {where}, llama.cpp margin {d['margin']:.3f}{gap}; "
                          f"tokens bakeoff {r.get('tokens')} ({r.get('finish')}) llama.cpp {len(gen)} ({f.finish})",
                          flush=True)
                    if not tie and a.verbose:
                        print(f"    bakeoff:   {r['output']!r}\n    llama.cpp: {text!r}")
                rows.append(item)
            failed |= bad > 0
            gsm = f"{gsm_same}/{gsm_diff}; {right[0]} / {right[1]}" if comp == "gsm8k" else "-"
            mr = f"{min(margins):.3f}–{max(margins):.3f}" if margins else "-"
            lengths = [r.get("tokens") for r in items if isinstance(r.get("tokens"), int)]
            table.append(f"| {label} | {comp} | {n} | {stats(lengths)} | {same} | {ties} | {bad} | {stats(steps)} | {mr} "
                         f"| {gsm} | {by_text(located)} | {count_same}/{same} | {elsewhere} |")
            print(f"  {label} {comp}: {n} items, cap {sorted(caps)}, {time.time() - t0:.0f} s", flush=True)
        del llm
    print("\n".join(table))
    if failed:
        print("greedy: a generated answer differs from llama.cpp's away from a near-tie (or its prompt ids differ)")
    return failed, rows, noise_jobs


def engine_margins(a, models, noise_jobs, batch):
    """bakeoff's own top-1/top-2 margins (`bakeoff serve`, greedy, log-probabilities, `batch`
    requests at a time as the eval runs them) against llama.cpp's, at every step where the two
    runs agree and at the step where they part."""
    from concurrent.futures import ThreadPoolExecutor

    import openai
    from llama_cpp import Llama
    from serve_proc import start_server

    table = ["\n| model | answers | steps compared | |Δ margin| mean | median | 99th pct | max "
             "| steps where llama.cpp's margin < 1: count, |Δ| median / 99th pct / max "
             "| answers that part | largest margin where they part, llama.cpp; bakeoff |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    out = {}
    for label, jobs in noise_jobs.items():
        jobs = jobs[:a.engine_margins]
        path = os.path.expanduser(models[label])
        vocab = Llama(model_path=path, vocab_only=True, verbose=False)
        piece = lambda t: vocab.detokenize([t], special=False).decode("utf-8", errors="replace")
        server, addr = start_server(a.bakeoff, path, a.threads)
        client = openai.OpenAI(base_url=f"http://{addr}/v1", api_key="unused", timeout=3600)

        def ask(job):
            # No stop strings (OpenAI's API takes at most 4, humaneval has 5): the steps compared
            # end with llama.cpp's answer anyway.
            ids, _, _, gen, _ = job
            return client.completions.create(model="fast", prompt=ids, max_tokens=max(1, len(gen)),
                                             temperature=0, logprobs=5)

        try:
            with ThreadPoolExecutor(max_workers=batch) as pool:
                answers = list(pool.map(ask, jobs))
        finally:
            server.terminate()
            server.wait(timeout=30)
        deltas, parts = [], []
        for (_, _, _, gen, top2), resp in zip(jobs, answers):
            lp = resp.choices[0].logprobs
            # Up to where either run ends (end of sequence, stop string, cap): how each ends is
            # the greedy check's business.
            for j, (la_id, la, lb_id, lb) in enumerate(top2[:min(len(gen), len(lp.tokens))]):
                top = lp.top_logprobs[j]
                ours = sorted(top.values(), reverse=True)
                ta, tb = piece(la_id), piece(lb_id)
                if ta != tb and ta in top and tb in top:
                    deltas.append((abs((top[ta] - top[tb]) - (la - lb)), la - lb))
                if lp.tokens[j] != piece(gen[j]):
                    parts.append((la - lb, ours[0] - ours[1] if len(ours) > 1 else float("nan")))
                    break
        steps = deltas
        deltas = sorted(d for d, _ in steps)
        q = lambda xs, p: xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")
        mean = sum(deltas) / len(deltas) if deltas else float("nan")
        # Only where llama.cpp's margin is small can the other engine's rounding flip the choice.
        small = sorted(d for d, m in steps if m < 1.0)
        part = lambda k: max((p[k] for p in parts), default=float("nan"))
        table.append(f"| {label} | {len(jobs)} | {len(deltas)} | {mean:.4f} | {q(deltas, 0.5):.4f} "
                     f"| {q(deltas, 0.99):.4f} | {q(deltas, 1.0):.4f} | {len(small)}: {q(small, 0.5):.4f} / "
                     f"{q(small, 0.99):.4f} / {q(small, 1.0):.4f} | {len(parts)} | {part(0):.3f}; {part(1):.3f} |")
        out[label] = {"answers": len(jobs), "steps": len(deltas), "mean": mean, "p99": q(deltas, 0.99),
                      "max": q(deltas, 1.0), "max_where_margin_below_1": q(small, 1.0), "parted": parts,
                      "per_step": [{"delta": d, "llama_cpp_margin": m} for d, m in steps]}
    print("\n".join(table))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--audit", help="audit.jsonl of a bakeoff eval run (without it: run one, see --only)")
    p.add_argument("--model", action="append", required=True,
                   help="LABEL=PATH.gguf (LABEL as in the audit) or PATH.gguf (LABEL: the file's stem)")
    p.add_argument("--bakeoff", help="the bakeoff binary (needed for the greedy check and without --audit)")
    p.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "evaldata"))
    p.add_argument("--only", help="components to check (without --audit: to run; default gsm8k,humaneval)")
    p.add_argument("--max-new-tokens", type=int, help="token cap of the eval run without --audit")
    p.add_argument("--checks", help="choices,greedy (default: both; greedy only with --bakeoff)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tie", type=float, default=0.01, help="near-tie margin of a choice (nats; nats/char for acc_norm)")
    p.add_argument("--gen-tie", type=float, default=1.0,
                   help="near-tie margin of a generated answer: llama.cpp's top-1/top-2 logit margin at the "
                        "first differing token (1.0: above the largest measured change of a margin under 1 "
                        "between the engines, 0.92 on SmolLM2)")
    p.add_argument("--min-agree", type=float, default=0.98)
    p.add_argument("--limit", type=int, default=0, help="first N items per component and model (0: all)")
    p.add_argument("--engine-margins", type=int, default=0,
                   help="measure bakeoff's margins against llama.cpp's on the first N generated answers per model")
    p.add_argument("--no-ids-check", action="store_true", help="skip comparing the prompt ids with bakeoff tokenize")
    p.add_argument("--verbose", action="store_true", help="print both texts of a differing, non-tied answer")
    p.add_argument("--json", help="write per-item results here")
    a = p.parse_args()

    models = {}
    for m in a.model:
        label, sep, path = m.partition("=")
        if not sep:
            label, path = Path(m).stem, m
        models[label] = path
    checks = set((a.checks or "choices,greedy").split(","))
    ran_eval = a.audit is None
    if ran_eval:
        a.only = a.only or "gsm8k,humaneval"
        if not a.bakeoff:
            p.error("without --audit, --bakeoff runs the eval")
        out = tempfile.mkdtemp(prefix="eval-parity-")
        atexit.register(shutil.rmtree, out, True)
        cmd = [a.bakeoff, "eval", "--only", a.only, "--threads", str(a.threads), "--data-dir", a.data_dir,
               "--out", out]
        for path in models.values():
            cmd += ["--model", os.path.expanduser(path)]
        if a.limit:
            cmd += ["--limit", str(a.limit)]
        if a.max_new_tokens:
            cmd += ["--max-new-tokens", str(a.max_new_tokens)]
        t0 = time.time()
        run(cmd)
        a.audit = os.path.join(out, "audit.jsonl")
        print(f"<!-- {' '.join(cmd[1:])}: {time.time() - t0:.0f} s -->")

    mc, gen = defaultdict(list), defaultdict(list)
    with open(a.audit) as f:
        for line in f:
            r = json.loads(line)
            if r.get("model") not in models or (a.only and r.get("component") not in a.only.split(",")):
                continue
            if "continuations" in r and isinstance(r.get("output"), list):
                mc[r["model"]].append(r)
            elif r.get("component") in GENERATIVE and isinstance(r.get("output"), str):
                gen[r["model"]].append(r)
    mc = mc if "choices" in checks else {}
    gen = gen if "greedy" in checks else {}
    if not mc and not gen:
        sys.exit(f"no records of {sorted(checks)} for {sorted(models)} in {a.audit}")
    failed, rows = False, []
    if ran_eval:
        # A component the eval skipped (HumanEval without python3) must not pass unchecked.
        for label in models:
            have = {r["component"] for r in mc.get(label, []) + gen.get(label, [])}
            for comp in a.only.split(","):
                if comp not in have:
                    print(f"{label}: the eval run recorded no {comp} items")
                    failed = True
    if gen and not a.bakeoff:
        if a.checks:
            sys.exit("the greedy check needs --bakeoff (bakeoff's end-of-sequence ids and prompt ids)")
        print(f"(greedy check of {sum(map(len, gen.values()))} generated answers skipped: it needs --bakeoff)")
        gen = {}
    if mc:
        bad, r = check_choices(a, models, mc)
        failed |= bad
        rows += r
    summary = {"items": rows}
    if gen:
        bad, r, jobs = check_greedy(a, models, gen)
        failed |= bad
        rows += r
        if a.engine_margins:
            sizes = results_sizes(a.audit)
            summary["engine_margins"] = engine_margins(a, models, jobs, sizes.get("gen_batch", 8))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=1)
    print("all checks passed" if not failed else "FAILED")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
