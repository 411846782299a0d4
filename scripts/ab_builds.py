"""Two builds of bakeoff against each other (did a change alter speed?): alternates the two
binaries in fresh processes on the same model and token ids, 2 threads, and prints per model and
test the median tok/s of each and the new/old ratio taken pair by pair (median, min, max).

  git worktree add --detach ../base BASE && (cd ../base && cargo build --release) ...
  python3 scripts/ab_builds.py --old ../base/target/release/bakeoff --new target/release/bakeoff \
      --reps 3 --model ~/.cache/bakeoff/real-models/smollm2-135m-instruct-q4_1.gguf

`--tests load` times loads without the packed-weights file (`--no-weight-cache`: every matrix
repacked), in seconds; its ratio is old/new, so above 1 is faster there too.
"""
import json, subprocess, sys, statistics, argparse
ap = argparse.ArgumentParser()
ap.add_argument('--old', required=True); ap.add_argument('--new', required=True)
ap.add_argument('--model', action='append', required=True)
ap.add_argument('--reps', type=int, default=3)
ap.add_argument('--gen', type=int, default=64)
ap.add_argument('--prompt', type=int, default=512)
ap.add_argument('--tests', default='decode,prefill')
a = ap.parse_args()

def run(binary, model, ids, max_tokens, extra=()):
    cmd = [binary, 'generate', '--model', model, '--threads', '2', '--prompt-ids', json.dumps(ids),
           '--max-tokens', str(max_tokens), '--ignore-eos', '--json', *extra]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f'{" ".join(cmd[:5])} failed: {out.stderr[-2000:]}')
    return json.loads(out.stdout)['summary']

for m in a.model:
    short = [100 + i for i in range(16)]
    long_ = [100 + (i * 7919) % 5000 for i in range(a.prompt)]
    rows = {'decode': [], 'prefill': [], 'load': []}
    tests = [('decode', short, a.gen, 'decode_tok_s', ()), ('prefill', long_, 1, 'prefill_tok_s', ()),
             ('load', short[:4], 1, 'load_s', ('--no-weight-cache',))]
    for r in range(a.reps):
        for test, ids, n, key, extra in tests:
            if test not in a.tests.split(','):
                continue
            o = run(a.old, m, ids, n, extra)[key]
            nw = run(a.new, m, ids, n, extra)[key]
            rows[test].append((o, nw, o / nw if test == 'load' else nw / o))
    for test, v in rows.items():
        if not v:
            continue
        rs = [x[2] for x in v]
        unit, ratio, fmt = ('s', 'old/new', '.2f') if test == 'load' else ('tok/s', 'new/old', '.1f')
        print(f'{m.split("/")[-1]} {test}: old {statistics.median(x[0] for x in v):{fmt}} new {statistics.median(x[1] for x in v):{fmt}} {unit}; ratio {ratio} median {statistics.median(rs):.3f} (min {min(rs):.3f} max {max(rs):.3f}) n={len(rs)}', flush=True)
