#!/usr/bin/env python3
"""Soak test of `bakeoff serve` over loopback sockets (docs/serve.md, "Soak").

Two real models: the fast tier is local in the server under test, the strong tier is a second
`bakeoff serve` reached as a remote upstream, so it can be killed and restored mid-run. CLIENTS
concurrent clients each send REQUESTS requests, cycling through valid (non-streamed, streamed,
routed by `auto`), malformed, oversized, disconnecting and slow clients. Checks: every valid
request is answered 200 or refused with a documented status (429, 502, 503, 504), the others get
their documented 4xx (an oversized body may also see the connection closed early), nothing hangs
past its deadline, and the server's resident memory after the burst is within 10% of its level
after the warm-up. Prints a JSON summary; exit 1 when a check fails.

    python3 scripts/soak.py --bakeoff target/release/bakeoff \
        --fast ~/.cache/bakeoff/real-models/smollm2-135m-instruct-q4_1.gguf \
        --strong ~/.cache/bakeoff/real-models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf

Standard library only.
"""

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict

VALID_REFUSALS = {429, 502, 503, 504}


def start_server(bakeoff, models, port=0, extra=()):
    args = [bakeoff, "serve", "--port", str(port), "--threads", "1", *extra]
    for m in models:
        args += ["--model", m]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        line = p.stderr.readline()
        if not line:
            raise SystemExit(f"server exited: {args}")
        m = re.search(r"listening on http://(\S+)", line)
        if m:
            # Keep draining stderr so the server never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            host, port = m.group(1).rsplit(":", 1)
            return p, host, int(port)
    raise SystemExit("server did not start")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def request(host, port, body, *, path="/v1/chat/completions", timeout=180.0,
                  disconnect_after=None, trickle=None):
    """One HTTP/1.1 request on its own connection. Returns (status or None, seconds)."""
    t0 = time.monotonic()
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    head = (f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
    try:
        writer.write(head)
        if trickle:
            pieces, pause = trickle
            step = max(1, len(body) // pieces)
            for i in range(0, len(body), step):
                writer.write(body[i:i + step])
                await writer.drain()
                await asyncio.sleep(pause)
        else:
            writer.write(body)
            await writer.drain()
        if disconnect_after is not None:
            await asyncio.wait_for(reader.read(disconnect_after), timeout)
            return "disconnected", time.monotonic() - t0
        data = await asyncio.wait_for(reader.read(), timeout)
    except (ConnectionResetError, BrokenPipeError):
        return "reset", time.monotonic() - t0
    except asyncio.TimeoutError:
        return "hung", time.monotonic() - t0
    finally:
        writer.close()
    m = re.match(rb"HTTP/1\.1 (\d{3})", data)
    return (int(m.group(1)) if m else "garbled"), time.monotonic() - t0


def chat(model, text, max_tokens=8, stream=False):
    return json.dumps({"model": model, "messages": [{"role": "user", "content": text}],
                       "max_tokens": max_tokens, "temperature": 0, "stream": stream}).encode()


KINDS = ["valid", "stream", "auto", "valid_strong", "malformed", "oversized", "disconnect", "slow"]
EXPECTED = {"malformed": {400}, "oversized": {413, "reset"}, "disconnect": {"disconnected"}}


async def client(cid, n, host, port, results, tiers):
    for i in range(n):
        kind = KINDS[(cid + i) % len(KINDS)]
        q = f"client {cid} request {i}: name a prime number"
        if kind == "valid":
            st = await request(host, port, chat(tiers[0], q))
        elif kind == "valid_strong":
            st = await request(host, port, chat(tiers[1], q))
        elif kind == "stream":
            st = await request(host, port, chat(tiers[0], q, stream=True))
        elif kind == "auto":
            st = await request(host, port, chat("auto", q))
        elif kind == "malformed":
            st = await request(host, port, b'{"messages": [ {"role": "user", "content": ')
        elif kind == "oversized":
            st = await request(host, port, b'{"x": "' + b"a" * (2 << 20) + b'"}')
        elif kind == "disconnect":
            st = await request(host, port, chat(tiers[0], q, max_tokens=64, stream=True),
                               disconnect_after=64)
        else:
            st = await request(host, port, chat(tiers[0], q), trickle=(4, 0.5))
        results[kind].append(st)


async def main_async(a):
    up, _, up_port = start_server(a.bakeoff, [f"fast={a.strong}"])
    srv, host, port = start_server(
        a.bakeoff, [f"fast={a.fast}", f"strong=http://127.0.0.1:{up_port}/v1"],
        extra=["--policy", "complexity"])
    tiers = [os.path.basename(a.fast).removesuffix(".gguf"), "strong"]
    # Warm-up: a full batch of each kind of valid request, so the KV slots reach their size.
    await asyncio.gather(*[request(host, port, chat(tiers[0], f"warm {i}")) for i in range(8)])
    await asyncio.gather(*[request(host, port, chat(tiers[0], f"warm {i}", stream=True))
                           for i in range(8)])
    rss_before = rss_kib(srv.pid)
    results = defaultdict(list)
    t0 = time.monotonic()
    burst = asyncio.gather(*[client(c, a.requests, host, port, results, tiers)
                             for c in range(a.clients)])

    async def kill_and_restore():
        await asyncio.sleep(a.kill_after)
        up.send_signal(signal.SIGKILL)
        up.wait()
        await asyncio.sleep(a.down_for)
        return start_server(a.bakeoff, [f"fast={a.strong}"], port=up_port)

    restored, _ = await asyncio.gather(kill_and_restore(), burst)
    wall = time.monotonic() - t0
    await asyncio.sleep(5)
    rss_after = rss_kib(srv.pid)
    health = await request(host, port, b"", path="/health")

    failures = []
    summary = {}
    for kind, rs in sorted(results.items()):
        counts = Counter(str(s) for s, _ in rs)
        slowest = max(t for _, t in rs)
        summary[kind] = {"requests": len(rs), "statuses": dict(counts), "slowest_s": round(slowest, 2)}
        allowed = EXPECTED.get(kind, {200} | VALID_REFUSALS)
        bad = [s for s, _ in rs if s not in allowed]
        if bad:
            failures.append(f"{kind}: undocumented outcomes {Counter(map(str, bad))}")
    growth = (rss_after - rss_before) / rss_before
    if growth > 0.10:
        failures.append(f"resident memory grew {growth:.1%} over the burst")
    out = {
        "clients": a.clients, "requests_per_client": a.requests, "wall_s": round(wall, 1),
        "upstream_killed_at_s": a.kill_after, "upstream_down_s": a.down_for,
        "rss_kib_after_warmup": rss_before, "rss_kib_after_burst": rss_after,
        "rss_growth": round(growth, 4), "kinds": summary, "failures": failures,
    }
    print(json.dumps(out, indent=1))
    for p in (srv, restored[0]):
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            failures.append("a server did not stop within 30 s of Ctrl-C")
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bakeoff", default="target/release/bakeoff")
    ap.add_argument("--fast", required=True, help="GGUF file of the local fast tier")
    ap.add_argument("--strong", required=True, help="GGUF file served by the killed upstream")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--kill-after", type=float, default=20.0)
    ap.add_argument("--down-for", type=float, default=15.0)
    sys.exit(asyncio.run(main_async(ap.parse_args())))


if __name__ == "__main__":
    main()
