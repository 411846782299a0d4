#!/usr/bin/env python3
"""Write tiny random-weight Hugging Face model folders plus transformers reference
outputs into crates/engine/tests/fixtures/.

    .venv-ref/bin/python scripts/reference/make_fixtures.py [--out DIR]

Folders written:
  tiny-llama/           LlamaForCausalLM, single model.safetensors (f32)
  tiny-llama-sharded/   the same weights as model-0000K-of-0000N.safetensors + index
  tiny-qwen2/           Qwen2ForCausalLM (q/k/v biases, tied embeddings)
  tiny-llama3/          LlamaForCausalLM with Llama 3.x rope scaling (rope_type llama3, θ = 5e5,
                        original context 64 so that all three frequency bands occur in a head)

Each folder gets config.json (exactly the dicts below), generation_config.json,
the weights, and reference.json:

  {"transformers_version": str, "torch_version": str, "model": str,
   "prompts": [{"ids": [int],                  # prompt token ids
                "logits": [[float]*vocab]*len(ids),   # one row per prompt position
                "greedy": [int]*20,             # 20 new ids, greedy, no EOS stop
                "greedy_logits_last": [float]*vocab}]} # raw logits of the step
                                                # that produced greedy[-1]

transformers runs in float32, eager attention, CPU. The greedy continuation is
checked against a cache-free argmax loop. The seed is bumped until every greedy
step has a top-1 vs top-2 logit margin above --min-margin (default 1e-2), each
continuation has >= 8 distinct ids (no degenerate repetition) and contains no
EOS id. Prompts: lengths 1, 7, 23; Llama prompts start with BOS (1).
"""
import argparse
import json
import os
import shutil
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_OUT = os.path.join(REPO, "crates", "engine", "tests", "fixtures")

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 384,
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float32",
}
LLAMA_GENERATION_CONFIG = {  # shaped like TinyLlama-1.1B-Chat-v1.0's
    "bos_token_id": 1,
    "eos_token_id": 2,
    "max_length": 2048,
    "pad_token_id": 0,
}

# Llama 3.x's rope: θ = 500000 and `rope_type: llama3` scaling. With head_dim 16 and an original
# context of 64, the head's wavelengths (6.3, 32, 167, …) fall below, inside and above [64/4, 64/1],
# so the kept, blended and divided bands are all exercised.
LLAMA3_CONFIG = dict(
    LLAMA_CONFIG,
    rope_theta=500000.0,
    rope_scaling={
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
)

QWEN2_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "vocab_size": 384,
    "hidden_size": 64,
    "intermediate_size": 160,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "bos_token_id": 380,
    "eos_token_id": 381,
    "torch_dtype": "float32",
    "use_sliding_window": False,
}
QWEN2_GENERATION_CONFIG = {  # shaped like Qwen2.5-Instruct's
    "bos_token_id": 380,
    "pad_token_id": 382,
    "do_sample": True,
    "eos_token_id": [381, 383],
    "repetition_penalty": 1.05,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
}

PROMPT_LENGTHS = (1, 7, 23)
NEW_TOKENS = 20


def r8(x):
    """Round to 8 significant digits (keeps JSON small; f32 has ~7.2)."""
    return float(format(float(x), ".8g"))


def rows(t):
    return [[r8(v) for v in row] for row in t.tolist()]


def init_weights(model, seed, embed_std, lm_head_std, residual_gain=1.0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                # v's bias passes through softmax unchanged and becomes a constant
                # residual direction, so keep it smaller than q/k's.
                std = 0.1 if "v_proj" in name else 0.3
                p.copy_(std * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(embed_std * torch.randn(p.shape, generator=g))
            elif name == "lm_head.weight":
                p.copy_(lm_head_std * torch.randn(p.shape, generator=g))
            else:  # linear [out, in]
                fan_in = p.shape[1]
                gain = residual_gain if ("o_proj" in name or "down_proj" in name) else 1.0
                p.copy_(gain * torch.randn(p.shape, generator=g) / fan_in ** 0.5)


def state_dict_for_save(model, tied):
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if tied:
        sd.pop("lm_head.weight", None)
    return dict(sorted(sd.items()))


def write_json(path, obj, compact=False):
    with open(path, "w", encoding="utf-8") as f:
        if compact:
            json.dump(obj, f, separators=(",", ":"))
        else:
            json.dump(obj, f, indent=2)
        f.write("\n")


def write_folder(folder, config, gen_config, sd, shards=0):
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    write_json(os.path.join(folder, "config.json"), config)
    write_json(os.path.join(folder, "generation_config.json"), gen_config)
    meta = {"format": "pt"}
    if shards <= 1:
        save_file(sd, os.path.join(folder, "model.safetensors"), metadata=meta)
        return
    names = list(sd.keys())
    total = sum(t.numel() * t.element_size() for t in sd.values())
    # Greedy split by bytes into `shards` roughly equal parts, keeping order.
    parts, cur, cur_bytes = [], [], 0
    target = total / shards
    for n in names:
        cur.append(n)
        cur_bytes += sd[n].numel() * sd[n].element_size()
        if cur_bytes >= target and len(parts) < shards - 1:
            parts.append(cur)
            cur, cur_bytes = [], 0
    if cur:
        parts.append(cur)
    n_parts = len(parts)
    weight_map = {}
    for i, part in enumerate(parts, start=1):
        fname = f"model-{i:05d}-of-{n_parts:05d}.safetensors"
        save_file({n: sd[n] for n in part}, os.path.join(folder, fname), metadata=meta)
        for n in part:
            weight_map[n] = fname
    write_json(
        os.path.join(folder, "model.safetensors.index.json"),
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
    )


def load(folder):
    model = AutoModelForCausalLM.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32
    )
    model.eval()
    return model


def make_prompts(config, seed):
    g = torch.Generator().manual_seed(seed + 1000)
    vocab = config["vocab_size"]
    prompts = []
    for n in PROMPT_LENGTHS:
        ids = torch.randint(3, vocab - 8, (n,), generator=g).tolist()
        if config["model_type"] == "llama":
            ids[0] = config["bos_token_id"]  # Llama prompts start with BOS
        prompts.append(ids)
    return prompts


@torch.no_grad()
def reference(model, prompts, min_margin):
    """Returns (prompt records, smallest greedy top1-top2 margin)."""
    out = []
    worst = float("inf")
    for ids in prompts:
        x = torch.tensor([ids])
        logits = model(x).logits[0]  # [len, vocab]
        gen = model.generate(
            x,
            attention_mask=torch.ones_like(x),
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=0,
            eos_token_id=None,
            pad_token_id=0,
            repetition_penalty=1.0,
            temperature=None,
            top_p=None,
            top_k=None,
            output_logits=True,
            return_dict_in_generate=True,
        )
        greedy = gen.sequences[0, len(ids):].tolist()
        assert len(greedy) == NEW_TOKENS, f"generate stopped early: {greedy}"
        step_logits = torch.stack([l[0] for l in gen.logits])  # [20, vocab]
        # Independent check: cache-free greedy loop over full-sequence forwards.
        seq = list(ids)
        for step in range(NEW_TOKENS):
            full = model(torch.tensor([seq])).logits[0, -1]
            top2 = torch.topk(full, 2).values
            worst = min(worst, float(top2[0] - top2[1]))
            nxt = int(torch.argmax(full))
            assert nxt == greedy[step], (step, nxt, greedy)
            assert torch.allclose(full, step_logits[step], atol=1e-4, rtol=1e-4)
            seq.append(nxt)
        out.append(
            {
                "ids": list(ids),
                "logits": rows(logits),
                "greedy": greedy,
                "greedy_logits_last": [r8(v) for v in step_logits[-1].tolist()],
            }
        )
    return out, worst


def logit_stats(recs):
    allv = torch.tensor([v for r in recs for row in r["logits"] for v in row])
    return float(allv.std()), float(allv.max() - allv.min())


def build(out_dir, name, config, gen_config, seed, min_margin, embed_std, lm_head_std,
          residual_gain=1.0, sharded_name=None, max_tries=50):
    tied = config["tie_word_embeddings"]
    folder = os.path.join(out_dir, name)
    for attempt in range(max_tries):
        s = seed + attempt
        torch.manual_seed(s)
        cfg = transformers.AutoConfig.for_model(
            **{k: v for k, v in config.items() if k not in ("architectures", "torch_dtype")}
        )
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager",
                                                 dtype=torch.float32)
        init_weights(model, s, embed_std, lm_head_std, residual_gain)
        sd = state_dict_for_save(model, tied)
        write_folder(folder, config, gen_config, sd)
        m = load(folder)  # reference comes from the folder exactly as written
        prompts = make_prompts(config, s)
        recs, worst = reference(m, prompts, min_margin)
        std, spread = logit_stats(recs)
        # Non-degenerate continuations: a model that just repeats one token would
        # not catch KV-cache or position bugs.
        distinct = min(len(set(r["greedy"])) for r in recs)
        print(f"{name}: seed={s} min greedy margin={worst:.4g} logit std={std:.3g} "
              f"range={spread:.3g} min distinct greedy ids={distinct}", file=sys.stderr)
        # No EOS id in the continuations, so an engine test that stops at EOS
        # still produces all NEW_TOKENS ids.
        eos = gen_config["eos_token_id"]
        eos = set(eos if isinstance(eos, list) else [eos]) | {config["eos_token_id"]}
        no_eos = not any(t in eos for r in recs for t in r["greedy"])
        if worst > min_margin and std > 1.0 and distinct >= 8 and no_eos:
            break
    else:
        raise SystemExit(f"{name}: no seed with margin > {min_margin} in {max_tries} tries")

    # Sanity: weights really round-trip (loaded == saved), tied head == embedding,
    # biases non-zero.
    loaded = m.state_dict()
    for k, v in sd.items():
        assert torch.equal(loaded[k], v), k
    # Tied head must alias the embedding; Qwen2 biases must be non-zero.
    if tied:
        assert torch.equal(m.lm_head.weight, m.model.embed_tokens.weight)
    if config["model_type"] == "qwen2":
        assert float(m.model.layers[0].self_attn.q_proj.bias.detach().abs().min()) > 0

    doc = {
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "model": name,
        "seed": s,
        "min_greedy_margin": r8(worst),
        "prompts": recs,
    }
    write_json(os.path.join(folder, "reference.json"), doc, compact=True)

    if sharded_name:
        sfolder = os.path.join(out_dir, sharded_name)
        write_folder(sfolder, config, gen_config, sd, shards=3)
        ms = load(sfolder)
        srecs, _ = reference(ms, [r["ids"] for r in recs], min_margin)
        assert srecs == recs, "sharded folder gives different outputs"
        write_json(os.path.join(sfolder, "reference.json"), dict(doc, model=sharded_name),
                   compact=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--min-margin", type=float, default=1e-2,
                    help="required top1-top2 logit gap at every greedy step")
    ap.add_argument("--only", help="write just this fixture (tiny-llama, tiny-qwen2, tiny-llama3)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    os.makedirs(args.out, exist_ok=True)
    want = lambda name: args.only in (None, name)
    if want("tiny-llama"):
        build(args.out, "tiny-llama", LLAMA_CONFIG, LLAMA_GENERATION_CONFIG, seed=1234,
              min_margin=args.min_margin, embed_std=1.0, lm_head_std=0.35,
              sharded_name="tiny-llama-sharded")
    # Tied head: the embedding doubles as lm_head, so its std sets the logit scale.
    # A larger residual gain keeps h from being dominated by the input token's own
    # embedding, which with a tied head makes greedy repeat the last token forever.
    if want("tiny-qwen2"):
        build(args.out, "tiny-qwen2", QWEN2_CONFIG, QWEN2_GENERATION_CONFIG, seed=5678,
              min_margin=args.min_margin, embed_std=0.35, lm_head_std=0.35,
              residual_gain=5.0)
    if want("tiny-llama3"):
        build(args.out, "tiny-llama3", LLAMA3_CONFIG, LLAMA_GENERATION_CONFIG, seed=4321,
              min_margin=args.min_margin, embed_std=1.0, lm_head_std=0.35)


if __name__ == "__main__":
    main()
