"""Starts `bakeoff serve` on a free port for the scripts that drive it (echo_parity.py,
lm_eval_parity.py, openai_sdk_real.py, constraint_overhead.py): returns the process and its `host:port` once it listens."""

import re
import subprocess
import sys
import threading
import time


def start_server(bakeoff, model, threads, timeout=120, models=None):
    """`models`: `TIER=SOURCE` entries in place of `fast=MODEL`."""
    entries = models or [f"fast={model}"]
    args = [bakeoff, "serve", "--port", "0", "--threads", str(threads)]
    for e in entries:
        args += ["--model", e]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = p.stderr.readline()
        if not line:
            print(f"setup: server exited: {args}", file=sys.stderr)
            sys.exit(2)
        m = re.search(r"listening on http://(\S+)", line)
        if m:
            # Keep draining stderr so the server never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, m.group(1)
    print("setup: the server did not start", file=sys.stderr)
    sys.exit(2)
