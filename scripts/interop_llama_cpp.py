#!/usr/bin/env python3
"""Interop between `bakeoff quantize` and llama.cpp (through llama-cpp-python).

For each source model (Hugging Face folders in f32: bakeoff's tiny synthetic Llama and Qwen2,
whose 64-wide rows exercise llama.cpp's K-quant fallbacks, and two "wide" models written here
with 256-wide rows so that real Q4_K/Q5_K/Q6_K blocks are used), and each type
q8_0, q4_0, q4_k, q5_k, q6_k:

  1. bakeoff -> llama.cpp: `bakeoff quantize` writes the file; llama.cpp loads it, tokenizes the
     same texts as bakeoff, and generates the same greedy tokens as `bakeoff generate` for
     --steps steps from the same prompt ids.
  2. llama.cpp -> bakeoff: llama.cpp's quantizer (`llama_model_quantize`, no imatrix) quantizes
     the f32 GGUF that `bakeoff quantize --to f32` converted; bakeoff loads that file and
     generates the same greedy tokens as llama.cpp.
  3. Both quantizers agree: every tensor has the same type in the two files (llama.cpp's
     per-tensor mix and fallbacks), and the same bytes (llama.cpp's reference quantizers),
     with and without --pure.
  4. The types bakeoff reads but does not write (f16, bf16, q4_1, q5_0, q5_1, q2_k, q3_k,
     iq4_nl, iq4_xs; --read-types): llama.cpp quantizes the f32 GGUF, in its mix and --pure, and
     bakeoff loads each file and generates the same greedy tokens as llama.cpp. On the 64-wide
     tiny models llama.cpp falls back from the 256-block types; the wide models use them.

Exit status: 0 when everything agrees, 1 on any mismatch, 2 when the setup fails.

    .venv-ref/bin/python scripts/interop_llama_cpp.py --bakeoff target/debug/bakeoff
"""

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

try:
    import gguf
    import llama_cpp
    from llama_cpp import Llama
    from safetensors.numpy import save_file
except ImportError as e:  # pragma: no cover - setup problem, not a mismatch
    print(f"setup: {e} (run scripts/reference/setup.sh)", file=sys.stderr)
    sys.exit(2)

# llama.cpp's llama_ftype for each bakeoff type (q4_k and q5_k are the _M mixes).
FTYPES = {"q8_0": 7, "q4_0": 2, "q4_k": 15, "q5_k": 17, "q6_k": 18}
# llama.cpp file types that bakeoff only reads (q3_k is llama.cpp's Q3_K_M mix).
READ_FTYPES = {"f16": "F16", "bf16": "BF16", "q4_1": "Q4_1", "q5_0": "Q5_0", "q5_1": "Q5_1",
               "q2_k": "Q2_K", "q3_k": "Q3_K_M", "iq4_nl": "IQ4_NL", "iq4_xs": "IQ4_XS"}
# A near-tie (docs/real-models.md): a greedy step whose top-1/top-2 logit margin in llama.cpp is
# below this, where the two engines' rounding may pick differently.
NEAR_TIE = 0.01
TEXTS = ["Hello world", " leading space and  two", "line one\nline two\n\ttab", "naïve café 日本"]


class Failures:
    def __init__(self):
        self.items = []

    def check(self, ok, what):
        print(("  ok    " if ok else "  FAIL  ") + what, flush=True)
        if not ok:
            self.items.append(what)


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed:\n{r.stderr}")
    return r.stdout


def write_wide_model(tiny_dir: Path, out: Path, arch: str, seed: int, std: float):
    """A Hugging Face folder with the tiny tokenizer and 256-wide rows: hidden 256, 4 heads of 64,
    2 KV heads, intermediate 768 (3 x 256), 8 layers (so the _M mixes differ between layers)."""
    out.mkdir(parents=True, exist_ok=True)
    for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
        shutil.copy(tiny_dir / f, out / f)
    cfg = json.loads((tiny_dir / "config.json").read_text())
    h, inter, layers, heads, kv = 256, 768, 8, 4, 2
    cfg.update(hidden_size=h, intermediate_size=inter, num_hidden_layers=layers,
               num_attention_heads=heads, num_key_value_heads=kv)
    if "max_window_layers" in cfg:
        cfg["max_window_layers"] = layers
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    vocab, hd = cfg["vocab_size"], h // heads
    rng = np.random.default_rng(seed)

    def mat(r, c):
        return (rng.standard_normal((r, c)) * std).astype(np.float32)

    def norm(n):
        return (1.0 + 0.05 * rng.uniform(-1, 1, n)).astype(np.float32)

    t = {"model.embed_tokens.weight": mat(vocab, h), "model.norm.weight": norm(h)}
    if not cfg.get("tie_word_embeddings", False):
        t["lm_head.weight"] = mat(vocab, h)
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = norm(h)
        t[p + "post_attention_layernorm.weight"] = norm(h)
        t[p + "self_attn.q_proj.weight"] = mat(heads * hd, h)
        t[p + "self_attn.k_proj.weight"] = mat(kv * hd, h)
        t[p + "self_attn.v_proj.weight"] = mat(kv * hd, h)
        t[p + "self_attn.o_proj.weight"] = mat(h, heads * hd)
        t[p + "mlp.gate_proj.weight"] = mat(inter, h)
        t[p + "mlp.up_proj.weight"] = mat(inter, h)
        t[p + "mlp.down_proj.weight"] = mat(h, inter)
        if arch == "qwen2":
            t[p + "self_attn.q_proj.bias"] = (rng.standard_normal(heads * hd) * std).astype(np.float32)
            t[p + "self_attn.k_proj.bias"] = (rng.standard_normal(kv * hd) * std).astype(np.float32)
            t[p + "self_attn.v_proj.bias"] = (rng.standard_normal(kv * hd) * std).astype(np.float32)
    save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})


def llama_greedy(path: Path, prompt, steps, threads):
    """llama.cpp's greedy tokens and its top-1/top-2 logit margin at every step."""
    # An f32 KV cache, as bakeoff keeps (llama.cpp's default is f16), so that attention runs at
    # the same precision in both.
    llm = Llama(model_path=str(path), n_ctx=256, n_batch=256, n_threads=threads,
                logits_all=True, verbose=False, type_k=0, type_v=0, flash_attn=False)
    llm.reset()
    llm.eval(prompt)
    out, margins = [], []
    for _ in range(steps):
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        top = np.argsort(logits)[::-1][:2]
        margins.append(float(logits[top[0]] - logits[top[1]]))
        tok = int(np.argmax(logits))
        out.append(tok)
        llm.eval([tok])
    toks = {t: llm.tokenize(t.encode(), add_bos=True, special=True) for t in TEXTS}
    template = llm.metadata.get("tokenizer.chat_template")
    del llm
    return out, margins, toks, template


def check_greedy(f, label, steps, l_ids, margins, b_ids):
    """The same tokens up to the first step where llama.cpp's top-2 margin is
    below NEAR_TIE; a divergence there is a near-tie, reported with its step and margin."""
    if l_ids == b_ids:
        f.check(True, f"{label}: {steps} greedy tokens agree (min top-2 margin {min(margins):.3f})")
        return
    k = next((i for i, (a, b) in enumerate(zip(l_ids, b_ids)) if a != b), min(len(l_ids), len(b_ids)))
    tie = k < len(margins) and margins[k] < NEAR_TIE
    f.check(tie, f"{label}: greedy tokens agree for {k} of {steps} steps, then "
            + (f"a near-tie (llama.cpp margin {margins[k]:.4f} < {NEAR_TIE})" if tie
               else f"differ at llama.cpp margin {margins[k] if k < len(margins) else float('nan'):.4f}"
               f": llama.cpp {l_ids} bakeoff {b_ids}"))


def bakeoff_greedy(bakeoff, path: Path, prompt, steps, threads):
    out = run([bakeoff, "generate", "--model", str(path), "--prompt-ids", json.dumps(prompt),
               "--max-tokens", str(steps), "--ignore-eos", "--json", "--threads", str(threads)])
    return json.loads(out)["generated_ids"]


def bakeoff_tokens(bakeoff, path: Path, text):
    return json.loads(run([bakeoff, "tokenize", "--model", str(path), "--text", text, "--add-special"]))


def llama_quantize(src: Path, dst: Path, ftype: int, pure: bool, threads: int):
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.pure = pure
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {dst}, ftype {ftype}) returned {rc}")


def tensors(path: Path):
    r = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type.name, bytes(np.asarray(t.data).tobytes())) for t in r.tensors}


def type_counts(path: Path):
    counts = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts


def compare_files(ours: Path, theirs: Path, label: str, f: Failures):
    a, b = tensors(ours), tensors(theirs)
    f.check(set(a) == set(b), f"{label}: same tensor names ({len(a)} vs {len(b)})")
    type_diff = [n for n in a if n in b and a[n][0] != b[n][0]]
    f.check(not type_diff, f"{label}: same type for every tensor"
            + (f" (differ: {', '.join(f'{n} {a[n][0]}/{b[n][0]}' for n in type_diff[:6])})" if type_diff else ""))
    byte_diff = [n for n in a if n in b and a[n][0] == b[n][0] and a[n][1] != b[n][1]]
    f.check(not byte_diff, f"{label}: byte-identical tensor data"
            + (f" (differ: {', '.join(byte_diff[:6])})" if byte_diff else ""))
    mix = {}
    for _, (ty, _) in a.items():
        mix[ty] = mix.get(ty, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(mix.items()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bakeoff", required=True, help="the bakeoff executable")
    ap.add_argument("--work", help="folder for the models (default: a temporary one, removed)")
    ap.add_argument("--steps", type=int, default=16, help="greedy steps that must agree")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--types", default=",".join(FTYPES), help="comma-separated bakeoff types")
    ap.add_argument("--read-types", default=",".join(READ_FTYPES),
                    help="comma-separated llama.cpp-only types bakeoff must read (part 4)")
    args = ap.parse_args()
    types = [t for t in args.types.split(",") if t]
    read_types = [t for t in args.read_types.split(",") if t]
    unknown = [t for t in read_types if t not in READ_FTYPES] + [t for t in types if t not in FTYPES]
    if unknown:
        print(f"setup: unknown types {unknown}; --types from {list(FTYPES)}, --read-types from {list(READ_FTYPES)}",
              file=sys.stderr)
        return 2
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bakeoff-interop-"))
    work.mkdir(parents=True, exist_ok=True)
    b = args.bakeoff
    f = Failures()
    try:
        sources = {}
        for preset, arch in [("tiny-llama", "llama"), ("tiny-qwen2", "qwen2")]:
            d = work / f"{preset}-hf"
            if not (d / "model.safetensors").exists():
                run([b, "synth", "--preset", preset, "--format", "hf", "--quant", "f32",
                     "--seed", "3", "--out", str(d)])
            sources[preset] = d
            wide = work / f"wide-{arch}-hf"
            if not (wide / "model.safetensors").exists():
                # synth's weight spread (0.02). Wider spreads make these random models chaotic:
                # at 0.08, llama.cpp's own batched and one-token logits differ by up to 0.2, so
                # no two implementations could agree on greedy tokens for long.
                write_wide_model(d, wide, arch, seed=7, std=0.02)
            sources[f"wide-{arch}"] = wide
        # Prompts of ids valid in both tiny vocabularies (bytes), with BOS for Llama. Random
        # models are nearly flat, so some greedy steps come close to ties, where the two
        # implementations' rounding (llama.cpp quantizes activations to 8 bits; its own batched
        # and one-token logits differ by ~0.015 on the wide models) could pick differently.
        # A divergence at a step whose llama.cpp margin is under NEAR_TIE passes as a near-tie and
        # is reported with its step; any other divergence fails.
        prompts = {"llama": [1, 40, 41, 200, 7, 99, 150, 3, 255, 17, 64, 128],
                   "qwen2": [40, 41, 200, 7, 99, 150, 3, 255, 17, 64, 128, 77]}
        for name, src in sources.items():
            arch = json.loads((src / "config.json").read_text())["model_type"]
            prompt = prompts[arch]
            print(f"== {name} ({src})", flush=True)
            f32 = work / f"{name}-f32.gguf"
            run([b, "quantize", "--model", str(src), "--to", "f32", "--out", str(f32)])
            l_ids, margins, l_toks, template = llama_greedy(f32, prompt, args.steps, args.threads)
            b_ids = bakeoff_greedy(b, f32, prompt, args.steps, args.threads)
            check_greedy(f, f"{name} f32", args.steps, l_ids, margins, b_ids)
            f.check(template is not None, f"{name} f32: llama.cpp sees the chat template")
            for t in TEXTS:
                bt = bakeoff_tokens(b, f32, t)
                f.check(bt == l_toks[t], f"{name}: tokenization of {t!r} agrees"
                        + ("" if bt == l_toks[t] else f": llama.cpp {l_toks[t]} bakeoff {bt}"))
            for ty in types:
                ours = work / f"{name}-{ty}-bakeoff.gguf"
                theirs = work / f"{name}-{ty}-llamacpp.gguf"
                run([b, "quantize", "--model", str(src), "--to", ty, "--out", str(ours)])
                llama_quantize(f32, theirs, FTYPES[ty], False, args.threads)
                mix = compare_files(ours, theirs, f"{name} {ty}", f)
                print(f"        mix: {mix}")
                ours_p = work / f"{name}-{ty}-pure-bakeoff.gguf"
                theirs_p = work / f"{name}-{ty}-pure-llamacpp.gguf"
                run([b, "quantize", "--model", str(src), "--to", ty, "--pure", "--out", str(ours_p)])
                llama_quantize(f32, theirs_p, FTYPES[ty], True, args.threads)
                compare_files(ours_p, theirs_p, f"{name} {ty} --pure", f)
                for direction, path in [("bakeoff file", ours), ("llama.cpp file", theirs)]:
                    l_ids, margins, _, _ = llama_greedy(path, prompt, args.steps, args.threads)
                    b_ids = bakeoff_greedy(b, path, prompt, args.steps, args.threads)
                    check_greedy(f, f"{name} {ty} {direction}", args.steps, l_ids, margins, b_ids)
            for ty in read_types:
                ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{READ_FTYPES[ty]}")
                for pure in (False, True):
                    label = f"{name} {ty}" + (" --pure" if pure else "")
                    theirs = work / f"{name}-{ty}{'-pure' if pure else ''}-llamacpp.gguf"
                    llama_quantize(f32, theirs, ftype, pure, args.threads)
                    print(f"        {label} mix: {type_counts(theirs)}")
                    l_ids, margins, _, _ = llama_greedy(theirs, prompt, args.steps, args.threads)
                    b_ids = bakeoff_greedy(b, theirs, prompt, args.steps, args.threads)
                    check_greedy(f, f"{label} llama.cpp file", args.steps, l_ids, margins, b_ids)
    except Exception as e:  # a crash is a setup failure, reported as such
        print(f"setup: {e}", file=sys.stderr)
        return 2
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    if f.items:
        print(f"{len(f.items)} mismatches", flush=True)
        return 1
    print("all checks agree", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
