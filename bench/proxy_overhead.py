"""Latency the proxy adds, with 100% mirroring, against calling the primary directly — in one run.

Starts a simulated primary, a (slower) simulated candidate and `shadowtap serve` as separate processes
on loopback, then drives an open-loop load at several request rates. Each tick sends one request
straight to the primary and one through the proxy, in random order, so both arms see the same machine.
Prints medians/p99s side by side, the added latency and the ratio, and streamed time to first token,
and writes the table to bench/results/.

    python bench/proxy_overhead.py [--rates 50,100,200] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REQUEST = {"model": "bench", "messages": [{"role": "user", "content": "Summarise the refund policy in one line."}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], url: str, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return proc
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise SystemExit(f"{cmd[:3]} exited; see {log}") from None
            time.sleep(0.1)
    raise SystemExit(f"{cmd[:3]} did not come up; see {log}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(client: httpx.AsyncClient, url: str, body: dict, stream: bool) -> float:
    t0 = time.perf_counter()
    if not stream:
        r = await client.post(url, json=body)
        r.raise_for_status()
        return (time.perf_counter() - t0) * 1000
    ttft = None
    async with client.stream("POST", url, json=body) as r:
        async for chunk in r.aiter_raw():
            if ttft is None and b'"content": "' in chunk and b'"content": ""' not in chunk:
                ttft = (time.perf_counter() - t0) * 1000
    if ttft is None:
        raise RuntimeError("stream carried no content")
    return ttft


async def run_rate(direct_url: str, proxy_url: str, rate: float, seconds: float, stream: bool) -> dict[str, list[float]]:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    results: dict[str, list[float]] = {"direct": [], "proxy": []}
    errors = 0
    body = dict(REQUEST, stream=True) if stream else REQUEST
    async with httpx.AsyncClient(limits=limits, timeout=30) as dc, httpx.AsyncClient(limits=limits, timeout=30) as pc:
        # Warm both pools.
        for _ in range(20):
            await timed(dc, direct_url, body, stream)
            await timed(pc, proxy_url, body, stream)
        tasks = []

        async def one(arm: str, client: httpx.AsyncClient, url: str) -> None:
            nonlocal errors
            try:
                results[arm].append(await timed(client, url, body, stream))
            except Exception:
                errors += 1

        interval = 1.0 / rate
        start_t = time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):
            target = start_t + i * interval
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            arms = [("direct", dc, direct_url), ("proxy", pc, proxy_url)]
            random.shuffle(arms)
            for arm in arms:
                tasks.append(asyncio.create_task(one(*arm)))
        await asyncio.gather(*tasks)
    if errors:
        print(f"  ({errors} requests failed at {rate}/s)", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="50,100,200", help="request rates per arm (requests/s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each rate")
    parser.add_argument("--out", default="bench/results/proxy_overhead.txt")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]

    workdir = Path(tempfile.mkdtemp(prefix="shadowtap-bench-"))
    p_port, c_port, x_port = free_port(), free_port(), free_port()
    py = sys.executable
    procs = []
    try:
        procs.append(start([py, "-m", "shadowtap.simulated", "--port", str(p_port), "--name", "primary-sim"],
                           f"http://127.0.0.1:{p_port}/v1/models", workdir / "primary.log"))
        procs.append(start([py, "-m", "shadowtap.simulated", "--port", str(c_port), "--name", "candidate-sim", "--profile", "slow"],
                           f"http://127.0.0.1:{c_port}/v1/models", workdir / "candidate.log"))
        env = dict(os.environ, SHADOWTAP_SHADOW_SAMPLE_RATE="1.0", SHADOWTAP_SHADOW_QUEUE_SIZE="10000")
        procs.append(subprocess.Popen(
            [py, "-m", "shadowtap.cli", "serve", "--primary", f"http://127.0.0.1:{p_port}/v1",
             "--candidate", f"http://127.0.0.1:{c_port}/v1", "--port", str(x_port), "--data-dir", str(workdir / "data")],
            stdout=(workdir / "proxy.log").open("wb"), stderr=subprocess.STDOUT, env=env))
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{x_port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"proxy did not come up; see {workdir / 'proxy.log'}") from None
                time.sleep(0.1)

        direct = f"http://127.0.0.1:{p_port}/v1/chat/completions"
        proxied = f"http://127.0.0.1:{x_port}/v1/chat/completions"
        rows = []
        for stream in (False, True):
            for rate in rates if not stream else rates[:1] + rates[-1:]:
                res = asyncio.run(run_rate(direct, proxied, rate, args.seconds, stream))
                d, p = res["direct"], res["proxy"]
                rows.append({
                    "mode": "stream TTFT" if stream else "non-stream",
                    "rate": rate, "n": min(len(d), len(p)),
                    "direct_p50": statistics.median(d), "proxy_p50": statistics.median(p),
                    "direct_p99": pct(d, 0.99), "proxy_p99": pct(p, 0.99),
                })
                print(f"  done: {rows[-1]['mode']} at {rate:g}/s", file=sys.stderr)
        pairs = sum(1 for _ in (workdir / "data" / "pairs.jsonl").open()) if (workdir / "data" / "pairs.jsonl").exists() else 0
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()

    header = f"{'mode':<12} {'req/s':>6} {'n':>6} {'direct p50':>11} {'proxy p50':>10} {'added p50':>10} {'direct p99':>11} {'proxy p99':>10} {'added p99':>10} {'p50 ratio':>9}"
    lines = [
        "shadowtap proxy overhead, 100% mirroring to a slower candidate (ms; loopback, simulated upstreams)",
        f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}",
        header,
        "-" * len(header),
    ]
    for r in rows:
        lines.append(
            f"{r['mode']:<12} {r['rate']:>6g} {r['n']:>6} {r['direct_p50']:>11.3f} {r['proxy_p50']:>10.3f} "
            f"{r['proxy_p50'] - r['direct_p50']:>10.3f} {r['direct_p99']:>11.3f} {r['proxy_p99']:>10.3f} "
            f"{r['proxy_p99'] - r['direct_p99']:>10.3f} {r['proxy_p50'] / r['direct_p50']:>9.2f}"
        )
    lines.append(f"pairs recorded by the proxy during the run: {pairs}")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    (out.with_suffix(".json")).write_text(json.dumps(rows, indent=2))
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
