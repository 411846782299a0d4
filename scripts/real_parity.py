#!/usr/bin/env python3
"""bakeoff against llama.cpp (llama-cpp-python) on real GGUF files: the same tokens, the same
perplexity, the same greedy answers.

For each --model NAME=FILE:

  ppl     WikiText-2 perplexity by llama-perplexity's protocol (the test set tokenized once, with
          BOS where the vocabulary adds one; --chunks chunks of --ctx tokens, each evaluated from
          an empty cache with BOS over its first token; the second half of each chunk scored).
          llama.cpp's side is computed here from its logits (logits_all); bakeoff's is
          `bakeoff perplexity --json`. Both sides' token ids are compared by SHA-256.
          Pass: |PPL_bakeoff / PPL_llama.cpp - 1| <= --ppl-margin (0.5%).
  chat    The seed report's three prompts and a three-turn conversation with a system message,
          rendered with the model's own Jinja template (llama-cpp-python's Jinja2ChatFormatter
          over the file's tokenizer.chat_template) and tokenized by llama.cpp with special tokens
          parsed; bakeoff's prompt ids come from `bakeoff generate --messages --json`.
          Pass: identical ids.
  greedy  Greedy decoding (temperature 0) from those prompt ids for up to --gen tokens or
          end of sequence, in both engines. The runs must agree token for token up to the first
          step where llama.cpp's top-1/top-2 logit margin is below --tie (0.01): a divergence
          at such a step is a near-tie, counted and reported, not a failure. A divergence at a
          larger margin fails only with --strict-greedy: on the real Qwen2.5-Coder-0.5B file the
          two engines' logits still differ by up to about 0.1 on some steps (docs/real-models.md),
          so that criterion is reported until it holds.
  self    llama.cpp against itself: the greedy runs above repeated with the prompt evaluated one
          token at a time (n_batch 1, so the prompt takes llama.cpp's decode path instead of its
          batched matrix kernels). Reports how far the two llama.cpp runs agree, the margin where
          they part, and the largest logit difference over the steps both ran: the reference's own
          sensitivity to its order of operations, against which the near-tie margin can be judged.
          Never fails by itself. With --self-tie, a greedy divergence between bakeoff and llama.cpp at
          a step whose llama.cpp margin is below the largest move of a top-1/top-2 margin between
          llama.cpp's own two runs on the same file (the same two tokens, at the steps where both
          runs agree) is within the reference's reproducibility (a near-tie by the reference's own
          measure) and not a mismatch; --strict-greedy then fails on any divergence beyond it.

Prints one table per check and a JSON summary (--json FILE). Exit status: 0 when every check
passes, 1 on a mismatch, 2 when the setup fails.

    .venv-ci/bin/python scripts/real_parity.py --bakeoff target/release/bakeoff \
        --model smollm2-135m=$HOME/.cache/bakeoff/real-models/smollm2-135m-instruct-q4_1.gguf
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    import llama_cpp
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
except ImportError as e:  # pragma: no cover - setup problem, not a mismatch
    print(f"setup: {e} (run scripts/ci-python.sh)", file=sys.stderr)
    sys.exit(2)

# bakeoff keeps its KV cache in f32; llama.cpp's default is f16, which alone moves logits by a few
# hundredths. The reference runs with an f32 cache so the comparison is of the engines' arithmetic.
F32_KV = {"type_k": 0, "type_v": 0}

SEED_PROMPTS = [
    "Explain artificial intelligence in simple terms",
    "Write a simple Python function to calculate fibonacci numbers",
    "Write a short story about a robot learning to paint",
]
CONVERSATION = [
    {"role": "system", "content": "You are a concise assistant. Answer in at most three sentences."},
    {"role": "user", "content": "What is the boiling point of water at sea level?"},
    {"role": "assistant", "content": "Water boils at 100 degrees Celsius (212 °F) at sea level."},
    {"role": "user", "content": "And on top of Mount Everest?"},
    {"role": "assistant", "content": "About 70 °C, because the air pressure there is much lower."},
    {"role": "user", "content": "Why does lower pressure lower the boiling point?"},
]


def conversations():
    out = [(f"seed-{i + 1}", [{"role": "user", "content": p}]) for i, p in enumerate(SEED_PROMPTS)]
    out.append(("three-turn", CONVERSATION))
    return out


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stderr}")
    return r.stdout


def log_softmax(rows):
    rows = rows.astype(np.float64)
    m = rows.max(axis=-1, keepdims=True)
    return rows - m - np.log(np.exp(rows - m).sum(axis=-1, keepdims=True))


def llama_perplexity(path, text, chunks, ctx, threads):
    """llama-perplexity's loop over llama.cpp's logits."""
    llm = Llama(model_path=str(path), n_ctx=ctx, n_batch=ctx, n_ubatch=ctx, logits_all=True,
                n_threads=threads, n_threads_batch=threads, verbose=False, **F32_KV)
    add_bos = bool(llm._model.add_bos_token())
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)
    n_chunk = min(chunks, len(tokens) // ctx)
    first = ctx // 2
    nll, nll2, count, running = 0.0, 0.0, 0, []
    t0 = time.time()
    for i in range(n_chunk):
        chunk = list(tokens[i * ctx:(i + 1) * ctx])
        targets = chunk[first + 1:]
        if add_bos:
            chunk[0] = llm.token_bos()
        llm.reset()
        llm.eval(chunk)
        logits = np.array(llm.scores[first:ctx - 1], dtype=np.float32)
        lp = log_softmax(logits)
        v = -lp[np.arange(len(targets)), targets]
        nll += float(v.sum())
        nll2 += float((v * v).sum())
        count += len(v)
        running.append(float(np.exp(nll / count)))
    mean = nll / count
    var = nll2 / count - mean * mean
    stderr = float(np.sqrt(var / (count - 1))) if var > 0 and count > 10 else 0.0
    ids = np.array(tokens[:n_chunk * ctx], dtype="<u4").tobytes()
    del llm
    return {
        "ppl": float(np.exp(mean)),
        "ppl_stderr": float(np.exp(mean) * stderr),
        "chunks": n_chunk,
        "scored_tokens": count,
        "per_chunk": running,
        "token_ids_sha256": hashlib.sha256(ids).hexdigest(),
        "seconds": time.time() - t0,
    }


def bakeoff_perplexity(bakeoff, path, data_dir, chunks, ctx, threads):
    out = run([bakeoff, "perplexity", "--model", str(path), "--data-dir", str(data_dir),
               "--chunks", str(chunks), "--ctx", str(ctx), "--threads", str(threads), "--json"])
    return json.loads(out)


def render_chat(llm, messages):
    """The file's own chat template, rendered as llama.cpp's chat handler renders it."""
    template = llm.metadata.get("tokenizer.chat_template")
    if template is None:
        raise RuntimeError("the file has no tokenizer.chat_template")
    vocab_tok = lambda i: llm._model.token_get_text(i) if i >= 0 else ""
    fmt = Jinja2ChatFormatter(
        template=template,
        eos_token=vocab_tok(llm.token_eos()),
        bos_token=vocab_tok(llm.token_bos()),
        add_generation_prompt=True,
    )
    return fmt(messages=messages).prompt


def eog_test(llm):
    """llama.cpp's end-of-generation test (EOS, EOT and the tokens it promotes to them)."""
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    return lambda tok: bool(llama_cpp.llama_vocab_is_eog(vocab, tok))


def last_logits(llm):
    """The logits after the last token evaluated: without logits_all, llama-cpp-python keeps no
    scores, and the context holds those of the last token of the last batch."""
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()


def top2_margin(logits):
    top2 = np.partition(logits, -2)[-2:]
    return float(abs(top2[1] - top2[0]))


def margin_shift(a, b):
    """How far the top-1/top-2 margin of logits `a` moves in `b` (the same two tokens)."""
    j2, j1 = np.argpartition(a, -2)[-2:]
    if a[j2] > a[j1]:
        j1, j2 = j2, j1
    return float(abs((a[j1] - a[j2]) - (b[j1] - b[j2])))


def llama_greedy(llm, ids, n_gen, ends=None, keep_logits=None):
    """Greedy tokens and llama.cpp's top-1/top-2 margin at each step, for up to n_gen tokens.
    The run ends after the token for which `ends(tokens, logits)` is true (the tokens so far, that
    one last; the logits it was taken from); by default at llama.cpp's end of generation (EOS/EOT)."""
    if ends is None:
        is_eog = eog_test(llm)
        ends = lambda tokens, _logits: is_eog(tokens[-1])
    llm.reset()
    llm.eval(ids)
    out, margins = [], []
    for _ in range(n_gen):
        logits = last_logits(llm)
        if keep_logits is not None:
            keep_logits.append(logits)
        margins.append(top2_margin(logits))
        out.append(int(np.argmax(logits)))
        if ends(out, logits):
            break
        llm.eval([out[-1]])
    return out, margins


def bakeoff_chat(bakeoff, path, messages, n_gen, threads):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(messages, f)
        mpath = f.name
    try:
        out = run([bakeoff, "generate", "--model", str(path), "--messages", mpath, "--json",
                   "--temperature", "0", "--max-tokens", str(n_gen), "--threads", str(threads)])
    finally:
        os.unlink(mpath)
    return json.loads(out.strip().splitlines()[-1])


def compare_greedy(ours, theirs, margins, tie, eog=None):
    """(agreed steps, verdict): `same`, `near-tie at step k`, or `MISMATCH at step k`."""
    n = 0
    while n < len(ours) and n < len(theirs) and ours[n] == theirs[n]:
        n += 1
    if n == len(ours) == len(theirs):
        return n, "same"
    # llama.cpp's list ends with the end-of-generation token it sampled; bakeoff's ids stop before it.
    if eog is not None and n == len(ours) == len(theirs) - 1 and eog(theirs[-1]):
        return n, "same (both ended the answer)"
    if n < len(theirs) and n < len(margins) and margins[n] < tie:
        return n, f"near-tie at step {n} (margin {margins[n]:.4f})"
    # One stopped (EOS or length) where the other went on: a length limit is not a divergence.
    if n == min(len(ours), len(theirs)):
        return n, "same (one run hit the length limit)"
    return n, f"MISMATCH at step {n} (margin {margins[n]:.4f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bakeoff", required=True, help="the bakeoff binary")
    ap.add_argument("--model", action="append", required=True, help="NAME=FILE.gguf (repeatable)")
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "evaldata"))
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--gen", type=int, default=64, help="greedy tokens per prompt")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--ppl-margin", type=float, default=0.005)
    ap.add_argument("--tie", type=float, default=0.01)
    ap.add_argument("--checks", default="ppl,chat,greedy")
    ap.add_argument("--strict-greedy", action="store_true",
                    help="fail on a greedy divergence at a step whose llama.cpp margin is >= --tie "
                         "(without it such divergences are reported, not failed)")
    ap.add_argument("--self-tie", action="store_true",
                    help="judge greedy divergences against how far llama.cpp's own top-2 margins move "
                         "between its batched and stepwise runs on the same file (adds the 'self' check)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    checks = set(args.checks.split(","))
    if args.self_tie:
        checks.add("self")
    text = (Path(args.data_dir) / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8")

    failures, greedy_mismatches, summary = [], [], {"models": {}}
    for spec in args.model:
        name, _, path = spec.partition("=")
        path = Path(path)
        if not path.is_file():
            print(f"setup: {path} is missing (bash ../shared/models/fetch.sh)", file=sys.stderr)
            sys.exit(2)
        rec = summary["models"].setdefault(name, {"file": str(path)})
        print(f"== {name} ({path.name})", flush=True)
        if "ppl" in checks:
            theirs = llama_perplexity(path, text, args.chunks, args.ctx, args.threads)
            ours = bakeoff_perplexity(args.bakeoff, path, args.data_dir, args.chunks, args.ctx,
                                      args.threads)
            ratio = ours["ppl"] / theirs["ppl"]
            same_ids = ours["token_ids_sha256"] == theirs["token_ids_sha256"]
            ok = same_ids and abs(ratio - 1) <= args.ppl_margin and ours["chunks"] == theirs["chunks"]
            print(f"  ppl   {ours['chunks']}x{args.ctx}: bakeoff {ours['ppl']:.4f} ± {ours['ppl_stderr']:.4f}"
                  f"  llama.cpp {theirs['ppl']:.4f} ± {theirs['ppl_stderr']:.4f}"
                  f"  ratio {ratio:.5f}  token ids {'same' if same_ids else 'DIFFER'}"
                  f"  ({ours['seconds']:.0f} s / {theirs['seconds']:.0f} s)  {'ok' if ok else 'FAIL'}",
                  flush=True)
            rec["ppl"] = {"bakeoff": ours["ppl"], "bakeoff_stderr": ours["ppl_stderr"],
                          "llama_cpp": theirs["ppl"], "llama_cpp_stderr": theirs["ppl_stderr"],
                          "ratio": ratio, "same_token_ids": same_ids, "chunks": ours["chunks"],
                          "ctx": args.ctx, "seconds_bakeoff": ours["seconds"],
                          "seconds_llama_cpp": theirs["seconds"]}
            if not ok:
                failures.append(f"{name}: perplexity")
        if checks & {"chat", "greedy", "self"}:
            llm = Llama(model_path=str(path), n_ctx=2048, n_threads=args.threads,
                        n_threads_batch=args.threads, verbose=False, **F32_KV)
            add_bos = bool(llm._model.add_bos_token())
            stepwise = None
            if "self" in checks:
                stepwise = Llama(model_path=str(path), n_ctx=2048, n_batch=1, n_ubatch=1,
                                 n_threads=args.threads, n_threads_batch=args.threads,
                                 verbose=False, **F32_KV)
            rec["chat"] = []
            for cname, messages in conversations():
                prompt = render_chat(llm, messages)
                want = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)
                got = bakeoff_chat(args.bakeoff, path, messages, args.gen, args.threads)
                same = got["prompt_ids"] == want
                row = {"conversation": cname, "prompt_tokens": len(want), "same_prompt_ids": same}
                line = f"  chat  {cname:<11} prompt {len(want):>4} tok: ids {'same' if same else 'DIFFER'}"
                if not same:
                    failures.append(f"{name} {cname}: chat prompt ids")
                    k = next((i for i, (a, b) in enumerate(zip(got['prompt_ids'], want)) if a != b),
                             min(len(want), len(got['prompt_ids'])))
                    line += f" (first difference at {k}: bakeoff {got['prompt_ids'][k:k + 5]} llama.cpp {want[k:k + 5]})"
                if "greedy" in checks and same:
                    logits_a = [] if stepwise is not None else None
                    theirs, margins = llama_greedy(llm, want, args.gen, keep_logits=logits_a)
                    batched = (theirs, margins, logits_a)
                    agreed, verdict = compare_greedy(got["generated_ids"], theirs, margins, args.tie,
                                                     eog=eog_test(llm))
                    row.update(generated_bakeoff=len(got["generated_ids"]),
                               generated_llama_cpp=len(theirs), agreed_steps=agreed,
                               verdict=verdict, min_margin=min(margins) if margins else None,
                               same_text=got["generated_ids"] == theirs)
                    line += f" | greedy agreed {agreed}/{len(theirs)} steps: {verdict}"
                    row["margin_at_divergence"] = (margins[agreed] if verdict.startswith("MISMATCH")
                                                   else None)
                if stepwise is not None:
                    # The batched run is the greedy check's own when that ran; otherwise made here.
                    if "greedy" in checks and same:
                        a, margins_a, logits_a = batched
                    else:
                        logits_a = []
                        a, margins_a = llama_greedy(llm, want, args.gen, keep_logits=logits_a)
                    logits_b = []
                    b, _ = llama_greedy(stepwise, want, args.gen, keep_logits=logits_b)
                    agreed, verdict = compare_greedy(b, a, margins_a, args.tie, eog=eog_test(llm))
                    both = min(len(logits_a), len(logits_b), agreed + 1)
                    diff = max((float(np.max(np.abs(logits_a[i] - logits_b[i]))) for i in range(both)),
                               default=0.0)
                    shift = max((margin_shift(logits_a[i], logits_b[i]) for i in range(both)),
                                default=0.0)
                    row["llama_cpp_self"] = {"agreed_steps": agreed, "verdict": verdict,
                                             "steps": len(a), "max_logit_diff": diff,
                                             "max_margin_shift": shift}
                    line += (f" | llama.cpp batched vs stepwise prompt: agreed {agreed}/{len(a)}: "
                             f"{verdict}; max |logit diff| {diff:.4f}, top-2 margin moved up to {shift:.4f}")
                    if "greedy" in checks and same:
                        margins_b = [top2_margin(x) for x in logits_b]
                        agreed_b, verdict_b = compare_greedy(got["generated_ids"], b, margins_b,
                                                             args.tie, eog=eog_test(llm))
                        row["vs_llama_cpp_stepwise"] = {"agreed_steps": agreed_b,
                                                        "verdict": verdict_b}
                        line += f" | bakeoff vs stepwise: agreed {agreed_b}/{len(b)}: {verdict_b}"
                print(line, flush=True)
                rec["chat"].append(row)
            del llm, stepwise
            # The reference's own reproducibility on this file: the largest move of a top-1/top-2
            # margin between llama.cpp's two evaluations of the same prompts.
            self_diff = max((r["llama_cpp_self"]["max_margin_shift"] for r in rec["chat"]
                             if "llama_cpp_self" in r), default=None)
            rec["llama_cpp_self_max_margin_shift"] = self_diff
            for row in rec["chat"]:
                m = row.get("margin_at_divergence")
                if m is None:
                    continue
                label = f"{name} {row['conversation']}: greedy {row['verdict']}"
                if args.self_tie and self_diff is not None and m < self_diff:
                    row["within_reference_reproducibility"] = True
                    print(f"  {row['conversation']}: divergence at margin {m:.4f} is below the {self_diff:.4f} "
                          "by which llama.cpp's own top-2 margins move between its two evaluations "
                          "on this file: within the reference's reproducibility", flush=True)
                    continue
                greedy_mismatches.append(label)
                if args.strict_greedy:
                    failures.append(label)
    summary["failures"] = failures
    summary["greedy_mismatches"] = greedy_mismatches
    if greedy_mismatches and not args.strict_greedy:
        print("greedy divergences above the near-tie margin (reported, not failed): "
              + "; ".join(greedy_mismatches))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    print("all checks passed" if not failures else "FAILED: " + "; ".join(failures))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
