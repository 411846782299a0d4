#!/usr/bin/env python3
"""One timing run of a peer engine on a model file, printed as one JSON line.

Peers: llama.cpp (through llama-cpp-python) on GGUF files, transformers (CPU torch) on Hugging Face
folders. Each call is a fresh process, so `scripts/speed_compare.py` can alternate peers and bakeoff
run by run. Same protocol as `bakeoff generate --prompt-ids ... --ignore-eos --json`: the prompt is
the given token ids, decode is greedy with EOS ignored.
"""
import argparse
import json
import sys
import time


def run_llama_cpp(a, ids):
    import llama_cpp
    import numpy as np

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=a.model, n_ctx=max(1024, len(ids) + a.max_tokens + 8),
                          n_threads=a.threads, n_threads_batch=a.threads, n_batch=512,
                          n_ubatch=512, verbose=False)
    load_s = time.perf_counter() - t0
    n_vocab = llm.n_vocab()

    def last_logits():
        # The last token's logits straight from the context: asking llama-cpp-python for all
        # logits (logits_all) would make llama.cpp compute the output head for every prompt token.
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,))

    t0 = time.perf_counter()
    llm.eval(ids)
    prefill_s = time.perf_counter() - t0
    times = []
    tok = int(np.argmax(last_logits()))
    times.append(time.perf_counter())
    generated = [tok]
    for _ in range(a.max_tokens - 1):
        llm.eval([tok])
        tok = int(np.argmax(last_logits()))
        generated.append(tok)
        times.append(time.perf_counter())
    decode = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    return {"engine": "llama.cpp", "version": llama_cpp.__version__, "load_s": load_s,
            "prefill_tok_s": len(ids) / prefill_s, "decode_tok_s": decode, "generated_ids": generated}


def run_transformers(a, ids):
    import torch
    import transformers

    torch.set_num_threads(a.threads)
    dtype = {"bf16": torch.bfloat16, "f32": torch.float32, "f16": torch.float16}[a.dtype]
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype)
    model.eval()
    load_s = time.perf_counter() - t0
    x = torch.tensor([ids])
    with torch.inference_mode():
        model(x[:, :8])  # warm-up of the kernels, not of the measured prompt
        t0 = time.perf_counter()
        out = model(x, use_cache=True)
        prefill_s = time.perf_counter() - t0
        past = out.past_key_values
        tok = out.logits[0, -1].argmax().view(1, 1)
        times = [time.perf_counter()]
        for _ in range(a.max_tokens - 1):
            out = model(tok, past_key_values=past, use_cache=True)
            past = out.past_key_values
            tok = out.logits[0, -1].argmax().view(1, 1)
            times.append(time.perf_counter())
    decode = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    return {"engine": "transformers", "version": transformers.__version__, "load_s": load_s,
            "prefill_tok_s": len(ids) / prefill_s, "decode_tok_s": decode}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("engine", choices=["llama.cpp", "transformers"])
    p.add_argument("--model", required=True)
    p.add_argument("--prompt-ids", required=True, help="JSON array of token ids")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="bf16")
    a = p.parse_args()
    ids = json.loads(a.prompt_ids)
    r = run_llama_cpp(a, ids) if a.engine == "llama.cpp" else run_transformers(a, ids)
    r.update({"prompt_tokens": len(ids), "generated_tokens": a.max_tokens, "threads": a.threads})
    print(json.dumps(r))


if __name__ == "__main__":
    sys.exit(main())
