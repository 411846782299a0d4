"""GSM8K through lm-evaluation-harness's `local-chat-completions` model pointed at `bakeoff serve`:
the generative path of lm-eval (chat template applied by the server, greedy answers with stop
strings, answer extraction, exact match), as a user would run it on a local model.

The task is defined over ../shared/evaldata/gsm8k/test.jsonl (the hub's copy is out of reach),
with lm-eval's own gsm8k extraction (the number after "####", else the last number). Checks that
lm-eval runs to the end, that every item got an answer, and that each answer is the one the
server gives to the same conversation sent directly; prints the score.

  .venv-lmeval/bin/python scripts/lm_eval_gsm8k_chat.py --bakeoff BIN --model MODEL.gguf --limit 5
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from serve_proc import start_server

TASK = """task: gsm8k_local_chat
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: generate_until
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer.split('####')[-1].strip()}}}}"
generation_kwargs:
  until:
    - "Question:"
  do_sample: false
  temperature: 0.0
  max_gen_toks: {max_gen}
filter_list:
  - name: flexible-extract
    filter:
      - function: regex
        group_select: -1
        regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore:
      - ","
      - "\\\\$"
      - "(?s).*#### "
      - "\\\\.$"
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bakeoff", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "evaldata"))
    ap.add_argument("--limit", type=int, default=5)
    ap.add_argument("--max-gen", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bakeoff-gsm8k-"))
    data = Path(args.data_dir) / "gsm8k" / "test.jsonl"
    (work / "gsm8k_local_chat.yaml").write_text(TASK.format(data=data, max_gen=args.max_gen), encoding="utf-8")
    server, addr = start_server(args.bakeoff, args.model, args.threads)
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    try:
        t0 = time.time()
        r = subprocess.run(
            [sys.executable, "-m", "lm_eval", "--model", "local-chat-completions", "--model_args",
             f"model=fast,base_url=http://{addr}/v1/chat/completions,num_concurrent=1,max_retries=1",
             "--apply_chat_template", "--tasks", "gsm8k_local_chat", "--include_path", str(work),
             "--limit", str(args.limit), "--output_path", str(work / "out"), "--log_samples"],
            capture_output=True, text=True, env=env)
        took = time.time() - t0
        if r.returncode != 0:
            print(r.stdout[-3000:], r.stderr[-3000:], sep="\n")
            print("FAILED: lm-eval did not finish")
            sys.exit(1)
        samples = [json.loads(line) for f in sorted((work / "out").rglob("samples_gsm8k_local_chat*.jsonl"))
                   for line in f.read_text(encoding="utf-8").splitlines()]
        results = json.loads(next((work / "out").rglob("results*.json")).read_text(encoding="utf-8"))
        if len(samples) != args.limit:
            print(f"FAILED: {len(samples)} samples for --limit {args.limit}")
            sys.exit(1)
        same = 0
        for s in samples:
            answer = s["resps"][0][0]
            # The conversation lm-eval sent, sent again directly: the same greedy answer.
            messages = s["arguments"]["gen_args_0"]["arg_0"]
            if isinstance(messages, list) and messages and isinstance(messages[0], str):
                messages = messages[0]
            messages = json.loads(messages) if isinstance(messages, str) else messages
            body = {"model": "fast", "messages": messages, "temperature": 0, "max_tokens": args.max_gen,
                    "stop": ["Question:"]}
            req = urllib.request.Request(f"http://{addr}/v1/chat/completions", data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json"})
            direct = json.load(urllib.request.urlopen(req, timeout=600))["choices"][0]["message"]["content"]
            same += direct == answer
            print(f"item {s['doc_id']}: target {s['target']!r} extracted {s['filtered_resps'][0]!r} "
                  f"exact {s['exact_match']} same-as-direct {direct == answer}")
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    em = results["results"]["gsm8k_local_chat"]
    score = next(v for k, v in em.items() if k.startswith("exact_match,") and "stderr" not in k)
    print(f"{Path(args.model).name}: GSM8K (lm-eval local-chat-completions, {args.limit} items, "
          f"max_gen_toks {args.max_gen}): exact_match {score:.3f}, {took:.0f} s; "
          f"{same}/{len(samples)} answers equal to a direct request")
    if same != len(samples):
        print("FAILED: lm-eval's answers differ from the server's direct answers")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
